//! `cai status`: how far a run is. With Slurm jobs recorded (`slurm/jobs.json`), it
//! reattaches and follows them to the summary (or, with `--once`, shows them once).

use anyhow::{bail, Result};
use cai_core::results::{load_plan, ResultsListing};
use cai_core::StorageUrl;

use crate::cli::StatusArgs;
use crate::Outcome;

/// `cai status`.
#[cfg_attr(not(feature = "slurm"), allow(unused_variables))]
pub async fn status(a: StatusArgs, quiet: bool) -> Result<Outcome> {
    let results = StorageUrl::parse(&a.results)?;
    #[cfg(feature = "slurm")]
    if let Some(state) = cai_engine::slurm::JobsState::load(&results).await? {
        if !a.once {
            let poll = std::env::var("CAI_SLURM_POLL")
                .ok()
                .and_then(|v| v.parse().ok())
                .unwrap_or(2.0);
            let engine = super::slurm::engine_for_state(&state, poll);
            return super::slurm::follow(&engine, state, quiet, a.json).await;
        }
        let engine = super::slurm::engine_for_state(&state, 2.0);
        for id in state.job_ids() {
            let recs = engine.commands.show_job(&id)?;
            if recs.is_empty() {
                println!("job {id:<10} no longer known to Slurm");
            }
            let mut counts = std::collections::BTreeMap::<String, usize>::new();
            for r in &recs {
                *counts.entry(r.state.clone()).or_default() += r.indices.len().max(1);
            }
            if !counts.is_empty() {
                let parts: Vec<String> = counts.iter().map(|(s, n)| format!("{n} {s}")).collect();
                println!("job {id:<10} {}", parts.join(", "));
            }
        }
    }
    let Some(plan) = load_plan(&results).await? else {
        bail!("no plan.json under {results}: no run was started there");
    };
    let listing = ResultsListing::list(&results).await?;
    let done = listing
        .done_ranks()
        .into_iter()
        .filter(|&r| r < plan.world_size)
        .count();
    let failed: Vec<usize> = listing.failed_ranks().into_iter().collect();
    let summarized = listing.has(cai_core::layout::SUMMARY);
    println!("results      {results}");
    println!(
        "ranks        {done} done, {} failed, {} without a result (of {})",
        failed.len(),
        plan.world_size - done - failed.len().min(plan.world_size - done),
        plan.world_size
    );
    if !failed.is_empty() {
        println!("failed       ranks {failed:?}");
    }
    println!(
        "summary      {}",
        if summarized { "written" } else { "not yet" }
    );
    Ok(if done == plan.world_size {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
