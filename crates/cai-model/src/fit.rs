//! Fit the last Linear layer (`concat_block.2`, 1024 → 1) by ridge regression on the
//! penultimate features, keeping every other weight as it is.
//!
//! This is how `cai demo` makes an honest demo model without a trained checkpoint: a seeded
//! network's penultimate layer is a fixed random feature map of the images and magnitudes,
//! and a linear read-out of those features is fitted in closed form (standardised features,
//! normal equations, Cholesky in f64).

use crate::astromae::AstroMae;
use crate::error::Error;

/// Galaxies per feature batch while fitting (bounds memory).
const FIT_BATCH: usize = 64;

/// Fit `concat_block.2` on labelled galaxies; returns R² on those galaxies.
///
/// `ridge` is the penalty relative to the (unit) variance of each standardised feature,
/// times the number of galaxies. Features that never vary get weight 0.
pub fn fit_last_layer(
    model: &mut AstroMae,
    images: &[f32],
    magnitudes: &[f32],
    z: &[f32],
    n: usize,
    ridge: f64,
) -> Result<f64, Error> {
    let (c, h, w) = crate::Model::input_shape(model);
    let img = c * h * w;
    if images.len() < n * img || magnitudes.len() < n * c || z.len() < n || n < 2 {
        return Err(Error::Fit(format!(
            "need at least 2 galaxies with images [{c},{h},{w}], magnitudes and redshifts; got {n}"
        )));
    }
    let mut feats: Vec<f32> = Vec::new();
    for s in (0..n).step_by(FIT_BATCH) {
        let m = FIT_BATCH.min(n - s);
        feats.extend(model.features(
            &images[s * img..(s + m) * img],
            &magnitudes[s * c..(s + m) * c],
            m,
        )?);
    }
    let d = feats.len() / n;
    let y: Vec<f64> = z[..n].iter().map(|&v| v as f64).collect();
    let (w, b) = ridge_fit(&feats, &y, n, d, ridge)?;
    let wf: Vec<f32> = w.iter().map(|&v| v as f32).collect();
    model.set_last_layer(&wf, b as f32)?;
    // R² of the fitted read-out on the training galaxies.
    let mean_y = y.iter().sum::<f64>() / n as f64;
    let (mut ss_res, mut ss_tot) = (0.0, 0.0);
    for i in 0..n {
        let row = &feats[i * d..(i + 1) * d];
        let p = b + row
            .iter()
            .zip(&w)
            .map(|(&x, &wj)| x as f64 * wj)
            .sum::<f64>();
        ss_res += (p - y[i]).powi(2);
        ss_tot += (y[i] - mean_y).powi(2);
    }
    Ok(if ss_tot > 0.0 {
        1.0 - ss_res / ss_tot
    } else {
        f64::NAN
    })
}

/// Ridge regression of `y` on the `n × d` row-major `x`; returns weights and intercept in
/// the original (unstandardised) feature space.
pub fn ridge_fit(
    x: &[f32],
    y: &[f64],
    n: usize,
    d: usize,
    ridge: f64,
) -> Result<(Vec<f64>, f64), Error> {
    let mean: Vec<f64> = (0..d)
        .map(|j| (0..n).map(|i| x[i * d + j] as f64).sum::<f64>() / n as f64)
        .collect();
    let sd: Vec<f64> = (0..d)
        .map(|j| {
            let v = (0..n)
                .map(|i| (x[i * d + j] as f64 - mean[j]).powi(2))
                .sum::<f64>()
                / n as f64;
            v.sqrt()
        })
        .collect();
    let live: Vec<usize> = (0..d).filter(|&j| sd[j] > 1e-12).collect();
    let k = live.len();
    let ybar = y.iter().sum::<f64>() / n as f64;
    // Standardised live features, Gram matrix A = ZᵀZ + λn I, rhs = Zᵀ(y − ȳ).
    let mut zrow = vec![0.0f64; k];
    let mut a = vec![0.0f64; k * k];
    let mut rhs = vec![0.0f64; k];
    for i in 0..n {
        for (t, &j) in live.iter().enumerate() {
            zrow[t] = (x[i * d + j] as f64 - mean[j]) / sd[j];
        }
        let yi = y[i] - ybar;
        for p in 0..k {
            let zp = zrow[p];
            rhs[p] += zp * yi;
            let rowp = &mut a[p * k..p * k + p + 1];
            for (q, v) in rowp.iter_mut().enumerate() {
                *v += zp * zrow[q];
            }
        }
    }
    let lambda = ridge.max(1e-12) * n as f64;
    for p in 0..k {
        a[p * k + p] += lambda;
    }
    // Cholesky (lower), then two triangular solves.
    for j in 0..k {
        let mut s = a[j * k + j];
        for q in 0..j {
            s -= a[j * k + q] * a[j * k + q];
        }
        if s <= 0.0 || !s.is_finite() {
            return Err(Error::Fit(format!(
                "normal equations not positive definite at column {j}"
            )));
        }
        let l = s.sqrt();
        a[j * k + j] = l;
        for i in j + 1..k {
            let mut s = a[i * k + j];
            for q in 0..j {
                s -= a[i * k + q] * a[j * k + q];
            }
            a[i * k + j] = s / l;
        }
    }
    let mut v = rhs;
    for i in 0..k {
        let mut s = v[i];
        for q in 0..i {
            s -= a[i * k + q] * v[q];
        }
        v[i] = s / a[i * k + i];
    }
    for i in (0..k).rev() {
        let mut s = v[i];
        for q in i + 1..k {
            s -= a[q * k + i] * v[q];
        }
        v[i] = s / a[i * k + i];
    }
    let mut w = vec![0.0f64; d];
    let mut b = ybar;
    for (t, &j) in live.iter().enumerate() {
        w[j] = v[t] / sd[j];
        b -= w[j] * mean[j];
    }
    Ok((w, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ridge_recovers_a_linear_rule() {
        // y = 2 x0 − x1 + 0.5, x2 constant (dead feature).
        let n = 200;
        let mut x = Vec::new();
        let mut y = Vec::new();
        for i in 0..n {
            let a = (i as f32 * 0.37).sin();
            let b = (i as f32 * 0.11).cos();
            x.extend([a, b, 1.0]);
            y.push(2.0 * a as f64 - b as f64 + 0.5);
        }
        let (w, b) = ridge_fit(&x, &y, n, 3, 1e-9).unwrap();
        assert!((w[0] - 2.0).abs() < 1e-4, "{w:?}");
        assert!((w[1] + 1.0).abs() < 1e-4, "{w:?}");
        assert_eq!(w[2], 0.0);
        assert!((b - 0.5).abs() < 1e-4, "{b}");
    }
}
