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
//! exists: `--resume` skips those and reruns the others from scratch. The loop is
//! `cai_engine::sweep::run_sweep`; this module checks the flags and prints the table.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use cai_core::StorageUrl;
use cai_data::partition::FileFormat;
use cai_engine::sweep::{run_sweep, SweepPlan, SweepRequest, SweepRow};
use cai_report::stats::Table;

use super::engines::{drive, engine_for, request, Printer};
use crate::cli::{PartitionFormat, SweepArgs};
use crate::Outcome;

/// The final table.
fn table(rows: &[SweepRow]) -> Table {
    let with_data = rows.iter().any(|r| r.data_size.is_some());
    Table {
        header: SweepRow::header(with_data),
        rows: rows.iter().map(|r| r.cells(with_data)).collect(),
    }
}

/// `cai sweep`.
pub async fn sweep(a: SweepArgs, printer: &Printer) -> Result<Outcome> {
    let t0 = Instant::now();
    let ra = a.run;
    if ra.batch.batch_size.is_some() {
        bail!("cai sweep takes --batch-sizes (a list), not --batch-size");
    }
    if ra.payload.is_some() {
        bail!("cai sweep does not take --payload; give --data, --results and --model");
    }
    if !a.data_sizes.is_empty() && ra.file_limit.is_some() {
        bail!("give --data-sizes or --file-limit, not both");
    }
    let data = ra
        .data
        .clone()
        .context("no data: give --data (a dataset file, partitions, or a folder per size)")?;
    let results = ra
        .results
        .results
        .as_deref()
        .context("no results location: give --results (each run goes into a sub-folder)")?;
    if ra.model.model.is_none() {
        bail!("no model: give --model FILE (`cai model init` makes one)");
    }
    if ra.detach {
        bail!("a sweep follows every run to its summary: no --detach");
    }
    let results = StorageUrl::parse(results)?;
    let s = SweepRequest {
        plan: SweepPlan::new(&a.partition_sizes, &a.batch_sizes, &a.data_sizes, a.repeat)?,
        data,
        results: results.clone(),
        work: a.work.as_deref().map(StorageUrl::parse).transpose()?,
        format: match a.partition_format {
            PartitionFormat::Native => FileFormat::Native,
            PartitionFormat::Pt => FileFormat::Torch,
        },
        engine: format!("{:?}", ra.engine).to_lowercase(),
        resume: ra.resume,
        run: request(&ra)?,
    };
    let engine = &*engine_for(&ra).await?;
    let out = run_sweep(&s, printer, |req| async move {
        let work = engine.run(&req, printer);
        drive(engine, printer, req.results_location(), work)
            .await
            .map_err(|e| cai_engine::Error::Backend(e.into()))
    })
    .await?;
    if !printer.with_json(ra.json.json).json(&out.rows)? {
        print!("{}", table(&out.rows).to_text());
    }
    printer.note(format!(
        "sweep done in {:.1} s; `cai stats {results}` gives the means over repetitions, \
         `cai report {results} --out report.html` the figures",
        t0.elapsed().as_secs_f64()
    ));
    if !out.any_failed {
        return Ok(Outcome::Ok);
    }
    printer.note(
        "some runs have failed ranks; fix the named files, delete those runs' summary.json and `cai sweep … --resume` reruns them",
    );
    Ok(Outcome::SomeFailed)
}
