//! `<rank>.json`: what one rank did, with every key of the original and ours beside them.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};

/// Keys of the original's `<rank>.json`; its stats tooling reads them by name.
pub const ORIGINAL_KEYS: [&str; 10] = [
    "total_cpu_time (seconds)",
    "total_cpu_memory (MB)",
    "execution_time (seconds/batch)",
    "num_batches",
    "batch_size",
    "device",
    "throughput_bps",
    "sample_persec",
    "result_path",
    "data_path",
];

/// Per-rank result. The first block is the original's; the rest is ours.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankReport {
    /// Seconds spent in inference (the model's forward passes), as the original times it.
    #[serde(rename = "total_cpu_time (seconds)")]
    pub total_cpu_time: f64,
    /// Peak resident memory of the worker process, MB.
    #[serde(rename = "total_cpu_memory (MB)")]
    pub total_cpu_memory: f64,
    /// Mean seconds per batch.
    #[serde(rename = "execution_time (seconds/batch)")]
    pub execution_time_per_batch: f64,
    /// Batches run.
    pub num_batches: u64,
    /// Galaxies per batch.
    pub batch_size: u64,
    /// `cpu` (with the kernel tier, e.g. `cpu (avx2, 2 threads)` is in `kernels`).
    pub device: String,
    /// Input bits (images + magnitudes, f32) per second of inference.
    pub throughput_bps: f64,
    /// Galaxies per second of inference.
    pub sample_persec: f64,
    /// Where this rank's results went.
    pub result_path: String,
    /// The partition key(s) this rank read: a string or a list, as in the rank item.
    pub data_path: Value,

    /// This rank.
    pub rank: usize,
    /// Number of ranks in the run.
    pub world_size: usize,
    /// Galaxies predicted.
    pub galaxies: u64,
    /// Input bits read (the original's `total_bits`).
    pub total_bits: u64,
    /// Bytes fetched from storage.
    pub bytes_read: u64,
    /// Unix time (s) the rank started.
    pub started_at: f64,
    /// Unix time (s) the rank ended.
    pub ended_at: f64,
    /// Wall seconds from start to end.
    pub wall_time_s: f64,
    /// Seconds waiting for partitions to arrive (not hidden by prefetch).
    pub download_s: f64,
    /// Seconds decoding partitions.
    pub decode_s: f64,
    /// Seconds encoding the predictions (this report travels inside them, so their upload
    /// comes after it and is not counted).
    pub upload_s: f64,
    /// Values in the inputs that were NaN or infinite (their galaxies get a NaN prediction).
    pub nonfinite_inputs: u64,
    /// Galaxies whose inputs had a non-finite value.
    pub nonfinite_galaxies: u64,
    /// Threads the model used.
    pub threads: usize,
    /// Kernel tier (scalar, avx2, avx512, neon).
    pub kernels: String,
    /// Engine that ran the rank (local, slurm, aws).
    pub engine: String,
    /// Host name of the worker.
    pub host: String,
    /// Model location.
    pub model: String,
    /// Key of the predictions file under the results location.
    pub predictions: String,
    /// cai version that wrote this.
    pub cai_version: String,
    /// Whether a second copy of this rank was started because it ran long (a straggler);
    /// the copy that finished first wrote this report, the other's outputs were discarded.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub speculated: bool,
}

impl RankReport {
    /// Parse a `<rank>.json`.
    pub fn from_json(source_name: &str, bytes: &[u8]) -> Result<Self> {
        serde_json::from_slice(bytes).map_err(|source| Error::Json {
            what: "rank report",
            source_name: source_name.to_string(),
            source,
        })
    }
}

/// A rank that failed: written as `failed/<rank>.json` so `<rank>.json` exists only for
/// ranks that finished, as in the original.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankFailure {
    /// The rank.
    pub rank: usize,
    /// Partition keys it was given.
    pub partitions: Vec<String>,
    /// What went wrong, naming the file.
    pub error: String,
    /// Engine that ran it.
    pub engine: String,
    /// Host name of the worker.
    pub host: String,
    /// Unix time (s) of the failure.
    pub failed_at: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_original_key_is_written() {
        let v = serde_json::to_value(RankReport::default()).unwrap();
        for k in ORIGINAL_KEYS {
            assert!(v.get(k).is_some(), "{k} missing");
        }
    }
}
