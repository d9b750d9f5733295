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
    /// Once more than half the ranks have ended, a rank still running past this many times
    /// the median rank time gets a second task (the local engine's `--speculate`; 0: never).
    pub speculate: f64,
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
    /// Largest array Slurm takes here (task ids below it).
    pub max_array_size: usize,
    /// `%MAX` of the arrays.
    pub max_running: Option<usize>,
}

impl Prepared {
    /// The arrays this run is submitted as: `(offset, ranks)` ([`chunk_ranks`]).
    pub fn chunks(&self) -> Vec<(usize, Vec<usize>)> {
        chunk_ranks(&self.ranks, self.max_array_size)
    }

    /// The shell commands that submit this run by hand (what `--dry-run` prints).
    pub fn shell_commands(&self) -> Vec<String> {
        use script::sh_quote;
        let script = sh_quote(&self.array_script.display().to_string());
        let chunks = self.chunks();
        let mut out = Vec::new();
        for (i, (offset, ranks)) in chunks.iter().enumerate() {
            out.push(format!(
                "a{i}=$(sbatch --parsable {} {script})",
                chunk_options(*offset, ranks, self.max_running).join(" ")
            ));
        }
        let deps: Vec<String> = (0..chunks.len())
            .map(|i| format!("${{a{i}%%;*}}"))
            .collect();
        out.push(format!(
            "sbatch --parsable --dependency=afterany:{} {}",
            deps.join(":"),
            sh_quote(&self.summarize_script.display().to_string())
        ));
        out
    }
}

/// One submission of the array script (the first, or a retry of some ranks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ArrayJob {
    /// Slurm job id of the array.
    pub job_id: String,
    /// The ranks it runs: task `i` runs rank `offset + i`.
    pub indices: Vec<usize>,
    /// 0 for the first submission, n for the n-th retry.
    pub attempt: u32,
    /// Added to the task index to give the rank (`CAI_RANK_OFFSET` in the task's
    /// environment), so that runs of more ranks than the cluster's `MaxArraySize` go in
    /// several arrays whose task ids stay below it.
    #[serde(default)]
    pub offset: usize,
    /// A second copy of a straggling rank (not a retry): the first copy to finish counts.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub speculative: bool,
}

impl ArrayJob {
    /// The rank a task index of this array runs.
    pub fn rank_of_task(&self, task: usize) -> usize {
        self.offset + task
    }

    /// The task index that runs `rank` in this array.
    pub fn task_of_rank(&self, rank: usize) -> Option<usize> {
        rank.checked_sub(self.offset)
    }
}

/// Environment variable a task adds to its array index to find its rank.
pub const RANK_OFFSET_ENV: &str = "CAI_RANK_OFFSET";
/// Environment variable that lowers the array size used below the cluster's `MaxArraySize`
/// (for tests and for sites that want smaller arrays).
pub const MAX_ARRAY_SIZE_ENV: &str = "CAI_SLURM_MAX_ARRAY_SIZE";
/// Slurm's default `MaxArraySize` (task ids 0..=1000).
pub const DEFAULT_MAX_ARRAY_SIZE: usize = 1001;

/// Cut `ranks` into array submissions Slurm accepts: in each `(offset, ranks)`, every task id
/// `rank − offset` is below `max_array_size` (Slurm's `MaxArraySize` bounds the task ids,
/// not only their count). Ranks are sorted and deduplicated; a chunk starts at its first rank.
pub fn chunk_ranks(ranks: &[usize], max_array_size: usize) -> Vec<(usize, Vec<usize>)> {
    let max = max_array_size.max(1);
    let mut v = ranks.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut out: Vec<(usize, Vec<usize>)> = Vec::new();
    for r in v {
        match out.last_mut() {
            Some((offset, chunk)) if r - *offset < max => chunk.push(r),
            _ => out.push((r, vec![r])),
        }
    }
    out
}

/// `--array` and `--export` options that submit `ranks` at `offset` (`max_running`: `%MAX`).
pub fn chunk_options(offset: usize, ranks: &[usize], max_running: Option<usize>) -> Vec<String> {
    let tasks: Vec<usize> = ranks.iter().map(|r| r - offset).collect();
    vec![
        format!("--array={}", script::array_spec(&tasks, max_running)),
        format!("--export=ALL,{RANK_OFFSET_ENV}={offset}"),
    ]
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
    /// Largest array submitted (task ids below it; the cluster's `MaxArraySize` or less).
    #[serde(default)]
    pub max_array_size: Option<usize>,
    /// Retries allowed per rank.
    pub retries: u32,
    /// [`SlurmEngine::speculate`] of the submission (0 in records from before it).
    #[serde(default)]
    pub speculate: f64,
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
            max_array_size: self.max_array_size(),
            max_running: self.script.max_running,
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
            speculate: state.speculate,
            dry_run: false,
        }
    }

    /// Submit a prepared run: the array, then the summarize job held until the array has
    /// ended. Records the job ids as `slurm/jobs.json`.
    pub async fn submit(&self, p: &Prepared) -> Result<JobsState> {
        let results = StorageUrl::parse(&p.results)?;
        results.delete(layout::SUMMARY).await?;
        // Claims left by an earlier, killed submission of these ranks would refuse their
        // outputs (see `worker::Commit`).
        let ranks: std::collections::HashSet<usize> = p.ranks.iter().copied().collect();
        for o in results.child(layout::CLAIMS_DIR).list().await? {
            let rank = o
                .key
                .split('.')
                .next()
                .and_then(|r| r.parse::<usize>().ok());
            if rank.is_some_and(|r| ranks.contains(&r)) {
                results.child(layout::CLAIMS_DIR).delete(&o.key).await?;
            }
        }
        let submitted_at = unix_now();
        let mut arrays = Vec::new();
        for (offset, ranks) in p.chunks() {
            match self.commands.sbatch(
                &chunk_options(offset, &ranks, self.script.max_running),
                &p.array_script,
            ) {
                Ok(job_id) => arrays.push(ArrayJob {
                    job_id,
                    indices: ranks,
                    attempt: 0,
                    offset,
                    speculative: false,
                }),
                Err(e) => {
                    let ids: Vec<String> = arrays.iter().map(|a| a.job_id.clone()).collect();
                    let _ = self.commands.scancel(&ids);
                    return Err(e);
                }
            }
        }
        let ids: Vec<&str> = arrays.iter().map(|a| a.job_id.as_str()).collect();
        let summarize = match self.commands.sbatch(
            &[format!("--dependency=afterany:{}", ids.join(":"))],
            &p.summarize_script,
        ) {
            Ok(id) => id,
            Err(e) => {
                let ids: Vec<String> = arrays.iter().map(|a| a.job_id.clone()).collect();
                let _ = self.commands.scancel(&ids);
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
            max_array_size: Some(p.max_array_size),
            retries: self.retries,
            speculate: self.speculate,
            submitted_at,
            arrays,
            summarize_jobs: vec![summarize],
        };
        state.save(&results).await?;
        Ok(state)
    }

    /// The largest array to submit: the cluster's `MaxArraySize` (`scontrol show config`;
    /// Slurm's default 1001 when it cannot be read), lowered by `CAI_SLURM_MAX_ARRAY_SIZE`.
    pub fn max_array_size(&self) -> usize {
        let cluster = self
            .commands
            .max_array_size()
            .ok()
            .flatten()
            .unwrap_or(DEFAULT_MAX_ARRAY_SIZE);
        let env = std::env::var(MAX_ARRAY_SIZE_ENV)
            .ok()
            .and_then(|v| v.trim().parse::<usize>().ok())
            .filter(|&n| n > 0);
        env.map_or(cluster, |e| e.min(cluster)).max(1)
    }

    /// Cancel every job of a run.
    pub fn cancel(&self, state: &JobsState) -> Result<()> {
        self.commands.scancel(&state.job_ids())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_keep_task_ids_below_the_max_array_size() {
        let ranks: Vec<usize> = (0..12).collect();
        let c = chunk_ranks(&ranks, 5);
        assert_eq!(
            c,
            vec![
                (0, vec![0, 1, 2, 3, 4]),
                (5, vec![5, 6, 7, 8, 9]),
                (10, vec![10, 11])
            ]
        );
        assert_eq!(
            chunk_options(5, &c[1].1, Some(2)),
            vec!["--array=0-4%2", "--export=ALL,CAI_RANK_OFFSET=5"]
        );
        // A resume of scattered ranks: each chunk spans less than the max from its start.
        let c = chunk_ranks(&[3, 9, 4, 1_000, 1_003, 1_004, 9], 5);
        assert_eq!(
            c,
            vec![
                (3, vec![3, 4]),
                (9, vec![9]),
                (1_000, vec![1_000, 1_003, 1_004])
            ]
        );
        assert_eq!(chunk_options(1_000, &c[2].1, None)[0], "--array=0,3-4");
        // 10,240 ranks in Slurm's default arrays: 11 of them, every task id ≤ 1000.
        let all: Vec<usize> = (0..10_240).collect();
        let c = chunk_ranks(&all, DEFAULT_MAX_ARRAY_SIZE);
        assert_eq!(c.len(), 11);
        let mut back = Vec::new();
        for (offset, ranks) in &c {
            let a = ArrayJob {
                job_id: "1".into(),
                indices: ranks.clone(),
                attempt: 0,
                offset: *offset,
                speculative: false,
            };
            for &r in ranks {
                let t = a.task_of_rank(r).unwrap();
                assert!(t < DEFAULT_MAX_ARRAY_SIZE);
                back.push(a.rank_of_task(t));
            }
        }
        assert_eq!(back, all);
        assert!(chunk_ranks(&[], 5).is_empty());
    }

    #[test]
    fn old_job_records_read_with_offset_zero() {
        let a: ArrayJob =
            serde_json::from_str(r#"{"job_id":"7","indices":[0,1],"attempt":0}"#).unwrap();
        assert_eq!(a.offset, 0);
        assert_eq!(a.task_of_rank(1), Some(1));
    }

    #[test]
    fn hand_submission_commands_cover_every_chunk() {
        let p = Prepared {
            results: "/r".into(),
            plan_url: "/r/plan.json".into(),
            ranks: (0..7).collect(),
            array_script: "/r/slurm/array.sbatch".into(),
            summarize_script: "/r/slurm/summarize.sbatch".into(),
            probe: "t".into(),
            log_dir: "/r/slurm/logs".into(),
            max_array_size: 3,
            max_running: None,
        };
        let c = p.shell_commands();
        assert_eq!(c.len(), 4, "{c:?}");
        assert_eq!(
            c[2],
            "a2=$(sbatch --parsable --array=0 --export=ALL,CAI_RANK_OFFSET=6 /r/slurm/array.sbatch)"
        );
        assert_eq!(
            c[3],
            "sbatch --parsable --dependency=afterany:${a0%%;*}:${a1%%;*}:${a2%%;*} /r/slurm/summarize.sbatch"
        );
    }
}
