//! `cai model init` and `cai model fit`.

use std::collections::BTreeMap;

use anyhow::{Context, Result};
use cai_engine::stages::{load_model_info, read_weights};
use cai_model::{init, Config};

use crate::cli::{ModelConvertArgs, ModelFitArgs, ModelInitArgs, ModelInspectArgs};
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
    let (mw, name) = read_weights(model_path)
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
        let mut m = cai_model::build_model(&name, &mw)
            .with_context(|| format!("cannot load the model {name}"))?
            .0;
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
        let mut weights = mw.weights;
        m.write_back(&mut weights);
        write_atomic(&out, &weights.to_safetensors(&meta)?)?;
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

/// The description `cai model inspect` prints.
#[derive(Debug, serde::Serialize)]
struct Inspection {
    file: String,
    form: String,
    locations: Vec<String>,
    classes: Vec<String>,
    patch: usize,
    tokens: usize,
    depth: usize,
    heads: usize,
    heads_from: &'static str,
    dim: usize,
    mlp: usize,
    input: [usize; 3],
    widths: BTreeMap<&'static str, usize>,
    parameters: usize,
    tensors: usize,
    flops_per_galaxy: u64,
    /// What cai runs of them (the last block's `fc2` on the pooled row only).
    executed_flops_per_galaxy: u64,
    unused_keys: Vec<String>,
}

/// `cai model inspect`.
pub async fn inspect(a: ModelInspectArgs) -> Result<Outcome> {
    let (model, info) = load_model_info(&a.file)
        .await
        .with_context(|| format!("cannot load the model {}", a.file))?;
    let cfg = model.config();
    let widths = BTreeMap::from([
        ("vit_block", 1096),
        ("inception", 1096),
        ("magnitude_block", 1024),
        ("concat_block", model.feature_width()),
    ]);
    let i = Inspection {
        file: a.file.clone(),
        form: info.form.to_string(),
        locations: info.locations,
        classes: info.classes,
        patch: cfg.patch,
        tokens: cfg.tokens,
        depth: cfg.depth,
        heads: cfg.heads,
        heads_from: if info.heads_attr.is_some() {
            "blocks.0.attn.num_heads"
        } else {
            "file metadata `heads`, else dim/64"
        },
        dim: cfg.dim,
        mlp: cfg.mlp,
        input: [cfg.channels, cfg.image, cfg.image],
        widths,
        parameters: info.param_count,
        tensors: info.tensors,
        flops_per_galaxy: cfg.flops_per_galaxy(),
        executed_flops_per_galaxy: cfg.executed_flops_per_galaxy(),
        unused_keys: info.unused_keys,
    };
    if a.json {
        println!("{}", serde_json::to_string_pretty(&i)?);
        return Ok(Outcome::Ok);
    }
    let none = |v: &[String]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("file:          {}", i.file);
    println!("form:          {}", i.form);
    println!("locations:     {}", none(&i.locations));
    println!("classes:       {}", none(&i.classes));
    println!(
        "input:         {}x{}x{} (bands x height x width)",
        i.input[0], i.input[1], i.input[2]
    );
    println!("patch:         {}", i.patch);
    println!("tokens:        {} patches + 1 cls", i.tokens);
    println!("depth:         {}", i.depth);
    println!("heads:         {} (from {})", i.heads, i.heads_from);
    println!(
        "widths:        dim {}, mlp {}, vit_block {}, inception {}, magnitude_block {}, concat_block {}",
        i.dim, i.mlp, i.widths["vit_block"], i.widths["inception"], i.widths["magnitude_block"],
        i.widths["concat_block"]
    );
    println!("parameters:    {}", i.parameters);
    println!("tensors:       {}", i.tensors);
    println!(
        "FLOPs/galaxy:  {:.3} GFLOP (multiply-adds x 2; cai runs {:.3} of them)",
        i.flops_per_galaxy as f64 / 1e9,
        i.executed_flops_per_galaxy as f64 / 1e9
    );
    println!("unused keys:   {}", none(&i.unused_keys));
    Ok(Outcome::Ok)
}

/// `cai model convert`.
pub async fn convert(a: ModelConvertArgs, quiet: bool) -> Result<Outcome> {
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
    write_atomic(&a.out, &weights.to_safetensors(&meta)?)?;
    if !quiet {
        eprintln!(
            "wrote {} ({} parameters, from {})",
            a.out.display(),
            info.param_count,
            info.form
        );
    }
    Ok(Outcome::Ok)
}
