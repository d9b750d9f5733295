//! The one seam between a run and where its ranks run: the [`Engine`] trait.
//!
//! As object_store's `ObjectStore` is for storage, [`Engine`] is one small trait with an
//! implementation per backend: [`LocalEngine`](crate::local::LocalEngine) (always built),
//! `slurm::SlurmEngine` (feature `slurm`) and, in the `cai-aws` crate (which holds the AWS
//! SDK), `cai_aws::AwsEngine`. A run starts from one [`RunRequest`], tells what happens
//! through one [`RunEvents`] sink (the CLI turns [`RunEvent`]s into progress bars, lines or
//! nothing), and ends with one [`RunReport`]. A run that outlives this process (Slurm jobs,
//! a Step Functions execution) is followed again with [`Engine::attach`].
//!
//! ```
//! use cai_engine::engine::{Engine, RunEvent, RunEvents};
//! use cai_engine::local::LocalEngine;
//!
//! // Collect what happens instead of printing it.
//! struct Lines(std::sync::Mutex<Vec<String>>);
//! impl RunEvents for Lines {
//!     fn event(&self, e: RunEvent) {
//!         if let RunEvent::Message(m) = e {
//!             self.0.lock().unwrap().push(m);
//!         }
//!     }
//! }
//! let engine: Box<dyn Engine> = Box::new(LocalEngine::default());
//! assert_eq!(engine.name(), "local");
//! ```

use std::sync::Arc;

use cai_core::lease::{Lease, LeaseConfig};
use cai_core::payload::Payload;
use cai_core::plan::{Plan, PlanRequest};
use cai_core::report::RankFailure;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_model::kernels::Precision;

use crate::error::{Error, Result};
use crate::stages::{clear_results, plan_run};
use cai_core::results::{load_plan, missing_ranks};

/// What to run: where the data, results and model are, how to cut the work, and whether to
/// finish an earlier run. The same request goes to every engine; what only one engine
/// understands (Slurm's partition, Lambda's memory…) is part of that engine's value.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    /// Location of the partitions (default: the payload's `data_bucket`/`data_prefix`).
    pub data: Option<String>,
    /// Location of the results (default: the payload's `bucket`/`result_path`).
    pub results: Option<String>,
    /// Model file (with `resume`, replaces the plan's).
    pub model: Option<String>,
    /// Model inputs bound to data tensors of other names, `(INPUT, TENSOR)` (`--bind`).
    pub binds: Vec<(String, String)>,
    /// The data tensor of the labels (`--label`; default `redshift`).
    pub label: Option<String>,
    /// The original's payload; the fields above override its values.
    pub payload: Option<Payload>,
    /// Galaxies per inference batch.
    pub batch_size: Option<usize>,
    /// Use only the first N partitions.
    pub file_limit: Option<usize>,
    /// Number of ranks (default: one per partition).
    pub world_size: Option<usize>,
    /// Arithmetic of the model's trunk weights.
    pub precision: Precision,
    /// Run only the ranks of the existing plan that have no result yet.
    pub resume: bool,
    /// Start the run and return without following it (engines whose runs outlive this
    /// process; [`Engine::attach`] follows it later).
    pub detach: bool,
}

impl RunRequest {
    /// The results location: the flag's, else the payload's.
    pub fn results_location(&self) -> Option<String> {
        self.results
            .clone()
            .or_else(|| self.payload.as_ref().and_then(Payload::results_url))
    }

    /// The results location, or an error saying how to give one.
    pub fn require_results(&self) -> Result<String> {
        self.results_location().ok_or_else(|| Error::Request {
            what: "no results location".into(),
            hint: "give --results (or --payload with bucket and result_path)".into(),
        })
    }

    /// Take the results location's lease for a run of `engine` (see
    /// [`cai_core::lease`]): a second run on the same location is refused, naming this one.
    /// Taking over a stale lease (a killed run's) is told to `events` as a warning.
    pub async fn lease(&self, engine: &str, events: &dyn RunEvents) -> Result<Lease> {
        let results = StorageUrl::parse(&self.require_results()?)?;
        let (lease, took_over) =
            Lease::acquire(&results, engine, &LeaseConfig::from_env()?).await?;
        if let Some(old) = took_over {
            events.event(RunEvent::Warning(format!(
                "took over the stale lease of {} at {}",
                old.describe(lease.holder().started_at),
                results.url_of(cai_core::layout::LEASE)
            )));
        }
        Ok(lease)
    }

    /// Whether the request names the data and the model, so that a run can be planned.
    fn can_plan(&self) -> bool {
        (self.model.is_some()
            || self
                .payload
                .as_ref()
                .and_then(Payload::model_folder)
                .is_some())
            && (self.data.is_some() || self.payload.as_ref().and_then(Payload::data_url).is_some())
    }

    /// The model to run: `model`, or else the one model file in the payload's code folder
    /// (`"object_type": "folder"`, `S3_object_name`; see [`Payload::model_folder`]), which
    /// is logged. `None` when neither names one.
    pub async fn model_location(&self) -> Result<Option<String>> {
        if let Some(m) = &self.model {
            return Ok(Some(m.clone()));
        }
        let Some(folder) = self.payload.as_ref().and_then(Payload::model_folder) else {
            return Ok(None);
        };
        Ok(Some(crate::stages::find_folder_model(&folder).await?))
    }

    /// Plan the run (writing `plan.json`, clearing an earlier run's outputs), or with
    /// `resume` reload the plan; return it and the ranks to run. With `resume` and no
    /// `plan.json` yet (a run killed before it wrote one), plan afresh when data and model
    /// are given.
    pub async fn plan(&self) -> Result<(Arc<Plan>, Vec<usize>)> {
        let results = self.require_results()?;
        let results_url = StorageUrl::parse(&results)?;
        if self.resume {
            match load_plan(&results_url).await? {
                Some(mut plan) => {
                    if let Some(m) = &self.model {
                        plan.model = m.clone();
                    }
                    let ranks = missing_ranks(&results_url, plan.world_size).await?;
                    return Ok((Arc::new(plan), ranks));
                }
                // Killed before plan.json was written: no rank can have finished, so
                // resuming is starting afresh, when the request says what to run.
                None if self.can_plan() => {
                    tracing::info!(
                        "no plan.json under {results}: nothing was done, planning afresh"
                    );
                }
                None => {
                    return Err(Error::Request {
                        what: format!("no plan.json under {results}"),
                        hint: "nothing to resume; run without --resume first (or give --data \
                               and --model with --resume)"
                            .into(),
                    });
                }
            }
        }
        let data = self
            .data
            .clone()
            .or_else(|| self.payload.as_ref().and_then(Payload::data_url))
            .ok_or_else(|| Error::Request {
                what: "no data location".into(),
                hint: "give --data (or --payload with data_bucket and data_prefix)".into(),
            })?;
        let model = self.model_location().await?.ok_or_else(|| Error::Request {
            what: "no model".into(),
            hint: "give --model FILE (safetensors, the original's .pt, or .onnx; `cai model \
                   init` makes one), or a payload whose code folder holds one"
                .into(),
        })?;
        let req = PlanRequest {
            data,
            results,
            model,
            binds: self.binds.clone(),
            label: self.label.clone(),
            batch_size: self.batch_size,
            file_limit: self.file_limit,
            world_size: self.world_size,
            payload: self.payload.clone(),
        };
        let plan = plan_run(&req).await?;
        // An ONNX model that cannot run, or whose inputs do not bind, stops here: no rank,
        // Slurm job or Lambda call starts.
        crate::stages::check_plan_model(&plan).await?;
        clear_results(&results_url).await?;
        let ranks = (0..plan.world_size).collect();
        Ok((Arc::new(plan), ranks))
    }
}

/// Something that happened during a run, for the user. Engines send what they know; a
/// sink may ignore any of it.
#[derive(Debug, Clone, PartialEq)]
pub enum RunEvent {
    /// Something the user should know but that does not stop the run (`warning: …`).
    Warning(String),
    /// A line of log for the user (what is being done, what was submitted…).
    Message(String),
    /// A line for standard output: something the user needs to act on later (an
    /// execution's ARN, the commands of a dry run).
    Output(String),
    /// Counted work begins: `total` `unit`s (galaxies, ranks) under `label`.
    Progress {
        /// What is counted (`infer`, `ranks`).
        label: String,
        /// How many there are.
        total: u64,
        /// Their unit.
        unit: &'static str,
    },
    /// `n` more units of the counted work are done.
    Advance(u64),
    /// The counted work is over.
    ProgressDone,
    /// A rank finished.
    RankDone {
        /// The rank.
        rank: usize,
        /// Galaxies it predicted.
        galaxies: u64,
        /// Where it ran.
        host: String,
    },
    /// A rank failed (for now: `retried_as` names its resubmission, if any).
    RankFailed {
        /// The rank.
        rank: usize,
        /// The backend's name for the attempt (a Slurm task), if it has one.
        task: Option<String>,
        /// What went wrong, naming the file.
        reason: String,
        /// The job the rank was resubmitted as, when it was.
        retried_as: Option<String>,
    },
    /// Where a followed run stands, one line replacing the previous one.
    Status {
        /// The state (without the time, so that equal lines mean no change).
        line: String,
        /// Seconds since the run started.
        elapsed_s: f64,
    },
}

/// Where an engine sends its [`RunEvent`]s (called from any thread).
pub trait RunEvents: Send + Sync {
    /// Hear of one event.
    fn event(&self, event: RunEvent);
}

/// A sink that ignores every event.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoEvents;

impl RunEvents for NoEvents {
    fn event(&self, _: RunEvent) {}
}

/// How a run left [`Engine::run`] or [`Engine::attach`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunEnd {
    /// Every rank finished or failed, and the summary is written.
    Finished,
    /// Started (or only prepared, as a dry run) and not followed: the run goes on without
    /// this process.
    Detached,
    /// The backend stopped the run before its end (an execution that failed, timed out or
    /// was aborted); what results there are were summarized.
    Aborted {
        /// The backend's final state.
        status: String,
        /// The run's id there.
        id: String,
    },
}

/// What a run did: the one answer of every engine.
#[derive(Debug, Clone)]
pub struct RunReport {
    /// The engine (`local`, `slurm`, `aws`).
    pub engine: &'static str,
    /// How the run ended.
    pub end: RunEnd,
    /// Results location.
    pub results: String,
    /// Ranks in the plan (0 when not known, e.g. detached before planning).
    pub ranks_total: usize,
    /// Ranks with a result.
    pub ranks_done: usize,
    /// Ranks that failed, each with the files it had and why.
    pub failed: Vec<RankFailure>,
    /// Where `summary.json` is, when it was written.
    pub summary_url: Option<String>,
    /// The summary, when the run was followed to it.
    pub summary: Option<Summary>,
    /// Seconds from start (or submission) until the summary.
    pub elapsed_s: f64,
    /// The backend's ids for the run (Slurm job ids, the execution's ARN).
    pub jobs: Vec<String>,
    /// One line to print after the summary (engine-specific timing), if any.
    pub footer: Option<String>,
    /// What to do about failed ranks (the command that finishes the run), if anything.
    pub next: Option<String>,
}

impl RunReport {
    /// A report of a run that was started and not followed.
    pub fn detached(engine: &'static str, results: &str, jobs: Vec<String>) -> Self {
        Self {
            engine,
            end: RunEnd::Detached,
            results: results.to_string(),
            ranks_total: 0,
            ranks_done: 0,
            failed: Vec::new(),
            summary_url: None,
            summary: None,
            elapsed_s: 0.0,
            jobs,
            footer: None,
            next: None,
        }
    }

    /// A report of a run followed to `summary`, written at `results`.
    pub fn finished(engine: &'static str, results: &StorageUrl, summary: Summary) -> Self {
        Self {
            engine,
            end: RunEnd::Finished,
            results: results.to_string(),
            ranks_total: summary.ranks_total,
            ranks_done: summary.ranks_done,
            failed: summary.failed.clone(),
            summary_url: Some(results.url_of(cai_core::layout::SUMMARY)),
            elapsed_s: summary.wall_time_s,
            summary: Some(summary),
            jobs: Vec::new(),
            footer: None,
            next: None,
        }
    }

    /// Whether every rank finished (a summary with no failed or missing rank).
    pub fn complete(&self) -> bool {
        self.end == RunEnd::Finished && self.summary.as_ref().is_some_and(Summary::complete)
    }
}

/// Where ranks run. One value per backend, configured with what only it understands; the
/// stages (plan, [`Worker::run_rank`](crate::worker::Worker::run_rank), summarize) are the
/// same everywhere. A run is driven from one task (its futures are not `Send`: the
/// summarizer's concurrent reads borrow); engines spread ranks over threads themselves.
#[async_trait::async_trait(?Send)]
pub trait Engine: Send + Sync {
    /// The engine's name, as in the rank reports (`local`, `slurm`, `aws`).
    fn name(&self) -> &'static str;

    /// Run `req`: plan (or resume), run the ranks, summarize; tell `events` as it goes.
    /// Failed ranks are not an error: they are in the report.
    async fn run(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport>;

    /// Follow a run already going at `results` to its end (`id`: the backend's id for it,
    /// where the results location does not record one, as for an AWS execution).
    async fn attach(
        &self,
        results: &str,
        id: Option<&str>,
        events: &dyn RunEvents,
    ) -> Result<RunReport>;

    /// Lines describing the backend's jobs for the run at `results` once, without following
    /// them (`cai status --once`); none where the backend keeps nothing.
    async fn describe(&self, _results: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Whether the run's work goes on when this process stops (then an interrupted follow
    /// can offer to [`cancel`](Engine::cancel) it).
    fn outlives_process(&self) -> bool {
        false
    }

    /// What the backend calls the run's work, for messages (`Slurm jobs`).
    fn job_kind(&self) -> &'static str {
        "jobs"
    }

    /// The shell command that cancels the backend's work `ids` by hand.
    fn cancel_command(&self, ids: &str) -> String {
        format!("cancel {ids}")
    }

    /// The backend's ids of the run's work still recorded at `results`.
    async fn jobs(&self, _results: &str) -> Result<Vec<String>> {
        Ok(Vec::new())
    }

    /// Stop the run's work at `results` on the backend.
    async fn cancel(&self, _results: &str) -> Result<()> {
        Ok(())
    }
}

/// Run `run` holding `lease`, then release it: the lease is freed whether the run
/// succeeded or failed, and a lease lost on the way (this process stalled past its stale
/// time and another run took the location) is told as a warning.
pub async fn holding<T>(
    lease: Lease,
    events: &dyn RunEvents,
    run: impl std::future::Future<Output = Result<T>>,
) -> Result<T> {
    let out = run.await;
    if lease.is_lost() {
        events.event(RunEvent::Warning(format!(
            "this run lost the lease of its results location to another run ({}); its outputs may be mixed with that run's",
            cai_core::layout::LEASE
        )));
    }
    let released = lease.release().await;
    let out = out?;
    released?;
    Ok(out)
}

/// Send each of the plan's warnings as a [`RunEvent::Warning`], and name the model when
/// the payload's code folder chose it.
pub fn warn_plan(req: &RunRequest, plan: &Plan, events: &dyn RunEvents) {
    for w in &plan.warnings {
        events.event(RunEvent::Warning(w.clone()));
    }
    if req.model.is_none() && !req.resume {
        events.event(folder_model_chosen(&plan.model));
    }
}

/// The line naming the model the payload's code folder gave ([`RunRequest::model_location`]).
pub fn folder_model_chosen(model: &str) -> RunEvent {
    RunEvent::Message(format!(
        "model: {model} (the only model file in the payload's code folder)"
    ))
}

/// Galaxies in `ranks` of `plan` (0 for partitions whose count the plan does not know).
pub fn galaxies_in(plan: &Plan, ranks: &[usize]) -> u64 {
    ranks.iter().map(|&r| plan.galaxies_of(r)).sum()
}
