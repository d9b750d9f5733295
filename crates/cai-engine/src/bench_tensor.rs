//! Any [`TensorModel`] (an ONNX model through tract) beside the native AstroMAE (full-size,
//! seeded) on the same inputs and the same thread pool, in alternating rounds so that
//! other load on the machine slows both alike; the ratio is the figure to read. What
//! `cai bench --model X.onnx` runs (behind the `bench` feature).
//!
//! Inputs follow `cai bench`'s formula: value `i` of every tensor is
//! `((i * 7919) % 1000) * 1e-3`, except `magnitudes` (`15 + i % 7`).

use std::time::Instant;

use cai_model::{clock, init, AstroMae, Config, NamedBatch, TensorModel, TensorSpec};
use serde::Serialize;

use crate::bench::{fmt_load, load_avg, Error, Result};

/// What to measure.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    /// Thread counts (empty: 1).
    pub threads: Vec<usize>,
    /// Batch sizes (empty: 64).
    pub batch: Vec<usize>,
    /// Least seconds of timed calls per path and case.
    pub seconds: f64,
    /// Seed of the native model's weights.
    pub seed: u64,
}

/// One path's rate in one case.
#[derive(Debug, Serialize)]
pub struct Rate {
    /// Galaxies per wall-clock second.
    pub galaxies_per_s: f64,
    /// Galaxies per CPU-second of the inference thread (one thread only).
    pub galaxies_per_cpu_s: Option<f64>,
    /// Timed calls.
    pub calls: u64,
}

/// One threads × batch case.
#[derive(Debug, Serialize)]
pub struct Case {
    /// Threads in the pool.
    pub threads: usize,
    /// Galaxies per call.
    pub batch: usize,
    /// The model's rate.
    pub onnx: Rate,
    /// The native AstroMAE's rate.
    pub native: Rate,
    /// onnx / native galaxies per second over the same rounds.
    pub onnx_over_native: f64,
}

/// The whole comparison (`--json`); its `Display` is the text table.
#[derive(Debug, Serialize)]
pub struct CompareReport {
    /// The model measured.
    pub model: String,
    /// What it was compared with.
    pub native: String,
    /// The model's inputs per galaxy.
    pub inputs: Vec<TensorSpec>,
    /// Its outputs per galaxy.
    pub outputs: Vec<TensorSpec>,
    /// The 1, 5 and 15 minute load averages before.
    pub load_before: Option<[f64; 3]>,
    /// The same after.
    pub load_after: Option<[f64; 3]>,
    /// One per threads x batch.
    pub cases: Vec<Case>,
}

/// Inputs for `n` galaxies of each spec, by the bench formula.
fn inputs(specs: &[TensorSpec], n: usize) -> Vec<Vec<f32>> {
    specs
        .iter()
        .map(|s| {
            let len = n * s.per_galaxy();
            if s.name == "magnitudes" {
                (0..len).map(|i| 15.0 + (i % 7) as f32).collect()
            } else {
                (0..len)
                    .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
                    .collect()
            }
        })
        .collect()
}

/// Run `model` once on `n` galaxies on `pool`: wall seconds and, on one thread, the
/// inference thread's CPU seconds.
fn call(
    model: &dyn TensorModel,
    pool: &rayon::ThreadPool,
    specs: &[TensorSpec],
    data: &[Vec<f32>],
    n: usize,
) -> Result<(f64, Option<f64>)> {
    let batch = NamedBatch {
        n,
        tensors: specs
            .iter()
            .zip(data)
            .map(|(s, d)| (s.clone(), &d[..n * s.per_galaxy()]))
            .collect(),
    };
    let t = Instant::now();
    let (out, cpu) = pool.install(|| {
        let c0 = clock::thread_cpu_seconds();
        let out = model.run(&batch);
        let cpu = c0.zip(clock::thread_cpu_seconds()).map(|(a, b)| b - a);
        (out, cpu)
    });
    out?;
    Ok((t.elapsed().as_secs_f64(), cpu))
}

/// Time `model` (named `name`) beside the seeded native AstroMAE on the same inputs and
/// pools, alternating calls. Runs on the calling thread: call it from a blocking task.
pub fn compare(
    model: &dyn TensorModel,
    name: &str,
    opts: &CompareOptions,
) -> Result<CompareReport> {
    let native = AstroMae::load(
        &init::astromae_weights(opts.seed, &Config::astromae()),
        "seeded",
    )?;
    let specs = model.inputs();
    let native_specs = native.inputs();
    let threads = if opts.threads.is_empty() {
        vec![1]
    } else {
        opts.threads.clone()
    };
    let batches = if opts.batch.is_empty() {
        vec![64]
    } else {
        opts.batch.clone()
    };
    if threads.contains(&0) || batches.contains(&0) {
        return Err(Error::Zero);
    }
    let most = batches.iter().copied().max().unwrap_or(1);
    let data = inputs(&specs, most);
    let native_data = inputs(&native_specs, most);
    let load_before = load_avg();
    let mut cases = Vec::new();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|source| Error::ThreadPool { threads: t, source })?;
        for &b in &batches {
            // Warm-up, then alternate until each path has had `seconds`.
            call(model, &pool, &specs, &data, b)?;
            call(&native, &pool, &native_specs, &native_data, b)?;
            let (mut wo, mut wn, mut co, mut cn, mut k) = (0.0f64, 0.0f64, 0.0, 0.0, 0u64);
            while k < 2 || wo.min(wn) < opts.seconds {
                let (w, c) = call(model, &pool, &specs, &data, b)?;
                wo += w;
                co += c.unwrap_or(0.0);
                let (w, c) = call(&native, &pool, &native_specs, &native_data, b)?;
                wn += w;
                cn += c.unwrap_or(0.0);
                k += 1;
            }
            let g = (k as usize * b) as f64;
            let rate = |wall: f64, cpu: f64| Rate {
                galaxies_per_s: g / wall,
                galaxies_per_cpu_s: (t == 1 && cpu > 0.0).then(|| g / cpu),
                calls: k,
            };
            cases.push(Case {
                threads: t,
                batch: b,
                onnx_over_native: wn / wo,
                onnx: rate(wo, co),
                native: rate(wn, cn),
            });
        }
    }
    Ok(CompareReport {
        model: name.to_string(),
        native: format!("native AstroMAE, full size, seeded:{}, f32", opts.seed),
        inputs: specs,
        outputs: model.outputs(),
        load_before,
        load_after: load_avg(),
        cases,
    })
}

/// The text table `cai bench --model X.onnx` prints.
impl std::fmt::Display for CompareReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(f, "model         {} (onnx, tract)", self.model)?;
        writeln!(f, "beside        {}", self.native)?;
        writeln!(
            f,
            "load          before {} | after {}",
            fmt_load(self.load_before),
            fmt_load(self.load_after)
        )?;
        write!(
            f,
            "threads  batch   onnx gal/s (per CPU-s)   native gal/s (per CPU-s)   onnx/native"
        )?;
        for c in &self.cases {
            let cpu = |r: &Rate| {
                r.galaxies_per_cpu_s
                    .map(|v| format!("({v:.1})"))
                    .unwrap_or_default()
            };
            write!(
                f,
                "\n{:>7}  {:>5}   {:>10.1} {:<12}  {:>10.1} {:<14}  {:>10.3}",
                c.threads,
                c.batch,
                c.onnx.galaxies_per_s,
                cpu(&c.onnx),
                c.native.galaxies_per_s,
                cpu(&c.native),
                c.onnx_over_native
            )?;
        }
        Ok(())
    }
}
