//! `cai status`: how far a run is. When an engine's jobs are recorded at the results
//! location (Slurm's `slurm/jobs.json`, AWS's `aws/execution.json`), it reattaches and follows them to the summary (or,
//! with `--once`, shows them once).

use anyhow::{bail, Result};
use cai_core::results::{load_plan, ResultsListing, RunState};
use cai_core::StorageUrl;
use cai_engine::summarize::checkpointing;

use super::engines::{drive, engine_at, finish, Printer};
use crate::cli::StatusArgs;
use crate::Outcome;

/// `cai status`.
pub async fn status(a: StatusArgs, printer: &Printer) -> Result<Outcome> {
    let printer = &printer.with_json(a.json.json);
    let at = a.results.required()?;
    let results = StorageUrl::parse(at)?;
    if let Some(engine) = engine_at(&results, &a.poll).await? {
        if !a.once {
            let report = drive(
                &*engine,
                printer,
                Some(at.to_string()),
                checkpointing(Some(at), engine.attach(at, None, printer)),
            )
            .await?;
            return finish(&report, printer);
        }
        for line in engine.describe(at).await? {
            printer.result(line);
        }
    }
    let Some(plan) = load_plan(&results).await? else {
        bail!("no plan.json under {results}: no run was started there");
    };
    // One listing for the state and the missing ranks (on S3 a listing of N ranks is
    // N/1000 requests).
    let listing = ResultsListing::list(&results).await?;
    let state = RunState::from_listing(&results, &plan, &listing);
    if !printer.json(&state)? {
        printer.result(&state);
    }
    Ok(if state.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
