//! Parity of the Rust AstroMAE with PyTorch on the full-size model (f32).
//!
//! * `formula_*` (always run, no torch needed): weights and inputs come from a formula that
//!   `scripts/parity/make_formula_fixture.py` implements too (its docstring defines it); the
//!   committed fixture `tests/fixtures/parity_formula.json` (≈130 KB) holds PyTorch's
//!   outputs and penultimate features for 8 galaxies.
//! * `pt_*` (run when `CAI_PARITY_DIR` points at the output of
//!   `scripts/parity/make_fixtures.py`): every `.pt` form of a random full-size checkpoint,
//!   loaded with [`load_model_file`], against PyTorch's `expected.pt`; also converted to
//!   safetensors and loaded back.
//!
//! Limits: max |Δ| ≤ 1e-4 on outputs (the hard limit); the measured values are printed
//! (`cargo test -p cai-model --test parity -- --nocapture`).

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use cai_model::kernels::Precision;
use cai_model::{init, load_model_file, AstroMae, Config, LoadOptions, Model, ModelForm, Weights};

const HARD_LIMIT: f64 = 1e-4;

// The crate's directory when run: `cargo test` sets CARGO_MANIFEST_DIR for the test process, and a test
// binary reused from another checkout through a shared target dir would otherwise look in that
// checkout (the compile-time value is the fallback for binaries run outside cargo).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn fixture() -> serde_json::Value {
    let path = manifest_dir().join("tests/fixtures/parity_formula.json");
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

fn floats(v: &serde_json::Value) -> Vec<f32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect()
}

/// The formula model's weights, from the library (`cai_model::formula`, the code `cai
/// bench` judges precisions on); [`formula_weights_match_the_python_side`] checks them
/// against the fixture's key set, shapes and checksums.
fn formula_weights(_fx: &serde_json::Value) -> Weights {
    cai_model::formula::weights(&Config::astromae())
}

/// The fixture's inputs, from the library's formula.
fn inputs(n: usize) -> (Vec<f32>, Vec<f32>) {
    cai_model::formula::inputs(n, 5, 32)
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

#[test]
fn formula_weights_match_the_python_side() {
    let fx = fixture();
    let w = formula_weights(&fx);
    // Same key set as the Rust architecture (init's keys), apart from BN counters.
    let ours: Vec<String> = init::astromae_weights(0, &Config::astromae())
        .keys()
        .map(str::to_string)
        .collect();
    let theirs: Vec<String> = w.keys().map(str::to_string).collect();
    assert_eq!(ours, theirs);
    // The key set and shapes the Python side wrote.
    let listed = fx["keys"].as_array().unwrap();
    assert_eq!(listed.len(), w.len());
    for kv in listed {
        let key = kv[0].as_str().unwrap();
        let shape: Vec<usize> = kv[1]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d.as_u64().unwrap() as usize)
            .collect();
        assert_eq!(w.get(key).map(|t| t.shape.clone()), Some(shape), "{key}");
    }
    assert_eq!(
        w.metadata().get("heads").map(String::as_str),
        Some(fx["config"]["heads"].to_string().as_str())
    );
    let (mut sum, mut abs) = (0.0f64, 0.0f64);
    for (_, t) in w.iter() {
        for v in &t.data {
            sum += f64::from(*v);
            abs += f64::from(v.abs());
        }
    }
    let want_sum = fx["weights_sum"].as_f64().unwrap();
    let want_abs = fx["weights_abs_sum"].as_f64().unwrap();
    assert!(
        (sum - want_sum).abs() <= 1e-9 * want_abs,
        "{sum} vs {want_sum}"
    );
    assert!(
        (abs - want_abs).abs() <= 1e-9 * want_abs,
        "{abs} vs {want_abs}"
    );
    let n = fx["n"].as_u64().unwrap() as usize;
    let (img, mag) = inputs(n);
    let s: f64 = img.iter().map(|v| f64::from(*v)).sum();
    assert!((s - fx["input_images_sum"].as_f64().unwrap()).abs() < 1e-6);
    let s: f64 = mag.iter().map(|v| f64::from(*v)).sum();
    assert!((s - fx["input_magnitudes_sum"].as_f64().unwrap()).abs() < 1e-6);
    let model = AstroMae::load(&w, "formula").unwrap();
    assert_eq!(
        model.param_count() as u64,
        fx["parameters"].as_u64().unwrap()
    );
}

/// Runs `model` on the formula inputs and returns (max |Δ| output, max |Δ| features).
fn formula_deltas(model: &AstroMae, fx: &serde_json::Value) -> (f64, f64) {
    let n = fx["n"].as_u64().unwrap() as usize;
    let (img, mag) = inputs(n);
    let out = model.predict(&img, &mag, n).unwrap();
    let feats = model.features(&img, &mag, n).unwrap();
    (
        max_abs_diff(&out, &floats(&fx["output"])),
        max_abs_diff(&feats, &floats(&fx["features"])),
    )
}

#[test]
fn formula_full_size_model_matches_pytorch() {
    let fx = fixture();
    let w = formula_weights(&fx);
    let model = AstroMae::load(&w, "formula").unwrap();
    assert_eq!(model.config(), &Config::astromae());
    let (d_out, d_feat) = formula_deltas(&model, &fx);
    println!("formula weights, full size, f32: max |Δ| output {d_out:.3e}, features {d_feat:.3e}");
    assert!(d_out <= HARD_LIMIT, "output max |Δ| {d_out:e}");
    assert!(d_feat <= HARD_LIMIT, "features max |Δ| {d_feat:e}");

    // The same weights through the safetensors file form.
    let st = w.to_safetensors(&BTreeMap::new()).unwrap();
    let (m2, info) = load_model_file("formula.safetensors", &st).unwrap();
    assert_eq!(
        info.form,
        ModelForm::Safetensors {
            module_prefix: false
        }
    );
    let (d2, _) = formula_deltas(&m2, &fx);
    println!("formula weights via safetensors: max |Δ| output {d2:.3e}");
    assert!(d2 <= HARD_LIMIT);
}

/// The library's copy of the formula ([`cai_model::formula`], what `cai bench` judges
/// accuracy on) is this file's: the same tensors, inputs and PyTorch's outputs.
fn parity_dir() -> Option<PathBuf> {
    std::env::var_os("CAI_PARITY_DIR").map(PathBuf::from)
}

/// (images, magnitudes as f32, n) of the fixture `1.pt`, and the expected outputs.
fn pt_inputs(dir: &std::path::Path) -> (Vec<f32>, Vec<f32>, usize, Vec<f32>) {
    let ds =
        cai_torch::read_tensor_dataset("1.pt", &std::fs::read(dir.join("1.pt")).unwrap()).unwrap();
    let img = ds[0].to_f32().unwrap();
    assert_eq!(
        ds[1].dtype,
        cai_torch::DType::F64,
        "1.pt magnitudes are f64"
    );
    let mag = ds[1].to_f32().unwrap();
    let n = ds[0].shape[0];
    let exp = cai_torch::read_checkpoint(
        "expected.pt",
        &std::fs::read(dir.join("expected.pt")).unwrap(),
    )
    .unwrap();
    let out = exp.get("output").unwrap().to_f32().unwrap();
    (img, mag, n, out)
}

#[test]
fn pt_every_form_matches_pytorch() {
    let Some(dir) = parity_dir() else {
        skip_outside_ci("CAI_PARITY_DIR");
        return;
    };
    let (img, mag, n, expected) = pt_inputs(&dir);
    let forms = [
        ("model_dp.pt", ModelForm::WholeModuleDataParallel),
        (
            "model_dp_cuda_tagged.pt",
            ModelForm::WholeModuleDataParallel,
        ),
        ("model.pt", ModelForm::WholeModule),
        (
            "state_dict.pt",
            ModelForm::StateDict {
                module_prefix: false,
            },
        ),
        (
            "state_dict_module_prefix.pt",
            ModelForm::StateDict {
                module_prefix: true,
            },
        ),
    ];
    let mut converted = None;
    for (file, form) in forms {
        let bytes = std::fs::read(dir.join(file)).unwrap();
        let (model, info) = load_model_file(file, &bytes).unwrap();
        assert_eq!(info.form, form, "{file}");
        assert!(
            info.unused_keys.is_empty(),
            "{file}: {:?}",
            info.unused_keys
        );
        if matches!(
            form,
            ModelForm::WholeModule | ModelForm::WholeModuleDataParallel
        ) {
            assert_eq!(info.heads_attr, Some(3), "{file}");
            assert_eq!(info.patch_attr, Some(4), "{file}");
        }
        if file.contains("cuda") {
            assert_eq!(info.locations, vec!["cuda:0".to_string()]);
        }
        let out = model.predict(&img, &mag, n).unwrap();
        let d = max_abs_diff(&out, &expected);
        println!("{file} ({form}): max |Δ| output {d:.3e} over {n} galaxies");
        assert!(d <= HARD_LIMIT, "{file}: max |Δ| {d:e}");
        if file == "model_dp.pt" {
            let mut w = cai_model::read_model_weights(file, &bytes).unwrap().weights;
            model.write_back(&mut w);
            converted = Some(w.to_safetensors(&BTreeMap::new()).unwrap());
        }
    }
    let st = converted.unwrap();
    let (model, info) = load_model_file("converted.safetensors", &st).unwrap();
    assert_eq!(
        info.form,
        ModelForm::Safetensors {
            module_prefix: false
        }
    );
    let d = max_abs_diff(&model.predict(&img, &mag, n).unwrap(), &expected);
    println!("model_dp.pt converted to safetensors: max |Δ| output {d:.3e}");
    assert!(d <= HARD_LIMIT);
}

/// (max, mean) |Δz| of `model` converted to each reduced precision against the same
/// weights in f32, on `n` galaxies.
fn precision_deltas(
    w: &Weights,
    name: &str,
    img: &[f32],
    mag: &[f32],
    n: usize,
) -> Vec<(Precision, f64, f64)> {
    let f32_model = AstroMae::load(w, name).unwrap();
    let z = f32_model.predict(img, mag, n).unwrap();
    [Precision::Bf16, Precision::Int8, Precision::Int16]
        .into_iter()
        .map(|p| {
            let opts = LoadOptions {
                precision: p,
                ..LoadOptions::default()
            };
            let m = AstroMae::load_with(w, name, &opts).unwrap();
            assert_eq!(m.precision(), Some(p));
            let zp = m.predict(img, mag, n).unwrap();
            let d: Vec<f64> = z
                .iter()
                .zip(&zp)
                .map(|(a, b)| (f64::from(*a) - f64::from(*b)).abs())
                .collect();
            let max = d.iter().copied().fold(0.0, f64::max);
            let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
            println!("{name}, {p}: max |Δz| {max:.3e}, mean |Δz| {mean:.3e} against f32 over {n} galaxies");
            (p, max, mean)
        })
        .collect()
}

/// Measured |Δz| against f32 (8 galaxies each; only the trunks are converted, see
/// `AstroMae::set_precision`): formula fixture bf16 max 2.8e-3, int8 max 5.6e-3, int16
/// max 3.9e-4; `model.pt` fixture bf16 max 1.9e-3, int8 max 1.1e-2, int16 max 2.2e-4 (bf16
/// with the activations rounded too, as `vdpbf16ps` takes them). With the attention's
/// products in bf16 / int16 too (on CPUs with kernels for them; AVX-512 BF16 and VNNI,
/// Zen 4, 2026-12-07): formula bf16 2.4e-3, int16 2.8e-4; `model.pt` bf16 3.1e-3, int16
/// 1.6e-4. The bf16 and int8 limits leave 1.6-2.5x headroom; int16's is issue #7's target.
fn limit(p: Precision) -> f64 {
    match p {
        Precision::Int8 => 2.5e-2,
        Precision::Int16 => 1e-3,
        _ => 5e-3,
    }
}

#[test]
fn formula_reduced_precisions_stay_close_to_f32() {
    let fx = fixture();
    let w = formula_weights(&fx);
    let n = fx["n"].as_u64().unwrap() as usize;
    let (img, mag) = inputs(n);
    for (p, max, _) in precision_deltas(&w, "formula", &img, &mag, n) {
        assert!(max > 0.0, "{p} changed nothing");
        assert!(max <= limit(p), "{p}: max |Δz| {max:e} > {:e}", limit(p));
    }
}

#[test]
fn pt_reduced_precisions_stay_close_to_f32() {
    let Some(dir) = parity_dir() else {
        skip_outside_ci("CAI_PARITY_DIR");
        return;
    };
    let (img, mag, n, _) = pt_inputs(&dir);
    let bytes = std::fs::read(dir.join("model.pt")).unwrap();
    let w = cai_model::read_model_weights("model.pt", &bytes)
        .unwrap()
        .weights;
    for (p, max, _) in precision_deltas(&w, "model.pt", &img, &mag, n) {
        assert!(max <= limit(p), "{p}: max |Δz| {max:e} > {:e}", limit(p));
    }
}

/// Say the test is skipped for want of `var`; under CI (`CI=true`), where `.ci/run` makes
/// the PyTorch fixtures, fail instead.
fn skip_outside_ci(var: &str) {
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI is set but {var} is not (.ci/run makes the PyTorch fixtures)"
    );
    eprintln!("{var} not set: skipping");
}
