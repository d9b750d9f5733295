//! Synthetic SDSS-like galaxies: plausible images, magnitudes and redshifts.
//!
//! Galaxy `i` of a data set is a pure function of `(seed, i)`: it draws from
//! its own ChaCha8 stream seeded by both, so any chunk can be made
//! independently and in parallel ([`generate`]) and a big file can be
//! streamed to disk ([`write_dataset`]). A seed gives the same bits on every
//! run and thread count; our maths goes through the pure-Rust `libm` crate so
//! platforms should agree too (rand_distr's normal and exponential samplers
//! call the platform's `exp`/`ln` in their rare ziggurat edge cases, which is
//! not checked across platforms).
//!
//! The model, in the order a galaxy is drawn ([`galaxy_params`]):
//!
//! 1. **Redshift.** 93%: an SDSS main-galaxy-sample-like
//!    `n(z) ∝ z² exp(-(z/z0)^1.5)` with `z0 = 0.0708` (median ≈ 0.10, almost
//!    all below 0.3); 7%: a luminous-red-galaxy tail, normal around 0.33
//!    (σ 0.09) cut to 0.12..0.62.
//! 2. **Type.** Early (elliptical) with probability 0.3 + 0.6 z (the tail is
//!    all early), else late; a continuous SED type `t` in 0..1 (0 =
//!    elliptical, 0.5 = Sbc, 1 = irregular) blends three rest-frame
//!    templates given as AB magnitudes vs wavelength, with 4000 Å breaks of
//!    decreasing strength.
//! 3. **Luminosity.** A Schechter function per type (early M* = -21.4,
//!    α = -0.7; late M* = -21.0, α = -1.25; r band, h = 0.7) truncated so the
//!    apparent r lies in 14..17.77 (the MGS flux limit; 14..19.5 for the
//!    tail), with flat ΛCDM distances (H0 = 70, Ωm = 0.3).
//! 4. **Magnitudes.** u, g, r, i, z from the template redshifted through
//!    top-hat bands (so the 4000 Å break moves from u into g and colours and
//!    k-corrections change with z), plus 0.04 mag of colour scatter; the
//!    stored magnitudes add SDSS-like photometric errors (larger in u, z).
//! 5. **Shape.** Sérsic profile, n ≈ 4 (early) or n ≈ 1 (late); half-light
//!    radius from a size-luminosity relation (4 kpc·L^0.6 early, 5 kpc·L^0.3
//!    late, 0.12 dex scatter) turned into arcseconds by the angular-diameter
//!    distance, so it shrinks with z; axis ratio (late types from a random
//!    inclination of a thick disk); random position angle; centre jitter of
//!    0.3 px.
//! 6. **Image.** 0.396"/pixel, pixel values in nanomaggies (zero point 22.5)
//!    so a pixel holds flux·profile; in 20% of stamps a field star; a
//!    Gaussian PSF per band (r seeing log-normal around 1.3" FWHM, u and g
//!    broader); Gaussian sky noise per band (σ 0.05, 0.02, 0.027, 0.04,
//!    0.13 nmgy, scaled ±10% per galaxy, u and z noisiest) plus photon noise
//!    of the source.

use std::path::Path;

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Exp1, StandardNormal};
use rayon::prelude::*;

use crate::dataset::{DatasetSpec, DatasetWriter};
use crate::error::{Error, Result};
use crate::native::{Partition, NUM_BANDS};

/// Pixel scale of SDSS images, arcseconds per pixel.
pub const PIXEL_SCALE_ARCSEC: f64 = 0.396;
/// AB magnitude of one nanomaggy.
pub const NMGY_ZERO_POINT: f64 = 22.5;
/// Galaxies generated and written per chunk by [`write_dataset`].
pub const WRITE_CHUNK: usize = 4096;

/// What to generate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of galaxies in the data set (used by [`write_dataset`]).
    pub galaxies: u64,
    /// Seed: the same seed gives the same galaxies, bit for bit.
    pub seed: u64,
    /// Image side in pixels (32 as in the original; at least 8).
    pub size: usize,
}

impl Default for SynthConfig {
    fn default() -> Self {
        SynthConfig {
            galaxies: 1000,
            seed: 0,
            size: 32,
        }
    }
}

/// The drawn physical parameters of one synthetic galaxy.
#[derive(Debug, Clone, PartialEq)]
pub struct GalaxyParams {
    /// Index in the data set.
    pub index: u64,
    /// Redshift.
    pub redshift: f64,
    /// True for an early type (elliptical, Sérsic n ≈ 4).
    pub early_type: bool,
    /// True if drawn from the luminous-red-galaxy tail of n(z).
    pub lrg_tail: bool,
    /// SED type: 0 elliptical, 0.5 Sbc, 1 irregular.
    pub sed_type: f64,
    /// Rest-frame absolute r magnitude (h = 0.7).
    pub abs_mag_r: f64,
    /// Apparent u, g, r, i, z magnitudes (AB), before measurement errors.
    pub true_mags: [f64; 5],
    /// The stored magnitudes: `true_mags` plus photometric errors.
    pub observed_mags: [f64; 5],
    /// One-sigma photometric errors of `observed_mags`.
    pub mag_errors: [f64; 5],
    /// Sérsic index.
    pub sersic_n: f64,
    /// Half-light radius in kpc.
    pub half_light_kpc: f64,
    /// Half-light radius (semi-major axis) in arcseconds.
    pub half_light_arcsec: f64,
    /// Axis ratio b/a.
    pub axis_ratio: f64,
    /// Position angle of the major axis, radians.
    pub position_angle: f64,
    /// Centre offset from the stamp centre, pixels (x, y).
    pub offset_px: [f64; 2],
    /// PSF full width at half maximum per band, arcseconds.
    pub psf_fwhm_arcsec: [f64; 5],
    /// Sky noise scale factor of this field.
    pub sky_scale: f64,
}

// ---------------------------------------------------------------- cosmology

const C_OVER_H0_MPC: f64 = 299_792.458 / 70.0;
const OMEGA_M: f64 = 0.3;

fn inv_e(z: f64) -> f64 {
    let a = 1.0 + z;
    1.0 / libm::sqrt(OMEGA_M * a * a * a + (1.0 - OMEGA_M))
}

/// Comoving distance in Mpc (flat ΛCDM, H0 = 70, Ωm = 0.3), Simpson's rule.
pub fn comoving_distance_mpc(z: f64) -> f64 {
    const STEPS: usize = 32;
    let h = z / STEPS as f64;
    let mut s = inv_e(0.0) + inv_e(z);
    for k in 1..STEPS {
        let w = if k % 2 == 1 { 4.0 } else { 2.0 };
        s += w * inv_e(k as f64 * h);
    }
    C_OVER_H0_MPC * s * h / 3.0
}

/// Distance modulus `5 log10(D_L / 10 pc)`.
pub fn distance_modulus(z: f64) -> f64 {
    let dl = (1.0 + z) * comoving_distance_mpc(z);
    5.0 * libm::log10(dl.max(1e-6)) + 25.0
}

/// Angular-diameter distance in Mpc.
pub fn angular_diameter_distance_mpc(z: f64) -> f64 {
    comoving_distance_mpc(z) / (1.0 + z)
}

// ---------------------------------------------------------------- SEDs

/// Rest wavelengths (Å) of the template tables.
const TEMPLATE_LAMBDA: [f64; 17] = [
    1500.0, 2500.0, 3000.0, 3500.0, 3800.0, 3950.0, 4100.0, 4400.0, 4700.0, 5500.0, 6166.0, 7000.0,
    7480.0, 8000.0, 8932.0, 10000.0, 12000.0,
];

/// Rest-frame AB magnitudes relative to 6166 Å: elliptical, Sbc, irregular.
/// A strong 4000 Å break (≈0.85 mag between 3950 and 4100 Å) in ellipticals,
/// weaker in later types; colours close to SDSS galaxies at z ≈ 0.
const TEMPLATES: [[f64; 17]; 3] = [
    [
        6.0, 4.6, 3.7, 2.65, 2.3, 2.05, 1.2, 1.0, 0.8, 0.32, 0.0, -0.25, -0.38, -0.5, -0.68, -0.86,
        -1.1,
    ],
    [
        3.2, 2.6, 2.3, 1.95, 1.75, 1.6, 1.05, 0.83, 0.58, 0.22, 0.0, -0.2, -0.3, -0.4, -0.52,
        -0.64, -0.83,
    ],
    [
        1.0, 1.0, 1.0, 0.95, 0.9, 0.85, 0.6, 0.5, 0.36, 0.15, 0.0, -0.12, -0.19, -0.24, -0.3,
        -0.36, -0.45,
    ],
];

/// SDSS band centres and top-hat widths (Å), u, g, r, i, z.
const BAND_CENTRE: [f64; 5] = [3551.0, 4686.0, 6166.0, 7480.0, 8932.0];
const BAND_WIDTH: [f64; 5] = [600.0, 1300.0, 1150.0, 1250.0, 1000.0];

/// Template magnitude of SED type `t` at rest wavelength `lambda` (Å).
fn template_mag(t: f64, lambda: f64) -> f64 {
    let l = libm::log(lambda);
    let last = TEMPLATE_LAMBDA.len() - 1;
    let (k, f) = if lambda <= TEMPLATE_LAMBDA[0] {
        (0, 0.0)
    } else if lambda >= TEMPLATE_LAMBDA[last] {
        (last - 1, 1.0)
    } else {
        let k = TEMPLATE_LAMBDA
            .iter()
            .position(|&x| x > lambda)
            .unwrap_or(last)
            .saturating_sub(1)
            .min(last - 1);
        let (a, b) = (
            libm::log(TEMPLATE_LAMBDA[k]),
            libm::log(TEMPLATE_LAMBDA[k + 1]),
        );
        (k, (l - a) / (b - a))
    };
    let at = |tpl: &[f64; 17]| tpl[k] + f * (tpl[k + 1] - tpl[k]);
    let t = t.clamp(0.0, 1.0);
    if t <= 0.5 {
        let w = t / 0.5;
        (1.0 - w) * at(&TEMPLATES[0]) + w * at(&TEMPLATES[1])
    } else {
        let w = (t - 0.5) / 0.5;
        (1.0 - w) * at(&TEMPLATES[1]) + w * at(&TEMPLATES[2])
    }
}

/// Band-averaged template magnitude of band `b` observed at redshift `z`.
fn band_mag(t: f64, b: usize, z: f64) -> f64 {
    const SAMPLES: usize = 9;
    let mut flux = 0.0;
    for k in 0..SAMPLES {
        let lam = BAND_CENTRE[b] + BAND_WIDTH[b] * ((k as f64 + 0.5) / SAMPLES as f64 - 0.5);
        flux += libm::pow(10.0, -0.4 * template_mag(t, lam / (1.0 + z)));
    }
    -2.5 * libm::log10(flux / SAMPLES as f64)
}

/// Apparent magnitude in band `b` minus the absolute rest-frame r magnitude
/// and the distance modulus: the k-correction plus the rest colour.
fn k_term(t: f64, b: usize, z: f64) -> f64 {
    -2.5 * libm::log10(1.0 + z) + band_mag(t, b, z) - band_mag(t, 2, 0.0)
}

// ---------------------------------------------------------------- drawing

fn rng_for(seed: u64, index: u64) -> ChaCha8Rng {
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&index.to_le_bytes());
    key[16..28].copy_from_slice(b"cai-synth-v1");
    ChaCha8Rng::from_seed(key)
}

fn normal(rng: &mut ChaCha8Rng) -> f64 {
    rng.sample(StandardNormal)
}

fn uniform(rng: &mut ChaCha8Rng) -> f64 {
    rng.random::<f64>()
}

/// Draws `x = L/L*` from a Schechter function `x^α e^-x` truncated to
/// `x_min..x_max` (α ≤ 0 for the exponential proposal; any α on the log
/// proposal). Bounded: falls back to `x_min` after many rejections.
fn sample_schechter(rng: &mut ChaCha8Rng, alpha: f64, x_min: f64, x_max: f64) -> f64 {
    const TRIES: usize = 10_000;
    if !(x_min > 0.0 && x_max > x_min) {
        return x_min.max(1e-6);
    }
    if x_min >= 1.0 && alpha <= 0.0 {
        for _ in 0..TRIES {
            let x = x_min + rng.sample::<f64, _>(Exp1);
            if x <= x_max && uniform(rng) <= libm::pow(x / x_min, alpha) {
                return x;
            }
        }
        return x_min;
    }
    let (y0, y1) = (libm::log(x_min), libm::log(x_max));
    let g = |y: f64| (alpha + 1.0) * y - libm::exp(y);
    let mut gmax = g(y0).max(g(y1));
    if alpha + 1.0 > 0.0 {
        let ys = libm::log(alpha + 1.0);
        if ys > y0 && ys < y1 {
            gmax = gmax.max(g(ys));
        }
    }
    for _ in 0..TRIES {
        let y = y0 + (y1 - y0) * uniform(rng);
        if uniform(rng) <= libm::exp(g(y) - gmax) {
            return libm::exp(y);
        }
    }
    x_min
}

/// The parameters of galaxy `index` (no image), as [`generate`] draws them.
pub fn galaxy_params(cfg: &SynthConfig, index: u64) -> GalaxyParams {
    let mut rng = rng_for(cfg.seed, index);
    draw_params(&mut rng, index)
}

fn draw_params(rng: &mut ChaCha8Rng, index: u64) -> GalaxyParams {
    // 1. Redshift.
    let lrg_tail = uniform(rng) < 0.07;
    let z = if lrg_tail {
        (0.33 + 0.09 * normal(rng)).clamp(0.12, 0.62)
    } else {
        let u: f64 = rng.sample::<f64, _>(Exp1) + rng.sample::<f64, _>(Exp1);
        (0.0708 * libm::pow(u, 2.0 / 3.0)).clamp(0.01, 0.6)
    };
    // 2. Type.
    let early = lrg_tail || uniform(rng) < (0.3 + 0.6 * z).min(0.6);
    let t = if early {
        (0.12 * normal(rng)).abs().min(0.35)
    } else {
        0.45 + 0.55 * uniform(rng)
    };
    // 3. Luminosity within the flux window.
    let (m_star, alpha) = if early { (-21.4, -0.7) } else { (-21.0, -1.25) };
    let r_faint = if lrg_tail { 19.5 } else { 17.77 };
    let dm = distance_modulus(z);
    let kr = k_term(t, 2, z);
    let x_of = |m_app: f64| libm::pow(10.0, -0.4 * (m_app - dm - kr - m_star));
    let x = sample_schechter(rng, alpha, x_of(r_faint), x_of(14.0));
    let abs_r = m_star - 2.5 * libm::log10(x);
    // 4. Magnitudes.
    const M5: [f64; 5] = [21.6, 22.6, 22.3, 21.7, 20.4];
    let mut true_mags = [0.0; 5];
    let mut observed = [0.0; 5];
    let mut errors = [0.0; 5];
    for b in 0..NUM_BANDS {
        let scatter = if b == 2 { 0.0 } else { 0.04 * normal(rng) };
        true_mags[b] = abs_r + dm + k_term(t, b, z) + scatter;
        let snr_term = 0.217 * libm::pow(10.0, 0.4 * (true_mags[b] - M5[b]));
        errors[b] = libm::sqrt(0.01 * 0.01 + snr_term * snr_term);
        observed[b] = true_mags[b] + errors[b] * normal(rng);
    }
    // 5. Shape.
    let size_scatter = libm::pow(10.0, 0.12 * normal(rng));
    let (n, re_kpc, q) = if early {
        let n = (4.0 * libm::pow(10.0, 0.06 * normal(rng))).clamp(2.5, 6.0);
        let re = 4.0 * libm::pow(x, 0.6) * size_scatter;
        (n, re, 0.55 + 0.45 * uniform(rng))
    } else {
        let n = (libm::pow(10.0, 0.08 * normal(rng))).clamp(0.6, 2.0);
        let re = 5.0 * libm::pow(x, 0.3) * size_scatter;
        let cos_i = uniform(rng);
        let q0 = 0.15;
        (n, re, libm::sqrt(cos_i * cos_i * (1.0 - q0 * q0) + q0 * q0))
    };
    let da_kpc = angular_diameter_distance_mpc(z) * 1000.0;
    let re_arcsec = (re_kpc / da_kpc * 206_264.806).clamp(0.15, 12.0);
    let pa = std::f64::consts::PI * uniform(rng);
    let offset = [0.3 * normal(rng), 0.3 * normal(rng)];
    // 6. Observing conditions.
    let seeing_r = (1.3 * libm::pow(10.0, 0.05 * normal(rng))).clamp(0.9, 2.2);
    const SEEING_FACTOR: [f64; 5] = [1.12, 1.07, 1.0, 0.96, 0.98];
    let psf = SEEING_FACTOR.map(|f| f * seeing_r);
    let sky_scale = (1.0 + 0.1 * normal(rng)).clamp(0.7, 1.3);
    GalaxyParams {
        index,
        redshift: z,
        early_type: early,
        lrg_tail,
        sed_type: t,
        abs_mag_r: abs_r,
        true_mags,
        observed_mags: observed,
        mag_errors: errors,
        sersic_n: n,
        half_light_kpc: re_kpc,
        half_light_arcsec: re_arcsec,
        axis_ratio: q,
        position_angle: pa,
        offset_px: offset,
        psf_fwhm_arcsec: psf,
        sky_scale,
    }
}

// ---------------------------------------------------------------- rendering

/// Sky noise per band (nanomaggies per pixel) and electrons per nanomaggy.
const SKY_SIGMA: [f64; 5] = [0.05, 0.02, 0.027, 0.04, 0.13];
const GAIN_E_PER_NMGY: [f64; 5] = [160.0, 900.0, 940.0, 700.0, 190.0];
/// Border rendered around the stamp so the PSF sees light from outside it.
const PAD: usize = 10;

/// Per-thread buffers.
struct Scratch {
    /// Unit-flux galaxy profile on the padded grid.
    profile: Vec<f64>,
    /// One band before convolution, padded grid.
    band: Vec<f64>,
    /// After the horizontal pass: padded rows x stamp columns.
    rows: Vec<f64>,
    kernel: Vec<f64>,
    /// Radial profile table.
    table: Vec<f64>,
}

impl Scratch {
    fn new(size: usize) -> Self {
        let p = size + 2 * PAD;
        Scratch {
            profile: vec![0.0; p * p],
            band: vec![0.0; p * p],
            rows: vec![0.0; p * size],
            kernel: Vec::new(),
            table: Vec::new(),
        }
    }
}

/// Sérsic b_n (Ciotti & Bertin 1999 expansion).
fn sersic_b(n: f64) -> f64 {
    2.0 * n - 1.0 / 3.0 + 4.0 / (405.0 * n) + 46.0 / (25_515.0 * n * n)
}

/// Mantissa bits of `r²` used to index the radial table: 32 nodes per
/// octave of `r²`, linear interpolation between them (error < 0.1%).
const TABLE_MANT_BITS: u32 = 5;
const TABLE_SHIFT: u32 = 52 - TABLE_MANT_BITS;

/// A profile `f(r²)` tabulated at nodes spaced evenly in the f64 exponent and
/// top mantissa bits of `r²`, so a lookup is a shift, a mask and a lerp.
struct RadialTable<'a> {
    lo: u64,
    lo_r2: f64,
    hi_r2: f64,
    values: &'a [f64],
}

impl<'a> RadialTable<'a> {
    /// Tabulates `f` for `r²` in `r2_min..=r2_max` (both > 0) into `values`.
    fn build(r2_min: f64, r2_max: f64, f: impl Fn(f64) -> f64, values: &'a mut Vec<f64>) -> Self {
        let lo = r2_min.to_bits() >> TABLE_SHIFT;
        let hi = (r2_max.to_bits() >> TABLE_SHIFT).max(lo);
        values.clear();
        values.extend((lo..=hi + 1).map(|k| f(f64::from_bits(k << TABLE_SHIFT))));
        RadialTable {
            lo,
            lo_r2: f64::from_bits(lo << TABLE_SHIFT),
            hi_r2: f64::from_bits(hi << TABLE_SHIFT),
            values,
        }
    }

    fn get(&self, r2: f64) -> f64 {
        let bits = r2.clamp(self.lo_r2, self.hi_r2).to_bits();
        let k = ((bits >> TABLE_SHIFT) - self.lo) as usize;
        let frac = (bits & ((1u64 << TABLE_SHIFT) - 1)) as f64 / (1u64 << TABLE_SHIFT) as f64;
        let (a, b) = (self.values[k], self.values[k + 1]);
        a + frac * (b - a)
    }
}

/// Renders the unit-flux Sérsic profile of `g` on the padded grid.
fn render_profile(g: &GalaxyParams, size: usize, table: &mut Vec<f64>, out: &mut [f64]) {
    let p = size + 2 * PAD;
    let n = g.sersic_n;
    let b = sersic_b(n);
    let re = (g.half_light_arcsec / PIXEL_SCALE_ARCSEC).max(0.3);
    let q = g.axis_ratio.clamp(0.05, 1.0);
    // Total flux of I(r) = exp(-b((r/re)^(1/n) - 1)) over the plane, pixel units.
    let total = 2.0 * std::f64::consts::PI * q * re * re * n * libm::exp(b) / libm::pow(b, 2.0 * n)
        * libm::tgamma(2.0 * n);
    let norm = libm::exp(b) / total;
    let (s, c) = (libm::sin(g.position_angle), libm::cos(g.position_angle));
    let cx = (size / 2) as f64 + PAD as f64 + g.offset_px[0];
    let cy = (size / 2) as f64 + PAD as f64 + g.offset_px[1];
    let inv_re2 = 1.0 / (re * re);
    let inv_q2 = 1.0 / (q * q);
    let expo = 0.5 / n;
    // r² (in units of re²) ranges from ~0 (0.01 px from the centre) to the
    // far corner of the padded grid along the minor axis.
    let r2_min = (1e-4 * inv_re2).max(1e-30);
    let r2_max = 2.0 * (p * p) as f64 * inv_re2 * inv_q2;
    // r2^expo at a node 2^e (1 + m/32) is 2^(e expo) (1 + m/32)^expo: one
    // pow per mantissa step and per octave instead of one per node.
    let mant: [f64; 1 << TABLE_MANT_BITS] =
        std::array::from_fn(|m| libm::pow(1.0 + m as f64 / (1u64 << TABLE_MANT_BITS) as f64, expo));
    let f = RadialTable::build(
        r2_min,
        r2_max,
        |r2| {
            let bits = r2.to_bits();
            let e = ((bits >> 52) & 0x7ff) as i32 - 1023;
            let m = ((bits >> TABLE_SHIFT) & ((1 << TABLE_MANT_BITS) - 1)) as usize;
            norm * libm::exp(-b * libm::exp2(f64::from(e) * expo) * mant[m])
        },
        table,
    );
    let value = |x: f64, y: f64| {
        let (dx, dy) = (x - cx, y - cy);
        let u = dx * c + dy * s;
        let v = -dx * s + dy * c;
        f.get((u * u + v * v * inv_q2) * inv_re2)
    };
    for j in 0..p {
        for i in 0..p {
            let (x, y) = (i as f64, j as f64);
            let d2 = (x - cx) * (x - cx) + (y - cy) * (y - cy);
            // Finer sampling where the profile is steep (near the centre).
            let k: usize = if d2 < 6.25 {
                9
            } else if d2 < 36.0 {
                4
            } else {
                1
            };
            let v = if k == 1 {
                value(x, y)
            } else {
                let mut acc = 0.0;
                let step = 1.0 / k as f64;
                for sj in 0..k {
                    for si in 0..k {
                        acc += value(
                            x - 0.5 + (si as f64 + 0.5) * step,
                            y - 0.5 + (sj as f64 + 0.5) * step,
                        );
                    }
                }
                acc / (k * k) as f64
            };
            out[j * p + i] = v;
        }
    }
}

/// Normalised Gaussian kernel of `sigma` pixels, radius at most `PAD`.
fn gaussian_kernel(sigma: f64, out: &mut Vec<f64>) {
    let radius = (libm::ceil(3.5 * sigma) as usize).clamp(1, PAD);
    out.clear();
    let mut sum = 0.0;
    for k in 0..=2 * radius {
        let d = k as f64 - radius as f64;
        let v = libm::exp(-0.5 * d * d / (sigma * sigma));
        out.push(v);
        sum += v;
    }
    for v in out.iter_mut() {
        *v /= sum;
    }
}

/// Convolves the padded `band` grid with the separable `kernel` and writes
/// the central `size x size` stamp into `out` (row-major).
fn convolve_crop(band: &[f64], rows: &mut [f64], kernel: &[f64], size: usize, out: &mut [f64]) {
    let p = size + 2 * PAD;
    let r = kernel.len() / 2;
    // Horizontal pass: every padded row, stamp columns only. Loops run over
    // output pixels innermost so they vectorise.
    for j in 0..p {
        let row = &band[j * p..(j + 1) * p];
        let dst = &mut rows[j * size..(j + 1) * size];
        dst.fill(0.0);
        for (k, &kv) in kernel.iter().enumerate() {
            let src = &row[PAD - r + k..PAD - r + k + size];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += kv * s;
            }
        }
    }
    // Vertical pass: stamp rows only.
    for j in 0..size {
        let dst = &mut out[j * size..(j + 1) * size];
        dst.fill(0.0);
        for (k, &kv) in kernel.iter().enumerate() {
            let y = PAD - r + j + k;
            let src = &rows[y * size..(y + 1) * size];
            for (d, &s) in dst.iter_mut().zip(src) {
                *d += kv * s;
            }
        }
    }
}

/// A field star in the stamp: position (padded grid) and u..z fluxes.
fn draw_star(rng: &mut ChaCha8Rng, size: usize) -> Option<([f64; 2], [f64; 5])> {
    if uniform(rng) >= 0.2 {
        return None;
    }
    let half = size as f64 / 2.0;
    let mut pos = None;
    for _ in 0..8 {
        let x = 1.0 + (size as f64 - 2.0) * uniform(rng);
        let y = 1.0 + (size as f64 - 2.0) * uniform(rng);
        if (x - half).powi(2) + (y - half).powi(2) > 36.0 {
            pos = Some([x + PAD as f64, y + PAD as f64]);
            break;
        }
    }
    let r = 16.5 + 4.5 * uniform(rng);
    let gr = 0.2 + 1.3 * uniform(rng);
    let mags = [
        r + gr + 0.9 + gr + 0.1 * normal(rng),
        r + gr,
        r,
        r - 0.35 * gr - 0.05 * uniform(rng),
        r - 0.55 * gr - 0.05 * uniform(rng),
    ];
    Some((
        pos?,
        mags.map(|m| libm::pow(10.0, -0.4 * (m - NMGY_ZERO_POINT))),
    ))
}

fn render(g: &GalaxyParams, rng: &mut ChaCha8Rng, size: usize, sc: &mut Scratch, img: &mut [f32]) {
    let p = size + 2 * PAD;
    render_profile(g, size, &mut sc.table, &mut sc.profile);
    let star = draw_star(rng, size);
    let mut stamp = vec![0.0f64; size * size];
    for b in 0..NUM_BANDS {
        let flux = libm::pow(10.0, -0.4 * (g.true_mags[b] - NMGY_ZERO_POINT));
        for (o, v) in sc.band.iter_mut().zip(&sc.profile) {
            *o = v * flux;
        }
        if let Some((pos, fluxes)) = star {
            // Bilinear deposit of a point source.
            let (fx, fy) = (libm::floor(pos[0]), libm::floor(pos[1]));
            let (ax, ay) = (pos[0] - fx, pos[1] - fy);
            let (ix, iy) = (fx as usize, fy as usize);
            if ix + 1 < p && iy + 1 < p {
                let f = fluxes[b];
                sc.band[iy * p + ix] += f * (1.0 - ax) * (1.0 - ay);
                sc.band[iy * p + ix + 1] += f * ax * (1.0 - ay);
                sc.band[(iy + 1) * p + ix] += f * (1.0 - ax) * ay;
                sc.band[(iy + 1) * p + ix + 1] += f * ax * ay;
            }
        }
        let sigma = g.psf_fwhm_arcsec[b] / 2.354_82 / PIXEL_SCALE_ARCSEC;
        gaussian_kernel(sigma, &mut sc.kernel);
        convolve_crop(&sc.band, &mut sc.rows, &sc.kernel, size, &mut stamp);
        let sky = SKY_SIGMA[b] * g.sky_scale;
        let sky2 = sky * sky;
        let inv_gain = 1.0 / GAIN_E_PER_NMGY[b];
        let out = &mut img[b * size * size..(b + 1) * size * size];
        for (o, &v) in out.iter_mut().zip(&stamp) {
            let sd = libm::sqrt(sky2 + v.max(0.0) * inv_gain);
            *o = (v + sd * normal(rng)) as f32;
        }
    }
}

/// Generates galaxies `start..start + count` (independent of how the range
/// is chunked), in parallel on the rayon pool. Every galaxy has a redshift
/// and `object_id = index`. `cfg.galaxies` is not consulted: any index can
/// be generated. Image sides below 8 pixels are raised to 8.
pub fn generate(cfg: &SynthConfig, start: u64, count: usize) -> Partition {
    let mut p = Partition::empty([NUM_BANDS, 8, 8], true, true);
    generate_into(cfg, start, count, &mut p);
    p
}

/// [`generate`] into an existing partition, reusing its allocations.
pub fn generate_into(cfg: &SynthConfig, start: u64, count: usize, p: &mut Partition) {
    let size = cfg.size.max(8);
    let il = NUM_BANDS * size * size;
    p.n = count;
    p.channels = NUM_BANDS;
    p.height = size;
    p.width = size;
    p.images.resize(count * il, 0.0);
    p.magnitudes.resize(count * NUM_BANDS, 0.0);
    let z = p.redshift.get_or_insert_with(Vec::new);
    z.resize(count, 0.0);
    let ids = p.object_id.get_or_insert_with(Vec::new);
    ids.clear();
    ids.extend((0..count as u64).map(|k| (start + k) as i64));
    let seed = cfg.seed;
    p.images
        .par_chunks_mut(il)
        .zip(p.magnitudes.par_chunks_mut(NUM_BANDS))
        .zip(z.par_iter_mut())
        .enumerate()
        .for_each_init(
            || Scratch::new(size),
            |sc, (k, ((img, mags), z))| {
                let index = start + k as u64;
                let mut rng = rng_for(seed, index);
                let g = draw_params(&mut rng, index);
                render(&g, &mut rng, size, sc, img);
                for (m, v) in mags.iter_mut().zip(g.observed_mags) {
                    *m = v as f32;
                }
                *z = g.redshift as f32;
            },
        );
}

/// Writes `cfg.galaxies` galaxies to the native file `path`, generating and
/// writing chunks of [`WRITE_CHUNK`] (the next chunk is generated while the
/// previous one is written; two chunks of memory, ≈170 MB). `progress` gets
/// the number of galaxies written so far after each chunk. Nothing is left
/// at `path` on error.
pub fn write_dataset(path: &Path, cfg: &SynthConfig, progress: &mut dyn FnMut(u64)) -> Result<()> {
    if cfg.size < 8 {
        return Err(Error::Writer {
            path: path.to_path_buf(),
            reason: format!("image size {} is below the minimum of 8 pixels", cfg.size),
        });
    }
    let mut w = DatasetWriter::create(
        path,
        DatasetSpec {
            galaxies: cfg.galaxies,
            image_shape: [NUM_BANDS, cfg.size, cfg.size],
            redshift: true,
            object_id: true,
        },
    )?;
    let count_at =
        |first: u64| (cfg.galaxies.saturating_sub(first)).min(WRITE_CHUNK as u64) as usize;
    let mut cur = generate(cfg, 0, count_at(0));
    let mut spare = Partition::empty([NUM_BANDS, cfg.size, cfg.size], true, true);
    let mut done = 0u64;
    while cur.n > 0 {
        let after = done + cur.n as u64;
        let (written, ()) = rayon::join(
            || w.write_chunk(&cur),
            || generate_into(cfg, after, count_at(after), &mut spare),
        );
        written?;
        done = after;
        progress(done);
        std::mem::swap(&mut cur, &mut spare);
    }
    w.finish()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(seed: u64) -> SynthConfig {
        SynthConfig {
            galaxies: 100,
            seed,
            size: 32,
        }
    }

    #[test]
    fn deterministic_and_seed_dependent() {
        let a = generate(&cfg(1), 0, 6);
        let b = generate(&cfg(1), 0, 6);
        let c = generate(&cfg(2), 0, 6);
        assert_eq!(a, b);
        assert_ne!(a.images, c.images);
        a.validate().unwrap();
        assert_eq!(a.object_id, Some((0..6).collect()));
    }

    #[test]
    fn generator_output_is_pinned() {
        // Changing the generator changes every synthetic data set: if this
        // fails on purpose, update the hash and note it in the CHANGELOG.
        let bytes = crate::write_partition(&generate(&cfg(11), 0, 8)).unwrap();
        let hash = crate::partition::sha256_hex(&bytes);
        assert_eq!(
            hash,
            "eb3a4dbcbc5b5b7183c8c12088529d050982cfd335b80d97ddacf5f7d8bf90be"
        );
    }

    #[test]
    fn chunks_are_independent() {
        let whole = generate(&cfg(3), 0, 20);
        let part = generate(&cfg(3), 10, 5);
        assert_eq!(part, whole.slice(10, 5));
    }

    #[test]
    fn no_nan_and_flux_matches_magnitudes() {
        let p = generate(&cfg(4), 0, 300);
        assert_eq!(p.nonfinite_count(), 0);
        assert!(p.redshift.as_ref().unwrap().iter().all(|z| z.is_finite()));
        // Compact galaxies: the r-band stamp sum is close to the r flux.
        let mut ratios = Vec::new();
        for i in 0..300u64 {
            let g = galaxy_params(&cfg(4), i);
            if g.half_light_arcsec < 2.0 {
                let img = p.image(i as usize).unwrap();
                let r: f64 = img[2 * 1024..3 * 1024].iter().map(|&v| v as f64).sum();
                let flux = libm::pow(10.0, -0.4 * (g.true_mags[2] - 22.5));
                ratios.push(r / flux);
            }
        }
        ratios.sort_by(f64::total_cmp);
        let median = ratios[ratios.len() / 2];
        assert!(ratios.len() > 30, "{}", ratios.len());
        assert!((0.85..1.1).contains(&median), "median ratio {median}");
    }

    #[test]
    fn redshift_distribution_is_mgs_like() {
        let mut z: Vec<f64> = (0..20_000)
            .map(|i| galaxy_params(&cfg(5), i).redshift)
            .collect();
        z.sort_by(f64::total_cmp);
        let median = z[z.len() / 2];
        let below = z.iter().filter(|&&v| v < 0.3).count() as f64 / z.len() as f64;
        assert!((0.05..0.2).contains(&median), "median {median}");
        assert!(below > 0.85, "{below}");
        assert!(
            z[z.len() - 1] > 0.45 && z[z.len() - 1] <= 0.62,
            "max {}",
            z[z.len() - 1]
        );
        assert!(z[0] >= 0.01);
    }

    #[test]
    fn magnitudes_are_sdss_like() {
        let gs: Vec<GalaxyParams> = (0..5000).map(|i| galaxy_params(&cfg(6), i)).collect();
        let mgs: Vec<&GalaxyParams> = gs.iter().filter(|g| !g.lrg_tail).collect();
        assert!(mgs
            .iter()
            .all(|g| (13.99..=17.771).contains(&g.true_mags[2])));
        let mean = |f: &dyn Fn(&GalaxyParams) -> f64| {
            mgs.iter().map(|g| f(g)).sum::<f64>() / mgs.len() as f64
        };
        let r = mean(&|g| g.true_mags[2]);
        assert!((16.0..17.6).contains(&r), "mean r {r}");
        let gr = mean(&|g| g.true_mags[1] - g.true_mags[2]);
        assert!((0.5..1.0).contains(&gr), "mean g-r {gr}");
        let ug = mean(&|g| g.true_mags[0] - g.true_mags[1]);
        assert!((1.1..2.0).contains(&ug), "mean u-g {ug}");
        // Errors are largest in u.
        let eu = mean(&|g| g.mag_errors[0]);
        let er = mean(&|g| g.mag_errors[2]);
        assert!(eu > 2.0 * er, "{eu} {er}");
    }

    fn mean_in(gs: &[GalaxyParams], lo: f64, hi: f64, f: impl Fn(&GalaxyParams) -> f64) -> f64 {
        let v: Vec<f64> = gs
            .iter()
            .filter(|g| g.redshift >= lo && g.redshift < hi)
            .map(f)
            .collect();
        v.iter().sum::<f64>() / v.len() as f64
    }

    #[test]
    fn colour_reddens_and_size_shrinks_with_z() {
        let gs: Vec<GalaxyParams> = (0..10_000).map(|i| galaxy_params(&cfg(7), i)).collect();
        let bins = [
            (0.0, 0.06),
            (0.06, 0.1),
            (0.1, 0.15),
            (0.15, 0.25),
            (0.25, 0.7),
        ];
        let gr: Vec<f64> = bins
            .iter()
            .map(|&(a, b)| mean_in(&gs, a, b, |g| g.true_mags[1] - g.true_mags[2]))
            .collect();
        let size: Vec<f64> = bins
            .iter()
            .map(|&(a, b)| mean_in(&gs, a, b, |g| g.half_light_arcsec))
            .collect();
        for w in gr.windows(2) {
            assert!(w[1] > w[0], "g-r by z bin {gr:?}");
        }
        for w in size.windows(2) {
            assert!(w[1] < w[0], "size by z bin {size:?}");
        }
        // The same seen in the pixels: r-band light is more concentrated.
        let p = generate(&cfg(7), 0, 400);
        let radius = |i: usize| {
            let img = &p.image(i).unwrap()[2 * 1024..3 * 1024];
            let (mut s, mut s2) = (0.0, 0.0);
            for (k, &v) in img.iter().enumerate() {
                let v = f64::from(v).max(0.0);
                let (x, y) = ((k % 32) as f64 - 16.0, (k / 32) as f64 - 16.0);
                s += v;
                s2 += v * (x * x + y * y);
            }
            (s2 / s).sqrt()
        };
        let zs = p.redshift.as_ref().unwrap();
        let avg = |lo: f32, hi: f32| {
            let v: Vec<f64> = (0..400)
                .filter(|&i| zs[i] >= lo && zs[i] < hi)
                .map(radius)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let (near, far) = (avg(0.0, 0.07), avg(0.15, 1.0));
        assert!(far < near, "near {near} far {far}");
    }

    #[test]
    fn types_have_their_profiles() {
        let gs: Vec<GalaxyParams> = (0..2000).map(|i| galaxy_params(&cfg(8), i)).collect();
        let early: Vec<_> = gs.iter().filter(|g| g.early_type).collect();
        let late: Vec<_> = gs.iter().filter(|g| !g.early_type).collect();
        assert!(
            early.len() > 400 && late.len() > 800,
            "{} {}",
            early.len(),
            late.len()
        );
        assert!(early.iter().all(|g| g.sersic_n >= 2.5));
        assert!(late.iter().all(|g| g.sersic_n <= 2.0));
        let gr = |v: &[&GalaxyParams]| {
            v.iter()
                .map(|g| g.true_mags[1] - g.true_mags[2])
                .sum::<f64>()
                / v.len() as f64
        };
        assert!(gr(&early) > gr(&late) + 0.2);
    }

    #[test]
    fn cosmology_values() {
        // Flat LCDM H0=70 Om=0.3: D_C(0.1) ≈ 418 Mpc, D_C(0.5) ≈ 1888 Mpc.
        assert!((comoving_distance_mpc(0.1) - 418.4).abs() < 1.0);
        assert!((comoving_distance_mpc(0.5) - 1888.6).abs() < 3.0);
        assert!((distance_modulus(0.1) - 38.32).abs() < 0.02);
    }

    #[test]
    fn write_dataset_streams_and_reports_progress() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("synth.safetensors");
        let c = SynthConfig {
            galaxies: 37,
            seed: 9,
            size: 16,
        };
        let mut seen = Vec::new();
        write_dataset(&path, &c, &mut |n| seen.push(n)).unwrap();
        assert_eq!(seen.last(), Some(&37));
        let r = crate::DatasetReader::open(&path).unwrap();
        assert_eq!(r.len(), 37);
        assert_eq!(r.read_range(30, 7).unwrap(), generate(&c, 30, 7));
        let bad = SynthConfig { size: 4, ..c };
        assert!(write_dataset(&dir.path().join("x"), &bad, &mut |_| {}).is_err());
    }
}
