//! `cai status`: how far a run is. When an engine's jobs are recorded at the results
//! location (Slurm's `slurm/jobs.json`), it reattaches and follows them to the summary (or,
//! with `--once`, shows them once).

use anyhow::{bail, Result};
use cai_core::results::{load_plan, ResultsListing};
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
    let done_set = listing.done_ranks();
    let missing: Vec<usize> = (0..plan.world_size)
        .filter(|r| !done_set.contains(r))
        .collect();
    if !missing.is_empty() {
        let partitions: usize = missing.iter().map(|&r| plan.partitions_of(r).len()).sum();
        let galaxies: u64 = missing
            .iter()
            .flat_map(|&r| plan.partitions_of(r))
            .filter_map(|p| p.galaxies)
            .sum();
        println!(
            "missing      ranks {} ({partitions} partitions, {galaxies} galaxies); \
             `cai run --resume --results {results}` runs them",
            ranges(&missing)
        );
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

/// Sorted numbers as ranges: `0, 3-5, 9`.
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
