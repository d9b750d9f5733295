//! `cai model init` and `cai model fit`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use cai_engine::stages::{fit_last_layer, load_model_info, read_weights};

use crate::cli::{ModelConvertArgs, ModelFitArgs, ModelInitArgs, ModelInspectArgs};
use crate::printer::Printer;
use crate::Outcome;
use cai_core::storage::write_file_atomic;

/// `cai model init`.
pub async fn init(a: ModelInitArgs, printer: &Printer) -> Result<Outcome> {
    write_file_atomic(&a.out, &cai_model::init::seeded_safetensors(a.seed)?)?;
    printer.note(format!(
        "wrote seeded (untrained) AstroMAE weights, seed {}, to {}",
        a.seed,
        a.out.display()
    ));
    Ok(Outcome::Ok)
}

/// `cai model fit`.
pub async fn fit(a: ModelFitArgs, printer: &Printer) -> Result<Outcome> {
    let model = a.model.required()?;
    let f = fit_last_layer(model, &a.train, a.ridge, a.threads.threads).await?;
    write_file_atomic(&a.out, &f.safetensors)?;
    printer.note(format!(
        "wrote {} (fitted on {} labelled galaxies, training R² {:.3})",
        a.out.display(),
        f.galaxies,
        f.r2
    ));
    Ok(Outcome::Ok)
}

/// `cai model inspect`.
pub async fn inspect(a: ModelInspectArgs, printer: &Printer) -> Result<Outcome> {
    #[cfg(feature = "onnx")]
    {
        if cai_engine::stages::is_onnx_location(&a.file) {
            let url = cai_core::StorageUrl::parse(&a.file)?;
            let bytes = url
                .get("")
                .await
                .with_context(|| format!("cannot read the model {}", a.file))?;
            let file = a.file.clone();
            let i = tokio::task::spawn_blocking(move || {
                cai_model::onnx::OnnxInspection::read(&file, &bytes)
            })
            .await??;
            if !printer.with_json(a.json.json).json(&i)? {
                printer.result(i);
            }
            return Ok(Outcome::Ok);
        }
    }
    let (model, info) = load_model_info(&a.file)
        .await
        .with_context(|| format!("cannot load the model {}", a.file))?;
    let i = cai_model::inspect::Inspection::new(&a.file, &model, info);
    if !printer.with_json(a.json.json).json(&i)? {
        printer.result(i);
    }
    Ok(Outcome::Ok)
}

/// `cai model convert`.
pub async fn convert(a: ModelConvertArgs, printer: &Printer) -> Result<Outcome> {
    let (mw, name) = read_weights(&a.file)
        .await
        .with_context(|| format!("cannot load the model {}", a.file))?;
    // Built to check that the weights make a model, and for `heads`.
    let (model, info) = cai_model::build_model(&name, &mw)
        .with_context(|| format!("cannot load the model {}", a.file))?;
    let mut meta = BTreeMap::new();
    meta.insert(
        "cai.weights".to_string(),
        format!("converted from {} ({})", a.file, info.form),
    );
    let mut weights = mw.weights;
    model.write_back(&mut weights);
    write_file_atomic(&a.out, &weights.to_safetensors(&meta)?)?;
    printer.note(format!(
        "wrote {} ({} parameters, from {})",
        a.out.display(),
        info.param_count,
        info.form
    ));
    Ok(Outcome::Ok)
}
