//! `cai bench`: model-only throughput beside this machine's FMA peak. The measuring is
//! `cai_engine::bench`'s; this loads the model and prints.

use anyhow::{Context, Result};
use cai_engine::bench::{self, BenchOptions, Line};
use cai_engine::bench_tensor;
use cai_model::kernels::Precision;

use crate::cli::BenchArgs;
use crate::printer::Printer;
use crate::Outcome;

/// `cai bench`.
pub async fn bench(a: BenchArgs, printer: &Printer) -> Result<Outcome> {
    if let Some(path) = a
        .model
        .model
        .clone()
        .filter(|m| cai_engine::stages::is_onnx_location(m))
    {
        return bench_tensor(a, path, printer).await;
    }
    let opts = BenchOptions {
        threads: a.threads,
        batch: a.batch,
        seconds: a.seconds,
        peak_seconds: a.peak_seconds,
        precisions: bench::precisions(&a.precision)?,
        max_dz: a.max_dz,
        judge_galaxies: a.judge_galaxies,
        parity_dir: a.parity_dir,
        model_given: a.model.model.is_some(),
    };
    let (model, source) = bench::bench_model(a.model.model.as_deref(), a.seed).await?;
    let printer = printer.with_json(a.json.json);
    let report = tokio::task::spawn_blocking(move || {
        let report = bench::run(&opts, &model, source, &mut |line| match line {
            Line::Context(s) => printer.detail(s),
            Line::Result(s) => printer.result(s),
        });
        (report, printer)
    });
    let (report, printer) = report.await.context("the benchmark thread failed")?;
    printer.json(&report?)?;
    Ok(Outcome::Ok)
}

/// `cai bench --model X.onnx`: the model beside the native AstroMAE
/// ([`cai_engine::bench_tensor`]).
async fn bench_tensor(a: BenchArgs, path: String, printer: &Printer) -> Result<Outcome> {
    let model = cai_engine::stages::load_any_model(&path, &[], Precision::F32)
        .await
        .with_context(|| format!("cannot load the model {path}"))?;
    let opts = bench_tensor::CompareOptions {
        threads: a.threads,
        batch: a.batch,
        seconds: a.seconds,
        seed: a.seed,
    };
    let report = tokio::task::spawn_blocking(move || {
        bench_tensor::compare(&*model, &path, &opts).map_err(anyhow::Error::from)
    })
    .await
    .context("the benchmark thread failed")??;
    if !printer.with_json(a.json.json).json(&report)? {
        printer.result(report);
    }
    Ok(Outcome::Ok)
}
