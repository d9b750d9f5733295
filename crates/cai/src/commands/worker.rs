//! `cai worker`: run one rank of a plan, as each Slurm array task does.
//!
//! Exit codes: 0 the rank finished, 1 it failed (recorded as `failed/<rank>.json`),
//! 2 the plan or model could not be loaded, 3 the results location is not the one the
//! plan was written to (no probe: not shared with this node).

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::StorageUrl;
use cai_engine::local::kernel_tier;
use cai_engine::stages::load_plan_model;
use cai_engine::worker::{host_name, rank_failure, write_failure, Worker};

use crate::cli::WorkerArgs;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::Outcome;

/// Exit code for "the results location is not shared with this node"; the Slurm engine
/// reads it (`cai_engine::slurm::EXIT_NOT_SHARED`).
const EXIT_NOT_SHARED: i32 = 3;

fn not_shared(msg: String) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(EXIT_NOT_SHARED);
}

/// `cai worker`.
pub async fn worker(a: WorkerArgs, printer: &Printer) -> Result<Outcome> {
    let host = host_name();
    let plan_url = StorageUrl::parse(&a.plan)?;
    let bytes = match plan_url.get("").await {
        Ok(b) => b,
        Err(cai_core::Error::NotFound { url }) if a.probe.is_some() => not_shared(format!(
            "the plan {url} does not exist on host {host}: the results location is not shared with this node"
        )),
        Err(e) => return Err(e).context("cannot read the plan"),
    };
    let plan = Plan::from_json(&plan_url.to_string(), &bytes)?;
    let results = StorageUrl::parse(&plan.results)?;
    if let Some(token) = &a.probe {
        let found = results.get_opt(layout::SLURM_PROBE).await?;
        if found.as_deref() != Some(token.as_bytes()) {
            not_shared(format!(
                "{} on host {host} {} the token of this submission: the results location is not shared with this node (or a newer run replaced it)",
                results.url_of(layout::SLURM_PROBE),
                if found.is_some() { "does not hold" } else { "is missing, so it cannot hold" },
            ));
        }
    }
    let engine = if std::env::var_os("SLURM_JOB_ID").is_some() {
        "slurm"
    } else {
        "local"
    };
    let rank = a.rank;
    let threads = a.compute.threads.for_worker();
    let precision = a.compute.fixed("cai worker")?;
    let job = std::env::var("SLURM_JOB_ID").unwrap_or_default();
    printer.note(format!(
            "rank {rank} of {} on {host} ({engine}{}), {threads} thread(s), kernels {}, precision {}: {} partition(s)",
            plan.world_size,
            if job.is_empty() { String::new() } else { format!(" job {job}") },
            kernel_tier(),
            precision,
            plan.partitions_of(rank).len()
        ));
    let model = load_plan_model(&plan, precision)
        .await
        .with_context(|| format!("cannot load the model {}", plan.model))?;
    let worker = Worker::new(model, &plan.model, threads, engine, &kernel_tier())?;
    let total: u64 = plan
        .partitions_of(rank)
        .iter()
        .map(|p| p.galaxies.unwrap_or(0))
        .sum();
    let progress = Arc::new(Progress::new(
        &format!("rank {rank}"),
        total,
        "galaxies",
        printer.quiet(),
    ));
    let p2 = progress.clone();

    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let res = tokio::select! {
        r = worker.run_rank(&plan, rank, Some(Arc::new(move |n| p2.inc(n)))) => r,
        _ = term.recv() => {
            let error = format!(
                "stopped by SIGTERM on {host}{} (scancel, time limit or preemption)",
                if job.is_empty() { String::new() } else { format!(", job {job}") }
            );
            let f = rank_failure(&plan, rank, engine, &host, error);
            let _ = write_failure(&results, &f).await;
            eprintln!("rank {rank}: {}", f.error);
            return Ok(Outcome::SomeFailed);
        }
    };
    progress.finish();
    match res {
        Ok(r) => {
            printer.note(format!(
                "rank {rank} done: {} galaxies in {:.2} s ({:.1} galaxies/s of inference)",
                r.galaxies, r.wall_time_s, r.sample_persec
            ));
            Ok(Outcome::Ok)
        }
        Err(e) => {
            eprintln!("rank {rank} failed: {e}");
            Ok(Outcome::SomeFailed)
        }
    }
}

#[cfg(all(test, feature = "slurm"))]
mod tests {
    #[test]
    fn the_engine_reads_the_same_codes() {
        assert_eq!(super::EXIT_NOT_SHARED, cai_engine::slurm::EXIT_NOT_SHARED);
    }
}
