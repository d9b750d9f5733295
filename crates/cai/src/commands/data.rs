//! `cai synth` and `cai partition`.

use std::sync::{Arc, Mutex};

use anyhow::{Context, Result};
use cai_core::layout::MANIFEST;
use cai_core::StorageUrl;
use cai_data::partition::{parse_size, partition_dataset_as, FileFormat};
use cai_data::{DatasetReader, GalaxySource, SynthConfig};

use crate::cli::{PartitionArgs, PartitionFormat, SynthArgs};
use crate::progress::Progress;
use crate::Outcome;

/// `cai synth`: stream a synthetic dataset to a file.
pub async fn synth(a: SynthArgs, quiet: bool) -> Result<Outcome> {
    let cfg = SynthConfig {
        galaxies: a.galaxies,
        seed: a.seed,
        ..Default::default()
    };
    let out = a.out.clone();
    let progress = Progress::new("synth", a.galaxies, "galaxies", quiet);
    tokio::task::spawn_blocking(move || {
        let mut last = 0;
        let res = cai_data::write_dataset(&out, &cfg, &mut |written| {
            progress.inc(written - last);
            last = written;
        });
        progress.finish();
        res
    })
    .await?
    .with_context(|| format!("cannot write {}", a.out.display()))?;
    if !quiet {
        eprintln!(
            "wrote {} galaxies (seed {}) to {}",
            a.galaxies,
            a.seed,
            a.out.display()
        );
    }
    Ok(Outcome::Ok)
}

/// What `partition_to` produced.
pub struct PartitionSummary {
    /// Partitions written.
    pub partitions: usize,
    /// Galaxies in them.
    pub galaxies: u64,
}

/// Cut a dataset file into partitions under `out`, writing `manifest.json` last.
pub async fn partition_to(
    input: &std::path::Path,
    size: &str,
    out: &str,
    quiet: bool,
) -> Result<PartitionSummary> {
    partition_to_as(input, size, out, FileFormat::Native, quiet).await
}

/// Opens a dataset to partition: a native file is streamed; the original's whole-dataset
/// `TensorDataset` `.pt` is read whole (its pickle interpreted, never executed).
fn open_source(input: &std::path::Path) -> Result<Box<dyn GalaxySource + Send>> {
    let mut head = [0u8; 64];
    let got = {
        use std::io::Read;
        let mut f = std::fs::File::open(input)
            .with_context(|| format!("cannot open the dataset {}", input.display()))?;
        f.read(&mut head)
            .with_context(|| format!("cannot read the dataset {}", input.display()))?
    };
    if cai_data::detect_format(&head[..got]) == cai_data::Format::TorchZip {
        let bytes = std::fs::read(input)
            .with_context(|| format!("cannot read the dataset {}", input.display()))?;
        let p = cai_data::read_torch(&input.display().to_string(), &bytes)?;
        return Ok(Box::new(p));
    }
    let reader = DatasetReader::open(input)
        .with_context(|| format!("cannot open the dataset {}", input.display()))?;
    Ok(Box::new(reader))
}

/// [`partition_to`] writing partitions in `format` (`1.pt`, … for [`FileFormat::Torch`]).
pub async fn partition_to_as(
    input: &std::path::Path,
    size: &str,
    out: &str,
    format: FileFormat,
    quiet: bool,
) -> Result<PartitionSummary> {
    let size_bytes = parse_size(size)?;
    let input2 = input.to_path_buf();
    let reader = tokio::task::spawn_blocking(move || open_source(&input2)).await??;
    let dest = StorageUrl::parse(out)?;
    partition_source_to(reader, size_bytes, &dest, format, quiet).await
}

/// Cut any galaxy source into partitions of `size_bytes` under `dest`, writing
/// `manifest.json` last (what `cai partition` and `cai sweep` do).
pub async fn partition_source_to(
    reader: Box<dyn GalaxySource + Send>,
    size_bytes: u64,
    dest: &StorageUrl,
    format: FileFormat,
    quiet: bool,
) -> Result<PartitionSummary> {
    let total = reader.len();
    let handle = tokio::runtime::Handle::current();
    let dest2 = dest.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        let progress = Progress::new("partition", total, "galaxies", quiet);
        let store_error: Arc<Mutex<Option<cai_core::Error>>> = Arc::default();
        let res = partition_dataset_as(&*reader, size_bytes, format, |file| {
            let n = file.galaxies;
            match handle.block_on(dest2.put(&file.key, file.bytes)) {
                Ok(()) => {
                    progress.inc(n);
                    Ok(())
                }
                Err(e) => {
                    let path = std::path::PathBuf::from(dest2.url_of(&file.key));
                    if let Ok(mut slot) = store_error.lock() {
                        *slot = Some(e);
                    }
                    Err(cai_data::Error::Writer {
                        path,
                        reason: "storage write failed".into(),
                    })
                }
            }
        });
        progress.finish();
        if let Some(e) = store_error.lock().ok().and_then(|mut s| s.take()) {
            return Err(anyhow::Error::from(e));
        }
        Ok(res?)
    })
    .await??;
    dest.put(MANIFEST, manifest.to_json()).await?;
    Ok(PartitionSummary {
        partitions: manifest.partitions.len(),
        galaxies: manifest.total_galaxies,
    })
}

/// `cai partition`.
pub async fn partition(a: PartitionArgs, quiet: bool) -> Result<Outcome> {
    let format = match a.format {
        PartitionFormat::Native => FileFormat::Native,
        PartitionFormat::Pt => FileFormat::Torch,
    };
    let s = partition_to_as(&a.input, &a.size, &a.out, format, quiet).await?;
    if !quiet {
        eprintln!(
            "wrote {} partitions ({} galaxies) and {MANIFEST} to {}",
            s.partitions, s.galaxies, a.out
        );
    }
    Ok(Outcome::Ok)
}
