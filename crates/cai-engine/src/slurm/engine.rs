//! [`SlurmEngine`] as an [`Engine`]: plan here, submit the array and summarize jobs, follow
//! them to the summary ([`watch`]), or reattach to a submission recorded at a results
//! location.

use cai_core::{layout, StorageUrl};

use super::{watch, Event, JobsState, SlurmEngine};
use crate::engine::{holding, warn_plan, Engine, RunEvent, RunEvents, RunReport, RunRequest};
use crate::error::{Error, Result};
use crate::summarize::summarize;

/// The engine's name in rank reports.
const ENGINE: &str = "slurm";

impl SlurmEngine {
    /// [`Engine::run`] once the results location's lease is held.
    async fn run_holding(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport> {
        let (plan, ranks) = req.plan().await?;
        warn_plan(req, &plan, events);
        let results = StorageUrl::parse(&plan.results)?;
        if ranks.is_empty() {
            events.event(RunEvent::Message(
                "every rank already has a result; summarizing".into(),
            ));
            let summary = summarize(&results, Some(&plan)).await?;
            return Ok(RunReport::finished(ENGINE, &results, summary));
        }
        let mut engine = self.clone();
        engine.script.precision = req.precision;
        let prepared = engine.prepare(&plan, &ranks).await?;
        if self.dry_run {
            let out = |l: String| events.event(RunEvent::Output(l));
            out(format!(
                "# dry run: plan {} ({} ranks, {} to run)",
                prepared.plan_url,
                plan.world_size,
                ranks.len()
            ));
            out(format!(
                "# batch scripts: {} and {}",
                prepared.array_script.display(),
                prepared.summarize_script.display()
            ));
            out("# submit by hand with:".into());
            for c in prepared.shell_commands() {
                out(c);
            }
            return Ok(RunReport::detached(ENGINE, &prepared.results, Vec::new()));
        }
        let state = engine.submit(&prepared).await?;
        events.event(RunEvent::Message(format!(
            "submitted array job {} ({} task(s), logs in {}) and summarize job {} (afterany:{})",
            state.arrays[0].job_id,
            ranks.len(),
            prepared.log_dir.display(),
            state.summarize_jobs[0],
            state.arrays[0].job_id
        )));
        if req.detach {
            events.event(RunEvent::Output(format!(
                "submitted: follow with `cai status --results {}`",
                state.results
            )));
            return Ok(RunReport::detached(ENGINE, &state.results, state.job_ids()));
        }
        self.follow(state, events).await
    }

    /// Follow a submission to its summary, telling `events`.
    async fn follow(&self, mut state: JobsState, events: &dyn RunEvents) -> Result<RunReport> {
        let mut on = |s: &super::Snapshot, evs: &[Event]| {
            for e in evs {
                events.event(match e {
                    Event::Done {
                        rank,
                        galaxies,
                        host,
                    } => RunEvent::RankDone {
                        rank: *rank,
                        galaxies: *galaxies,
                        host: host.clone(),
                    },
                    Event::Failed {
                        rank,
                        task,
                        reason,
                        retried_as,
                    } => RunEvent::RankFailed {
                        rank: *rank,
                        task: Some(task.clone()),
                        reason: reason.clone(),
                        retried_as: retried_as.clone(),
                    },
                    Event::Note(n) => RunEvent::Message(n.clone()),
                });
            }
            events.event(RunEvent::Status {
                line: s.line(),
                elapsed_s: s.elapsed_s,
            });
        };
        let outcome = watch(self, &mut state, &mut on).await?;
        let results = StorageUrl::parse(&state.results)?;
        let jobs = state.job_ids();
        let mut report = RunReport::finished(ENGINE, &results, outcome.summary);
        report.elapsed_s = outcome.elapsed_s;
        report.footer = Some(format!(
            "slurm        submit to summary {:.1} s; jobs {}",
            outcome.elapsed_s,
            jobs.join(" ")
        ));
        report.jobs = jobs;
        report.next = Some(format!(
            "some ranks did not finish; fix the named files, then `cai run --engine slurm --resume --results {}` submits only those",
            report.results
        ));
        Ok(report)
    }
}

#[async_trait::async_trait(?Send)]
impl Engine for SlurmEngine {
    fn name(&self) -> &'static str {
        ENGINE
    }

    async fn run(&self, req: &RunRequest, events: &dyn RunEvents) -> Result<RunReport> {
        if !self.dry_run {
            self.commands.check()?;
            if let Some(r) = req.results_location() {
                self.ensure_idle(&StorageUrl::parse(&r)?).await?;
            }
        }
        let lease = req.lease(ENGINE, events).await?;
        holding(lease, events, self.run_holding(req, events)).await
    }

    async fn attach(
        &self,
        results: &str,
        _id: Option<&str>,
        events: &dyn RunEvents,
    ) -> Result<RunReport> {
        let url = StorageUrl::parse(results)?;
        let state = JobsState::load(&url).await?.ok_or_else(|| {
            Error::from(super::Error::NoJobs {
                results: results.to_string(),
                key: layout::SLURM_JOBS.into(),
            })
        })?;
        SlurmEngine::for_state(&state, self.poll)
            .follow(state, events)
            .await
    }

    async fn describe(&self, results: &str) -> Result<Vec<String>> {
        let Some(state) = JobsState::load(&StorageUrl::parse(results)?).await? else {
            return Ok(Vec::new());
        };
        let mut lines = Vec::new();
        for id in state.job_ids() {
            let recs = self.commands.show_job(&id)?;
            if recs.is_empty() {
                lines.push(format!("job {id:<10} no longer known to Slurm"));
            }
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for r in &recs {
                *counts.entry(r.state.clone()).or_default() += r.indices.len().max(1);
            }
            if !counts.is_empty() {
                let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                lines.push(format!("job {id:<10} {}", parts.join(", ")));
            }
        }
        Ok(lines)
    }

    fn outlives_process(&self) -> bool {
        true
    }

    fn job_kind(&self) -> &'static str {
        "Slurm jobs"
    }

    fn cancel_command(&self, ids: &str) -> String {
        format!("scancel {ids}")
    }

    async fn jobs(&self, results: &str) -> Result<Vec<String>> {
        Ok(JobsState::load(&StorageUrl::parse(results)?)
            .await?
            .map(|s| s.job_ids())
            .unwrap_or_default())
    }

    async fn cancel(&self, results: &str) -> Result<()> {
        if let Some(state) = JobsState::load(&StorageUrl::parse(results)?).await? {
            SlurmEngine::cancel(self, &state)?;
        }
        Ok(())
    }
}
