//! Where each reduced precision's error comes from, on the real kernels: max |Δz| against
//! f32 when only one layer (patch embedding, each block's `qkv`/`proj`/`fc1`/`fc2`, the
//! CNN, the head) is lowered to bf16, int16 or int8, with and without SmoothQuant factors
//! on `qkv`/`fc1`; then every uniform precision and the mix `--precision auto` picks.
//! Uses only the public API ([`PrecisionPlan`], [`mixed::choose`]).
//!
//! The model is the PyTorch parity fixtures' (`$CAI_PARITY_DIR/model.pt` over `1.pt`) when
//! `CAI_PARITY_DIR` is set, else the full-size formula model of the committed fixture on
//! formula inputs:
//! `CAI_PARITY_DIR=~/.cache/cai-parity cargo run --release -p cai-model --example quant_study [galaxies] [max-dz] [diag]`
//!
//! With `diag` it only prints, for each block layer alone in int8 (bias corrected), where
//! the error comes from: max |Δz| with int8 weights and f32 activations (the weights'
//! share), with the real int8 x int8 kernels, and both again with GPTQ's codes (means and
//! Hessians from `galaxies` drawn as the parity fixtures' are, seed 1; errors on as many
//! others, seed 2), and the GEMM's output error `||X(W - Q)||^2 / ||XW||^2` on the other
//! galaxies' inputs, for RTN and GPTQ.
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
    if args.next().as_deref() == Some("diag") {
        return diagnose(&model, n_max);
    }
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
        "{:<16} {:>6} {:>10} {:>10} {:>10}",
        "layer", "prec", "|Δz|", "smoothed", "gptq"
    );
    let opt = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.2e}"));
    for s in &choice.sensitivities {
        println!(
            "{:<16} {:>6} {:>10.2e} {:>10} {:>10}",
            s.layer,
            s.precision.name(),
            s.max_dz,
            opt(s.smoothed_max_dz),
            opt(s.gptq_max_dz)
        );
    }
    println!(
        "smoothing: tried {}, lowered the error in {}, used in the mix by {} layers",
        choice.smoothing_tried, choice.smoothing_helped, choice.smoothing_used
    );
    println!(
        "GPTQ: tried {}, lowered the error in {} layers, used in the mix by {} layers",
        choice.gptq_tried, choice.gptq_helped, choice.gptq_used
    );
    println!(
        "auto: {} | max |Δz| {:.2e} | GEMM speed-up est. {:.2}x",
        choice.plan.summary(),
        choice.max_dz,
        choice.est_gemm_speedup
    );
    Ok(())
}

/// Per block layer alone in int8: weight-only vs full error, RTN vs GPTQ (see the module
/// doc). Means and Hessians from the first half of `cal`, errors on the second half.
fn diagnose(model: &cai_model::AstroMae, n: usize) -> Result<(), Box<dyn std::error::Error>> {
    let (c, h, w) = model.input_shape();
    let nm = model.magnitudes();
    let (fi, fm) = mixed::noise_galaxies(n, c * h * w, nm, 1);
    let (ji, jm) = mixed::noise_galaxies(n, c * h * w, nm, 2);
    let fit = Calibration {
        images: &fi,
        magnitudes: &fm,
        n,
    };
    let judge = Calibration {
        images: &ji,
        magnitudes: &jm,
        n,
    };
    let z = model.predict(judge.images, judge.magnitudes, n)?;
    let zj = &z[..];
    let grams_judge = model.layer_input_grams(judge.images, judge.magnitudes, n)?;
    let means = model.layer_input_means(fit.images, fit.magnitudes, fit.n)?;
    let t = std::time::Instant::now();
    let grams = model.layer_input_grams(fit.images, fit.magnitudes, fit.n)?;
    println!(
        "Hessians of {} galaxies in {:.1} s; errors on {} others",
        fit.n,
        t.elapsed().as_secs_f64(),
        judge.n
    );
    println!(
        "{:<16} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "layer", "w-only", "int8", "gptq w", "gptq int8", "relerr", "gptq rel"
    );
    let depth = model.config().depth;
    // Centred Hessians: X^T X - N m m^T (bias correction removes the mean's error anyway).
    let t1 = model.config().tokens + 1;
    let centred: Vec<[Vec<f64>; 4]> = grams
        .iter()
        .enumerate()
        .map(|(b, g)| {
            std::array::from_fn(|i| {
                let m = &means[b][i];
                let k = m.len();
                let rows = if i == 3 && b + 1 == depth {
                    fit.n * (t1 - 1)
                } else {
                    fit.n * t1
                } as f64;
                let mut h = g[i].clone();
                for a in 0..k {
                    for c in 0..k {
                        h[a * k + c] -= rows * f64::from(m[a]) * f64::from(m[c]);
                    }
                }
                h
            })
        })
        .collect();
    let grams = if std::env::var("CAI_GPTQ_CENTRED").is_ok() {
        println!("GPTQ on centred Hessians");
        centred
    } else {
        grams
    };
    // Every block layer int8 (bias corrected; the rest f32), with and without GPTQ.
    let mut all = PrecisionPlan::f32(depth);
    let mut all_g = PrecisionPlan::f32(depth);
    for (l, b, i) in block_layers(depth) {
        for p in [&mut all, &mut all_g] {
            p.set(l, Precision::Int8);
            p.set_input_mean(l, Some(means[b][i].clone()));
        }
        all_g.set_gptq(l, Some(model.gptq_codes(l, &grams[b][i], None)?));
    }
    let dz_all = mixed::plan_dz(model, &all, &judge, zj)?;
    let dz_all_g = mixed::plan_dz(model, &all_g, &judge, zj)?;
    println!("all block layers int8 (rest f32): max |Δz| {dz_all:.2e} RTN, {dz_all_g:.2e} GPTQ");
    let (mut wr, mut wg) = (model.clone(), model.clone());
    for l in all.layers() {
        if let (Some(m), true) = (all.input_mean(l), all.get(l) == Precision::Int8) {
            wr.study_round_weights(l, Some(m), None);
            wg.study_round_weights(l, Some(m), all_g.gptq(l));
        }
    }
    let wz = |m: &cai_model::AstroMae| -> Result<f64, cai_model::Error> {
        Ok(mixed::max_abs_diff(
            zj,
            &m.predict(judge.images, judge.magnitudes, judge.n)?,
        ))
    };
    println!(
        "  the same with f32 activations (weights only): {:.2e} RTN, {:.2e} GPTQ",
        wz(&wr)?,
        wz(&wg)?
    );
    if std::env::var("CAI_DIAG_QUICK").is_ok() {
        return Ok(());
    }
    let (mut sum_w, mut sum_f, mut sum_gf) = (0.0, 0.0, 0.0);
    for (l, b, i) in block_layers(depth) {
        let mean = &means[b][i];
        let t = std::time::Instant::now();
        let codes = model.gptq_codes(l, &grams[b][i], None)?;
        let gsecs = t.elapsed().as_secs_f64();
        let lone = |codes: Option<&[i8]>, weights_only: bool| -> Result<f64, cai_model::Error> {
            let mut m = model.clone();
            if weights_only {
                m.study_round_weights(l, Some(mean), codes);
            } else {
                let mut plan = PrecisionPlan::f32(depth);
                plan.set(l, Precision::Int8);
                plan.set_input_mean(l, Some(mean.clone()));
                plan.set_gptq(l, codes.map(<[i8]>::to_vec));
                m.set_plan(&plan)?;
            }
            let zz = m.predict(judge.images, judge.magnitudes, judge.n)?;
            Ok(mixed::max_abs_diff(zj, &zz))
        };
        let (w, f) = (lone(None, true)?, lone(None, false)?);
        let (gw, gf) = (lone(Some(&codes), true)?, lone(Some(&codes), false)?);
        let (rel, grel) = relative_errors(model, l, &grams_judge[b][i], &codes);
        sum_w += w / f.max(1e-12);
        sum_f += 1.0;
        sum_gf += gf / f.max(1e-12);
        println!(
            "{:<16} {w:>9.2e} {f:>9.2e} {gw:>9.2e} {gf:>9.2e} {rel:>9.2e} {grel:>9.2e}  ({gsecs:.1} s)",
            l.to_string()
        );
    }
    println!(
        "mean over layers: weights-only / int8 {:.2}, GPTQ int8 / int8 {:.2}",
        sum_w / sum_f,
        sum_gf / sum_f
    );
    Ok(())
}

/// `||X(W - Q)||^2 / ||X W||^2` on inputs of Gram matrix `h` for RTN's and for `codes`.
fn relative_errors(
    model: &cai_model::AstroMae,
    l: PlanLayer,
    h: &[f64],
    codes: &[i8],
) -> (f64, f64) {
    use cai_model::gptq;
    let Some((w, sc, k, n)) = model.study_layer_weights(l) else {
        return (f64::NAN, f64::NAN);
    };
    let zero = vec![0i8; k * n];
    let norm = gptq::output_error(&w, &zero, k, n, h, &sc);
    let rtn = gptq::output_error(&w, &gptq::rtn_int8(&w, n, &sc), k, n, h, &sc);
    let g = gptq::output_error(&w, codes, k, n, h, &sc);
    (rtn / norm, g / norm)
}

/// `plan` with the input means of its int8/int16 block layers set (bias correction).
fn with_means(mut plan: PrecisionPlan, means: &[[Vec<f32>; 4]]) -> PrecisionPlan {
    for (l, b, i) in block_layers(means.len()) {
        if matches!(plan.get(l), Precision::Int8 | Precision::Int16) {
            plan.set_input_mean(l, Some(means[b][i].clone()));
        }
    }
    plan
}

/// Each block layer of a model of `depth` blocks with its block and its place in `qkv`,
/// `proj`, `fc1`, `fc2` order ([`PlanLayer::block_linear`]).
fn block_layers(depth: usize) -> impl Iterator<Item = (PlanLayer, usize, usize)> {
    PlanLayer::all(depth)
        .into_iter()
        .filter_map(|l| l.block_linear().map(|(b, i)| (l, b, i)))
}
