//! Building blocks shared by the branches: `Linear`, `LayerNorm`, and the NHWC helpers
//! (pooling, im2col) the convolutional branch uses.

use crate::kernels::{Epilogue, Ops, PackedB};
use crate::weights::Vb;
use crate::Error;

/// `torch.nn.Linear`: weight `[out, in]`, bias `[out]`, packed once for the GEMM.
#[derive(Debug, Clone)]
pub(crate) struct Linear {
    pub(crate) w: PackedB,
}

impl Linear {
    /// Loads `weight` `[out, in]` and `bias` `[out]` under `vb`.
    pub(crate) fn load(vb: &Vb, inp: usize, out: usize) -> Result<Self, Error> {
        let w = vb.get("weight", &[out, inp])?;
        let b = vb.get("bias", &[out])?;
        Ok(Self {
            w: PackedB::pack_nk(&w.data, out, inp, inp, Some(&b.data)),
        })
    }

    /// A linear layer from a weight already laid out as `[out][in]` and its bias.
    pub(crate) fn from_parts(w: &[f32], b: &[f32], inp: usize, out: usize) -> Self {
        Self {
            w: PackedB::pack_nk(w, out, inp, inp, Some(b)),
        }
    }

    pub(crate) fn out_features(&self) -> usize {
        self.w.n()
    }

    /// Visits the packed weight.
    pub(crate) fn weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        f(&mut self.w)
    }

    /// `c[i] (=|+=) epi(a[i] · Wᵀ + b)` for `m` rows.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        ops: &Ops,
        m: usize,
        a: &[f32],
        lda: usize,
        c: &mut [f32],
        ldc: usize,
        epi: Epilogue,
    ) {
        ops.gemm(m, a, lda, &self.w, c, ldc, epi);
    }
}

/// `torch.nn.LayerNorm(dim, eps)` with affine parameters.
#[derive(Debug, Clone)]
pub(crate) struct LayerNorm {
    pub(crate) weight: Vec<f32>,
    pub(crate) bias: Vec<f32>,
    pub(crate) eps: f32,
}

impl LayerNorm {
    pub(crate) fn load(vb: &Vb, dim: usize, eps: f32) -> Result<Self, Error> {
        Ok(Self {
            weight: vb.get("weight", &[dim])?.data.clone(),
            bias: vb.get("bias", &[dim])?.data.clone(),
            eps,
        })
    }

    /// Normalises `rows` rows of `x` (stride = dim) into `out` (stride = dim).
    pub(crate) fn forward(&self, ops: &Ops, rows: usize, x: &[f32], out: &mut [f32]) {
        let d = self.weight.len();
        ops.layer_norm(rows, d, x, d, &self.weight, &self.bias, self.eps, out, d);
    }
}

/// 2x2 average pooling, stride 2 (floor), on `g` NHWC images of `h x w x c`.
/// Returns the output height and width.
pub(crate) fn avg_pool2(
    x: &[f32],
    g: usize,
    h: usize,
    w: usize,
    c: usize,
    out: &mut [f32],
) -> (usize, usize) {
    let (ho, wo) = (h / 2, w / 2);
    for gi in 0..g {
        let img = &x[gi * h * w * c..(gi + 1) * h * w * c];
        let o = &mut out[gi * ho * wo * c..(gi + 1) * ho * wo * c];
        for y in 0..ho {
            for xx in 0..wo {
                let p00 = ((2 * y) * w + 2 * xx) * c;
                let p01 = p00 + c;
                let p10 = p00 + w * c;
                let p11 = p10 + c;
                let dst = &mut o[(y * wo + xx) * c..(y * wo + xx + 1) * c];
                for (ch, d) in dst.iter_mut().enumerate() {
                    *d = (img[p00 + ch] + img[p01 + ch] + img[p10 + ch] + img[p11 + ch]) * 0.25;
                }
            }
        }
    }
    (ho, wo)
}

/// 3x3 max pooling, stride 1, padding 1 (padding never wins, as with -inf), NHWC.
/// Separable: a max over each row's 3 neighbours (into `hmax`, one image: `h*w*c` values),
/// then over 3 rows.
#[allow(clippy::too_many_arguments)]
pub(crate) fn max_pool3(
    x: &[f32],
    g: usize,
    h: usize,
    w: usize,
    c: usize,
    hmax: &mut [f32],
    out: &mut [f32],
) {
    let row = w * c;
    let hmax = &mut hmax[..h * row];
    for gi in 0..g {
        let img = &x[gi * h * row..(gi + 1) * h * row];
        for y in 0..h {
            let src = &img[y * row..(y + 1) * row];
            let dst = &mut hmax[y * row..(y + 1) * row];
            for xx in 0..w {
                let d = &mut dst[xx * c..(xx + 1) * c];
                d.copy_from_slice(&src[xx * c..(xx + 1) * c]);
                if xx > 0 {
                    max_into(d, &src[(xx - 1) * c..xx * c]);
                }
                if xx + 1 < w {
                    max_into(d, &src[(xx + 1) * c..(xx + 2) * c]);
                }
            }
        }
        let o = &mut out[gi * h * row..(gi + 1) * h * row];
        for y in 0..h {
            let d = &mut o[y * row..(y + 1) * row];
            d.copy_from_slice(&hmax[y * row..(y + 1) * row]);
            if y > 0 {
                max_into(d, &hmax[(y - 1) * row..y * row]);
            }
            if y + 1 < h {
                max_into(d, &hmax[(y + 1) * row..(y + 2) * row]);
            }
        }
    }
}

fn max_into(d: &mut [f32], s: &[f32]) {
    for (a, b) in d.iter_mut().zip(s) {
        *a = a.max(*b);
    }
}

/// im2col for a `k x k` convolution with padding `k/2` and stride 1 on NHWC images:
/// row `(g, y, x)` of `out` holds the `k*k*c` values in `(ky, kx, c)` order (zeros outside).
pub(crate) fn im2col(x: &[f32], g: usize, h: usize, w: usize, c: usize, k: usize, out: &mut [f32]) {
    let pad = k / 2;
    let row = k * k * c;
    for gi in 0..g {
        let img = &x[gi * h * w * c..(gi + 1) * h * w * c];
        for y in 0..h {
            for xx in 0..w {
                let base = ((gi * h + y) * w + xx) * row;
                let dst = &mut out[base..base + row];
                // The pixels inside the image along x, kx in lo..hi, are one contiguous run
                // in both NHWC source and destination: one copy per ky (a copy per pixel of
                // `c` values made im2col ~2% of an int8 pass, in `memmove` calls).
                let lo = pad.saturating_sub(xx);
                let hi = k.min(w + pad - xx);
                for ky in 0..k {
                    let d = &mut dst[ky * k * c..(ky + 1) * k * c];
                    let yy = (y + ky).wrapping_sub(pad);
                    if yy >= h || lo >= hi {
                        d.fill(0.0);
                        continue;
                    }
                    let s = (yy * w + xx + lo - pad) * c;
                    d[..lo * c].fill(0.0);
                    d[lo * c..hi * c].copy_from_slice(&img[s..s + (hi - lo) * c]);
                    d[hi * c..].fill(0.0);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::im2col;
    use proptest::prelude::*;

    /// im2col by its definition, one value at a time.
    fn im2col_naive(x: &[f32], g: usize, h: usize, w: usize, c: usize, k: usize) -> Vec<f32> {
        let pad = k / 2;
        let mut out = vec![f32::NAN; g * h * w * k * k * c];
        for gi in 0..g {
            for y in 0..h {
                for xx in 0..w {
                    for ky in 0..k {
                        for kx in 0..k {
                            for ci in 0..c {
                                let (yy, xs) = (
                                    (y + ky) as isize - pad as isize,
                                    (xx + kx) as isize - pad as isize,
                                );
                                let inside =
                                    yy >= 0 && yy < h as isize && xs >= 0 && xs < w as isize;
                                let v = if inside {
                                    x[((gi * h + yy as usize) * w + xs as usize) * c + ci]
                                } else {
                                    0.0
                                };
                                out[(((gi * h + y) * w + xx) * k * k + ky * k + kx) * c + ci] = v;
                            }
                        }
                    }
                }
            }
        }
        out
    }

    proptest! {
        #[test]
        fn im2col_matches_definition(g in 1usize..3, h in 1usize..9, w in 1usize..9, c in 1usize..5, half in 0usize..4) {
            let k = 2 * half + 1;
            let x: Vec<f32> = (0..g * h * w * c).map(|i| i as f32 + 0.5).collect();
            let mut out = vec![f32::NAN; g * h * w * k * k * c];
            im2col(&x, g, h, w, c, k, &mut out);
            let want = im2col_naive(&x, g, h, w, c, k);
            prop_assert_eq!(out, want);
        }
    }
}
