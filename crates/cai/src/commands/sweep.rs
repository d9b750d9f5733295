//! `cai sweep`: the original's experiments. Every partition size × batch size (× data size),
//! repeated, runs as a whole `cai run` on the chosen engine into its own sub-folder of the
//! results location (`p25MB-b128-r1/`, `d1GB-p25MB-b128-r1/` with data sizes), which is the
//! layout `cai stats` and `cai report` read as a sweep.
//!
//! Partitions for each size come from the data: a sub-folder per size named as given
//! (the original's `25MB/`, `50MB/`… layout) is used as it is; a dataset file or a folder of
//! partitions is re-cut at each size by the same code as `cai partition`, into `--work`
//! (default `<results>/partitions/<size>/`). Runs go through the same engine as `cai run`
//! (one `Engine` value for the whole sweep). A run is finished iff its `summary.json`
//! exists: `--resume` skips those and reruns the others from scratch.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use cai_core::layout;
use cai_core::plan::sort_partitions;
use cai_core::summary::Summary;
use cai_core::StorageUrl;
use cai_data::partition::{parse_size, FileFormat, PartitionSeq};
use cai_engine::engine::RunEnd;
use cai_engine::stages::find_partitions;
use cai_report::stats::Table;
use serde::Serialize;

use super::engines::{drive, engine_for, request, Printer};
use crate::cli::{PartitionFormat, SweepArgs};
use crate::commands::data;
use crate::Outcome;

/// A size as given (`25MB`) and in bytes.
#[derive(Debug, Clone, Serialize)]
struct Size {
    label: String,
    bytes: u64,
}

/// Parse a list of sizes; labels are the text without spaces (they name folders).
fn sizes(list: &[String], flag: &str) -> Result<Vec<Size>> {
    let mut out: Vec<Size> = Vec::new();
    for text in list {
        let bytes = parse_size(text).with_context(|| format!("{flag} {text:?}"))?;
        let label: String = text.chars().filter(|c| !c.is_whitespace()).collect();
        if let Some(prev) = out.iter().find(|s| s.bytes == bytes) {
            bail!(
                "{flag}: {:?} and {text:?} are the same size ({bytes} bytes); give each once",
                prev.label
            );
        }
        out.push(Size { label, bytes });
    }
    Ok(out)
}

/// One run of the sweep.
#[derive(Debug, Clone)]
struct Experiment {
    data: Option<Size>,
    partition: Size,
    batch: usize,
    repetition: usize,
}

impl Experiment {
    /// The run's folder under the results location.
    fn folder(&self) -> String {
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

/// Every experiment, in run order: data size, partition size, batch size, then repetition.
fn experiments(data: &[Size], parts: &[Size], batches: &[usize], repeat: usize) -> Vec<Experiment> {
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
enum Source {
    /// `<data>/<size>/` holds partitions for every size (the original's layout).
    PerSize(StorageUrl),
    /// A dataset file on this machine, cut at each size.
    File(PathBuf),
    /// Partitions, re-cut at each size.
    Partitions(StorageUrl),
}

async fn find_source(data: &str, parts: &[Size]) -> Result<Source> {
    let url = StorageUrl::parse(data)?;
    if let Some(p) = url.local_path() {
        if p.is_file() {
            return Ok(Source::File(p));
        }
        if !p.exists() {
            bail!("--data {data}: no such file or folder");
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
        .filter(|k| !k.contains('/') && (k.ends_with(".safetensors") || k.ends_with(".pt")))
        .collect();
    match (files.as_slice(), url.local_path()) {
        ([one], Some(dir)) => Ok(Source::File(dir.join(one))),
        ([one], None) => bail!(
            "--data {data}: {one} is a whole dataset; cutting it needs it on this machine \
             (download it, or `cai partition` it into a folder per size)"
        ),
        ([], _) => bail!(
            "--data {data}: no partitions, no sub-folder per partition size ({}) and no \
             dataset file here; give a dataset file (`cai synth` makes one) or partitions \
             (`cai partition` makes them)",
            parts
                .iter()
                .map(|s| format!("{}/", s.label))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        (many, _) => bail!(
            "--data {data}: several dataset files ({}); give one of them as --data",
            many.join(", ")
        ),
    }
}

/// The partitions of size `size` for the sweep: found or made. Returns their location.
async fn partitions_for(
    source: &Source,
    size: &Size,
    work: &StorageUrl,
    format: FileFormat,
    reuse: bool,
    quiet: bool,
) -> Result<StorageUrl> {
    let dest = work.child(&size.label);
    let made = match source {
        Source::PerSize(data) => return Ok(data.child(&size.label)),
        _ if reuse && dest.exists(layout::MANIFEST).await? => {
            if !quiet {
                eprintln!("partitions of {}: reusing {dest}", size.label);
            }
            return Ok(dest);
        }
        Source::File(path) => {
            data::partition_to_as(path, &size.label, &dest.to_string(), format, true).await?
        }
        Source::Partitions(src) => {
            let (mut parts, manifest) = find_partitions(src).await?;
            if manifest.is_none() {
                sort_partitions(&mut parts);
            }
            let keys: Vec<String> = parts.iter().map(|p| p.key.clone()).collect();
            let counts: Option<Vec<u64>> = parts.iter().map(|p| p.galaxies).collect();
            let handle = tokio::runtime::Handle::current();
            let (src2, name) = (src.clone(), src.to_string());
            let reader = tokio::task::spawn_blocking(move || {
                let fetch = move |key: &str| -> cai_data::Result<Vec<u8>> {
                    handle
                        .block_on(src2.get(key))
                        .map(|b| b.to_vec())
                        .map_err(|e| cai_data::Error::InvalidPartition {
                            reason: e.to_string(),
                        })
                };
                PartitionSeq::open(name, keys, counts, fetch)
            })
            .await?
            .with_context(|| format!("cannot read the partitions under {src}"))?;
            data::partition_source_to(Box::new(reader), size.bytes, &dest, format, true).await?
        }
    };
    if !quiet {
        eprintln!(
            "partitions of {}: {} ({} galaxies) in {dest}",
            size.label, made.partitions, made.galaxies
        );
    }
    Ok(dest)
}

/// The original's file_limit for a data size: the leading partitions (in plan order) that
/// hold at most `bytes` together, at least one.
async fn file_limit(parts_url: &StorageUrl, bytes: u64, quiet: bool) -> Result<usize> {
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
    if n == parts.len() && total < bytes && !quiet {
        eprintln!(
            "warning: {parts_url} holds {total} bytes, less than the data size of {bytes}; using all of it"
        );
    }
    Ok(n.max(1))
}

/// One line of the final table (also the `--json` output).
#[derive(Debug, Serialize)]
struct Row {
    run: String,
    data_size: Option<String>,
    partition_size: String,
    batch_size: usize,
    repetition: usize,
    status: &'static str,
    ranks_done: usize,
    ranks_total: usize,
    failed: usize,
    galaxies: u64,
    wall_time_s: f64,
    galaxies_per_s: f64,
    results: String,
}

impl Row {
    fn new(e: &Experiment, status: &'static str, s: &Summary, results: String) -> Self {
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

fn table(rows: &[Row]) -> Table {
    let mut header = vec!["run"];
    let with_data = rows.iter().any(|r| r.data_size.is_some());
    if with_data {
        header.push("data");
    }
    header.extend([
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
    Table {
        header: header.into_iter().map(String::from).collect(),
        rows: rows
            .iter()
            .map(|r| {
                let mut v = vec![r.run.clone()];
                if with_data {
                    v.push(r.data_size.clone().unwrap_or_default());
                }
                v.extend([
                    r.partition_size.clone(),
                    r.batch_size.to_string(),
                    r.repetition.to_string(),
                    r.status.to_string(),
                    format!("{}/{}", r.ranks_done, r.ranks_total),
                    r.failed.to_string(),
                    r.galaxies.to_string(),
                    format!("{:.2}", r.wall_time_s),
                    format!("{:.1}", r.galaxies_per_s),
                ]);
                v
            })
            .collect(),
    }
}

/// Read a finished run's summary.
async fn read_summary(url: &StorageUrl) -> Result<Summary> {
    let bytes = url.get(layout::SUMMARY).await?;
    serde_json::from_slice(&bytes)
        .with_context(|| format!("cannot parse {}", url.url_of(layout::SUMMARY)))
}

/// `cai sweep`.
pub async fn sweep(a: SweepArgs, quiet: bool) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut ra = a.run;
    if ra.batch_size.is_some() {
        bail!("cai sweep takes --batch-sizes (a list), not --batch-size");
    }
    if ra.payload.is_some() {
        bail!("cai sweep does not take --payload; give --data, --results and --model");
    }
    if !a.data_sizes.is_empty() && ra.file_limit.is_some() {
        bail!("give --data-sizes or --file-limit, not both");
    }
    if a.repeat == 0 {
        bail!("--repeat must be at least 1");
    }
    if a.batch_sizes.contains(&0) {
        bail!("--batch-sizes: a batch holds at least one galaxy");
    }
    let mut batches = a.batch_sizes.clone();
    batches.dedup();
    let parts = sizes(&a.partition_sizes, "--partition-sizes")?;
    let data_sizes = sizes(&a.data_sizes, "--data-sizes")?;
    let data = ra
        .data
        .clone()
        .context("no data: give --data (a dataset file, partitions, or a folder per size)")?;
    let results_s = ra
        .results
        .clone()
        .context("no results location: give --results (each run goes into a sub-folder)")?;
    if ra.model.is_none() {
        bail!("no model: give --model FILE (`cai model init` makes one)");
    }
    if ra.detach {
        bail!("a sweep follows every run to its summary: no --detach");
    }
    let engine = engine_for(&ra).await?;
    let printer = Printer::new(quiet);
    let results = StorageUrl::parse(&results_s)?;
    let exps = experiments(&data_sizes, &parts, &batches, a.repeat);
    let resume = ra.resume;
    let base_limit = ra.file_limit;

    // A fresh sweep does not overwrite another one.
    if !resume {
        let existing = results.list().await?;
        if let Some(o) = existing.iter().find(|o| {
            o.key == layout::SWEEP
                || exps
                    .iter()
                    .any(|e| o.key.starts_with(&format!("{}/", e.folder())))
        }) {
            bail!(
                "{results} already holds a sweep ({}); `--resume` runs only the experiments \
                 without a summary.json, or give another --results",
                o.key
            );
        }
    }

    let source = find_source(&data, &parts).await?;
    let work = match &a.work {
        Some(w) => StorageUrl::parse(w)?,
        None => results.child(layout::SWEEP_PARTITIONS_DIR),
    };
    let format = match a.partition_format {
        PartitionFormat::Native => FileFormat::Native,
        PartitionFormat::Pt => FileFormat::Torch,
    };
    let record = serde_json::json!({
        "data": data,
        "model": ra.model,
        "engine": format!("{:?}", ra.engine).to_lowercase(),
        "partition_sizes": parts,
        "batch_sizes": batches,
        "data_sizes": data_sizes,
        "repeat": a.repeat,
        "runs": exps.iter().map(Experiment::folder).collect::<Vec<_>>(),
    });
    results
        .put(layout::SWEEP, serde_json::to_vec_pretty(&record)?)
        .await?;
    if !quiet {
        eprintln!(
            "sweep: {} runs ({} data size(s) × {} partition size(s) × {} batch size(s) × {} repetition(s)) into {results}",
            exps.len(),
            data_sizes.len().max(1),
            parts.len(),
            batches.len(),
            a.repeat
        );
    }

    let mut rows: Vec<Row> = Vec::new();
    let mut part_urls: Vec<(u64, StorageUrl)> = Vec::new();
    let mut any_failed = false;
    for (i, e) in exps.iter().enumerate() {
        let n = format!("[{}/{}]", i + 1, exps.len());
        let url = results.child(&e.folder());
        if resume && url.exists(layout::SUMMARY).await? {
            let s = read_summary(&url).await?;
            any_failed |= !s.complete();
            if !quiet {
                eprintln!("{n} {}: finished before, skipped", e.folder());
            }
            rows.push(Row::new(e, "skipped", &s, url.to_string()));
            continue;
        }
        let parts_url = match part_urls.iter().find(|(b, _)| *b == e.partition.bytes) {
            Some((_, u)) => u.clone(),
            None => {
                let u = partitions_for(&source, &e.partition, &work, format, resume, quiet)
                    .await
                    .with_context(|| {
                        format!("cannot make the partitions of {}", e.partition.label)
                    })?;
                part_urls.push((e.partition.bytes, u.clone()));
                u
            }
        };
        ra.file_limit = match &e.data {
            Some(d) => Some(file_limit(&parts_url, d.bytes, quiet).await?),
            None => base_limit,
        };
        ra.data = Some(parts_url.to_string());
        ra.results = Some(url.to_string());
        ra.batch_size = Some(e.batch);
        ra.resume = false;
        if !quiet {
            eprintln!(
                "{n} {}: partitions {}, batch {}, repetition {}{}",
                e.folder(),
                e.partition.label,
                e.batch,
                e.repetition,
                match (&e.data, ra.file_limit) {
                    (Some(d), Some(l)) => format!(", data {} ({l} partition(s))", d.label),
                    _ => String::new(),
                }
            );
        }
        let t = Instant::now();
        let req = request(&ra)?;
        let report = drive(
            &*engine,
            &printer,
            req.results_location(),
            engine.run(&req, &printer),
        )
        .await
        .with_context(|| format!("run {} failed", e.folder()))?;
        if let RunEnd::Aborted { status, id } = &report.end {
            return Err(anyhow::anyhow!("the execution ended {status}: {id}"))
                .with_context(|| format!("run {} failed", e.folder()));
        }
        let Some(summary) = report.summary else {
            bail!(
                "run {} ended without {}: a sweep follows every run to its summary \
                 (no --detach or --dry-run)",
                e.folder(),
                url.url_of(layout::SUMMARY)
            );
        };
        any_failed |= !summary.complete();
        if !quiet {
            eprintln!(
                "{n} {}: {} galaxies, {}/{} ranks{}, wall {:.2} s ({:.1} galaxies/s), {:.1} s with planning and summary",
                e.folder(),
                summary.galaxies,
                summary.ranks_done,
                summary.ranks_total,
                if summary.complete() { String::new() } else { format!(" ({} failed or missing)", summary.failed.len() + summary.missing_ranks.len()) },
                summary.wall_time_s,
                summary.galaxies_per_s,
                t.elapsed().as_secs_f64()
            );
        }
        rows.push(Row::new(e, "ran", &summary, url.to_string()));
    }

    if ra.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        print!("{}", table(&rows).to_text());
    }
    if !quiet {
        eprintln!(
            "sweep done in {:.1} s; `cai stats {results}` gives the means over repetitions, \
             `cai report {results} --out report.html` the figures",
            t0.elapsed().as_secs_f64()
        );
        if any_failed {
            eprintln!(
                "some runs have failed ranks; fix the named files, delete those runs' summary.json and `cai sweep … --resume` reruns them"
            );
        }
    }
    Ok(if any_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
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
}
