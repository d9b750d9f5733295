//! Reference kernels in plain loops (f32 arithmetic, GELU's erf and softmax's exp in f64).
//! Every SIMD kernel is tested against these.

use super::{quantize_row_for, Act, Epilogue, Ops, PackedB, Tier, NR};

/// The scalar table.
pub fn ops() -> Ops {
    Ops {
        tier: Tier::Scalar,
        gemm,
        gemm_int8,
        gemm_bf16: None,
        layer_norm,
        softmax,
        attention: super::attention_composed,
        attention_bf16: None,
        attention_int16: None,
        fma_probe,
    }
}

/// Eight independent multiply-add chains in plain f32 arithmetic (the compiler may
/// vectorise them; the scalar tier's peak is what this measures).
fn fma_probe(iters: u64) -> (f32, u64) {
    let mut acc = [0.0f32, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7];
    let (m, a) = (
        std::hint::black_box(0.999_999f32),
        std::hint::black_box(1e-7f32),
    );
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = *v * m + a;
        }
    }
    (acc.iter().sum(), iters * 8 * 2)
}

/// Exact GELU: `x/2 (1 + erf(x/sqrt 2))`, evaluated in f64.
pub fn gelu(x: f32) -> f32 {
    let x = x as f64;
    (0.5 * x * (1.0 + libm::erf(x * std::f64::consts::FRAC_1_SQRT_2))) as f32
}

/// Applies an activation.
pub fn act(a: Act, v: f32) -> f32 {
    match a {
        Act::None => v,
        Act::Relu => v.max(0.0),
        Act::Gelu => gelu(v),
    }
}

fn gemm(m: usize, a: &[f32], lda: usize, b: &PackedB, c: &mut [f32], ldc: usize, epi: Epilogue) {
    let (k, n) = (b.k(), b.n());
    let mut acc = [0.0f32; NR];
    for i in 0..m {
        let arow = &a[i * lda..i * lda + k];
        for p in 0..b.panels() {
            let panel = b.panel(p);
            acc.fill(0.0);
            for (kk, av) in arow.iter().enumerate() {
                let brow = &panel[kk * NR..kk * NR + NR];
                for (s, bv) in acc.iter_mut().zip(brow) {
                    *s += av * bv;
                }
            }
            let cols = NR.min(n - p * NR);
            let bias = b.panel_bias(p);
            let crow = &mut c[i * ldc + p * NR..i * ldc + p * NR + cols];
            for j in 0..cols {
                let v = act(epi.act, acc[j] + bias[j]);
                crow[j] = if epi.accumulate { crow[j] + v } else { v };
            }
        }
    }
}

/// The integer product, the reference for every tier: each row of `A` quantised by
/// [`quantize_row`] (int16 weights) or to u8 codes minus their zero point
/// ([`super::quantize_row_int8_pairs`], int8 weights), exact i32 sums, then
/// `acc * (row scale * column scale) + bias` (the row and column scales' product, then one
/// fused multiply-add: one instruction fewer per 16 outputs than a multiply and an add) and
/// the epilogue.
fn gemm_int8(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let (k, n) = (b.k(), b.n());
    let k2 = k.div_ceil(2);
    let mut qa = vec![0i16; k2 * 2];
    let mut acc = [0i32; NR];
    for i in 0..m {
        let sa = quantize_row_for(b, &a[i * lda..i * lda + k], &mut qa, 2);
        for p in 0..b.panels() {
            let panel = b.q_panel(p);
            acc.fill(0);
            for kp in 0..k2 {
                let (a0, a1) = (qa[2 * kp] as i32, qa[2 * kp + 1] as i32);
                let brow = &panel[kp * NR * 2..(kp + 1) * NR * 2];
                for (s, bv) in acc.iter_mut().zip(brow.chunks_exact(2)) {
                    *s += a0 * bv[0] as i32 + a1 * bv[1] as i32;
                }
            }
            let cols = NR.min(n - p * NR);
            let (bias, scale) = (b.panel_bias(p), b.q_scale(p));
            let crow = &mut c[i * ldc + p * NR..i * ldc + p * NR + cols];
            for j in 0..cols {
                let v = act(epi.act, (acc[j] as f32).mul_add(sa * scale[j], bias[j]));
                crow[j] = if epi.accumulate { crow[j] + v } else { v };
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn layer_norm(
    rows: usize,
    dim: usize,
    x: &[f32],
    ldx: usize,
    gamma: &[f32],
    beta: &[f32],
    eps: f32,
    out: &mut [f32],
    ldo: usize,
) {
    for r in 0..rows {
        let xr = &x[r * ldx..r * ldx + dim];
        let mean = xr.iter().sum::<f32>() / dim as f32;
        let var = xr.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / dim as f32;
        let rstd = 1.0 / (var + eps).sqrt();
        let or = &mut out[r * ldo..r * ldo + dim];
        for j in 0..dim {
            or[j] = (xr[j] - mean) * rstd * gamma[j] + beta[j];
        }
    }
}

fn softmax(rows: usize, n: usize, x: &mut [f32], ld: usize, scale: f32) {
    for r in 0..rows {
        let xr = &mut x[r * ld..r * ld + n];
        let max = xr.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v));
        let mut sum = 0.0f32;
        for v in xr.iter_mut() {
            *v = ((scale * (*v - max)) as f64).exp() as f32;
            sum += *v;
        }
        let inv = 1.0 / sum;
        for v in xr.iter_mut() {
            *v *= inv;
        }
    }
}
