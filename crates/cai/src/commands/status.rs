//! `cai status`: how far a run is. When an engine's jobs are recorded at the results
//! location (Slurm's `slurm/jobs.json`), it reattaches and follows them to the summary (or,
//! with `--once`, shows them once).

use anyhow::{bail, Result};
use cai_core::results::RunState;
use cai_core::StorageUrl;

use super::engines::{drive, engine_at, finish, Printer};
use crate::cli::StatusArgs;
use crate::Outcome;

/// `cai status`.
pub async fn status(a: StatusArgs, quiet: bool) -> Result<Outcome> {
    let results = StorageUrl::parse(&a.results)?;
    if let Some(engine) = engine_at(&results).await? {
        if !a.once {
            let printer = Printer::new(quiet);
            let report = drive(
                &*engine,
                &printer,
                Some(a.results.clone()),
                engine.attach(&a.results, None, &printer),
            )
            .await?;
            return finish(&report, a.json, quiet);
        }
        for line in engine.describe(&a.results).await? {
            println!("{line}");
        }
    }
    let Some(st) = RunState::of(&results).await? else {
        bail!("no plan.json under {results}: no run was started there");
    };
    println!("results      {results}");
    println!(
        "ranks        {} done, {} failed, {} without a result (of {})",
        st.done,
        st.failed.len(),
        st.without_result,
        st.world_size
    );
    if !st.failed.is_empty() {
        println!("failed       ranks {:?}", st.failed);
    }
    println!(
        "summary      {}",
        if st.summary_written {
            "written"
        } else {
            "not yet"
        }
    );
    Ok(if st.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
