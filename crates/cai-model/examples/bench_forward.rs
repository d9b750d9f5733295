//! Full-size AstroMAE forward speed with seeded weights: galaxies/s at batch 1, 32 and 128
//! on 1 and 2 threads (the current rayon pool is what `predict` uses).
//!
//! `cargo run --release -p cai-model --example bench_forward [seconds-per-case] [precision]
//! [threads,..] [batch,..]` (defaults 3, f32, 1,2 and 1,32,128; `CAI_KERNELS=scalar|avx2|..`
//! forces a kernel tier). A steady target for `perf record`: nothing but `predict` runs.
#![allow(clippy::print_stdout)]

use std::time::Instant;

use cai_model::kernels::Precision;
use cai_model::{init, AstroMae, Config, Model};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let secs: f64 = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let cfg = Config::astromae();
    let arg = |i: usize| std::env::args().nth(i);
    let list = |i: usize, default: &[usize]| -> Vec<usize> {
        arg(i).map_or(default.to_vec(), |s| {
            s.split(',').filter_map(|v| v.parse().ok()).collect()
        })
    };
    let precision = match arg(2) {
        Some(p) => Precision::parse(&p).ok_or(format!("unknown precision {p}"))?,
        None => Precision::F32,
    };
    let mut model = AstroMae::load(&init::astromae_weights(0, &cfg), "seeded")?;
    model.set_precision(precision)?;
    let (c, h, w) = model.input_shape();
    let gflop = cfg.flops_per_galaxy() as f64 / 1e9;
    println!(
        "AstroMAE {:?}, {} params, {:.3} GFLOP/galaxy, {precision}, kernels {:?}",
        cfg,
        model.param_count(),
        gflop,
        cai_model::kernels::ops().tier
    );
    let (threads_list, batches) = (list(3, &[1, 2]), list(4, &[1, 32, 128]));
    let max_batch = batches.iter().copied().max().unwrap_or(1);
    let images: Vec<f32> = (0..max_batch * c * h * w)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let mags: Vec<f32> = (0..max_batch * 5).map(|i| 15.0 + (i % 7) as f32).collect();
    for &threads in &threads_list {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()?;
        for &batch in &batches {
            let (img, mag) = (&images[..batch * c * h * w], &mags[..batch * 5]);
            pool.install(|| model.predict(img, mag, batch))?; // warm up
            let cpu0 = cpu_seconds();
            let start = Instant::now();
            let mut done = 0usize;
            while start.elapsed().as_secs_f64() < secs {
                pool.install(|| model.predict(img, mag, batch))?;
                done += batch;
            }
            let t = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds().zip(cpu0).map(|(b, a)| b - a);
            let rate = done as f64 / t;
            let per_cpu = cpu.map_or(String::new(), |c| {
                format!(", {:5.1} per CPU-second", done as f64 / c)
            });
            println!(
                "threads {threads} batch {batch:4}: {rate:7.1} galaxies/s ({:5.1} per thread, {:5.1} GFLOP/s{per_cpu})",
                rate / threads as f64,
                rate * gflop
            );
        }
    }
    Ok(())
}

/// User + system CPU time of this process (Linux `/proc/self/stat`, 100 Hz ticks). On a
/// shared machine, galaxies per CPU-second is steadier than wall-clock throughput.
fn cpu_seconds() -> Option<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
