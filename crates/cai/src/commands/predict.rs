//! `cai predict`: one partition file in, CSV out. Other tools call this: keep it stable.

use std::sync::Arc;

use anyhow::{Context, Result};
use cai_core::predictions::Predictions;
use cai_core::StorageUrl;
use cai_engine::stages::{auto_precision, is_onnx_location, load_any_model, load_model_with};
use cai_engine::worker::{labels_of, predict_tensors};
use cai_model::kernels::Precision;
use cai_model::mixed::PrecisionMode;
use cai_model::{AstroMae, TensorModel};

use crate::cli::PredictArgs;
use crate::printer::Printer;
use crate::progress::Progress;
use crate::Outcome;

/// `cai predict`.
pub async fn predict(a: PredictArgs, printer: &Printer) -> Result<Outcome> {
    let model_at = a.model.required()?.to_string();
    let binds = a.bind.binds.clone();
    let mode = a.compute.mode();
    let fixed = match mode {
        PrecisionMode::Fixed(p) => p,
        PrecisionMode::Auto => Precision::F32,
    };
    if fixed != Precision::F32 {
        printer.note(format!("precision {}", fixed.support()));
    }
    let onnx = is_onnx_location(&model_at);
    if onnx && mode == PrecisionMode::Auto {
        anyhow::bail!(
            "--precision auto applies to the native AstroMAE only, not to the ONNX model {model_at}"
        );
    }
    let input = StorageUrl::parse(&a.input)?;
    let name = input.to_string();
    // The partition is read and decoded while the model loads (start-up time).
    let read = async {
        let bytes = input.get("").await?;
        let name = name.clone();
        tokio::task::spawn_blocking(move || cai_data::read_tensors(&name, &bytes, None))
            .await?
            .map_err(anyhow::Error::from)
    };
    let load = async {
        if onnx || !binds.is_empty() {
            // load_any_model refuses --bind with the native model, naming it.
            load_any_model(&model_at, &binds, fixed)
                .await
                .map(Loaded::Any)
        } else {
            load_model_with(&model_at, fixed).await.map(Loaded::Native)
        }
        .with_context(|| format!("cannot load the model {model_at}"))
    };
    let (loaded, mut partition) = tokio::try_join!(load, read)?;
    let mut model = match loaded {
        Loaded::Native(m) => m,
        Loaded::Any(m) => return predict_with(m, partition, name, &a, printer).await,
    };
    if mode == PrecisionMode::Auto {
        let (location, max_dz) = (model_at.clone(), a.max_dz);
        let f32_model = model.clone();
        let (m, line, p) = tokio::task::spawn_blocking(move || -> Result<_> {
            let (Some(images), Some(magnitudes)) = (partition.images(), partition.magnitudes())
            else {
                anyhow::bail!(
                    "--precision auto needs AstroMAE's `images` and `magnitudes`; the partition has {}",
                    partition.names().join(", ")
                );
            };
            let (m, line) = auto_precision(
                &f32_model,
                &location,
                images,
                magnitudes,
                partition.n,
                max_dz,
            )?;
            Ok((m, line, partition))
        })
        .await??;
        printer.note(line);
        (model, partition) = (Arc::new(m), p);
    }
    predict_with(model, partition, name, &a, printer).await
}

/// What `cai predict` loaded: the native model (which `--precision auto` may convert) or
/// any other.
enum Loaded {
    Native(Arc<AstroMae>),
    Any(Arc<dyn TensorModel>),
}

/// Predict every galaxy of `partition` with `model` and write the CSV to `a.out`.
async fn predict_with(
    model: Arc<dyn TensorModel>,
    partition: cai_data::TensorSet,
    name: String,
    a: &PredictArgs,
    printer: &Printer,
) -> Result<Outcome> {
    let pool = cai_engine::local::thread_pool(a.compute.threads())?;
    let batch = a.batch.or(crate::settings::PREDICT_BATCH);
    let quiet = printer.quiet();
    let labels = labels_of(&partition, a.bind.label.as_deref(), &name)?;
    let preds = tokio::task::spawn_blocking(move || -> Result<Predictions> {
        let progress = Arc::new(Progress::new(
            "predict",
            partition.n as u64,
            "galaxies",
            quiet,
        ));
        let p2 = progress.clone();
        let run = predict_tensors(
            &*model,
            &pool,
            &partition,
            &name,
            batch,
            Some(&(Arc::new(move |n| p2.inc(n)) as _)),
        )?;
        progress.finish();
        Ok(
            Predictions::for_partition(&name, 0, 0, run.z_pred, labels.as_deref())
                .with_outputs(run.outputs),
        )
    })
    .await??;
    cai_core::storage::write_file_atomic(&a.out, preds.to_csv().as_bytes())?;
    printer.note(format!(
        "wrote {} predictions to {}",
        preds.len(),
        a.out.display()
    ));
    Ok(Outcome::Ok)
}
