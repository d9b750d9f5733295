//! Summarize (the original's third stage): gather every `<rank>.json` into
//! `combined_data.json`, every rank's predictions into `predictions.parquet` (each galaxy
//! exactly once), and the run's totals and accuracy into `summary.json`.
//!
//! Gathering is incremental: what a summarize has read is kept in
//! [`layout::SUMMARY_CHECKPOINT`] (the predictions, the rank reports and the listed identity
//! of each `<rank>.json`), and the next summarize reads only the ranks finished or changed
//! since. While `cai run` follows a run, [`checkpointing`] keeps that checkpoint up to date,
//! so the summary at the end of a run of thousands of ranks reads only the last few: on S3
//! every rank read is a request.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use cai_core::layout;
use cai_core::plan::Plan;
use cai_core::predictions::Predictions;
use cai_core::report::RankReport;
use cai_core::results::{load_plan, parallel_reads, parse_rank_report, RankFile, ResultsListing};
use cai_core::storage::ObjectInfo;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use futures::{StreamExt, TryStreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::stages::pretty;

/// Summarize a results location; the plan (read from it when not given) fixes the rank count.
/// Ranks already in a valid [`layout::SUMMARY_CHECKPOINT`] are not read again.
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
    let done: BTreeSet<usize> = listing.report_keys(limit).iter().map(|k| k.0).collect();
    let mut gathered = Gathered::load(&listing).await;
    let (_, failures) = futures::try_join!(gathered.update(&listing, limit), async {
        Ok::<_, Error>(listing.read_failures(limit, &done).await?)
    })?;
    tracing::info!(
        "summarize: {} ranks from the checkpoint, {} read",
        gathered.len() - gathered.read,
        gathered.read
    );
    let (raw, reports, all) = gathered.combined();
    results
        .put(
            layout::COMBINED,
            pretty("combined rank reports", &Value::Array(raw))?,
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
    if gathered.read > 0 || !listing.has(layout::SUMMARY_CHECKPOINT) {
        // A cache: the summary stands without it.
        if let Err(e) = gathered.save(results, &all).await {
            tracing::warn!("could not write the summary checkpoint: {e}");
        }
    }
    Ok(summary)
}

/// Gather the finished ranks into [`layout::SUMMARY_CHECKPOINT`] now (what [`checkpointing`]
/// does at each step, but always writing it); returns how many ranks were read, the others
/// coming from the checkpoint already there.
pub async fn checkpoint(results: &StorageUrl) -> Result<usize> {
    let plan = load_plan(results).await?;
    let listing = ResultsListing::list(results).await?;
    let mut g = Gathered::load(&listing).await;
    let limit = plan.map(|p| p.world_size).unwrap_or(usize::MAX);
    g.update(&listing, limit).await?;
    g.save(results, &g.predictions()).await?;
    Ok(g.read)
}

/// Run `work` (a run being followed) while gathering its finished ranks into
/// [`layout::SUMMARY_CHECKPOINT`] every `CAI_CHECKPOINT_SECS` seconds (default 30; `0`
/// turns it off), so the summarize at its end reads only the ranks finished since. The
/// checkpoint is rewritten when the ranks gathered since it was last written are at least
/// half of those then left (and 1% of all): about twice the final predictions written in
/// all. A failed step is logged and retried at the next; nothing here fails the run.
pub async fn checkpointing<T>(results: Option<&str>, work: impl Future<Output = T>) -> T {
    let every = match std::env::var("CAI_CHECKPOINT_SECS")
        .ok()
        .map(|v| v.trim().parse::<f64>())
    {
        None => 30.0,
        Some(Ok(s)) if s.is_finite() && s >= 0.0 => s,
        Some(_) => {
            tracing::warn!(
                "CAI_CHECKPOINT_SECS is not a number of seconds: no summary checkpoints"
            );
            0.0
        }
    };
    let location = results.and_then(|r| StorageUrl::parse(r).ok());
    let (Some(location), true) = (location, every > 0.0) else {
        return work.await;
    };
    let mut keeper = Checkpointer::default();
    tokio::pin!(work);
    loop {
        tokio::select! {
            out = &mut work => return out,
            _ = async {
                tokio::time::sleep(Duration::from_secs_f64(every)).await;
                if let Err(e) = keeper.step(&location).await {
                    tracing::warn!("summary checkpoint of {location}: {e}");
                }
            } => {}
        }
    }
}

/// The state [`checkpointing`] keeps between its steps.
#[derive(Default)]
struct Checkpointer {
    gathered: Option<Gathered>,
    /// Ranks in the checkpoint as last written (or loaded).
    written: usize,
}

impl Checkpointer {
    /// List the location, read the ranks finished since the last step, and rewrite the
    /// checkpoint when enough are new.
    async fn step(&mut self, results: &StorageUrl) -> Result<()> {
        let Some(plan) = load_plan(results).await? else {
            return Ok(());
        };
        let listing = ResultsListing::list(results).await?;
        let g = match &mut self.gathered {
            Some(g) => g,
            None => {
                let g = Gathered::load(&listing).await;
                self.written = g.len();
                self.gathered.insert(g)
            }
        };
        g.update(&listing, plan.world_size).await?;
        let left = plan.world_size.saturating_sub(self.written);
        let new = g.len().saturating_sub(self.written);
        if new > 0 && new >= (left / 2).max(plan.world_size / 100) {
            g.save(results, &g.predictions()).await?;
            self.written = g.len();
        }
        Ok(())
    }
}

/// A listed object's identity: same key, size and entity tag means the same bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Identity {
    key: String,
    size: u64,
    e_tag: Option<String>,
}

impl Identity {
    fn of(o: &ObjectInfo) -> Self {
        Identity {
            key: o.key.clone(),
            size: o.size,
            e_tag: o.e_tag.clone(),
        }
    }

    /// Whether both are known to be the same object (without an entity tag, never).
    fn same(&self, other: &Identity) -> bool {
        self.e_tag.is_some() && self == other
    }
}

/// One finished rank as gathered.
#[derive(Debug, Clone)]
struct GatheredRank {
    id: Identity,
    file: RankFile,
    predictions: Option<Predictions>,
}

/// What summarize has gathered from a results location's finished ranks.
#[derive(Debug, Clone, Default)]
struct Gathered {
    /// `plan.json` as listed when gathered: a new plan starts afresh.
    plan: Option<Identity>,
    ranks: BTreeMap<usize, GatheredRank>,
    /// Ranks the last [`Gathered::update`] read from storage.
    read: usize,
}

/// The checkpoint's index, in its footer metadata.
#[derive(Serialize, Deserialize)]
struct Index {
    format: u32,
    plan: Option<Identity>,
    ranks: Vec<IndexedRank>,
}

#[derive(Serialize, Deserialize)]
struct IndexedRank {
    rank: usize,
    #[serde(flatten)]
    id: Identity,
    /// Galaxies of this rank in the checkpoint's predictions (`None`: the report names no
    /// predictions file).
    rows: Option<usize>,
    report: Value,
}

const INDEX_FORMAT: u32 = 1;

impl Gathered {
    fn len(&self) -> usize {
        self.ranks.len()
    }

    /// The checkpoint the listing shows, when there is one and it reads; otherwise nothing
    /// gathered (a checkpoint that does not read is logged and ignored).
    async fn load(listing: &ResultsListing) -> Gathered {
        if !listing.has(layout::SUMMARY_CHECKPOINT) {
            return Gathered::default();
        }
        let loc = listing.location();
        let url = loc.url_of(layout::SUMMARY_CHECKPOINT);
        match Self::read(loc, &url).await {
            Ok(g) => g,
            Err(e) => {
                tracing::warn!("ignoring the summary checkpoint {url}: {e}");
                Gathered::default()
            }
        }
    }

    async fn read(loc: &StorageUrl, url: &str) -> std::result::Result<Gathered, String> {
        let bytes: Bytes = loc
            .get(layout::SUMMARY_CHECKPOINT)
            .await
            .map_err(|e| e.to_string())?;
        let (all, index) =
            Predictions::from_parquet_with(url, bytes, layout::SUMMARY_CHECKPOINT_METADATA)
                .map_err(|e| e.to_string())?;
        let index: Index = serde_json::from_str(&index.ok_or("it has no index")?)
            .map_err(|e| format!("its index does not read: {e}"))?;
        if index.format != INDEX_FORMAT {
            return Err(format!(
                "index format {} (this cai writes {INDEX_FORMAT})",
                index.format
            ));
        }
        let total: usize = index.ranks.iter().filter_map(|r| r.rows).sum();
        if total != all.len() {
            return Err(format!(
                "its index counts {total} galaxies, its predictions {}",
                all.len()
            ));
        }
        let mut ranks = BTreeMap::new();
        let mut at = 0;
        for r in index.ranks {
            let report =
                parse_rank_report(url, r.report.clone(), r.rank).map_err(|e| e.to_string())?;
            let predictions = r.rows.map(|n| {
                at += n;
                all.rows(at - n..at)
            });
            let file = RankFile {
                raw: r.report,
                report,
            };
            let rank = GatheredRank {
                id: r.id,
                file,
                predictions,
            };
            if ranks.insert(r.rank, rank).is_some() {
                return Err(format!("rank {} is in its index twice", r.rank));
            }
        }
        Ok(Gathered {
            plan: index.plan,
            ranks,
            read: 0,
        })
    }

    /// Bring the gathered ranks up to the listing: drop ranks whose `<rank>.json` is gone or
    /// changed (or all, under a new plan), read those finished since (below `limit`),
    /// [`parallel_reads`] at once.
    async fn update(&mut self, listing: &ResultsListing, limit: usize) -> Result<()> {
        let plan = listing.info(layout::PLAN).map(Identity::of);
        let same_plan = match (&self.plan, &plan) {
            (None, None) => true,
            (Some(a), Some(b)) => a.same(b),
            _ => false,
        };
        if !same_plan {
            self.ranks.clear();
        }
        self.plan = plan;
        let keys = listing.report_keys(limit);
        let listed: BTreeMap<usize, Identity> = keys
            .iter()
            .filter_map(|&(r, k)| listing.info(k).map(|o| (r, Identity::of(o))))
            .collect();
        self.ranks
            .retain(|r, g| listed.get(r).is_some_and(|id| id.same(&g.id)));
        let to_read: Vec<(usize, &str)> = keys
            .into_iter()
            .filter(|(r, _)| !self.ranks.contains_key(r))
            .collect();
        self.read = to_read.len();
        let read: Vec<(usize, GatheredRank)> =
            futures::stream::iter(to_read.into_iter().map(|(rank, key)| {
                let id = listed.get(&rank).cloned();
                async move {
                    let (file, predictions) = listing.read_rank(rank, key).await?;
                    let id = id.unwrap_or(Identity {
                        key: key.to_string(),
                        size: 0,
                        e_tag: None,
                    });
                    Ok::<_, Error>((
                        rank,
                        GatheredRank {
                            id,
                            file,
                            predictions,
                        },
                    ))
                }
            }))
            .buffered(parallel_reads()?)
            .try_collect()
            .await?;
        self.ranks.extend(read);
        Ok(())
    }

    /// The rank reports as written and parsed, and all predictions, in rank order.
    fn combined(&self) -> (Vec<Value>, Vec<RankReport>, Predictions) {
        let raw = self.ranks.values().map(|g| g.file.raw.clone()).collect();
        let reports = self.ranks.values().map(|g| g.file.report.clone()).collect();
        (raw, reports, self.predictions())
    }

    /// All gathered predictions, in rank order.
    fn predictions(&self) -> Predictions {
        let mut all = Predictions::default();
        for p in self.ranks.values().filter_map(|g| g.predictions.as_ref()) {
            all.append(p.clone());
        }
        all
    }

    /// Write the checkpoint (one object: `all`, this checkpoint's [`Gathered::predictions`],
    /// with the index in the footer); the caller passes them so a summarize that has just
    /// combined them does not build them twice.
    async fn save(&self, results: &StorageUrl, all: &Predictions) -> Result<()> {
        let index = Index {
            format: INDEX_FORMAT,
            plan: self.plan.clone(),
            ranks: self
                .ranks
                .iter()
                .map(|(&rank, g)| IndexedRank {
                    rank,
                    id: g.id.clone(),
                    rows: g.predictions.as_ref().map(Predictions::len),
                    report: g.file.raw.clone(),
                })
                .collect(),
        };
        let index = serde_json::to_string(&index).map_err(|e| Error::Request {
            what: format!("the summary checkpoint's index does not encode: {e}"),
            hint: String::new(),
        })?;
        let url = results.url_of(layout::SUMMARY_CHECKPOINT);
        let bytes = all.to_parquet_with(&url, || {
            vec![(layout::SUMMARY_CHECKPOINT_METADATA.to_string(), index)]
        })?;
        results.put(layout::SUMMARY_CHECKPOINT, bytes).await?;
        Ok(())
    }
}
