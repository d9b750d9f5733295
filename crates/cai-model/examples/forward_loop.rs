//! Runs a model forward on one thread, over and over (timed by the process's CPU clock), in
//! one precision or the mix `--precision auto` picks on 8 calibration galaxies, so a
//! profiler (`perf record -e cpu-clock`) sees only the forward pass after a printed mark; it
//! ends with a hash of the predictions' bits, to check that a change kept them. The model is
//! the PyTorch parity fixtures' (`$CAI_PARITY_DIR/model.pt` over `1.pt`) when
//! `CAI_PARITY_DIR` is set, else the full-size formula model on formula inputs:
//! `CAI_PARITY_DIR=~/.cache/cai-parity cargo run --release -p cai-model --example forward_loop [auto|f32|bf16|int8|int16] [batch] [seconds]`
//! (`ATTN=bf16|int16`: attention in bf16 or int16 in every block; `BLOCKS=1`: time the ViT blocks alone).
#![allow(clippy::print_stdout)]

use std::time::Instant;

use cai_model::kernels::Precision;
use cai_model::mixed::{self, AutoOptions, Calibration};
use cai_model::{Model, PlanLayer, PrecisionPlan};

mod common;

/// CPU time of the whole process (its threads included), in seconds.
fn process_cpu_seconds() -> f64 {
    cai_model::clock::process_cpu_seconds().unwrap_or(0.0)
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let mode = args.next().unwrap_or_else(|| "auto".to_string());
    let batch: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(128);
    let seconds: f64 = args.next().and_then(|s| s.parse().ok()).unwrap_or(10.0);
    let common::Setup {
        mut model,
        images,
        magnitudes: mags,
        source,
    } = common::model_and_inputs(8)?;
    println!("{source}");
    let (c, h, w) = model.input_shape();
    let n = images.len() / (c * h * w);
    let cal = Calibration {
        images: &images,
        magnitudes: &mags[..n * 5],
        n,
    };
    let z = model.predict(&images, &mags[..n * 5], n)?;
    let depth = model.config().depth;
    // A trailing `+` (`int8+`): bias correction of the int8/int16 block layers from their
    // input means on the calibration galaxies (what `auto` applies).
    let (mode, fix) = match mode.strip_suffix('+') {
        Some(m) => (m.to_string(), true),
        None => (mode, false),
    };
    let mut plan = match mode.as_str() {
        "auto" => mixed::choose(&model, &cal, &AutoOptions::default())?.plan,
        "f32" => PrecisionPlan::f32(depth),
        "bf16" => PrecisionPlan::uniform(Precision::Bf16, depth),
        "int8" => PrecisionPlan::uniform(Precision::Int8, depth),
        "int16" => PrecisionPlan::uniform(Precision::Int16, depth),
        other => return Err(format!("unknown precision {other}").into()),
    };
    if fix {
        let means = model.layer_input_means(&images, &mags[..n * 5], n)?;
        for (b, m) in means.into_iter().enumerate() {
            let [q, p, f1, f2] = m;
            for (l, v) in [
                (PlanLayer::Qkv(b), q),
                (PlanLayer::Proj(b), p),
                (PlanLayer::Fc1(b), f1),
                (PlanLayer::Fc2(b), f2),
            ] {
                if matches!(plan.get(l), Precision::Int8 | Precision::Int16) {
                    plan.set_input_mean(l, Some(v));
                }
            }
        }
    }
    // `ATTN=bf16|int16`: attention's two products in bf16 or int16 in every block (what
    // `auto` may pick).
    if let Some(p) = std::env::var("ATTN")
        .ok()
        .and_then(|v| Precision::parse(&v))
    {
        for b in 0..depth {
            plan.set(PlanLayer::Attn(b), p);
        }
    }
    let dz = mixed::plan_dz(&model, &plan, &cal, &z)?;
    model.set_plan(&plan)?;
    println!("{mode}: {} | max |Δz| {dz:.2e}", plan.summary());
    let img: Vec<f32> = (0..batch)
        .flat_map(|i| images[(i % n) * c * h * w..][..c * h * w].iter().copied())
        .collect();
    let mag: Vec<f32> = (0..batch)
        .flat_map(|i| mags[(i % n) * 5..][..5].iter().copied())
        .collect();
    // `BLOCKS=1`: the ViT blocks alone, in rounds alternating with the FMA probe (what
    // `cai bench` prints as "ViT blocks alone"), instead of whole forward passes.
    if std::env::var("BLOCKS").is_ok_and(|v| v == "1") {
        println!("mark: blocks loop starts");
        let b = model.measure_vit_blocks(seconds);
        println!(
            "ViT blocks: {:.1} GFLOP per CPU-s = {:.1}% of the FMA probe's {:.1} ({} rounds)",
            b.block_gflops(),
            100.0 * b.peak_share(),
            b.probe_gflops(),
            b.rounds
        );
        return Ok(());
    }
    println!("mark: forward loop starts");
    let (t0, c0, mut galaxies) = (Instant::now(), process_cpu_seconds(), 0usize);
    while process_cpu_seconds() - c0 < seconds {
        std::hint::black_box(model.predict(&img, &mag, batch)?);
        galaxies += batch;
    }
    let (wall, cpu) = (t0.elapsed().as_secs_f64(), process_cpu_seconds() - c0);
    let z = model.predict(&img, &mag, batch)?;
    let bits = z.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, v| {
        (h ^ u64::from(v.to_bits())).wrapping_mul(0x100_0000_01b3)
    });
    println!(
        "predictions' bits hashed: {bits:016x}; first: {:?}",
        &z[..z.len().min(4)]
    );
    println!(
        "{galaxies} galaxies in {cpu:.2} CPU-s ({wall:.2} s wall): {:.1} per CPU-s",
        galaxies as f64 / cpu
    );
    Ok(())
}
