//! `cai worker`: run one rank of a plan, as each Slurm array task does.
//!
//! Exit codes: 0 the rank finished, 1 it failed (recorded as `failed/<rank>.json`),
//! 2 the plan or model could not be loaded, 3 the results location is not the one the
//! plan was written to (no probe: not shared with this node).

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_engine::task::RankTask;

use crate::cli::WorkerArgs;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::Outcome;

/// Exit code for "the results location is not shared with this node"; the Slurm engine
/// reads it (`cai_engine::slurm::EXIT_NOT_SHARED`).
const EXIT_NOT_SHARED: i32 = 3;

/// `cai worker`: the work is `cai_engine::task::RankTask`'s; this reports it.
pub async fn worker(a: WorkerArgs, printer: &Printer) -> Result<Outcome> {
    let task = match RankTask::open(&a.plan, a.probe.as_deref()).await {
        Err(e @ cai_engine::Error::NotShared { .. }) => {
            eprintln!("error: {e}");
            std::process::exit(EXIT_NOT_SHARED);
        }
        t => t.with_context(|| format!("cannot read the plan {}", a.plan))?,
    };
    let rank = a.rank;
    let threads = a.compute.threads.for_worker();
    let precision = a.compute.fixed("cai worker")?;
    printer.note(task.describe(rank, threads, precision));
    let progress = Arc::new(Progress::new(
        &format!("rank {rank}"),
        task.plan.galaxies_of(rank),
        "galaxies",
        printer.quiet(),
    ));
    let p2 = progress.clone();
    let res = task
        .run(rank, threads, precision, Some(Arc::new(move |n| p2.inc(n))))
        .await?;
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
