//! The Slurm engine: the ranks of a plan as one job array on an HPC cluster.
//!
//! The stages are the ones every engine shares; this module only decides where ranks run.
//! [`SlurmEngine::prepare`] writes a probe file to the results location and two batch
//! scripts ([`script`]): an array job whose task `i` runs `cai worker --plan … --rank i`
//! (that is [`Worker::run_rank`](crate::worker::Worker::run_rank) on the node), and a
//! summarize job. [`SlurmEngine::submit`] sends them with `sbatch --parsable`, the summarize
//! job held by `--dependency=afterany:<array>`, and records the job ids as
//! `slurm/jobs.json` under the results location, so that [`watch`] (from `cai run` or,
//! later, `cai status`) can follow the tasks with `scontrol show job -o` ([`command`]),
//! resubmit only the failed indices (`retries`), and check the summary.
//!
//! A task that finds no probe (or a stale one) exits with [`EXIT_NOT_SHARED`]: the results
//! location it sees is not the one the submitting machine wrote to.

pub mod command;
mod engine;
pub mod error;
pub mod script;
pub mod watch;

use std::path::PathBuf;
use std::time::Duration;

use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::StorageUrl;
use serde::{Deserialize, Serialize};

pub use command::{JobRecord, SlurmCommands};
pub use error::{Error, Result};
pub use script::ScriptOptions;
pub use watch::{watch, Event, Snapshot, WatchOutcome};

use crate::worker::unix_now;

/// Exit code of a task that cannot see the results location the plan was written to.
pub const EXIT_NOT_SHARED: i32 = 3;
/// Version of the `slurm/jobs.json` layout.
pub const JOBS_VERSION: u32 = 1;

/// How runs are submitted and followed.
#[derive(Debug, Clone)]
pub struct SlurmEngine {
    /// Where the Slurm commands are.
    pub commands: SlurmCommands,
    /// What goes into the batch scripts.
    pub script: ScriptOptions,
    /// Directory the batch scripts are written to, logs in its `logs/` (must be readable by
    /// `sbatch`; default: `<results>/slurm` for a results location on this machine, else
    /// `./cai-slurm`).
    pub script_dir: Option<PathBuf>,
    /// Times a failed task is resubmitted (only the failed indices).
    pub retries: u32,
    /// Time between two looks at the queue.
    pub poll: Duration,
    /// Only write the plan and the scripts and tell the commands that would submit them.
    pub dry_run: bool,
}

/// A run ready to submit: the scripts are written, the probe is in place.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    /// Results location.
    pub results: String,
    /// URL of `plan.json`.
    pub plan_url: String,
    /// Ranks (= array indices) to run.
    pub ranks: Vec<usize>,
    /// The array job's script.
    pub array_script: PathBuf,
    /// The summarize job's script.
    pub summarize_script: PathBuf,
    /// Token the tasks must find in the probe file.
    pub probe: String,
    /// Where the tasks' logs go.
    pub log_dir: PathBuf,
}

impl Prepared {
    /// The shell commands that submit this run by hand (what `--dry-run` prints).
    pub fn shell_commands(&self) -> Vec<String> {
        use script::sh_quote;
        vec![
            format!(
                "array=$(sbatch --parsable {})",
                sh_quote(&self.array_script.display().to_string())
            ),
            format!(
                "sbatch --parsable --dependency=afterany:${{array%%;*}} {}",
                sh_quote(&self.summarize_script.display().to_string())
            ),
        ]
    }
}

/// One submission of the array script (the first, or a retry of some indices).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayJob {
    /// Slurm job id of the array.
    pub job_id: String,
    /// The indices (= ranks) it runs.
    pub indices: Vec<usize>,
    /// 0 for the first submission, n for the n-th retry.
    pub attempt: u32,
}

/// What was submitted for a run: `slurm/jobs.json` under the results location.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobsState {
    /// Layout version ([`JOBS_VERSION`]).
    pub version: u32,
    /// Results location.
    pub results: String,
    /// URL of `plan.json`.
    pub plan: String,
    /// Ranks this submission runs.
    pub ranks: Vec<usize>,
    /// The array job's script (retries resubmit it with `--array=<failed>`).
    pub array_script: PathBuf,
    /// The summarize job's script.
    pub summarize_script: PathBuf,
    /// `%MAX` for resubmissions.
    pub max_running: Option<usize>,
    /// Retries allowed per rank.
    pub retries: u32,
    /// Unix time of the first submission.
    pub submitted_at: f64,
    /// Every array submission, first to last.
    pub arrays: Vec<ArrayJob>,
    /// Summarize job ids, first to last.
    pub summarize_jobs: Vec<String>,
}

impl JobsState {
    /// Every job id of the run (arrays, then summarize jobs).
    pub fn job_ids(&self) -> Vec<String> {
        self.arrays
            .iter()
            .map(|a| a.job_id.clone())
            .chain(self.summarize_jobs.iter().cloned())
            .collect()
    }

    /// Read `slurm/jobs.json` from a results location, if there is one.
    pub async fn load(results: &StorageUrl) -> Result<Option<Self>> {
        let Some(bytes) = results.get_opt(layout::SLURM_JOBS).await? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes).map(Some).map_err(|source| {
            Error::from(cai_core::Error::Json {
                what: "Slurm submission record",
                source_name: results.url_of(layout::SLURM_JOBS),
                source,
            })
        })
    }

    /// Write `slurm/jobs.json`.
    pub async fn save(&self, results: &StorageUrl) -> Result<()> {
        results
            .put(
                layout::SLURM_JOBS,
                crate::stages::pretty("Slurm jobs", self)?,
            )
            .await
            .map_err(Error::from)
    }
}

/// A token unlikely to repeat: time and process id.
fn probe_token() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{nanos:x}-{:x}", std::process::id())
}

fn write_file(path: &std::path::Path, text: &str) -> Result<()> {
    std::fs::write(path, text).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })
}

impl SlurmEngine {
    /// Refuse to start when jobs of an earlier submission to `results` still run
    /// (they would write the same ranks).
    pub async fn ensure_idle(&self, results: &StorageUrl) -> Result<()> {
        let Some(old) = JobsState::load(results).await? else {
            return Ok(());
        };
        let mut active = Vec::new();
        for id in old.job_ids() {
            if self.commands.show_job(&id)?.iter().any(JobRecord::active) {
                active.push(id);
            }
        }
        if active.is_empty() {
            Ok(())
        } else {
            Err(Error::StillRunning {
                results: results.to_string(),
                jobs: active.join(" "),
            })
        }
    }

    /// Write the probe and the batch scripts for `ranks` of `plan` (already written).
    pub async fn prepare(&self, plan: &Plan, ranks: &[usize]) -> Result<Prepared> {
        if ranks.is_empty() {
            return Err(Error::Invalid {
                what: "ranks".into(),
                reason: "nothing to submit: every rank has a result".into(),
            });
        }
        let results = StorageUrl::parse(&plan.results)?;
        let script_dir = self.script_dir_for(&results)?;
        let mut options = self.script.clone();
        options.log_dir = script_dir.join("logs");
        let probe = probe_token();
        results
            .put(layout::SLURM_PROBE, probe.clone().into_bytes())
            .await?;
        for dir in [&script_dir, &options.log_dir] {
            std::fs::create_dir_all(dir).map_err(|source| Error::Io {
                path: dir.clone(),
                source,
            })?;
        }
        let plan_url = results.url_of(layout::PLAN);
        let array_script = script_dir.join("array.sbatch");
        let summarize_script = script_dir.join("summarize.sbatch");
        write_file(
            &array_script,
            &script::array_script(&options, &plan_url, &probe, ranks),
        )?;
        write_file(
            &summarize_script,
            &script::summarize_script(&options, &results.to_string()),
        )?;
        Ok(Prepared {
            results: results.to_string(),
            plan_url,
            ranks: ranks.to_vec(),
            array_script,
            summarize_script,
            probe,
            log_dir: options.log_dir,
        })
    }

    /// Where the batch scripts of a run at `results` go: [`SlurmEngine::script_dir`], else
    /// `<results>/slurm` for a results location on this machine, else `./cai-slurm`.
    pub fn script_dir_for(&self, results: &StorageUrl) -> Result<PathBuf> {
        let dir = match (&self.script_dir, results.local_path()) {
            (Some(d), _) => d.clone(),
            (None, Some(p)) => p.join("slurm"),
            (None, None) => PathBuf::from("cai-slurm"),
        };
        std::path::absolute(&dir).map_err(|source| Error::Io { path: dir, source })
    }

    /// The engine that follows the submission `state` records (as `cai status` does).
    pub fn for_state(state: &JobsState, poll: Duration) -> Self {
        Self {
            commands: SlurmCommands::default(),
            script: ScriptOptions::default(),
            script_dir: state.array_script.parent().map(PathBuf::from),
            retries: state.retries,
            poll,
            dry_run: false,
        }
    }

    /// Submit a prepared run: the array, then the summarize job held until the array has
    /// ended. Records the job ids as `slurm/jobs.json`.
    pub async fn submit(&self, p: &Prepared) -> Result<JobsState> {
        let results = StorageUrl::parse(&p.results)?;
        results.delete(layout::SUMMARY).await?;
        let submitted_at = unix_now();
        let array = self.commands.sbatch(&[], &p.array_script)?;
        let summarize = match self.commands.sbatch(
            &[format!("--dependency=afterany:{array}")],
            &p.summarize_script,
        ) {
            Ok(id) => id,
            Err(e) => {
                let _ = self.commands.scancel(std::slice::from_ref(&array));
                return Err(e);
            }
        };
        let state = JobsState {
            version: JOBS_VERSION,
            results: p.results.clone(),
            plan: p.plan_url.clone(),
            ranks: p.ranks.clone(),
            array_script: p.array_script.clone(),
            summarize_script: p.summarize_script.clone(),
            max_running: self.script.max_running,
            retries: self.retries,
            submitted_at,
            arrays: vec![ArrayJob {
                job_id: array,
                indices: p.ranks.clone(),
                attempt: 0,
            }],
            summarize_jobs: vec![summarize],
        };
        state.save(&results).await?;
        Ok(state)
    }

    /// Cancel every job of a run.
    pub fn cancel(&self, state: &JobsState) -> Result<()> {
        self.commands.scancel(&state.job_ids())
    }
}
