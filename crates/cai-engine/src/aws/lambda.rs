//! The three Lambda handlers' logic, on the same stage functions as `cai run`.
//!
//! - [`Handlers::initialize`]: the original's payload in; [`RunRequest::plan`] plans as
//!   `cai run` does (writes `plan.json` and `payload.json`, removes an earlier run's outputs;
//!   with the payload's `resume`, keeps the plan and picks the ranks without a result), and
//!   the rank items to run go to `items.json` (a JSON array, one item per rank) for the
//!   Distributed Map's ItemReader. Returns [`InitializeOutput`].
//! - [`Handlers::infer`]: one rank item in; [`Worker::run_rank`] streams the rank's partitions
//!   (the next one downloads while this one computes) through the model on a thread pool
//!   sized from the CPUs the function gets, and writes `predictions/<rank>.parquet`, then
//!   `<rank>.json`. Each object is one atomic PUT, and a rank is done exactly when its
//!   `<rank>.json` exists, so a retried rank finds either nothing of its own or a complete
//!   result, which it returns unchanged. A failure leaves `failed/<rank>.json` and is returned
//!   as an error (`CAI.RankFailed`), so Step Functions counts it against
//!   ToleratedFailurePercentage. Returns [`InferOutput`].
//! - [`Handlers::summarize`]: `{results}` in; [`summarize`] writes `combined_data.json`,
//!   `predictions.parquet` and `summary.json`. Returns [`SummarizeOutput`].
//!
//! The event shapes are the generated state machine's ([`super::state_machine`]); the `cai`
//! crate's tests (`tests/cli/sfn.rs`) apply its Task states' `Parameters`, `ResultSelector`,
//! `ResultPath` and `OutputPath` to drive the handlers in Step Functions' order with exactly
//! the events Step Functions would send.
//!
//! The runtime loop (the Lambda runtime API) lives in the `cai` binary (`cai lambda`, or the
//! binary started as `bootstrap`); this module knows nothing of it.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use cai_core::layout;
use cai_core::payload::Payload;
use cai_core::plan::{Plan, RankItem};
use cai_core::report::RankReport;
use cai_core::StorageUrl;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::S3Prefix;
use crate::engine::RunRequest;
use crate::error::Error;
use crate::local::available_cores;
use crate::stages::{load_any_model, pretty};
use crate::summarize::summarize;
use crate::worker::{
    denied_is_absent, host_name, record_failure, Commit, ProgressFn, RankShare, Worker,
};

/// Which handler a function serves: `initialize`, `infer` or `summarize`.
pub const HANDLER_ENV: &str = "CAI_HANDLER";
/// The model file every rank loads (`s3://bucket/key`).
pub const MODEL_ENV: &str = "CAI_MODEL";
/// Where results go when the payload does not say (`s3://bucket/prefix`).
pub const RESULTS_ENV: &str = "CAI_RESULTS_ROOT";
/// Where the partitions are when the payload does not say (`s3://bucket/prefix`).
pub const DATA_ENV: &str = "CAI_DATA_ROOT";
/// Inference threads per rank, as for `cai run` (default: every CPU the function gets).
pub const THREADS_ENV: &str = "CAI_THREADS";
/// Arithmetic of the model's weights (`f32`, `bf16`, `int8`, `int16`; default f32), as
/// `cai run --precision`; the template sets it from `cai run --engine aws --precision`.
pub const PRECISION_ENV: &str = "CAI_PRECISION";
/// How often a running copy of a rank looks whether another copy (a straggler's second
/// copy, or the straggler) has won its commit.
pub const LOST_POLL: Duration = Duration::from_secs(5);
/// Engine name written into rank reports made on Lambda.
pub const ENGINE: &str = "aws";
/// How long before an invocation's deadline a rank stops and records its failure.
pub const DEADLINE_MARGIN: Duration = Duration::from_secs(10);

/// One of the three functions of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Handler {
    /// Plan the run; write `plan.json` and `items.json`.
    Initialize,
    /// Run one rank.
    Infer,
    /// Gather the ranks' outputs.
    Summarize,
}

impl Handler {
    /// Every handler, in workflow order.
    pub const ALL: [Handler; 3] = [Handler::Initialize, Handler::Infer, Handler::Summarize];

    /// The handler named `name` (as in `CAI_HANDLER`), if any.
    pub fn parse(name: &str) -> Option<Self> {
        Self::ALL
            .into_iter()
            .find(|h| h.name().eq_ignore_ascii_case(name.trim()))
    }

    /// `initialize`, `infer` or `summarize`.
    pub fn name(self) -> &'static str {
        match self {
            Handler::Initialize => "initialize",
            Handler::Infer => "infer",
            Handler::Summarize => "summarize",
        }
    }
}

/// Why a handler failed. [`LambdaError::error_type`] is the `errorType` Lambda reports,
/// which Step Functions' Retry and Catch match on.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LambdaError {
    /// The event is not what the state machine sends.
    #[error("{handler}: the event is not what the state machine sends: {reason}")]
    BadEvent {
        /// Handler that got it.
        handler: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A rank failed; `failed/<rank>.json` says why.
    #[error("rank {rank} failed: {source}")]
    RankFailed {
        /// The rank.
        rank: usize,
        /// The cause, naming the file.
        #[source]
        source: Box<Error>,
    },
    /// Initialize or Summarize failed.
    #[error("{handler}: {source}")]
    Stage {
        /// Handler that failed.
        handler: &'static str,
        /// The cause, naming the file.
        #[source]
        source: Box<Error>,
    },
}

impl LambdaError {
    /// `CAI.BadEvent`, `CAI.RankFailed`, `CAI.InitializeFailed` or `CAI.SummarizeFailed`.
    pub fn error_type(&self) -> &'static str {
        match self {
            LambdaError::BadEvent { .. } => "CAI.BadEvent",
            LambdaError::RankFailed { .. } => "CAI.RankFailed",
            LambdaError::Stage {
                handler: "initialize",
                ..
            } => "CAI.InitializeFailed",
            LambdaError::Stage { .. } => "CAI.SummarizeFailed",
        }
    }

    /// The message with every cause, one per `: `.
    pub fn message(&self) -> String {
        let mut msg = self.to_string();
        let mut cause = std::error::Error::source(self);
        // The first source is already in the message.
        if let Some(c) = cause {
            cause = c.source();
        }
        while let Some(c) = cause {
            msg.push_str(&format!(": {c}"));
            cause = c.source();
        }
        msg
    }

    fn bad(handler: Handler, reason: impl Into<String>) -> Self {
        LambdaError::BadEvent {
            handler: handler.name(),
            reason: reason.into(),
        }
    }

    fn stage(handler: Handler, source: impl Into<Error>) -> Self {
        LambdaError::Stage {
            handler: handler.name(),
            source: Box::new(source.into()),
        }
    }
}

/// Result of a handler.
pub type LambdaResult<T> = std::result::Result<T, LambdaError>;

/// What the functions are told by their environment (the CloudFormation template sets
/// `CAI_MODEL`, `CAI_RESULTS_ROOT`, `CAI_DATA_ROOT`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LambdaConfig {
    /// Model file location.
    pub model: Option<String>,
    /// Results location when the payload has no `bucket` + `result_path`.
    pub results: Option<String>,
    /// Data location when the payload has no `data_bucket`/`bucket`.
    pub data: Option<String>,
    /// Inference threads per rank (0: the CPUs this process may use).
    pub threads: usize,
    /// Arithmetic of the model's weights.
    pub precision: cai_model::kernels::Precision,
    /// Kernel tier name for the rank reports.
    pub kernels: String,
}

impl LambdaConfig {
    /// Read `CAI_MODEL`, `CAI_RESULTS_ROOT`, `CAI_DATA_ROOT`, `CAI_THREADS` and
    /// `CAI_PRECISION` (empty or unparsable values are unset: all CPUs, f32).
    pub fn from_env() -> Self {
        let var = |k: &str| {
            std::env::var(k)
                .ok()
                .map(|v| v.trim().to_string())
                .filter(|v| !v.is_empty())
        };
        Self {
            model: var(MODEL_ENV),
            results: var(RESULTS_ENV),
            data: var(DATA_ENV),
            threads: var(THREADS_ENV).and_then(|v| v.parse().ok()).unwrap_or(0),
            precision: var(PRECISION_ENV)
                .and_then(|v| cai_model::kernels::Precision::parse(&v))
                .unwrap_or_default(),
            kernels: String::new(),
        }
    }

    /// Threads for a rank: the configured number, else every CPU the function gets (Lambda
    /// gives one vCPU per 1,769 MB of memory, up to 6).
    pub fn threads(&self) -> usize {
        if self.threads > 0 {
            self.threads
        } else {
            available_cores()
        }
    }
}

/// Initialize's answer; the state machine keeps it as `$.init`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InitializeOutput {
    /// Bucket of `items.json` (the Distributed Map's ItemReader reads it).
    pub items_bucket: String,
    /// Key of `items.json`.
    pub items_key: String,
    /// The results location (`s3://bucket/prefix`), which Summarize gets.
    pub results: String,
    /// Number of ranks (items).
    pub world_size: usize,
    /// Warnings raised while planning (gaps in numbering…).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Infer's answer for one rank (what the Distributed Map's ResultWriter records).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct InferOutput {
    /// The rank.
    pub rank: usize,
    /// Galaxies predicted.
    pub galaxies: u64,
    /// URL of `<rank>.json`.
    pub report: String,
    /// URL of `predictions/<rank>.parquet`.
    pub predictions: String,
    /// Wall seconds of the rank.
    pub wall_time_s: f64,
    /// True when an earlier invocation had already finished this rank and its outputs were
    /// returned unchanged (a retry).
    pub reused: bool,
    /// True when this copy of a speculated rank lost: another copy finished first and wrote
    /// the rank's outputs, this one wrote nothing (a success, not a failure).
    #[serde(default)]
    pub superseded: bool,
}

/// Summarize's answer; the state machine's `Complete?` choice reads `complete`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SummarizeOutput {
    /// Every rank finished.
    pub complete: bool,
    /// Galaxies predicted (each exactly once).
    pub galaxies: u64,
    /// Ranks that finished.
    pub ranks_done: usize,
    /// Ranks with a failure record.
    pub failed_ranks: Vec<usize>,
    /// Ranks with neither a result nor a failure record.
    pub missing_ranks: Vec<usize>,
    /// URL of `summary.json`.
    pub summary: String,
}

/// The handlers of one function instance. The model and its worker are loaded once and
/// kept across warm invocations.
pub struct Handlers {
    cfg: LambdaConfig,
    worker: tokio::sync::Mutex<Option<(String, Arc<Worker>)>>,
}

impl Handlers {
    /// Handlers with this configuration.
    pub fn new(cfg: LambdaConfig) -> Self {
        Self {
            cfg,
            worker: tokio::sync::Mutex::new(None),
        }
    }

    /// Handlers whose worker for `model_url` is already made (embedding, tests).
    pub fn with_worker(self, model_url: &str, worker: Arc<Worker>) -> Self {
        Self {
            worker: tokio::sync::Mutex::new(Some((model_url.to_string(), worker))),
            ..self
        }
    }

    /// The configuration.
    pub fn config(&self) -> &LambdaConfig {
        &self.cfg
    }

    /// Run `handler` on `event`, answering with the JSON the state machine expects;
    /// `progress` hears of Infer's galaxies as batches finish, and `deadline` is when the
    /// invocation times out (see [`Handlers::infer`]).
    pub async fn handle(
        &self,
        handler: Handler,
        event: Value,
        progress: Option<ProgressFn>,
        deadline: Option<SystemTime>,
    ) -> LambdaResult<Value> {
        match handler {
            Handler::Initialize => to_value(handler, &self.initialize(event).await?),
            Handler::Infer => to_value(handler, &self.infer(event, progress, deadline).await?),
            Handler::Summarize => to_value(handler, &self.summarize(event).await?),
        }
    }

    /// Initialize: plan the run from the original's payload, as `cai run --payload` does, and
    /// write the rank items to `items.json` beside `plan.json`.
    pub async fn initialize(&self, event: Value) -> LambdaResult<InitializeOutput> {
        let h = Handler::Initialize;
        if !event.is_object() {
            return Err(LambdaError::bad(
                h,
                format!("expected the payload object, got {event}"),
            ));
        }
        let payload: Payload = serde_json::from_value(event)
            .map_err(|e| LambdaError::bad(h, format!("payload: {e}")))?;
        let results = payload
            .results_url()
            .or_else(|| self.cfg.results.clone())
            .ok_or_else(|| {
                LambdaError::bad(
                    h,
                    format!("no results location: the payload has no bucket + result_path and {RESULTS_ENV} is not set"),
                )
            })?;
        let data = payload
            .data_url()
            .or_else(|| self.cfg.data.clone())
            .ok_or_else(|| {
                LambdaError::bad(
                    h,
                    format!("no data location: the payload has no data_bucket/bucket and {DATA_ENV} is not set"),
                )
            })?;
        let model = self
            .cfg
            .model
            .clone()
            .ok_or_else(|| LambdaError::bad(h, format!("no model: {MODEL_ENV} is not set")))?;
        let Some(items_at) = S3Prefix::parse(&results) else {
            return Err(LambdaError::bad(
                h,
                format!("results location {results} is not s3://bucket/prefix (the Distributed Map reads items from S3)"),
            ));
        };
        // The same planning as `cai run`: a fresh plan (checked, earlier outputs cleared), or
        // with the payload's `resume` the existing plan and only its ranks without a result.
        let req = RunRequest {
            data: Some(data),
            results: Some(results.clone()),
            model: Some(model),
            resume: payload.resume.unwrap_or(false),
            payload: Some(payload),
            ..Default::default()
        };
        let (plan, ranks) = req.plan().await.map_err(|e| LambdaError::stage(h, e))?;
        let store = StorageUrl::parse(&plan.results).map_err(|e| LambdaError::stage(h, e))?;
        let to_run: Vec<&RankItem> = plan
            .items
            .iter()
            .filter(|i| ranks.binary_search(&i.rank).is_ok())
            .collect();
        let items = pretty("rank items", &to_run).map_err(|e| LambdaError::stage(h, e))?;
        store
            .put(layout::AWS_ITEMS, items)
            .await
            .map_err(|e| LambdaError::stage(h, e))?;
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        Ok(InitializeOutput {
            items_bucket: items_at.bucket.clone(),
            items_key: items_at.key(layout::AWS_ITEMS),
            results: plan.results.clone(),
            world_size: plan.world_size,
            warnings: plan.warnings.clone(),
        })
    }

    /// Infer: run the rank of one item of `items.json`. A rank whose `<rank>.json` already
    /// exists (an earlier attempt finished it) is returned as it is. With a `deadline` (when
    /// Lambda will stop the invocation), a rank still running [`DEADLINE_MARGIN`] before it
    /// stops there and records `failed/<rank>.json` saying so, instead of vanishing with the
    /// process; a deadline already past (emulators send none that is real) is ignored.
    pub async fn infer(
        &self,
        event: Value,
        progress: Option<ProgressFn>,
        deadline: Option<SystemTime>,
    ) -> LambdaResult<InferOutput> {
        let h = Handler::Infer;
        let item: RankItem = serde_json::from_value(event)
            .map_err(|e| LambdaError::bad(h, format!("rank item: {e}")))?;
        let rank = item.rank;
        let plan_url = item_plan_url(&item).ok_or_else(|| {
            LambdaError::bad(h, "the item has no PLAN_URL and no S3_BUCKET + RESULT_PATH")
        })?;
        let failed = |source: Error| LambdaError::RankFailed {
            rank,
            source: Box::new(source),
        };
        let plan = read_plan(&plan_url).await.map_err(failed)?;
        if plan.world_size != item.world_size || rank >= plan.world_size {
            return Err(LambdaError::bad(
                h,
                format!(
                    "item rank {rank} of {} does not fit the plan {plan_url} ({} ranks): a stale item from another run?",
                    item.world_size, plan.world_size
                ),
            ));
        }
        let results = StorageUrl::parse(&plan.results).map_err(|e| failed(e.into()))?;
        if let Some(done) = finished_rank(&results, rank).await.map_err(failed)? {
            tracing::info!("rank {rank} is already done: returning its outputs unchanged");
            return Ok(infer_output(&results, &done, true));
        }
        let worker = match self.worker_for(&plan.model, &plan.binds).await {
            Ok(w) => w,
            Err(e) => {
                record_failure(&results, &plan, rank, ENGINE, &e).await;
                return Err(failed(e));
            }
        };
        tracing::info!(
            "rank {rank} of {}: {} partition(s), {} thread(s)",
            plan.world_size,
            plan.partitions_of(rank).len(),
            self.cfg.threads()
        );
        // The follower times running ranks from this mark (a straggler gets a second copy).
        if let Err(e) = results.put(&layout::rank_started(rank), Vec::new()).await {
            tracing::warn!("cannot mark rank {rank} as started: {e}");
        }
        let left = deadline.and_then(|d| d.duration_since(SystemTime::now()).ok());
        let mut report = self
            .run_copy(&worker, &plan, &results, rank, progress.clone(), left)
            .await;
        if matches!(report, Err(Error::Superseded { .. }))
            && !crate::worker::marked(&results, &layout::rank_speculated(rank))
                .await
                .unwrap_or(true)
        {
            // No second copy was ever started, so the claim is an earlier attempt's that
            // died before writing the rank's outputs (Step Functions retried the item): it
            // holds nothing; drop it and run the rank again.
            tracing::warn!("rank {rank}: an earlier attempt claimed it and died; running again");
            results
                .delete(&layout::rank_claim(rank))
                .await
                .map_err(|e| failed(e.into()))?;
            report = self
                .run_copy(&worker, &plan, &results, rank, progress, left)
                .await;
        }
        match report {
            Ok(report) => Ok(infer_output(&results, &report, false)),
            Err(Error::Superseded { .. }) => {
                tracing::info!("rank {rank}: another copy finished first; this one wrote nothing");
                let none = RankReport {
                    rank,
                    ..RankReport::default()
                };
                let mut out = infer_output(&results, &none, false);
                out.superseded = true;
                Ok(out)
            }
            Err(e) => Err(failed(e)),
        }
    }

    /// Run one copy of `rank`, committing through `claims/<rank>` (another copy, started by
    /// the follower for a straggler, may run at once: the first to finish writes), stopped
    /// [`DEADLINE_MARGIN`] before `left` runs out.
    async fn run_copy(
        &self,
        worker: &Worker,
        plan: &Plan,
        results: &StorageUrl,
        rank: usize,
        progress: Option<ProgressFn>,
        left: Option<Duration>,
    ) -> Result<RankReport, Error> {
        let tag = format!("aws {} pid {}", host_name(), std::process::id());
        let commit = Commit::shared(results, rank, &tag);
        let copy = commit.add_copy();
        let share = RankShare::new(plan.partitions_of(rank).len());
        let run = worker.run_rank_with(plan, rank, &share, Some((&commit, copy)), progress);
        // A copy that lost stops (nothing cancels a Lambda invocation), so the map does not
        // wait for a stalled straggler once its second copy has won.
        let run = async {
            tokio::select! {
                r = run => r,
                _ = commit.lost_elsewhere(LOST_POLL) => Err(Error::Superseded { rank }),
            }
        };
        match left {
            Some(left) => tokio::select! {
                r = run => r,
                _ = tokio::time::sleep(left.saturating_sub(DEADLINE_MARGIN)) => {
                    let e = Error::Deadline {
                        rank,
                        margin_s: DEADLINE_MARGIN.as_secs(),
                    };
                    record_failure(results, plan, rank, ENGINE, &e).await;
                    Err(e)
                }
            },
            None => run.await,
        }
    }

    /// Summarize: gather the ranks' outputs under `{results}`.
    pub async fn summarize(&self, event: Value) -> LambdaResult<SummarizeOutput> {
        let h = Handler::Summarize;
        let location = event
            .get("results")
            .and_then(Value::as_str)
            .ok_or_else(|| {
                LambdaError::bad(h, format!("expected {{\"results\": URL}}, got {event}"))
            })?;
        let results = StorageUrl::parse(location).map_err(|e| LambdaError::stage(h, e))?;
        let summary = summarize(&results, None)
            .await
            .map_err(|e| LambdaError::stage(h, e))?;
        Ok(SummarizeOutput {
            complete: summary.complete(),
            galaxies: summary.galaxies,
            ranks_done: summary.ranks_done,
            failed_ranks: summary.failed.iter().map(|f| f.rank).collect(),
            missing_ranks: summary.missing_ranks.clone(),
            summary: results.url_of(layout::SUMMARY),
        })
    }

    /// Load the model ahead of the first event (during the function's init phase), so the
    /// first rank does not wait for it. Errors are left for the first event to report.
    pub async fn preload(&self) -> Option<Error> {
        let model = self.cfg.model.clone()?;
        self.worker_for(&model, &[]).await.err()
    }

    /// The worker for `model`, loading it on first use (or when the plan names another).
    async fn worker_for(
        &self,
        model: &str,
        binds: &[(String, String)],
    ) -> Result<Arc<Worker>, Error> {
        // A worker is for one model with one set of input bindings.
        let key = if binds.is_empty() {
            model.to_string()
        } else {
            format!("{model} {binds:?}")
        };
        let mut slot = self.worker.lock().await;
        if let Some((url, w)) = slot.as_ref() {
            if url == &key {
                return Ok(w.clone());
            }
        }
        let loaded = load_any_model(model, binds, self.cfg.precision).await?;
        let worker = Arc::new(Worker::new(
            loaded,
            model,
            self.cfg.threads(),
            ENGINE,
            &self.cfg.kernels,
        )?);
        *slot = Some((key, worker.clone()));
        Ok(worker)
    }
}

fn to_value<T: Serialize>(handler: Handler, v: &T) -> LambdaResult<Value> {
    serde_json::to_value(v).map_err(|source| {
        LambdaError::stage(
            handler,
            Error::Encode {
                what: "the handler's answer",
                source,
            },
        )
    })
}

/// Where an item's plan is: its `PLAN_URL`, else `s3://S3_BUCKET/RESULT_PATH/plan.json`.
fn item_plan_url(item: &RankItem) -> Option<String> {
    if let Some(u) = item.plan_url.as_deref().filter(|u| !u.is_empty()) {
        return Some(u.to_string());
    }
    if item.s3_bucket.is_empty() || item.result_path.is_empty() {
        return None;
    }
    let at = S3Prefix::new(&item.s3_bucket, &item.result_path);
    Some(format!("s3://{}/{}", at.bucket, at.key(layout::PLAN)))
}

async fn read_plan(plan_url: &str) -> Result<Plan, Error> {
    let url = StorageUrl::parse(plan_url)?;
    let bytes = url.get("").await?;
    Ok(Plan::from_json(&url.to_string(), &bytes)?)
}

/// The report of a rank that an earlier attempt finished, if its `<rank>.json` and
/// predictions are there.
async fn finished_rank(results: &StorageUrl, rank: usize) -> Result<Option<RankReport>, Error> {
    let key = layout::rank_report(rank);
    // Not there yet, or (S3 without ListBucket) a 403: not done yet.
    let Some(bytes) = denied_is_absent(results.get_opt(&key).await)? else {
        return Ok(None);
    };
    let report = RankReport::from_json(&results.url_of(&key), &bytes)?;
    let complete = report.rank == rank
        && (report.predictions.is_empty() || results.exists(&report.predictions).await?);
    Ok(complete.then_some(report))
}

fn infer_output(results: &StorageUrl, r: &RankReport, reused: bool) -> InferOutput {
    let predictions = if r.predictions.is_empty() {
        layout::rank_predictions(r.rank)
    } else {
        r.predictions.clone()
    };
    InferOutput {
        rank: r.rank,
        galaxies: r.galaxies,
        report: results.url_of(&layout::rank_report(r.rank)),
        predictions: results.url_of(&predictions),
        wall_time_s: r.wall_time_s,
        reused,
        superseded: false,
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use cai_core::report::RankFailure;

    use super::*;

    #[test]
    fn handler_names_round_trip() {
        for h in Handler::ALL {
            assert_eq!(Handler::parse(h.name()), Some(h));
        }
        assert_eq!(Handler::parse(" Infer "), Some(Handler::Infer));
        assert_eq!(Handler::parse("train"), None);
    }

    #[test]
    fn an_item_without_plan_url_finds_the_plan_by_bucket_and_result_path() {
        let mut item: RankItem = serde_json::from_value(json!({
            "S3_BUCKET": "b", "S3_OBJECT_NAME": "", "SCRIPT": "", "S3_OBJECT_TYPE": "",
            "WORLD_SIZE": "2", "RANK": 1, "DATA_BUCKET": "d", "DATA_PREFIX": "p",
            "DATA_PATH": "p/2.pt", "RESULT_PATH": "/r/1/", "BATCH_SIZE": 32
        }))
        .unwrap();
        assert_eq!(item_plan_url(&item).unwrap(), "s3://b/r/1/plan.json");
        item.plan_url = Some("s3://elsewhere/plan.json".into());
        assert_eq!(item_plan_url(&item).unwrap(), "s3://elsewhere/plan.json");
        item.plan_url = None;
        item.s3_bucket.clear();
        assert_eq!(item_plan_url(&item), None);
    }

    /// A plan over 12 synthetic galaxies in 3 partitions (2 ranks) on the in-memory store,
    /// and handlers whose worker runs a depth-1 AstroMAE.
    async fn memory_run(name: &str) -> (Handlers, Plan) {
        use crate::stages::plan_run;
        use cai_core::plan::PlanRequest;
        use cai_data::partition::{bytes_per_galaxy, partition_dataset};
        let synth = cai_data::SynthConfig {
            galaxies: 12,
            seed: 9,
            ..Default::default()
        };
        let galaxies = cai_data::generate(&synth, 0, 12);
        let data = StorageUrl::parse(&format!("memory://{name}/data")).unwrap();
        let mut files = Vec::new();
        let per = 4 * bytes_per_galaxy(galaxies.image_shape());
        let manifest = partition_dataset(&galaxies, per, |f| {
            files.push(f);
            Ok(())
        })
        .unwrap();
        for f in files {
            data.put(&f.key, f.bytes).await.unwrap();
        }
        data.put(layout::MANIFEST, manifest.to_json())
            .await
            .unwrap();
        let plan = plan_run(&PlanRequest {
            data: data.to_string(),
            results: format!("memory://{name}/results"),
            model: "seeded".into(),
            batch_size: Some(4),
            world_size: Some(2),
            ..Default::default()
        })
        .await
        .unwrap();
        let mut cfg = cai_model::Config::astromae();
        cfg.depth = 1;
        let weights = cai_model::init::astromae_weights(5, &cfg);
        let model = Arc::new(cai_model::AstroMae::load(&weights, "seeded").unwrap());
        let worker = Worker::new(model, "seeded", 1, ENGINE, "test").unwrap();
        let handlers =
            Handlers::new(LambdaConfig::default()).with_worker("seeded", Arc::new(worker));
        (handlers, plan)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rank_runs_once_and_a_retry_returns_it_unchanged() {
        let (h, plan) = memory_run("lambda-once").await;
        let results = StorageUrl::parse(&plan.results).unwrap();
        let item = serde_json::to_value(&plan.items[0]).unwrap();
        let out = h.infer(item.clone(), None, None).await.unwrap();
        assert!(!out.reused);
        assert_eq!(out.galaxies, 8);
        let first = results.get("0.json").await.unwrap();
        let again = h.infer(item, None, None).await.unwrap();
        assert!(again.reused);
        assert_eq!(again.galaxies, 8);
        assert_eq!(results.get("0.json").await.unwrap(), first);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_rank_out_of_time_stops_and_records_why() {
        let (h, plan) = memory_run("lambda-late").await;
        let results = StorageUrl::parse(&plan.results).unwrap();
        let item = serde_json::to_value(&plan.items[1]).unwrap();
        // Less time left than the margin: the rank stops at once.
        let deadline = SystemTime::now() + DEADLINE_MARGIN / 2;
        let e = h
            .infer(item.clone(), None, Some(deadline))
            .await
            .unwrap_err();
        assert_eq!(e.error_type(), "CAI.RankFailed");
        assert!(e.message().contains("time limit"), "{}", e.message());
        let failure: RankFailure =
            serde_json::from_slice(&results.get("failed/1.json").await.unwrap()).unwrap();
        assert_eq!(failure.rank, 1);
        assert!(failure.error.contains("world_size"), "{}", failure.error);
        assert!(!results.exists("1.json").await.unwrap());
        // A deadline already past (what emulators send) is no deadline; success clears
        // the failure record.
        let past = SystemTime::UNIX_EPOCH + Duration::from_secs(600);
        let out = h.infer(item, None, Some(past)).await.unwrap();
        assert_eq!(out.galaxies, 4);
        assert!(!results.exists("failed/1.json").await.unwrap());
    }

    #[tokio::test]
    async fn bad_events_are_named_errors_not_panics() {
        let h = Handlers::new(LambdaConfig::default());
        let e = h
            .handle(Handler::Infer, json!({"RANK": "x"}), None, None)
            .await
            .unwrap_err();
        assert_eq!(e.error_type(), "CAI.BadEvent");
        let e = h
            .handle(Handler::Summarize, json!([]), None, None)
            .await
            .unwrap_err();
        assert!(e.message().contains("results"), "{}", e.message());
        let e = h
            .handle(Handler::Initialize, json!("x"), None, None)
            .await
            .unwrap_err();
        assert_eq!(e.error_type(), "CAI.BadEvent");
        // A payload with locations but no model configured.
        let e = h
            .handle(
                Handler::Initialize,
                json!({"bucket": "b", "result_path": "r", "data_bucket": "d"}),
                None,
                None,
            )
            .await
            .unwrap_err();
        assert!(e.message().contains(MODEL_ENV), "{}", e.message());
    }
}
