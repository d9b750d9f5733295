//! `cai predict`: one partition file in, CSV out. Other tools call this: keep it stable.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::predictions::Predictions;
use cai_core::StorageUrl;
use cai_engine::local::available_cores;
use cai_engine::stages::load_model_with;
use cai_engine::worker::predict_partition;

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

/// `cai predict`.
pub async fn predict(a: PredictArgs, quiet: bool) -> Result<Outcome> {
    if !quiet && a.precision != cai_model::kernels::Precision::F32 {
        eprintln!("precision {}", a.precision.support());
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
        load_model_with(&a.model, a.precision)
            .await
            .with_context(|| format!("cannot load the model {}", a.model))
    };
    let (model, partition) = tokio::try_join!(load, read)?;
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
