//! Summarize (the original's third stage): gather every `<rank>.json` into
//! `combined_data.json`, every rank's predictions into `predictions.parquet` (each galaxy
//! exactly once), and the run's totals and accuracy into `summary.json`.

use std::collections::{BTreeMap, HashSet};

use cai_core::metrics::redshift_metrics;
use cai_core::plan::Plan;
use cai_core::report::{rank_of_key, RankFailure, RankReport};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use serde_json::Value;

use crate::error::{Error, Result};
use crate::predictions::Predictions;

/// Key of the concatenated rank reports (the original's output).
pub const COMBINED_KEY: &str = "combined_data.json";
/// Key of all predictions.
pub const PREDICTIONS_KEY: &str = "predictions.parquet";
/// Key of the run summary.
pub const SUMMARY_KEY: &str = "summary.json";
/// Key of the plan.
pub const PLAN_KEY: &str = "plan.json";
/// Key of the original's payload file.
pub const PAYLOAD_KEY: &str = "payload.json";

/// Load `plan.json` from a results location, if there is one.
pub async fn load_plan(results: &StorageUrl) -> Result<Option<Plan>> {
    match results.get_opt(PLAN_KEY).await? {
        Some(b) => Ok(Some(Plan::from_json(&results.url_of(PLAN_KEY), &b)?)),
        None => Ok(None),
    }
}

/// Ranks of the plan that have no `<rank>.json` yet (what `--resume` runs).
pub async fn missing_ranks(results: &StorageUrl, world_size: usize) -> Result<Vec<usize>> {
    let done: HashSet<usize> = results
        .list()
        .await?
        .iter()
        .filter_map(|o| rank_of_key(&o.key))
        .collect();
    Ok((0..world_size).filter(|r| !done.contains(r)).collect())
}

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
    let objects = results.list().await?;
    let mut raw: BTreeMap<usize, Value> = BTreeMap::new();
    let mut reports: Vec<RankReport> = Vec::new();
    let mut failures: BTreeMap<usize, RankFailure> = BTreeMap::new();
    let limit = plan.map(|p| p.world_size).unwrap_or(usize::MAX);
    for o in &objects {
        if let Some(rank) = rank_of_key(&o.key) {
            if rank >= limit {
                continue;
            }
            let bytes = results.get(&o.key).await?;
            let url = results.url_of(&o.key);
            let report = RankReport::from_json(&url, &bytes)?;
            let value: Value =
                serde_json::from_slice(&bytes).map_err(|source| cai_core::Error::Json {
                    what: "rank report",
                    source_name: url.clone(),
                    source,
                })?;
            raw.insert(rank, value);
            reports.push(report);
        } else if let Some(rest) = o.key.strip_prefix("failed/") {
            if let Some(rank) = rank_of_key(rest).filter(|&r| r < limit) {
                let bytes = results.get(&o.key).await?;
                let f: RankFailure =
                    serde_json::from_slice(&bytes).map_err(|source| cai_core::Error::Json {
                        what: "failure record",
                        source_name: results.url_of(&o.key),
                        source,
                    })?;
                failures.insert(rank, f);
            }
        }
    }
    reports.sort_by_key(|r| r.rank);
    // A rank that finished after failing earlier is done, not failed.
    for r in &reports {
        failures.remove(&r.rank);
    }
    let combined = Value::Array(raw.into_values().collect());
    results
        .put(
            COMBINED_KEY,
            serde_json::to_vec_pretty(&combined).map_err(|e| Error::Task(e.to_string()))?,
        )
        .await?;

    let mut all = Predictions::default();
    for r in &reports {
        if r.predictions.is_empty() {
            continue;
        }
        let bytes = results.get(&r.predictions).await?;
        all.append(Predictions::from_parquet(
            &results.url_of(&r.predictions),
            bytes,
        )?);
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
            PREDICTIONS_KEY,
            all.to_parquet(&results.url_of(PREDICTIONS_KEY))?,
        )
        .await?;

    let ranks_total = plan
        .map(|p| p.world_size)
        .unwrap_or_else(|| reports.iter().map(|r| r.rank + 1).max().unwrap_or(0));
    let mut summary = Summary::from_reports(
        &results.to_string(),
        ranks_total,
        &reports,
        failures.into_values().collect(),
    );
    let (mut zp, mut zt) = (Vec::new(), Vec::new());
    for (p, t) in all.z_pred.iter().zip(&all.z_true) {
        if let Some(t) = t {
            zp.push(*p);
            zt.push(*t);
        }
    }
    summary.metrics = redshift_metrics(&zp, &zt);
    results
        .put(
            SUMMARY_KEY,
            serde_json::to_vec_pretty(&summary).map_err(|e| Error::Task(e.to_string()))?,
        )
        .await?;
    Ok(summary)
}
