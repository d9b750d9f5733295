//! `cai status`: how far a run is. When an engine's jobs are recorded at the results
//! location (Slurm's `slurm/jobs.json`), it reattaches and follows them to the summary (or,
//! with `--once`, shows them once).

use std::collections::BTreeSet;

use anyhow::{bail, Result};
use cai_core::plan::Plan;
use cai_core::results::{load_plan, ResultsListing, RunState};
use cai_core::StorageUrl;

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
                engine.attach(at, None, printer),
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
        if let Some(line) = missing_line(&plan, &listing.done_ranks(), at) {
            printer.result(line);
        }
    }
    Ok(if state.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}

/// `missing      ranks 0, 3-5 (N partitions, M galaxies); …`: the ranks of `plan` not in
/// `done` and how to run them, or `None` when none is missing.
fn missing_line(plan: &Plan, done: &BTreeSet<usize>, at: &str) -> Option<String> {
    let missing: Vec<usize> = (0..plan.world_size).filter(|r| !done.contains(r)).collect();
    if missing.is_empty() {
        return None;
    }
    let partitions: usize = missing.iter().map(|&r| plan.partitions_of(r).len()).sum();
    let galaxies: u64 = missing
        .iter()
        .flat_map(|&r| plan.partitions_of(r))
        .filter_map(|p| p.galaxies)
        .sum();
    Some(format!(
        "missing      ranks {} ({partitions} partitions, {galaxies} galaxies); \
         `cai run --resume --results {at}` runs them",
        ranges(&missing)
    ))
}

/// `0, 3-5, 9-10`: sorted numbers with runs joined.
fn ranges(v: &[usize]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

#[cfg(test)]
mod tests {
    use super::ranges;

    #[test]
    fn ranges_join_runs() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[0, 3, 4, 5, 9, 10]), "0, 3-5, 9-10");
    }
}
