//! GPTQ rounding of int8 weights (Frantar et al., "GPTQ: accurate post-training
//! quantization for generative pre-trained transformers", 2022; the OBQ update).
//!
//! Round-to-nearest (RTN) rounds each weight on its own. GPTQ rounds the weights of one
//! input channel (one row of `B`) at a time, in order of decreasing input energy
//! (`diag(H)`, "act order"), and spreads each rounding error over the input channels not
//! yet rounded, weighted by the inverse of the Hessian `H = X^T X` of the layer's inputs
//! `X` (rows: calibration tokens), so that `||X W - X Q||` rather than `||W - Q||` is kept
//! small. The per-output-column scales stay those of RTN (`max |w_j| / 127`), so the
//! kernels and their integers are unchanged; only which integer each weight gets differs.
//! `H` is damped by [`DAMP`] times the mean of its diagonal. Everything is f64 and in a
//! fixed order: the same inputs give the same integers.

use crate::Error;

/// Damping added to `H`'s diagonal, relative to its mean.
pub const DAMP: f64 = 0.01;

/// Largest |code| of an int8 weight.
const QMAX: f64 = 127.0;

/// Error of a GPTQ input.
fn bad(message: String) -> Error {
    Error::Config {
        file: "(gptq)".into(),
        message,
    }
}

/// Cholesky factor `L` (lower, row-major, `L L^T = a`) of the `k x k` symmetric matrix `a`;
/// `None` if `a` is not positive definite.
fn cholesky(a: &[f64], k: usize) -> Option<Vec<f64>> {
    let mut l = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (0..j).map(|t| l[i * k + t] * l[j * k + t]).sum();
            let v = a[i * k + j] - s;
            if i == j {
                if v <= 0.0 || !v.is_finite() {
                    return None;
                }
                l[i * k + i] = v.sqrt();
            } else {
                l[i * k + j] = v / l[j * k + j];
            }
        }
    }
    Some(l)
}

/// The upper factor `U` (row-major, `U^T U = H^-1`) GPTQ's updates use, from `h` (already
/// permuted and damped); `None` if `h` is not positive definite.
fn inverse_upper(h: &[f64], k: usize) -> Option<Vec<f64>> {
    let l = cholesky(h, k)?;
    // L^-1 (lower), column by column by forward substitution.
    let mut li = vec![0.0f64; k * k];
    for c in 0..k {
        li[c * k + c] = 1.0 / l[c * k + c];
        for i in c + 1..k {
            let s: f64 = (c..i).map(|t| l[i * k + t] * li[t * k + c]).sum();
            li[i * k + c] = -s / l[i * k + i];
        }
    }
    // H^-1 = L^-T L^-1.
    let mut hinv = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            let s: f64 = (i..k).map(|t| li[t * k + i] * li[t * k + j]).sum();
            hinv[i * k + j] = s;
            hinv[j * k + i] = s;
        }
    }
    // H^-1 = U^T U with U = chol(H^-1)^T.
    let c = cholesky(&hinv, k)?;
    let mut u = vec![0.0f64; k * k];
    for i in 0..k {
        for j in 0..=i {
            u[j * k + i] = c[i * k + j];
        }
    }
    Some(u)
}

/// GPTQ's int8 codes for the `k x n` weights `w` (row-major, `w[kk * n + j]`: input
/// channel `kk`, output `j`) of a layer whose inputs have the Hessian `h` (`k x k`,
/// row-major, `sum_rows x_a x_b`), with the column scales `scales` (`n` values, e.g.
/// [`crate::kernels::PackedB::int8_scales`]). Returns `k * n` codes in `w`'s layout, each
/// in `-127..=127`; the layer's weights are then `codes[kk * n + j] * scales[j]`. A column
/// whose scale is 0 or not finite gets zeros; an input channel that is always zero
/// (`h[kk][kk] == 0`) is rounded to nearest. If the damped `h` is not positive definite,
/// the damping is raised tenfold (up to 4 times) before giving up.
///
/// # Errors
/// [`Error::Config`] for mismatched lengths or a Hessian that stays singular or is not
/// finite.
pub fn gptq_int8(
    w: &[f32],
    k: usize,
    n: usize,
    h: &[f64],
    scales: &[f32],
) -> Result<Vec<i8>, Error> {
    if w.len() != k * n || h.len() != k * k || scales.len() != n {
        return Err(bad(format!(
            "GPTQ of a {k} x {n} layer got {} weights, {} Hessian values, {} scales",
            w.len(),
            h.len(),
            scales.len()
        )));
    }
    if h.iter().any(|v| !v.is_finite()) {
        return Err(bad("GPTQ: the Hessian is not finite".into()));
    }
    // Act order: input channels by decreasing diag(H), ties by index.
    let diag: Vec<f64> = (0..k).map(|i| h[i * k + i]).collect();
    let mut perm: Vec<usize> = (0..k).collect();
    perm.sort_by(|a, b| diag[*b].total_cmp(&diag[*a]).then(a.cmp(b)));
    let live: Vec<f64> = diag.iter().copied().filter(|d| *d > 0.0).collect();
    let mean = if live.is_empty() {
        1.0
    } else {
        live.iter().sum::<f64>() / live.len() as f64
    };
    let mut u = None;
    let mut damp = DAMP;
    for _ in 0..5 {
        let mut hp = vec![0.0f64; k * k];
        for (i, &pi) in perm.iter().enumerate() {
            for (j, &pj) in perm.iter().enumerate() {
                hp[i * k + j] = h[pi * k + pj];
            }
            if diag[pi] <= 0.0 {
                // A dead input: decoupled from the others, rounded to nearest.
                for j in 0..k {
                    hp[i * k + j] = 0.0;
                    hp[j * k + i] = 0.0;
                }
                hp[i * k + i] = mean;
            }
            hp[i * k + i] += damp * mean;
        }
        u = inverse_upper(&hp, k);
        if u.is_some() {
            break;
        }
        damp *= 10.0;
    }
    let u = u.ok_or_else(|| bad("GPTQ: the damped Hessian is not positive definite".into()))?;
    // Weights in act order, f64.
    let mut wp: Vec<f64> = perm
        .iter()
        .flat_map(|&r| w[r * n..r * n + n].iter().map(|v| f64::from(*v)))
        .collect();
    let sc: Vec<f64> = scales.iter().map(|s| f64::from(*s)).collect();
    let mut codes = vec![0i8; k * n];
    let mut err = vec![0.0f64; n];
    for i in 0..k {
        let d = u[i * k + i];
        let row = &wp[i * n..i * n + n];
        for j in 0..n {
            let s = sc[j];
            if s == 0.0 || !s.is_finite() {
                err[j] = 0.0;
                continue;
            }
            let q = (row[j] / s).round_ties_even().clamp(-QMAX, QMAX);
            codes[perm[i] * n + j] = q as i8;
            err[j] = (row[j] - q * s) / d;
        }
        for l in i + 1..k {
            let f = u[i * k + l];
            if f == 0.0 {
                continue;
            }
            for (v, e) in wp[l * n..l * n + n].iter_mut().zip(&err) {
                *v -= f * e;
            }
        }
    }
    Ok(codes)
}

/// Round-to-nearest int8 codes of `w` (`k x n`, as for [`gptq_int8`]) with `scales`: what
/// [`crate::kernels::PackedB::quantize_int8`] stores.
pub fn rtn_int8(w: &[f32], n: usize, scales: &[f32]) -> Vec<i8> {
    w.iter()
        .enumerate()
        .map(|(i, v)| {
            let s = scales.get(i % n.max(1)).copied().unwrap_or(0.0);
            if s == 0.0 || !s.is_finite() {
                0
            } else {
                (v * (1.0 / s)).round_ties_even().clamp(-127.0, 127.0) as i8
            }
        })
        .collect()
}

/// `sum_rows ||x W - x Q||^2 = tr((W - Q)^T H (W - Q))` for weights `w` and codes `q` with
/// `scales` (`k x n`, as for [`gptq_int8`]) on inputs of Hessian `h`: the squared output
/// error the rounding causes over the calibration rows.
pub fn output_error(w: &[f32], q: &[i8], k: usize, n: usize, h: &[f64], scales: &[f32]) -> f64 {
    let d: Vec<f64> = (0..k * n)
        .map(|i| f64::from(w[i]) - f64::from(q[i]) * f64::from(scales[i % n]))
        .collect();
    let mut total = 0.0;
    for j in 0..n {
        for a in 0..k {
            let da = d[a * n + j];
            if da == 0.0 {
                continue;
            }
            let s: f64 = (0..k).map(|b| h[a * k + b] * d[b * n + j]).sum();
            total += da * s;
        }
    }
    total
}

/// `X^T X` (`k x k`, f64) of `rows x k` inputs `x`, added to `h`.
pub fn add_gram(h: &mut [f64], x: &[f32], k: usize) {
    for row in x.chunks_exact(k.max(1)) {
        for (a, xa) in row.iter().enumerate() {
            if *xa == 0.0 {
                continue;
            }
            let xa = f64::from(*xa);
            for (hv, xb) in h[a * k..a * k + k].iter_mut().zip(row) {
                *hv += xa * f64::from(*xb);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use rand::{Rng, SeedableRng};

    /// `rows x k` correlated inputs (a few shared factors plus noise, one loud channel) and
    /// `k x n` weights, from `seed`.
    fn problem(rows: usize, k: usize, n: usize, seed: u64) -> (Vec<f32>, Vec<f32>) {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
        let f = 3;
        let mix: Vec<f32> = (0..f * k).map(|_| rng.random::<f32>() - 0.5).collect();
        let mut x = vec![0.0f32; rows * k];
        for r in 0..rows {
            let z: Vec<f32> = (0..f).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
            for c in 0..k {
                let shared: f32 = (0..f).map(|t| z[t] * mix[t * k + c]).sum();
                let loud = if c == 1 { 4.0 } else { 1.0 };
                x[r * k + c] = loud * (shared + 0.3 * (rng.random::<f32>() - 0.5));
            }
        }
        let w = (0..k * n).map(|_| rng.random::<f32>() - 0.5).collect();
        (x, w)
    }

    fn scales_of(w: &[f32], k: usize, n: usize) -> Vec<f32> {
        (0..n)
            .map(|j| (0..k).fold(0.0f32, |m, kk| m.max(w[kk * n + j].abs())) / 127.0)
            .collect()
    }

    /// GPTQ's codes give a lower output error on the calibration inputs than rounding to
    /// nearest, are deterministic and stay within ±127.
    #[test]
    fn gptq_beats_round_to_nearest() {
        let (rows, k, n) = (400, 48, 20);
        let (x, w) = problem(rows, k, n, 7);
        let mut h = vec![0.0; k * k];
        add_gram(&mut h, &x, k);
        let s = scales_of(&w, k, n);
        let q = gptq_int8(&w, k, n, &h, &s).unwrap_or_else(|e| panic!("{e}"));
        let r = rtn_int8(&w, n, &s);
        let (eg, er) = (
            output_error(&w, &q, k, n, &h, &s),
            output_error(&w, &r, k, n, &h, &s),
        );
        assert!(eg < 0.7 * er, "GPTQ {eg:e} against RTN {er:e}");
        assert!(q.iter().all(|c| (-127..=127).contains(c)));
        assert_eq!(gptq_int8(&w, k, n, &h, &s).ok(), Some(q));
    }

    /// With uncorrelated inputs (diagonal `H`) no error has anywhere to go: GPTQ is RTN.
    #[test]
    fn diagonal_hessian_is_round_to_nearest() {
        let (k, n) = (9, 5);
        let (_, w) = problem(1, k, n, 3);
        let mut h = vec![0.0; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0 + i as f64;
        }
        h[4 * k + 4] = 0.0; // a dead input
        let s = scales_of(&w, k, n);
        let q = gptq_int8(&w, k, n, &h, &s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(q, rtn_int8(&w, n, &s));
    }

    #[test]
    fn bad_shapes_are_errors() {
        assert!(gptq_int8(&[0.0; 6], 2, 3, &[1.0; 3], &[1.0; 3]).is_err());
        assert!(gptq_int8(&[0.0; 6], 2, 3, &[1.0, 0.0, 0.0, f64::NAN], &[1.0; 3]).is_err());
        // A singular (rank-1) Hessian is fine once damped.
        let q = gptq_int8(&[0.5, -0.25], 2, 1, &[1.0, 1.0, 1.0, 1.0], &[0.5 / 127.0]);
        assert_eq!(q.ok().map(|c| c[0]), Some(127));
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]
        /// On any inputs and weights, GPTQ's output error is not above RTN's by more than
        /// rounding noise (it is the optimum of neither, but feeds errors forward only where
        /// the inputs correlate), and the codes dequantise within one step of the weights'
        /// range.
        #[test]
        fn gptq_codes_are_valid(seed in 0u64..1000, k in 1usize..24, n in 1usize..9) {
            let (x, w) = problem(3 * k + 5, k, n, seed);
            let mut h = vec![0.0; k * k];
            add_gram(&mut h, &x, k);
            let s = scales_of(&w, k, n);
            let q = gptq_int8(&w, k, n, &h, &s).unwrap_or_else(|e| panic!("{e}"));
            prop_assert_eq!(q.len(), k * n);
            prop_assert!(q.iter().all(|c| (-127..=127).contains(c)));
            let (eg, er) = (
                output_error(&w, &q, k, n, &h, &s),
                output_error(&w, &rtn_int8(&w, n, &s), k, n, &h, &s),
            );
            prop_assert!(eg <= 1.5 * er + 1e-9, "GPTQ {eg:e} against RTN {er:e}");
        }
    }
}
