//! How well `--precision auto`'s bound holds on galaxies it was not chosen on: `auto` is
//! chosen on the first `n` of a set of calibration galaxies (for each `n` given), under each
//! bound given, and its max |Δz| against f32 is measured on held-out galaxies drawn the same
//! way (another seed) and, with `CAI_PARITY_DIR`, on the parity fixtures' 8 galaxies
//! (`1.pt`).
//!
//! Galaxies are drawn as the parity fixtures draws them (`parity`: images 0.5·N(0, 1),
//! magnitudes U(18, 20), `scripts/parity/make_fixtures.py`) or as `cai synth` does (`sdss`:
//! `cai_data::synth`, SDSS-like galaxies in nanomaggies). The model is the parity fixtures'
//! (`$CAI_PARITY_DIR/model.pt`) when `CAI_PARITY_DIR` is set, else the full-size formula
//! model:
//! `CAI_PARITY_DIR=~/.cache/cai-parity cargo run --release -p cai-model --example auto_heldout [parity|sdss] [8,16,32,64] [1e-3,5e-4] [held-out galaxies] [on|off|both] [on|off|both]`
//! (the fifth: `AutoOptions::hold_out`, half the calibration galaxies held out of the
//! choice; the sixth: `AutoOptions::gptq`, GPTQ's rounding tried for int8 block layers,
//! default on).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use cai_model::kernels::Precision;
use cai_model::mixed::{self, AutoOptions, Calibration};
use cai_model::{AstroMae, Model};

mod common;

/// `n` galaxies drawn as `source` draws them, with `seed`.
fn draw(model: &AstroMae, source: &str, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
    let (c, h, w) = model.input_shape();
    let nm = model.magnitudes();
    match source {
        "sdss" => {
            let cfg = cai_data::synth::SynthConfig {
                galaxies: n as u64,
                seed,
                size: h,
            };
            let p = cai_data::synth::generate(&cfg, 0, n);
            (p.images, p.magnitudes)
        }
        _ => mixed::noise_galaxies(n, c * h * w, nm, seed),
    }
}

/// max and mean |a - b|, and how many differ by more than `bound`.
fn stats(a: &[f32], b: &[f32], bound: f64) -> (f64, f64, usize) {
    let d: Vec<f64> = a
        .iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .collect();
    let max = d.iter().copied().fold(0.0, f64::max);
    let mean = d.iter().sum::<f64>() / d.len().max(1) as f64;
    (max, mean, d.iter().filter(|v| **v > bound).count())
}

/// A comma-separated list, or `default` when there is none.
fn list<T: std::str::FromStr + Clone>(s: Option<String>, default: &[T]) -> Vec<T> {
    s.map(|s| s.split(',').filter_map(|x| x.trim().parse().ok()).collect())
        .filter(|v: &Vec<T>| !v.is_empty())
        .unwrap_or_else(|| default.to_vec())
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let source = args.next().unwrap_or_else(|| "parity".to_string());
    let sizes: Vec<usize> = list(args.next(), &[8, 16, 32, 64]);
    let bounds: Vec<f64> = list(args.next(), &[mixed::DEFAULT_MAX_DZ]);
    let held: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(256);
    let hold_outs: Vec<bool> = match args.next().as_deref() {
        Some("on") => vec![true],
        Some("off") => vec![false],
        _ => vec![false, true],
    };
    let gptqs: Vec<bool> = match args.next().as_deref() {
        Some("off") => vec![false],
        Some("both") => vec![false, true],
        _ => vec![true],
    };
    let common::Setup {
        model,
        images: fix_img,
        magnitudes: fix_mag,
        source: model_source,
    } = common::model_and_inputs(8)?;
    let (c, h, w) = model.input_shape();
    let (px, nm) = (c * h * w, model.magnitudes());
    let nmax = sizes.iter().copied().max().unwrap_or(8);
    let (cal_img, cal_mag) = draw(&model, &source, nmax, 1);
    let (held_img, held_mag) = draw(&model, &source, held, 2);
    let z_held = model.predict(&held_img, &held_mag, held)?;
    let nfix = fix_img.len() / px;
    let z_fix = model.predict(&fix_img, &fix_mag[..nfix * nm], nfix)?;
    println!(
        "{model_source}: calibration and {held} held-out galaxies drawn as `{source}`, \
         {nfix} fixture galaxies; kernels {}",
        mixed::kernel_tier()
    );
    println!(
        "{:>4} {:>8} {:>5} {:>4} {:>8} {:>9} {:>9} {:>9} {:>5} {:>9} {:>6} {:>5} {:>5} {:>6}  mix",
        "cal",
        "bound",
        "hold",
        "gptq",
        "target",
        "cal max",
        "held max",
        "held mean",
        ">1e-3",
        "fix max",
        "est x",
        "int8",
        "int16",
        "s"
    );
    for &n in &sizes {
        let cal = Calibration {
            images: &cal_img[..n * px],
            magnitudes: &cal_mag[..n * nm],
            n,
        };
        let runs: Vec<(f64, bool, bool)> = bounds
            .iter()
            .flat_map(|b| hold_outs.iter().map(move |h| (*b, *h)))
            .flat_map(|(b, h)| gptqs.iter().map(move |g| (b, h, *g)))
            .collect();
        for (bound, hold_out, gptq) in runs {
            let t = Instant::now();
            let ch = mixed::choose(
                &model,
                &cal,
                &AutoOptions {
                    max_dz: bound,
                    hold_out,
                    gptq,
                    ..AutoOptions::default()
                },
            )?;
            let secs = t.elapsed().as_secs_f64();
            let mut m = model.clone();
            m.set_plan(&ch.plan)?;
            let (hmax, hmean, over) = stats(&z_held, &m.predict(&held_img, &held_mag, held)?, 1e-3);
            let (fmax, _, _) = stats(
                &z_fix,
                &m.predict(&fix_img, &fix_mag[..nfix * nm], nfix)?,
                1e-3,
            );
            let count = |p: Precision| {
                ch.plan
                    .layers()
                    .into_iter()
                    .filter(|l| ch.plan.get(*l) == p)
                    .count()
            };
            println!(
                "{n:>4} {bound:>8.1e} {:>5} {:>4} {:>8.1e} {:>9.2e} {hmax:>9.2e} {hmean:>9.2e} {over:>5} \
                 {fmax:>9.2e} {:>6.2} {:>5} {:>5} {secs:>6.0}  {}",
                if hold_out { "half" } else { "none" },
                ch.gptq_used,
                ch.target,
                ch.max_dz,
                ch.est_gemm_speedup,
                count(Precision::Int8),
                count(Precision::Int16),
                ch.plan.summary()
            );
        }
    }
    Ok(())
}
