//! The local engine: ranks as tasks on a pool of workers on this machine.
//!
//! `workers` ranks run at once, each on its own pool of `threads` inference threads, so
//! `workers × threads` should not exceed the cores. Every rank goes through the same
//! [`Worker::run_rank`](crate::worker::Worker::run_rank) as on Slurm or Lambda.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cai_core::plan::Plan;
use cai_core::report::{RankFailure, RankReport};
use cai_core::StorageUrl;
use cai_model::TensorModel;

use crate::engine::{
    galaxies_in, holding, warn_plan, Engine, RunEvent, RunEvents, RunReport, RunRequest,
};
use crate::error::{Error, Result};
use crate::stages::load_plan_model;
use crate::summarize::summarize;
use crate::worker::{host_name, rank_failure, Commit, ProgressFn, RankShare, Worker};

/// Outcome of running a set of ranks.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Ranks that finished.
    pub done: Vec<RankReport>,
    /// Ranks that failed (also recorded as `failed/<rank>.json`).
    pub failed: Vec<RankFailure>,
    /// Partitions computed by a worker helping another worker's rank.
    pub helped: u64,
    /// Ranks that got a second copy (stragglers), sorted.
    pub speculated: Vec<usize>,
}

/// Workers and threads for this machine: one single-threaded worker per core when there
/// are enough ranks to keep them busy, else fewer workers with more threads each.
pub fn default_parallelism(ranks: usize, cores: usize) -> (usize, usize) {
    let cores = cores.max(1);
    let workers = ranks.clamp(1, cores);
    (workers, (cores / workers).max(1))
}

/// Cores this process may use (respects affinity and cgroup limits).
pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// A rayon pool of `threads` inference threads (default: every core this process may use).
pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = threads.unwrap_or_else(available_cores).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .map_err(|source| Error::ThreadPool { threads: n, source })
}

/// The kernel tier this process dispatches to (`scalar`, `avx2`, `avx512`, `neon`), as the
/// rank reports name it.
pub fn kernel_tier() -> String {
    format!("{:?}", cai_model::kernels::ops().tier).to_lowercase()
}

/// Runs ranks on this machine.
#[derive(Debug, Clone)]
pub struct LocalEngine {
    /// Ranks run at once (default: fits the cores, see [`default_parallelism`]).
    pub workers: Option<usize>,
    /// Inference threads per worker (default: the cores shared among the workers).
    pub threads: Option<usize>,
    /// Kernel tier name for the reports.
    pub kernels: String,
    /// A rank still running past this many times the median rank time, once more than
    /// half the ranks have ended, gets a second copy (0: never).
    pub speculate: f64,
}

/// Default of [`LocalEngine::speculate`].
pub const DEFAULT_SPECULATE: f64 = 3.0;

impl Default for LocalEngine {
    fn default() -> Self {
        Self {
            workers: None,
            threads: None,
            kernels: kernel_tier(),
            speculate: DEFAULT_SPECULATE,
        }
    }
}

impl LocalEngine {
    /// Workers and threads per worker for `ranks` ranks on this machine's cores.
    pub fn parallelism(&self, ranks: usize) -> (usize, usize) {
        let cores = available_cores();
        let (dw, dt) = default_parallelism(ranks, cores);
        let workers = self.workers.unwrap_or(dw).max(1);
        let threads = self
            .threads
            .unwrap_or(if self.workers.is_some() {
                (cores / workers).max(1)
            } else {
                dt
            })
            .max(1);
        (workers, threads)
    }

    /// Run `ranks` of `plan` with `model`; a failed rank is recorded and the others go on.
    /// `events` hears of galaxies done ([`RunEvent::Advance`]) and of each rank's end.
    ///
    /// A worker takes the next rank from the queue; with none left, it helps the running
    /// rank with the most unclaimed partitions (so no worker sits idle while another holds
    /// several unstarted ones); with nothing to help, and once more than half the ranks
    /// have ended, it starts a second copy of a rank running past
    /// [`speculate`](LocalEngine::speculate) × the median rank time. The first copy to
    /// finish writes the rank's outputs, the other's are discarded.
    pub async fn run_ranks(
        &self,
        plan: Arc<Plan>,
        ranks: &[usize],
        model: Arc<dyn TensorModel>,
        events: Arc<dyn RunEvents>,
    ) -> Result<RunOutcome> {
        let (workers, threads) = self.parallelism(ranks.len());
        let board = Arc::new(Mutex::new(Board {
            queue: ranks.iter().copied().collect(),
            total: ranks.len(),
            ..Board::default()
        }));
        let outcome = Arc::new(Mutex::new(RunOutcome::default()));
        let speculate = self.speculate;
        let mut tasks = Vec::new();
        for _ in 0..workers.clamp(1, ranks.len().max(1)) {
            let worker = Worker::new(model.clone(), &plan.model, threads, ENGINE, &self.kernels)?;
            let (board, outcome, plan, events) =
                (board.clone(), outcome.clone(), plan.clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                let ev = events.clone();
                let progress: ProgressFn = Arc::new(move |n| ev.event(RunEvent::Advance(n)));
                loop {
                    let job = match board.lock() {
                        Ok(mut b) => b.next_job(&plan, speculate),
                        Err(_) => Job::Done,
                    };
                    match job {
                        Job::Done => break,
                        Job::Wait => tokio::time::sleep(WAIT).await,
                        Job::Help { rank, share } => {
                            worker
                                .help(&plan, rank, &share, Some(progress.clone()))
                                .await
                        }
                        Job::Run {
                            rank,
                            share,
                            commit,
                            copy,
                            note,
                        } => {
                            if let Some(n) = note {
                                tracing::info!("{n}");
                                events.event(RunEvent::Message(n));
                            }
                            // A copy's galaxies were counted by the first.
                            let p = (copy == 0).then(|| progress.clone());
                            let res = tokio::select! {
                                r = worker.run_rank_with(&plan, rank, &share, Some((&*commit, copy)), p) => r,
                                _ = commit.lost(copy) => Err(Error::Superseded { rank }),
                            };
                            let stop = matches!(&res, Err(e) if e.is_cancelled());
                            let ended = match board.lock() {
                                Ok(mut b) => b.end(rank, &res),
                                Err(_) => None,
                            };
                            if stop {
                                // The caller stopped the run: this rank and the rest are
                                // not done, nor failed.
                                if let Ok(mut b) = board.lock() {
                                    b.cancelled = true;
                                }
                                break;
                            }
                            let Some(helped) = ended else { continue };
                            match &res {
                                Ok(r) => events.event(RunEvent::RankDone {
                                    rank,
                                    galaxies: r.galaxies,
                                    host: r.host.clone(),
                                }),
                                Err(e) => events.event(RunEvent::RankFailed {
                                    rank,
                                    task: None,
                                    reason: e.to_string(),
                                    retried_as: None,
                                }),
                            }
                            if let Ok(mut out) = outcome.lock() {
                                out.helped += helped;
                                match res {
                                    Ok(r) => {
                                        if r.speculated {
                                            out.speculated.push(rank);
                                        }
                                        out.done.push(r)
                                    }
                                    Err(e) => out.failed.push(rank_failure(
                                        &plan,
                                        rank,
                                        ENGINE,
                                        &host_name(),
                                        e.to_string(),
                                    )),
                                }
                            }
                        }
                    }
                }
            }));
        }
        for (i, t) in tasks.into_iter().enumerate() {
            t.await.map_err(|source| Error::Join {
                task: format!("local worker {i}"),
                source,
            })?;
        }
        let mut out = std::mem::take(&mut *outcome.lock().map_err(|_| Error::Poisoned {
            what: "run outcome",
        })?);
        out.done.sort_by_key(|r| r.rank);
        out.failed.sort_by_key(|f| f.rank);
        out.speculated.sort_unstable();
        Ok(out)
    }
}

/// How long an idle worker waits before looking again for a straggler to copy.
const WAIT: Duration = Duration::from_millis(100);

/// What the local engine's workers share: the ranks not started, the ranks running (with
/// their partitions and copies), and the wall times of the ranks done.
#[derive(Default)]
struct Board {
    queue: VecDeque<usize>,
    running: BTreeMap<usize, Running>,
    walls: Vec<f64>,
    total: usize,
    ended: usize,
    cancelled: bool,
}

/// A rank being run: its copies' partitions, its commit, since when it runs.
struct Running {
    shares: Vec<Arc<RankShare>>,
    commit: Arc<Commit>,
    started: Instant,
    active: u32,
}

/// What a worker does next.
enum Job {
    /// Run (a copy of) a rank; `note` says why a copy was started.
    Run {
        rank: usize,
        share: Arc<RankShare>,
        commit: Arc<Commit>,
        copy: u32,
        note: Option<String>,
    },
    /// Take unclaimed partitions of a running rank.
    Help { rank: usize, share: Arc<RankShare> },
    /// Nothing now; look again soon (a straggler may yet need a copy).
    Wait,
    /// Nothing left for this worker.
    Done,
}

impl Board {
    fn next_job(&mut self, plan: &Plan, speculate: f64) -> Job {
        if self.cancelled {
            return Job::Done;
        }
        if let Some(rank) = self.queue.pop_front() {
            let share = RankShare::new(plan.partitions_of(rank).len());
            let commit = Commit::new();
            let copy = commit.add_copy();
            self.running.insert(
                rank,
                Running {
                    shares: vec![share.clone()],
                    commit: commit.clone(),
                    started: Instant::now(),
                    active: 1,
                },
            );
            return Job::Run {
                rank,
                share,
                commit,
                copy,
                note: None,
            };
        }
        let help = self
            .running
            .iter()
            .flat_map(|(&r, run)| run.shares.iter().map(move |s| (r, s)))
            .map(|(r, s)| (s.unclaimed(), r, s))
            .filter(|(n, _, _)| *n > 0)
            .max_by_key(|(n, _, _)| *n);
        if let Some((_, rank, share)) = help {
            return Job::Help {
                rank,
                share: share.clone(),
            };
        }
        if speculate <= 0.0 || self.running.is_empty() {
            return Job::Done;
        }
        let Some(median) = straggler_bound(&self.walls, self.ended, self.total, speculate) else {
            return Job::Wait;
        };
        let straggler = self
            .running
            .iter_mut()
            .filter(|(_, run)| run.commit.copies() == 1)
            .map(|(&r, run)| (run.started.elapsed().as_secs_f64(), r, run))
            .filter(|(t, _, _)| *t > speculate * median)
            .max_by(|a, b| a.0.total_cmp(&b.0));
        let Some((elapsed, rank, run)) = straggler else {
            return Job::Wait;
        };
        let share = RankShare::new(plan.partitions_of(rank).len());
        run.shares.push(share.clone());
        run.active += 1;
        let copy = run.commit.add_copy();
        Job::Run {
            rank,
            share,
            commit: run.commit.clone(),
            copy,
            note: Some(format!(
                "rank {rank} has run {elapsed:.1} s, over {speculate}× the median rank time \
                 ({median:.1} s): starting a second copy; the first to finish counts"
            )),
        }
    }

    /// Note that a copy of `rank` ended with `res`; returns the partitions helpers computed
    /// when this ends the rank (its first success, or its last copy's failure), else `None`.
    fn end(&mut self, rank: usize, res: &Result<cai_core::report::RankReport>) -> Option<u64> {
        let run = self.running.get_mut(&rank)?;
        run.active = run.active.saturating_sub(1);
        let ends = match res {
            Ok(_) => true,
            Err(e) if e.is_superseded() => false,
            Err(_) => run.active == 0,
        };
        if !ends {
            return None;
        }
        let run = self.running.remove(&rank)?;
        if res.is_ok() {
            self.walls.push(run.started.elapsed().as_secs_f64());
        }
        self.ended += 1;
        Some(run.shares.iter().map(|s| s.helped()).sum())
    }
}

/// The median wall time of the finished ranks (`walls`), once more than half of `total`
/// ranks have ended (`ended`, failed ones too; before that the median says little); `None`
/// otherwise or when off. Every engine's straggler rule: a rank running past `speculate`
/// times this gets a second copy (local, Slurm, and the AWS follower in `cai-aws`).
pub fn straggler_bound(walls: &[f64], ended: usize, total: usize, speculate: f64) -> Option<f64> {
    if speculate <= 0.0 || walls.is_empty() || ended * 2 <= total {
        return None;
    }
    let mut w = walls.to_vec();
    w.sort_by(f64::total_cmp);
    Some(w[w.len() / 2])
}

/// The engine's name in rank reports.
const ENGINE: &str = "local";

#[async_trait::async_trait(?Send)]
impl Engine for LocalEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    async fn run(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport> {
        let lease = req.lease(ENGINE, events).await?;
        holding(lease, events, self.run_holding(req, events)).await
    }

    async fn attach(
        &self,
        results: &str,
        _id: Option<&str>,
        _events: &dyn RunEvents,
    ) -> Result<RunReport> {
        Err(Error::Request {
            what: format!("nothing runs at {results} to attach to"),
            hint: format!(
                "a local run stops with its process; `cai run --resume --results {results}` finishes it"
            ),
        })
    }
}

impl LocalEngine {
    /// [`Engine::run`] once the results location's lease is held.
    async fn run_holding(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport> {
        let (plan, ranks) = req.plan().await?;
        for w in &plan.warnings {
            tracing::warn!("{w}");
        }
        warn_plan(req, &plan, events);
        let model = load_plan_model(&plan, req.precision)
            .await
            .map_err(|e| Error::LoadModel {
                model: plan.model.clone(),
                source: Box::new(e),
            })?;
        let (workers, threads) = self.parallelism(ranks.len());
        events.event(RunEvent::Message(format!(
            "running {} of {} ranks ({} partitions) on {workers} worker(s) × {threads} thread(s), {}, kernels: {}, {}",
            ranks.len(),
            plan.world_size,
            plan.partitions.len(),
            model.kind(),
            self.kernels,
            req.precision.support()
        )));
        events.event(RunEvent::Progress {
            label: "infer".into(),
            total: galaxies_in(&plan, &ranks),
            unit: "galaxies",
        });
        // The workers send events from their tasks: hand them a sink they can own.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sink: Arc<dyn RunEvents> = Arc::new(Forward(tx));
        let engine = LocalEngine {
            workers: Some(workers),
            threads: Some(threads),
            kernels: self.kernels.clone(),
            speculate: self.speculate,
        };
        let run = engine.run_ranks(plan.clone(), &ranks, model, sink);
        tokio::pin!(run);
        let outcome = loop {
            tokio::select! {
                Some(e) = rx.recv() => events.event(e),
                r = &mut run => break r,
            }
        };
        while let Ok(e) = rx.try_recv() {
            events.event(e);
        }
        let outcome = outcome?;
        events.event(RunEvent::ProgressDone);
        if outcome.helped > 0 {
            events.event(RunEvent::Message(format!(
                "{} partition(s) were run by a worker helping another worker's rank",
                outcome.helped
            )));
        }
        if !outcome.speculated.is_empty() {
            events.event(RunEvent::Message(format!(
                "ranks {:?} ran long and got a second copy; the first to finish counted",
                outcome.speculated
            )));
        }
        let results = StorageUrl::parse(&plan.results)?;
        let summary = summarize(&results, Some(&plan)).await?;
        let mut report = RunReport::finished(ENGINE, &results, summary);
        report.next = Some(format!(
            "some ranks did not finish; fix the named files, then `cai run --resume --results {}` runs only those",
            report.results
        ));
        Ok(report)
    }
}

/// Passes events from the workers' tasks on to the caller's sink.
struct Forward(tokio::sync::mpsc::UnboundedSender<RunEvent>);

impl RunEvents for Forward {
    fn event(&self, e: RunEvent) {
        let _ = self.0.send(e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parallelism_fits_the_cores() {
        assert_eq!(default_parallelism(10, 2), (2, 1));
        assert_eq!(default_parallelism(1, 8), (1, 8));
        assert_eq!(default_parallelism(3, 8), (3, 2));
        assert_eq!(default_parallelism(0, 4), (1, 4));
    }

    #[test]
    fn stragglers_are_judged_once_most_ranks_ended() {
        // Half the ranks is not most.
        assert_eq!(straggler_bound(&[1.0, 2.0], 2, 4, 3.0), None);
        assert_eq!(straggler_bound(&[1.0, 5.0, 2.0], 3, 4, 3.0), Some(2.0));
        // A failed rank counts as ended, not in the median.
        assert_eq!(straggler_bound(&[1.0, 5.0], 3, 4, 3.0), Some(5.0));
        assert_eq!(straggler_bound(&[1.0, 5.0, 2.0], 3, 4, 0.0), None);
        assert_eq!(straggler_bound(&[], 0, 0, 3.0), None);
    }
}
