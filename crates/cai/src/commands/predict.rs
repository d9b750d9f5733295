//! `cai predict`: one partition file in, CSV out. Other tools call this: keep it stable.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::predictions::Predictions;
use cai_core::StorageUrl;
use cai_engine::local::available_cores;
use cai_engine::stages::load_model_with;
use cai_engine::worker::predict_partition;
use cai_model::kernels::Precision;
use cai_model::mixed::{self, PrecisionMode};
use cai_model::{AstroMae, Model};

use crate::cli::PredictArgs;
use crate::progress::Progress;
use crate::Outcome;

/// Write a file atomically: a temporary file beside it, renamed into place.
pub fn write_atomic(path: &std::path::Path, bytes: &[u8]) -> Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    let tmp = dir.join(format!(".{name}.partial-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("cannot write {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| {
        let _ = std::fs::remove_file(&tmp);
        format!("cannot move the output into place at {}", path.display())
    })?;
    Ok(())
}

/// A rayon pool with `threads` threads (default: every core).
pub fn thread_pool(threads: Option<usize>) -> Result<rayon::ThreadPool> {
    let n = threads.unwrap_or_else(available_cores).max(1);
    rayon::ThreadPoolBuilder::new()
        .num_threads(n)
        .build()
        .with_context(|| format!("cannot start {n} threads"))
}

/// `--precision auto` for `model` (f32), loaded from `location`: the stored choice beside a
/// local model file when it still fits, else a new one measured on the first
/// [`mixed::DEFAULT_CALIBRATION`] galaxies of `images`/`magnitudes` (stored beside a local
/// model). Prints the mix and its error unless `quiet`; returns the converted model.
pub fn apply_auto(
    model: &AstroMae,
    location: &str,
    images: &[f32],
    magnitudes: &[f32],
    n: usize,
    max_dz: f64,
    quiet: bool,
) -> Result<AstroMae> {
    let nc = n.min(mixed::DEFAULT_CALIBRATION);
    let (c, h, w) = model.input_shape();
    let nm = model.magnitudes();
    let cal = mixed::Calibration {
        images: &images[..nc * c * h * w],
        magnitudes: &magnitudes[..nc * nm],
        n: nc,
    };
    let opts = mixed::AutoOptions {
        max_dz,
        ..mixed::AutoOptions::default()
    };
    let local = StorageUrl::parse(location)
        .ok()
        .and_then(|u| u.local_path());
    let (choice, how) = match &local {
        Some(path) => {
            let bytes = std::fs::read(path)
                .with_context(|| format!("cannot read {} to hash it", path.display()))?;
            let (stored, reuse) = mixed::auto_for_file(path, &bytes, model, &cal, &opts)?;
            let how = match reuse {
                mixed::Reuse::Reused => format!("reused {}", mixed::plan_path(path).display()),
                mixed::Reuse::Chosen(why) => format!(
                    "measured now ({why}); stored in {}",
                    mixed::plan_path(path).display()
                ),
            };
            (stored.choice, how)
        }
        None => (
            mixed::choose(model, &cal, &opts)?,
            "measured now (a remote model: not stored)".to_string(),
        ),
    };
    if !quiet {
        eprintln!(
            "precision auto: {} | max |Δz| vs f32 {:.2e} on {} calibration galaxies (bound {:e}), \
             GEMMs ≈{:.2}x f32's speed; {how}",
            choice.plan.summary(),
            choice.max_dz,
            choice.calibration,
            choice.bound,
            choice.est_gemm_speedup,
        );
    }
    let mut m = model.clone();
    m.set_plan(&choice.plan)?;
    Ok(m)
}

/// `cai predict`.
pub async fn predict(a: PredictArgs, quiet: bool) -> Result<Outcome> {
    let fixed = match a.precision {
        PrecisionMode::Fixed(p) => p,
        PrecisionMode::Auto => Precision::F32,
    };
    if !quiet && fixed != Precision::F32 {
        eprintln!("precision {}", fixed.support());
    }
    let input = StorageUrl::parse(&a.input)?;
    let name = input.to_string();
    // The partition is read and decoded while the model loads (start-up time).
    let read = async {
        let bytes = input.get("").await?;
        let name = name.clone();
        tokio::task::spawn_blocking(move || cai_data::read_partition(&name, &bytes))
            .await?
            .map_err(anyhow::Error::from)
    };
    let load = async {
        load_model_with(&a.model, fixed)
            .await
            .with_context(|| format!("cannot load the model {}", a.model))
    };
    let (mut model, mut partition) = tokio::try_join!(load, read)?;
    if a.precision == PrecisionMode::Auto {
        let (location, max_dz) = (a.model.clone(), a.max_dz);
        let f32_model = model.clone();
        let (m, p) = tokio::task::spawn_blocking(move || -> Result<_> {
            let m = apply_auto(
                &f32_model,
                &location,
                &partition.images,
                &partition.magnitudes,
                partition.n,
                max_dz,
                quiet,
            )?;
            Ok((m, partition))
        })
        .await??;
        (model, partition) = (Arc::new(m), p);
    }
    let pool = thread_pool(a.threads)?;
    let batch = a.batch_size.max(1);
    let preds = tokio::task::spawn_blocking(move || -> Result<Predictions> {
        let progress = Arc::new(Progress::new(
            "predict",
            partition.n as u64,
            "galaxies",
            quiet,
        ));
        let p2 = progress.clone();
        let run = predict_partition(
            &*model,
            &pool,
            &partition,
            &name,
            batch,
            Some(&(Arc::new(move |n| p2.inc(n)) as _)),
        )?;
        progress.finish();
        Ok(Predictions::for_partition(
            &name,
            0,
            0,
            run.z_pred,
            partition.redshift.as_deref(),
        ))
    })
    .await??;
    write_atomic(&a.out, preds.to_csv().as_bytes())?;
    if !quiet {
        eprintln!("wrote {} predictions to {}", preds.len(), a.out.display());
    }
    Ok(Outcome::Ok)
}
