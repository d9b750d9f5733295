//! `cai demo`'s workflow on this machine, from nothing: seeded AstroMAE weights (untrained);
//! labelled training galaxies (seed 2); the last Linear layer fitted by ridge regression on
//! their penultimate features; the galaxies to run (seed 1, never seen by the fit);
//! partitions; the local engine, which plans, runs and summarizes. Every step is the
//! library's own (the same functions as `cai model init`, `cai synth`, `cai model fit`,
//! `cai partition` and `cai run`); the caller prints the outcome and draws the report.

use std::path::{Path, PathBuf};
use std::time::Instant;

use cai_core::storage::write_file_atomic;
use cai_core::summary::Summary;
use cai_core::{layout, StorageUrl};
use cai_data::partition::{parse_size, FileFormat};

use crate::engine::{Engine, RunEvent, RunEvents, RunRequest};
use crate::local::LocalEngine;
use crate::partition::{open_dataset, partition_source, write_synthetic};
use crate::stages::fit_last_layer;
use crate::{Error, Result};

/// What the demo makes and runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Working folder for every output.
    pub dir: PathBuf,
    /// Galaxies to run inference on.
    pub galaxies: u64,
    /// Labelled galaxies to fit the last layer on.
    pub train_galaxies: u64,
    /// Partition size (`25MB`).
    pub size: String,
    /// Galaxies per inference batch.
    pub batch_size: usize,
}

/// What the demo did.
#[derive(Debug, Clone)]
pub struct DemoOutcome {
    /// The run's summary.
    pub summary: Summary,
    /// R² of the fitted layer on its training galaxies.
    pub train_r2: f64,
    /// The results location (a folder under the working folder).
    pub results: String,
    /// Every output, `(what, path)`, in the order made.
    pub outputs: Vec<(&'static str, String)>,
}

/// Run the demo in `o.dir`, telling `events` each step (with a progress bar for the
/// galaxies' synthesis and for the run).
pub async fn run_demo(o: &DemoOptions, events: &dyn RunEvents) -> Result<DemoOutcome> {
    let t0 = Instant::now();
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| Error::Core(cai_core::Error::Write { path, source })
    };
    std::fs::create_dir_all(&o.dir).map_err(io(&o.dir))?;
    let dir = std::path::absolute(&o.dir).map_err(io(&o.dir))?;
    let p = |name: &str| dir.join(name);
    let s = |path: PathBuf| path.display().to_string();
    let say = |msg: &str| {
        events.event(RunEvent::Message(format!(
            "[demo {:>5.1} s] {msg}",
            t0.elapsed().as_secs_f64()
        )));
    };

    say("1/6 seeded AstroMAE weights (seed 0, PyTorch default init scales; untrained)");
    let init = p("model-init.safetensors");
    write_file_atomic(&init, &cai_model::init::seeded_safetensors(0)?)?;

    say(&format!(
        "2/6 {} labelled training galaxies (seed 2)",
        o.train_galaxies
    ));
    write_synthetic(&p("train.safetensors"), o.train_galaxies, 2, None).await?;

    say("3/6 fitting the last Linear layer (concat_block.2) by ridge regression");
    let model = p("model-demo.safetensors");
    let fitted = fit_last_layer(&s(init), &p("train.safetensors"), 1e-3, None).await?;
    write_file_atomic(&model, &fitted.safetensors)?;
    say(&format!("    training R² {:.3}", fitted.r2));

    say(&format!(
        "4/6 {} galaxies to run (seed 1, held out from the fit)",
        o.galaxies
    ));
    let galaxies = p("galaxies.safetensors");
    write_synthetic(&galaxies, o.galaxies, 1, Some(events)).await?;

    say(&format!("5/6 partitions of {}", o.size));
    let parts = s(p("partitions"));
    let path = galaxies.clone();
    let reader = tokio::task::spawn_blocking(move || open_dataset(&path))
        .await
        .map_err(|source| Error::Join {
            task: "opening the dataset".into(),
            source,
        })??;
    let made = partition_source(
        reader,
        parse_size(&o.size)?,
        &StorageUrl::parse(&parts)?,
        FileFormat::Native,
        None,
    )
    .await?;
    say(&format!("    {} partitions", made.partitions));

    say("6/6 running the local engine and summarizing");
    let results = s(p("results"));
    let req = RunRequest {
        data: Some(parts.clone()),
        results: Some(results.clone()),
        model: Some(s(model.clone())),
        batch_size: Some(o.batch_size),
        ..Default::default()
    };
    let summary = LocalEngine::default()
        .run(&req, events)
        .await?
        .summary
        .ok_or_else(|| Error::Request {
            what: "the local engine ended without a summary".into(),
            hint: "run the demo again".into(),
        })?;
    let at = |key: &str| format!("{results}/{key}");
    Ok(DemoOutcome {
        summary,
        train_r2: fitted.r2,
        outputs: vec![
            ("model", s(model)),
            ("galaxies", s(galaxies)),
            ("partitions", parts),
            ("plan", at(layout::PLAN)),
            ("rank reports", at(layout::RANK_REPORT_PATTERN)),
            ("combined", at(layout::COMBINED)),
            ("predictions", at(layout::PREDICTIONS)),
            ("summary", at(layout::SUMMARY)),
        ],
        results,
    })
}
