//! `cai model init` and `cai model fit`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use cai_engine::stages::load_model;
use cai_model::{init, Config};

use crate::cli::{ModelFitArgs, ModelInitArgs};
use crate::commands::predict::{thread_pool, write_atomic};
use crate::Outcome;

/// Write seeded AstroMAE weights.
pub fn write_init(seed: u64, out: &std::path::Path) -> Result<()> {
    let weights = init::astromae_weights(seed, &Config::astromae());
    let mut meta = BTreeMap::new();
    meta.insert(
        "cai.weights".to_string(),
        format!("seeded init, seed {seed}, untrained"),
    );
    write_atomic(out, &weights.to_safetensors(&meta)?)
}

/// `cai model init`.
pub async fn init(a: ModelInitArgs) -> Result<Outcome> {
    write_init(a.seed, &a.out)?;
    eprintln!(
        "wrote seeded (untrained) AstroMAE weights, seed {}, to {}",
        a.seed,
        a.out.display()
    );
    Ok(Outcome::Ok)
}

/// Fit the last layer on a labelled dataset file; returns the training R².
pub async fn fit_to(
    model_path: &str,
    train: &std::path::Path,
    out: &std::path::Path,
    ridge: f64,
    threads: Option<usize>,
    quiet: bool,
) -> Result<f64> {
    let model = load_model(model_path)
        .await
        .with_context(|| format!("cannot load the model {model_path}"))?;
    let reader = cai_data::DatasetReader::open(train)
        .with_context(|| format!("cannot open the training data {}", train.display()))?;
    let data = reader.read_range(0, reader.len() as usize)?;
    let z = data
        .redshift
        .clone()
        .with_context(|| format!("{} has no redshift labels to fit on", train.display()))?;
    let pool = thread_pool(threads)?;
    let out = out.to_path_buf();
    let source = model_path.to_string();
    tokio::task::spawn_blocking(move || -> Result<f64> {
        let mut m = std::sync::Arc::try_unwrap(model).unwrap_or_else(|arc| (*arc).clone());
        if !quiet {
            eprintln!("fitting the last layer on {} labelled galaxies…", data.n);
        }
        let r2 = pool.install(|| {
            cai_model::fit::fit_last_layer(&mut m, &data.images, &data.magnitudes, &z, data.n, ridge)
        })?;
        let mut meta = BTreeMap::new();
        meta.insert(
            "cai.weights".to_string(),
            format!(
                "{source} with its last layer (concat_block.2) fitted by ridge regression on {} synthetic galaxies",
                data.n
            ),
        );
        write_atomic(&out, &m.to_weights().to_safetensors(&meta)?)?;
        Ok(r2)
    })
    .await?
}

/// `cai model fit`.
pub async fn fit(a: ModelFitArgs, quiet: bool) -> Result<Outcome> {
    let r2 = fit_to(&a.model, &a.train, &a.out, a.ridge, a.threads, quiet).await?;
    eprintln!("wrote {} (training R² {r2:.3})", a.out.display());
    Ok(Outcome::Ok)
}
