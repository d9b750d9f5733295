//! The worker: run one rank of a plan, the same on every engine.
//!
//! Fetch the rank's partitions (the next one downloads while this one computes), decode
//! them, run batches through the model on this worker's thread pool, then write
//! `predictions/<rank>.parquet` and, last, `<rank>.json`: a rank is done exactly when its
//! `<rank>.json` exists. A failure writes `failed/<rank>.json` naming the file and the cause.

use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cai_core::layout;
use cai_core::plan::{PartitionRef, Plan};
use cai_core::predictions::Predictions;
use cai_core::report::{RankFailure, RankReport};
use cai_core::StorageUrl;
use cai_data::Partition;
use cai_model::Model;
use serde_json::Value;

use crate::error::{Error, Result};

/// Called with the number of galaxies just finished.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// A worker: a model, a thread pool for it, and where it runs.
pub struct Worker {
    model: Arc<dyn Model>,
    pool: Arc<rayon::ThreadPool>,
    threads: usize,
    engine: String,
    model_url: String,
    kernels: String,
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// This machine's host name.
pub fn host_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .or_else(|_| std::env::var("HOSTNAME"))
        .unwrap_or_else(|_| "unknown".into())
}

/// Peak resident memory of this process in MB (VmHWM), 0 where unknown.
pub fn peak_rss_mb() -> f64 {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return 0.0;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0)
        .unwrap_or(0.0)
}

/// The failure record of `rank` of `plan`, which failed on `host` under `engine` because of
/// `error`: the one place a [`RankFailure`] is made.
pub fn rank_failure(
    plan: &Plan,
    rank: usize,
    engine: &str,
    host: &str,
    error: String,
) -> RankFailure {
    RankFailure {
        rank,
        partitions: plan
            .partitions_of(rank)
            .iter()
            .map(|p| p.key.clone())
            .collect(),
        error,
        engine: engine.to_string(),
        host: host.to_string(),
        failed_at: unix_now(),
    }
}

/// Write a failure record as `failed/<rank>.json` under `results`.
pub async fn write_failure(results: &StorageUrl, failure: &RankFailure) -> Result<()> {
    let json = crate::stages::pretty("failure record", failure)?;
    results.put(&layout::failure(failure.rank), json).await?;
    Ok(())
}

/// Write `failed/<rank>.json` for a rank that failed on this host with `error` (a failure
/// to write it is logged: the error itself is what the caller reports).
pub async fn record_failure(
    results: &StorageUrl,
    plan: &Plan,
    rank: usize,
    engine: &str,
    error: &Error,
) {
    let failure = rank_failure(plan, rank, engine, &host_name(), error.to_string());
    if let Err(w) = write_failure(results, &failure).await {
        tracing::warn!("rank {rank}: could not record the failure: {w}");
    }
}

/// What one partition's inference produced.
struct PartitionOutcome {
    preds: Predictions,
    batches: u64,
    infer_s: f64,
    decode_s: f64,
    bits: u64,
    nonfinite_values: u64,
    nonfinite_galaxies: u64,
}

impl Worker {
    /// A worker running `model` on its own pool of `threads` threads.
    pub fn new(
        model: Arc<dyn Model>,
        model_url: &str,
        threads: usize,
        engine: &str,
        kernels: &str,
    ) -> Result<Self> {
        let threads = threads.max(1);
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .thread_name(|i| format!("cai-infer-{i}"))
            .build()
            .map_err(|source| Error::ThreadPool { threads, source })?;
        Ok(Self {
            model,
            pool: Arc::new(pool),
            threads,
            engine: engine.to_string(),
            model_url: model_url.to_string(),
            kernels: kernels.to_string(),
        })
    }

    /// Run one rank; on failure, record it as `failed/<rank>.json` and return the error. A
    /// cancelled run ([`cai_model::Error::Cancelled`]) is not recorded: the rank is simply
    /// not done, and a resumed run does it.
    pub async fn run_rank(
        &self,
        plan: &Plan,
        rank: usize,
        progress: Option<ProgressFn>,
    ) -> Result<RankReport> {
        let results = StorageUrl::parse(&plan.results)?;
        match self.run_rank_inner(plan, rank, &results, progress).await {
            Ok(report) => Ok(report),
            Err(e) => {
                if !e.is_cancelled() {
                    record_failure(&results, plan, rank, &self.engine, &e).await;
                }
                Err(e)
            }
        }
    }

    async fn run_rank_inner(
        &self,
        plan: &Plan,
        rank: usize,
        results: &StorageUrl,
        progress: Option<ProgressFn>,
    ) -> Result<RankReport> {
        if rank >= plan.world_size {
            return Err(Error::NoSuchRank {
                rank,
                world_size: plan.world_size,
            });
        }
        let started_at = unix_now();
        let wall = Instant::now();
        let data = StorageUrl::parse(&plan.data)?;
        let parts: Vec<PartitionRef> = plan.partitions_of(rank).into_iter().cloned().collect();

        let mut preds = Predictions::default();
        let (mut batches, mut bits, mut bytes_read) = (0u64, 0u64, 0u64);
        let (mut infer_s, mut decode_s, mut download_s) = (0.0f64, 0.0f64, 0.0f64);
        let (mut nf_values, mut nf_galaxies) = (0u64, 0u64);

        let fetch = |p: &PartitionRef| {
            let data = data.clone();
            let key = p.key.clone();
            tokio::spawn(async move { data.get(&key).await })
        };
        let mut next = parts.first().map(fetch);
        for (i, part) in parts.iter().enumerate() {
            let t = Instant::now();
            let Some(handle) = next.take() else { break };
            let bytes = handle
                .await
                .map_err(|source| Error::Join {
                    task: format!("download of {}", data.url_of(&part.key)),
                    source,
                })?
                .map_err(|e| match e {
                    cai_core::Error::NotFound { url } => Error::Partition {
                        file: url,
                        reason: "partition not found".into(),
                    },
                    other => Error::Core(other),
                })?;
            download_s += t.elapsed().as_secs_f64();
            next = parts.get(i + 1).map(fetch);
            bytes_read += bytes.len() as u64;
            let url = data.url_of(&part.key);
            let outcome = self
                .infer_partition(plan, rank, part, url, bytes, progress.clone())
                .await?;
            preds.append(outcome.preds);
            batches += outcome.batches;
            infer_s += outcome.infer_s;
            decode_s += outcome.decode_s;
            bits += outcome.bits;
            nf_values += outcome.nonfinite_values;
            nf_galaxies += outcome.nonfinite_galaxies;
        }

        let t = Instant::now();
        let pkey = layout::rank_predictions(rank);
        let parquet = preds.to_parquet(&results.url_of(&pkey))?;
        results.put(&pkey, parquet).await?;
        let galaxies = preds.len() as u64;
        let data_path = plan
            .items
            .get(rank)
            .map(|it| it.data_path.clone())
            .unwrap_or(Value::Null);
        let mut report = RankReport {
            total_cpu_time: infer_s,
            total_cpu_memory: peak_rss_mb(),
            execution_time_per_batch: if batches > 0 {
                infer_s / batches as f64
            } else {
                0.0
            },
            num_batches: batches,
            batch_size: plan.batch_size as u64,
            device: "cpu".into(),
            throughput_bps: if infer_s > 0.0 {
                bits as f64 / infer_s
            } else {
                0.0
            },
            sample_persec: if infer_s > 0.0 {
                galaxies as f64 / infer_s
            } else {
                0.0
            },
            result_path: plan
                .items
                .get(rank)
                .map(|it| it.result_path.clone())
                .unwrap_or_else(|| plan.results.clone()),
            data_path,
            rank,
            world_size: plan.world_size,
            galaxies,
            total_bits: bits,
            bytes_read,
            started_at,
            ended_at: 0.0,
            wall_time_s: 0.0,
            download_s,
            decode_s,
            upload_s: 0.0,
            nonfinite_inputs: nf_values,
            nonfinite_galaxies: nf_galaxies,
            threads: self.threads,
            kernels: self.kernels.clone(),
            engine: self.engine.clone(),
            host: host_name(),
            model: self.model_url.clone(),
            predictions: pkey,
            cai_version: env!("CARGO_PKG_VERSION").to_string(),
        };
        report.upload_s = t.elapsed().as_secs_f64();
        report.ended_at = unix_now();
        report.wall_time_s = wall.elapsed().as_secs_f64();
        let json = crate::stages::pretty("rank report", &report)?;
        results.put(&layout::rank_report(rank), json).await?;
        results.delete(&layout::failure(rank)).await?;
        Ok(report)
    }

    async fn infer_partition(
        &self,
        plan: &Plan,
        rank: usize,
        part: &PartitionRef,
        url: String,
        bytes: Bytes,
        progress: Option<ProgressFn>,
    ) -> Result<PartitionOutcome> {
        let model = self.model.clone();
        let pool = self.pool.clone();
        let batch_size = plan.batch_size;
        let part = part.clone();
        let task = format!("inference on {url}");
        tokio::task::spawn_blocking(move || {
            infer_blocking(
                &*model, &pool, rank, &part, &url, &bytes, batch_size, progress,
            )
        })
        .await
        .map_err(|source| Error::Join { task, source })?
    }
}

/// Decode one partition and predict every galaxy in it, batch by batch.
#[allow(clippy::too_many_arguments)]
fn infer_blocking(
    model: &dyn Model,
    pool: &rayon::ThreadPool,
    rank: usize,
    part: &PartitionRef,
    url: &str,
    bytes: &[u8],
    batch_size: usize,
    progress: Option<ProgressFn>,
) -> Result<PartitionOutcome> {
    let t = Instant::now();
    if let Some(expected) = &part.sha256 {
        let got = cai_data::partition::sha256_hex(bytes);
        if &got != expected {
            return Err(Error::Partition {
                file: url.to_string(),
                reason: format!(
                    "checksum mismatch: manifest says sha256 {expected}, file has {got} ({} bytes)",
                    bytes.len()
                ),
            });
        }
    }
    let partition: Partition = cai_data::read_partition(url, bytes)?;
    let decode_s = t.elapsed().as_secs_f64();
    let run = predict_partition(model, pool, &partition, url, batch_size, progress.as_ref())?;
    let first = part.first_galaxy.map(|f| f as i64).unwrap_or(0);
    let preds = Predictions::for_partition(
        &part.key,
        first,
        rank,
        run.z_pred,
        partition.redshift.as_deref(),
    );
    Ok(PartitionOutcome {
        preds,
        batches: run.batches,
        infer_s: run.infer_s,
        decode_s,
        bits: 32 * (partition.images.len() + partition.magnitudes.len()) as u64,
        nonfinite_values: run.nonfinite_values,
        nonfinite_galaxies: run.nonfinite_galaxies,
    })
}

/// Predictions for one decoded partition and how they were made.
#[derive(Debug, Clone, Default)]
pub struct PartitionRun {
    /// Predicted redshift per galaxy (NaN where an input was not finite).
    pub z_pred: Vec<f32>,
    /// Batches run.
    pub batches: u64,
    /// Seconds in the model.
    pub infer_s: f64,
    /// Input values that were NaN or infinite.
    pub nonfinite_values: u64,
    /// Galaxies with such a value.
    pub nonfinite_galaxies: u64,
}

/// One batch made safe for the model: a galaxy holding a non-finite value (NaN or ±Inf in
/// its pixels or magnitudes) is zeroed in a copy before the model sees it, and its
/// prediction is set to NaN afterwards; a batch with none is passed in place. The rule of
/// every caller that predicts from arrays (the worker, the Python package).
#[derive(Debug, Default)]
pub struct FiniteBatch {
    images: Vec<f32>,
    magnitudes: Vec<f32>,
    bad: Vec<usize>,
}

impl FiniteBatch {
    /// The batch to predict (`images` holds galaxies of `img_len` values, `magnitudes` the
    /// same galaxies' values in equal shares) and the number of non-finite values in it.
    pub fn prepare<'a>(
        &'a mut self,
        images: &'a [f32],
        magnitudes: &'a [f32],
        img_len: usize,
    ) -> (&'a [f32], &'a [f32], u64) {
        let m = images.len() / img_len.max(1);
        let c = magnitudes.len() / m.max(1);
        self.bad.clear();
        let mut nonfinite = 0u64;
        for g in 0..m {
            let nf = images[g * img_len..(g + 1) * img_len]
                .iter()
                .chain(&magnitudes[g * c..(g + 1) * c])
                .filter(|v| !v.is_finite())
                .count() as u64;
            if nf > 0 {
                nonfinite += nf;
                self.bad.push(g);
            }
        }
        if self.bad.is_empty() {
            return (images, magnitudes, 0);
        }
        self.images.clear();
        self.images.extend_from_slice(images);
        self.magnitudes.clear();
        self.magnitudes.extend_from_slice(magnitudes);
        for &g in &self.bad {
            self.images[g * img_len..(g + 1) * img_len].fill(0.0);
            self.magnitudes[g * c..(g + 1) * c].fill(0.0);
        }
        (&self.images, &self.magnitudes, nonfinite)
    }

    /// Galaxies of the last prepared batch that held a non-finite value.
    pub fn bad(&self) -> &[usize] {
        &self.bad
    }

    /// Set the predictions of those galaxies to NaN.
    pub fn mark(&self, z: &mut [f32]) {
        for &g in &self.bad {
            if let Some(v) = z.get_mut(g) {
                *v = f32::NAN;
            }
        }
    }
}

/// Predict every galaxy of a partition, batch by batch, on `pool`.
///
/// A galaxy with a non-finite input is counted, run on zeros (so the batch's other galaxies
/// are untouched) and reported as NaN. `url` names the partition in errors.
pub fn predict_partition(
    model: &dyn Model,
    pool: &rayon::ThreadPool,
    partition: &Partition,
    url: &str,
    batch_size: usize,
    progress: Option<&ProgressFn>,
) -> Result<PartitionRun> {
    let (c, h, w) = model.input_shape();
    if (partition.channels, partition.height, partition.width) != (c, h, w) {
        return Err(Error::Partition {
            file: url.to_string(),
            reason: format!(
                "images are [{}, {}, {}, {}] but the model takes [N, {c}, {h}, {w}]",
                partition.n, partition.channels, partition.height, partition.width
            ),
        });
    }
    let n = partition.n;
    let img_len = c * h * w;
    let mut run = PartitionRun {
        z_pred: Vec::with_capacity(n),
        ..Default::default()
    };
    let mut guard = FiniteBatch::default();
    for start in (0..n).step_by(batch_size.max(1)) {
        let m = batch_size.max(1).min(n - start);
        let (batch_images, batch_mags, nonfinite) = guard.prepare(
            &partition.images[start * img_len..(start + m) * img_len],
            &partition.magnitudes[start * c..(start + m) * c],
            img_len,
        );
        run.nonfinite_values += nonfinite;
        let t = Instant::now();
        let mut out = pool.install(|| model.predict(batch_images, batch_mags, m))?;
        run.infer_s += t.elapsed().as_secs_f64();
        run.batches += 1;
        if out.len() < m {
            return Err(Error::ShortBatch {
                file: url.to_string(),
                expected: m,
                got: out.len(),
            });
        }
        guard.mark(&mut out);
        run.nonfinite_galaxies += guard.bad().len() as u64;
        run.z_pred.extend_from_slice(&out[..m]);
        if let Some(p) = progress {
            p(m as u64);
        }
    }
    Ok(run)
}
