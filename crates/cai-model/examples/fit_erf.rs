//! Re-derives the rational erf approximation used by the SIMD GELU (`kernels/x86.rs`):
//! `erf(x) ≈ x P(x²) / Q(x²)` on [0, 4], P of degree 6, Q of degree 4 with Q(0) = 1.
//!
//! Method: weighted linear least squares on 3000 Chebyshev points (Householder QR, f64),
//! iterated as Loeb's method (divide the residual by the previous Q) with Lawson
//! reweighting toward the minimax error; weights put the error on erf itself (`x (P/Q - g)`).
//! Then rescales for the GELU form (argument `x/sqrt 2`) and reports the f32 error.
//!
//! `cargo run --release -p cai-model --example fit_erf [deg_p deg_q]`
#![allow(clippy::print_stdout, clippy::needless_range_loop)] // dense linear algebra reads best with indices

fn lstsq(a: &mut [Vec<f64>], b: &mut [f64]) -> Vec<f64> {
    let (m, n) = (a.len(), a[0].len());
    for k in 0..n {
        let norm: f64 = (k..m).map(|i| a[i][k] * a[i][k]).sum::<f64>().sqrt();
        let alpha = if a[k][k] > 0.0 { -norm } else { norm };
        let mut v: Vec<f64> = (0..m).map(|i| if i < k { 0.0 } else { a[i][k] }).collect();
        v[k] -= alpha;
        let vn: f64 = v.iter().map(|x| x * x).sum();
        if vn == 0.0 {
            continue;
        }
        for j in k..n {
            let s: f64 = (k..m).map(|i| v[i] * a[i][j]).sum::<f64>() * 2.0 / vn;
            for i in k..m {
                a[i][j] -= s * v[i];
            }
        }
        let s: f64 = (k..m).map(|i| v[i] * b[i]).sum::<f64>() * 2.0 / vn;
        for i in k..m {
            b[i] -= s * v[i];
        }
    }
    let mut x = vec![0.0; n];
    for k in (0..n).rev() {
        let s: f64 = (k + 1..n).map(|j| a[k][j] * x[j]).sum();
        x[k] = (b[k] - s) / a[k][k];
    }
    x
}

fn horner(c: &[f32], u: f32) -> f32 {
    c.iter().rev().fold(0.0f32, |acc, v| acc.mul_add(u, *v))
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|s| s.parse().ok())
        .collect();
    let (np, nq) = (
        args.first().copied().unwrap_or(6),
        args.get(1).copied().unwrap_or(4),
    );
    let xmax = 4.0f64;
    let us = xmax * xmax; // fit in t = x²/16 for conditioning
    let n = 3000;
    let xs: Vec<f64> = (0..n)
        .map(|i| {
            let t = (i as f64 + 0.5) / n as f64;
            xmax * (1.0 - (std::f64::consts::PI * t).cos()) / 2.0
        })
        .chain([xmax])
        .collect();
    let g: Vec<f64> = xs
        .iter()
        .map(|&x| {
            if x == 0.0 {
                2.0 / std::f64::consts::PI.sqrt()
            } else {
                libm::erf(x) / x
            }
        })
        .collect();
    let mut qprev = vec![1.0f64; xs.len()];
    let mut lw = vec![1.0f64; xs.len()];
    let mut coef = Vec::new();
    let mut maxe = 0.0f64;
    for it in 0..60 {
        let mut a = Vec::with_capacity(xs.len());
        let mut b = Vec::with_capacity(xs.len());
        for (i, &x) in xs.iter().enumerate() {
            let t = x * x / us;
            let w = x.max(1e-3) / qprev[i] * lw[i].sqrt();
            let mut row: Vec<f64> = (0..=np).map(|p| w * t.powi(p as i32)).collect();
            row.extend((1..=nq).map(|q| -w * g[i] * t.powi(q as i32)));
            a.push(row);
            b.push(w * g[i]);
        }
        coef = lstsq(&mut a, &mut b);
        maxe = 0.0;
        for (i, &x) in xs.iter().enumerate() {
            let t = x * x / us;
            let p: f64 = (0..=np).map(|k| coef[k] * t.powi(k as i32)).sum();
            let q: f64 = 1.0
                + (1..=nq)
                    .map(|k| coef[np + k] * t.powi(k as i32))
                    .sum::<f64>();
            qprev[i] = q;
            let e = (x * p / q - libm::erf(x)).abs();
            maxe = maxe.max(e);
            if it >= 10 {
                lw[i] *= e.max(1e-20);
            }
        }
        if it >= 10 {
            let mean = lw.iter().sum::<f64>() / lw.len() as f64;
            lw.iter_mut().for_each(|v| *v /= mean);
        }
    }
    println!("erf: max abs error {maxe:e} (exact arithmetic) for degrees ({np}, {nq})");
    // GELU form: erf(x/sqrt 2) = x Pg(x²) / Qg(x²).
    let pg: Vec<f32> = (0..=np)
        .map(|k| (coef[k] / us.powi(k as i32) / 2f64.powi(k as i32) / 2f64.sqrt()) as f32)
        .collect();
    let mut qg: Vec<f32> = vec![1.0];
    qg.extend((1..=nq).map(|k| (coef[np + k] / us.powi(k as i32) / 2f64.powi(k as i32)) as f32));
    println!("GELU P (x^0, x^2, ...): {pg:?}");
    println!("GELU Q (x^0, x^2, ...): {qg:?}");
    let lim = 4.0 * std::f32::consts::SQRT_2;
    let mut worst = (0.0f64, 0.0f32);
    for i in -800_000..=800_000 {
        let x = i as f32 * 1e-5;
        let xc = x.clamp(-lim, lim);
        let u = xc * xc;
        let r = xc * horner(&pg, u) / horner(&qg, u);
        let h = 0.5 * x;
        let y = h.mul_add(r, h) as f64;
        let want = 0.5 * x as f64 * (1.0 + libm::erf(x as f64 / 2f64.sqrt()));
        let e = (y - want).abs() / (1.0 + (x as f64).abs());
        if e > worst.0 {
            worst = (e, x);
        }
    }
    println!(
        "GELU in f32: max error / (1 + |x|) = {:e} at x = {}",
        worst.0, worst.1
    );
}
