//! One rank as a process of its own: what `cai worker` runs, and so what each Slurm array
//! task runs. [`RankTask::open`] reads the plan and, for Slurm, checks the probe that shows
//! the results location is the one the submitting machine wrote to; [`RankTask::run`] runs
//! the rank, and a SIGTERM (scancel, a time limit, preemption) becomes the rank's recorded
//! failure instead of a vanished process.

use cai_core::plan::Plan;
use cai_core::report::RankReport;
use cai_core::{layout, StorageUrl};
use cai_model::kernels::Precision;

use crate::local::kernel_tier;
use crate::stages::load_plan_model;
use crate::worker::{
    host_name, rank_failure, write_failure, Commit, ProgressFn, RankShare, Worker,
};
use crate::{Error, Result};

/// A rank to run here, from a plan.
#[derive(Debug, Clone)]
pub struct RankTask {
    /// The plan.
    pub plan: Plan,
    /// Its results location.
    pub results: StorageUrl,
    /// This host's name.
    pub host: String,
    /// `slurm` inside a Slurm job, else `local`.
    pub engine: &'static str,
    /// The Slurm job id, inside one.
    pub job: Option<String>,
}

impl RankTask {
    /// Read the plan at `plan_location`; with `probe` (a Slurm submission's token), check
    /// that the results location holds it, else fail with [`Error::NotShared`].
    pub async fn open(plan_location: &str, probe: Option<&str>) -> Result<Self> {
        let host = host_name();
        let plan_url = StorageUrl::parse(plan_location)?;
        let bytes = match plan_url.get("").await {
            Ok(b) => b,
            Err(cai_core::Error::NotFound { url }) if probe.is_some() => {
                return Err(Error::NotShared {
                    message: format!(
                        "the plan {url} does not exist on host {host}: the results location is not shared with this node"
                    ),
                })
            }
            Err(e) => return Err(e.into()),
        };
        let plan = Plan::from_json(&plan_url.to_string(), &bytes)?;
        let results = StorageUrl::parse(&plan.results)?;
        if let Some(token) = probe {
            let found = results.get_opt(layout::SLURM_PROBE).await?;
            if found.as_deref() != Some(token.as_bytes()) {
                return Err(Error::NotShared {
                    message: format!(
                        "{} on host {host} {} the token of this submission: the results location is not shared with this node (or a newer run replaced it)",
                        results.url_of(layout::SLURM_PROBE),
                        if found.is_some() { "does not hold" } else { "is missing, so it cannot hold" },
                    ),
                });
            }
        }
        let job = std::env::var("SLURM_JOB_ID").ok().filter(|j| !j.is_empty());
        Ok(Self {
            plan,
            results,
            host,
            engine: if job.is_some() { "slurm" } else { "local" },
            job,
        })
    }

    /// ` job 123` inside a Slurm job, else nothing: for messages.
    fn job_suffix(&self, sep: &str) -> String {
        self.job
            .as_ref()
            .map(|j| format!("{sep}job {j}"))
            .unwrap_or_default()
    }

    /// `rank 3 of 8 on node1 (slurm job 12), 4 thread(s), kernels avx512, precision f32:
    /// 2 partition(s)`.
    pub fn describe(&self, rank: usize, threads: usize, precision: Precision) -> String {
        format!(
            "rank {rank} of {} on {} ({}{}), {threads} thread(s), kernels {}, precision {precision}: {} partition(s)",
            self.plan.world_size,
            self.host,
            self.engine,
            self.job_suffix(" "),
            kernel_tier(),
            self.plan.partitions_of(rank).len()
        )
    }

    /// Run `rank` on `threads` threads. The outer error is a task that could not start
    /// (the model does not load); the inner one the rank's own failure, already recorded
    /// as `failed/<rank>.json` (a SIGTERM included).
    pub async fn run(
        &self,
        rank: usize,
        threads: usize,
        precision: Precision,
        progress: Option<ProgressFn>,
    ) -> Result<Result<RankReport>> {
        let model = load_plan_model(&self.plan, precision)
            .await
            .map_err(|e| Error::LoadModel {
                model: self.plan.model.clone(),
                source: Box::new(e),
            })?;
        let worker = Worker::new(
            model,
            &self.plan.model,
            threads,
            self.engine,
            &kernel_tier(),
        )?;
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| Error::Backend(Box::new(e)))?;
        // A Slurm task may be one of two copies of its rank (a straggler's second copy, or
        // the straggler itself): the first to finish writes, through a claim in the
        // results location.
        let tag = format!("{}{}", self.host, self.job_suffix(" "));
        let commit = Commit::shared(&self.results, rank, &tag);
        let copy = commit.add_copy();
        let commit = (self.engine == "slurm").then_some((&*commit, copy));
        let share = RankShare::new(self.plan.partitions_of(rank).len());
        tokio::select! {
            r = worker.run_rank_with(&self.plan, rank, &share, commit, progress) => Ok(r),
            _ = term.recv() => {
                // A copy cancelled because the other copy finished is no failure.
                if self.results.exists(&layout::rank_report(rank)).await.unwrap_or(false) {
                    return Ok(Err(Error::Superseded { rank }));
                }
                let error = format!(
                    "stopped by SIGTERM on {}{} (scancel, time limit or preemption)",
                    self.host,
                    self.job_suffix(", "),
                );
                let f = rank_failure(&self.plan, rank, self.engine, &self.host, error);
                let _ = write_failure(&self.results, &f).await;
                Ok(Err(Error::Terminated { rank, message: f.error }))
            }
        }
    }
}
