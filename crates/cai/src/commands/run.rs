//! `cai run` (plan → map → summarize, on the engine `--engine` names) and `cai summarize`.

use anyhow::Result;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::summarize::summarize as summarize_results;

use super::engines::{drive, engine_for, finish, request, Printer};
use crate::cli::{RunArgs, SummarizeArgs};
use crate::Outcome;

/// Print the summary table (stderr) or JSON (stdout).
pub fn print_summary(summary: &Summary, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(summary)?);
        return Ok(());
    }
    println!("results      {}", summary.results);
    println!(
        "ranks        {} done, {} failed, {} missing (of {})",
        summary.ranks_done,
        summary.failed.len(),
        summary.missing_ranks.len(),
        summary.ranks_total
    );
    println!("galaxies     {}", summary.galaxies);
    println!(
        "wall time    {:.2} s  ({:.1} galaxies/s)",
        summary.wall_time_s, summary.galaxies_per_s
    );
    println!("peak memory  {:.0} MB", summary.peak_memory_mb);
    if summary.nonfinite_galaxies > 0 {
        println!(
            "non-finite   {} galaxies ({} values) predicted as NaN",
            summary.nonfinite_galaxies, summary.nonfinite_inputs
        );
    }
    if let Some(m) = &summary.metrics {
        println!(
            "accuracy     MAE {:.4}  MSE {:.5}  bias {:+.4}  NMAD {:.4}  R² {:.3}  η(|Δz|>0.05) {:.3}  (n={})",
            m.mae, m.mse, m.bias, m.nmad, m.r2, m.eta, m.n
        );
    }
    for f in &summary.failed {
        println!("failed rank  {}: {}", f.rank, f.error);
    }
    if !summary.missing_ranks.is_empty() {
        println!("missing      ranks {:?}", summary.missing_ranks);
    }
    if !summary.speculated_ranks.is_empty() {
        println!(
            "speculated   ranks {:?} (ran long; a second copy started, the first to finish counted)",
            summary.speculated_ranks
        );
    }
    Ok(())
}

/// `cai run`: the engine `--engine` names runs the request the flags describe.
pub async fn run(a: RunArgs, quiet: bool) -> Result<Outcome> {
    let engine = engine_for(&a).await?;
    let req = request(&a)?;
    let printer = Printer::new(quiet);
    let results = req.results_location();
    let report = drive(&*engine, &printer, results, engine.run(&req, &printer)).await?;
    finish(&report, a.json, quiet)
}

/// `cai summarize`.
pub async fn summarize(a: SummarizeArgs) -> Result<Outcome> {
    let results = StorageUrl::parse(&a.results)?;
    let summary = summarize_results(&results, None).await?;
    print_summary(&summary, a.json)?;
    Ok(if summary.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
