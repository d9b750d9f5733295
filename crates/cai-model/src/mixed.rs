//! Mixed precision chosen by measurement (`--precision auto`).
//!
//! [`choose`] picks a [`PrecisionPlan`] for an f32 model from measurements on calibration
//! inputs, with the real kernels:
//! 1. the speed of each precision on this CPU ([`measure_rates`]: one thread, the same
//!    fc1-shaped GEMM in every precision, interleaved rounds, best of each);
//! 2. each layer's sensitivity: max |Δz| against all-f32 when only that layer is lowered,
//!    for each precision faster than f32 (for a block's attention products, bf16 and int16
//!    where [`measure_attention_rates`] finds them faster on the model's head shape), and
//!    for `qkv`/`fc1` in int8/int16 also with SmoothQuant factors folded into the LayerNorm
//!    before them ([`smoothing_factors`]), kept only where that lowers the measured error;
//!    for int8 block layers also with
//!    GPTQ's codes ([`crate::gptq`], Hessians of the layers' inputs on the calibration
//!    galaxies; on the smoothed weights too where smoothing is tried), kept only where
//!    that lowers the measured error; int8 and int16 block layers
//!    (`qkv`, `proj`, `fc1`, `fc2`) always with bias correction from their input means on
//!    the calibration inputs ([`PrecisionPlan::input_mean`]), here and in every mix;
//! 3. a greedy order of moves (a layer to a faster precision), the most time saved (layer
//!    FLOPs over the precision's rate) per unit of added lone error first, leaving out
//!    every move whose lone error alone passes the bound;
//! 4. the longest prefix of those moves whose whole mix, measured end to end, stays within
//!    the bound (bisection over the prefix length: a few full runs);
//! 5. each later move on its own on top of that mix, kept where the mix stays within the
//!    bound (lone errors do not add up, so a move past the first that breaks the bound may
//!    still fit: on the parity model the estimated GEMM speed-up went from 2.41x to 2.47x);
//!    at most one full run per layer;
//! 6. the same mix without smoothing, kept if its error is no higher (on the parity
//!    fixtures the smoothed layers' lone gains did not add up: 3.0e-4 smoothed against
//!    2.2e-4 plain).
//!
//! Steps 2 to 6 run on the first half of the calibration galaxies only
//! ([`AutoOptions::hold_out`]); the mix is then measured on the other half, and while it is
//! not within the bound there, steps 3 to 6 run again under a bound lowered by the ratio it
//! missed by (and a tenth more). A mix chosen to just fit the max |Δz| over a few galaxies
//! otherwise exceeds the bound on others: on the parity model, chosen on 4 galaxies within
//! 1e-3, it gave 2.7e-3 to 3.2e-3 on 4 others.
//!
//! [`auto_for_file`] stores the choice beside the model (`<model>.precision.json`, with
//! the model file's SHA-256, the kernel tier and the bound) and reuses it while all three
//! match.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::kernels::{self, Epilogue, PackedB, Precision};
use crate::{AstroMae, Error, Model, PlanLayer, PrecisionPlan};

/// The default bound on max |Δz| against f32 over the calibration set.
pub const DEFAULT_MAX_DZ: f64 = 1e-3;
/// SmoothQuant's migration strength `a` in `s_j = max|X_j|^a / max|W_j|^(1-a)`.
pub const SMOOTH_ALPHA: f32 = 0.5;
/// Galaxies of the calibration set when the caller has no reason to choose (half of them
/// held out, [`AutoOptions::hold_out`]). On the parity model, `auto` chosen on 8, 32 and 64
/// galaxies within 1e-3 gave max |Δz| 4.4e-4, 1.21e-3 and 8.4e-4 on 256 others
/// (`examples/auto_heldout`, 2026-12-07).
pub const DEFAULT_CALIBRATION: usize = 64;
/// A precision counts as faster than another only above this relative margin (timings of
/// equal kernels differ by a few percent).
const MIN_GAIN: f64 = 0.03;
/// Format version of the stored plan file (2: plans carry the input means of their
/// bias-corrected layers; 3: chosen with half the calibration galaxies held out; 4: int8
/// block layers may carry GPTQ codes; 5: the attention products may run in bf16; a plan of
/// another format is chosen again).
const FORMAT: u32 = 5;
/// How many times [`choose`] lowers its bound when the held-out galaxies are not within
/// it, before it falls back to all-f32.
const MAX_TRIES: usize = 6;

/// How a model's precision is chosen: one precision for the trunk, or `auto`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PrecisionMode {
    /// [`AstroMae::set_precision`] with this precision.
    Fixed(Precision),
    /// [`choose`] (or a stored choice).
    #[default]
    Auto,
}

impl PrecisionMode {
    /// `auto` or a precision's name.
    pub fn name(self) -> &'static str {
        match self {
            PrecisionMode::Fixed(p) => p.name(),
            PrecisionMode::Auto => "auto",
        }
    }
}

impl std::fmt::Display for PrecisionMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for PrecisionMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim().eq_ignore_ascii_case("auto") {
            return Ok(PrecisionMode::Auto);
        }
        Precision::parse(s)
            .map(PrecisionMode::Fixed)
            .ok_or_else(|| format!("unknown precision {s:?} (f32|bf16|int8|int16|auto)"))
    }
}

/// Calibration inputs, as for [`Model::predict`].
#[derive(Debug, Clone, Copy)]
pub struct Calibration<'a> {
    /// `n * C * H * W` image values (NCHW).
    pub images: &'a [f32],
    /// `n * 5` magnitudes.
    pub magnitudes: &'a [f32],
    /// Galaxies.
    pub n: usize,
}

/// What [`choose`] may do.
#[derive(Debug, Clone)]
pub struct AutoOptions {
    /// Bound on the mix's max |Δz| against f32 over the calibration set.
    pub max_dz: f64,
    /// Precisions a layer may be lowered to (those no faster than f32 here are skipped).
    pub candidates: Vec<Precision>,
    /// Try SmoothQuant factors on `qkv` and `fc1` before int8/int16.
    pub smoothing: bool,
    /// Try GPTQ's rounding ([`crate::gptq`]) for int8 block layers (Hessians from the
    /// galaxies the mix is chosen on). On the parity model (`examples/auto_heldout`,
    /// 2026-12-07) it put 5 layers in int8 instead of 4 with 64 calibration galaxies
    /// (estimated GEMM speed-up 1.80x against 1.82x: the held-out check lowered the bound
    /// more), 11 instead of 3 with 128 (2.01x against 1.78x, but 1.05e-3 on 256 others).
    pub gptq: bool,
    /// CPU seconds (one thread) for [`measure_rates`].
    pub rate_seconds: f64,
    /// Hold the second half of the calibration galaxies out of the choice: the mix is
    /// chosen on the first half, then checked on the held-out half, and chosen again under
    /// a lower bound while the held-out galaxies are not within `max_dz` (the max over a
    /// few galaxies overfits a mix chosen to just fit it). Needs at least 2 galaxies.
    pub hold_out: bool,
}

impl Default for AutoOptions {
    fn default() -> Self {
        Self {
            max_dz: DEFAULT_MAX_DZ,
            candidates: vec![Precision::Bf16, Precision::Int16, Precision::Int8],
            smoothing: true,
            gptq: true,
            rate_seconds: 0.6,
            hold_out: true,
        }
    }
}

/// Serde for [`Precision`] by name.
mod by_name {
    use super::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        let s = String::deserialize(d)?;
        Precision::parse(&s)
            .ok_or_else(|| serde::de::Error::custom(format!("unknown precision {s:?}")))
    }
}

/// A precision's measured GEMM rate on this CPU.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct PrecisionRate {
    /// The precision.
    #[serde(with = "by_name")]
    pub precision: Precision,
    /// GFLOP per CPU-second on one thread (fc1's shape, 520 rows).
    pub gflops: f64,
}

/// One layer's measured sensitivity to one precision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sensitivity {
    /// The layer (`blocks.3.fc1`, `cnn`…).
    pub layer: String,
    /// The precision it alone was lowered to.
    #[serde(with = "by_name")]
    pub precision: Precision,
    /// max |Δz| against all-f32 over the calibration set.
    pub max_dz: f64,
    /// The same with SmoothQuant factors folded in (int8/int16 `qkv` and `fc1`).
    pub smoothed_max_dz: Option<f64>,
    /// The lowest of the same with GPTQ's codes, smoothed or not (int8 block layers).
    #[serde(default)]
    pub gptq_max_dz: Option<f64>,
}

/// What [`choose`] found.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AutoChoice {
    /// The chosen mix.
    pub plan: PrecisionPlan,
    /// Its max |Δz| against f32 over the calibration set, measured end to end.
    pub max_dz: f64,
    /// The bound it was chosen under.
    pub bound: f64,
    /// Galaxies of the calibration set.
    pub calibration: usize,
    /// Of those, the galaxies held out of the choice ([`AutoOptions::hold_out`]; 0: none).
    #[serde(default)]
    pub held_out: usize,
    /// The mix's max |Δz| on the held-out galaxies (`None` when none were held out).
    #[serde(default)]
    pub held_out_max_dz: Option<f64>,
    /// The bound the mix was chosen under on the other galaxies: `bound`, or lower when a
    /// mix chosen under a higher one was not within `bound` on the held-out galaxies.
    #[serde(default)]
    pub target: f64,
    /// Estimated speed-up of the layers' GEMMs and the attention's products over all-f32
    /// (FLOPs over measured rates).
    pub est_gemm_speedup: f64,
    /// The rates the estimate used.
    pub rates: Vec<PrecisionRate>,
    /// The attention products' rates (f32, and bf16 when a candidate) on the model's head
    /// shape, which the `attn` layers' estimate used.
    #[serde(default)]
    pub attention_rates: Vec<PrecisionRate>,
    /// Every lone-layer measurement.
    pub sensitivities: Vec<Sensitivity>,
    /// Lone-layer measurements where smoothing was tried, and where it lowered the error.
    pub smoothing_tried: usize,
    /// See `smoothing_tried`.
    pub smoothing_helped: usize,
    /// Layers of the chosen mix that run smoothed.
    pub smoothing_used: usize,
    /// Lone-layer measurements with GPTQ's codes, where GPTQ lowered the error, and the
    /// layers of the chosen mix that run with GPTQ's codes.
    #[serde(default)]
    pub gptq_tried: usize,
    /// See `gptq_tried`.
    #[serde(default)]
    pub gptq_helped: usize,
    /// See `gptq_tried`.
    #[serde(default)]
    pub gptq_used: usize,
}

/// `n` galaxies drawn as the parity fixtures' are (`scripts/parity/make_fixtures.py`):
/// `image_len` image values per galaxy, each 0.5·N(0, 1), and `magnitudes` magnitudes,
/// each uniform in [18, 20), from a ChaCha8 stream seeded with `seed`. Calibration inputs
/// when a model comes without galaxies (`cai bench --parity-dir` chooses `auto` on them and
/// judges it on the fixtures' own galaxies).
pub fn noise_galaxies(
    n: usize,
    image_len: usize,
    magnitudes: usize,
    seed: u64,
) -> (Vec<f32>, Vec<f32>) {
    use rand::{Rng, SeedableRng};
    use rand_distr::{Distribution, StandardNormal};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let images = (0..n * image_len)
        .map(|_| {
            let x: f32 = StandardNormal.sample(&mut rng);
            0.5 * x
        })
        .collect();
    let mags = (0..n * magnitudes)
        .map(|_| 18.0 + 2.0 * rng.random::<f32>())
        .collect();
    (images, mags)
}

/// max |a - b| (0 for empty slices).
pub fn max_abs_diff(a: &[f32], b: &[f32]) -> f64 {
    a.iter()
        .zip(b)
        .map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs())
        .fold(0.0, f64::max)
}

/// max |Δz| of `model` converted to `plan` against `z_ref` (f32's predictions) on `cal`.
/// `model` must be f32.
pub fn plan_dz(
    model: &AstroMae,
    plan: &PrecisionPlan,
    cal: &Calibration<'_>,
    z_ref: &[f32],
) -> Result<f64, Error> {
    let mut m = model.clone();
    m.set_plan(plan)?;
    let z = m.predict(cal.images, cal.magnitudes, cal.n)?;
    Ok(max_abs_diff(z_ref, &z))
}

/// GFLOP per CPU-second of each precision in `precs` on the calling thread: the same
/// `520 x 192 -> 768` GEMM (a chunk of 8 galaxies through `fc1`, GELU epilogue) in each,
/// in interleaved rounds for about `seconds` in all, the best round of each.
pub fn measure_rates(precs: &[Precision], seconds: f64) -> Vec<PrecisionRate> {
    let ops = kernels::ops();
    let (m, k, n) = (520usize, 192usize, 768usize);
    let w: Vec<f32> = (0..n * k)
        .map(|i| (((i * 7919) % 1000) as f32 * 1e-3 - 0.5) * 0.1)
        .collect();
    let a: Vec<f32> = (0..m * k)
        .map(|i| ((i * 104_729) % 997) as f32 * 2e-3 - 1.0)
        .collect();
    let bias = vec![0.01f32; n];
    let mats: Vec<PackedB> = precs
        .iter()
        .map(|p| {
            let mut b = PackedB::pack_nk(&w, n, k, k, Some(&bias));
            crate::astromae::convert(&mut b, *p);
            b
        })
        .collect();
    let mut c = vec![0.0f32; m * n];
    let flops = 2.0 * (m * k * n) as f64;
    let best = best_of_rounds(mats.len(), seconds, |i| {
        ops.gemm(m, &a, k, &mats[i], &mut c, n, Epilogue::GELU)
    });
    std::hint::black_box(&c);
    rates_of(precs, &best, flops)
}

/// Runs `run(i)` for each of `n` cases once to warm up, then in interleaved rounds (at least
/// 3, then until `seconds` of the thread's CPU clock have passed); returns each case's best
/// time in seconds.
fn best_of_rounds(n: usize, seconds: f64, mut run: impl FnMut(usize)) -> Vec<f64> {
    let start = std::time::Instant::now();
    let clock =
        || crate::clock::thread_cpu_seconds().unwrap_or_else(|| start.elapsed().as_secs_f64());
    (0..n).for_each(&mut run);
    let mut best = vec![f64::INFINITY; n];
    let t0 = clock();
    let mut rounds = 0;
    while rounds < 3 || clock() - t0 < seconds {
        for (i, t) in best.iter_mut().enumerate() {
            let s = clock();
            run(i);
            *t = t.min(clock() - s);
        }
        rounds += 1;
        if rounds > 100_000 {
            break;
        }
    }
    best
}

/// `flops` over each best time, as GFLOP/s per precision.
fn rates_of(precs: &[Precision], best: &[f64], flops: f64) -> Vec<PrecisionRate> {
    precs
        .iter()
        .zip(best)
        .map(|(p, t)| PrecisionRate {
            precision: *p,
            gflops: flops / t.max(1e-9) / 1e9,
        })
        .collect()
}

/// GFLOP per CPU-second of one attention head (`t` tokens, `hd` values per head, rows
/// `3 hd` apart as in a fused qkv) in each of `precs` that attention runs in on this CPU
/// (f32; bf16 and int16 where it has kernels for them; int8 is left out):
/// [`kernels::Ops::attention`], [`kernels::Ops::attention_bf16`] and
/// [`kernels::Ops::attention_int16`] in interleaved rounds for about `seconds` in all, the
/// best round of each.
pub fn measure_attention_rates(
    precs: &[Precision],
    t: usize,
    hd: usize,
    seconds: f64,
) -> Vec<PrecisionRate> {
    let ops = kernels::ops();
    let precs: Vec<Precision> = precs
        .iter()
        .copied()
        // Without a kernel of their own bf16 and int16 run the scalar reference: far slower,
        // so never picked, and not worth timing.
        .filter(|p| ops.has_attention_kernel(*p))
        .collect();
    let ld = 3 * hd;
    let qkv: Vec<f32> = (0..t * ld)
        .map(|i| ((i * 7919) % 1000) as f32 * 2e-3 - 1.0)
        .collect();
    let head = kernels::HeadQkv {
        t,
        hd,
        ld,
        q: &qkv,
        k: &qkv[hd..],
        v: &qkv[2 * hd..],
    };
    let scale = (hd.max(1) as f32).powf(-0.5);
    let mut out = vec![0.0f32; t * hd];
    let mut ws = kernels::AttentionScratch::default();
    let run = |p: Precision, out: &mut [f32], ws: &mut kernels::AttentionScratch| {
        for _ in 0..16 {
            ops.attention_in(p, &head, scale, out, hd, ws);
        }
    };
    let flops = 16.0 * 4.0 * (t * t * hd) as f64;
    let best = best_of_rounds(precs.len(), seconds, |i| run(precs[i], &mut out, &mut ws));
    std::hint::black_box(&out);
    rates_of(&precs, &best, flops)
}

/// SmoothQuant factors for a layer whose input channels reach `x_absmax` and whose
/// weights' input channels reach `w_absmax`: `s_j = x_j^alpha / w_j^(1 - alpha)`, 1 where
/// either is zero, clamped to [1e-4, 1e4].
pub fn smoothing_factors(x_absmax: &[f32], w_absmax: &[f32], alpha: f32) -> Vec<f32> {
    x_absmax
        .iter()
        .zip(w_absmax)
        .map(|(x, w)| {
            if *x > 0.0 && *w > 0.0 && x.is_finite() && w.is_finite() {
                (x.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-4, 1e4)
            } else {
                1.0
            }
        })
        .collect()
}

/// The error of each (layer, precision) alone, the precision's best form (smoothed or not)
/// and its factors.
struct LoneError {
    layer: usize,
    precision: Precision,
    dz: f64,
    smooth: Option<Vec<f32>>,
    /// GPTQ's codes for the best form (of the smoothed weights when `smooth` is set).
    gptq: Option<Vec<i8>>,
    /// GPTQ's codes of the unsmoothed weights, when GPTQ was best (used when a mix drops
    /// the smoothing).
    gptq_plain: Option<Vec<i8>>,
}

/// Picks the fastest mix within `opts.max_dz` on `cal`, chosen on its first half and
/// checked on the other half unless `opts.hold_out` is off (see the module doc). `model`
/// must be f32 (all layers).
pub fn choose(
    model: &AstroMae,
    cal: &Calibration<'_>,
    opts: &AutoOptions,
) -> Result<AutoChoice, Error> {
    let depth = model.config().depth;
    if model.plan() != &PrecisionPlan::f32(depth) {
        return Err(Error::Config {
            file: "(precision auto)".into(),
            message: "choosing a precision mix needs the f32 model".into(),
        });
    }
    if cal.n == 0 {
        return Err(Error::Input {
            what: "calibration galaxies",
            expected: 1,
            got: 0,
        });
    }
    let z_all = model.predict(cal.images, cal.magnitudes, cal.n)?;
    // The galaxies the mix is chosen on, and those held out to check it.
    let n_sel = if opts.hold_out && cal.n >= 2 {
        cal.n.div_ceil(2)
    } else {
        cal.n
    };
    let (px, nm) = (cal.images.len() / cal.n, cal.magnitudes.len() / cal.n);
    let part = |r: std::ops::Range<usize>| Calibration {
        images: &cal.images[r.start * px..r.end * px],
        magnitudes: &cal.magnitudes[r.start * nm..r.end * nm],
        n: r.len(),
    };
    let sel = part(0..n_sel);
    let check = (n_sel < cal.n).then(|| part(n_sel..cal.n));
    let (z_ref, z_check) = z_all.split_at(n_sel.min(z_all.len()));
    let all = cal;
    let cal = &sel;
    let mut precs = vec![Precision::F32];
    for p in &opts.candidates {
        if !precs.contains(p) {
            precs.push(*p);
        }
    }
    let rates = measure_rates(&precs, opts.rate_seconds);
    let rate = |p: Precision| {
        rates
            .iter()
            .find(|r| r.precision == p)
            .map_or(0.0, |r| r.gflops)
    };
    let f32_rate = rate(Precision::F32);
    let faster: Vec<Precision> = precs[1..]
        .iter()
        .copied()
        .filter(|p| rate(*p) > f32_rate * (1.0 + MIN_GAIN))
        .collect();
    let layer_flops = model.layer_flops();
    let layers: Vec<PlanLayer> = layer_flops.iter().map(|(l, _)| *l).collect();
    // The attention products run in f32, bf16 or int16, at rates of their own.
    let cfg = model.config();
    let att_rates = measure_attention_rates(
        &precs,
        cfg.tokens + 1,
        cfg.dim / cfg.heads.max(1),
        opts.rate_seconds / 4.0,
    );
    let att_rate = |p: Precision| {
        att_rates
            .iter()
            .find(|r| r.precision == p)
            .map_or(0.0, |r| r.gflops)
    };
    let att_faster: Vec<Precision> = att_rates
        .iter()
        .filter(|r| r.precision != Precision::F32)
        .filter(|r| r.gflops > att_rate(Precision::F32) * (1.0 + MIN_GAIN))
        .map(|r| r.precision)
        .collect();
    let is_attn = |li: usize| matches!(layers[li], PlanLayer::Attn(_));
    let lrate = |li: usize, p: Precision| {
        if is_attn(li) {
            att_rate(p)
        } else {
            rate(p)
        }
    };

    // Activation statistics for smoothing.
    let smooth_on = opts.smoothing
        && faster
            .iter()
            .any(|p| matches!(p, Precision::Int8 | Precision::Int16));
    let stats = if smooth_on {
        Some(model.layer_norm_absmax(cal.images, cal.magnitudes, cal.n)?)
    } else {
        None
    };

    // Hessians (input Gram matrices) for GPTQ of the int8 block layers.
    let grams = if opts.gptq && faster.contains(&Precision::Int8) {
        Some(model.layer_input_grams(cal.images, cal.magnitudes, cal.n)?)
    } else {
        None
    };

    // Input means for bias correction of the int8/int16 block layers.
    let means = if faster
        .iter()
        .any(|p| matches!(p, Precision::Int8 | Precision::Int16))
    {
        Some(model.layer_input_means(cal.images, cal.magnitudes, cal.n)?)
    } else {
        None
    };
    // Gives every int8/int16 block layer of `plan` its input means (and the others none).
    let correct = |plan: &mut PrecisionPlan| {
        for &l in &layers {
            let m = match (&means, plan.get(l)) {
                (Some(m), Precision::Int8 | Precision::Int16) => l
                    .block_linear()
                    .and_then(|(b, which)| Some(m.get(b)?[which].clone())),
                _ => None,
            };
            plan.set_input_mean(l, m);
        }
    };

    // Lone-layer sensitivities.
    let mut lone: Vec<LoneError> = Vec::new();
    let mut sens = Vec::new();
    let (mut tried, mut helped) = (0, 0);
    let (mut g_tried, mut g_helped) = (0, 0);
    for (li, &l) in layers.iter().enumerate() {
        let factors = match (&stats, l) {
            (Some(st), PlanLayer::Qkv(b) | PlanLayer::Fc1(b)) => {
                let x = &st[b][usize::from(matches!(l, PlanLayer::Fc1(_)))];
                model
                    .input_channel_absmax(l)
                    .map(|w| smoothing_factors(x, &w, SMOOTH_ALPHA))
            }
            _ => None,
        };
        let cands = if is_attn(li) { &att_faster } else { &faster };
        for &p in cands {
            let mut plan = PrecisionPlan::f32(depth);
            plan.set(l, p);
            correct(&mut plan);
            let dz = plan_dz(model, &plan, cal, z_ref)?;
            let mut smoothed = None;
            let mut best = (dz, None);
            if let (Some(f), Precision::Int8 | Precision::Int16) = (&factors, p) {
                plan.set_smoothing(l, Some(f.clone()));
                let dzs = plan_dz(model, &plan, cal, z_ref)?;
                tried += 1;
                if dzs < dz {
                    helped += 1;
                    best = (dzs, Some(f.clone()));
                }
                smoothed = Some(dzs);
            }
            // GPTQ's codes, unsmoothed and (where tried) smoothed.
            let gram = match (&grams, p, l.block_linear()) {
                (Some(g), Precision::Int8, Some((b, which))) => g.get(b).map(|g| &g[which]),
                _ => None,
            };
            let (mut gptq, mut gptq_plain, mut g_best) = (None, None, None);
            if let Some(gram) = gram {
                let plain = model.gptq_codes(l, gram, None)?;
                let mut forms = vec![(None, plain.clone())];
                if let Some(f) = &factors {
                    forms.push((Some(f.clone()), model.gptq_codes(l, gram, Some(f))?));
                }
                for (f, codes) in forms {
                    let mut plan = PrecisionPlan::f32(depth);
                    plan.set(l, p);
                    plan.set_smoothing(l, f.clone());
                    plan.set_gptq(l, Some(codes.clone()));
                    correct(&mut plan);
                    let dzg = plan_dz(model, &plan, cal, z_ref)?;
                    g_tried += 1;
                    g_best = Some(g_best.map_or(dzg, |b: f64| b.min(dzg)));
                    if dzg < best.0 {
                        best = (dzg, f);
                        gptq = Some(codes);
                        gptq_plain = Some(plain.clone());
                    }
                }
                if gptq.is_some() {
                    g_helped += 1;
                }
            }
            tracing::debug!(layer = %l, precision = %p, dz, ?smoothed, ?g_best, "lone-layer error");
            sens.push(Sensitivity {
                layer: l.to_string(),
                precision: p,
                max_dz: dz,
                smoothed_max_dz: smoothed,
                gptq_max_dz: g_best,
            });
            lone.push(LoneError {
                layer: li,
                precision: p,
                dz: best.0,
                smooth: best.1,
                gptq,
                gptq_plain,
            });
        }
    }

    let time = |li: usize, p: Precision| layer_flops[li].1 as f64 / lrate(li, p).max(1e-9);
    let err = |li: usize, p: Precision| -> f64 {
        lone.iter()
            .find(|e| e.layer == li && e.precision == p)
            .map_or(0.0, |e| e.dz)
    };
    // The fastest mix within `target` on the selection galaxies.
    let select = |target: f64| -> Result<PrecisionPlan, Error> {
        // Greedy order of moves.
        let mut cur = vec![Precision::F32; layers.len()];
        let mut moves: Vec<(usize, Precision)> = Vec::new();
        loop {
            let mut best: Option<(f64, usize, Precision)> = None;
            for e in &lone {
                let (li, p) = (e.layer, e.precision);
                if e.dz > target || lrate(li, p) <= lrate(li, cur[li]) * (1.0 + MIN_GAIN) {
                    continue;
                }
                let dt = time(li, cur[li]) - time(li, p);
                if dt <= 0.0 {
                    continue;
                }
                let de = (e.dz - err(li, cur[li])).max(1e-12);
                let score = dt / de;
                if best.is_none_or(|(s, _, _)| score > s) {
                    best = Some((score, li, p));
                }
            }
            match best {
                Some((_, li, p)) => {
                    cur[li] = p;
                    moves.push((li, p));
                }
                None => break,
            }
        }
        // The mix of the moves marked in `kept`, applied in order.
        let plan_of_kept = |kept: &[bool]| {
            let mut plan = PrecisionPlan::f32(depth);
            for (&(li, p), _) in moves.iter().zip(kept).filter(|(_, k)| **k) {
                plan.set(layers[li], p);
            }
            for (li, &l) in layers.iter().enumerate() {
                let p = plan.get(l);
                let e = lone.iter().find(|e| e.layer == li && e.precision == p);
                plan.set_smoothing(l, e.and_then(|e| e.smooth.clone()));
                plan.set_gptq(l, e.and_then(|e| e.gptq.clone()));
            }
            correct(&mut plan);
            plan
        };
        let plan_of = |k: usize| plan_of_kept(&(0..moves.len()).map(|i| i < k).collect::<Vec<_>>());

        // The longest prefix whose whole mix is within the bound.
        let (mut lo, mut lo_dz) = (0usize, 0.0f64);
        let full = moves.len();
        if full > 0 {
            let dz = plan_dz(model, &plan_of(full), cal, z_ref)?;
            if dz <= target {
                (lo, lo_dz) = (full, dz);
            } else {
                let mut hi = full;
                while hi - lo > 1 {
                    let mid = (lo + hi) / 2;
                    let dz = plan_dz(model, &plan_of(mid), cal, z_ref)?;
                    if dz <= target {
                        (lo, lo_dz) = (mid, dz);
                    } else {
                        hi = mid;
                    }
                }
            }
        }
        // Then each later move on its own, kept where the mix stays within the bound: lone
        // errors do not add up, so moves past the first that breaks the bound may still fit
        // (at most one full run per move, and no more than there are layers).
        let mut kept: Vec<bool> = (0..full).map(|i| i < lo).collect();
        let mut extra = 0;
        for i in (lo + 1..full).take(layers.len()) {
            kept[i] = true;
            let dz = plan_dz(model, &plan_of_kept(&kept), cal, z_ref)?;
            if dz <= target {
                lo_dz = dz;
                extra += 1;
            } else {
                kept[i] = false;
            }
        }
        tracing::debug!(
            prefix = lo,
            extra,
            moves = full,
            target,
            "precision moves kept"
        );
        let mut plan = plan_of_kept(&kept);
        // Smoothing is kept per layer where it lowered that layer's lone error; lone gains
        // need not add up, so the mix without any smoothing is measured too and kept if no
        // worse.
        if layers.iter().any(|l| plan.smoothing(*l).is_some()) {
            let mut plain = plan.clone();
            for (li, &l) in layers.iter().enumerate() {
                if plain.smoothing(l).is_none() {
                    continue;
                }
                plain.set_smoothing(l, None);
                // GPTQ's codes were for the smoothed weights: those of the plain ones.
                let p = plain.get(l);
                let g = lone
                    .iter()
                    .find(|e| e.layer == li && e.precision == p)
                    .and_then(|e| e.gptq_plain.clone());
                plain.set_gptq(l, g);
            }
            let dz = plan_dz(model, &plain, cal, z_ref)?;
            if dz <= lo_dz {
                plan = plain;
            }
        }
        Ok(plan)
    };

    // Chosen on the selection galaxies; while the held-out ones are not within the bound,
    // chosen again under a bound lowered by the ratio they missed it by (and a tenth more).
    let mut target = opts.max_dz;
    let mut tries = 0;
    let (plan, held_dz) = loop {
        let plan = select(target)?;
        let held = match &check {
            Some(c) => Some(plan_dz(model, &plan, c, z_check)?),
            None => None,
        };
        match held {
            Some(h) if h > opts.max_dz => {
                tracing::debug!(target, held_out = h, "held-out galaxies outside the bound");
                tries += 1;
                if tries >= MAX_TRIES {
                    target = 0.0;
                    break (PrecisionPlan::f32(depth), Some(0.0));
                }
                target *= (0.9 * opts.max_dz / h).min(0.9);
            }
            _ => break (plan, held),
        }
    };
    // The error reported is over all calibration galaxies, held out or not.
    let max_dz = plan_dz(model, &plan, all, &z_all)?;
    let t_f32: f64 = (0..layers.len()).map(|li| time(li, Precision::F32)).sum();
    let t_plan: f64 = layers
        .iter()
        .enumerate()
        .map(|(li, l)| time(li, plan.get(*l)))
        .sum();
    let used = layers
        .iter()
        .filter(|l| plan.smoothing(**l).is_some())
        .count();
    let g_used = layers
        .iter()
        .filter(|l| plan.gptq(**l).is_some() && plan.get(**l) == Precision::Int8)
        .count();
    Ok(AutoChoice {
        plan,
        max_dz,
        bound: opts.max_dz,
        calibration: all.n,
        held_out: check.as_ref().map_or(0, |c| c.n),
        held_out_max_dz: held_dz,
        target,
        est_gemm_speedup: t_f32 / t_plan.max(1e-12),
        rates,
        attention_rates: att_rates,
        sensitivities: sens,
        smoothing_tried: tried,
        smoothing_helped: helped,
        smoothing_used: used,
        gptq_tried: g_tried,
        gptq_helped: g_helped,
        gptq_used: g_used,
    })
}

/// A choice stored beside its model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPlan {
    /// File format version.
    pub format: u32,
    /// SHA-256 (hex) of the model file the choice was made for.
    pub model_sha256: String,
    /// The kernel tier it was measured on (`Avx512`, `Avx2`…).
    pub kernels: String,
    /// What was chosen.
    pub choice: AutoChoice,
}

/// Why [`auto_for_file`] chose again rather than reuse a stored plan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reuse {
    /// The stored plan matched (hash, tier, bound) and was used.
    Reused,
    /// Chosen now; the reason the stored one (if any) was not used.
    Chosen(String),
}

/// `<model>.precision.json`: where [`auto_for_file`] keeps the choice for `model`.
pub fn plan_path(model: &Path) -> PathBuf {
    let mut s = model.as_os_str().to_os_string();
    s.push(".precision.json");
    PathBuf::from(s)
}

/// SHA-256 of a model file's bytes, hex.
pub fn model_sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The kernel tier of this process, as stored plans name it.
pub fn kernel_tier() -> String {
    format!("{:?}", kernels::ops().tier)
}

/// Reads a stored plan; `Ok(None)` when there is no file.
pub fn read_stored(path: &Path) -> Result<Option<StoredPlan>, Error> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => {
            return Err(Error::PlanFile {
                path: path.display().to_string(),
                message: e.to_string(),
            })
        }
    };
    serde_json::from_slice(&bytes)
        .map(Some)
        .map_err(|e| Error::PlanFile {
            path: path.display().to_string(),
            message: format!("not a stored precision plan: {e}"),
        })
}

/// Writes a stored plan (pretty JSON), replacing any file there.
pub fn write_stored(path: &Path, plan: &StoredPlan) -> Result<(), Error> {
    let err = |message: String| Error::PlanFile {
        path: path.display().to_string(),
        message,
    };
    let json = serde_json::to_vec_pretty(plan).map_err(|e| err(e.to_string()))?;
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, json).map_err(|e| err(e.to_string()))?;
    std::fs::rename(&tmp, path).map_err(|e| err(e.to_string()))
}

/// Why `stored` does not fit a model of hash `sha` under `bound` on this tier (`None`: it
/// fits).
fn mismatch(stored: &StoredPlan, sha: &str, bound: f64, depth: usize) -> Option<String> {
    if stored.format != FORMAT {
        return Some(format!("stored format {} (now {FORMAT})", stored.format));
    }
    if stored.model_sha256 != sha {
        return Some("the model file changed (SHA-256 differs)".into());
    }
    if stored.kernels != kernel_tier() {
        return Some(format!(
            "measured on the {} kernels, running {}",
            stored.kernels,
            kernel_tier()
        ));
    }
    if stored.choice.bound != bound {
        return Some(format!(
            "chosen for max |Δz| {:e}, asked {bound:e}",
            stored.choice.bound
        ));
    }
    if stored.choice.plan.blocks.len() != depth {
        return Some("the plan's depth differs from the model's".into());
    }
    None
}

/// `--precision auto` for a model file: the stored choice at [`plan_path`]`(model_path)`
/// when it was made for these bytes (SHA-256), this kernel tier and `opts.max_dz`; else
/// [`choose`] on `cal` and store the result there (a failed write is logged, not fatal).
/// `model` is the f32 model loaded from `model_bytes`.
pub fn auto_for_file(
    model_path: &Path,
    model_bytes: &[u8],
    model: &AstroMae,
    cal: &Calibration<'_>,
    opts: &AutoOptions,
) -> Result<(StoredPlan, Reuse), Error> {
    let sha = model_sha256(model_bytes);
    let path = plan_path(model_path);
    let depth = model.config().depth;
    let reason = match read_stored(&path) {
        Ok(Some(s)) => match mismatch(&s, &sha, opts.max_dz, depth) {
            None => return Ok((s, Reuse::Reused)),
            Some(r) => r,
        },
        Ok(None) => format!("no stored plan at {}", path.display()),
        Err(e) => e.to_string(),
    };
    let choice = choose(model, cal, opts)?;
    let stored = StoredPlan {
        format: FORMAT,
        model_sha256: sha,
        kernels: kernel_tier(),
        choice,
    };
    if let Err(e) = write_stored(&path, &stored) {
        tracing::warn!(error = %e, "could not store the precision plan");
    }
    Ok((stored, Reuse::Chosen(reason)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse() {
        assert_eq!("auto".parse::<PrecisionMode>(), Ok(PrecisionMode::Auto));
        assert_eq!(
            "Int16".parse::<PrecisionMode>(),
            Ok(PrecisionMode::Fixed(Precision::Int16))
        );
        assert!("fp8".parse::<PrecisionMode>().is_err());
        assert_eq!(PrecisionMode::Auto.to_string(), "auto");
    }

    #[test]
    fn smoothing_factor_formula() {
        let s = smoothing_factors(&[4.0, 0.0, 1.0], &[1.0, 2.0, 4.0], 0.5);
        assert_eq!(s, vec![2.0, 1.0, 0.5]);
        let s = smoothing_factors(&[1e12], &[1e-12], 0.5);
        assert_eq!(s, vec![1e4]);
    }

    #[test]
    fn plan_path_appends() {
        assert_eq!(
            plan_path(Path::new("/m/model.pt")),
            PathBuf::from("/m/model.pt.precision.json")
        );
    }
}
