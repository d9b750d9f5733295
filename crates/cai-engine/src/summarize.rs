//! Summarize (the original's third stage): gather every `<rank>.json` into
//! `combined_data.json`, every rank's predictions into `predictions.parquet` (each galaxy
//! exactly once), and the run's totals and accuracy into `summary.json`.

use std::collections::{BTreeSet, HashSet};

use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::predictions::Predictions;
use cai_core::report::RankReport;
use cai_core::results::{load_plan, parallel_reads, ResultsListing};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::stages::pretty;

/// Summarize a results location; the plan (read from it when not given) fixes the rank count.
pub async fn summarize(results: &StorageUrl, plan: Option<&Plan>) -> Result<Summary> {
    let loaded;
    let plan = match plan {
        Some(p) => Some(p),
        None => {
            loaded = load_plan(results).await?;
            loaded.as_ref()
        }
    };
    let listing = ResultsListing::list(results).await?;
    let limit = plan.map(|p| p.world_size).unwrap_or(usize::MAX);
    let keys = listing.report_keys(limit);
    let done: BTreeSet<usize> = keys.iter().map(|k| k.0).collect();
    let failures = listing.read_failures(limit, &done);
    // Each rank's report and predictions in one task (one object when the predictions
    // carry the report), parallel_reads() ranks in flight, in rank order.
    let ranks = futures::stream::iter(keys.into_iter().map(|(rank, key)| {
        let listing = &listing;
        async move { Ok::<_, Error>(listing.read_rank(rank, key).await?) }
    }))
    .buffered(parallel_reads()?)
    .try_fold(
        (Vec::new(), Vec::new(), Predictions::default()),
        |(mut raw, mut reports, mut all), (file, predictions)| async move {
            raw.push(file.raw);
            reports.push(file.report);
            if let Some(p) = predictions {
                all.append(p);
            }
            Ok((raw, reports, all))
        },
    );
    let ((raw, reports, all), failures): ((Vec<Value>, Vec<RankReport>, Predictions), _) =
        futures::try_join!(ranks, async { Ok(failures.await?) })?;
    let combined = Value::Array(raw);
    results
        .put(
            layout::COMBINED,
            pretty("combined rank reports", &combined)?,
        )
        .await?;

    let mut seen = HashSet::with_capacity(all.len());
    for (p, &row) in all.partition.iter().zip(&all.row) {
        if !seen.insert((p.as_str(), row)) {
            return Err(Error::Duplicate {
                partition: p.clone(),
                row,
            });
        }
    }
    results
        .put(
            layout::PREDICTIONS,
            all.to_parquet(&results.url_of(layout::PREDICTIONS))?,
        )
        .await?;

    let ranks_total = plan
        .map(|p| p.world_size)
        .unwrap_or_else(|| reports.iter().map(|r| r.rank + 1).max().unwrap_or(0));
    let mut summary = Summary::from_reports(&results.to_string(), ranks_total, &reports, failures);
    summary.judge(&all);
    results
        .put(layout::SUMMARY, pretty("summary", &summary)?)
        .await?;
    Ok(summary)
}
