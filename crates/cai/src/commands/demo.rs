//! `cai demo`: the whole workflow on this machine, from nothing, in a few minutes. The steps
//! are `cai_engine::demo::run_demo`'s; this prints the outcome and writes the report.

use std::time::Instant;

use anyhow::Result;
use cai_core::layout;
use cai_engine::demo::{run_demo, DemoOptions};

use super::engines::Printer;
use crate::cli::DemoArgs;
use crate::commands::run;
use crate::Outcome;

/// `cai demo`.
pub async fn demo(a: DemoArgs, printer: &Printer) -> Result<Outcome> {
    let t0 = Instant::now();
    let opts = DemoOptions {
        dir: a.dir.clone(),
        galaxies: a.galaxies,
        train_galaxies: a.train_galaxies,
        size: a.size.clone(),
        batch_size: a.batch.or(crate::settings::DEMO_BATCH),
    };
    let out = run_demo(&opts, printer).await;
    printer.finish();
    let out = out?;
    println!();
    println!("CAI-rs demo — model: seeded AstroMAE (seed 0) with only its last layer fitted on");
    println!(
        "{} synthetic galaxies (seed 2); NOT a trained AstroMAE: numbers show the pipeline, not science.",
        a.train_galaxies
    );
    println!();
    run::print_summary(&out.summary, printer)?;
    println!();
    println!("outputs");
    for (what, path) in &out.outputs {
        println!("  {what:<13}{path}");
    }
    let report = std::path::PathBuf::from(&out.results).join(layout::REPORT_HTML);
    cai_report::html::write_report(
        std::slice::from_ref(&out.results),
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
    Ok(if out.summary.complete() {
        Outcome::Ok
    } else {
        Outcome::SomeFailed
    })
}
