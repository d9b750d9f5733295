//! `cai demo`: the whole workflow on this machine, from nothing, in a few minutes.
//!
//! Steps: seeded AstroMAE weights (untrained); labelled training galaxies (seed 2); the last
//! Linear layer fitted by ridge regression on their penultimate features; the galaxies to run
//! (seed 1, never seen by the fit); partitions; the local engine; summary and report.

use std::time::Instant;

use anyhow::{Context, Result};
use cai_core::layout;

use cai_engine::engine::{Engine, RunRequest};
use cai_engine::local::LocalEngine;

use super::engines::Printer;
use crate::cli::{DemoArgs, SynthArgs};
use crate::commands::{data, model, run};
use crate::Outcome;

/// `cai demo`.
pub async fn demo(a: DemoArgs, printer: &Printer) -> Result<Outcome> {
    let t0 = Instant::now();
    let dir = a.dir.clone();
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let dir = std::path::absolute(&dir)?;
    let p = |name: &str| dir.join(name);
    let say = |msg: &str| {
        printer.note(format!(
            "[demo {:>5.1} s] {msg}",
            t0.elapsed().as_secs_f64()
        ));
    };

    say("1/6 seeded AstroMAE weights (seed 0, PyTorch default init scales; untrained)");
    model::write_init(0, &p("model-init.safetensors"))?;

    say(&format!(
        "2/6 {} labelled training galaxies (seed 2)",
        a.train_galaxies
    ));
    data::synth(
        SynthArgs {
            galaxies: a.train_galaxies,
            out: p("train.safetensors"),
            seed: 2,
        },
        &Printer::new(true),
    )
    .await?;

    say("3/6 fitting the last Linear layer (concat_block.2) by ridge regression");
    let train_r2 = model::fit_to(
        &p("model-init.safetensors").display().to_string(),
        &p("train.safetensors"),
        &p("model-demo.safetensors"),
        None,
        &Printer::new(true),
    )
    .await?;
    say(&format!("    training R² {train_r2:.3}"));

    say(&format!(
        "4/6 {} galaxies to run (seed 1, held out from the fit)",
        a.galaxies
    ));
    data::synth(
        SynthArgs {
            galaxies: a.galaxies,
            out: p("galaxies.safetensors"),
            seed: 1,
        },
        printer,
    )
    .await?;

    say(&format!("5/6 partitions of {}", a.size));
    let parts_dir = p("partitions").display().to_string();
    let (s, _) = data::partition_to(
        &p("galaxies.safetensors"),
        None,
        &a.size,
        &parts_dir,
        cai_data::partition::FileFormat::Native,
        &Printer::new(true),
    )
    .await?;
    say(&format!("    {} partitions", s.partitions));
    say("6/6 running the local engine and summarizing");
    let results_dir = p("results").display().to_string();
    let req = RunRequest {
        data: Some(parts_dir.clone()),
        results: Some(results_dir.clone()),
        model: Some(p("model-demo.safetensors").display().to_string()),
        batch_size: Some(a.batch.or(crate::settings::DEMO_BATCH)),
        ..Default::default()
    };
    let report = LocalEngine::default().run(&req, printer).await;
    printer.finish();
    let summary = report?
        .summary
        .context("the local engine always summarizes")?;
    println!();
    println!("CAI-rs demo — model: seeded AstroMAE (seed 0) with only its last layer fitted on");
    println!(
        "{} synthetic galaxies (seed 2); NOT a trained AstroMAE: numbers show the pipeline, not science.",
        a.train_galaxies
    );
    println!();
    run::print_summary(&summary, printer)?;
    println!();
    println!("outputs");
    for (what, path) in [
        ("model", p("model-demo.safetensors").display().to_string()),
        ("galaxies", p("galaxies.safetensors").display().to_string()),
        ("partitions", parts_dir),
        ("plan", format!("{results_dir}/{}", layout::PLAN)),
        (
            "rank reports",
            format!("{results_dir}/{}", layout::RANK_REPORT_PATTERN),
        ),
        ("combined", format!("{results_dir}/{}", layout::COMBINED)),
        (
            "predictions",
            format!("{results_dir}/{}", layout::PREDICTIONS),
        ),
        ("summary", format!("{results_dir}/{}", layout::SUMMARY)),
    ] {
        println!("  {what:<13}{path}");
    }
    let report = std::path::PathBuf::from(&results_dir).join(layout::REPORT_HTML);
    crate::commands::report::write_report(
        std::slice::from_ref(&results_dir),
        &report,
        None,
        &cai_report::html::ReportOptions {
            title: "CAI-rs demo (seeded AstroMAE, last layer fitted; synthetic galaxies)".into(),
            ..Default::default()
        },
    )
    .await?;
    println!("  {:<13}{}", "report", report.display());
    println!("total demo time {:.1} s", t0.elapsed().as_secs_f64());
    Ok(if summary.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
