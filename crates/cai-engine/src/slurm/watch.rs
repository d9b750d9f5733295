//! Follow a submitted run to its summary: task states from `scontrol`, results from the
//! results location, retries of failed indices, and a check that `summary.json` covers
//! every rank's final state (else it is rewritten here).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::report::{RankFailure, RankReport};
use cai_core::results::{load_plan, ResultsListing};
use cai_core::summary::Summary;
use cai_core::StorageUrl;

use super::command::JobRecord;
use super::error::{Error, Result};
use super::{ArrayJob, JobsState, SlurmEngine, EXIT_NOT_SHARED};
use crate::summarize::summarize;
use crate::worker::{rank_failure, unix_now, write_failure};

/// The run at one look.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// Ranks waiting in the queue (including resubmitted ones).
    pub pending: usize,
    /// Ranks running.
    pub running: usize,
    /// Ranks with a result.
    pub done: usize,
    /// Ranks failed for good (retries used up).
    pub failed: usize,
    /// Ranks of this submission.
    pub ranks: usize,
    /// Resubmissions so far.
    pub retries: usize,
    /// Galaxies in finished ranks.
    pub galaxies_done: u64,
    /// Galaxies in all ranks of this submission (0 when the plan does not know).
    pub galaxies_total: u64,
    /// Seconds since submission.
    pub elapsed_s: f64,
    /// Galaxies of finished ranks per second since submission.
    pub galaxies_per_s: f64,
    /// State of the summarize job (`PENDING`, `RUNNING`, `COMPLETED`…), if any.
    pub summarize: Option<String>,
}

impl Snapshot {
    /// The state in one line (without the time, so that equal lines mean no change).
    pub fn line(&self) -> String {
        let mut l = format!(
            "slurm: {} pending · {} running · {}/{} done · {} failed",
            self.pending, self.running, self.done, self.ranks, self.failed
        );
        if self.retries > 0 {
            l += &format!(" · {} resubmission(s)", self.retries);
        }
        if self.galaxies_total > 0 {
            l += &format!(" · {}/{} galaxies", self.galaxies_done, self.galaxies_total);
        } else {
            l += &format!(" · {} galaxies", self.galaxies_done);
        }
        l += &format!(" · {:.1} galaxies/s", self.galaxies_per_s);
        if self.pending == 0 && self.running == 0 {
            if let Some(st) = &self.summarize {
                l += &format!(" · summarize job {}", st.to_lowercase());
            }
        }
        l
    }
}

/// Something that happened since the last look.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A rank finished.
    Done {
        /// The rank.
        rank: usize,
        /// Galaxies it predicted.
        galaxies: u64,
        /// Node it ran on.
        host: String,
    },
    /// A rank's task ended without a result.
    Failed {
        /// The rank.
        rank: usize,
        /// The Slurm task (`<array>_<index>`).
        task: String,
        /// What went wrong (the worker's error, or Slurm's state and the log file).
        reason: String,
        /// The job id it was resubmitted as, when a retry was left.
        retried_as: Option<String>,
    },
    /// Something worth a line (summary rewritten here, dependency updates…).
    Note(String),
}

/// How a watched run ended.
#[derive(Debug, Clone)]
pub struct WatchOutcome {
    /// The run's summary (as the summarize job wrote it, or as rewritten here).
    pub summary: Summary,
    /// Why the summary was rewritten by the watcher, when it was.
    pub summarized_here: Option<String>,
    /// The last summarize job and its final state.
    pub summarize_job: Option<(String, String)>,
    /// Seconds from submission until the summary was there.
    pub elapsed_s: f64,
}

/// A rank's latest task.
struct Task {
    rec: JobRecord,
    attempt: u32,
}

/// Last lines of a log file, for messages (empty when unreadable).
fn log_tail(path: &str, lines: usize) -> String {
    let Ok(text) = std::fs::read_to_string(path) else {
        return String::new();
    };
    let all: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    all[all.len().saturating_sub(lines)..].join(" | ")
}

/// Follow a run until every rank has a result or has failed for good and the summary is
/// there. `on` is called after every look with the state and what happened since the last.
pub async fn watch(
    engine: &SlurmEngine,
    state: &mut JobsState,
    on: &mut (dyn FnMut(&Snapshot, &[Event]) + Send),
) -> Result<WatchOutcome> {
    let results = StorageUrl::parse(&state.results)?;
    let plan = load_plan(&results).await?.ok_or_else(|| Error::NoJobs {
        results: results.to_string(),
        key: layout::PLAN.into(),
    })?;
    let galaxies_total: u64 = state.ranks.iter().map(|&r| plan.galaxies_of(r)).sum();
    let mut seen_done: HashMap<usize, u64> = HashMap::new();
    let mut handled: HashSet<(usize, u32)> = HashSet::new();
    let mut final_failed: BTreeMap<usize, String> = BTreeMap::new();
    let mut retries = state
        .arrays
        .iter()
        .filter(|a| a.attempt > 0 && !a.speculative)
        .count();
    // Stragglers: wall times of the ranks that finished, when each running rank was first
    // seen running, and which losing copies were cancelled.
    let mut walls: Vec<f64> = Vec::new();
    let mut running_since: HashMap<usize, std::time::Instant> = HashMap::new();
    let mut cancelled: HashSet<usize> = HashSet::new();

    loop {
        let mut events = Vec::new();
        // Slurm first, then the results: a task Slurm calls finished wrote its result before.
        let mut tasks: HashMap<usize, Task> = HashMap::new();
        // Second copies of straggling ranks, beside their latest task.
        let mut copies: HashMap<usize, Task> = HashMap::new();
        let mut arrays = state.arrays.clone();
        arrays.sort_by_key(|a| a.attempt);
        for a in &arrays {
            let recs = engine.commands.show_job(&a.job_id)?;
            // The task ids of each record, as ranks of this array.
            let by_task: HashMap<usize, &JobRecord> = recs
                .iter()
                .flat_map(|r| r.indices.iter().map(move |&t| (t, r)))
                .collect();
            for &rank in &a.indices {
                let Some(t) = a.task_of_rank(rank) else {
                    continue;
                };
                let rec = by_task
                    .get(&t)
                    .map(|r| JobRecord {
                        indices: vec![t],
                        array_job_id: Some(a.job_id.clone()),
                        ..(*r).clone()
                    })
                    .unwrap_or_else(|| JobRecord {
                        job_id: a.job_id.clone(),
                        array_job_id: Some(a.job_id.clone()),
                        indices: vec![t],
                        state: "UNKNOWN".into(),
                        ..Default::default()
                    });
                let task = Task {
                    rec,
                    attempt: a.attempt,
                };
                match a.speculative {
                    true => copies.insert(rank, task),
                    false => tasks.insert(rank, task),
                };
            }
        }
        let summarize_rec = match state.summarize_jobs.last() {
            Some(id) => engine.commands.show_job(id)?.into_iter().next(),
            None => None,
        };
        let listing = ResultsListing::list(&results).await?;
        let done = listing.done_ranks();
        let failed_records = listing.failure_record_ranks();

        let (mut pending, mut running) = (0, 0);
        let mut running_now = HashSet::new();
        let mut to_retry = Vec::new();
        for &rank in &state.ranks {
            if done.contains(&rank) {
                if let std::collections::hash_map::Entry::Vacant(e) = seen_done.entry(rank) {
                    let (galaxies, host) = match results.get_opt(&layout::rank_report(rank)).await?
                    {
                        Some(b) => {
                            match RankReport::from_json(
                                &results.url_of(&layout::rank_report(rank)),
                                &b,
                            ) {
                                Ok(r) => {
                                    walls.push(r.wall_time_s);
                                    (r.galaxies, r.host)
                                }
                                Err(_) => (plan.galaxies_of(rank), String::new()),
                            }
                        }
                        None => (plan.galaxies_of(rank), String::new()),
                    };
                    e.insert(galaxies);
                    events.push(Event::Done {
                        rank,
                        galaxies,
                        host,
                    });
                }
                // The copy of a speculated rank still running lost: stop it (it writes
                // nothing, see `worker::Commit`).
                if copies.contains_key(&rank) && cancelled.insert(rank) {
                    let losers: Vec<String> = [tasks.get(&rank), copies.get(&rank)]
                        .into_iter()
                        .flatten()
                        .filter(|t| t.rec.active())
                        .map(|t| t.rec.task_name())
                        .collect();
                    if !losers.is_empty() {
                        if let Err(e) = engine.commands.scancel(&losers) {
                            events.push(Event::Note(format!(
                                "could not cancel the losing copy {} of rank {rank}: {e}",
                                losers.join(", ")
                            )));
                        }
                    }
                }
                continue;
            }
            if final_failed.contains_key(&rank) {
                continue;
            }
            let Some(task) = tasks.get(&rank) else {
                pending += 1;
                continue;
            };
            let copy = copies.get(&rank).filter(|c| c.rec.active());
            if task.rec.active() || copy.is_some() {
                let runs = |t: &Task| matches!(t.rec.state.as_str(), "RUNNING" | "COMPLETING");
                if runs(task) || copy.is_some_and(runs) {
                    running += 1;
                    running_now.insert(rank);
                    running_since
                        .entry(rank)
                        .or_insert_with(std::time::Instant::now);
                } else {
                    pending += 1;
                }
                continue;
            }
            if !handled.insert((rank, task.attempt)) {
                continue;
            }
            let log = if task.rec.stderr.is_empty() {
                String::new()
            } else {
                task.rec.stderr.clone()
            };
            match task.rec.exit.0 {
                EXIT_NOT_SHARED => {
                    let _ = engine.cancel(state);
                    return Err(Error::NotShared {
                        results: results.to_string(),
                        detail: format!(
                            "task {} on node {} did not find the probe file ({}; log {log})",
                            task.rec.task_name(),
                            task.rec.node,
                            log_tail(&log, 2)
                        ),
                    });
                }
                126 | 127 => {
                    let _ = engine.cancel(state);
                    return Err(Error::NoBinary {
                        task: task.rec.task_name(),
                        cai_bin: log_tail(&log, 1),
                        node: task.rec.node.clone(),
                        code: task.rec.exit.0,
                        log,
                    });
                }
                _ => {}
            }
            let recorded = if failed_records.contains(&rank) {
                results
                    .get_opt(&layout::failure(rank))
                    .await?
                    .and_then(|b| serde_json::from_slice::<RankFailure>(&b).ok())
            } else {
                None
            };
            let reason = match &recorded {
                Some(f) => f.error.clone(),
                None => format!(
                    "Slurm task {} ended {} (exit {}:{}) on {} without a result{}",
                    task.rec.task_name(),
                    task.rec.state,
                    task.rec.exit.0,
                    task.rec.exit.1,
                    if task.rec.node.is_empty() {
                        "an unknown node"
                    } else {
                        &task.rec.node
                    },
                    if log.is_empty() {
                        String::new()
                    } else {
                        format!("; see {log}")
                    }
                ),
            };
            if task.attempt < state.retries {
                to_retry.push((rank, task.rec.task_name(), reason));
                pending += 1;
            } else {
                if recorded.is_none() {
                    let f = rank_failure(&plan, rank, "slurm", &task.rec.node, reason.clone());
                    write_failure(&results, &f).await?;
                }
                events.push(Event::Failed {
                    rank,
                    task: task.rec.task_name(),
                    reason: reason.clone(),
                    retried_as: None,
                });
                final_failed.insert(rank, reason);
            }
        }

        if !to_retry.is_empty() {
            let attempt = state.arrays.iter().map(|a| a.attempt).max().unwrap_or(0) + 1;
            let indices: Vec<usize> = to_retry.iter().map(|t| t.0).collect();
            // A task that died after claiming its rank would refuse its retry's outputs.
            for &rank in &indices {
                results.delete(&layout::rank_claim(rank)).await?;
            }
            let max_array = state
                .max_array_size
                .unwrap_or(super::DEFAULT_MAX_ARRAY_SIZE);
            let mut jobs = Vec::new();
            for (offset, ranks) in super::chunk_ranks(&indices, max_array) {
                let job = engine.commands.sbatch(
                    &super::chunk_options(offset, &ranks, state.max_running),
                    &state.array_script,
                )?;
                jobs.push(job.clone());
                state.arrays.push(ArrayJob {
                    job_id: job,
                    indices: ranks,
                    attempt,
                    offset,
                    speculative: false,
                });
            }
            retries += 1;
            let job = jobs.join(",");
            for (rank, task, reason) in to_retry {
                events.push(Event::Failed {
                    rank,
                    task,
                    reason,
                    retried_as: Some(job.clone()),
                });
            }
            // Hold the summary until the retry has ended too (if it has not started yet).
            if let Some(sum) = &summarize_rec {
                if sum.state == "PENDING" {
                    let dep = format!(
                        "afterany:{}",
                        state
                            .arrays
                            .iter()
                            .map(|a| a.job_id.as_str())
                            .collect::<Vec<_>>()
                            .join(":")
                    );
                    if let Err(e) = engine.commands.set_dependency(&sum.job_id, &dep) {
                        events.push(Event::Note(format!(
                            "could not hold the summarize job {} for the retry ({e}); the summary will be rewritten at the end",
                            sum.job_id
                        )));
                    }
                }
            }
            state.save(&results).await?;
        }

        // A rank's time counts from when its current task was first seen running (a retry
        // starts afresh; a rank that ended is no straggler).
        running_since.retain(|r, _| running_now.contains(r));
        let ended = state.ranks.iter().filter(|r| done.contains(r)).count() + final_failed.len();
        if let Some(median) =
            crate::local::straggler_bound(&walls, ended, state.ranks.len(), state.speculate)
        {
            let speculated: HashSet<usize> = state
                .arrays
                .iter()
                .filter(|a| a.speculative)
                .flat_map(|a| a.indices.iter().copied())
                .collect();
            let mut stragglers: Vec<(usize, f64)> = running_since
                .iter()
                .map(|(&r, t)| (r, t.elapsed().as_secs_f64()))
                .filter(|&(r, t)| t > state.speculate * median && !speculated.contains(&r))
                .collect();
            stragglers.sort_unstable_by_key(|s| s.0);
            for (rank, secs) in stragglers {
                let job = speculate(engine, state, &results, rank).await?;
                events.push(Event::Note(format!(
                    "rank {rank} has run {secs:.1} s, over {}× the median rank time ({median:.1} s): \
                     started a second copy as job {job}; the first to finish counts",
                    state.speculate
                )));
            }
        }

        let elapsed_s = unix_now() - state.submitted_at;
        let galaxies_done: u64 = seen_done.values().sum();
        let snapshot = Snapshot {
            pending,
            running,
            done: state.ranks.iter().filter(|r| done.contains(r)).count(),
            failed: final_failed.len(),
            ranks: state.ranks.len(),
            retries,
            galaxies_done,
            galaxies_total,
            elapsed_s,
            galaxies_per_s: if elapsed_s > 0.0 {
                galaxies_done as f64 / elapsed_s
            } else {
                0.0
            },
            summarize: summarize_rec.as_ref().map(|r| r.state.clone()),
        };
        let all_ended = pending == 0 && running == 0;
        let summarizing = summarize_rec.as_ref().is_some_and(JobRecord::active);
        if all_ended && !summarizing {
            let (summary, summarized_here) =
                check_summary(&results, &plan, summarize_rec.as_ref()).await?;
            if let Some(why) = &summarized_here {
                events.push(Event::Note(format!("summary written here: {why}")));
            }
            on(&snapshot, &events);
            return Ok(WatchOutcome {
                summary,
                summarized_here,
                summarize_job: summarize_rec.map(|r| (r.job_id, r.state)),
                elapsed_s: unix_now() - state.submitted_at,
            });
        }
        on(&snapshot, &events);
        tokio::time::sleep(engine.poll).await;
    }
}

/// Start a second copy of the straggling `rank`: mark it (`claims/<rank>.speculated`, so
/// the winner's report says so), then submit the array script for that rank alone and
/// record it. Returns the new job's id.
async fn speculate(
    engine: &SlurmEngine,
    state: &mut JobsState,
    results: &StorageUrl,
    rank: usize,
) -> Result<String> {
    results
        .put(&layout::rank_speculated(rank), Vec::new())
        .await?;
    let attempt = state
        .arrays
        .iter()
        .filter(|a| a.indices.contains(&rank))
        .map(|a| a.attempt)
        .max()
        .unwrap_or(0);
    let job = engine.commands.sbatch(
        &super::chunk_options(rank, &[rank], state.max_running),
        &state.array_script,
    )?;
    state.arrays.push(ArrayJob {
        job_id: job.clone(),
        indices: vec![rank],
        attempt,
        offset: rank,
        speculative: true,
    });
    state.save(results).await?;
    Ok(job)
}

/// Use the summarize job's `summary.json` when it covers every rank's final state, else
/// summarize here (the job ran before a retry ended, failed, or never ran).
async fn check_summary(
    results: &StorageUrl,
    plan: &Plan,
    job: Option<&JobRecord>,
) -> Result<(Summary, Option<String>)> {
    let listing = ResultsListing::list(results).await?;
    let below = |r: &usize| *r < plan.world_size;
    let done: BTreeSet<usize> = listing.done_ranks().into_iter().filter(below).collect();
    let failed: BTreeSet<usize> = listing.failed_ranks().into_iter().filter(below).collect();
    let existing = results
        .get_opt(layout::SUMMARY)
        .await?
        .and_then(|b| serde_json::from_slice::<Summary>(&b).ok());
    let why = match (&existing, job) {
        (_, None) => Some("no summarize job was recorded".to_string()),
        (None, Some(j)) => Some(format!(
            "the summarize job {} ended {} without a summary",
            j.job_id, j.state
        )),
        (Some(s), Some(j)) => {
            let s_failed: BTreeSet<usize> = s.failed.iter().map(|f| f.rank).collect();
            if s.ranks_done == done.len() && s_failed == failed {
                None
            } else {
                Some(format!(
                    "the summarize job {} ran before every rank had ended",
                    j.job_id
                ))
            }
        }
    };
    match (existing, why) {
        (Some(s), None) => Ok((s, None)),
        (_, why) => Ok((summarize(results, Some(plan)).await?, why)),
    }
}
