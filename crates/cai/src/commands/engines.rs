//! The one place an engine is chosen and its run shown: [`engine_for`] turns `cai run`
//! flags into a `Box<dyn Engine>` (for `run` and `sweep`), [`engine_at`] finds the engine of
//! a run already going (for `status`), [`drive`] runs or follows it (Ctrl-C offers to
//! cancel), and [`finish`] prints the report and picks the exit code.

use std::future::Future;
use std::io::{IsTerminal, Write as _};

use anyhow::{bail, Result};
use cai_core::payload::Payload;
use cai_engine::engine::{Engine, RunEnd, RunReport, RunRequest};
use cai_engine::local::LocalEngine;

pub(crate) use crate::printer::Printer;

use crate::cli::{EngineKind, PollArg, RunArgs};
#[cfg_attr(not(any(feature = "slurm", feature = "aws")), allow(unused_imports))]
use crate::settings::PollFor;
use crate::Outcome;

/// Read the original's `payload.json` (`--payload`), for every engine.
pub(crate) fn read_payload(path: &std::path::Path) -> Result<Payload> {
    use anyhow::Context as _;
    let bytes = std::fs::read(path)
        .with_context(|| format!("cannot read the payload {}", path.display()))?;
    Ok(Payload::from_json(&path.display().to_string(), &bytes)?)
}

/// The run request `cai run` flags describe.
pub(crate) fn request(a: &RunArgs) -> Result<RunRequest> {
    Ok(RunRequest {
        data: a.data.clone(),
        results: a.results.results.clone(),
        model: a.model.model.clone(),
        binds: a.bind.binds.clone(),
        label: a.bind.label.clone(),
        payload: a.payload.as_deref().map(read_payload).transpose()?,
        batch_size: a.batch.batch_size,
        file_limit: a.file_limit,
        world_size: a.world_size,
        precision: a.compute.fixed("cai run")?,
        resume: a.resume,
        detach: a.detach,
    })
}

/// The engine `--engine` names, configured from its flags.
pub(crate) async fn engine_for(a: &RunArgs) -> Result<Box<dyn Engine>> {
    Ok(match a.engine {
        EngineKind::Local => Box::new(LocalEngine {
            workers: a.workers,
            threads: a.compute.threads(),
            speculate: a.speculate,
            ..LocalEngine::default()
        }),
        #[cfg(feature = "slurm")]
        EngineKind::Slurm => Box::new(slurm_engine(a)?),
        #[cfg(feature = "aws")]
        EngineKind::Aws => {
            let o = &a.aws;
            let sdk =
                cai_aws::sdk_config(o.account.profile.as_deref(), o.account.region.as_deref())
                    .await;
            Box::new(cai_aws::AwsEngine {
                sdk,
                state_machine: o.state_machine.clone(),
                stack: o.options.settings(),
                artifacts: o.artifacts.artifacts(),
                poll: a.poll.interval(PollFor::Aws),
                speculate: a.speculate,
            })
        }
    })
}

/// The Slurm engine for `cai run --engine slurm` flags.
#[cfg(feature = "slurm")]
fn slurm_engine(a: &RunArgs) -> Result<cai_engine::slurm::SlurmEngine> {
    use anyhow::Context as _;
    use cai_engine::slurm::{script::read_extra_lines, ScriptOptions, SlurmCommands};
    let s = &a.slurm;
    let cai_bin = match &s.cai_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this cai binary (give --cai-bin)")?,
    };
    let extra = match &s.sbatch_extra {
        Some(f) => read_extra_lines(f)?,
        None => Vec::new(),
    };
    Ok(cai_engine::slurm::SlurmEngine {
        commands: SlurmCommands::default(),
        script: ScriptOptions {
            job_name: s.job_name.clone(),
            partition: s.partition.clone(),
            account: s.account.clone(),
            qos: s.qos.clone(),
            time: s.time.clone(),
            mem: s.mem.clone(),
            cpus_per_task: s.cpus_per_task,
            gres: s.gres.clone(),
            constraint: s.constraint.clone(),
            extra,
            setup: s.setup.clone(),
            max_running: s.max_running,
            threads: a.compute.threads(),
            precision: a.compute.fixed("cai run")?,
            cai_bin,
            ..ScriptOptions::default()
        },
        script_dir: s.slurm_dir.clone(),
        retries: s.retries,
        poll: a.poll.interval(PollFor::Slurm),
        speculate: a.speculate,
        dry_run: s.dry_run,
    })
}

/// The engine whose jobs are recorded at `results` (a run that outlives its `cai run`), if
/// any: what `cai status` reattaches to.
#[cfg_attr(
    not(any(feature = "slurm", feature = "aws")),
    allow(unused_variables, clippy::unused_async)
)]
pub(crate) async fn engine_at(
    results: &cai_core::StorageUrl,
    poll: &PollArg,
) -> Result<Option<Box<dyn Engine>>> {
    #[cfg(feature = "slurm")]
    if let Some(state) = cai_engine::slurm::JobsState::load(results).await? {
        return Ok(Some(Box::new(cai_engine::slurm::SlurmEngine::for_state(
            &state,
            poll.interval(PollFor::Slurm),
        ))));
    }
    #[cfg(feature = "aws")]
    if let Some(r) = cai_aws::execution::ExecutionRecord::load(results).await? {
        return Ok(Some(Box::new(cai_aws::AwsEngine {
            poll: poll.interval(PollFor::Aws),
            ..cai_aws::AwsEngine::new(cai_aws::sdk_config(None, r.region.as_deref()).await)
        })));
    }
    Ok(None)
}

/// Run `work` (an engine's run or attach); for an engine whose jobs outlive this process,
/// Ctrl-C stops following and offers to cancel them.
pub(crate) async fn drive(
    engine: &dyn Engine,
    printer: &Printer,
    results: Option<String>,
    work: impl Future<Output = cai_engine::Result<RunReport>>,
) -> Result<RunReport> {
    if !engine.outlives_process() {
        let r = work.await;
        printer.finish();
        return Ok(r?);
    }
    let r = tokio::select! {
        r = work => Some(r),
        _ = tokio::signal::ctrl_c() => None,
    };
    printer.finish();
    if let Some(r) = r {
        return Ok(r?);
    }
    let Some(results) = results else {
        bail!("interrupted");
    };
    let ids = engine.jobs(&results).await?.join(" ");
    let kind = engine.job_kind();
    if ask_cancel(kind, &ids).await {
        engine.cancel(&results).await?;
        bail!("interrupted; cancelled {kind} {ids}");
    }
    bail!(
        "interrupted; the {kind} {ids} keep running: `cai status --results {results}` follows them, `{}` cancels them",
        engine.cancel_command(&ids)
    );
}

/// Ask whether to cancel (on a terminal); a second Ctrl-C means no.
async fn ask_cancel(kind: &str, ids: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("\ncancel the {kind} {ids}? [y/N] ");
    let _ = std::io::stderr().flush();
    let read = tokio::task::spawn_blocking(|| {
        let mut s = String::new();
        std::io::stdin().read_line(&mut s).map(|_| s)
    });
    tokio::select! {
        r = read => matches!(r, Ok(Ok(s)) if s.trim().eq_ignore_ascii_case("y") || s.trim().eq_ignore_ascii_case("yes")),
        _ = tokio::signal::ctrl_c() => false,
    }
}

/// Print a finished run's summary (and the engine's footer), say what to do about failed
/// ranks, and give the exit outcome.
pub(crate) fn finish(report: &RunReport, printer: &Printer) -> Result<Outcome> {
    if let Some(s) = &report.summary {
        super::run::print_summary(s, printer)?;
    }
    if let Some(f) = &report.footer {
        printer.result(f);
    }
    match &report.end {
        RunEnd::Detached => return Ok(Outcome::Ok),
        RunEnd::Aborted { status, id } => bail!("the execution ended {status}: {id}"),
        RunEnd::Finished => {}
    }
    if report.complete() {
        return Ok(Outcome::Ok);
    }
    if let Some(next) = &report.next {
        printer.note(next);
    }
    Ok(Outcome::SomeFailed)
}
