//! The formula model: full-size AstroMAE weights and inputs from a hash formula, the model
//! of the committed PyTorch parity fixture (`tests/fixtures/parity_formula.json`, made by
//! `scripts/parity/make_formula_fixture.py`, whose docstring defines the formula).
//!
//! Unlike [`crate::init::astromae_weights`] (PyTorch's default init scales, BatchNorm at its
//! identity statistics), these weights have the original checkpoint's structure with
//! random BatchNorm statistics and larger weights (`U(-1, 1) * sqrt(3 / fan_in)`), so a
//! reduced precision's error on them is of the size seen on the original-structure
//! checkpoints; the seeded weights understate it many times over. Always available: it
//! needs no file.

use crate::{init, Config, Tensor, Weights};

fn fnv1a64(s: &str) -> u64 {
    let mut h = 0xCBF2_9CE4_8422_2325u64;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
    }
    h
}

/// u in [0, 1) for element `i` of the key hashed to `key_hash` (splitmix64).
fn unit(key_hash: u64, i: u64) -> f64 {
    let x = key_hash ^ i.wrapping_mul(0xD1B5_4A32_D192_ED03);
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 40) as f64 / (1u64 << 24) as f64
}

/// The shared first convolution is one module under two keys: both get the values of
/// `vis_inception.0`.
fn canonical(key: &str) -> String {
    match key.strip_prefix("inception_model.conv2d_init.") {
        Some(rest) => format!("inception_model.vis_inception.0.{rest}"),
        None => key.to_string(),
    }
}

/// The values of tensor `key` of `shape`.
fn values(key: &str, shape: &[usize]) -> Vec<f32> {
    let n: usize = shape.iter().product();
    let h = fnv1a64(&canonical(key));
    (0..n as u64)
        .map(|i| {
            let u = unit(h, i);
            let s = 2.0 * u - 1.0;
            let v = if key.ends_with("running_var") {
                0.5 + u
            } else if key.ends_with("running_mean") {
                0.2 * s
            } else if key == "cls_token" || key == "pos_embed" {
                0.02 * s
            } else if shape.len() >= 2 {
                s * (3.0 / (n / shape[0]).max(1) as f64).sqrt()
            } else if key.ends_with("weight") {
                1.0 + 0.2 * s
            } else {
                0.1 * s
            };
            v as f32
        })
        .collect()
}

/// The formula weights of a model shaped by `cfg` (the parity fixture's is
/// [`Config::astromae`]): the key set and shapes of [`init::astromae_weights`], metadata
/// `heads` from `cfg`.
pub fn weights(cfg: &Config) -> Weights {
    let shaped = init::astromae_weights(0, cfg);
    let mut w = Weights::new();
    for (key, t) in shaped.iter() {
        w.insert(key, Tensor::new(t.shape.clone(), values(key, &t.shape)));
    }
    w.set_metadata("heads", cfg.heads.to_string());
    w
}

/// `n` galaxies of formula inputs for a `channels x image x image` model with 5
/// magnitudes: images in [-1, 1), magnitudes in [16, 20). Returns (images, magnitudes).
pub fn inputs(n: usize, channels: usize, image: usize) -> (Vec<f32>, Vec<f32>) {
    let hi = fnv1a64("input.images");
    let hm = fnv1a64("input.magnitudes");
    let img = (0..(n * channels * image * image) as u64)
        .map(|i| (2.0 * unit(hi, i) - 1.0) as f32)
        .collect();
    let mag = (0..(n * 5) as u64)
        .map(|i| (18.0 + 2.0 * (2.0 * unit(hm, i) - 1.0)) as f32)
        .collect();
    (img, mag)
}
