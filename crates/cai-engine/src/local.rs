//! The local engine: ranks as tasks on a pool of workers on this machine.
//!
//! `workers` ranks run at once, each on its own pool of `threads` inference threads, so
//! `workers × threads` should not exceed the cores. Every rank goes through the same
//! [`Worker::run_rank`](crate::worker::Worker::run_rank) as on Slurm or Lambda.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cai_core::plan::Plan;
use cai_core::report::RankReport;
use cai_model::Model;

use crate::error::{Error, Result};
use crate::worker::{ProgressFn, Worker};

/// What happened to one rank.
#[derive(Debug)]
pub enum RankEvent<'a> {
    /// The rank started.
    Started(usize),
    /// The rank finished.
    Done(&'a RankReport),
    /// The rank failed; the error names the file.
    Failed(usize, &'a Error),
}

/// Called as ranks start, finish and fail.
pub type RankEventFn = Arc<dyn Fn(RankEvent<'_>) + Send + Sync>;

/// Outcome of running a set of ranks.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Ranks that finished.
    pub done: Vec<RankReport>,
    /// Ranks that failed, with the error message.
    pub failed: Vec<(usize, String)>,
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

/// Runs ranks on this machine.
#[derive(Debug, Clone)]
pub struct LocalEngine {
    /// Ranks run at once.
    pub workers: usize,
    /// Inference threads per worker.
    pub threads: usize,
    /// Kernel tier name for the reports.
    pub kernels: String,
}

impl LocalEngine {
    /// Run `ranks` of `plan`; a failed rank is recorded and the others go on.
    pub async fn run(
        &self,
        plan: Arc<Plan>,
        ranks: &[usize],
        model: Arc<dyn Model>,
        progress: Option<ProgressFn>,
        events: Option<RankEventFn>,
    ) -> Result<RunOutcome> {
        let queue = Arc::new(Mutex::new(ranks.iter().copied().collect::<VecDeque<_>>()));
        let outcome = Arc::new(Mutex::new(RunOutcome::default()));
        let mut tasks = Vec::new();
        for _ in 0..self.workers.clamp(1, ranks.len().max(1)) {
            let worker = Worker::new(
                model.clone(),
                &plan.model,
                self.threads,
                "local",
                &self.kernels,
            )?;
            let (queue, outcome, plan) = (queue.clone(), outcome.clone(), plan.clone());
            let (progress, events) = (progress.clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(rank) = next else { break };
                    if let Some(ev) = &events {
                        ev(RankEvent::Started(rank));
                    }
                    let res = worker.run_rank(&plan, rank, progress.clone()).await;
                    if let Some(ev) = &events {
                        match &res {
                            Ok(r) => ev(RankEvent::Done(r)),
                            Err(e) => ev(RankEvent::Failed(rank, e)),
                        }
                    }
                    if let Ok(mut out) = outcome.lock() {
                        match res {
                            Ok(r) => out.done.push(r),
                            Err(e) => out.failed.push((rank, e.to_string())),
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
        out.failed.sort_by_key(|f| f.0);
        Ok(out)
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
}
