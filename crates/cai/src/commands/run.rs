//! `cai run` (plan → map → summarize, on the engine `--engine` names) and `cai summarize`.

use anyhow::Result;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::summarize::{checkpointing, summarize as summarize_results};

use super::engines::{drive, engine_for, finish, request, Printer};
use crate::cli::{RunArgs, SummarizeArgs};
use crate::Outcome;

/// Print the summary as a table, or as JSON with `--json` (stdout).
pub fn print_summary(summary: &Summary, printer: &Printer) -> Result<()> {
    if printer.json(summary)? {
        return Ok(());
    }
    printer.result(format_args!("results      {}", summary.results));
    printer.result(format_args!(
        "ranks        {} done, {} failed, {} missing (of {})",
        summary.ranks_done,
        summary.failed.len(),
        summary.missing_ranks.len(),
        summary.ranks_total
    ));
    printer.result(format_args!("galaxies     {}", summary.galaxies));
    printer.result(format_args!(
        "wall time    {:.2} s  ({:.1} galaxies/s)",
        summary.wall_time_s, summary.galaxies_per_s
    ));
    printer.result(format_args!(
        "peak memory  {:.0} MB",
        summary.peak_memory_mb
    ));
    if summary.nonfinite_galaxies > 0 {
        printer.result(format_args!(
            "non-finite   {} galaxies ({} values) predicted as NaN",
            summary.nonfinite_galaxies, summary.nonfinite_inputs
        ));
    }
    if let Some(m) = &summary.metrics {
        printer.result(format_args!(
            "accuracy     MAE {:.4}  MSE {:.5}  bias {:+.4}  NMAD {:.4}  R² {:.3}  η(|Δz|>0.05) {:.3}  (n={})",
            m.mae, m.mse, m.bias, m.nmad, m.r2, m.eta, m.n
        ));
    }
    for f in &summary.failed {
        printer.result(format_args!("failed rank  {}: {}", f.rank, f.error));
    }
    if !summary.missing_ranks.is_empty() {
        printer.result(format_args!(
            "missing      ranks {:?}",
            summary.missing_ranks
        ));
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
pub async fn run(a: RunArgs, printer: &Printer) -> Result<Outcome> {
    let printer = &printer.with_json(a.json.json);
    let engine = engine_for(&a).await?;
    let req = request(&a)?;
    let results = req.results_location();
    // While the run is followed, its finished ranks are gathered so that the summary at its
    // end reads only the last ones.
    let work = checkpointing(results.as_deref(), engine.run(&req, printer));
    let report = drive(&*engine, printer, results.clone(), work).await?;
    finish(&report, printer)
}

/// `cai summarize`.
pub async fn summarize(a: SummarizeArgs, printer: &Printer) -> Result<Outcome> {
    let results = StorageUrl::parse(a.results.required()?)?;
    let summary = summarize_results(&results, None).await?;
    print_summary(&summary, &printer.with_json(a.json.json))?;
    Ok(if summary.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
