//! Cutting galaxies into partitions in a storage location, `manifest.json` last: what `cai
//! partition` does with a dataset file and `cai sweep` with a dataset file or existing
//! partitions. The cutting itself is `cai_data::partition`'s; this reads the source and
//! writes each partition as it is made.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cai_core::layout::MANIFEST;
use cai_core::plan::sort_partitions;
use cai_core::StorageUrl;
use cai_data::partition::{
    partition_dataset_as, partition_tensor_set, FileFormat, Manifest, PartitionFile, PartitionSeq,
};
use cai_data::{DatasetReader, GalaxySource, TensorInfo, TensorSet};

use crate::engine::{RunEvent, RunEvents};
use crate::stages::find_partitions;
use crate::worker::ProgressFn;
use crate::{Error, Result};

/// What a cut produced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PartitionSummary {
    /// Partitions written.
    pub partitions: usize,
    /// Galaxies in them.
    pub galaxies: u64,
}

/// A galaxy source to cut: a native dataset file is streamed; the original's whole-dataset
/// `TensorDataset` `.pt` is read whole (its pickle interpreted, never executed).
pub fn open_dataset(input: &Path) -> Result<Box<dyn GalaxySource + Send>> {
    match open_input(input, None)? {
        PartitionInput::Galaxies(source) => Ok(source),
        PartitionInput::Tensors(set) => Err(Error::Request {
            what: format!(
                "{}: tensors {} are not AstroMAE's galaxies",
                input.display(),
                set.names().join(", ")
            ),
            hint: "cut them once with `cai partition` and give that folder as the data".into(),
        }),
    }
}

/// The partitions under `src` (in plan order) as one galaxy source, read a partition at a
/// time, to cut again at another size.
pub async fn open_partitions(src: &StorageUrl) -> Result<Box<dyn GalaxySource + Send>> {
    let parts = partitions_in_order(src).await?;
    seq_of(src, &parts).await
}

/// The partitions under `src`, in plan order (the manifest's, else by number).
async fn partitions_in_order(src: &StorageUrl) -> Result<Vec<cai_core::plan::PartitionRef>> {
    let (mut parts, manifest) = find_partitions(src).await?;
    if manifest.is_none() {
        sort_partitions(&mut parts);
    }
    Ok(parts)
}

/// `parts` under `src` as one galaxy source, read a partition at a time.
async fn seq_of(
    src: &StorageUrl,
    parts: &[cai_core::plan::PartitionRef],
) -> Result<Box<dyn GalaxySource + Send>> {
    let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
    let counts: Option<Vec<u64>> = parts.iter().map(|p| p.galaxies).collect();
    let handle = tokio::runtime::Handle::current();
    let (src2, name) = (src.clone(), src.to_string());
    let seq = tokio::task::spawn_blocking(move || {
        let fetch = move |key: &str| -> cai_data::Result<Vec<u8>> {
            handle
                .block_on(src2.get(key))
                .map(|b| b.to_vec())
                .map_err(|e| cai_data::Error::InvalidPartition {
                    reason: e.to_string(),
                })
        };
        PartitionSeq::open(name, keys, counts, fetch)
    })
    .await
    .map_err(|source| Error::Join {
        task: format!("opening the partitions under {src}"),
        source,
    })??;
    Ok(Box::new(seq))
}

/// The partitions under `src` (in plan order) to cut again at another size: AstroMAE's
/// galaxies as a source read a partition at a time ([`open_partitions`]); any other
/// model's tensors read whole and joined (a sweep's data sizes fit in memory).
pub async fn open_partitions_input(src: &StorageUrl) -> Result<PartitionInput> {
    let parts = partitions_in_order(src).await?;
    let read = |key: String| async move {
        let url = src.url_of(&key);
        let bytes = src.get(&key).await?;
        let set = cai_data::read_tensors(&url, &bytes, None)?;
        Ok::<_, Error>((url, set))
    };
    let Some(first) = parts.first() else {
        return Ok(PartitionInput::Galaxies(seq_of(src, &parts).await?));
    };
    let (_, mut set) = read(first.key.clone()).await?;
    if set.to_partition().is_some() {
        // AstroMAE's: streamed a partition at a time (the first is read again then).
        return Ok(PartitionInput::Galaxies(seq_of(src, &parts).await?));
    }
    for key in parts[1..].iter().map(|p| p.key.clone()) {
        let (url, more) = read(key).await?;
        set.extend(&more)
            .map_err(|e| cai_data::Error::InvalidPartition {
                reason: format!("{url}: {e} (the partitions' tensors must all be alike)"),
            })?;
    }
    Ok(PartitionInput::Tensors(set))
}

/// What `cai partition` cuts: AstroMAE's galaxies (streamed from a native dataset file, or
/// read whole) or any model's tensors (read whole).
pub enum PartitionInput {
    /// AstroMAE's galaxies: cut as always (object ids added, `.pt` output possible).
    Galaxies(Box<dyn GalaxySource + Send>),
    /// Any named tensors sharing the galaxy dimension.
    Tensors(TensorSet),
}

impl PartitionInput {
    /// Galaxies in the input (what a progress bar counts).
    pub fn galaxies(&self) -> u64 {
        match self {
            PartitionInput::Galaxies(g) => g.len(),
            PartitionInput::Tensors(t) => t.n as u64,
        }
    }
}

/// Opens any input `cai partition` takes, detected from its bytes: a native dataset file
/// (AstroMAE's is streamed), the original's `.pt` `TensorDataset`, NumPy `.npy` or `.npz`,
/// or a safetensors file of any tensors. `names` renames the tensors of a `.pt`, `.npy` or
/// `.npz` in order (see [`cai_data::read_tensors`]). Without `names`, AstroMAE's tensors
/// (however stored) are cut as galaxies.
pub fn open_input(input: &Path, names: Option<&[String]>) -> Result<PartitionInput> {
    let io = |op, source| cai_data::Error::Io {
        op,
        path: input.to_path_buf(),
        source,
    };
    let mut head = [0u8; 64];
    let got = {
        use std::io::Read;
        let mut f = std::fs::File::open(input).map_err(|e| io("open", e))?;
        f.read(&mut head).map_err(|e| io("read", e))?
    };
    let format = cai_data::detect_format(&head[..got]);
    if names.is_none() && format == cai_data::Format::Native {
        if let Ok(reader) = DatasetReader::open(input) {
            return Ok(PartitionInput::Galaxies(Box::new(reader)));
        }
    }
    let name = input.display().to_string();
    let bytes = std::fs::read(input).map_err(|e| io("read", e))?;
    if names.is_none() && format == cai_data::Format::TorchZip {
        if let Ok(p) = cai_data::read_torch(&name, &bytes) {
            return Ok(PartitionInput::Galaxies(Box::new(p)));
        }
    }
    let set = cai_data::read_tensors(&name, &bytes, names)?;
    drop(bytes);
    match set.to_partition() {
        Some(p) if names.is_none() => Ok(PartitionInput::Galaxies(Box::new(p))),
        _ => Ok(PartitionInput::Tensors(set)),
    }
}

/// Cut `input` (see [`open_input`]) into partitions of about `size_bytes` under `dest`,
/// writing `manifest.json` last; `progress` is told the galaxies of each partition
/// written. AstroMAE's galaxies are cut in `format`; other tensors into native files only.
/// Returns what was made and the tensors the manifest records.
pub async fn partition_input(
    input: PartitionInput,
    size_bytes: u64,
    dest: &StorageUrl,
    format: FileFormat,
    progress: Option<ProgressFn>,
) -> Result<(PartitionSummary, Vec<TensorInfo>)> {
    match input {
        PartitionInput::Galaxies(reader) => {
            cut_into(dest, progress, move |sink| {
                partition_dataset_as(&*reader, size_bytes, format, sink)
            })
            .await
        }
        PartitionInput::Tensors(_) if format != FileFormat::Native => Err(Error::Request {
            what: "--format pt with tensors other than AstroMAE's".into(),
            hint: "the original's .pt layout holds images, magnitudes and redshift only; cut any other tensors with --format native".into(),
        }),
        PartitionInput::Tensors(set) => {
            cut_into(dest, progress, move |sink| {
                partition_tensor_set(&set, size_bytes, sink)
            })
            .await
        }
    }
}

/// Cut `reader` into partitions of `size_bytes` under `dest` in `format`, writing
/// `manifest.json` last; `progress` is told the galaxies of each partition written.
pub async fn partition_source(
    reader: Box<dyn GalaxySource + Send>,
    size_bytes: u64,
    dest: &StorageUrl,
    format: FileFormat,
    progress: Option<ProgressFn>,
) -> Result<PartitionSummary> {
    cut_into(dest, progress, move |sink| {
        partition_dataset_as(&*reader, size_bytes, format, sink)
    })
    .await
    .map(|(summary, _)| summary)
}

/// Run `cut` on a blocking thread, putting each partition it makes under `dest` as it is
/// made (a storage error stops the cut and is returned), then `manifest.json`.
async fn cut_into<C>(
    dest: &StorageUrl,
    progress: Option<ProgressFn>,
    cut: C,
) -> Result<(PartitionSummary, Vec<TensorInfo>)>
where
    C: FnOnce(&mut dyn FnMut(PartitionFile) -> cai_data::Result<()>) -> cai_data::Result<Manifest>
        + Send
        + 'static,
{
    let handle = tokio::runtime::Handle::current();
    let dest2 = dest.clone();
    let manifest = tokio::task::spawn_blocking(move || -> Result<_> {
        let store_error: Arc<Mutex<Option<cai_core::Error>>> = Arc::default();
        let res = cut(&mut |file: PartitionFile| {
            let n = file.galaxies;
            match handle.block_on(dest2.put(&file.key, file.bytes)) {
                Ok(()) => {
                    if let Some(p) = &progress {
                        p(n);
                    }
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
        if let Some(e) = store_error.lock().ok().and_then(|mut s| s.take()) {
            return Err(e.into());
        }
        Ok(res?)
    })
    .await
    .map_err(|source| Error::Join {
        task: format!("partitioning into {dest}"),
        source,
    })??;
    dest.put(MANIFEST, manifest.to_json()).await?;
    Ok((
        PartitionSummary {
            partitions: manifest.partitions.len(),
            galaxies: manifest.total_galaxies,
        },
        manifest.tensor_infos(),
    ))
}

/// Write `galaxies` synthetic galaxies of `seed` to `path` (the native dataset format) on a
/// blocking thread; with `events`, a progress bar of galaxies written. `cai synth` and the
/// demo.
pub async fn write_synthetic(
    path: &Path,
    galaxies: u64,
    seed: u64,
    events: Option<&dyn RunEvents>,
) -> Result<()> {
    let cfg = cai_data::SynthConfig {
        galaxies,
        seed,
        ..Default::default()
    };
    let written = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let (path, count) = (path.to_path_buf(), written.clone());
    let mut job = tokio::task::spawn_blocking(move || {
        cai_data::write_dataset(&path, &cfg, &mut |n| {
            count.store(n, std::sync::atomic::Ordering::Relaxed);
        })
    });
    if let Some(e) = events {
        e.event(RunEvent::Progress {
            label: "synth".into(),
            total: galaxies,
            unit: "galaxies",
        });
    }
    let mut shown = 0;
    let done = loop {
        tokio::select! {
            r = &mut job => break r,
            _ = tokio::time::sleep(std::time::Duration::from_millis(100)) => {}
        }
        let now = written.load(std::sync::atomic::Ordering::Relaxed);
        if let (Some(e), true) = (events, now > shown) {
            e.event(RunEvent::Advance(now - shown));
            shown = now;
        }
    };
    if let Some(e) = events {
        e.event(RunEvent::Advance(galaxies.saturating_sub(shown)));
        e.event(RunEvent::ProgressDone);
    }
    done.map_err(|source| Error::Join {
        task: "synthesizing galaxies".into(),
        source,
    })?
    .map_err(Error::from)
}
