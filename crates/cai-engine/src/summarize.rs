//! Summarize (the original's third stage): gather every `<rank>.json` into
//! `combined_data.json`, every rank's predictions into `predictions.parquet` (each galaxy
//! exactly once), and the run's totals and accuracy into `summary.json`.

use std::collections::{BTreeSet, HashSet};

use cai_core::layout;
use cai_core::metrics::redshift_metrics;
use cai_core::plan::Plan;
use cai_core::predictions::Predictions;
use cai_core::report::RankReport;
use cai_core::results::{load_plan, ResultsListing, PARALLEL_READS};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use futures::StreamExt;
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
    let files = listing.read_reports(limit).await?;
    let done: BTreeSet<usize> = files.iter().map(|f| f.report.rank).collect();
    let failures = listing.read_failures(limit, &done).await?;
    let (raw, reports): (Vec<Value>, Vec<RankReport>) =
        files.into_iter().map(|f| (f.raw, f.report)).unzip();
    let combined = Value::Array(raw);
    results
        .put(
            layout::COMBINED,
            pretty("combined rank reports", &combined)?,
        )
        .await?;

    // Every rank's predictions, PARALLEL_READS in flight, appended in rank order.
    let mut all = Predictions::default();
    let mut parts =
        futures::stream::iter(reports.iter().filter(|r| !r.predictions.is_empty()).map(
            |r| async move {
                let bytes = results.get(&r.predictions).await?;
                Predictions::from_parquet(&results.url_of(&r.predictions), bytes)
            },
        ))
        .buffered(PARALLEL_READS);
    while let Some(p) = parts.next().await {
        all.append(p?);
    }
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
    let (mut zp, mut zt) = (Vec::new(), Vec::new());
    for (p, t) in all.z_pred.iter().zip(&all.z_true) {
        if let Some(t) = t {
            zp.push(*p);
            zt.push(*t);
        }
    }
    // A model without a `z` output (a classifier) has no redshift to judge.
    summary.metrics = if zp.iter().any(|z| !z.is_nan()) {
        redshift_metrics(&zp, &zt)
    } else {
        None
    };
    results
        .put(layout::SUMMARY, pretty("summary", &summary)?)
        .await?;
    Ok(summary)
}
