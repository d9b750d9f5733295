//! The stage functions every engine shares: find partitions, write the plan, clear old
//! results, load the model. Engines only decide where ranks run.

use std::sync::Arc;

use cai_core::layout;
use cai_core::plan::{is_partition_key, make_plan, PartitionRef, Plan, PlanRequest};
use cai_core::StorageUrl;
use cai_data::partition::Manifest;
use cai_model::kernels::Precision;
use cai_model::mixed;
use cai_model::{
    build_model, read_model_weights, AstroMae, Model, ModelFileInfo, ModelWeights, TensorModel,
    TensorSpec,
};

use crate::error::{Error, Result};

/// The partitions under a data location: from `manifest.json` when there is one (sizes,
/// checksums and galaxy counts known), else by listing `*.pt` / `*.safetensors` files.
pub async fn find_partitions(data: &StorageUrl) -> Result<(Vec<PartitionRef>, Option<Manifest>)> {
    if let Some(bytes) = data.get_opt(layout::MANIFEST).await? {
        let manifest = Manifest::from_json(&data.url_of(layout::MANIFEST), &bytes)?;
        let parts = manifest
            .partitions
            .iter()
            .map(|e| PartitionRef {
                key: e.key.clone(),
                galaxies: Some(e.galaxies),
                bytes: e.bytes,
                sha256: Some(e.sha256.clone()),
                first_galaxy: Some(e.first_galaxy),
            })
            .collect();
        return Ok((parts, Some(manifest)));
    }
    let parts = data
        .list()
        .await?
        .into_iter()
        .filter(|o| !o.key.contains('/') && is_partition_key(&o.key))
        .map(|o| PartitionRef {
            key: o.key,
            galaxies: None,
            bytes: o.size,
            sha256: None,
            first_galaxy: None,
        })
        .collect();
    Ok((parts, None))
}

/// Plan a run over the partitions under `req.data` and write `plan.json` and the original's
/// `payload.json` to the results location.
pub async fn plan_run(req: &PlanRequest) -> Result<Plan> {
    let data = StorageUrl::parse(&req.data)?;
    let (parts, _) = find_partitions(&data).await?;
    if parts.is_empty() {
        return Err(Error::Partition {
            file: data.to_string(),
            reason: format!(
                "no partitions here (no {}, no *.pt or *.safetensors); run `cai partition` first",
                layout::MANIFEST
            ),
        });
    }
    let plan = make_plan(req, parts)?;
    write_plan(&plan).await?;
    Ok(plan)
}

/// Write `plan.json` and `payload.json` to the plan's results location.
pub async fn write_plan(plan: &Plan) -> Result<()> {
    let results = StorageUrl::parse(&plan.results)?;
    results.put(layout::PLAN, pretty("plan", plan)?).await?;
    results
        .put(layout::PAYLOAD, pretty("payload", &plan.payload_json())?)
        .await?;
    Ok(())
}

/// Pretty JSON bytes of a document we write; `what` names it in the error.
pub(crate) fn pretty<T: serde::Serialize + ?Sized>(what: &'static str, v: &T) -> Result<Vec<u8>> {
    serde_json::to_vec_pretty(v).map_err(|source| Error::Encode { what, source })
}

/// Remove the outputs of an earlier run at this location (rank reports, failures,
/// predictions, combined and summary files), before a fresh run writes new ones.
pub async fn clear_results(results: &StorageUrl) -> Result<()> {
    use futures::{StreamExt, TryStreamExt};
    let old = results.list().await?;
    futures::stream::iter(
        old.iter()
            .filter(|o| layout::is_run_output(&o.key))
            .map(|o| results.delete(&o.key)),
    )
    .buffer_unordered(cai_core::results::PARALLEL_READS)
    .try_collect::<Vec<()>>()
    .await?;
    Ok(())
}

/// True when `location` names an ONNX model (`.onnx`), which [`load_any_model`] runs with
/// tract instead of the native AstroMAE.
pub fn is_onnx_location(location: &str) -> bool {
    location
        .rsplit('/')
        .next()
        .is_some_and(|n| n.to_ascii_lowercase().ends_with(".onnx"))
}

/// File names a model can have: ONNX, the original's PyTorch files, safetensors.
const MODEL_EXTENSIONS: [&str; 4] = [".onnx", ".pt", ".pth", ".safetensors"];

/// The one model file under `folder` (any depth), for the original's code-folder payload
/// (`"object_type": "folder"` without `--model`). None or several is an error listing
/// what was found and how to choose.
pub async fn find_folder_model(folder: &str) -> Result<String> {
    let url = StorageUrl::parse(folder)?;
    let found: Vec<String> = url
        .list()
        .await?
        .into_iter()
        .map(|o| o.key)
        .filter(|k| {
            let lower = k.to_ascii_lowercase();
            MODEL_EXTENSIONS.iter().any(|e| lower.ends_with(e))
        })
        .collect();
    match found.as_slice() {
        [one] => Ok(url.url_of(one)),
        [] => Err(Error::Request {
            what: format!(
                "no model file (.onnx, .pt, .pth, .safetensors) in the payload's code folder {url}"
            ),
            hint: "put the model file there, or give --model FILE".into(),
        }),
        several => Err(Error::Request {
            what: format!(
                "{} model files in the payload's code folder {url}: {}",
                several.len(),
                several.join(", ")
            ),
            hint: format!(
                "choose one with --model, e.g. --model {}",
                url.url_of(&several[0])
            ),
        }),
    }
}

/// The tensors a manifest says every partition holds, by name, with their per-galaxy
/// shapes (as fed: f32): what model inputs bind to. An older manifest gives AstroMAE's
/// (`images` `[C, H, W]`, `magnitudes` `[C]`, `redshift` `[]` when labelled, `object_id`).
pub fn manifest_specs(manifest: &Manifest) -> Vec<TensorSpec> {
    manifest
        .tensor_infos()
        .iter()
        .map(|t| TensorSpec::f32(&t.name, &t.shape))
        .collect()
}

/// Load any model the workers run: an ONNX file (`.onnx`; inputs bound by `binds`, pairs
/// `(INPUT, TENSOR)`) or the native AstroMAE at `precision` (safetensors or `.pt`). The one
/// loader of every engine's workers, so Slurm and Lambda run what `cai run` runs.
pub async fn load_any_model(
    location: &str,
    binds: &[(String, String)],
    precision: Precision,
) -> Result<Arc<dyn TensorModel>> {
    if is_onnx_location(location) {
        if precision != Precision::F32 {
            return Err(Error::Request {
                what: format!("--precision {precision} with the ONNX model {location}"),
                hint:
                    "precisions other than f32 apply to the native AstroMAE only; drop --precision"
                        .into(),
            });
        }
        return load_onnx(location, binds).await;
    }
    if !binds.is_empty() {
        return Err(Error::Request {
            what: format!("--bind with the native model {location}"),
            hint: "the native AstroMAE always reads `images` and `magnitudes`; --bind is for .onnx models"
                .into(),
        });
    }
    let model: Arc<dyn TensorModel> = load_model_with(location, precision).await?;
    Ok(model)
}

/// The model of `plan` (its `model` and `binds`), as every engine's workers load it.
pub async fn load_plan_model(plan: &Plan, precision: Precision) -> Result<Arc<dyn TensorModel>> {
    load_any_model(&plan.model, &plan.binds, precision).await
}

/// Refuse a plan whose model cannot run, before any rank starts: an ONNX model is loaded
/// (an operator tract lacks, a shape it cannot resolve fail here, naming the node,
/// operator or input) and its inputs are bound to the data's tensors: those the manifest
/// describes, or (without one) those of the plan's first partition. A native model is
/// checked when the engine loads it.
pub async fn check_plan_model(plan: &Plan) -> Result<()> {
    if !is_onnx_location(&plan.model) {
        return Ok(());
    }
    let model = load_plan_model(plan, Precision::F32).await?;
    let data = StorageUrl::parse(&plan.data)?;
    let specs = match find_partitions(&data).await? {
        (_, Some(manifest)) => manifest_specs(&manifest),
        (_, None) => {
            let Some(first) = plan.partitions.first() else {
                return Ok(());
            };
            let url = data.url_of(&first.key);
            let bytes = data.get(&first.key).await?;
            let p = tokio::task::spawn_blocking(move || cai_data::read_tensors(&url, &bytes, None))
                .await
                .map_err(|source| Error::Join {
                    task: format!("reading {} to bind the model's inputs", first.key),
                    source,
                })??;
            crate::worker::tensor_specs(&p)
        }
    };
    cai_model::check_bindings(&*model, &specs)?;
    Ok(())
}

#[cfg(feature = "onnx")]
async fn load_onnx(location: &str, binds: &[(String, String)]) -> Result<Arc<dyn TensorModel>> {
    let url = StorageUrl::parse(location)?;
    let name = url.to_string();
    let bytes = url.get("").await?;
    let binds = binds.to_vec();
    tokio::task::spawn_blocking(move || -> Result<Arc<dyn TensorModel>> {
        let t = std::time::Instant::now();
        let model = cai_model::OnnxModel::load(&name, &bytes)?.with_bindings(&binds)?;
        tracing::debug!(
            ms = ms(t),
            "model: loaded and optimised the ONNX graph {name}"
        );
        let model: Arc<dyn TensorModel> = Arc::new(model);
        Ok(model)
    })
    .await
    .map_err(|source| Error::Join {
        task: format!("ONNX loader ({location})"),
        source,
    })?
}

#[cfg(not(feature = "onnx"))]
async fn load_onnx(location: &str, _: &[(String, String)]) -> Result<Arc<dyn TensorModel>> {
    Err(Error::Request {
        what: format!("the ONNX model {location}"),
        hint: "this cai was built without the `onnx` feature; build it with default features"
            .into(),
    })
}

/// Read a model file from a location: safetensors, or the original's PyTorch `.pt` (whole
/// module, bare or in `DataParallel`, CPU- or GPU-saved; or a state_dict with or without
/// `module.`), auto-detected and read without executing pickled code.
pub async fn load_model(location: &str) -> Result<Arc<AstroMae>> {
    Ok(Arc::new(load_model_info(location).await?.0))
}

/// [`load_model`], then converts the weights to `precision`
/// ([`AstroMae::set_precision`]).
pub async fn load_model_with(
    location: &str,
    precision: cai_model::kernels::Precision,
) -> Result<Arc<AstroMae>> {
    let mut model = load_model_info(location).await?.0;
    model.set_precision(precision)?;
    Ok(Arc::new(model))
}

/// [`load_model`], also returning what the file says about itself (form, classes…).
pub async fn load_model_info(location: &str) -> Result<(AstroMae, ModelFileInfo)> {
    let (mw, name) = read_weights(location).await?;
    let loaded = tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let loaded = build_model(&name, &mw);
        tracing::debug!(ms = ms(t), "model: packed the layers");
        loaded
    })
    .await
    .map_err(|source| Error::Join {
        task: format!("model loader ({location})"),
        source,
    })??;
    Ok(loaded)
}

/// The weights of a model file (any form [`load_model`] reads) and the file's name for
/// messages, without building the model: for commands that save weights again
/// (`cai model fit`, `cai model convert`; see [`AstroMae::write_back`]).
pub async fn read_weights(location: &str) -> Result<(ModelWeights, String)> {
    let url = StorageUrl::parse(location)?;
    let name = url.to_string();
    let t = std::time::Instant::now();
    let bytes = match url.local_path() {
        Some(path) => {
            // A local file is mapped rather than read: no copy, no zeroed buffer.
            let file = tokio::task::spawn_blocking(move || cai_model::MappedFile::open(&path))
                .await
                .map_err(|source| Error::Join {
                    task: format!("model mapper ({name})"),
                    source,
                })?;
            match file {
                Ok(map) => ModelBytes::Mapped(map),
                // What cannot be mapped (a pipe, a missing file) is read, which reports
                // the error as every other read does.
                Err(_) => ModelBytes::Read(url.get("").await?),
            }
        }
        None => ModelBytes::Read(url.get("").await?),
    };
    tracing::debug!(ms = ms(t), "model: opened {name}");
    tokio::task::spawn_blocking(move || {
        let t = std::time::Instant::now();
        let mw = read_model_weights(&name, bytes.as_ref());
        tracing::debug!(ms = ms(t), "model: decoded and checked the weights");
        Ok((mw?, name))
    })
    .await
    .map_err(|source| Error::Join {
        task: format!("model decoder ({location})"),
        source,
    })?
}

/// A model file's bytes: mapped from a local file, or read from an object store.
enum ModelBytes {
    Mapped(cai_model::MappedFile),
    Read(bytes::Bytes),
}

impl AsRef<[u8]> for ModelBytes {
    fn as_ref(&self) -> &[u8] {
        match self {
            ModelBytes::Mapped(m) => m.as_ref(),
            ModelBytes::Read(b) => b,
        }
    }
}

fn ms(t: std::time::Instant) -> f64 {
    (t.elapsed().as_secs_f64() * 1e4).round() / 10.0
}

/// A model with its last layer fitted ([`fit_last_layer`]): what `cai model fit` writes.
#[derive(Debug, Clone)]
pub struct Fitted {
    /// The whole model, as a safetensors file.
    pub safetensors: Vec<u8>,
    /// R² of the fit on the training galaxies.
    pub r2: f64,
    /// Training galaxies.
    pub galaxies: usize,
}

/// Fit only the last Linear layer (`concat_block.2`) of the model at `model` by ridge
/// regression (penalty `ridge`) on the penultimate features of the labelled dataset file
/// `train`, on `threads` threads; everything else stays as it is.
pub async fn fit_last_layer(
    model: &str,
    train: &std::path::Path,
    ridge: f64,
    threads: Option<usize>,
) -> Result<Fitted> {
    let (mw, name) = read_weights(model).await.map_err(|e| Error::LoadModel {
        model: model.to_string(),
        source: Box::new(e),
    })?;
    let reader = cai_data::DatasetReader::open(train)?;
    let data = reader.read_range(0, reader.len() as usize)?;
    let Some(z) = data.redshift.clone() else {
        return Err(Error::Request {
            what: format!("{} has no redshift labels to fit on", train.display()),
            hint: "give labelled galaxies (`cai synth` makes them)".into(),
        });
    };
    let pool = crate::local::thread_pool(threads)?;
    let source = model.to_string();
    tokio::task::spawn_blocking(move || -> Result<Fitted> {
        let mut m = build_model(&name, &mw)?.0;
        let r2 = pool.install(|| {
            cai_model::fit::fit_last_layer(&mut m, &data.images, &data.magnitudes, &z, data.n, ridge)
        })?;
        let mut meta = std::collections::BTreeMap::new();
        meta.insert(
            "cai.weights".to_string(),
            format!(
                "{source} with its last layer (concat_block.2) fitted by ridge regression on {} synthetic galaxies",
                data.n
            ),
        );
        let mut weights = mw.weights;
        m.write_back(&mut weights);
        Ok(Fitted {
            safetensors: weights.to_safetensors(&meta)?,
            r2,
            galaxies: data.n,
        })
    })
    .await
    .map_err(|source| Error::Join {
        task: "fitting".into(),
        source,
    })?
}

/// `--precision auto` for `model` (f32), loaded from `location`: the stored choice beside a
/// local model file when it still fits, else a new one measured on the first
/// [`mixed::DEFAULT_CALIBRATION`] galaxies of `images`/`magnitudes` (stored beside a local
/// model). Returns the converted model and a line naming the mix and its error.
pub fn auto_precision(
    model: &AstroMae,
    location: &str,
    images: &[f32],
    magnitudes: &[f32],
    n: usize,
    max_dz: f64,
) -> Result<(AstroMae, String)> {
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
            let bytes = std::fs::read(path).map_err(|source| cai_data::Error::Io {
                op: "read (to hash it)",
                path: path.clone(),
                source,
            })?;
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
    let line = format!(
        "precision auto: {} | max |Δz| vs f32 {:.2e} on {} calibration galaxies (bound {:e}; \
         {}), GEMMs ≈{:.2}x f32's speed; {how}",
        choice.plan.summary(),
        choice.max_dz,
        choice.calibration,
        choice.bound,
        held_out(&choice),
        choice.est_gemm_speedup,
    );
    let mut m = model.clone();
    m.set_plan(&choice.plan)?;
    Ok((m, line))
}

/// How `choice` was checked on galaxies it was not chosen on, for the summary line.
pub(crate) fn held_out(choice: &mixed::AutoChoice) -> String {
    match choice.held_out_max_dz {
        Some(d) => format!(
            "chosen on {} under {:.1e}, {d:.2e} on the {} held out",
            choice.calibration - choice.held_out,
            choice.target,
            choice.held_out
        ),
        None => "none held out".to_string(),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn a_code_folder_with_one_model_file_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let folder = dir.path().join("Anomaly Detection");
        std::fs::create_dir_all(folder.join("Inference")).unwrap();
        std::fs::write(folder.join("Inference/inference.py"), b"print()").unwrap();
        std::fs::write(folder.join("Inference/model.onnx"), b"x").unwrap();
        let f = folder.to_str().unwrap();
        let got = find_folder_model(f).await.unwrap();
        assert!(got.ends_with("Inference/model.onnx"), "{got}");

        std::fs::write(folder.join("weights.safetensors"), b"x").unwrap();
        let e = find_folder_model(f).await.unwrap_err().to_string();
        assert!(e.contains("2 model files"), "{e}");
        assert!(
            e.contains("model.onnx") && e.contains("weights.safetensors"),
            "{e}"
        );
        assert!(e.contains("--model"), "{e}");

        let empty = dir.path().join("empty");
        std::fs::create_dir_all(&empty).unwrap();
        std::fs::write(empty.join("inference.py"), b"").unwrap();
        let e = find_folder_model(empty.to_str().unwrap())
            .await
            .unwrap_err()
            .to_string();
        assert!(e.contains("no model file"), "{e}");
    }
}
