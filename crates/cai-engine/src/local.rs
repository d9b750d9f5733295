//! The local engine: ranks as tasks on a pool of workers on this machine.
//!
//! `workers` ranks run at once, each on its own pool of `threads` inference threads, so
//! `workers × threads` should not exceed the cores. Every rank goes through the same
//! [`Worker::run_rank`](crate::worker::Worker::run_rank) as on Slurm or Lambda.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use cai_core::plan::Plan;
use cai_core::report::{RankFailure, RankReport};
use cai_core::StorageUrl;
use cai_model::Model;

use crate::engine::{
    galaxies_in, holding, warn_plan, Engine, RunEvent, RunEvents, RunReport, RunRequest,
};
use crate::error::{Error, Result};
use crate::stages::load_model_with;
use crate::summarize::summarize;
use crate::worker::{host_name, rank_failure, ProgressFn, Worker};

/// Outcome of running a set of ranks.
#[derive(Debug, Default)]
pub struct RunOutcome {
    /// Ranks that finished.
    pub done: Vec<RankReport>,
    /// Ranks that failed (also recorded as `failed/<rank>.json`).
    pub failed: Vec<RankFailure>,
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
}

impl Default for LocalEngine {
    fn default() -> Self {
        Self {
            workers: None,
            threads: None,
            kernels: kernel_tier(),
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
    pub async fn run_ranks(
        &self,
        plan: Arc<Plan>,
        ranks: &[usize],
        model: Arc<dyn Model>,
        events: Arc<dyn RunEvents>,
    ) -> Result<RunOutcome> {
        let (workers, threads) = self.parallelism(ranks.len());
        let queue = Arc::new(Mutex::new(ranks.iter().copied().collect::<VecDeque<_>>()));
        let outcome = Arc::new(Mutex::new(RunOutcome::default()));
        let mut tasks = Vec::new();
        for _ in 0..workers.clamp(1, ranks.len().max(1)) {
            let worker = Worker::new(model.clone(), &plan.model, threads, ENGINE, &self.kernels)?;
            let (queue, outcome, plan, events) =
                (queue.clone(), outcome.clone(), plan.clone(), events.clone());
            tasks.push(tokio::spawn(async move {
                let ev = events.clone();
                let progress: ProgressFn = Arc::new(move |n| ev.event(RunEvent::Advance(n)));
                loop {
                    let next = queue.lock().ok().and_then(|mut q| q.pop_front());
                    let Some(rank) = next else { break };
                    let res = worker.run_rank(&plan, rank, Some(progress.clone())).await;
                    if matches!(&res, Err(e) if e.is_cancelled()) {
                        // The caller stopped the run: this rank and the rest are not done,
                        // nor failed.
                        break;
                    }
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
                        match res {
                            Ok(r) => out.done.push(r),
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
        Ok(out)
    }
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
        warn_plan(&plan, events);
        let model = load_model_with(&plan.model, req.precision)
            .await
            .map_err(|e| Error::LoadModel {
                model: plan.model.clone(),
                source: Box::new(e),
            })?;
        let (workers, threads) = self.parallelism(ranks.len());
        events.event(RunEvent::Message(format!(
            "running {} of {} ranks ({} partitions) on {workers} worker(s) × {threads} thread(s), kernels: {}, {}",
            ranks.len(),
            plan.world_size,
            plan.partitions.len(),
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
        outcome?;
        events.event(RunEvent::ProgressDone);
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
}
