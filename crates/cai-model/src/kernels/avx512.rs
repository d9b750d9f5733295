//! x86-64 kernels that need AVX-512: the integer product on AVX-512 VNNI.
//!
//! `vpdpwssd` multiplies 32 pairs of i16 and adds each pair's sum into 16 i32 lanes in one
//! instruction, where AVX2 needs two (`vpmaddwd`, then `vpaddd`) for half as many lanes. The
//! integers and the f32 epilogue are the AVX2 kernel's (and so the scalar reference's), so
//! the results are identical to the bit.
//!
//! Tile: 12 rows x two [`NR`]-wide panels (32 columns): 24 zmm accumulators, the two
//! panels' weight pairs for one k pair in two registers, and each row's activation pair
//! broadcast straight from memory (`{1to16}`), within the 32 zmm registers. Columns past
//! `n` are masked on store, not handled by a scalar tail. Hand-written: no crate offers a
//! VNNI GEMM with these epilogues.
//!
//! Tested against the scalar reference like the AVX2 kernels; on a CPU without AVX-512
//! VNNI the tests skip, and `scripts/test-avx512.sh` runs them in an emulated one.

use std::arch::x86_64::*;

use super::{Epilogue, GemmFn, PackedB, ACT_GELU, ACT_RELU, NR};

/// Rows of the VNNI register tile (see the module doc).
const MRV: usize = 12;

/// The VNNI integer product, if this CPU has AVX-512F, BW and VNNI (and AVX2+FMA, which
/// the row quantiser uses). Checked once here, which is what makes the `unsafe` calls into
/// the `#[target_feature]` functions sound.
pub fn vnni_gemm_int8() -> Option<GemmFn> {
    let has = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vnni")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma");
    has.then_some(gemm_int8_vnni as GemmFn)
}

/// The integer product (see [`super::Ops::gemm`]): blocks of `A` rows are quantised
/// ([`super::x86::quantized_blocks`], the AVX2 tier's integers), then every pair of
/// integer panels of `b` passes over the block, [`MRV`] rows at a time.
fn gemm_int8_vnni(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    // SAFETY: reachable only through `vnni_gemm_int8` (AVX-512F/BW/VNNI, AVX2 and FMA
    // confirmed); `quantized_blocks` hands `block` whole strips of quantised rows and their
    // scales and a block of `c` with `rows` rows of `b.n()` values at stride `ldc`.
    unsafe {
        super::x86::quantized_blocks(m, a, lda, b, c, ldc, MRV, |rows, ap, sp, cp| {
            per_epilogue!(epi, block, [], (rows, ap, sp, b, cp, ldc))
        });
    }
}

/// All integer panels of `b` over one quantised block of `rows` rows: two panels at a
/// time, then a last single one when their number is odd.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRV) * MRV` rows of `2*k2` values, `sa`
/// as many scales, `c` points to `rows` writable rows of `b.n()` values at stride `ldc`,
/// `b` is quantised, and the CPU has AVX-512F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let (k2, n) = (b.k().div_ceil(2), b.n());
    let panels = b.panels();
    let mut p = 0;
    while p < panels {
        let two = p + 1 < panels;
        let cols = (n - p * NR).min(2 * NR);
        let mut s = 0;
        while s * MRV < rows {
            let r = MRV.min(rows - s * MRV);
            let (a, sr, cs) = (
                ap.add(s * MRV * 2 * k2),
                sa.add(s * MRV),
                c.add(s * MRV * ldc + p * NR),
            );
            // SAFETY: strip `s` exists in `ap`; its rows are < rows and columns
            // p*NR .. p*NR + cols are < n, inside `c`; panel p (and p+1 when `two`) exist.
            if two {
                tile::<ACT, ACC, 2>(k2, a, b, p, sr, cs, ldc, r, cols);
            } else {
                tile::<ACT, ACC, 1>(k2, a, b, p, sr, cs, ldc, r, cols);
            }
            s += 1;
        }
        p += 2;
    }
}

/// One quantised strip ([`MRV`] rows) x `P` integer panels (`P * 16` columns): i32 sums
/// by `vpdpwssd`, then `acc * (row scale * column scale) + bias` and the epilogue, in the
/// scalar reference's order of f32 operations; columns past `cols` are masked off.
///
/// Caller guarantees: `a` points to [`MRV`] rows of `2*k2` values, `b` has panels
/// `p .. p + P`, `sa` points to [`MRV`] scales and `c` to `rows` writable rows of `cols`
/// values at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const ACT: u8, const ACC: bool, const P: usize>(
    k2: usize,
    a: *const i16,
    b: &PackedB,
    p: usize,
    sa: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_si512(); P]; MRV];
    let rs = 2 * k2;
    let mut bp = [std::ptr::null::<i16>(); P];
    for (h, bh) in bp.iter_mut().enumerate() {
        *bh = b.q_panel(p + h).as_ptr();
    }
    let mut ap = a;
    for _ in 0..k2 {
        let mut bv = [_mm512_setzero_si512(); P];
        for (h, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_si512(bp[h] as *const __m512i);
            bp[h] = bp[h].add(2 * NR);
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32((ap.add(r * rs) as *const i32).read_unaligned());
            for h in 0..P {
                accr[h] = _mm512_dpwssd_epi32(accr[h], av, bv[h]);
            }
        }
        ap = ap.add(2);
    }
    let mut bias = [_mm512_setzero_ps(); P];
    let mut scale = [_mm512_setzero_ps(); P];
    let mut mask = [0u16; P];
    for h in 0..P {
        bias[h] = _mm512_loadu_ps(b.panel_bias(p + h).as_ptr());
        scale[h] = _mm512_loadu_ps(b.q_scale(p + h).as_ptr());
        let left = cols.saturating_sub(h * NR).min(NR);
        mask[h] = ((1u32 << left) - 1) as u16;
    }
    // One row of the epilogue; a full strip runs it over a constant count, so the
    // accumulators stay in registers (a run-time bound made the AVX2 tile spill them).
    let row = |r: usize, accr: &[__m512i; P]| {
        let s = _mm512_set1_ps(*sa.add(r));
        let cr = c.add(r * ldc);
        for h in 0..P {
            let v = _mm512_add_ps(
                _mm512_mul_ps(_mm512_cvtepi32_ps(accr[h]), _mm512_mul_ps(s, scale[h])),
                bias[h],
            );
            let v = act::<ACT>(v);
            let dst = cr.add(h * NR);
            if mask[h] == 0xFFFF {
                let v = if ACC {
                    _mm512_add_ps(v, _mm512_loadu_ps(dst))
                } else {
                    v
                };
                _mm512_storeu_ps(dst, v);
            } else {
                let v = if ACC {
                    _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask[h], dst))
                } else {
                    v
                };
                _mm512_mask_storeu_ps(dst, mask[h], v);
            }
        }
    };
    if rows == MRV {
        for (r, accr) in acc.iter().enumerate() {
            row(r, accr);
        }
    } else {
        for (r, accr) in acc.iter().enumerate().take(rows) {
            row(r, accr);
        }
    }
}

/// The epilogue's activation on one tile row of a panel.
#[target_feature(enable = "avx512f")]
#[inline]
fn act<const ACT: u8>(v: __m512) -> __m512 {
    if ACT == ACT_RELU {
        _mm512_max_ps(v, _mm512_setzero_ps())
    } else if ACT == ACT_GELU {
        gelu16(v)
    } else {
        v
    }
}

/// The AVX2 tier's exact-erf GELU (`x86::gelu8`: same rational approximation, same
/// operations) on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
fn gelu16(x: __m512) -> __m512 {
    use super::{GELU_P as P, GELU_Q as Q};
    let lim = 4.0 * std::f32::consts::SQRT_2;
    let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-lim)), _mm512_set1_ps(lim));
    let u = _mm512_mul_ps(xc, xc);
    let mut p = _mm512_set1_ps(P[6]);
    for c in P[..6].iter().rev() {
        p = _mm512_fmadd_ps(p, u, _mm512_set1_ps(*c));
    }
    let mut q = _mm512_set1_ps(Q[3]);
    for c in Q[..3].iter().rev() {
        q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(*c));
    }
    q = _mm512_fmadd_ps(q, u, _mm512_set1_ps(1.0));
    let num = _mm512_mul_ps(x, _mm512_fmadd_ps(xc, p, q));
    _mm512_div_ps(num, _mm512_add_ps(q, q))
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Weights, EPIS};
    use super::super::{x86, Epilogue, Ops};
    use proptest::prelude::*;

    /// The AVX-512 table with the VNNI product, if this CPU has it.
    fn vnni_ops() -> Option<Ops> {
        let ops = x86::avx512_ops()?;
        super::vnni_gemm_int8()?;
        Some(ops)
    }

    #[test]
    fn vnni_gemm_matches_scalar_on_odd_shapes() {
        let Some(ops) = vnni_ops() else { return };
        for w in [Weights::Int8, Weights::Int16] {
            check::gemm_odd_shapes(&ops, w);
        }
    }

    #[test]
    fn vnni_gemm_model_shapes_and_long_reductions() {
        let Some(ops) = vnni_ops() else { return };
        for w in [Weights::Int8, Weights::Int16] {
            // The ViT shapes (65 tokens x 4 galaxies; 12 and 36 panels), a single last
            // panel (n = 208: 13 panels) and a long reduction over several row blocks.
            for (m, n, k) in [(260, 576, 192), (260, 192, 768), (131, 208, 192)] {
                for epi in EPIS {
                    check::gemm(&ops, m, n, k, k + 1, n + 3, epi, (m + n + k) as u64, w);
                }
            }
            check::gemm(&ops, 300, 40, 3216, 3216, 40, Epilogue::RELU, 7, w);
        }
    }

    #[test]
    fn vnni_gemm_worst_case_sums() {
        let Some(ops) = vnni_ops() else { return };
        check::int_worst_case_sums(&ops);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn vnni_gemm_prop(m in 0usize..40, n in 0usize..70, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000, wide in proptest::bool::ANY) {
            if let Some(ops) = vnni_ops() {
                let w = if wide { Weights::Int16 } else { Weights::Int8 };
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, w);
            }
        }
    }
}
