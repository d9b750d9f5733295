//! Synthetic run results (rank reports, a failure, predictions) for tests, examples and
//! measuring the report at scale; not a model of any real machine.

use cai_core::layout;
use cai_core::predictions::Predictions;
use cai_core::report::{RankFailure, RankReport};
use cai_core::StorageUrl;

use crate::error::{Error, Result};

/// What to make.
#[derive(Debug, Clone, PartialEq)]
pub struct SyntheticRun {
    /// Ranks that finish.
    pub ranks: usize,
    /// Ranks that fail (numbered after the finished ones).
    pub failed: usize,
    /// Galaxies per rank in the reports.
    pub galaxies_per_rank: u64,
    /// Galaxies per rank written to predictions.parquet (0: no predictions file).
    pub predictions_per_rank: usize,
    /// Partition bytes per rank.
    pub partition_bytes: u64,
    /// Batch size.
    pub batch_size: u64,
    /// Seconds of inference per galaxy.
    pub s_per_galaxy: f64,
    /// Every n-th rank is 3× slower (0: none).
    pub straggler_every: usize,
    /// Write `combined_data.json` too (as summarize does).
    pub combined: bool,
    /// Seed.
    pub seed: u64,
    /// Unix start time.
    pub t0: f64,
}

impl Default for SyntheticRun {
    fn default() -> Self {
        SyntheticRun {
            ranks: 8,
            failed: 1,
            galaxies_per_rank: 1280,
            predictions_per_rank: 1280,
            partition_bytes: 25 << 20,
            batch_size: 512,
            s_per_galaxy: 0.005,
            straggler_every: 0,
            combined: true,
            seed: 1,
            t0: 1_764_000_000.0,
        }
    }
}

/// SplitMix64: small, seeded, good enough for fake timings.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
    }
    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-12), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

fn json(v: &impl serde::Serialize) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|e| Error::Json {
        file: "(synthetic)".into(),
        reason: e.to_string(),
    })
}

/// Write a synthetic run's files under `location`; returns the reports written.
pub async fn write(location: &StorageUrl, s: &SyntheticRun) -> Result<Vec<RankReport>> {
    let mut rng = Rng(s.seed);
    let world = s.ranks + s.failed;
    let mut reports = Vec::with_capacity(s.ranks);
    let mut preds = Predictions::default();
    for rank in 0..s.ranks {
        let slow = s.straggler_every > 0 && rank % s.straggler_every == s.straggler_every - 1;
        let g = s.galaxies_per_rank;
        let infer = g as f64
            * s.s_per_galaxy
            * (1.0 + 0.05 * rng.normal()).max(0.5)
            * if slow { 3.0 } else { 1.0 };
        let download = 0.3 + 0.2 * rng.next();
        let decode = 0.05 + 0.02 * rng.next();
        let upload = 0.02 + 0.02 * rng.next();
        let wall = download + decode + infer + upload + 0.4 + 0.1 * rng.next();
        let start = s.t0 + 0.5 * rng.next() + (rank / 64) as f64 * 0.05;
        let bits = g * (5 * 32 * 32 + 5) * 32;
        let key = format!("{:05}.safetensors", rank + 1);
        reports.push(RankReport {
            total_cpu_time: infer,
            total_cpu_memory: 1800.0 + 100.0 * rng.next(),
            execution_time_per_batch: infer / (g as f64 / s.batch_size as f64).ceil(),
            num_batches: g.div_ceil(s.batch_size),
            batch_size: s.batch_size,
            device: "cpu".into(),
            throughput_bps: bits as f64 / infer,
            sample_persec: g as f64 / infer,
            result_path: location.to_string(),
            data_path: serde_json::Value::String(key.clone()),
            rank,
            world_size: world,
            galaxies: g,
            total_bits: bits,
            bytes_read: s.partition_bytes,
            started_at: start,
            ended_at: start + wall,
            wall_time_s: wall,
            download_s: download,
            decode_s: decode,
            upload_s: upload,
            threads: 1,
            kernels: "avx2".into(),
            engine: "local".into(),
            host: format!("node{}", rank % 4),
            model: "model.safetensors".into(),
            predictions: String::new(),
            cai_version: "synthetic".into(),
            ..Default::default()
        });
        for row in 0..s.predictions_per_rank {
            let z = (0.02 + 0.5 * rng.next() * rng.next().sqrt()) as f32;
            let noise = if rng.next() < 0.03 {
                0.3 * rng.normal()
            } else {
                0.02 * rng.normal()
            };
            preds
                .index
                .push((rank * s.predictions_per_rank + row) as i64);
            preds.partition.push(key.clone());
            preds.row.push(row as i32);
            preds.rank.push(rank as i32);
            preds.z_pred.push(z + (noise * (1.0 + z as f64)) as f32);
            preds.z_true.push(Some(z));
        }
    }
    for r in &reports {
        location.put(&layout::rank_report(r.rank), json(r)?).await?;
    }
    for k in 0..s.failed {
        let rank = s.ranks + k;
        let f = RankFailure {
            rank,
            partitions: vec![format!("{:05}.safetensors", rank + 1)],
            error: format!(
                "{:05}.safetensors: truncated tensor data (synthetic)",
                rank + 1
            ),
            engine: "local".into(),
            host: "node0".into(),
            failed_at: s.t0 + 1.0,
        };
        location.put(&layout::failure(rank), json(&f)?).await?;
    }
    if s.combined {
        location.put(layout::COMBINED, json(&reports)?).await?;
    }
    if s.predictions_per_rank > 0 {
        let name = location.url_of(layout::PREDICTIONS);
        location
            .put(layout::PREDICTIONS, preds.to_parquet(&name)?)
            .await?;
    }
    Ok(reports)
}
