//! `cai run --engine slurm`: plan here, run the ranks as a Slurm job array, follow it to the
//! summary (Ctrl-C offers to cancel; `cai status` reattaches).

use std::io::{IsTerminal, Write as _};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use cai_core::StorageUrl;
use cai_engine::slurm::script::read_extra_lines;
use cai_engine::slurm::{
    watch, Event, JobsState, ScriptOptions, SlurmCommands, SlurmEngine, Snapshot,
};
use cai_engine::summarize::summarize as summarize_results;

use super::run::{plan_or_resume, print_summary, read_payload};
use crate::cli::RunArgs;
use crate::Outcome;

/// The results location of a run, as `plan_or_resume` resolves it.
fn results_location(a: &RunArgs) -> Result<Option<String>> {
    if let Some(r) = &a.results {
        return Ok(Some(r.clone()));
    }
    let Some(p) = &a.payload else { return Ok(None) };
    Ok(read_payload(p)?.results_url())
}

/// The engine for `cai run` flags.
fn engine_for(a: &RunArgs, results: &StorageUrl) -> Result<SlurmEngine> {
    let s = &a.slurm;
    let dir = match (&s.slurm_dir, results.local_path()) {
        (Some(d), _) => std::path::absolute(d)?,
        (None, Some(p)) => p.join(cai_core::layout::SLURM_DIR),
        (None, None) => std::path::absolute("cai-slurm")?,
    };
    let cai_bin = match &s.cai_bin {
        Some(b) => b.clone(),
        None => std::env::current_exe().context("cannot find this cai binary (give --cai-bin)")?,
    };
    let extra = match &s.sbatch_extra {
        Some(f) => read_extra_lines(f)?,
        None => Vec::new(),
    };
    Ok(SlurmEngine {
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
            log_dir: dir.join(cai_core::layout::SLURM_LOGS_DIR),
        },
        script_dir: dir,
        retries: s.retries,
        poll: poll(a.poll),
    })
}

fn poll(secs: f64) -> Duration {
    Duration::from_secs_f64(if secs.is_finite() {
        secs.clamp(0.1, 3600.0)
    } else {
        2.0
    })
}

/// The engine to follow an existing submission.
pub fn engine_for_state(state: &JobsState, poll_s: f64) -> SlurmEngine {
    SlurmEngine {
        commands: SlurmCommands::default(),
        script: ScriptOptions::default(),
        script_dir: state
            .array_script
            .parent()
            .map(PathBuf::from)
            .unwrap_or_default(),
        retries: state.retries,
        poll: poll(poll_s),
    }
}

/// `cai run --engine slurm`.
pub async fn run(a: &RunArgs, quiet: bool) -> Result<Outcome> {
    let s = &a.slurm;
    let commands = SlurmCommands::default();
    if !s.dry_run {
        commands.check()?;
        if let Some(r) = results_location(a)? {
            let results = StorageUrl::parse(&r)?;
            engine_for(a, &results)?.ensure_idle(&results).await?;
        }
    }
    let (plan, ranks) = plan_or_resume(a).await?;
    for w in &plan.warnings {
        if !quiet {
            eprintln!("warning: {w}");
        }
    }
    let results = StorageUrl::parse(&plan.results)?;
    if ranks.is_empty() {
        if !quiet {
            eprintln!("every rank already has a result; summarizing");
        }
        let summary = summarize_results(&results, Some(&plan)).await?;
        print_summary(&summary, a.json)?;
        return Ok(Outcome::Ok);
    }
    let engine = engine_for(a, &results)?;
    let prepared = engine.prepare(&plan, &ranks).await?;
    if s.dry_run {
        println!(
            "# dry run: plan {} ({} ranks, {} to run)",
            prepared.plan_url,
            plan.world_size,
            ranks.len()
        );
        println!(
            "# batch scripts: {} and {}",
            prepared.array_script.display(),
            prepared.summarize_script.display()
        );
        println!("# submit by hand with:");
        for c in prepared.shell_commands() {
            println!("{c}");
        }
        return Ok(Outcome::Ok);
    }
    let state = engine.submit(&prepared).await?;
    if !quiet {
        eprintln!(
            "submitted array job {} ({} task(s), logs in {}) and summarize job {} (afterany:{})",
            state.arrays[0].job_id,
            ranks.len(),
            engine.script.log_dir.display(),
            state.summarize_jobs[0],
            state.arrays[0].job_id
        );
    }
    if a.detach {
        println!(
            "submitted: follow with `cai status --results {}`",
            state.results
        );
        return Ok(Outcome::Ok);
    }
    follow(&engine, state, quiet, a.json).await
}

/// Prints the run's progress: one rewritten line on a terminal, a line per change otherwise.
struct Reporter {
    quiet: bool,
    tty: bool,
    last: String,
    last_print: Instant,
}

impl Reporter {
    fn line(s: &Snapshot) -> String {
        let mut l = format!(
            "slurm: {} pending · {} running · {}/{} done · {} failed",
            s.pending, s.running, s.done, s.ranks, s.failed
        );
        if s.retries > 0 {
            l += &format!(" · {} resubmission(s)", s.retries);
        }
        if s.galaxies_total > 0 {
            l += &format!(" · {}/{} galaxies", s.galaxies_done, s.galaxies_total);
        } else {
            l += &format!(" · {} galaxies", s.galaxies_done);
        }
        l += &format!(" · {:.1} galaxies/s", s.galaxies_per_s);
        if s.pending == 0 && s.running == 0 {
            if let Some(st) = &s.summarize {
                l += &format!(" · summarize job {}", st.to_lowercase());
            }
        }
        l
    }

    fn update(&mut self, s: &Snapshot, events: &[Event]) {
        if self.quiet {
            return;
        }
        for e in events {
            let msg = match e {
                Event::Done {
                    rank,
                    galaxies,
                    host,
                } => {
                    format!("rank {rank} done: {galaxies} galaxies on {host}")
                }
                Event::Failed {
                    rank,
                    task,
                    reason,
                    retried_as,
                } => match retried_as {
                    Some(j) => format!(
                        "rank {rank} (task {task}) failed: {reason}; resubmitted as job {j}"
                    ),
                    None => format!("rank {rank} (task {task}) failed: {reason}"),
                },
                Event::Note(n) => n.clone(),
            };
            if self.tty {
                eprint!("\r\x1b[2K");
            }
            eprintln!("{msg}");
        }
        let line = format!("{} · {:.0} s", Self::line(s), s.elapsed_s);
        if self.tty {
            eprint!("\r\x1b[2K{line}");
            let _ = std::io::stderr().flush();
        } else if Self::line(s) != self.last || self.last_print.elapsed() > Duration::from_secs(30)
        {
            eprintln!("{line}");
            self.last = Self::line(s);
            self.last_print = Instant::now();
        }
    }

    fn finish(&self) {
        if self.tty && !self.quiet {
            eprintln!();
        }
    }
}

/// Ask whether to cancel (on a terminal); a second Ctrl-C means no.
async fn ask_cancel(ids: &str) -> bool {
    if !std::io::stdin().is_terminal() {
        return false;
    }
    eprint!("\ncancel the Slurm jobs {ids}? [y/N] ");
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

/// Follow a submission to its summary (used by `cai run` and `cai status`).
pub async fn follow(
    engine: &SlurmEngine,
    mut state: JobsState,
    quiet: bool,
    json: bool,
) -> Result<Outcome> {
    let mut reporter = Reporter {
        quiet,
        tty: std::io::stderr().is_terminal(),
        last: String::new(),
        last_print: Instant::now(),
    };
    let outcome = {
        let mut on = |s: &Snapshot, e: &[Event]| reporter.update(s, e);
        tokio::select! {
            r = watch(engine, &mut state, &mut on) => Some(r),
            _ = tokio::signal::ctrl_c() => None,
        }
    };
    reporter.finish();
    let Some(outcome) = outcome else {
        // Ctrl-C: the latest job ids are in slurm/jobs.json (retries add some).
        let results = StorageUrl::parse(&state.results)?;
        let state = JobsState::load(&results).await?.unwrap_or(state);
        let ids = state.job_ids().join(" ");
        if ask_cancel(&ids).await {
            engine.cancel(&state)?;
            bail!("interrupted; cancelled Slurm jobs {ids}");
        }
        bail!(
            "interrupted; the Slurm jobs {ids} keep running: `cai status --results {}` follows them, `scancel {ids}` cancels them",
            state.results
        );
    };
    let outcome = outcome?;
    let summary = outcome.summary;
    print_summary(&summary, json)?;
    if !json {
        println!(
            "slurm        submit to summary {:.1} s; jobs {}",
            outcome.elapsed_s,
            state.job_ids().join(" ")
        );
    }
    Ok(if summary.complete() {
        Outcome::Ok
    } else {
        if !quiet {
            eprintln!(
                "some ranks did not finish; fix the named files, then `cai run --engine slurm --resume --results {}` submits only those",
                summary.results
            );
        }
        Outcome::SomeFailed
    })
}
