//! Model-only throughput of the full-size AstroMAE on this machine, beside the machine's
//! measured f32 FMA peak: what `cai bench` runs and prints (behind the `bench` feature).
//!
//! The peak comes from a tiny loop of independent FMA chains in the selected kernel tier
//! ([`cai_model::kernels::fma_peak`]), timed by the thread's own CPU clock so that other
//! load on the machine does not lower it. Each case (threads x batch size) runs whole
//! `predict` calls for at least [`BenchOptions::seconds`] after one warm-up call and reports wall-clock
//! and CPU-time rates: on a shared machine galaxies per CPU-second is the steadier figure.
//! The ViT blocks alone are timed on one thread in rounds that alternate with the FMA
//! probe, and their share of the peak is the ratio of the two rates over those rounds (on a
//! machine whose speed drifts with its neighbours' load, a peak taken once would not
//! compare like with like). The probe runs again after the cases, and the report says how
//! far its rate moved over the run (`probe_drift`), warning above 5%: that is how far apart
//! figures taken at different moments can be for that reason alone.
//! Inputs are a fixed formula (image value `i` is `((i * 7919) % 1000) * 1e-3`, magnitude
//! `i` is `15 + i % 7`) that `scripts/bench/` reproduces for PyTorch, and the first
//! predictions are printed so the two can be checked against each other.
//!
//! [`precisions`] (`f32,bf16,int8,auto` or `all`) measures each precision of the same weights;
//! each reduced one reports its max and mean |Δz| against f32 on the benchmarked weights
//! (seeded, or a given model) over the benchmark inputs, on the full-size formula model of the
//! committed parity fixture (an original-structure model, always available: seeded weights
//! understate a precision's error many times over) and, with [`BenchOptions::parity_dir`], on the
//! PyTorch parity fixtures (`model.pt` over `1.pt`). `auto` is the per-layer mix
//! [`cai_model::mixed::choose`] picks within [`BenchOptions::max_dz`] on the original-structure model
//! (the parity fixtures' when given, else a given model's, else the formula model's), timed on
//! the benchmarked weights (same shapes, same speed).

use std::path::{Path, PathBuf};
use std::time::Instant;

use cai_model::kernels::Precision;
use cai_model::mixed::{self, PrecisionMode};
use cai_model::{clock, formula, kernels, AstroMae, Config, LoadOptions, Model, PrecisionPlan};
use serde::Serialize;

use crate::local::available_cores;

/// What can stop a benchmark.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The model could not be converted or run.
    #[error(transparent)]
    Model(#[from] cai_model::Error),
    /// A parity fixture could not be decoded.
    #[error(transparent)]
    Data(#[from] cai_data::Error),
    /// The model to measure could not be loaded.
    #[error("cannot load the model {model}")]
    Load {
        /// Its location.
        model: String,
        /// Why.
        #[source]
        source: Box<crate::Error>,
    },
    /// A parity fixture could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A precision name that is not one.
    #[error("{0}")]
    Precision(String),
    /// A thread count or batch size of 0.
    #[error("thread counts and batch sizes must be at least 1")]
    Zero,
    /// `auto` was asked for without a chosen mix.
    #[error("auto has no chosen mix")]
    NoMix,
    /// A thread pool could not be started.
    #[error("cannot start {threads} threads: {source}")]
    ThreadPool {
        /// Threads asked for.
        threads: usize,
        /// Why rayon refused.
        #[source]
        source: rayon::ThreadPoolBuildError,
    },
}

/// Result with the benchmark's error.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What to measure.
#[derive(Debug, Clone)]
pub struct BenchOptions {
    /// Thread counts to sweep (empty: 1 to the number of cores).
    pub threads: Vec<usize>,
    /// Batch sizes to sweep (empty: 1, 32, 128, 512).
    pub batch: Vec<usize>,
    /// Least seconds of timed calls per case; also the CPU seconds (at most 3) of
    /// alternating rounds for the ViT blocks alone.
    pub seconds: f64,
    /// Least seconds per round of the FMA peak probe.
    pub peak_seconds: f64,
    /// The precisions, as [`precisions`] orders them.
    pub precisions: Vec<PrecisionMode>,
    /// Bound on max |Δz| against f32 for `auto`.
    pub max_dz: f64,
    /// Formula galaxies on which each precision's |Δz| on the formula model is measured.
    pub judge_galaxies: usize,
    /// PyTorch parity fixtures (`model.pt`, `1.pt`) for a third |Δz|.
    pub parity_dir: Option<PathBuf>,
    /// Whether the benchmarked model was given (not seeded weights): `auto` is then chosen
    /// on it when there are no parity fixtures.
    pub model_given: bool,
}

/// A line of the benchmark's text report.
#[derive(Debug, Clone, PartialEq)]
pub enum Line {
    /// Context (machine, inputs, first predictions): a quiet caller may drop it.
    Context(String),
    /// A result.
    Result(String),
}

/// How many predictions of the input set the report carries (for cross-checking).
const Z_CHECK: usize = 8;

/// How a precision runs here and how far it moves z from f32.
#[derive(Debug, Serialize)]
struct PrecisionInfo {
    precision: &'static str,
    /// How this CPU runs it.
    support: String,
    /// max / mean |Δz| against f32 on the benchmarked weights over the benchmark inputs
    /// (`galaxies` of them).
    dz_bench: Option<Dz>,
    /// The same on the full-size formula model (original structure) over formula inputs
    /// that `auto` did not calibrate on.
    dz_formula: Option<Dz>,
    /// The same on the parity fixtures (`--parity-dir`).
    dz_parity: Option<Dz>,
}

/// The mix `auto` chose.
#[derive(Debug, Serialize)]
struct AutoInfo {
    /// The model it was chosen on.
    chosen_on: String,
    /// The mix, grouped by precision.
    summary: String,
    plan: PrecisionPlan,
    /// max |Δz| against f32 on the calibration galaxies.
    calibration_max_dz: f64,
    calibration: usize,
    bound: f64,
    est_gemm_speedup: f64,
    smoothing_tried: usize,
    smoothing_helped: usize,
    smoothing_used: usize,
}

/// |Δz| against f32.
#[derive(Debug, Clone, Copy, Serialize)]
struct Dz {
    max: f64,
    mean: f64,
    galaxies: usize,
}

impl Dz {
    fn between(a: &[f32], b: &[f32]) -> Self {
        let d: Vec<f64> = a
            .iter()
            .zip(b)
            .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
            .collect();
        Dz {
            max: d.iter().copied().fold(0.0, f64::max),
            mean: d.iter().sum::<f64>() / d.len().max(1) as f64,
            galaxies: d.len(),
        }
    }
}

/// One measured case.
#[derive(Debug, Serialize)]
struct Case {
    precision: &'static str,
    threads: usize,
    batch: usize,
    calls: usize,
    galaxies: usize,
    wall_s: f64,
    cpu_s: Option<f64>,
    galaxies_per_s: f64,
    galaxies_per_cpu_s: Option<f64>,
    /// GFLOP/s cai ran (`executed_gflop_per_galaxy` x galaxies/s).
    gflops: f64,
    /// GFLOP per CPU-second over the per-core peak.
    peak_share_cpu: Option<f64>,
    /// GFLOP/s over `threads` x the per-core peak.
    peak_share_wall: f64,
    load1: Option<f64>,
}

/// The ViT's transformer blocks alone (about 95% of the FLOPs) on one thread: the
/// issue's "share of peak inside the blocks", free of the CNN, heads and pipeline.
/// Measured in rounds that alternate with the FMA probe
/// ([`AstroMae::measure_vit_blocks`]), so the share compares two rates taken under the
/// same conditions.
#[derive(Debug, Serialize)]
struct BlockRate {
    precision: &'static str,
    cpu_s: f64,
    gflops_per_cpu_s: f64,
    /// The FMA probe's GFLOP per CPU-second in the same rounds.
    probe_gflops_per_cpu_s: f64,
    rounds: usize,
    /// The blocks' GFLOP per CPU-second over the probe's in the same rounds.
    peak_share: f64,
}

/// The whole report (`cai bench --json` prints it).
#[derive(Debug, Serialize)]
pub struct Report {
    cpu: String,
    cores: usize,
    features: Vec<&'static str>,
    kernels: String,
    model: String,
    /// The original model's GFLOP per galaxy (what PyTorch runs).
    gflop_per_galaxy: f64,
    /// The GFLOP per galaxy cai runs (the last block's `fc2` on the pooled row only).
    executed_gflop_per_galaxy: f64,
    fma_peak_gflops_per_core: f64,
    /// The same probe after the cases.
    fma_peak_after_gflops_per_core: f64,
    /// (fastest - slowest) / fastest over every probe rate taken during the run (start,
    /// end, the block rounds): how much other load moved this machine's speed. The start
    /// and end rates are each the best of a few rounds, the block rounds' an average, so a
    /// quiet machine still shows a few percent.
    probe_drift: f64,
    load_before: Option<[f64; 3]>,
    load_after: Option<[f64; 3]>,
    precisions: Vec<PrecisionInfo>,
    /// The mix `auto` measured (with `--precision auto`).
    auto: Option<AutoInfo>,
    /// The transformer blocks alone, one thread, per precision.
    vit_blocks: Vec<BlockRate>,
    cases: Vec<Case>,
    z_first: Vec<f32>,
}

/// The model `cai bench` measures: the file at `model`, else the full-size AstroMAE with
/// `seed`'s seeded weights; and its name in the report (`seeded:0`).
pub async fn bench_model(
    model: Option<&str>,
    seed: u64,
) -> Result<(std::sync::Arc<AstroMae>, String)> {
    Ok(match model {
        Some(path) => (
            crate::stages::load_model(path)
                .await
                .map_err(|e| Error::Load {
                    model: path.to_string(),
                    source: Box::new(e),
                })?,
            path.to_string(),
        ),
        None => {
            let w = cai_model::init::astromae_weights(seed, &Config::astromae());
            (
                std::sync::Arc::new(AstroMae::load(&w, "seeded")?),
                format!("seeded:{seed}"),
            )
        }
    })
}

/// The precisions a list of names gives (`all` is every one), f32 first and `auto` last,
/// without repeats; f32 alone for none.
pub fn precisions(names: &[String]) -> Result<Vec<PrecisionMode>> {
    let mut out = Vec::new();
    for n in names {
        let add: Vec<PrecisionMode> = if n.trim().eq_ignore_ascii_case("all") {
            Precision::ALL
                .iter()
                .map(|p| PrecisionMode::Fixed(*p))
                .chain([PrecisionMode::Auto])
                .collect()
        } else {
            vec![n.parse::<PrecisionMode>().map_err(Error::Precision)?]
        };
        for p in add {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    out.sort_by_key(|p| match p {
        PrecisionMode::Fixed(q) => Precision::ALL.iter().position(|x| x == q),
        PrecisionMode::Auto => Some(Precision::ALL.len()),
    });
    if out.is_empty() {
        out.push(PrecisionMode::Fixed(Precision::F32));
    }
    Ok(out)
}

/// `model` (f32) converted to `mode` (`auto`: `plan`).
fn convert(
    model: &AstroMae,
    mode: PrecisionMode,
    plan: Option<&PrecisionPlan>,
) -> Result<AstroMae> {
    let mut m = model.clone();
    match (mode, plan) {
        (PrecisionMode::Fixed(p), _) => m.set_precision(p)?,
        (PrecisionMode::Auto, Some(plan)) => m.set_plan(plan)?,
        (PrecisionMode::Auto, None) => return Err(Error::NoMix),
    }
    Ok(m)
}

/// |Δz| of each reduced mode against f32 for `model` (f32) on `n` galaxies; `auto` only
/// when given the plan (`None` for it otherwise: see `run`).
fn judge(
    model: &AstroMae,
    images: &[f32],
    mags: &[f32],
    n: usize,
    modes: &[PrecisionMode],
    plan: Option<&PrecisionPlan>,
) -> Result<Vec<Option<Dz>>> {
    let z = model.predict(images, mags, n)?;
    modes
        .iter()
        .map(|m| {
            if *m == PrecisionMode::Fixed(Precision::F32)
                || (*m == PrecisionMode::Auto && plan.is_none())
            {
                return Ok(None);
            }
            let zp = convert(model, *m, plan)?.predict(images, mags, n)?;
            Ok(Some(Dz::between(&z, &zp)))
        })
        .collect()
}

/// The parity fixtures in `dir`: the f32 model of `model.pt` and the galaxies of `1.pt`.
fn parity_fixture(dir: &Path) -> Result<(AstroMae, cai_data::Partition)> {
    let read = |path: &Path| {
        std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_path_buf(),
            source,
        })
    };
    let mpath = dir.join("model.pt");
    let bytes = read(&mpath)?;
    let name = mpath.display().to_string();
    let mw = cai_model::read_model_weights(&name, &bytes)?;
    let ppath = dir.join("1.pt");
    let pbytes = read(&ppath)?;
    let part = cai_data::read_partition(&ppath.display().to_string(), &pbytes)?;
    let opts = LoadOptions {
        heads: mw.heads_attr,
        ..LoadOptions::default()
    };
    Ok((AstroMae::load_with(&mw.weights, &name, &opts)?, part))
}

fn fmt_dz(d: Option<Dz>) -> String {
    d.map_or("-".into(), |d| format!("{:.1e}/{:.1e}", d.max, d.mean))
}

/// Measure `model` (f32 weights, from `source`) as `a` asks, telling each line of the text
/// report to `say` as it is measured; returns the whole report.
pub fn run(
    a: &BenchOptions,
    model: &AstroMae,
    source: String,
    say: &mut dyn FnMut(Line),
) -> Result<Report> {
    let precs = &a.precisions;
    let cores = available_cores();
    let threads: Vec<usize> = if a.threads.is_empty() {
        (1..=cores).collect()
    } else {
        a.threads.clone()
    };
    let batches = if a.batch.is_empty() {
        vec![1, 32, 128, 512]
    } else {
        a.batch.clone()
    };
    if threads.contains(&0) || batches.contains(&0) {
        return Err(Error::Zero);
    }
    let cfg = model.config();
    let original_gflop = cfg.flops_per_galaxy() as f64 / 1e9;
    let gflop = cfg.executed_flops_per_galaxy() as f64 / 1e9;
    let ops = kernels::ops();
    let load_before = load_avg();
    say(Line::Context(format!(
        "cai bench: {} ({} cores, {}), kernels {:?}, model {source}, {original_gflop:.3} GFLOP/galaxy \
         ({gflop:.3} run by cai: the last block's fc2 only on the pooled row), load {}",
        cpu_name(),
        cores,
        features().join("+"),
        ops.tier,
        fmt_load(load_before)
    )));
    let peak = measure_peak(a.peak_seconds);
    say(Line::Result(format!(
        "f32 FMA peak (one thread, {:?} tier, by thread CPU time): {peak:.1} GFLOP/s per core = {:.1} galaxies/s per core at most",
        ops.tier,
        peak / gflop
    )));

    let (c, h, w) = model.input_shape();
    let img = c * h * w;
    let nm = model.magnitudes();
    let most = batches.iter().copied().max().unwrap_or(1).max(Z_CHECK);
    let images: Vec<f32> = (0..most * img)
        .map(|i| ((i * 7919) % 1000) as f32 * 1e-3)
        .collect();
    let mags: Vec<f32> = (0..most * nm).map(|i| 15.0 + (i % 7) as f32).collect();
    let z_first = model.predict(&images[..Z_CHECK * img], &mags[..Z_CHECK * nm], Z_CHECK)?;

    // Accuracy is judged on an original-structure model: `auto` is chosen on the parity
    // fixtures' model when given, else on --model's, else on the formula model.
    let parity = match &a.parity_dir {
        Some(dir) => Some(parity_fixture(dir)?),
        None => None,
    };
    let fcfg = Config::astromae();
    let formula_model = AstroMae::load(&formula::weights(&fcfg), "formula")?;
    let ncal = mixed::DEFAULT_CALIBRATION;
    let nf = ncal + a.judge_galaxies.max(1);
    let (fimg, fmag) = formula::inputs(nf, fcfg.channels, fcfg.image);
    let fi = fcfg.channels * fcfg.image * fcfg.image;
    // On the parity model, `auto` is chosen on galaxies drawn as 1.pt's are, so that its
    // error on 1.pt's own is measured on galaxies it was not chosen on.
    let drawn = parity
        .as_ref()
        .map(|_| mixed::noise_galaxies(ncal, img, nm, 1));
    let auto = if precs.contains(&PrecisionMode::Auto) {
        let (on, m, im, mg, n): (String, &AstroMae, &[f32], &[f32], usize) = match (&parity, &drawn)
        {
            (Some((pm, _)), Some((di, dm))) => (
                "the parity fixtures' model.pt over galaxies drawn as 1.pt's (not 1.pt's own)"
                    .into(),
                pm,
                di.as_slice(),
                dm.as_slice(),
                ncal,
            ),
            _ if a.model_given => (
                format!("{source} over the benchmark inputs"),
                model,
                images.as_slice(),
                mags.as_slice(),
                most.min(ncal),
            ),
            _ => (
                "the formula model over formula inputs".into(),
                &formula_model,
                fimg.as_slice(),
                fmag.as_slice(),
                ncal,
            ),
        };
        say(Line::Context(format!(
            "auto: measuring each layer's error in each precision on {n} galaxies of {on} \
             (bound {:e})...",
            a.max_dz
        )));
        let cal = mixed::Calibration {
            images: &im[..n * img],
            magnitudes: &mg[..n * nm],
            n,
        };
        let opts = mixed::AutoOptions {
            max_dz: a.max_dz,
            ..mixed::AutoOptions::default()
        };
        let c = mixed::choose(m, &cal, &opts)?;
        say(Line::Result(format!(
            "auto (chosen on {on}): {} | max |Δz| {:.2e} on {n} calibration galaxies ({}); \
             GEMMs ≈{:.2}x f32's speed by the measured rates ({}); SmoothQuant tried on {} \
             layer/precision pairs, lowered the error in {}, used by {} layers",
            c.plan.summary(),
            c.max_dz,
            crate::stages::held_out(&c),
            c.est_gemm_speedup,
            c.rates
                .iter()
                .map(|r| format!("{} {:.0} GFLOP/s", r.precision, r.gflops))
                .collect::<Vec<_>>()
                .join(", "),
            c.smoothing_tried,
            c.smoothing_helped,
            c.smoothing_used
        )));
        Some(AutoInfo {
            chosen_on: on,
            summary: c.plan.summary(),
            plan: c.plan,
            calibration_max_dz: c.max_dz,
            calibration: n,
            bound: c.bound,
            est_gemm_speedup: c.est_gemm_speedup,
            smoothing_tried: c.smoothing_tried,
            smoothing_helped: c.smoothing_helped,
            smoothing_used: c.smoothing_used,
        })
    } else {
        None
    };
    let plan = auto.as_ref().map(|x| &x.plan);

    // `auto`'s plan carries what it measured on the model it was chosen on (GPTQ's codes,
    // bias corrections, smoothing factors), so its |Δz| is judged on that model only: on
    // another model those codes would replace its weights (the timing, on the benchmarked
    // weights, needs only the shapes).
    let (on_parity, on_model) = (parity.is_some(), parity.is_none() && a.model_given);
    let on_formula = !on_parity && !on_model;
    // One model per precision, converted from the same f32 weights.
    let dz_set = most.min(512);
    let dz_bench = judge(
        model,
        &images[..dz_set * img],
        &mags[..dz_set * nm],
        dz_set,
        precs,
        plan.filter(|_| on_model),
    )?;
    // Formula galaxies `auto` did not calibrate on.
    let nj = nf - ncal;
    let dz_formula = judge(
        &formula_model,
        &fimg[ncal * fi..],
        &fmag[ncal * nm..],
        nj,
        precs,
        plan.filter(|_| on_formula),
    )?;
    let dz_parity = match &parity {
        Some((pm, part)) => Some(judge(
            pm,
            &part.images,
            &part.magnitudes,
            part.n,
            precs,
            plan,
        )?),
        None => None,
    };
    drop(formula_model);
    let mut models: Vec<(PrecisionMode, AstroMae)> = Vec::new();
    let mut infos = Vec::new();
    for (i, &p) in precs.iter().enumerate() {
        let m = convert(model, p, plan)?;
        let info = PrecisionInfo {
            precision: p.name(),
            support: match p {
                PrecisionMode::Fixed(q) => q.support(),
                PrecisionMode::Auto => format!("per-layer mix on the {:?} kernels", ops.tier),
            },
            dz_bench: dz_bench[i],
            dz_formula: dz_formula[i],
            dz_parity: dz_parity.as_ref().and_then(|v| v[i]),
        };
        say(Line::Result(format!(
            "{}: {}{}",
            p,
            info.support,
            if p == PrecisionMode::Fixed(Precision::F32) {
                String::new()
            } else {
                format!(
                    "; max/mean |Δz| vs f32: {} on {} ({dz_set} bench inputs), {} on the \
                     formula model ({nj} galaxies), {} on the parity fixtures",
                    fmt_dz(info.dz_bench),
                    if a.model_given {
                        "the model"
                    } else {
                        "seeded weights"
                    },
                    fmt_dz(info.dz_formula),
                    fmt_dz(info.dz_parity)
                ) + if p == PrecisionMode::Auto {
                    " (auto: judged only on the model it was chosen on, whose calibration its \
                     plan carries)"
                } else {
                    ""
                }
            }
        )));
        infos.push(info);
        models.push((p, m));
    }

    let mut vit_blocks = Vec::new();
    for (p, m) in &models {
        let b = time_blocks(m, *p, a.seconds.min(3.0));
        say(Line::Result(format!(
            "ViT blocks alone, {p}, one thread: {:.1} GFLOP per CPU-s = {:.1}% of the FMA \
             probe's {:.1} in the same {} alternating rounds",
            b.gflops_per_cpu_s,
            100.0 * b.peak_share,
            b.probe_gflops_per_cpu_s,
            b.rounds
        )));
        vit_blocks.push(b);
    }

    say(Line::Result(format!(
        "{:>9} {:>7} {:>6} {:>11} {:>11} {:>9} {:>10} {:>10} {:>6} {:>15}",
        "precision",
        "threads",
        "batch",
        "galaxies/s",
        "per CPU-s",
        "GFLOP/s",
        "peak%wall",
        "peak%CPU",
        "load",
        "|Δz| max/mean"
    )));
    let mut cases = Vec::new();
    for &t in &threads {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(t)
            .build()
            .map_err(|source| Error::ThreadPool { threads: t, source })?;
        for ((p, model), info) in models.iter().zip(&infos) {
            for &b in &batches {
                let (im, mg) = (&images[..b * img], &mags[..b * nm]);
                // Warm-up: grows every thread's scratch to its size for this case.
                pool.install(|| model.predict(im, mg, b))?;
                let cpu0 = process_cpu_seconds();
                let start = Instant::now();
                let mut calls = 0;
                loop {
                    pool.install(|| model.predict(im, mg, b))?;
                    calls += 1;
                    if start.elapsed().as_secs_f64() >= a.seconds {
                        break;
                    }
                }
                let wall = start.elapsed().as_secs_f64();
                let cpu = process_cpu_seconds().zip(cpu0).map(|(x, y)| x - y);
                let galaxies = calls * b;
                let rate = galaxies as f64 / wall;
                let per_cpu = cpu.filter(|c| *c > 0.0).map(|c| galaxies as f64 / c);
                let case = Case {
                    precision: p.name(),
                    threads: t,
                    batch: b,
                    calls,
                    galaxies,
                    wall_s: wall,
                    cpu_s: cpu,
                    galaxies_per_s: rate,
                    galaxies_per_cpu_s: per_cpu,
                    gflops: rate * gflop,
                    peak_share_cpu: per_cpu.map(|r| r * gflop / peak),
                    peak_share_wall: rate * gflop / (peak * t as f64),
                    load1: load_avg().map(|l| l[0]),
                };
                say(Line::Result(format!(
                    "{:>9} {:>7} {:>6} {:>11.1} {:>11} {:>9.1} {:>9.1}% {:>10} {:>6} {:>15}",
                    case.precision,
                    t,
                    b,
                    rate,
                    per_cpu.map_or("-".into(), |r| format!("{r:.1}")),
                    case.gflops,
                    100.0 * case.peak_share_wall,
                    case.peak_share_cpu
                        .map_or("-".into(), |s| format!("{:.1}%", 100.0 * s)),
                    case.load1.map_or("-".into(), |l| format!("{l:.2}")),
                    fmt_dz(info.dz_parity.or(info.dz_formula).or(info.dz_bench)),
                )));
                cases.push(case);
            }
        }
    }
    for line in scaling_lines(&cases) {
        say(Line::Result(line));
    }
    // The probe again: with the rates the block rounds measured, how far this machine's
    // speed moved during the run (other load), i.e. how far apart figures taken at
    // different moments can be for that reason alone.
    let peak_after = measure_peak(a.peak_seconds);
    let probes: Vec<f64> = [peak, peak_after]
        .into_iter()
        .chain(vit_blocks.iter().map(|b| b.probe_gflops_per_cpu_s))
        .collect();
    let (slowest, fastest, drift) = probe_drift(&probes);
    say(Line::Result(format!(
        "FMA probe at the end: {peak_after:.1} GFLOP/s per core; over the run \
         {slowest:.1}-{fastest:.1} (moved {:.0}%)",
        100.0 * drift
    )));
    if drift > DRIFT_WARN {
        say(Line::Result(format!(
            "warning: other load moved this machine's speed by {:.0}% during the run, so cases \
             measured at different moments differ by up to that much for that reason alone \
             (scripts/bench/run.sh --rounds N keeps each engine's best of N turns)",
            100.0 * drift
        )));
    }
    let report = Report {
        cpu: cpu_name(),
        cores,
        features: features(),
        kernels: format!("{:?}", ops.tier),
        model: source,
        gflop_per_galaxy: original_gflop,
        executed_gflop_per_galaxy: gflop,
        fma_peak_gflops_per_core: peak,
        fma_peak_after_gflops_per_core: peak_after,
        probe_drift: drift,
        precisions: infos,
        auto,
        vit_blocks,
        load_before,
        load_after: load_avg(),
        cases,
        z_first,
    };
    say(Line::Context(format!(
        "first predictions (input formula in `cai bench --help`): {:?}",
        report.z_first
    )));
    Ok(report)
}

/// For each precision and thread count above one: wall-clock galaxies/s on that many
/// threads over one thread's, at each precision's best batch on those threads (and at
/// that batch on one thread), one line per precision, e.g. `two threads: f32 1.99x
/// (batch 128)`. Nothing without one-thread cases to compare with.
fn scaling_lines(cases: &[Case]) -> Vec<String> {
    let mut out = Vec::new();
    let mut precisions: Vec<&str> = Vec::new();
    for c in cases {
        if !precisions.contains(&c.precision) {
            precisions.push(c.precision);
        }
    }
    for p in precisions {
        let of = |t: usize| {
            cases
                .iter()
                .filter(move |c| c.precision == p && c.threads == t)
        };
        let mut threads: Vec<usize> = cases
            .iter()
            .filter(|c| c.precision == p && c.threads > 1)
            .map(|c| c.threads)
            .collect();
        threads.sort_unstable();
        threads.dedup();
        let parts: Vec<String> = threads
            .iter()
            .filter_map(|&t| {
                let best = of(t).max_by(|a, b| a.galaxies_per_s.total_cmp(&b.galaxies_per_s))?;
                let one = of(1).find(|c| c.batch == best.batch)?;
                (one.galaxies_per_s > 0.0).then(|| {
                    format!(
                        "{t} threads {:.2}x (batch {})",
                        best.galaxies_per_s / one.galaxies_per_s,
                        best.batch
                    )
                })
            })
            .collect();
        if !parts.is_empty() {
            out.push(format!(
                "{p}: wall galaxies/s over one thread's at the same batch: {}",
                parts.join(", ")
            ));
        }
    }
    out
}

/// Above this drift ([`probe_drift`]) the report warns that other load moved the machine's speed.
const DRIFT_WARN: f64 = 0.05;

/// The slowest and fastest of the probe rates and `(fastest - slowest) / fastest` (the
/// drift: 0 for fewer than two rates or no positive one).
fn probe_drift(rates: &[f64]) -> (f64, f64, f64) {
    let hi = rates.iter().copied().fold(0.0, f64::max);
    let lo = rates.iter().copied().fold(f64::INFINITY, f64::min);
    let drift = if rates.len() < 2 || hi <= 0.0 {
        0.0
    } else {
        (hi - lo) / hi
    };
    (lo, hi, drift)
}

/// Times `model`'s transformer blocks on this thread for about `seconds` of CPU time, in
/// rounds alternating with the FMA probe.
fn time_blocks(model: &AstroMae, p: PrecisionMode, seconds: f64) -> BlockRate {
    let b = model.measure_vit_blocks(seconds);
    BlockRate {
        precision: p.name(),
        cpu_s: b.block_seconds,
        gflops_per_cpu_s: b.block_gflops(),
        probe_gflops_per_cpu_s: b.probe_gflops(),
        rounds: b.rounds,
        peak_share: b.peak_share(),
    }
}

/// Best per-core peak: by this thread's CPU time when the kernel exposes it (so time
/// spent descheduled by other load does not count), else by wall time.
fn measure_peak(min_seconds: f64) -> f64 {
    let start = Instant::now();
    let clock = || clock::thread_cpu_seconds().unwrap_or_else(|| start.elapsed().as_secs_f64());
    kernels::fma_peak(kernels::ops(), &clock, min_seconds)
}

/// This process's CPU time (all its threads), to the nanosecond.
fn process_cpu_seconds() -> Option<f64> {
    clock::process_cpu_seconds()
}

/// The 1, 5 and 15 minute load averages.
pub(crate) fn load_avg() -> Option<[f64; 3]> {
    let s = std::fs::read_to_string("/proc/loadavg").ok()?;
    let mut it = s.split_whitespace().map(|v| v.parse::<f64>().ok());
    Some([it.next()??, it.next()??, it.next()??])
}

/// `1.96 1.95 2.07`, or `unknown`.
pub(crate) fn fmt_load(l: Option<[f64; 3]>) -> String {
    l.map_or("unknown".into(), |l| {
        format!("{:.2} {:.2} {:.2}", l[0], l[1], l[2])
    })
}

fn cpu_name() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|v| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// SIMD features that matter for the kernels.
fn features() -> Vec<&'static str> {
    let mut f = Vec::new();
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            f.push("avx2");
        }
        if std::arch::is_x86_feature_detected!("fma") {
            f.push("fma");
        }
        if std::arch::is_x86_feature_detected!("avx512f") {
            f.push("avx512f");
        }
        if std::arch::is_x86_feature_detected!("avx512bf16") {
            f.push("avx512bf16");
        }
        if std::arch::is_x86_feature_detected!("avx512vnni") {
            f.push("avx512vnni");
        }
        if std::arch::is_x86_feature_detected!("avxvnni") {
            f.push("avxvnni");
        }
    }
    #[cfg(target_arch = "aarch64")]
    {
        if std::arch::is_aarch64_feature_detected!("neon") {
            f.push("neon");
        }
    }
    f
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precision_lists() {
        let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let f = PrecisionMode::Fixed;
        let all = precisions(&s(&["all"])).unwrap();
        assert_eq!(all.len(), Precision::ALL.len() + 1);
        assert_eq!(all[0], f(Precision::F32));
        assert_eq!(all.last(), Some(&PrecisionMode::Auto));
        assert_eq!(
            precisions(&s(&["auto", "int8", "f32", "int8"])).unwrap(),
            vec![f(Precision::F32), f(Precision::Int8), PrecisionMode::Auto]
        );
        assert_eq!(precisions(&[]).unwrap(), vec![f(Precision::F32)]);
        assert!(precisions(&s(&["f16"])).is_err());
    }

    #[test]
    fn drift_of_probe_rates() {
        assert_eq!(probe_drift(&[]).2, 0.0);
        assert_eq!(probe_drift(&[90.0]).2, 0.0);
        let (lo, hi, drift) = probe_drift(&[100.0, 90.0, 95.0]);
        assert_eq!((lo, hi), (90.0, 100.0));
        assert!((drift - 0.1).abs() < 1e-12);
        assert_eq!(probe_drift(&[0.0, 0.0]).2, 0.0);
    }

    #[test]
    fn scaling_over_threads() {
        let case = |precision, threads, batch, galaxies_per_s| Case {
            precision,
            threads,
            batch,
            calls: 1,
            galaxies: batch,
            wall_s: 1.0,
            cpu_s: None,
            galaxies_per_s,
            galaxies_per_cpu_s: None,
            gflops: 0.0,
            peak_share_cpu: None,
            peak_share_wall: 0.0,
            load1: None,
        };
        let cases = [
            case("f32", 1, 32, 100.0),
            case("f32", 1, 128, 110.0),
            case("int8", 1, 128, 300.0),
            case("f32", 2, 32, 190.0),
            case("f32", 2, 128, 217.8),
            case("int8", 2, 128, 585.0),
        ];
        assert_eq!(
            scaling_lines(&cases),
            [
                "f32: wall galaxies/s over one thread's at the same batch: 2 threads 1.98x (batch 128)",
                "int8: wall galaxies/s over one thread's at the same batch: 2 threads 1.95x (batch 128)",
            ]
        );
        assert!(scaling_lines(&cases[..3]).is_empty());
        assert!(scaling_lines(&cases[3..]).is_empty());
    }

    #[test]
    fn dz_between() {
        let d = Dz::between(&[1.0, 2.0, 3.0], &[1.0, 2.5, 2.0]);
        assert_eq!((d.max, d.mean, d.galaxies), (1.0, 0.5, 3));
    }
}
