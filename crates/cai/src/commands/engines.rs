//! The one place an engine is chosen and its run shown: [`engine_for`] turns `cai run`
//! flags into a `Box<dyn Engine>` (for `run` and `sweep`), [`engine_at`] finds the engine of
//! a run already going (for `status`), [`Printer`] shows an engine's events (progress bars,
//! status lines, messages; nothing with `--quiet`), and [`finish`] prints the report and
//! picks the exit code.

use std::future::Future;
use std::io::{IsTerminal, Write as _};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use cai_core::payload::Payload;
use cai_engine::engine::{Engine, RunEnd, RunEvent, RunEvents, RunReport, RunRequest};
use cai_engine::local::LocalEngine;

use crate::cli::{EngineKind, RunArgs};
use crate::progress::Progress;
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
        results: a.results.clone(),
        model: a.model.clone(),
        payload: a.payload.as_deref().map(read_payload).transpose()?,
        batch_size: a.batch_size,
        file_limit: a.file_limit,
        world_size: a.world_size,
        precision: a.precision,
        resume: a.resume,
        detach: a.detach,
    })
}

/// Seconds as a poll interval, clamped to `min`..1 h (`default` when not a number).
#[cfg_attr(not(any(feature = "slurm", feature = "aws")), allow(dead_code))]
fn poll(secs: f64, min: f64, default: f64) -> Duration {
    Duration::from_secs_f64(if secs.is_finite() {
        secs.clamp(min, 3600.0)
    } else {
        default
    })
}

/// The engine `--engine` names, configured from its flags.
pub(crate) async fn engine_for(a: &RunArgs) -> Result<Box<dyn Engine>> {
    Ok(match a.engine {
        EngineKind::Local => Box::new(LocalEngine {
            workers: a.workers,
            threads: a.threads,
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
                poll: poll(a.poll, 0.05, 5.0),
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
            threads: a.threads,
            precision: a.precision,
            cai_bin,
            ..ScriptOptions::default()
        },
        script_dir: s.slurm_dir.clone(),
        retries: s.retries,
        poll: poll(a.poll, 0.1, 2.0),
        dry_run: s.dry_run,
    })
}

/// The engine whose jobs are recorded at `results` (a run that outlives its `cai run`), if
/// any: what `cai status` reattaches to.
#[cfg_attr(not(feature = "slurm"), allow(unused_variables, clippy::unused_async))]
pub(crate) async fn engine_at(results: &cai_core::StorageUrl) -> Result<Option<Box<dyn Engine>>> {
    #[cfg(feature = "slurm")]
    if let Some(state) = cai_engine::slurm::JobsState::load(results).await? {
        let secs = std::env::var("CAI_SLURM_POLL")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2.0);
        return Ok(Some(Box::new(cai_engine::slurm::SlurmEngine::for_state(
            &state,
            poll(secs, 0.1, 2.0),
        ))));
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
pub(crate) fn finish(report: &RunReport, json: bool, quiet: bool) -> Result<Outcome> {
    if let Some(s) = &report.summary {
        super::run::print_summary(s, json)?;
    }
    if let (Some(f), false) = (&report.footer, json) {
        println!("{f}");
    }
    match &report.end {
        RunEnd::Detached => return Ok(Outcome::Ok),
        RunEnd::Aborted { status, id } => bail!("the execution ended {status}: {id}"),
        RunEnd::Finished => {}
    }
    if report.complete() {
        return Ok(Outcome::Ok);
    }
    if let (Some(next), false) = (&report.next, quiet) {
        eprintln!("{next}");
    }
    Ok(Outcome::SomeFailed)
}

/// A followed run's status line as last printed.
struct StatusLine {
    /// The line without its time.
    last: String,
    /// When it was printed (off a terminal, an unchanged line is repeated every 30 s).
    at: Instant,
}

#[derive(Default)]
struct PrinterState {
    bar: Option<Progress>,
    status: Option<StatusLine>,
}

/// Shows a run's events on stderr (results on stdout): a progress bar with rate and ETA on a
/// terminal and plain lines otherwise; a status line rewritten in place on a terminal;
/// nothing but results with `--quiet`.
pub(crate) struct Printer {
    quiet: bool,
    tty: bool,
    state: Mutex<PrinterState>,
}

impl Printer {
    /// A printer for this process's stderr.
    pub(crate) fn new(quiet: bool) -> Self {
        Self {
            quiet,
            tty: std::io::stderr().is_terminal(),
            state: Mutex::new(PrinterState::default()),
        }
    }

    fn line(&self, st: &PrinterState, msg: &str) {
        if let Some(bar) = &st.bar {
            bar.println(msg);
            return;
        }
        if self.quiet {
            return;
        }
        if self.tty && st.status.is_some() {
            eprint!("\r\x1b[2K");
        }
        eprintln!("{msg}");
    }

    /// The run is over: end a status line rewritten in place.
    pub(crate) fn finish(&self) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        if let Some(bar) = st.bar.take() {
            bar.finish();
        }
        if st.status.take().is_some() && self.tty && !self.quiet {
            eprintln!();
        }
    }
}

impl RunEvents for Printer {
    fn event(&self, e: RunEvent) {
        let Ok(mut st) = self.state.lock() else {
            return;
        };
        match e {
            RunEvent::Warning(w) => self.line(&st, &format!("warning: {w}")),
            RunEvent::Message(m) => self.line(&st, &m),
            RunEvent::Output(o) => println!("{o}"),
            RunEvent::Progress { label, total, unit } => {
                st.bar = Some(Progress::new(&label, total, unit, self.quiet));
            }
            RunEvent::Advance(n) => {
                if let Some(bar) = &st.bar {
                    bar.inc(n);
                }
            }
            RunEvent::ProgressDone => {
                if let Some(bar) = st.bar.take() {
                    bar.finish();
                }
            }
            // A bar counts finished ranks already.
            RunEvent::RankDone {
                rank,
                galaxies,
                host,
            } if st.bar.is_none() => self.line(
                &st,
                &format!("rank {rank} done: {galaxies} galaxies on {host}"),
            ),
            RunEvent::RankDone { .. } => {}
            RunEvent::RankFailed {
                rank,
                task,
                reason,
                retried_as,
            } => {
                let task = task.map(|t| format!(" (task {t})")).unwrap_or_default();
                let retry = retried_as
                    .map(|j| format!("; resubmitted as job {j}"))
                    .unwrap_or_default();
                self.line(&st, &format!("rank {rank}{task} failed: {reason}{retry}"));
            }
            RunEvent::Status { line, elapsed_s } => {
                if self.quiet {
                    return;
                }
                let shown = format!("{line} · {elapsed_s:.0} s");
                if self.tty {
                    eprint!("\r\x1b[2K{shown}");
                    let _ = std::io::stderr().flush();
                    st.status = Some(StatusLine {
                        last: line,
                        at: Instant::now(),
                    });
                } else if st
                    .status
                    .as_ref()
                    .is_none_or(|s| s.last != line || s.at.elapsed() > Duration::from_secs(30))
                {
                    eprintln!("{shown}");
                    st.status = Some(StatusLine {
                        last: line,
                        at: Instant::now(),
                    });
                }
            }
        }
    }
}
