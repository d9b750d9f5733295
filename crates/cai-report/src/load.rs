//! Reading what a run left under its results location: `plan.json`, `summary.json`,
//! `combined_data.json` or the `<rank>.json` files, `failed/<rank>.json` and
//! `predictions.parquet`. A location given may also be a folder of runs (a sweep): every
//! folder below it holding a `plan.json`, `summary.json`, `combined_data.json` or
//! `<rank>.json` is one run.

use std::collections::BTreeSet;

use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::predictions::Predictions;
use cai_core::report::{RankFailure, RankReport};
use cai_core::results::{parse_rank_report, ResultsListing};
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use serde_json::Value;

use crate::error::{Error, Result};

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

/// The runs at or below a location: the location itself when it holds a run, else every
/// folder below it that holds a `plan.json`, `summary.json`, `combined_data.json` or
/// `<rank>.json` (not inside another run), sorted by path.
pub async fn find_runs(location: &StorageUrl) -> Result<Vec<StorageUrl>> {
    Ok(runs_at(location).await?.into_iter().map(|r| r.0).collect())
}

/// [`find_runs`], with the listing of the location's top level when the location is itself
/// the run (for [`load_listed`]: the run's listing then costs one delimited listing, not a
/// listing of every object below it and another of its top level).
async fn runs_at(location: &StorageUrl) -> Result<Vec<(StorageUrl, Option<ResultsListing>)>> {
    let top = location.list_top().await?;
    if top.0.iter().any(|o| layout::marks_a_run(&o.key)) {
        let listing = ResultsListing::list_below(location, top).await?;
        return Ok(vec![(location.clone(), Some(listing))]);
    }
    let objects = location.list().await?;
    let mut dirs = BTreeSet::new();
    for o in &objects {
        if let Some((dir, name)) = o.key.rsplit_once('/') {
            let failed_dir = layout::is_failed_dir(dir);
            if layout::marks_a_run(name) && !failed_dir {
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
    Ok(dirs
        .into_iter()
        .map(|d| (location.child(&d), None))
        .collect())
}

fn parse_json(file: &str, bytes: &[u8]) -> Result<Value> {
    serde_json::from_slice(bytes).map_err(|e| Error::Json {
        file: file.to_string(),
        reason: e.to_string(),
    })
}

/// Read one run. `predictions`: also read `predictions.parquet` (for figures).
pub async fn load_run(location: &StorageUrl, predictions: bool) -> Result<Run> {
    let listing = ResultsListing::list(location).await?;
    load_listed(location, listing, predictions).await
}

/// [`load_run`] of a run already listed.
async fn load_listed(
    location: &StorageUrl,
    listing: ResultsListing,
    predictions: bool,
) -> Result<Run> {
    let rank_files = listing.rank_keys().count();
    if rank_files == 0
        && !listing.has(layout::PLAN)
        && !listing.has(layout::SUMMARY)
        && !listing.has(layout::COMBINED)
    {
        return Err(Error::NoRuns {
            location: location.to_string(),
        });
    }

    let plan = match listing.has(layout::PLAN) {
        true => {
            let b = location.get(layout::PLAN).await?;
            Some(Plan::from_json(&location.url_of(layout::PLAN), &b)?)
        }
        false => None,
    };
    let limit = plan.as_ref().map(|p| p.world_size).unwrap_or(usize::MAX);

    // combined_data.json is one read instead of one per rank; use it when it covers every
    // rank file present (a later resume may have added ranks after it was written).
    let mut reports: Option<Vec<RankReport>> = None;
    if listing.has(layout::COMBINED) {
        let url = location.url_of(layout::COMBINED);
        let v = parse_json(&url, &location.get(layout::COMBINED).await?)?;
        let Value::Array(items) = v else {
            return Err(Error::Json {
                file: url,
                reason: "expected a JSON array of rank reports".into(),
            });
        };
        if items.len() >= rank_files {
            let mut v = Vec::with_capacity(items.len());
            for (i, item) in items.into_iter().enumerate() {
                v.push(parse_rank_report(&url, item, i)?);
            }
            v.retain(|r| r.rank < limit);
            v.sort_by_key(|r| r.rank);
            v.dedup_by_key(|r| r.rank);
            reports = Some(v);
        }
    }
    let reports = match reports {
        Some(r) => r,
        None => listing
            .read_reports(limit)
            .await?
            .into_iter()
            .map(|f| f.report)
            .collect(),
    };
    let done: BTreeSet<usize> = reports.iter().map(|r| r.rank).collect();
    let failures: Vec<RankFailure> = listing.read_failures(limit, &done).await?;

    let summary = match listing.has(layout::SUMMARY) {
        true => {
            let url = location.url_of(layout::SUMMARY);
            serde_json::from_slice(&location.get(layout::SUMMARY).await?).map_err(|e| {
                Error::Json {
                    file: url,
                    reason: e.to_string(),
                }
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

    let predictions = if predictions && listing.has(layout::PREDICTIONS) {
        let b = location.get(layout::PREDICTIONS).await?;
        Some(Predictions::from_parquet(
            &location.url_of(layout::PREDICTIONS),
            b,
        )?)
    } else {
        None
    };
    let mut summary: Summary = summary;
    if summary.metrics.is_none() && summary.class_metrics.is_none() {
        if let Some(p) = &predictions {
            summary.judge(p);
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
        for (r, listing) in runs_at(&url).await? {
            runs.push(match listing {
                Some(l) => load_listed(&r, l, predictions).await?,
                None => load_run(&r, predictions).await?,
            });
        }
    }
    Ok(runs)
}
