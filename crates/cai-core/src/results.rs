//! Reading a results location: its plan, which ranks finished or failed, and their
//! reports. Summarize, `cai status`, `cai report` and `cai aws watch` all read a run through
//! [`ResultsListing`]; the keys are [`crate::layout`]'s.

use std::collections::{BTreeSet, HashSet};

use futures::{StreamExt, TryStreamExt};
use serde_json::Value;

use crate::error::{Error, Result};
use crate::layout;
use crate::plan::Plan;
use crate::predictions::Predictions;
use crate::report::{RankFailure, RankReport};
use crate::storage::ObjectInfo;
use crate::StorageUrl;

/// Load `plan.json` from a results location, if there is one.
pub async fn load_plan(results: &StorageUrl) -> Result<Option<Plan>> {
    match results.get_opt(layout::PLAN).await? {
        Some(b) => Ok(Some(Plan::from_json(&results.url_of(layout::PLAN), &b)?)),
        None => Ok(None),
    }
}

/// Ranks of the plan that have no `<rank>.json` yet (what `--resume` runs).
pub async fn missing_ranks(results: &StorageUrl, world_size: usize) -> Result<Vec<usize>> {
    let done: HashSet<usize> = ResultsListing::list(results)
        .await?
        .rank_keys()
        .map(|(r, _)| r)
        .collect();
    Ok((0..world_size).filter(|r| !done.contains(r)).collect())
}

/// Objects read at once from a results location by default (S3 answers each GET in tens
/// of milliseconds; more in flight hides that). `CAI_PARALLEL_READS` overrides it.
pub const PARALLEL_READS: usize = 64;

/// Most objects ever read at once, whatever `CAI_PARALLEL_READS` asks (each read in flight
/// holds a connection and its buffer).
pub const MAX_PARALLEL_READS: usize = 1024;

/// Objects read at once from a results location: `CAI_PARALLEL_READS` when set (a whole
/// number from 1 to [`MAX_PARALLEL_READS`]), else [`PARALLEL_READS`].
pub fn parallel_reads() -> Result<usize> {
    parallel_reads_from(std::env::var("CAI_PARALLEL_READS").ok())
}

/// [`parallel_reads`] with the variable's value given.
pub fn parallel_reads_from(value: Option<String>) -> Result<usize> {
    let Some(v) = value else {
        return Ok(PARALLEL_READS);
    };
    v.trim()
        .parse::<usize>()
        .ok()
        .filter(|n| (1..=MAX_PARALLEL_READS).contains(n))
        .ok_or_else(|| Error::Invalid {
            field: "CAI_PARALLEL_READS".into(),
            reason: format!("{v:?} is not a whole number from 1 to {MAX_PARALLEL_READS}"),
        })
}

/// One finished rank's `<rank>.json`: the JSON as written (what `combined_data.json`
/// concatenates) and parsed.
#[derive(Debug, Clone)]
pub struct RankFile {
    /// The document as written.
    pub raw: Value,
    /// The document parsed (leniently, see [`parse_rank_report`]).
    pub report: RankReport,
}

/// What a results location holds, listed once; reads its `<rank>.json` and
/// `failed/<rank>.json` files. Summarize and the report reader both read a run through it.
#[derive(Debug, Clone)]
pub struct ResultsListing {
    location: StorageUrl,
    /// The objects under the location (all but those in `predictions/`, `claims/` and
    /// `stepfunctions/`), keys relative to it, sorted.
    pub objects: Vec<ObjectInfo>,
}

impl ResultsListing {
    /// List a results location: its top level and every folder below it except the
    /// per-rank predictions, the Slurm tasks' commit claims and the AWS map's own files (as many objects again as there
    /// are ranks, and read through the rank reports' keys instead), so a run of N ranks
    /// costs about N/1000 listing requests on S3, not 2N/1000.
    pub async fn list(location: &StorageUrl) -> Result<Self> {
        Self::list_below(location, location.list_top().await?).await
    }

    /// [`ResultsListing::list`] given the location's top level already listed
    /// ([`StorageUrl::list_top`]'s objects and folders): lists only the folders below.
    pub async fn list_below(
        location: &StorageUrl,
        (mut objects, dirs): (Vec<ObjectInfo>, Vec<String>),
    ) -> Result<Self> {
        let skipped = [
            layout::PREDICTIONS_DIR,
            layout::AWS_MAP_RESULTS,
            layout::CLAIMS_DIR,
        ];
        let below = dirs
            .into_iter()
            .filter(|d| !skipped.contains(&d.as_str()))
            .map(|d| async move {
                let inner = location.child(&d).list().await?;
                Ok::<_, Error>(inner.into_iter().map(move |o| ObjectInfo {
                    key: format!("{d}/{}", o.key),
                    size: o.size,
                    e_tag: o.e_tag,
                }))
            });
        let lists: Vec<_> = futures::stream::iter(below)
            .buffer_unordered(8)
            .try_collect()
            .await?;
        objects.extend(lists.into_iter().flatten());
        objects.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(Self {
            location: location.clone(),
            objects,
        })
    }

    /// Is there an object with this key?
    pub fn has(&self, key: &str) -> bool {
        self.objects
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .is_ok()
    }

    /// Ranks with a `<rank>.json`.
    pub fn done_ranks(&self) -> BTreeSet<usize> {
        self.rank_keys().map(|(r, _)| r).collect()
    }

    /// Ranks with a `failed/<rank>.json`, done since or not.
    pub fn failure_record_ranks(&self) -> BTreeSet<usize> {
        self.objects
            .iter()
            .filter_map(|o| layout::rank_of_failure(&o.key))
            .collect()
    }

    /// Ranks that failed and are not done (a rank that finished after failing is done).
    pub fn failed_ranks(&self) -> BTreeSet<usize> {
        let done = self.done_ranks();
        self.failure_record_ranks()
            .into_iter()
            .filter(|r| !done.contains(r))
            .collect()
    }

    /// `(rank, key)` of every `<rank>.json`.
    pub fn rank_keys(&self) -> impl Iterator<Item = (usize, &str)> {
        self.objects
            .iter()
            .filter_map(|o| layout::rank_of_report(&o.key).map(|r| (r, o.key.as_str())))
    }

    /// `(rank, key)` of the `<rank>.json` of every rank below `limit`, by rank; one key per
    /// rank (`7.json` and `007.json` are one rank: the first in key order is kept).
    pub fn report_keys(&self, limit: usize) -> Vec<(usize, &str)> {
        let mut keys: Vec<(usize, &str)> = self.rank_keys().filter(|&(r, _)| r < limit).collect();
        keys.sort_by_key(|k| k.0);
        keys.dedup_by_key(|k| k.0);
        keys
    }

    /// Size of the object `key`, when listed.
    pub fn size_of(&self, key: &str) -> Option<u64> {
        self.info(key).map(|o| o.size)
    }

    /// The listed object `key`.
    pub fn info(&self, key: &str) -> Option<&ObjectInfo> {
        self.objects
            .binary_search_by(|o| o.key.as_str().cmp(key))
            .ok()
            .and_then(|i| self.objects.get(i))
    }

    /// The location listed.
    pub fn location(&self) -> &StorageUrl {
        &self.location
    }

    /// Read and parse one `<rank>.json`.
    pub async fn read_report(&self, rank: usize, key: &str) -> Result<RankFile> {
        let bytes = self.location.get(key).await?;
        parse_rank_file(&self.location.url_of(key), &bytes, rank)
    }

    /// Read one finished rank's report and predictions (`None` when its report names none).
    /// A predictions file written since rank reports travel inside it
    /// ([`layout::RANK_REPORT_METADATA`]) is the only object read, when the copy it carries
    /// has the listed size of `<rank>.json` at `key` and names that file as its predictions;
    /// otherwise (an older layout) `<rank>.json` is read too, and the predictions it names.
    pub async fn read_rank(
        &self,
        rank: usize,
        key: &str,
    ) -> Result<(RankFile, Option<Predictions>)> {
        let loc = &self.location;
        let pkey = layout::rank_predictions(rank);
        let mut fetched = None;
        if let Some(bytes) = loc.get_opt(&pkey).await? {
            let (preds, carried) = Predictions::from_parquet_with(
                &loc.url_of(&pkey),
                bytes,
                layout::RANK_REPORT_METADATA,
            )?;
            if let Some(json) = carried.filter(|j| Some(j.len() as u64) == self.size_of(key)) {
                let file = parse_rank_file(&loc.url_of(key), json.as_bytes(), rank)?;
                if file.report.predictions == pkey && file.report.rank == rank {
                    return Ok((file, Some(preds)));
                }
            }
            fetched = Some(preds);
        }
        let file = self.read_report(rank, key).await?;
        let pk = &file.report.predictions;
        let preds = match (pk.is_empty(), fetched) {
            (true, _) => None,
            (false, Some(p)) if *pk == pkey => Some(p),
            (false, _) => Some(Predictions::from_parquet(
                &loc.url_of(pk),
                loc.get(pk).await?,
            )?),
        };
        Ok((file, preds))
    }

    /// Read the `<rank>.json` of every rank below `limit`, [`parallel_reads`] at once;
    /// sorted by rank.
    pub async fn read_reports(&self, limit: usize) -> Result<Vec<RankFile>> {
        futures::stream::iter(
            self.report_keys(limit)
                .into_iter()
                .map(|(rank, key)| self.read_report(rank, key)),
        )
        .buffered(parallel_reads()?)
        .try_collect()
        .await
    }

    /// Read `failed/<rank>.json` of every rank below `limit` that is not in `done` (a rank
    /// that finished after failing earlier is done, not failed); sorted by rank.
    pub async fn read_failures(
        &self,
        limit: usize,
        done: &BTreeSet<usize>,
    ) -> Result<Vec<RankFailure>> {
        let loc = &self.location;
        let keys = self.objects.iter().filter_map(|o| {
            let rank = layout::rank_of_failure(&o.key)?;
            (rank < limit && !done.contains(&rank)).then_some(o.key.as_str())
        });
        let mut failures: Vec<RankFailure> = futures::stream::iter(keys.map(|key| async move {
            let bytes = loc.get(key).await?;
            serde_json::from_slice(&bytes).map_err(|source| Error::Json {
                what: "failure record",
                source_name: loc.url_of(key),
                source,
            })
        }))
        .buffer_unordered(parallel_reads()?)
        .try_collect()
        .await?;
        failures.sort_by_key(|f: &RankFailure| f.rank);
        Ok(failures)
    }
}

/// Parse the bytes of one `<rank>.json` (named `url`) of rank `rank`.
fn parse_rank_file(url: &str, bytes: &[u8], rank: usize) -> Result<RankFile> {
    let raw: Value = serde_json::from_slice(bytes).map_err(|source| Error::Json {
        what: "rank report",
        source_name: url.to_string(),
        source,
    })?;
    let report = parse_rank_report(url, raw.clone(), rank)?;
    Ok(RankFile { raw, report })
}

/// Parse one rank report leniently: keys it lacks take their defaults, so the original's
/// `<rank>.json` and `combined_data.json` entries (its ten keys only) read too. `index`
/// is the rank when the document names none (the file's rank, or the position in
/// `combined_data.json`); `total_bits` is worked out from throughput × time when missing.
pub fn parse_rank_report(file: &str, value: Value, index: usize) -> Result<RankReport> {
    let jerr = |reason: String| Error::Json {
        what: "rank report",
        source_name: file.to_string(),
        source: <serde_json::Error as serde::de::Error>::custom(reason),
    };
    let Value::Object(given) = value else {
        return Err(jerr(format!("entry {index} is not a JSON object")));
    };
    let has_rank = given.contains_key("rank");
    let mut base = match serde_json::to_value(RankReport::default()) {
        Ok(Value::Object(m)) => m,
        _ => return Err(jerr("cannot build a default rank report".into())),
    };
    // Written only when true, so not in the default's keys.
    base.insert("speculated".to_string(), Value::Bool(false));
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

/// Every `<rank>.json` under `results`, by rank (what `cai cost` prices).
pub async fn rank_reports(results: &StorageUrl) -> Result<Vec<RankReport>> {
    let mut out = Vec::new();
    for o in results.list().await? {
        if layout::rank_of_report(&o.key).is_some() {
            let bytes = results.get(&o.key).await?;
            out.push(RankReport::from_json(&results.url_of(&o.key), &bytes)?);
        }
    }
    out.sort_by_key(|r| r.rank);
    Ok(out)
}

/// How far a run is, from its results location alone (`cai status`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RunState {
    /// The results location.
    pub results: String,
    /// Ranks of the plan with a result.
    pub done: usize,
    /// Ranks recorded as failed.
    pub failed: Vec<usize>,
    /// Ranks with neither.
    pub without_result: usize,
    /// Ranks in the plan.
    pub world_size: usize,
    /// Whether `summary.json` is there.
    pub summary_written: bool,
    /// Ranks of the plan without a `<rank>.json` (failed or not run), which `--resume` runs.
    pub missing: Vec<usize>,
    /// Partitions of the missing ranks.
    pub missing_partitions: usize,
    /// Galaxies of the missing ranks (0 where the plan does not know them).
    pub missing_galaxies: u64,
}

impl RunState {
    /// The state of the run at `results`, or `None` when no plan was written there.
    pub async fn of(results: &StorageUrl) -> Result<Option<Self>> {
        let Some(plan) = load_plan(results).await? else {
            return Ok(None);
        };
        let listing = ResultsListing::list(results).await?;
        Ok(Some(Self::from_listing(results, &plan, &listing)))
    }

    /// The state of the run planned as `plan`, from a listing of its results location
    /// already made (so a caller that needs the listing too lists once).
    pub fn from_listing(results: &StorageUrl, plan: &Plan, listing: &ResultsListing) -> Self {
        let finished = listing.done_ranks();
        let missing: Vec<usize> = (0..plan.world_size)
            .filter(|r| !finished.contains(r))
            .collect();
        let done = plan.world_size - missing.len();
        let failed: Vec<usize> = listing.failed_ranks().into_iter().collect();
        Self {
            missing_partitions: missing.iter().map(|&r| plan.partitions_of(r).len()).sum(),
            missing_galaxies: missing.iter().map(|&r| plan.galaxies_of(r)).sum(),
            missing,
            results: results.to_string(),
            done,
            without_result: plan.world_size - done - failed.len().min(plan.world_size - done),
            failed,
            world_size: plan.world_size,
            summary_written: listing.has(layout::SUMMARY),
        }
    }

    /// Whether every rank has a result.
    pub fn complete(&self) -> bool {
        self.done == self.world_size
    }
}

/// The state as `cai status` prints it.
impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "results      {}", self.results)?;
        write!(
            f,
            "ranks        {} done, {} failed, {} without a result (of {})",
            self.done,
            self.failed.len(),
            self.without_result,
            self.world_size
        )?;
        if !self.failed.is_empty() {
            write!(f, "\nfailed       ranks {:?}", self.failed)?;
        }
        let summary = if self.summary_written {
            "written"
        } else {
            "not yet"
        };
        write!(f, "\nsummary      {summary}")?;
        if !self.missing.is_empty() {
            write!(
                f,
                "\nmissing      ranks {} ({} partitions, {} galaxies); \
                 `cai run --resume --results {}` runs them",
                ranges(&self.missing),
                self.missing_partitions,
                self.missing_galaxies,
                self.results
            )?;
        }
        Ok(())
    }
}

/// `0, 3-5, 9-10`: sorted numbers with runs joined.
pub fn ranges(v: &[usize]) -> String {
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
    use super::*;

    #[test]
    fn ranges_join_runs() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[4]), "4");
        assert_eq!(ranges(&[0, 3, 4, 5, 9, 10]), "0, 3-5, 9-10");
    }

    #[test]
    fn original_only_keys_read_with_defaults() {
        let v: Value = serde_json::from_str(
            r#"{"total_cpu_time (seconds)": 2.0, "total_cpu_memory (MB)": 900.5,
                "execution_time (seconds/batch)": 0.5, "num_batches": 4, "batch_size": 512,
                "device": "cpu", "throughput_bps": 1000.0, "sample_persec": 10.0,
                "result_path": "r", "data_path": "1.pt", "extra": 1}"#,
        )
        .unwrap();
        let r = parse_rank_report("c.json", v, 7).unwrap();
        assert_eq!(r.rank, 7);
        assert_eq!(r.total_bits, 2000);
        assert_eq!(r.total_cpu_memory, 900.5);
        let e = parse_rank_report("c.json", Value::Bool(true), 3).unwrap_err();
        assert!(e.to_string().contains("c.json"), "{e}");
        let e =
            parse_rank_report("d.json", serde_json::json!({"num_batches": "x"}), 0).unwrap_err();
        assert!(e.to_string().contains("d.json"), "{e}");
    }

    #[test]
    fn reads_in_flight_come_from_the_variable_within_bounds() {
        assert_eq!(parallel_reads_from(None).unwrap(), PARALLEL_READS);
        assert_eq!(parallel_reads_from(Some(" 256 ".into())).unwrap(), 256);
        assert_eq!(parallel_reads_from(Some("1".into())).unwrap(), 1);
        for bad in ["0", "-3", "1025", "lots", ""] {
            let e = parallel_reads_from(Some(bad.into()))
                .unwrap_err()
                .to_string();
            assert!(e.contains("CAI_PARALLEL_READS"), "{bad}: {e}");
        }
    }

    #[tokio::test]
    async fn a_rank_whose_predictions_carry_its_report_is_one_read() {
        let loc = StorageUrl::parse("memory://listing/carried").unwrap();
        let preds = Predictions::for_partition("00001.safetensors", 0, 0, vec![0.5], None);
        for (rank, carry) in [(0, true), (1, false)] {
            let key = layout::rank_predictions(rank);
            let json = serde_json::to_string_pretty(&RankReport {
                rank,
                galaxies: 1,
                predictions: key.clone(),
                ..Default::default()
            })
            .unwrap();
            let meta = match carry {
                true => vec![(layout::RANK_REPORT_METADATA.to_string(), json.clone())],
                false => Vec::new(),
            };
            let parquet = preds.to_parquet_with("p", || meta).unwrap();
            loc.put(&key, parquet).await.unwrap();
            loc.put(&layout::rank_report(rank), json.into_bytes())
                .await
                .unwrap();
        }
        let l = ResultsListing::list(&loc).await.unwrap();
        let (new, p0) = l.read_rank(0, "0.json").await.unwrap();
        let (old, p1) = l.read_rank(1, "1.json").await.unwrap();
        assert_eq!((new.report.rank, old.report.rank), (0, 1));
        assert_eq!(p0.unwrap().z_pred, [0.5]);
        assert_eq!(p1.unwrap().z_pred, [0.5]);
        // With the `<rank>.json` files gone (but still listed), the rank carrying its report
        // still reads (one object), the older layout does not.
        loc.delete("0.json").await.unwrap();
        loc.delete("1.json").await.unwrap();
        let (again, _) = l.read_rank(0, "0.json").await.unwrap();
        assert_eq!(again.raw, new.raw);
        let e = l.read_rank(1, "1.json").await.unwrap_err().to_string();
        assert!(e.contains("1.json"), "{e}");
        // A carried copy that does not match the listed `<rank>.json` is not trusted.
        loc.put("0.json", b"{\"rank\": 0}".to_vec()).await.unwrap();
        let l = ResultsListing::list(&loc).await.unwrap();
        let (listed, p) = l.read_rank(0, "0.json").await.unwrap();
        assert_eq!(listed.report.predictions, "");
        assert!(p.is_none());
    }

    #[tokio::test]
    async fn listing_reads_reports_and_failures_once_per_rank() {
        let loc = StorageUrl::parse("memory://listing/results").unwrap();
        let rep = |rank: usize| {
            serde_json::to_vec(&RankReport {
                rank,
                galaxies: 10,
                ..Default::default()
            })
            .unwrap()
        };
        let fail = |rank: usize| {
            serde_json::to_vec(&RankFailure {
                rank,
                error: format!("rank {rank} broke"),
                ..Default::default()
            })
            .unwrap()
        };
        loc.put("0.json", rep(0)).await.unwrap();
        loc.put("2.json", rep(2)).await.unwrap();
        loc.put("5.json", rep(5)).await.unwrap();
        loc.put("failed/1.json", fail(1)).await.unwrap();
        loc.put("failed/2.json", fail(2)).await.unwrap();
        loc.put("plan.json", b"{}".to_vec()).await.unwrap();
        let l = ResultsListing::list(&loc).await.unwrap();
        assert!(l.has("plan.json") && !l.has("summary.json"));
        let files = l.read_reports(4).await.unwrap();
        let ranks: Vec<usize> = files.iter().map(|f| f.report.rank).collect();
        assert_eq!(ranks, [0, 2]);
        // `002.json` is rank 2 again: one key per rank, the first in key order.
        loc.put("002.json", rep(2)).await.unwrap();
        let l2 = ResultsListing::list(&loc).await.unwrap();
        assert_eq!(l2.report_keys(4), [(0, "0.json"), (2, "002.json")]);
        assert_eq!(l2.read_reports(4).await.unwrap().len(), 2);
        loc.delete("002.json").await.unwrap();
        assert_eq!(files[1].raw["galaxies"], 10);
        let done = ranks.iter().copied().collect();
        let failed = l.read_failures(4, &done).await.unwrap();
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].rank, 1);
        assert_eq!(missing_ranks(&loc, 4).await.unwrap(), [1, 3]);
        loc.put("3.json", b"[1]".to_vec()).await.unwrap();
        let e = ResultsListing::list(&loc)
            .await
            .unwrap()
            .read_reports(4)
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("3.json"), "{e}");
    }
}
