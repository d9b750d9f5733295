//! Reading what a run left under its results location: `plan.json`, `summary.json`,
//! `combined_data.json` or the `<rank>.json` files, `failed/<rank>.json` and
//! `predictions.parquet`. A location given may also be a folder of runs (a sweep): every
//! folder below it holding a `plan.json`, `summary.json`, `combined_data.json` or
//! `<rank>.json` is one run.

use std::collections::BTreeSet;

use cai_core::plan::Plan;
use cai_core::report::{rank_of_key, RankFailure, RankReport};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_engine::predictions::Predictions;
use cai_engine::summarize::{COMBINED_KEY, PLAN_KEY, PREDICTIONS_KEY, SUMMARY_KEY};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::error::{Error, Result};

/// Rank files read at once when there is no `combined_data.json`.
const PARALLEL_READS: usize = 32;

/// One run's results, as read.
#[derive(Debug, Clone)]
pub struct Run {
    /// The results location.
    pub location: String,
    /// The plan, when `plan.json` exists.
    pub plan: Option<Plan>,
    /// `summary.json`, or one folded from the rank reports when it is missing.
    pub summary: Summary,
    /// Rank reports of the ranks that finished, by rank.
    pub reports: Vec<RankReport>,
    /// Failure records of ranks that did not finish, by rank.
    pub failures: Vec<RankFailure>,
    /// `predictions.parquet`, when asked for and present.
    pub predictions: Option<Predictions>,
}

impl Run {
    /// Batch size: the plan's, else the first report's.
    pub fn batch_size(&self) -> usize {
        self.plan
            .as_ref()
            .map(|p| p.batch_size)
            .or_else(|| self.reports.first().map(|r| r.batch_size as usize))
            .unwrap_or(0)
    }

    /// Bytes of input data: the planned partitions' sizes, else the bytes the ranks read.
    pub fn data_bytes(&self) -> u64 {
        match &self.plan {
            Some(p) if !p.partitions.is_empty() => p.partitions.iter().map(|p| p.bytes).sum(),
            _ => self.reports.iter().map(|r| r.bytes_read).sum(),
        }
    }

    /// Median partition size in bytes (the plan's; else bytes read per rank).
    pub fn partition_bytes(&self) -> u64 {
        let mut v: Vec<u64> = match &self.plan {
            Some(p) if !p.partitions.is_empty() => p.partitions.iter().map(|p| p.bytes).collect(),
            _ => self.reports.iter().map(|r| r.bytes_read).collect(),
        };
        if v.is_empty() {
            return 0;
        }
        v.sort_unstable();
        v[v.len() / 2]
    }

    /// Unix time the first rank started (0 when no rank finished).
    pub fn started_at(&self) -> f64 {
        let t = self
            .reports
            .iter()
            .map(|r| r.started_at)
            .fold(f64::INFINITY, f64::min);
        if t.is_finite() {
            t
        } else {
            0.0
        }
    }

    /// Engine name(s), joined with `+`.
    pub fn engine(&self) -> String {
        if self.summary.engines.is_empty() {
            "?".to_string()
        } else {
            self.summary.engines.join("+")
        }
    }
}

fn is_run_key(key: &str) -> bool {
    key == PLAN_KEY || key == SUMMARY_KEY || key == COMBINED_KEY || rank_of_key(key).is_some()
}

/// The runs at or below a location: the location itself when it holds a run, else every
/// folder below it that holds a `plan.json`, `summary.json`, `combined_data.json` or
/// `<rank>.json` (not inside another run), sorted by path.
pub async fn find_runs(location: &StorageUrl) -> Result<Vec<StorageUrl>> {
    let objects = location.list().await?;
    if objects.iter().any(|o| is_run_key(&o.key)) {
        return Ok(vec![location.clone()]);
    }
    let mut dirs = BTreeSet::new();
    for o in &objects {
        if let Some((dir, name)) = o.key.rsplit_once('/') {
            let failed_dir = dir == "failed" || dir.ends_with("/failed");
            if is_run_key(name) && !failed_dir {
                dirs.insert(dir.to_string());
            }
        }
    }
    // A run's own sub-folders are not runs of their own.
    let all: Vec<String> = dirs.iter().cloned().collect();
    dirs.retain(|d| !all.iter().any(|p| d.starts_with(&format!("{p}/"))));
    if dirs.is_empty() {
        return Err(Error::NoRuns {
            location: location.to_string(),
        });
    }
    Ok(dirs.into_iter().map(|d| location.child(&d)).collect())
}

/// Parse one rank report leniently: keys it lacks take their defaults, so a
/// `combined_data.json` of the original (its ten keys only) reads too.
pub fn parse_report(file: &str, value: Value, index: usize) -> Result<RankReport> {
    let jerr = |reason: String| Error::Json {
        file: file.to_string(),
        reason,
    };
    let Value::Object(given) = value else {
        return Err(jerr(format!("entry {index} is not a JSON object")));
    };
    let has_rank = given.contains_key("rank");
    let mut base = match serde_json::to_value(RankReport::default()) {
        Ok(Value::Object(m)) => m,
        _ => return Err(jerr("cannot build a default rank report".into())),
    };
    for (k, v) in given {
        if base.contains_key(&k) && !v.is_null() {
            base.insert(k, v);
        }
    }
    let mut r: RankReport = serde_json::from_value(Value::Object(base))
        .map_err(|e| jerr(format!("entry {index}: {e}")))?;
    if !has_rank {
        r.rank = index;
    }
    if r.total_bits == 0 && r.throughput_bps > 0.0 && r.total_cpu_time > 0.0 {
        r.total_bits = (r.throughput_bps * r.total_cpu_time).round() as u64;
    }
    Ok(r)
}

fn parse_json(file: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Read one run. `predictions`: also read `predictions.parquet` (for figures).
pub async fn load_run(location: &StorageUrl, predictions: bool) -> Result<Run> {
    let objects = location.list().await?;
    let keys: BTreeSet<&str> = objects.iter().map(|o| o.key.as_str()).collect();
    let rank_keys: Vec<(usize, &str)> = objects
        .iter()
        .filter_map(|o| rank_of_key(&o.key).map(|r| (r, o.key.as_str())))
        .collect();
    if rank_keys.is_empty()
        && !keys.contains(PLAN_KEY)
        && !keys.contains(SUMMARY_KEY)
        && !keys.contains(COMBINED_KEY)
    {
        return Err(Error::NoRuns {
            location: location.to_string(),
        });
    }

    let plan = match keys.contains(PLAN_KEY) {
        true => {
            let b = location.get(PLAN_KEY).await?;
            Some(Plan::from_json(&location.url_of(PLAN_KEY), &b)?)
        }
        false => None,
    };

    // combined_data.json is one read instead of one per rank; use it when it covers every
    // rank file present (a later resume may have added ranks after it was written).
    let mut reports: Vec<RankReport> = Vec::new();
    let mut from_combined = false;
    if keys.contains(COMBINED_KEY) {
        let url = location.url_of(COMBINED_KEY);
        let v = parse_json(&url, &location.get(COMBINED_KEY).await?)?;
        let Value::Array(items) = v else {
            return Err(Error::Json {
                file: url,
                reason: "expected a JSON array of rank reports".into(),
            });
        };
        if items.len() >= rank_keys.len() {
            for (i, item) in items.into_iter().enumerate() {
                reports.push(parse_report(&url, item, i)?);
            }
            from_combined = true;
        }
    }
    if !from_combined {
        let loc = location.clone();
        reports = futures::stream::iter(rank_keys.iter().map(|&(rank, key)| {
            let loc = loc.clone();
            let key = key.to_string();
            async move {
                let url = loc.url_of(&key);
                let v = parse_json(&url, &loc.get(&key).await?)?;
                parse_report(&url, v, rank)
            }
        }))
        .buffer_unordered(PARALLEL_READS)
        .try_collect()
        .await?;
    }
    if let Some(p) = &plan {
        reports.retain(|r| r.rank < p.world_size);
    }
    reports.sort_by_key(|r| r.rank);
    reports.dedup_by_key(|r| r.rank);

    let done: BTreeSet<usize> = reports.iter().map(|r| r.rank).collect();
    let mut failures = Vec::new();
    for o in &objects {
        let Some(rank) = o.key.strip_prefix("failed/").and_then(rank_of_key) else {
            continue;
        };
        if done.contains(&rank) {
            continue;
        }
        let url = location.url_of(&o.key);
        let f: RankFailure =
            serde_json::from_slice(&location.get(&o.key).await?).map_err(|e| Error::Json {
                file: url.clone(),
                reason: e.to_string(),
            })?;
        failures.push(f);
    }
    failures.sort_by_key(|f| f.rank);

    let summary = match keys.contains(SUMMARY_KEY) {
        true => {
            let url = location.url_of(SUMMARY_KEY);
            serde_json::from_slice(&location.get(SUMMARY_KEY).await?).map_err(|e| Error::Json {
                file: url,
                reason: e.to_string(),
            })?
        }
        false => {
            let total = plan
                .as_ref()
                .map(|p| p.world_size)
                .unwrap_or_else(|| reports.iter().map(|r| r.rank + 1).max().unwrap_or(0));
            Summary::from_reports(&location.to_string(), total, &reports, failures.clone())
        }
    };

    let predictions = if predictions && keys.contains(PREDICTIONS_KEY) {
        let b = location.get(PREDICTIONS_KEY).await?;
        Some(Predictions::from_parquet(
            &location.url_of(PREDICTIONS_KEY),
            b,
        )?)
    } else {
        None
    };
    let mut summary: Summary = summary;
    if summary.metrics.is_none() {
        if let Some(p) = &predictions {
            let (zp, zt) = labelled_pairs(p);
            summary.metrics = cai_core::metrics::redshift_metrics(&zp, &zt);
        }
    }
    Ok(Run {
        location: location.to_string(),
        plan,
        summary,
        reports,
        failures,
        predictions,
    })
}

/// The (z_pred, z_true) pairs of the galaxies that have a true redshift.
pub fn labelled_pairs(p: &Predictions) -> (Vec<f32>, Vec<f32>) {
    let mut zp = Vec::new();
    let mut zt = Vec::new();
    for (a, b) in p.z_pred.iter().zip(&p.z_true) {
        if let Some(b) = b {
            zp.push(*a);
            zt.push(*b);
        }
    }
    (zp, zt)
}

/// Read every run at or below each location, in the order given.
pub async fn load_all(locations: &[String], predictions: bool) -> Result<Vec<Run>> {
    let mut runs = Vec::new();
    for l in locations {
        let url = StorageUrl::parse(l)?;
        for r in find_runs(&url).await? {
            runs.push(load_run(&r, predictions).await?);
        }
    }
    Ok(runs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn original_only_keys_read_with_defaults() {
        let v: Value = serde_json::from_str(
            r#"{"total_cpu_time (seconds)": 2.0, "total_cpu_memory (MB)": 900.5,
                "execution_time (seconds/batch)": 0.5, "num_batches": 4, "batch_size": 512,
                "device": "cpu", "throughput_bps": 1000.0, "sample_persec": 10.0,
                "result_path": "r", "data_path": "1.pt", "extra": 1}"#,
        )
        .unwrap();
        let r = parse_report("c.json", v, 7).unwrap();
        assert_eq!(r.rank, 7);
        assert_eq!(r.total_bits, 2000);
        assert_eq!(r.total_cpu_memory, 900.5);
        let e = parse_report("c.json", Value::Bool(true), 3).unwrap_err();
        assert!(e.to_string().contains("c.json"), "{e}");
    }
}
