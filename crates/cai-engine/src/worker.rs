//! The worker: run one rank of a plan, the same on every engine.
//!
//! Fetch the rank's partitions (the next one downloads while this one computes), decode
//! them, run batches through the model on this worker's thread pool, then write
//! `predictions/<rank>.parquet` and, last, `<rank>.json`: a rank is done exactly when its
//! `<rank>.json` exists. A failure writes `failed/<rank>.json` naming the file and the cause.

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use cai_core::layout;
use cai_core::plan::{PartitionRef, Plan};
use cai_core::predictions::{OutputColumn, Predictions};
use cai_core::report::{RankFailure, RankReport};
use cai_core::StorageUrl;
use cai_data::{Partition, TensorSet};
use cai_model::{NamedBatch, TensorModel, TensorSpec, REDSHIFT_OUTPUT};
use serde_json::Value;

use crate::error::{Error, Result};

/// Called with the number of galaxies just finished.
pub type ProgressFn = Arc<dyn Fn(u64) + Send + Sync>;

/// A worker: a model, a thread pool for it, and where it runs.
pub struct Worker {
    model: Arc<dyn TensorModel>,
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
    download_s: f64,
    bytes_read: u64,
    batches: u64,
    infer_s: f64,
    decode_s: f64,
    bits: u64,
    nonfinite_values: u64,
    nonfinite_galaxies: u64,
}

/// A rank's partitions, shared between the worker that runs the rank and idle workers that
/// help it (the local engine): each partition is claimed once and its outcome lands in its
/// slot, and the rank's outputs are put together in partition order, so they do not depend
/// on who computed what.
pub struct RankShare {
    state: Mutex<ShareState>,
    filled: tokio::sync::Notify,
}

struct ShareState {
    next: usize,
    stopped: bool,
    slots: Vec<Option<Result<PartitionOutcome>>>,
    helped: u64,
}

impl RankShare {
    /// A share of `partitions` partitions, none claimed.
    pub fn new(partitions: usize) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new(ShareState {
                next: 0,
                stopped: false,
                slots: (0..partitions).map(|_| None).collect(),
                helped: 0,
            }),
            filled: tokio::sync::Notify::new(),
        })
    }

    fn lock(&self) -> Result<std::sync::MutexGuard<'_, ShareState>> {
        self.state.lock().map_err(|_| Error::Poisoned {
            what: "rank partitions",
        })
    }

    /// Partitions nobody has claimed yet (0 once the rank failed).
    pub fn unclaimed(&self) -> usize {
        self.lock()
            .map(|s| if s.stopped { 0 } else { s.slots.len() - s.next })
            .unwrap_or(0)
    }

    /// Partitions computed by helpers rather than the rank's own worker.
    pub fn helped(&self) -> u64 {
        self.lock().map(|s| s.helped).unwrap_or(0)
    }

    fn claim(&self) -> Option<usize> {
        let mut s = self.lock().ok()?;
        (!s.stopped && s.next < s.slots.len()).then(|| {
            s.next += 1;
            s.next - 1
        })
    }

    fn fill(&self, i: usize, outcome: Result<PartitionOutcome>, helper: bool) {
        if let Ok(mut s) = self.lock() {
            if outcome.is_err() {
                s.stopped = true;
            }
            if helper && outcome.is_ok() {
                s.helped += 1;
            }
            if let Some(slot) = s.slots.get_mut(i) {
                *slot = Some(outcome);
            }
        }
        self.filled.notify_one();
    }

    fn stop(&self) {
        if let Ok(mut s) = self.lock() {
            s.stopped = true;
        }
    }

    /// Every partition's outcome, in order, once all are in; the first error if any.
    async fn wait_all(&self) -> Result<Vec<PartitionOutcome>> {
        loop {
            {
                let mut s = self.lock()?;
                if let Some(i) = s.slots.iter().position(|o| matches!(o, Some(Err(_)))) {
                    if let Some(Some(Err(e))) = s.slots.get_mut(i).map(Option::take) {
                        return Err(e);
                    }
                }
                if s.slots.iter().all(Option::is_some) {
                    return s
                        .slots
                        .iter_mut()
                        .map(|o| {
                            o.take().unwrap_or(Err(Error::Poisoned {
                                what: "partition outcome",
                            }))
                        })
                        .collect();
                }
            }
            // A permit is kept when `fill` runs before this wait starts.
            self.filled.notified().await;
        }
    }
}

/// A read of a key that may be missing, with S3's 403 for a missing key (when the role may
/// not list the bucket) taken as "not there" (`None`, `false`); a real lack of access shows
/// when the rank writes its outputs.
pub(crate) fn denied_is_absent<T: Default>(r: cai_core::Result<T>) -> Result<T> {
    match r {
        Err(cai_core::Error::Store {
            source: object_store::Error::PermissionDenied { .. },
            ..
        }) => Ok(T::default()),
        r => Ok(r?),
    }
}

/// Whether the marker object `key` is in `results` (a 403 means not: [`denied_is_absent`]).
pub(crate) async fn marked(results: &StorageUrl, key: &str) -> Result<bool> {
    denied_is_absent(results.exists(key).await)
}

/// Which copy of a rank writes its outputs when the rank runs more than once (a speculated
/// straggler): the first copy to finish claims the commit and writes `predictions/<rank>`
/// and `<rank>.json`; any other copy ends with [`Error::Superseded`], having written
/// nothing, so each galaxy is in the results once. Copies in one process claim in memory;
/// copies in separate processes (Slurm tasks) also claim `claims/<rank>` in the results
/// location with a conditional put, so of those too exactly one writes.
#[derive(Debug)]
pub struct Commit {
    state: Mutex<(u32, Option<u32>)>,
    winner: tokio::sync::watch::Sender<Option<u32>>,
    /// The results location, rank and this process's tag, when copies in other processes
    /// claim the rank too.
    shared: Option<(StorageUrl, usize, String)>,
}

impl Commit {
    /// A commit with no copy yet, among copies in this process.
    pub fn new() -> Arc<Self> {
        Self::with(None)
    }

    /// A commit for rank `rank` among copies in any process: the winner also claims
    /// `claims/<rank>` under `results`, writing `tag` (which copy it was) there.
    pub fn shared(results: &StorageUrl, rank: usize, tag: &str) -> Arc<Self> {
        Self::with(Some((results.clone(), rank, tag.to_string())))
    }

    fn with(shared: Option<(StorageUrl, usize, String)>) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::new((0, None)),
            winner: tokio::sync::watch::channel(None).0,
            shared,
        })
    }

    /// Register one more copy of the rank; returns its id.
    pub fn add_copy(&self) -> u32 {
        self.state
            .lock()
            .map(|mut s| {
                s.0 += 1;
                s.0 - 1
            })
            .unwrap_or(u32::MAX)
    }

    /// Copies registered so far.
    pub fn copies(&self) -> u32 {
        self.state.lock().map(|s| s.0).unwrap_or(0)
    }

    /// Claim the commit for copy `id`: whether it is the first; also returns whether the
    /// rank was speculated (more than one copy started here, or a second copy marked in
    /// the results location).
    async fn claim(&self, id: u32) -> Result<(bool, bool)> {
        let (won, copies) = {
            let Ok(mut s) = self.state.lock() else {
                return Ok((false, false));
            };
            let first = s.1.is_none();
            if first {
                s.1 = Some(id);
                self.winner.send_replace(Some(id));
            }
            (first || s.1 == Some(id), s.0)
        };
        let Some((results, rank, tag)) = self.shared.as_ref().filter(|_| won) else {
            return Ok((won, copies > 1));
        };
        let claim = layout::rank_claim(*rank);
        if results.put_if_absent(&claim, tag.clone()).await?.is_none() {
            // A put retried after its answer was lost (a 500 or a cut connection) finds its
            // own first try there: that is this copy's claim, not another's.
            let holder = results.get_opt(&claim).await.ok().flatten();
            if holder.as_deref() != Some(tag.as_bytes()) {
                return Ok((false, false));
            }
        }
        let marked = marked(results, &layout::rank_speculated(*rank)).await?;
        Ok((true, copies > 1 || marked))
    }

    /// Resolves once a copy in another process has claimed this shared commit
    /// (`claims/<rank>` holds another copy's tag), looking every `every`: this copy can stop,
    /// where nothing else would stop it (a Lambda invocation cannot be cancelled). Never
    /// resolves for a commit that is not shared.
    pub async fn lost_elsewhere(&self, every: std::time::Duration) {
        let Some((results, rank, tag)) = &self.shared else {
            return std::future::pending().await;
        };
        let claim = layout::rank_claim(*rank);
        loop {
            tokio::time::sleep(every).await;
            if let Ok(Some(holder)) = results.get_opt(&claim).await {
                if holder.as_ref() != tag.as_bytes() {
                    return;
                }
            }
        }
    }

    /// Resolves once a copy other than `id` has claimed the commit: copy `id` can stop.
    pub async fn lost(&self, id: u32) {
        let mut rx = self.winner.subscribe();
        if rx.wait_for(|w| w.is_some_and(|w| w != id)).await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

impl Worker {
    /// A worker running `model` on its own pool of `threads` threads.
    pub fn new(
        model: Arc<dyn TensorModel>,
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
        let share = RankShare::new(plan.partitions_of(rank).len());
        self.run_rank_with(plan, rank, &share, None, progress).await
    }

    /// [`Worker::run_rank`] with the rank's partitions in `share`, which idle workers may
    /// [`help`](Worker::help) with, and, when the rank runs as several copies, the copy's
    /// `commit` (the commit and this copy's id): only the first copy to finish writes. A
    /// copy that lost ([`Error::Superseded`]) is not recorded as failed.
    pub async fn run_rank_with(
        &self,
        plan: &Plan,
        rank: usize,
        share: &RankShare,
        commit: Option<(&Commit, u32)>,
        progress: Option<ProgressFn>,
    ) -> Result<RankReport> {
        let results = StorageUrl::parse(&plan.results)?;
        match self
            .run_rank_inner(plan, rank, &results, share, commit, progress)
            .await
        {
            Ok(report) => Ok(report),
            Err(e) => {
                if !e.is_cancelled() && !e.is_superseded() {
                    record_failure(&results, plan, rank, &self.engine, &e).await;
                }
                Err(e)
            }
        }
    }

    /// Help rank `rank` of `plan`, which another worker runs with `share`: compute its
    /// partitions nobody has claimed yet, until none is left. Outcomes (errors included)
    /// go to the rank's worker, which reports them.
    pub async fn help(
        &self,
        plan: &Plan,
        rank: usize,
        share: &RankShare,
        progress: Option<ProgressFn>,
    ) {
        let Ok(data) = StorageUrl::parse(&plan.data) else {
            return;
        };
        let parts = plan.partitions_of(rank);
        while let Some(i) = share.claim() {
            let Some(part) = parts.get(i) else { break };
            let t = Instant::now();
            let outcome = match data.get(&part.key).await.map_err(not_found) {
                Ok(bytes) => {
                    let waited = t.elapsed().as_secs_f64();
                    let n = bytes.len() as u64;
                    let url = data.url_of(&part.key);
                    self.infer_partition(plan, rank, part, url, bytes, progress.clone())
                        .await
                        .map(|mut o| {
                            o.download_s = waited;
                            o.bytes_read = n;
                            o
                        })
                }
                Err(e) => Err(e),
            };
            let failed = outcome.is_err();
            share.fill(i, outcome, true);
            if failed {
                break;
            }
        }
    }

    async fn run_rank_inner(
        &self,
        plan: &Plan,
        rank: usize,
        results: &StorageUrl,
        share: &RankShare,
        commit: Option<(&Commit, u32)>,
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

        let fetch = |i: usize| {
            let data = data.clone();
            let key = parts.get(i).map(|p| p.key.clone()).unwrap_or_default();
            (i, tokio::spawn(async move { data.get(&key).await }))
        };
        // Claim a partition, fetch it while the one before computes; helpers claim the rest.
        let mut next = share.claim().map(fetch);
        while let Some((i, handle)) = next.take() {
            let Some(part) = parts.get(i) else { break };
            let t = Instant::now();
            let bytes = handle.await.map_err(|source| Error::Join {
                task: format!("download of {}", data.url_of(&part.key)),
                source,
            });
            let bytes = match bytes.and_then(|b| b.map_err(not_found)) {
                Ok(b) => b,
                Err(e) => {
                    share.stop();
                    return Err(e);
                }
            };
            let waited = t.elapsed().as_secs_f64();
            next = share.claim().map(fetch);
            let n = bytes.len() as u64;
            let url = data.url_of(&part.key);
            match self
                .infer_partition(plan, rank, part, url, bytes, progress.clone())
                .await
            {
                Ok(mut o) => {
                    o.download_s = waited;
                    o.bytes_read = n;
                    share.fill(i, Ok(o), false);
                }
                Err(e) => {
                    share.stop();
                    return Err(e);
                }
            }
        }
        // Partitions helpers took are in when they finish; a helper's error is the rank's.
        let outcomes = share.wait_all().await?;

        let mut preds = Predictions::default();
        let (mut batches, mut bits, mut bytes_read) = (0u64, 0u64, 0u64);
        let (mut infer_s, mut decode_s, mut download_s) = (0.0f64, 0.0f64, 0.0f64);
        let (mut nf_values, mut nf_galaxies) = (0u64, 0u64);
        for outcome in outcomes {
            preds.append(outcome.preds);
            batches += outcome.batches;
            infer_s += outcome.infer_s;
            decode_s += outcome.decode_s;
            download_s += outcome.download_s;
            bytes_read += outcome.bytes_read;
            bits += outcome.bits;
            nf_values += outcome.nonfinite_values;
            nf_galaxies += outcome.nonfinite_galaxies;
        }
        // One copy writes: a copy that finds another already committed writes nothing.
        let speculated = match commit {
            Some((c, id)) => match c.claim(id).await? {
                (true, speculated) => speculated,
                (false, _) => return Err(Error::Superseded { rank }),
            },
            None => false,
        };

        let t = Instant::now();
        let pkey = layout::rank_predictions(rank);
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
            predictions: pkey.clone(),
            cai_version: env!("CARGO_PKG_VERSION").to_string(),
            speculated,
        };
        // The report travels in the predictions' footer too (summarize then reads one
        // object per rank), so it is finished once the predictions are encoded: the same
        // bytes go to `<rank>.json`, written last, which marks the rank done.
        let mut json = None;
        let parquet = preds.to_parquet_with(&results.url_of(&pkey), || {
            report.upload_s = t.elapsed().as_secs_f64();
            report.ended_at = unix_now();
            report.wall_time_s = wall.elapsed().as_secs_f64();
            let encoded = crate::stages::pretty("rank report", &report);
            let carried = encoded
                .as_ref()
                .ok()
                .and_then(|j| String::from_utf8(j.clone()).ok())
                .map(|j| (layout::RANK_REPORT_METADATA.to_string(), j));
            json = Some(encoded);
            carried.into_iter().collect()
        })?;
        let json = match json {
            Some(j) => j?,
            None => crate::stages::pretty("rank report", &report)?,
        };
        results.put(&pkey, parquet).await?;
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
        let label = plan.label.clone();
        let part = part.clone();
        let task = format!("inference on {url}");
        tokio::task::spawn_blocking(move || {
            infer_blocking(
                &*model,
                &pool,
                rank,
                &part,
                &url,
                &bytes,
                batch_size,
                label.as_deref(),
                progress,
            )
        })
        .await
        .map_err(|source| Error::Join { task, source })?
    }
}

/// Decode one partition and predict every galaxy in it, batch by batch.
#[allow(clippy::too_many_arguments)]
fn infer_blocking(
    model: &dyn TensorModel,
    pool: &rayon::ThreadPool,
    rank: usize,
    part: &PartitionRef,
    url: &str,
    bytes: &[u8],
    batch_size: usize,
    label: Option<&str>,
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
    let set: TensorSet = cai_data::read_tensors(url, bytes, None)?;
    let decode_s = t.elapsed().as_secs_f64();
    let labels = labels_of(&set, label, url)?;
    let run = predict_tensors(model, pool, &set, url, batch_size, progress.as_ref())?;
    let first = part.first_galaxy.map(|f| f as i64).unwrap_or(0);
    let preds = Predictions::for_partition(&part.key, first, rank, run.z_pred, labels.as_deref())
        .with_outputs(run.outputs);
    Ok(PartitionOutcome {
        preds,
        batches: run.batches,
        infer_s: run.infer_s,
        decode_s,
        bits: run.bits,
        nonfinite_values: run.nonfinite_values,
        nonfinite_galaxies: run.nonfinite_galaxies,
        download_s: 0.0,
        bytes_read: 0,
    })
}

/// The labels of a partition, one per galaxy, as f32: the tensor `label` (`--label`; an
/// error naming the partition's tensors when it lacks it or holds more than one value per
/// galaxy) or, by default, `redshift` when the partition has it.
pub fn labels_of(set: &TensorSet, label: Option<&str>, url: &str) -> Result<Option<Vec<f32>>> {
    let Some(name) = label else {
        return Ok(set.redshift().map(<[f32]>::to_vec));
    };
    match set.get(name) {
        Some(t) if t.per_galaxy() == 1 => Ok(Some(t.to_f32().into_owned())),
        other => Err(Error::Partition {
            file: url.to_string(),
            reason: format!(
                "--label {name}: {}; the partition has {}",
                if other.is_some() {
                    "the tensor holds more than one value per galaxy"
                } else {
                    "no such tensor"
                },
                set.tensors
                    .iter()
                    .map(|t| t.describe())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        }),
    }
}

/// A partition that is not there, as a partition error naming it.
fn not_found(e: cai_core::Error) -> Error {
    match e {
        cai_core::Error::NotFound { url } => Error::Partition {
            file: url,
            reason: "partition not found".into(),
        },
        other => Error::Core(other),
    }
}

/// Predictions for one decoded partition and how they were made.
#[derive(Debug, Clone, Default)]
pub struct PartitionRun {
    /// Predicted redshift per galaxy (NaN where an input was not finite, and everywhere
    /// for a model without a `z` output).
    pub z_pred: Vec<f32>,
    /// The model's other outputs, one column each (NaN where an input was not finite).
    pub outputs: Vec<OutputColumn>,
    /// Batches run.
    pub batches: u64,
    /// Seconds in the model.
    pub infer_s: f64,
    /// Input values that were NaN or infinite.
    pub nonfinite_values: u64,
    /// Galaxies with such a value.
    pub nonfinite_galaxies: u64,
    /// Bits of input fed to the model (32 per f32 value of every bound tensor).
    pub bits: u64,
}

/// One batch made safe for the model: a galaxy holding a non-finite value (NaN or ±Inf in
/// its pixels or magnitudes) is zeroed in a copy before the model sees it, and its
/// prediction is set to NaN afterwards; a batch with none is passed in place. The rule of
/// every caller that predicts from arrays (the worker, the Python package).
#[derive(Debug, Default)]
pub struct FiniteBatch {
    copies: Vec<Vec<f32>>,
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
        let (out, nonfinite) = self.prepare_all(&[images, magnitudes], m);
        match out.as_slice() {
            [i, g] => (i, g, nonfinite),
            _ => (images, magnitudes, nonfinite),
        }
    }

    /// The same for any tensors of `m` galaxies each (every slice holds `m` equal shares):
    /// the slices to feed, in order, and the number of non-finite values in them.
    pub fn prepare_all<'a>(&'a mut self, tensors: &[&'a [f32]], m: usize) -> (Vec<&'a [f32]>, u64) {
        self.bad.clear();
        let mut nonfinite = 0u64;
        for g in 0..m {
            let nf: usize = tensors
                .iter()
                .map(|t| {
                    let per = t.len() / m.max(1);
                    t[g * per..(g + 1) * per]
                        .iter()
                        .filter(|v| !v.is_finite())
                        .count()
                })
                .sum();
            if nf > 0 {
                nonfinite += nf as u64;
                self.bad.push(g);
            }
        }
        if self.bad.is_empty() {
            return (tensors.to_vec(), 0);
        }
        self.copies.resize_with(tensors.len(), Vec::new);
        for (copy, t) in self.copies.iter_mut().zip(tensors) {
            let per = t.len() / m.max(1);
            copy.clear();
            copy.extend_from_slice(t);
            for &g in &self.bad {
                copy[g * per..(g + 1) * per].fill(0.0);
            }
        }
        let out = self.copies[..tensors.len()]
            .iter()
            .map(Vec::as_slice)
            .collect();
        (out, nonfinite)
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

/// The tensors of a decoded partition by name, with their per-galaxy shapes (as fed: f32):
/// what model inputs bind to.
pub fn tensor_specs(set: &TensorSet) -> Vec<TensorSpec> {
    set.tensors
        .iter()
        .map(|t| TensorSpec::f32(&t.name, &t.shape))
        .collect()
}

/// [`predict_tensors`] over AstroMAE's partition (its tensors `images`, `magnitudes`,
/// `redshift`, `object_id`).
pub fn predict_partition(
    model: &dyn TensorModel,
    pool: &rayon::ThreadPool,
    partition: &Partition,
    url: &str,
    batch_size: usize,
    progress: Option<&ProgressFn>,
) -> Result<PartitionRun> {
    let set = TensorSet::from_partition(partition.clone());
    predict_tensors(model, pool, &set, url, batch_size, progress)
}

/// Predict every galaxy of a partition, batch by batch, on `pool`.
///
/// The model's inputs are bound to the partition's tensors by name (or `--bind`) first
/// (the error lists both sides); integer tensors are fed as f32. A galaxy with a
/// non-finite value in a bound tensor is counted, run on zeros (so the batch's other
/// galaxies are untouched) and reported as NaN in every output. The output `z` (a scalar)
/// becomes `z_pred`; every other output becomes a column. `url` names the partition in
/// errors.
pub fn predict_tensors(
    model: &dyn TensorModel,
    pool: &rayon::ThreadPool,
    set: &TensorSet,
    url: &str,
    batch_size: usize,
    progress: Option<&ProgressFn>,
) -> Result<PartitionRun> {
    let specs = tensor_specs(set);
    cai_model::check_bindings(model, &specs).map_err(|e| Error::Partition {
        file: url.to_string(),
        reason: e.to_string(),
    })?;
    // The bound tensors, in the model's input order, as f32 (converted once).
    let mut bound: Vec<(TensorSpec, std::borrow::Cow<'_, [f32]>)> = Vec::new();
    for (_, name) in model.bindings() {
        if bound.iter().any(|(s, _)| s.name == name) {
            continue;
        }
        if let (Some(t), Some(spec)) = (set.get(&name), specs.iter().find(|s| s.name == name)) {
            bound.push((spec.clone(), t.to_f32()));
        }
    }
    let n = set.n;
    let out_specs = model.outputs();
    let z_out = out_specs
        .iter()
        .position(|s| s.name == REDSHIFT_OUTPUT && s.shape.is_empty());
    let mut run = PartitionRun {
        z_pred: Vec::with_capacity(n),
        outputs: out_specs
            .iter()
            .enumerate()
            .filter(|(i, _)| Some(*i) != z_out)
            .map(|(_, s)| OutputColumn {
                name: s.name.clone(),
                width: (!s.shape.is_empty()).then(|| s.per_galaxy()),
                values: Vec::with_capacity(n * s.per_galaxy()),
            })
            .collect(),
        ..Default::default()
    };
    let mut guard = FiniteBatch::default();
    for start in (0..n).step_by(batch_size.max(1)) {
        let m = batch_size.max(1).min(n - start);
        let slices: Vec<&[f32]> = bound
            .iter()
            .map(|(s, v)| {
                let per = s.per_galaxy();
                &v[start * per..(start + m) * per]
            })
            .collect();
        run.bits += 32 * slices.iter().map(|v| v.len() as u64).sum::<u64>();
        let (fed, nonfinite) = guard.prepare_all(&slices, m);
        run.nonfinite_values += nonfinite;
        let tensors = bound.iter().map(|(s, _)| s.clone()).zip(fed).collect();
        let batch = NamedBatch { n: m, tensors };
        let t = Instant::now();
        let out = pool.install(|| model.run(&batch))?;
        run.infer_s += t.elapsed().as_secs_f64();
        run.batches += 1;
        let mut cols = run.outputs.iter_mut();
        for (i, spec) in out_specs.iter().enumerate() {
            let per = spec.per_galaxy();
            let got = out
                .get(&spec.name)
                .map(|o| o.values.as_slice())
                .unwrap_or(&[]);
            if got.len() < m * per {
                return Err(Error::ShortBatch {
                    file: url.to_string(),
                    expected: m * per,
                    got: got.len(),
                });
            }
            let dst = if Some(i) == z_out {
                &mut run.z_pred
            } else {
                match cols.next() {
                    Some(col) => &mut col.values,
                    None => break,
                }
            };
            let at = dst.len();
            dst.extend_from_slice(&got[..m * per]);
            for &g in guard.bad() {
                dst[at + g * per..at + (g + 1) * per].fill(f32::NAN);
            }
        }
        if z_out.is_none() {
            run.z_pred.resize(run.z_pred.len() + m, f32::NAN);
        }
        run.nonfinite_galaxies += guard.bad().len() as u64;
        if let Some(p) = progress {
            p(m as u64);
        }
    }
    Ok(run)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(key: &str, z: f32) -> PartitionOutcome {
        PartitionOutcome {
            preds: Predictions::for_partition(key, 0, 0, vec![z], None),
            download_s: 0.5,
            bytes_read: 10,
            batches: 1,
            infer_s: 1.0,
            decode_s: 0.0,
            bits: 32,
            nonfinite_values: 0,
            nonfinite_galaxies: 0,
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_share_hands_out_each_partition_once_and_keeps_their_order() {
        let share = RankShare::new(3);
        assert_eq!(share.unclaimed(), 3);
        assert_eq!(
            [share.claim(), share.claim(), share.claim(), share.claim()],
            [Some(0), Some(1), Some(2), None]
        );
        assert_eq!(share.unclaimed(), 0);
        // Filled out of order, by a helper elsewhere; read back in partition order.
        let s = share.clone();
        let helper = tokio::spawn(async move {
            s.fill(2, Ok(outcome("c", 3.0)), true);
            s.fill(0, Ok(outcome("a", 1.0)), true);
        });
        share.fill(1, Ok(outcome("b", 2.0)), false);
        let all = share.wait_all().await.unwrap();
        helper.await.unwrap();
        let z: Vec<f32> = all.iter().flat_map(|o| o.preds.z_pred.clone()).collect();
        assert_eq!(z, [1.0, 2.0, 3.0]);
        assert_eq!(share.helped(), 2);
    }

    #[tokio::test]
    async fn a_failed_partition_stops_the_share_and_is_the_ranks_error() {
        let share = RankShare::new(3);
        assert_eq!(share.claim(), Some(0));
        share.fill(
            0,
            Err(Error::Partition {
                file: "x/00001.safetensors".into(),
                reason: "cut".into(),
            }),
            true,
        );
        assert_eq!(share.unclaimed(), 0);
        assert_eq!(share.claim(), None);
        let e = share.wait_all().await.err().unwrap();
        assert!(e.to_string().contains("00001.safetensors"), "{e}");
    }

    #[tokio::test]
    async fn only_the_first_copy_to_finish_commits() {
        let c = Commit::new();
        let (a, b) = (c.add_copy(), c.add_copy());
        assert_eq!(c.copies(), 2);
        assert_eq!(c.claim(b).await.unwrap(), (true, true));
        assert_eq!(c.claim(a).await.unwrap(), (false, true));
        assert_eq!(c.claim(b).await.unwrap(), (true, true));
        // The loser hears of it at once; the winner never does.
        c.lost(a).await;
        let winner = c.clone();
        let pending = tokio::spawn(async move { winner.lost(b).await });
        tokio::task::yield_now().await;
        assert!(!pending.is_finished());
        pending.abort();
        let alone = Commit::new();
        let only = alone.add_copy();
        assert_eq!(alone.claim(only).await.unwrap(), (true, false));
    }

    #[tokio::test]
    async fn copies_in_separate_processes_commit_once_through_the_results_location() {
        let results = StorageUrl::parse("memory://commit/shared").unwrap();
        // Two tasks of rank 4 (each its own process, so its own Commit).
        let (first, second) = (
            Commit::shared(&results, 4, "node1 job 7"),
            Commit::shared(&results, 4, "node2 job 9"),
        );
        let (a, b) = (first.add_copy(), second.add_copy());
        assert_eq!(second.claim(b).await.unwrap(), (true, false));
        assert_eq!(first.claim(a).await.unwrap(), (false, false));
        let claim = results.get(&layout::rank_claim(4)).await.unwrap();
        assert_eq!(&claim[..], b"node2 job 9");
        // A rank the follower marked as speculated says so in the winner's report.
        results
            .put(&layout::rank_speculated(5), Vec::new())
            .await
            .unwrap();
        let marked = Commit::shared(&results, 5, "node1 job 8");
        let id = marked.add_copy();
        assert_eq!(marked.claim(id).await.unwrap(), (true, true));
    }

    #[tokio::test]
    async fn a_copy_sees_that_another_process_won_but_not_its_own_claim() {
        let results = StorageUrl::parse("memory://commit/lost-elsewhere").unwrap();
        let (first, second) = (
            Commit::shared(&results, 6, "lambda a"),
            Commit::shared(&results, 6, "lambda b"),
        );
        let every = std::time::Duration::from_millis(1);
        let b = second.add_copy();
        assert_eq!(second.claim(b).await.unwrap(), (true, false));
        // The loser learns of it; the winner's own claim does not stop it.
        first.lost_elsewhere(every).await;
        let own = tokio::spawn({
            let second = second.clone();
            async move { second.lost_elsewhere(every).await }
        });
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        assert!(!own.is_finished());
        own.abort();
        let alone = Commit::new();
        let never = tokio::spawn(async move { alone.lost_elsewhere(every).await });
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        assert!(!never.is_finished());
        never.abort();
    }
}
