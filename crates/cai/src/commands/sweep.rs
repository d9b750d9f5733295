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

use std::time::Instant;

use anyhow::{bail, Context, Result};
use cai_core::layout;
use cai_core::StorageUrl;
use cai_data::partition::FileFormat;
use cai_engine::engine::RunEnd;
use cai_engine::sweep::{
    file_limit, find_source, partitions_for, read_summary, Made, SweepPlan, SweepRow,
};
use cai_report::stats::Table;

use super::engines::{drive, engine_for, request, Printer};
use crate::cli::{PartitionFormat, SweepArgs};
use crate::Outcome;

/// The final table.
fn table(rows: &[SweepRow]) -> Table {
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

/// `cai sweep`.
pub async fn sweep(a: SweepArgs, printer: &Printer) -> Result<Outcome> {
    let t0 = Instant::now();
    let mut ra = a.run;
    if ra.batch.batch_size.is_some() {
        bail!("cai sweep takes --batch-sizes (a list), not --batch-size");
    }
    if ra.payload.is_some() {
        bail!("cai sweep does not take --payload; give --data, --results and --model");
    }
    if !a.data_sizes.is_empty() && ra.file_limit.is_some() {
        bail!("give --data-sizes or --file-limit, not both");
    }
    let plan = SweepPlan::new(&a.partition_sizes, &a.batch_sizes, &a.data_sizes, a.repeat)?;
    let data = ra
        .data
        .clone()
        .context("no data: give --data (a dataset file, partitions, or a folder per size)")?;
    let results_s = ra
        .results
        .results
        .clone()
        .context("no results location: give --results (each run goes into a sub-folder)")?;
    if ra.model.model.is_none() {
        bail!("no model: give --model FILE (`cai model init` makes one)");
    }
    if ra.detach {
        bail!("a sweep follows every run to its summary: no --detach");
    }
    let engine = engine_for(&ra).await?;
    let results = StorageUrl::parse(&results_s)?;
    let exps = &plan.experiments;
    let resume = ra.resume;
    let base_limit = ra.file_limit;

    // A fresh sweep does not overwrite another one.
    if !resume {
        plan.check_fresh(&results).await?;
    }

    let source = find_source(&data, &plan.partition_sizes).await?;
    let work = match &a.work {
        Some(w) => StorageUrl::parse(w)?,
        None => results.child(layout::SWEEP_PARTITIONS_DIR),
    };
    let format = match a.partition_format {
        PartitionFormat::Native => FileFormat::Native,
        PartitionFormat::Pt => FileFormat::Torch,
    };
    let engine_name = format!("{:?}", ra.engine).to_lowercase();
    let record = plan.record(&data, ra.model.model.as_deref(), &engine_name);
    results
        .put(layout::SWEEP, serde_json::to_vec_pretty(&record)?)
        .await?;
    printer.note(plan.describe(&results));

    let mut rows: Vec<SweepRow> = Vec::new();
    let mut part_urls: Vec<(u64, StorageUrl)> = Vec::new();
    let mut any_failed = false;
    for (i, e) in exps.iter().enumerate() {
        let n = format!("[{}/{}]", i + 1, exps.len());
        let url = results.child(&e.folder());
        if resume && url.exists(layout::SUMMARY).await? {
            let s = read_summary(&url).await?;
            any_failed |= !s.complete();
            printer.note(format!("{n} {}: finished before, skipped", e.folder()));
            rows.push(SweepRow::new(e, "skipped", &s, url.to_string()));
            continue;
        }
        let parts_url = match part_urls.iter().find(|(b, _)| *b == e.partition.bytes) {
            Some((_, u)) => u.clone(),
            None => {
                let label = &e.partition.label;
                let (u, made) = partitions_for(&source, &e.partition, &work, format, resume)
                    .await
                    .with_context(|| format!("cannot make the partitions of {label}"))?;
                match made {
                    Made::Given => {}
                    Made::Reused => printer.note(format!("partitions of {label}: reusing {u}")),
                    Made::Cut(m) => printer.note(format!(
                        "partitions of {label}: {} ({} galaxies) in {u}",
                        m.partitions, m.galaxies
                    )),
                }
                part_urls.push((e.partition.bytes, u.clone()));
                u
            }
        };
        ra.file_limit = match &e.data {
            Some(d) => {
                let (n, warning) = file_limit(&parts_url, d.bytes).await?;
                if let Some(w) = warning {
                    printer.note(format!("warning: {w}"));
                }
                Some(n)
            }
            None => base_limit,
        };
        ra.data = Some(parts_url.to_string());
        ra.results.results = Some(url.to_string());
        ra.batch.batch_size = Some(e.batch);
        ra.resume = false;
        printer.note(format!(
            "{n} {}: partitions {}, batch {}, repetition {}{}",
            e.folder(),
            e.partition.label,
            e.batch,
            e.repetition,
            match (&e.data, ra.file_limit) {
                (Some(d), Some(l)) => format!(", data {} ({l} partition(s))", d.label),
                _ => String::new(),
            }
        ));
        let t = Instant::now();
        let req = request(&ra)?;
        let report = drive(
            &*engine,
            printer,
            req.results_location(),
            engine.run(&req, printer),
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
        printer.note(format!(
                "{n} {}: {} galaxies, {}/{} ranks{}, wall {:.2} s ({:.1} galaxies/s), {:.1} s with planning and summary",
                e.folder(),
                summary.galaxies,
                summary.ranks_done,
                summary.ranks_total,
                if summary.complete() { String::new() } else { format!(" ({} failed or missing)", summary.failed.len() + summary.missing_ranks.len()) },
                summary.wall_time_s,
                summary.galaxies_per_s,
                t.elapsed().as_secs_f64()
            ));
        rows.push(SweepRow::new(e, "ran", &summary, url.to_string()));
    }

    if !printer.with_json(ra.json.json).json(&rows)? {
        print!("{}", table(&rows).to_text());
    }
    printer.note(format!(
        "sweep done in {:.1} s; `cai stats {results}` gives the means over repetitions, \
         `cai report {results} --out report.html` the figures",
        t0.elapsed().as_secs_f64()
    ));
    if any_failed {
        printer.note(
            "some runs have failed ranks; fix the named files, delete those runs' summary.json and `cai sweep … --resume` reruns them",
        );
    }
    Ok(if any_failed {
        Outcome::SomeFailed
    } else {
        Outcome::Ok
    })
}
