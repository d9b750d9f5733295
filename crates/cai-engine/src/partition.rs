//! Cutting galaxies into partitions in a storage location, `manifest.json` last: what `cai
//! partition` does with a dataset file and `cai sweep` with a dataset file or existing
//! partitions. The cutting itself is `cai_data::partition`'s; this reads the source and
//! writes each partition as it is made.

use std::path::Path;
use std::sync::{Arc, Mutex};

use cai_core::layout::MANIFEST;
use cai_core::plan::sort_partitions;
use cai_core::StorageUrl;
use cai_data::partition::{partition_dataset_as, FileFormat, PartitionSeq};
use cai_data::{DatasetReader, GalaxySource};

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
    if cai_data::detect_format(&head[..got]) == cai_data::Format::TorchZip {
        let bytes = std::fs::read(input).map_err(|e| io("read", e))?;
        let p = cai_data::read_torch(&input.display().to_string(), &bytes)?;
        return Ok(Box::new(p));
    }
    Ok(Box::new(DatasetReader::open(input)?))
}

/// The partitions under `src` (in plan order) as one galaxy source, read a partition at a
/// time, to cut again at another size.
pub async fn open_partitions(src: &StorageUrl) -> Result<Box<dyn GalaxySource + Send>> {
    let (mut parts, manifest) = find_partitions(src).await?;
    if manifest.is_none() {
        sort_partitions(&mut parts);
    }
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

/// Cut `reader` into partitions of `size_bytes` under `dest` in `format`, writing
/// `manifest.json` last; `progress` is told the galaxies of each partition written.
pub async fn partition_source(
    reader: Box<dyn GalaxySource + Send>,
    size_bytes: u64,
    dest: &StorageUrl,
    format: FileFormat,
    progress: Option<ProgressFn>,
) -> Result<PartitionSummary> {
    let handle = tokio::runtime::Handle::current();
    let dest2 = dest.clone();
    let manifest = tokio::task::spawn_blocking(move || -> Result<_> {
        let store_error: Arc<Mutex<Option<cai_core::Error>>> = Arc::default();
        let res = partition_dataset_as(&*reader, size_bytes, format, |file| {
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
    Ok(PartitionSummary {
        partitions: manifest.partitions.len(),
        galaxies: manifest.total_galaxies,
    })
}
