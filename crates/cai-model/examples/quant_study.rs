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
use cai_model::{Model, PrecisionPlan};

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
    let opts = AutoOptions {
        max_dz,
        ..AutoOptions::default()
    };
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
