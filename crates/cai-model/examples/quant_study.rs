//! Where each reduced precision's error comes from, on the real kernels: max |Δz| against
//! f32 when only one layer (patch embedding, each block's `qkv`/`proj`/`fc1`/`fc2`, the
//! CNN, the head) is lowered to bf16, int16 or int8, with and without SmoothQuant factors
//! on `qkv`/`fc1`; then every uniform precision and the mix `--precision auto` picks.
//! Uses only the public API ([`PrecisionPlan`], [`mixed::choose`]).
//!
//! The model is the PyTorch parity fixtures' (`$CAI_PARITY_DIR/model.pt` over `1.pt`) when
//! `CAI_PARITY_DIR` is set, else the full-size formula model of the committed fixture on
//! formula inputs:
//! `CAI_PARITY_DIR=~/.cache/cai-parity cargo run --release -p cai-model --example quant_study [galaxies] [max-dz]`
#![allow(clippy::print_stdout)]

use cai_model::kernels::Precision;
use cai_model::mixed::{self, AutoOptions, Calibration};
use cai_model::{Model, PlanLayer, PrecisionPlan};

mod common;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let n_max: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(16);
    let max_dz: f64 = args
        .next()
        .and_then(|s| s.parse().ok())
        .unwrap_or(mixed::DEFAULT_MAX_DZ);
    let common::Setup {
        model,
        images,
        magnitudes: mags,
        source,
    } = common::model_and_inputs(n_max)?;
    let (c, h, w) = model.input_shape();
    let n = (images.len() / (c * h * w)).min(n_max);
    let (img, mag) = (&images[..n * c * h * w], &mags[..n * 5]);
    println!(
        "{source}: {n} galaxies, kernels {}, bound {max_dz:e}",
        mixed::kernel_tier()
    );
    let cal = Calibration {
        images: img,
        magnitudes: mag,
        n,
    };
    let z = model.predict(img, mag, n)?;
    let depth = model.config().depth;
    for p in [Precision::Bf16, Precision::Int16, Precision::Int8] {
        let dz = mixed::plan_dz(&model, &PrecisionPlan::uniform(p, depth), &cal, &z)?;
        let mut all = PrecisionPlan::uniform(p, depth);
        all.head = p;
        let dz_all = mixed::plan_dz(&model, &all, &cal, &z)?;
        println!("uniform {p}: max |Δz| {dz:.2e} (head f32), {dz_all:.2e} (head {p} too)");
    }
    let means = model.layer_input_means(img, mag, n)?;
    for p in [Precision::Int16, Precision::Int8] {
        let plan = with_means(PrecisionPlan::uniform(p, depth), &means);
        let dz = mixed::plan_dz(&model, &plan, &cal, &z)?;
        println!("uniform {p} with bias correction: max |Δz| {dz:.2e} (head f32)");
    }
    let opts = AutoOptions {
        max_dz,
        ..AutoOptions::default()
    };
    // Held out: `auto` (and its input means) chosen on one half of the galaxies, its error
    // measured on the other half.
    let (px, half) = (c * h * w, n / 2);
    if half > 0 {
        for (a, b) in [(0..half, half..n), (half..n, 0..half)] {
            let part = |r: &std::ops::Range<usize>| Calibration {
                images: &img[r.start * px..r.end * px],
                magnitudes: &mag[r.start * 5..r.end * 5],
                n: r.len(),
            };
            let (ca, cb) = (part(&a), part(&b));
            let zb = model.predict(cb.images, cb.magnitudes, cb.n)?;
            let ch = mixed::choose(&model, &ca, &opts)?;
            let dz = mixed::plan_dz(&model, &ch.plan, &cb, &zb)?;
            println!(
                "held out: auto chosen on galaxies {a:?} (max |Δz| {:.2e} there), {dz:.2e} on {b:?}",
                ch.max_dz
            );
            println!("  {}", ch.plan.summary());
        }
    }
    let choice = mixed::choose(&model, &cal, &opts)?;
    for r in &choice.rates {
        println!("rate {}: {:.1} GFLOP/CPU-s", r.precision, r.gflops);
    }
    println!(
        "{:<16} {:>6} {:>10} {:>10}",
        "layer", "prec", "|Δz|", "smoothed"
    );
    for s in &choice.sensitivities {
        println!(
            "{:<16} {:>6} {:>10.2e} {:>10}",
            s.layer,
            s.precision.name(),
            s.max_dz,
            s.smoothed_max_dz
                .map_or("-".to_string(), |v| format!("{v:.2e}"))
        );
    }
    println!(
        "smoothing: tried {}, lowered the error in {}, used in the mix by {} layers",
        choice.smoothing_tried, choice.smoothing_helped, choice.smoothing_used
    );
    println!(
        "auto: {} | max |Δz| {:.2e} | GEMM speed-up est. {:.2}x",
        choice.plan.summary(),
        choice.max_dz,
        choice.est_gemm_speedup
    );
    Ok(())
}

/// `plan` with the input means of its int8/int16 block layers set (bias correction).
fn with_means(mut plan: PrecisionPlan, means: &[[Vec<f32>; 4]]) -> PrecisionPlan {
    for (b, m) in means.iter().enumerate() {
        for (i, l) in [
            PlanLayer::Qkv(b),
            PlanLayer::Proj(b),
            PlanLayer::Fc1(b),
            PlanLayer::Fc2(b),
        ]
        .into_iter()
        .enumerate()
        {
            if matches!(plan.get(l), Precision::Int8 | Precision::Int16) {
                plan.set_input_mean(l, Some(m[i].clone()));
            }
        }
    }
    plan
}
