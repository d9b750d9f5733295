//! The original's experiments planned: every partition size × batch size (× data size),
//! repeated, each a whole run into its own sub-folder of the results location
//! (`p25MB-b128-r1/`, `d1GB-p25MB-b128-r1/` with data sizes), the layout `cai stats` and
//! `cai report` read as a sweep. [`SweepPlan`] lists the runs and records them
//! (`sweep.json`); [`find_source`] says where each size's partitions come from;
//! [`file_limit`] turns a data size into the original's `file_limit`; [`SweepRow`] is one
//! line of the final table; [`run_sweep`] cuts the partitions and drives the runs through
//! any engine.

use std::path::PathBuf;

use cai_core::plan::sort_partitions;
use cai_core::summary::Summary;
use cai_core::{layout, StorageUrl};
use cai_data::partition::{parse_size, FileFormat};
use serde::Serialize;

use crate::engine::{RunEnd, RunEvent, RunEvents, RunReport, RunRequest};
use crate::partition::{open_input, open_partitions_input, partition_input, PartitionSummary};
use crate::stages::find_partitions;
use crate::{Error, Result};

/// Endings of the dataset files a sweep cuts: native or any safetensors, the original's
/// `.pt`, NumPy's `.npy` and `.npz`.
const DATASET_FILES: [&str; 4] = [".safetensors", ".pt", ".npy", ".npz"];

/// A request error naming `what` and what to do.
fn request(what: impl Into<String>, hint: impl Into<String>) -> Error {
    Error::Request {
        what: what.into(),
        hint: hint.into(),
    }
}

/// A size as given (`25MB`) and in bytes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Size {
    /// The text without spaces (it names folders).
    pub label: String,
    /// Bytes (1 MB = 2^20).
    pub bytes: u64,
}

/// Parse a list of sizes given to `flag`; each size may be given once.
pub fn sizes(list: &[String], flag: &str) -> Result<Vec<Size>> {
    let mut out: Vec<Size> = Vec::new();
    for text in list {
        let bytes =
            parse_size(text).map_err(|e| request(format!("{flag} {text:?}"), e.to_string()))?;
        let label: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(prev) = out.iter().find(|s| s.bytes == bytes) {
            return Err(request(
                format!(
                    "{flag}: {:?} and {text:?} are the same size ({bytes} bytes)",
                    prev.label
                ),
                "give each once",
            ));
        }
        out.push(Size { label, bytes });
    }
    Ok(out)
}

/// One run of the sweep.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Experiment {
    /// The data size it reads (none: all the data).
    pub data: Option<Size>,
    /// The partition size.
    pub partition: Size,
    /// Galaxies per batch.
    pub batch: usize,
    /// Which repetition (from 1).
    pub repetition: usize,
}

impl Experiment {
    /// The run's folder under the results location.
    pub fn folder(&self) -> String {
        let d = match &self.data {
            Some(d) => format!("d{}-", d.label),
            None => String::new(),
        };
        format!(
            "{d}p{}-b{}-r{}",
            self.partition.label, self.batch, self.repetition
        )
    }
}

/// The whole sweep: its sizes and every run in run order (data size, partition size, batch
/// size, then repetition).
#[derive(Debug, Clone)]
pub struct SweepPlan {
    /// Data sizes (empty: all the data).
    pub data_sizes: Vec<Size>,
    /// Partition sizes.
    pub partition_sizes: Vec<Size>,
    /// Batch sizes, without repeats in a row.
    pub batch_sizes: Vec<usize>,
    /// Runs of each configuration.
    pub repeat: usize,
    /// Every run.
    pub experiments: Vec<Experiment>,
}

impl SweepPlan {
    /// The plan for these lists (as given to `--partition-sizes`, `--batch-sizes`,
    /// `--data-sizes`, `--repeat`).
    pub fn new(
        partition_sizes: &[String],
        batch_sizes: &[usize],
        data_sizes: &[String],
        repeat: usize,
    ) -> Result<Self> {
        if repeat == 0 {
            return Err(request("--repeat must be at least 1", "give 1 or more"));
        }
        if batch_sizes.contains(&0) {
            return Err(request(
                "--batch-sizes",
                "a batch holds at least one galaxy",
            ));
        }
        let mut batches = batch_sizes.to_vec();
        batches.dedup();
        let parts = sizes(partition_sizes, "--partition-sizes")?;
        let data = sizes(data_sizes, "--data-sizes")?;
        let experiments = experiments(&data, &parts, &batches, repeat);
        Ok(Self {
            data_sizes: data,
            partition_sizes: parts,
            batch_sizes: batches,
            repeat,
            experiments,
        })
    }

    /// Fail if `results` already holds a sweep (its `sweep.json` or a run folder of this
    /// plan): a fresh sweep does not overwrite another one.
    pub async fn check_fresh(&self, results: &StorageUrl) -> Result<()> {
        let existing = results.list().await?;
        if let Some(o) = existing.iter().find(|o| {
            o.key == layout::SWEEP
                || self
                    .experiments
                    .iter()
                    .any(|e| o.key.starts_with(&format!("{}/", e.folder())))
        }) {
            return Err(request(
                format!("{results} already holds a sweep ({})", o.key),
                "`--resume` runs only the experiments without a summary.json, or give another \
                 --results",
            ));
        }
        Ok(())
    }

    /// The sweep's record (`sweep.json`): its inputs and run folders.
    pub fn record(&self, data: &str, model: Option<&str>, engine: &str) -> serde_json::Value {
        serde_json::json!({
            "data": data,
            "model": model,
            "engine": engine,
            "partition_sizes": self.partition_sizes,
            "batch_sizes": self.batch_sizes,
            "data_sizes": self.data_sizes,
            "repeat": self.repeat,
            "runs": self.experiments.iter().map(Experiment::folder).collect::<Vec<_>>(),
        })
    }

    /// The line `cai sweep` starts with.
    pub fn describe(&self, results: &StorageUrl) -> String {
        format!(
            "sweep: {} runs ({} data size(s) × {} partition size(s) × {} batch size(s) × {} repetition(s)) into {results}",
            self.experiments.len(),
            self.data_sizes.len().max(1),
            self.partition_sizes.len(),
            self.batch_sizes.len(),
            self.repeat
        )
    }
}

/// Every experiment, in run order: data size, partition size, batch size, then repetition.
pub fn experiments(
    data: &[Size],
    parts: &[Size],
    batches: &[usize],
    repeat: usize,
) -> Vec<Experiment> {
    let data: Vec<Option<Size>> = if data.is_empty() {
        vec![None]
    } else {
        data.iter().cloned().map(Some).collect()
    };
    let mut out = Vec::new();
    for d in &data {
        for p in parts {
            for &b in batches {
                for r in 1..=repeat {
                    out.push(Experiment {
                        data: d.clone(),
                        partition: p.clone(),
                        batch: b,
                        repetition: r,
                    });
                }
            }
        }
    }
    out
}

/// Where the partitions of each size come from.
#[derive(Debug, Clone)]
pub enum Source {
    /// `<data>/<size>/` holds partitions for every size (the original's layout).
    PerSize(StorageUrl),
    /// A dataset file on this machine, cut at each size.
    File(PathBuf),
    /// Partitions, re-cut at each size.
    Partitions(StorageUrl),
}

/// Where the partitions of `parts`' sizes come from, for `--data data`.
pub async fn find_source(data: &str, parts: &[Size]) -> Result<Source> {
    let url = StorageUrl::parse(data)?;
    let flag = format!("--data {data}");
    if let Some(p) = url.local_path() {
        if p.is_file() {
            return Ok(Source::File(p));
        }
        if !p.exists() {
            return Err(request(flag, "no such file or folder"));
        }
    }
    let mut per_size = true;
    for s in parts {
        if find_partitions(&url.child(&s.label)).await?.0.is_empty() {
            per_size = false;
            break;
        }
    }
    if per_size {
        return Ok(Source::PerSize(url));
    }
    if !find_partitions(&url).await?.0.is_empty() {
        return Ok(Source::Partitions(url));
    }
    // A folder holding one dataset file (a name without a partition number).
    let files: Vec<String> = url
        .list()
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| !k.contains('/') && DATASET_FILES.iter().any(|e| k.ends_with(e)))
        .collect();
    match (files.as_slice(), url.local_path()) {
        ([one], Some(dir)) => Ok(Source::File(dir.join(one))),
        ([one], None) => Err(request(
            flag,
            format!(
                "{one} is a whole dataset; cutting it needs it on this machine (download it, \
                 or `cai partition` it into a folder per size)"
            ),
        )),
        ([], _) => Err(request(
            flag,
            format!(
                "no partitions, no sub-folder per partition size ({}) and no dataset file \
                 here; give a dataset file (`cai synth` makes one) or partitions (`cai \
                 partition` makes them)",
                parts
                    .iter()
                    .map(|s| format!("{}/", s.label))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )),
        (many, _) => Err(request(
            flag,
            format!(
                "several dataset files ({}); give one of them as --data",
                many.join(", ")
            ),
        )),
    }
}

/// How the partitions of a size came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Made {
    /// They were in the data already (`<data>/<size>/`).
    Given,
    /// A cut of an earlier attempt (with `--resume`).
    Reused,
    /// Cut now.
    Cut(PartitionSummary),
}

/// The partitions of `size` for the sweep, found in `source` or cut into `work/<size>/` in
/// `format` (a finished earlier cut is reused when `reuse`); returns their location.
pub async fn partitions_for(
    source: &Source,
    size: &Size,
    work: &StorageUrl,
    format: FileFormat,
    reuse: bool,
) -> Result<(StorageUrl, Made)> {
    let dest = work.child(&size.label);
    let input = match source {
        Source::PerSize(data) => return Ok((data.child(&size.label), Made::Given)),
        _ if reuse && dest.exists(layout::MANIFEST).await? => return Ok((dest, Made::Reused)),
        Source::File(path) => {
            let path = path.clone();
            tokio::task::spawn_blocking(move || open_input(&path, None))
                .await
                .map_err(|source| Error::Join {
                    task: "opening the dataset".into(),
                    source,
                })??
        }
        Source::Partitions(src) => open_partitions_input(src).await?,
    };
    let (made, _) = partition_input(input, size.bytes, &dest, format, None).await?;
    Ok((dest, Made::Cut(made)))
}

/// The original's file_limit for a data size: the leading partitions (in plan order) that
/// hold at most `bytes` together, at least one; and a warning when all of them hold less.
pub async fn file_limit(parts_url: &StorageUrl, bytes: u64) -> Result<(usize, Option<String>)> {
    let (mut parts, manifest) = find_partitions(parts_url).await?;
    if manifest.is_none() {
        sort_partitions(&mut parts);
    }
    let mut total = 0u64;
    let mut n = 0;
    for p in &parts {
        if n > 0 && total + p.bytes > bytes {
            break;
        }
        total += p.bytes;
        n += 1;
    }
    let warning = (n == parts.len() && total < bytes).then(|| {
        format!(
            "{parts_url} holds {total} bytes, less than the data size of {bytes}; using all of it"
        )
    });
    Ok((n.max(1), warning))
}

/// A finished run's summary.
pub async fn read_summary(url: &StorageUrl) -> Result<Summary> {
    let bytes = url.get(layout::SUMMARY).await?;
    serde_json::from_slice(&bytes).map_err(|e| {
        request(
            format!("cannot parse {}", url.url_of(layout::SUMMARY)),
            e.to_string(),
        )
    })
}

/// One line of the sweep's final table (also `cai sweep --json`).
#[derive(Debug, Clone, Serialize)]
pub struct SweepRow {
    /// The run's folder.
    pub run: String,
    /// Its data size.
    pub data_size: Option<String>,
    /// Its partition size.
    pub partition_size: String,
    /// Its batch size.
    pub batch_size: usize,
    /// Its repetition.
    pub repetition: usize,
    /// `ran` or `skipped` (finished before).
    pub status: &'static str,
    /// Ranks done.
    pub ranks_done: usize,
    /// Ranks in the plan.
    pub ranks_total: usize,
    /// Ranks failed or missing.
    pub failed: usize,
    /// Galaxies predicted.
    pub galaxies: u64,
    /// Wall time of the ranks.
    pub wall_time_s: f64,
    /// Galaxies per second.
    pub galaxies_per_s: f64,
    /// The run's results location.
    pub results: String,
}

impl SweepRow {
    /// The final table's column names (`data` only when some run has a data size).
    pub fn header(with_data: bool) -> Vec<String> {
        let mut h = vec!["run"];
        if with_data {
            h.push("data");
        }
        h.extend([
            "partition",
            "batch",
            "rep",
            "status",
            "ranks",
            "failed",
            "galaxies",
            "wall (s)",
            "galaxies/s",
        ]);
        h.into_iter().map(String::from).collect()
    }

    /// This row's cells under [`SweepRow::header`].
    pub fn cells(&self, with_data: bool) -> Vec<String> {
        let mut v = vec![self.run.clone()];
        if with_data {
            v.push(self.data_size.clone().unwrap_or_default());
        }
        v.extend([
            self.partition_size.clone(),
            self.batch_size.to_string(),
            self.repetition.to_string(),
            self.status.to_string(),
            format!("{}/{}", self.ranks_done, self.ranks_total),
            self.failed.to_string(),
            self.galaxies.to_string(),
            format!("{:.2}", self.wall_time_s),
            format!("{:.1}", self.galaxies_per_s),
        ]);
        v
    }

    /// The row of experiment `e`, `status`, from its summary.
    pub fn new(e: &Experiment, status: &'static str, s: &Summary, results: String) -> Self {
        Self {
            run: e.folder(),
            data_size: e.data.as_ref().map(|d| d.label.clone()),
            partition_size: e.partition.label.clone(),
            batch_size: e.batch,
            repetition: e.repetition,
            status,
            ranks_done: s.ranks_done,
            ranks_total: s.ranks_total,
            failed: s.failed.len() + s.missing_ranks.len(),
            galaxies: s.galaxies,
            wall_time_s: s.wall_time_s,
            galaxies_per_s: s.galaxies_per_s,
            results,
        }
    }
}

/// A whole sweep: the grid, where its data and results are, and the request every run
/// starts from.
#[derive(Debug, Clone)]
pub struct SweepRequest {
    /// The experiments.
    pub plan: SweepPlan,
    /// A dataset file, a folder of partitions, or a folder with one sub-folder per size.
    pub data: String,
    /// The sweep's root: each run goes into its own sub-folder.
    pub results: StorageUrl,
    /// Where re-cut partitions go (default: `<results>/partitions/`).
    pub work: Option<StorageUrl>,
    /// Format of re-cut partitions.
    pub format: FileFormat,
    /// The engine's name, recorded in `sweep.json`.
    pub engine: String,
    /// Skip the runs that have a `summary.json`, rerun the others from scratch.
    pub resume: bool,
    /// What every run shares (model, binds, precision, `file_limit`); data, results, batch
    /// size and `resume` are set per run.
    pub run: RunRequest,
}

/// What a sweep did: one row per experiment, and whether any run has failed ranks.
#[derive(Debug, Clone)]
pub struct SweepOutcome {
    /// The final table's rows.
    pub rows: Vec<SweepRow>,
    /// Whether some run has failed or missing ranks.
    pub any_failed: bool,
}

/// Run every experiment of `s` in order, each as a whole run given to `run` (which runs it
/// on the engine and returns its report); partitions of each size are found or cut once.
/// A run that ends without a summary (detached, a dry run) or aborted stops the sweep.
pub async fn run_sweep<F, Fut>(
    s: &SweepRequest,
    events: &dyn RunEvents,
    mut run: F,
) -> Result<SweepOutcome>
where
    F: FnMut(RunRequest) -> Fut,
    Fut: std::future::Future<Output = Result<RunReport>>,
{
    let say = |m: String| events.event(RunEvent::Message(m));
    let exps = &s.plan.experiments;
    if !s.resume {
        s.plan.check_fresh(&s.results).await?;
    }
    let source = find_source(&s.data, &s.plan.partition_sizes).await?;
    let work = match &s.work {
        Some(w) => w.clone(),
        None => s.results.child(layout::SWEEP_PARTITIONS_DIR),
    };
    let record = s.plan.record(&s.data, s.run.model.as_deref(), &s.engine);
    s.results
        .put(
            layout::SWEEP,
            serde_json::to_vec_pretty(&record).map_err(|source| Error::Encode {
                what: "sweep.json",
                source,
            })?,
        )
        .await?;
    say(s.plan.describe(&s.results));

    let mut out = SweepOutcome {
        rows: Vec::new(),
        any_failed: false,
    };
    let mut part_urls: Vec<(u64, StorageUrl)> = Vec::new();
    for (i, e) in exps.iter().enumerate() {
        let n = format!("[{}/{}]", i + 1, exps.len());
        let url = s.results.child(&e.folder());
        if s.resume && url.exists(layout::SUMMARY).await? {
            let summary = read_summary(&url).await?;
            out.any_failed |= !summary.complete();
            say(format!("{n} {}: finished before, skipped", e.folder()));
            out.rows
                .push(SweepRow::new(e, "skipped", &summary, url.to_string()));
            continue;
        }
        let parts_url = match part_urls.iter().find(|(b, _)| *b == e.partition.bytes) {
            Some((_, u)) => u.clone(),
            None => {
                let label = &e.partition.label;
                let (u, made) =
                    partitions_for(&source, &e.partition, &work, s.format, s.resume).await?;
                match made {
                    Made::Given => {}
                    Made::Reused => say(format!("partitions of {label}: reusing {u}")),
                    Made::Cut(m) => say(format!(
                        "partitions of {label}: {} ({} galaxies) in {u}",
                        m.partitions, m.galaxies
                    )),
                }
                part_urls.push((e.partition.bytes, u.clone()));
                u
            }
        };
        let mut req = s.run.clone();
        if let Some(d) = &e.data {
            let (limit, warning) = file_limit(&parts_url, d.bytes).await?;
            if let Some(w) = warning {
                events.event(RunEvent::Warning(w));
            }
            req.file_limit = Some(limit);
        }
        req.data = Some(parts_url.to_string());
        req.results = Some(url.to_string());
        req.batch_size = Some(e.batch);
        req.resume = false;
        say(format!(
            "{n} {}: partitions {}, batch {}, repetition {}{}",
            e.folder(),
            e.partition.label,
            e.batch,
            e.repetition,
            match (&e.data, req.file_limit) {
                (Some(d), Some(l)) => format!(", data {} ({l} partition(s))", d.label),
                _ => String::new(),
            }
        ));
        let t = std::time::Instant::now();
        let failed_run = |source: Box<dyn std::error::Error + Send + Sync>| Error::SweepRun {
            run: e.folder(),
            source,
        };
        let report = run(req).await.map_err(|err| failed_run(err.into()))?;
        if let RunEnd::Aborted { status, id } = &report.end {
            return Err(failed_run(
                format!("the execution ended {status}: {id}").into(),
            ));
        }
        let Some(summary) = report.summary else {
            return Err(request(
                format!(
                    "run {} ended without {}",
                    e.folder(),
                    url.url_of(layout::SUMMARY)
                ),
                "a sweep follows every run to its summary (no --detach or --dry-run)",
            ));
        };
        out.any_failed |= !summary.complete();
        say(format!(
            "{n} {}: {} galaxies, {}/{} ranks{}, wall {:.2} s ({:.1} galaxies/s), {:.1} s with planning and summary",
            e.folder(),
            summary.galaxies,
            summary.ranks_done,
            summary.ranks_total,
            if summary.complete() {
                String::new()
            } else {
                format!(" ({} failed or missing)", summary.failed.len() + summary.missing_ranks.len())
            },
            summary.wall_time_s,
            summary.galaxies_per_s,
            t.elapsed().as_secs_f64()
        ));
        out.rows
            .push(SweepRow::new(e, "ran", &summary, url.to_string()));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn folders_and_order() {
        let p = sizes(&["25MB".into(), "50 MB".into()], "--partition-sizes").unwrap();
        assert_eq!(p[1].label, "50MB");
        let e = experiments(&[], &p, &[32, 128], 2);
        let names: Vec<String> = e.iter().map(Experiment::folder).collect();
        assert_eq!(
            names[..5],
            [
                "p25MB-b32-r1",
                "p25MB-b32-r2",
                "p25MB-b128-r1",
                "p25MB-b128-r2",
                "p50MB-b32-r1"
            ]
        );
        assert_eq!(e.len(), 8);
        let d = sizes(&["1GB".into()], "--data-sizes").unwrap();
        assert_eq!(
            experiments(&d, &p, &[32], 1)[0].folder(),
            "d1GB-p25MB-b32-r1"
        );
        let err = sizes(&["1MB".into(), "1024KB".into()], "--partition-sizes")
            .unwrap_err()
            .to_string();
        assert!(err.contains("same size"), "{err}");
        assert!(sizes(&["big".into()], "--data-sizes").is_err());
    }

    #[test]
    fn plan_checks_its_lists() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let plan = SweepPlan::new(&s(&["25MB"]), &[32, 32, 64], &[], 2).unwrap();
        assert_eq!(plan.batch_sizes, [32, 64]);
        assert_eq!(plan.experiments.len(), 4);
        assert!(SweepPlan::new(&s(&["25MB"]), &[32], &[], 0).is_err());
        assert!(SweepPlan::new(&s(&["25MB"]), &[0], &[], 1).is_err());
        let rec = plan.record("d", Some("m"), "local");
        assert_eq!(rec["runs"][3], "p25MB-b64-r2");
    }
}
