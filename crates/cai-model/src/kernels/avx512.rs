//! x86-64 kernels that need AVX-512: the f32 product and the FMA probe on 512-bit
//! registers, the integer product on AVX-512 VNNI and the bf16 product on AVX-512 BF16.
//!
//! All three products use a tile of 13 rows x two [`NR`]-wide panels (32 columns): 26 zmm
//! accumulators and the two panels' weights for one k step in two registers, with each
//! row's activation broadcast straight from memory (`{1to16}`), within the 32 zmm
//! registers (the AVX2 tile, 6 x 16 in 16 ymm registers, loads 8 values per 12 FMAs; this
//! one 15 per 26 of twice the width). 13 rows, not 12: AstroMAE's 65 tokens are 5 strips
//! of 13 (6 of 12 computed 72 rows for a galaxy's `qkv`, its attention and its 64-row
//! patch embedding), and a chunk of 8 galaxies (520 rows) 40; see `docs/performance.md`
//! (Zen 4) for the A/B. Columns past `n` are masked on store, not handled by a
//! scalar tail. f32: the same FMAs in the same order per output as the AVX2 tile, so the
//! same results to the bit. Integers: `vpdpwssd` multiplies 32 pairs of i16 and adds each
//! pair's sum into 16 i32 lanes in one instruction, where AVX2 needs two (`vpmaddwd`, then
//! `vpaddd`) for half as many lanes; the integers and the f32 epilogue are the AVX2 kernel's
//! (and so the scalar reference's). bf16: `vdpbf16ps` multiplies 32 pairs of bf16 and adds
//! each pair's two (exact) products into 16 f32 lanes, twice the multiplies of an f32 FMA
//! per instruction; the rows of `A` are rounded to bf16 per block. Hand-written: no crate
//! offers these GEMMs with these epilogues.
//!
//! Tested against the scalar reference like the AVX2 kernels; on a CPU without AVX-512 the
//! tests skip, and `scripts/test-avx512.sh` runs them in an emulated one
//! (`CAI_AVX512_CPU=sapphire_rapids` for BF16). Timed on Sapphire Rapids and Zen 4
//! (`docs/performance.md`); `scripts/bench/run.sh --kernels avx512,avx2` compares both
//! tiers and PyTorch.

use std::arch::x86_64::*;

use std::cell::Cell;

use super::{
    AttentionFn, AttentionScratch, Epilogue, FmaProbeFn, GemmFn, HeadQkv, Ops, PackedB, ACT_GELU,
    ACT_RELU, NR,
};

/// Rows of the register tiles (see the module doc).
const MRV: usize = 13;
/// Target size (f32 values) of the block of `A` rows kept hot while panels pass over it.
const A_BLOCK: usize = 24 * 1024;

/// The f32 product and the FMA probe on 512-bit registers, if this CPU has AVX-512F.
/// Checked once here, which is what makes the `unsafe` calls into the `#[target_feature]`
/// functions sound.
pub fn f32_kernels() -> Option<(GemmFn, FmaProbeFn)> {
    is_x86_feature_detected!("avx512f").then_some((gemm_f32 as GemmFn, fma_probe as FmaProbeFn))
}

thread_local! {
    /// Per-thread copy of a last, partial strip of `A` rows, padded with zero rows.
    static TAIL: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

/// The f32 product (see [`super::Ops::gemm`]): whole strips of [`MRV`] rows are read where
/// they lie, a block of rows at a time, while every pair of panels passes over the block; a
/// last, partial strip is copied and padded with zero rows first.
fn gemm_f32(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k();
    let mc = ((A_BLOCK / k.max(1)) / MRV * MRV).max(MRV * 6);
    let full = m / MRV * MRV;
    let mut m0 = 0;
    while m0 < full {
        let rows = mc.min(full - m0);
        // SAFETY: rows m0 .. m0 + rows (whole strips) of `a` hold `k` values each at stride
        // `lda` (checked by `Ops::gemm`), and of `c` `b.n()` values at stride `ldc`;
        // reachable only through `f32_kernels` (AVX-512F confirmed).
        unsafe {
            let (ap, cp) = (a.as_ptr().add(m0 * lda), c.as_mut_ptr().add(m0 * ldc));
            per_epilogue!(epi, block_f32, [], (rows, ap, lda, b, cp, ldc));
        }
        m0 += rows;
    }
    if m0 == m {
        return;
    }
    let rows = m - m0;
    let mut tail = TAIL.take();
    tail.clear();
    tail.resize(MRV * k, 0.0);
    for (r, dst) in tail.chunks_exact_mut(k.max(1)).take(rows).enumerate() {
        dst.copy_from_slice(&a[(m0 + r) * lda..(m0 + r) * lda + k]);
    }
    // SAFETY: `tail` holds MRV rows of `k` values (zero past `rows`); `c` holds rows
    // m0 .. m of `b.n()` values at stride `ldc`; AVX-512F confirmed as above.
    unsafe {
        let cp = c.as_mut_ptr().add(m0 * ldc);
        per_epilogue!(epi, block_f32, [], (rows, tail.as_ptr(), k, b, cp, ldc));
    }
    TAIL.set(tail);
}

/// All f32 panels of `b` over one block of `rows` rows of `A` at stride `lda`: two panels at
/// a time, then a last single one when their number is odd.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRV) * MRV` rows of `b.k()` values at stride
/// `lda`, `c` points to `rows` writable rows of `b.n()` values at stride `ldc`, and the CPU
/// has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn block_f32<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const f32,
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k = b.k();
    each_tile(rows, b, |s, p, r, cols, two| {
        let (a, cs) = (ap.add(s * MRV * lda), c.add(s * MRV * ldc + p * NR));
        // SAFETY: strip `s` exists in `ap`; its rows are < rows and columns
        // p*NR .. p*NR + cols are < n, inside `c`; panel p (and p+1 when `two`) exist.
        if two {
            tile_f32::<ACT, ACC, 2>(k, a, lda, b, p, cs, ldc, r, cols);
        } else {
            tile_f32::<ACT, ACC, 1>(k, a, lda, b, p, cs, ldc, r, cols);
        }
    });
}

/// Calls `tile(s, p, rows, cols, two)` for every strip `s` of [`MRV`] rows of a block of
/// `rows` rows (`rows` here: the strip's rows) and every pair of [`NR`]-wide panels `p,
/// p + 1` of `b` (`two` false for a last single panel; `cols`: the pair's columns), panels
/// outermost so a pair stays in L1 while the block's strips pass.
#[inline(always)]
fn each_tile(rows: usize, b: &PackedB, mut tile: impl FnMut(usize, usize, usize, usize, bool)) {
    let (n, panels) = (b.n(), b.panels());
    for p in (0..panels).step_by(2) {
        let cols = (n - p * NR).min(2 * NR);
        for s in 0..rows.div_ceil(MRV) {
            tile(s, p, MRV.min(rows - s * MRV), cols, p + 1 < panels);
        }
    }
}

/// Calls `row(r, &acc[r])` for the first `rows` accumulator rows of a tile; a full strip
/// runs over a constant count, so the accumulators stay in registers (a run-time bound
/// made the AVX2 tile spill them).
#[inline(always)]
fn each_row<T>(acc: &[T; MRV], rows: usize, mut row: impl FnMut(usize, &T)) {
    if rows == MRV {
        for (r, a) in acc.iter().enumerate() {
            row(r, a);
        }
    } else {
        for (r, a) in acc.iter().enumerate().take(rows) {
            row(r, a);
        }
    }
}

/// One strip ([`MRV`] rows of `A` at stride `lda`) x `P` f32 panels:
/// `C[r][..cols] (=|+=) act(sum_k A[r][k] B[k][..] + bias)` for `r < rows`.
///
/// Caller guarantees: `a` points to [`MRV`] rows of `k` values at stride `lda`, `b` has
/// panels `p .. p + P`, and `c` to `rows` writable rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_f32<const ACT: u8, const ACC: bool, const P: usize>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    p: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[_mm512_setzero_ps(); P]; MRV];
    let mut bp = [std::ptr::null::<f32>(); P];
    for (h, bh) in bp.iter_mut().enumerate() {
        *bh = b.panel(p + h).as_ptr();
    }
    for kk in 0..k {
        let mut bv = [_mm512_setzero_ps(); P];
        for (h, v) in bv.iter_mut().enumerate() {
            *v = _mm512_loadu_ps(bp[h].add(kk * NR));
        }
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_ps(*a.add(r * lda + kk));
            for h in 0..P {
                accr[h] = _mm512_fmadd_ps(av, bv[h], accr[h]);
            }
        }
    }
    store_f32_tile::<ACC, P>(&acc, b, p, c, ldc, rows, cols, |v| act::<ACT>(v));
}

/// The f32 tiles' epilogue (f32 and bf16 products): `C[r][..cols] (=|+=) act(acc[r] +
/// bias)` for the first `rows` rows, columns past `cols` masked off.
///
/// Caller guarantees: `b` has panels `p .. p + P`, `c` points to `rows` writable rows of
/// `cols` values at stride `ldc`, and the CPU has AVX-512F. Always inlined into its
/// `#[target_feature]` callers (out of line, the tile's accumulators went through memory).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn store_f32_tile<const ACC: bool, const P: usize>(
    acc: &[[__m512; P]; MRV],
    b: &PackedB,
    p: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    act: impl Fn(__m512) -> __m512,
) {
    let (bias, masks) = (panel_biases::<P>(b, p), col_masks::<P>(cols));
    let row = |r: usize, accr: &[__m512; P]| {
        store_sums::<ACC, P>(c.add(r * ldc), accr, &bias, &masks, &act)
    };
    each_row(acc, rows, row);
}

/// The biases of panels `p .. p + P` of `b`.
///
/// Caller guarantees: `b` has those panels and the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn panel_biases<const P: usize>(b: &PackedB, p: usize) -> [__m512; P] {
    std::array::from_fn(|h| _mm512_loadu_ps(b.panel_bias(p + h).as_ptr()))
}

/// One row of an f32 tile's epilogue: `c[h*16..] (=|+=) act(sums[h] + bias[h])` for each
/// of the `P` panels, masked by `masks` (`act`: [`act`] for f32 products, [`act_int`] for
/// bf16 ones).
///
/// Caller guarantees: `c` points to the row's writable columns that `masks` select, and the
/// CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store_sums<const ACC: bool, const P: usize>(
    c: *mut f32,
    sums: &[__m512; P],
    bias: &[__m512; P],
    masks: &[u16; P],
    act: impl Fn(__m512) -> __m512,
) {
    for h in 0..P {
        let v = act(_mm512_add_ps(sums[h], bias[h]));
        store16::<ACC>(c.add(h * NR), v, masks[h]);
    }
}

/// Store masks of the `P` panels of a tile whose first `cols` columns are stored.
#[inline]
pub(super) fn col_masks<const P: usize>(cols: usize) -> [u16; P] {
    std::array::from_fn(|h| {
        let left = cols.saturating_sub(h * NR).min(NR);
        ((1u32 << left) - 1) as u16
    })
}

/// Stores (or, with `ACC`, adds) the lanes of `v` that `mask` selects at `dst`.
///
/// Caller guarantees: the selected lanes of `dst` are writable.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) unsafe fn store16<const ACC: bool>(dst: *mut f32, v: __m512, mask: u16) {
    if mask == 0xFFFF {
        let v = if ACC {
            _mm512_add_ps(v, _mm512_loadu_ps(dst))
        } else {
            v
        };
        _mm512_storeu_ps(dst, v);
    } else {
        let v = if ACC {
            _mm512_add_ps(v, _mm512_maskz_loadu_ps(mask, dst))
        } else {
            v
        };
        _mm512_mask_storeu_ps(dst, mask, v);
    }
}

/// Independent FMA chains for the peak probe (as the AVX2 probe: enough to cover the FMA
/// latency times the pipes).
const PROBE_CHAINS: usize = 12;

/// The FMA probe on 512-bit registers (see [`super::Ops::fma_probe`]): on CPUs with two
/// 512-bit FMA units its peak is twice the 256-bit one; on Zen 4 (256-bit units) the same.
fn fma_probe(iters: u64) -> (f32, u64) {
    // SAFETY: reachable only through `f32_kernels` (AVX-512F confirmed).
    let sum = unsafe { fma_chains(iters) };
    (sum, iters * PROBE_CHAINS as u64 * 16 * 2)
}

/// `acc = acc * m + a` on [`PROBE_CHAINS`] registers of 16 lanes, `iters` times.
#[target_feature(enable = "avx512f")]
fn fma_chains(iters: u64) -> f32 {
    let m = _mm512_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm512_set1_ps(std::hint::black_box(1e-7));
    let mut acc: [__m512; PROBE_CHAINS] = std::array::from_fn(|i| _mm512_set1_ps(i as f32 * 0.01));
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm512_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm512_setzero_ps();
    for v in acc {
        s = _mm512_add_ps(s, v);
    }
    _mm512_reduce_add_ps(s)
}

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
pub(super) fn gemm_int8_vnni(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    if b.is_int8() {
        // SAFETY: as below; `quantized_blocks8` hands `block_vnni8` whole strips of u8
        // rows, their scales and zero points, and a block of `c` of `rows` rows.
        unsafe {
            super::x86::quantized_blocks8(
                m,
                a,
                lda,
                b,
                c,
                ldc,
                (MRV, 4),
                quantize_row_u8,
                |rows, ap, sp, zp, cp| {
                    per_epilogue!(epi, block_vnni8, [], (rows, ap, sp, zp, b, cp, ldc))
                },
            );
        }
        return;
    }
    // SAFETY: reachable only through `vnni_gemm_int8` (AVX-512F/BW/VNNI, AVX2 and FMA
    // confirmed); `quantized_blocks` hands `block_vnni` whole strips of quantised rows and their
    // scales and a block of `c` with `rows` rows of `b.n()` values at stride `ldc`.
    unsafe {
        super::x86::quantized_blocks(
            m,
            a,
            lda,
            b,
            c,
            ldc,
            MRV,
            quantize_row_i16,
            |rows, ap, sp, cp| per_epilogue!(epi, block_vnni, [], (rows, ap, sp, b, cp, ldc)),
        );
    }
}

/// All integer panels of `b` over one quantised block of `rows` rows: two panels at a
/// time, then a last single one when their number is odd.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRV) * MRV` rows of `2*k2` values, `sa`
/// as many scales, `c` points to `rows` writable rows of `b.n()` values at stride `ldc`,
/// `b` is quantised, and the CPU has AVX-512F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_vnni<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k2 = b.k().div_ceil(2);
    each_tile(rows, b, |s, p, r, cols, two| {
        let (a, sr, cs) = (
            ap.add(s * MRV * 2 * k2),
            sa.add(s * MRV),
            c.add(s * MRV * ldc + p * NR),
        );
        // SAFETY: strip `s` exists in `ap`; its rows are < rows and columns
        // p*NR .. p*NR + cols are < n, inside `c`; panel p (and p+1 when `two`) exist.
        if two {
            tile_vnni::<ACT, ACC, 2>(k2, a, b, p, sr, cs, ldc, r, cols);
        } else {
            tile_vnni::<ACT, ACC, 1>(k2, a, b, p, sr, cs, ldc, r, cols);
        }
    });
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
unsafe fn tile_vnni<const ACT: u8, const ACC: bool, const P: usize>(
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
    let panels = std::array::from_fn(|h| b.q_panel(p + h).as_ptr().cast::<i32>());
    let acc = pair_sums(
        k2,
        a.cast(),
        panels,
        _mm512_setzero_si512(),
        |acc, av, bv| _mm512_dpwssd_epi32(acc, av, bv),
    );
    let mut bias = [_mm512_setzero_ps(); P];
    let mut scale = [_mm512_setzero_ps(); P];
    for h in 0..P {
        bias[h] = _mm512_loadu_ps(b.panel_bias(p + h).as_ptr());
        scale[h] = _mm512_loadu_ps(b.q_scale(p + h).as_ptr());
    }
    let masks = col_masks::<P>(cols);
    let row = |r: usize, accr: &[__m512i; P]| {
        let s = _mm512_set1_ps(*sa.add(r));
        for h in 0..P {
            let v = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(accr[h]),
                _mm512_mul_ps(s, scale[h]),
                bias[h],
            );
            store16::<ACC>(c.add(r * ldc + h * NR), act_int::<ACT>(v), masks[h]);
        }
    };
    each_row(&acc, rows, row);
}

/// All int8 panels of `b` over one block of `rows` rows quantised to u8: two panels at a
/// time, then a last single one when their number is odd.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRV) * MRV` rows of `4*k4` codes, `sa` and
/// `zp` as many scales and zero points, `c` points to `rows` writable rows of `b.n()`
/// values at stride `ldc`, `b` is int8, and the CPU has AVX-512F/BW/VNNI.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
unsafe fn block_vnni8<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const u8,
    sa: *const f32,
    zp: *const i32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k4 = b.k().div_ceil(4);
    each_tile(rows, b, |s, p, r, cols, two| {
        let (a, sz, cs) = (
            ap.add(s * MRV * 4 * k4),
            (sa.add(s * MRV), zp.add(s * MRV)),
            c.add(s * MRV * ldc + p * NR),
        );
        // SAFETY: strip `s` exists in `ap` (and its scales and zero points); its rows are
        // < rows and columns p*NR .. p*NR + cols are < n, inside `c`; panel p (and p+1
        // when `two`) exist.
        if two {
            tile_vnni8::<ACT, ACC, 2>(k4, a, b, p, sz, cs, ldc, r, cols);
        } else {
            tile_vnni8::<ACT, ACC, 1>(k4, a, b, p, sz, cs, ldc, r, cols);
        }
    });
}

/// One u8 strip ([`MRV`] rows) x `P` int8 panels: `vpdpbusd` adds 4 products of a code
/// and a weight into each of 16 i32 lanes; then `acc - zero point x column sum` (the exact
/// `sum (u - zp) q` of the scalar reference), `* (row scale * column scale) + bias` and the
/// epilogue in the reference's order of f32 operations; columns past `cols` are masked off.
/// The raw sums may wrap (up to `k * 255 * 127`); the subtraction wraps back to the exact
/// value, which [`PackedB::quantize_int8`] keeps within i32.
///
/// Caller guarantees: `a` points to [`MRV`] rows of `4*k4` codes, `b` has int8 panels
/// `p .. p + P`, `(sa, zp)` to [`MRV`] scales and zero points, and `c` to `rows` writable
/// rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_vnni8<const ACT: u8, const ACC: bool, const P: usize>(
    k4: usize,
    a: *const u8,
    b: &PackedB,
    p: usize,
    (sa, zp): (*const f32, *const i32),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let epi = Int8Epilogue::<P>::new(b, p, cols);
    // The sums start at `-zero point x column sum` rather than 0: the same exact
    // `sum (u - zp) q` in wrapping i32 arithmetic, without a subtraction per row and
    // panel after the loop (nor the zeroing of the accumulator array).
    let mut acc: [[__m512i; P]; MRV] = std::array::from_fn(|r| {
        let z = _mm512_set1_epi32(zp.add(r).read().wrapping_neg());
        std::array::from_fn(|h| _mm512_mullo_epi32(z, epi.colsum[h]))
    });
    let panels = std::array::from_fn(|h| b.q8_panel(p + h).as_ptr().cast::<i32>());
    pair_products(k4, k4, a.cast(), panels, &mut acc, |acc, av, bv| {
        _mm512_dpbusd_epi32(acc, av, bv)
    });
    let row = |r: usize, accr: &[__m512i; P]| {
        epi.row_exact::<ACT, ACC>(c.add(r * ldc), accr, *sa.add(r));
    };
    each_row(&acc, rows, row);
}

/// The int8 products' epilogue for `P` panels (the AVX-512 VNNI tile's and the AMX one's):
/// per row, `sum - zero point x column sum` (the exact `sum (u - zp) q` of the scalar
/// reference), `* (row scale * column scale) + bias` and the activation, in the reference's
/// order of f32 operations, columns past the tile's masked off.
pub(super) struct Int8Epilogue<const P: usize> {
    bias: [__m512; P],
    scale: [__m512; P],
    colsum: [__m512i; P],
    masks: [u16; P],
}

impl<const P: usize> Int8Epilogue<P> {
    /// The biases, column scales and column sums of int8 panels `p .. p + P` of `b`, for a
    /// tile storing `cols` columns.
    ///
    /// Caller guarantees: `b` is int8 with those panels, and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn new(b: &PackedB, p: usize, cols: usize) -> Self {
        Self {
            bias: panel_biases::<P>(b, p),
            scale: std::array::from_fn(|h| _mm512_loadu_ps(b.q_scale(p + h).as_ptr())),
            colsum: std::array::from_fn(|h| _mm512_loadu_si512(b.q_colsum(p + h).as_ptr().cast())),
            masks: col_masks::<P>(cols),
        }
    }

    /// One row: its i32 sums per panel, its scale `sa` and zero point `zp`, into `c`.
    ///
    /// Caller guarantees: `c` points to the row's writable columns that the masks select,
    /// and the CPU has AVX-512F.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn row<const ACT: u8, const ACC: bool>(
        &self,
        c: *mut f32,
        sums: &[__m512i; P],
        sa: f32,
        zp: i32,
    ) {
        let z = _mm512_set1_epi32(zp);
        let exact: [__m512i; P] = std::array::from_fn(|h| {
            _mm512_sub_epi32(sums[h], _mm512_mullo_epi32(z, self.colsum[h]))
        });
        self.row_exact::<ACT, ACC>(c, &exact, sa);
    }

    /// [`Int8Epilogue::row`] for sums from which the zero point's share is already taken.
    ///
    /// Caller guarantees: as [`Int8Epilogue::row`]'s.
    #[target_feature(enable = "avx512f")]
    #[inline]
    pub(super) unsafe fn row_exact<const ACT: u8, const ACC: bool>(
        &self,
        c: *mut f32,
        exact: &[__m512i; P],
        sa: f32,
    ) {
        let s = _mm512_set1_ps(sa);
        for (h, e) in exact.iter().enumerate() {
            let v = _mm512_fmadd_ps(
                _mm512_cvtepi32_ps(*e),
                _mm512_mul_ps(s, self.scale[h]),
                self.bias[h],
            );
            store16::<ACC>(c.add(h * NR), act_int::<ACT>(v), self.masks[h]);
        }
    }
}

/// The bf16 product, if this CPU has AVX-512F, BW, VL and BF16 (and AVX2+FMA, which the rest
/// of the tier needs). Checked once here, which is what makes the `unsafe` calls into the
/// `#[target_feature]` functions sound.
pub fn bf16_gemm() -> Option<GemmFn> {
    let has = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx512bf16")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma");
    has.then_some(gemm_bf16 as GemmFn)
}

thread_local! {
    /// Per-thread buffer for blocks of `A` rows rounded to bf16 pairs.
    static BPACK: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// The bf16 product (see [`super::Ops::gemm`] and [`PackedB::round_bf16`]): blocks of `A`
/// rows are rounded to bf16 (`vcvtneps2bf16`, round to nearest even) into rows of `2 * k2`
/// values, then every pair of bf16 panels of `b` passes over the block, [`MRV`] rows at a
/// time.
pub(super) fn gemm_bf16(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k();
    let rs = 2 * k.div_ceil(2);
    let mc = ((2 * A_BLOCK / rs.max(1)) / MRV * MRV).max(MRV * 6);
    let mut qa = BPACK.take();
    let padded = mc.min(m).div_ceil(MRV) * MRV;
    if qa.len() < padded * rs {
        qa.resize(padded * rs, 0);
    }
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        for r in 0..rows {
            let i = m0 + r;
            // SAFETY: reachable only through `bf16_gemm` (AVX-512F/BW/BF16 confirmed).
            unsafe { to_bf16_row(&a[i * lda..i * lda + k], &mut qa[r * rs..(r + 1) * rs]) };
        }
        let (ap, cp) = (qa.as_ptr(), c[m0 * ldc..].as_mut_ptr());
        // SAFETY: as above; `qa` holds whole strips of `rows` rounded rows (the rows past
        // `rows` in the last strip are stale and never stored), and `cp` a block of `rows`
        // rows of `b.n()` values at stride `ldc` (as `Ops::gemm` checked).
        unsafe { per_epilogue!(epi, block_bf16, [], (rows, ap, b, cp, ldc)) };
        m0 += rows;
    }
    BPACK.set(qa);
}

/// `a` rounded to bf16 bits (round to nearest even), 32 values at a time by
/// `vcvtne2ps2bf16` (one instruction and one store where `vcvtneps2bf16` takes two of each;
/// same rounding), then 16, the tail masked; `out` (`a.len().div_ceil(2) * 2` values) gets a
/// zero after an odd count, so the last pair adds nothing.
///
/// Caller guarantees: the CPU has AVX-512F/BW/VL/BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
pub(super) unsafe fn to_bf16_row(a: &[f32], out: &mut [u16]) {
    let k = a.len();
    let mut j = 0;
    while j + 32 <= k {
        let (lo, hi) = (
            _mm512_loadu_ps(a.as_ptr().add(j)),
            _mm512_loadu_ps(a.as_ptr().add(j + 16)),
        );
        // The second operand's values go to the low half.
        let v = _mm512_cvtne2ps_pbh(hi, lo);
        _mm512_storeu_si512(
            out.as_mut_ptr().add(j).cast(),
            std::mem::transmute::<__m512bh, __m512i>(v),
        );
        j += 32;
    }
    while j + 16 <= k {
        let v = _mm512_cvtneps_pbh(_mm512_loadu_ps(a.as_ptr().add(j)));
        _mm256_storeu_si256(
            out.as_mut_ptr().add(j).cast(),
            std::mem::transmute::<__m256bh, __m256i>(v),
        );
        j += 16;
    }
    if j < k {
        let mask = ((1u32 << (k - j)) - 1) as u16;
        let v = _mm512_cvtneps_pbh(_mm512_maskz_loadu_ps(mask, a.as_ptr().add(j)));
        _mm256_mask_storeu_epi16(
            out.as_mut_ptr().add(j).cast(),
            mask,
            std::mem::transmute::<__m256bh, __m256i>(v),
        );
    }
    if k % 2 == 1 {
        out[k] = 0;
    }
}

/// No activation, like `ACT_NONE`, for attention's tiles: their own instantiation of
/// [`tile_f32`], so the GEMM's stays as it was compiled.
const ACT_NONE_ATTN: u8 = 3;

/// One head's attention (see [`Ops::attention`]) fused per strip of [`MRV`] queries, as the
/// AVX2 tier's (`x86::attention_avx2`: scores, exponentials and output back to back in L1,
/// rows normalised at the end) on this tier's 13 x 32 zmm tiles: the strip's scores against
/// the packed `Kᵀ` (with 65 tokens the cls key's column as dot products, stored last), the
/// AVX2 tier's exponentials of each pair of rows, the output from the unnormalised weights
/// over `V` packed in the same key order, each row scaled by 1 / its sum. Measured against
/// the AVX2 kernel on AstroMAE's heads (65 tokens, 64 values): see `docs/performance.md`.
pub(super) fn attention(
    _ops: &Ops,
    h: &HeadQkv<'_>,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    ws: &mut AttentionScratch,
) {
    let (k0, ls, off) = super::x86::prepare_strips(h, ws, MRV);
    // SAFETY: `Ops::attention` checked that q, k and v hold t rows of hd values at stride
    // ld and `out` t rows of hd at stride ldo; `ws.s[off..]` holds MRV rows of `ls` values
    // and `ws.q` MRV rows of hd; the packed panels hold hd (keys) and t (values) rows of
    // NR; reachable only through `x86::avx512_ops` (AVX-512F, AVX2 and FMA confirmed).
    unsafe {
        let sp = ws.s.as_mut_ptr().add(off);
        attention_strips(
            h,
            &ws.kp,
            &ws.vp,
            ws.q.as_ptr(),
            sp,
            ls,
            k0 == 1,
            scale,
            out.as_mut_ptr(),
            ldo,
        );
    }
}

/// The strips of [`attention`]. Caller guarantees as stated there: `qpad` holds the last,
/// partial strip of queries padded with zero rows (MRV rows of hd), `sp` MRV rows of `ls`
/// writable scores.
#[target_feature(enable = "avx512f,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_strips(
    h: &HeadQkv<'_>,
    kp: &PackedB,
    vp: &PackedB,
    qpad: *const f32,
    sp: *mut f32,
    ls: usize,
    cls_last: bool,
    scale: f32,
    out: *mut f32,
    ldo: usize,
) {
    use super::x86::{dot_avx2, scale_row};
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let nk = t - usize::from(cls_last);
    let mut i0 = 0;
    while i0 < t {
        let rows = MRV.min(t - i0);
        let (qa, lda) = if rows == MRV {
            (h.q.as_ptr().add(i0 * ld), ld)
        } else {
            (qpad, hd)
        };
        for p in (0..kp.panels()).step_by(2) {
            let cols = (nk - p * NR).min(2 * NR);
            attention_tile(hd, qa, lda, kp, p, sp.add(p * NR), ls, MRV, cols);
        }
        // The cls scores go to exp_rows_padded in registers (stored and loaded back as part
        // of a vector, they would stall on store forwarding).
        let cls = |r: usize| cls_last.then(|| dot_avx2(qa.add(r * lda), h.k.as_ptr(), hd));
        let inv = strip_exponentials16::<MRV, false>(sp, ls, rows, t, scale, cls);
        for p in (0..vp.panels()).step_by(2) {
            let cols = (hd - p * NR).min(2 * NR);
            let c = out.add(i0 * ldo + p * NR);
            attention_tile(t, sp, ls, vp, p, c, ldo, rows, cols);
        }
        for (r, iv) in inv.iter().enumerate().take(rows) {
            scale_row(out.add((i0 + r) * ldo), hd, *iv);
        }
        i0 += rows;
    }
}

/// [`tile_f32`] for attention over panels `p` and `p + 1` of `b`, or `p` alone when it is
/// the last.
///
/// Caller guarantees: as [`tile_f32`]'s.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn attention_tile(
    k: usize,
    a: *const f32,
    lda: usize,
    b: &PackedB,
    p: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    if p + 1 < b.panels() {
        tile_f32::<ACT_NONE_ATTN, false, 2>(k, a, lda, b, p, c, ldc, rows, cols);
    } else {
        tile_f32::<ACT_NONE_ATTN, false, 1>(k, a, lda, b, p, c, ldc, rows, cols);
    }
}

/// The bf16 attention ([`super::Ops::attention_bf16`]) if this CPU has AVX-512 BF16.
pub fn bf16_attention() -> Option<AttentionFn> {
    bf16_gemm().map(|_| attention_bf16 as AttentionFn)
}

/// [`attention`] with bf16 products (`vdpbf16ps`, twice the f32 FMA's multiply-adds per
/// instruction): the keys rounded to bf16 and laid out as panels of `Kᵀ`'s column pairs,
/// the values as panels of `V`'s (token pairs, the cls token last), each strip of queries
/// rounded, its scores by `vdpbf16ps` (the cls key's column a dot product of the rounded
/// values), the exponentials of [`exp_short16`], those weights rounded for `V`'s
/// product and each row scaled by 1 / the sum of its unrounded weights.
fn attention_bf16(
    _ops: &Ops,
    h: &HeadQkv<'_>,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    ws: &mut AttentionScratch,
) {
    let (t, hd) = (h.t, h.hd);
    let k0 = usize::from(super::cls_key_apart(t));
    let kpanels = (t - k0).div_ceil(NR);
    let (ls, off) = super::x86::score_strip(ws, t, kpanels, MRV);
    let b = &mut ws.pairs;
    size_pairs(b, t, hd, kpanels);
    // SAFETY: `Ops::attention_bf16` checked that q, k and v hold t rows of hd values at
    // stride ld and `out` t rows of hd at stride ldo; the buffers were sized just above for
    // this head; reachable only through `bf16_attention` (AVX-512F/BW/VL/BF16, AVX2 and FMA
    // confirmed).
    unsafe {
        let sp = ws.s.as_mut_ptr().add(off);
        bf16_strips(h, b, k0 == 1, sp, ls, scale, out.as_mut_ptr(), ldo);
    }
}

/// The body of [`attention_bf16`]. Caller guarantees as stated there: `sp` points to
/// [`MRV`] rows of `ls` writable scores, `b`'s buffers are sized for this head.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn bf16_strips(
    h: &HeadQkv<'_>,
    b: &mut super::PairAttention,
    cls_last: bool,
    sp: *mut f32,
    ls: usize,
    scale: f32,
    out: *mut f32,
    ldo: usize,
) {
    use super::x86::scale_row;
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let k0 = usize::from(cls_last);
    let nk = t - k0;
    let (hp, tp) = (hd.div_ceil(2), t.div_ceil(2));
    let (kpanels, vpanels) = (nk.div_ceil(NR), hd.div_ceil(NR));
    // Keys k0.. as rows of bf16 pairs, then Kᵀ's panels: pair kp of the panel's NR keys side
    // by side.
    key_rows(&mut b.keys, nk, hp, |j, row| {
        to_bf16_row(&h.k[(k0 + j) * ld..][..hd], row);
    });
    pack_key_pairs(b, kpanels, hp);
    if cls_last {
        to_bf16_row(&h.k[..hd], &mut b.kcls);
    }
    // V's panels: each token's values rounded, paired per two tokens.
    for p in 0..vpanels {
        let m = lanes_or_all(hd - p * NR);
        let half = |tk: usize| {
            let x = _mm512_maskz_loadu_ps(m, h.v.as_ptr().add(tk * ld + p * NR));
            _mm512_cvtepu16_epi32(std::mem::transmute::<__m256bh, __m256i>(
                _mm512_cvtneps_pbh(x),
            ))
        };
        value_pairs(b.vt.as_mut_ptr().add(p * tp * NR), t, k0, half);
    }
    let (kt, vt) = (b.kt.as_ptr().cast::<u32>(), b.vt.as_ptr());
    let (qs, ps) = (b.q.as_mut_ptr(), b.p.as_mut_ptr());
    let kcls = b.kcls.as_ptr();
    let mut i0 = 0;
    while i0 < t {
        let rows = MRV.min(t - i0);
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(qs.add(r * 2 * hp), 2 * hp);
            to_bf16_row(&h.q[(i0 + r) * ld..][..hd], dst);
        }
        for p in (0..kpanels).step_by(2) {
            let cols = (nk - p * NR).min(2 * NR);
            let c = sp.add(p * NR);
            let pa = kt.add(p * hp * NR);
            if p + 1 < kpanels {
                bf16_attention_tile::<2>(hp, qs, [pa, pa.add(hp * NR)], c, ls, MRV, cols);
            } else {
                bf16_attention_tile::<1>(hp, qs, [pa], c, ls, MRV, cols);
            }
        }
        let cls = |r: usize| cls_last.then(|| dot_bf16(qs.add(r * 2 * hp), kcls, hd));
        let inv = strip_exponentials16::<MRV, true>(sp, ls, rows, t, scale, cls);
        for r in 0..rows {
            let dst = std::slice::from_raw_parts_mut(ps.add(r * 2 * tp), 2 * tp);
            to_bf16_row(std::slice::from_raw_parts(sp.add(r * ls), t), dst);
        }
        for p in (0..vpanels).step_by(2) {
            let cols = (hd - p * NR).min(2 * NR);
            let c = out.add(i0 * ldo + p * NR);
            let pa = vt.add(p * tp * NR);
            if p + 1 < vpanels {
                bf16_attention_tile::<2>(tp, ps, [pa, pa.add(tp * NR)], c, ldo, rows, cols);
            } else {
                bf16_attention_tile::<1>(tp, ps, [pa], c, ldo, rows, cols);
            }
        }
        for (r, iv) in inv.iter().enumerate().take(rows) {
            scale_row(out.add((i0 + r) * ldo), hd, *iv);
        }
        i0 += rows;
    }
}

/// Sizes `b`'s buffers for a head of `t` tokens of `hd` values whose keys fill `kpanels`
/// panels of [`NR`] (the bf16 and int16 kernels share them).
fn size_pairs(b: &mut super::PairAttention, t: usize, hd: usize, kpanels: usize) {
    let (hp, tp, vpanels) = (hd.div_ceil(2), t.div_ceil(2), hd.div_ceil(NR));
    b.keys.resize(kpanels * NR * hp, 0.0);
    b.kt.resize(kpanels * hp * NR, 0.0);
    b.vt.resize(vpanels * tp * NR, 0);
    b.kcls.resize(2 * hp, 0);
    b.q.resize(MRV * 2 * hp, 0);
    b.p.resize(MRV * 2 * tp, 0);
    b.kscale.resize(kpanels * NR, 0.0);
    b.vscale.resize(vpanels * NR, 0.0);
}

/// Calls `code(j, row)` with key `j`'s row of `2 hp` 16-bit codes in `keys` (rows of `hp`
/// pairs) for each of the `nk` keys, and zeroes the rows after them.
///
/// Caller guarantees: `keys` holds at least `nk` rows.
#[inline(always)]
unsafe fn key_rows(
    keys: &mut [f32],
    nk: usize,
    hp: usize,
    mut code: impl FnMut(usize, &mut [u16]),
) {
    for (j, row) in keys.chunks_exact_mut(hp.max(1)).enumerate() {
        if j < nk {
            // SAFETY: an f32 slice viewed as twice as many u16 (same memory, u16's alignment
            // is smaller). Pairs travel as f32 bit patterns through the f32 transpose.
            code(
                j,
                std::slice::from_raw_parts_mut(row.as_mut_ptr().cast::<u16>(), 2 * hp),
            );
        } else {
            row.fill(0.0);
        }
    }
}

/// One panel of `V`'s token pairs at `vt` (`t.div_ceil(2)` vectors of [`NR`] pairs): for each
/// pair of tokens in the scores' order (`k0..`, then the cls token when `k0` is 1), the low
/// 16 bits of each lane of `code(token)` for the first in the low halves and for the second
/// in the high halves (zero after an odd count).
///
/// Caller guarantees: `vt` points to that many writable vectors; AVX-512F.
#[inline(always)]
unsafe fn value_pairs(vt: *mut u32, t: usize, k0: usize, code: impl Fn(usize) -> __m512i) {
    let tok = |i: usize| if i + k0 < t { i + k0 } else { i + k0 - t };
    let lo16 = _mm512_set1_epi32(0xFFFF);
    for kp in 0..t.div_ceil(2) {
        let lo = _mm512_and_si512(code(tok(2 * kp)), lo16);
        let pair = if 2 * kp + 1 < t {
            _mm512_or_si512(lo, _mm512_slli_epi32::<16>(code(tok(2 * kp + 1))))
        } else {
            lo
        };
        _mm512_storeu_si512(vt.add(kp * NR).cast(), pair);
    }
}

/// `Kᵀ`'s panels from the keys' rows of code pairs (`b.keys`, `kpanels * NR` rows of `hp`
/// pairs): pair `kp` of the panel's [`NR`] keys side by side (pairs travel as f32 bit
/// patterns through the f32 transpose: moves only, exact).
///
/// Panics if `b.keys` or `b.kt` hold fewer than `kpanels * NR * hp` values.
fn pack_key_pairs(b: &mut super::PairAttention, kpanels: usize, hp: usize) {
    for p in 0..kpanels {
        let (src, dst) = (&b.keys[p * NR * hp..], &mut b.kt[p * hp * NR..]);
        if !super::x86::pack_panel_nk(src, hp, hp, dst) {
            for kp in 0..hp {
                for jj in 0..NR {
                    dst[kp * NR + jj] = src[jj * hp + kp];
                }
            }
        }
    }
}

/// The int16 attention ([`super::Ops::attention_int16`]) if this CPU has AVX-512 VNNI
/// (the integer product's features).
pub fn int16_attention() -> Option<AttentionFn> {
    vnni_gemm_int8().map(|_| attention_int16 as AttentionFn)
}

/// [`attention_bf16`]'s layout with int16 codes and `vpdpwssd` (the arithmetic of
/// [`super::attention_int16_reference`]): keys coded per key into `Kᵀ`'s panels of pairs
/// with their scales in panel order, values per column into `V`'s panels of token pairs,
/// each strip of queries coded per row; scores are the integer sums times the query's and
/// key's scales (the cls key's column a dot product of the codes), the exponentials of
/// [`exp_short16`], then the weights coded per row and their product with `V` times the
/// column's scale and the row's `1 / (L * sum)`.
fn attention_int16(
    _ops: &Ops,
    h: &HeadQkv<'_>,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    ws: &mut AttentionScratch,
) {
    let (t, hd) = (h.t, h.hd);
    let k0 = usize::from(super::cls_key_apart(t));
    let kpanels = (t - k0).div_ceil(NR);
    let (ls, off) = super::x86::score_strip(ws, t, kpanels, MRV);
    let b = &mut ws.pairs;
    size_pairs(b, t, hd, kpanels);
    // SAFETY: `Ops::attention_int16` checked that q, k and v hold t rows of hd values at
    // stride ld and `out` t rows of hd at stride ldo; the buffers were sized just above for
    // this head; reachable only through `int16_attention` (AVX-512F/BW/VNNI, AVX2 and FMA
    // confirmed).
    unsafe {
        let sp = ws.s.as_mut_ptr().add(off);
        i16_strips(h, b, k0 == 1, sp, ls, scale, out.as_mut_ptr(), ldo);
    }
}

/// The body of [`attention_int16`]. Caller guarantees as stated there: `sp` points to
/// [`MRV`] rows of `ls` writable scores, `b`'s buffers are sized for this head.
#[target_feature(enable = "avx512f,avx512bw,avx512vnni,avx2,fma")]
#[allow(clippy::too_many_arguments)]
unsafe fn i16_strips(
    h: &HeadQkv<'_>,
    b: &mut super::PairAttention,
    cls_last: bool,
    sp: *mut f32,
    ls: usize,
    scale: f32,
    out: *mut f32,
    ldo: usize,
) {
    use super::ATT16_KV_LIMIT as LKV;
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let k0 = usize::from(cls_last);
    let nk = t - k0;
    let (hp, tp) = (hd.div_ceil(2), t.div_ceil(2));
    let (kpanels, vpanels) = (nk.div_ceil(NR), hd.div_ceil(NR));
    // Keys k0.. coded per key with their scales (the panels' columns past nk are never
    // stored), then Kᵀ's panels.
    let kscale = &mut b.kscale;
    key_rows(&mut b.keys, nk, hp, |j, row| {
        // SAFETY: u16 codes viewed as i16 (same size and alignment).
        let c = std::slice::from_raw_parts_mut(row.as_mut_ptr().cast::<i16>(), row.len());
        kscale[j] = quantize_row_i16(&h.k[(k0 + j) * ld..][..hd], LKV, c);
    });
    pack_key_pairs(b, kpanels, hp);
    // The keys' largest sum of |codes|, down the panels (16 keys a vector).
    let ones = _mm512_set1_epi16(1);
    let mut widest = 0u64;
    for p in 0..kpanels {
        let mut sums = _mm512_setzero_si512();
        for kp in 0..hp {
            let pairs = _mm512_loadu_si512(b.kt.as_ptr().add((p * hp + kp) * NR).cast());
            sums = _mm512_add_epi32(sums, _mm512_madd_epi16(_mm512_abs_epi16(pairs), ones));
        }
        widest = widest.max(u64::from(_mm512_reduce_max_epu32(sums)));
    }
    let mut kcls_scale = 0.0;
    if cls_last {
        let c = std::slice::from_raw_parts_mut(b.kcls.as_mut_ptr().cast::<i16>(), 2 * hp);
        kcls_scale = quantize_row_i16(&h.k[..hd], LKV, c);
        widest = widest.max(abs_sum_i16(c.as_ptr(), 2 * hp));
    }
    let lq = super::activation_limit(widest);
    // V's panels: per column the largest |v| over the tokens (as sign-cleared bit patterns,
    // so a NaN is the largest and gives the column a NaN scale), then each token's codes,
    // paired per two tokens.
    let (abs, lv) = (_mm512_set1_epi32(i32::MAX), _mm512_set1_ps(LKV as f32));
    for p in 0..vpanels {
        let m = lanes_or_all(hd - p * NR);
        let load = |tk: usize| _mm512_maskz_loadu_ps(m, h.v.as_ptr().add(tk * ld + p * NR));
        let mut top = _mm512_setzero_si512();
        for tk in 0..t {
            top = _mm512_max_epu32(top, _mm512_and_si512(_mm512_castps_si512(load(tk)), abs));
        }
        let amax = _mm512_castsi512_ps(top);
        _mm512_storeu_ps(b.vscale.as_mut_ptr().add(p * NR), _mm512_div_ps(amax, lv));
        let inv = _mm512_maskz_div_ps(
            _mm512_cmp_ps_mask::<_CMP_GT_OQ>(amax, _mm512_setzero_ps()),
            lv,
            amax,
        );
        let code = |tk: usize| {
            _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
                _mm512_mul_ps(load(tk), inv),
            )
        };
        value_pairs(b.vt.as_mut_ptr().add(p * tp * NR), t, k0, code);
    }
    let (kt, vt) = (b.kt.as_ptr().cast::<i32>(), b.vt.as_ptr().cast::<i32>());
    let (qs, ps) = (
        b.q.as_mut_ptr().cast::<i16>(),
        b.p.as_mut_ptr().cast::<i16>(),
    );
    let (kcls, ks, vs) = (
        b.kcls.as_ptr().cast::<i16>(),
        b.kscale.as_ptr(),
        b.vscale.as_ptr(),
    );
    let (mut sq, mut rf) = ([0.0f32; MRV], [0.0f32; MRV]);
    let mut i0 = 0;
    while i0 < t {
        let rows = MRV.min(t - i0);
        for (r, s) in sq.iter_mut().enumerate().take(rows) {
            let dst = std::slice::from_raw_parts_mut(qs.add(r * 2 * hp), 2 * hp);
            *s = quantize_row_i16(&h.q[(i0 + r) * ld..][..hd], lq, dst);
        }
        for p in (0..kpanels).step_by(2) {
            let cols = (nk - p * NR).min(2 * NR);
            let (c, pa, cs) = (sp.add(p * NR), kt.add(p * hp * NR), ks.add(p * NR));
            let rs = sq.as_ptr();
            if p + 1 < kpanels {
                i16_attention_tile::<2>(hp, qs, [pa, pa.add(hp * NR)], rs, cs, c, ls, MRV, cols);
            } else {
                i16_attention_tile::<1>(hp, qs, [pa], rs, cs, c, ls, MRV, cols);
            }
        }
        let cls = |r: usize| {
            cls_last
                .then(|| dot_i16(qs.add(r * 2 * hp), kcls, 2 * hp) as f32 * (sq[r] * kcls_scale))
        };
        let inv = strip_exponentials16::<MRV, true>(sp, ls, rows, t, scale, cls);
        for r in 0..rows {
            let lp = super::attention_weight_limit(t, inv[r]);
            rf[r] = inv[r] / lp;
            let dst = std::slice::from_raw_parts_mut(ps.add(r * 2 * tp), 2 * tp);
            codes_i16(sp.add(r * ls), t, lp, dst);
        }
        for p in (0..vpanels).step_by(2) {
            let cols = (hd - p * NR).min(2 * NR);
            let (c, pa, cs) = (
                out.add(i0 * ldo + p * NR),
                vt.add(p * tp * NR),
                vs.add(p * NR),
            );
            let rs = rf.as_ptr();
            if p + 1 < vpanels {
                i16_attention_tile::<2>(tp, ps, [pa, pa.add(tp * NR)], rs, cs, c, ldo, rows, cols);
            } else {
                i16_attention_tile::<1>(tp, ps, [pa], rs, cs, c, ldo, rows, cols);
            }
        }
        i0 += rows;
    }
}

/// One strip ([`MRV`] rows of `k2` i16 pairs at `a`) x `P` panels of `k2` x [`NR`] pairs:
/// the i32 sums of `vpdpwssd` times `rs[r] * cs[col]`, stored into `rows` rows of `cols`
/// values at stride `ldc`.
///
/// Caller guarantees: as stated; `rs` holds [`MRV`] scales and `cs` `P * NR`; the CPU has
/// AVX-512F/BW/VNNI. Always inlined into [`i16_strips`], whose features it uses: left to
/// LLVM, a change elsewhere in the file (the bf16 attention's exponentials) made it an
/// out-of-line call and the int16 attention 10% slower (10.3 to 11.3 us per head, Zen 4).
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn i16_attention_tile<const P: usize>(
    k2: usize,
    a: *const i16,
    panels: [*const i32; P],
    rs: *const f32,
    cs: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    // Zeroed sums, not `pair_sums`: measured per head of 65 x 64 on Zen 4, this tile took
    // 10.3 us from zero and 11.5 us through `pair_sums` (the bf16 tile the other way round:
    // 8.7 us through `pair_sums`, 9.3-10.6 from zero).
    let mut acc = [[_mm512_setzero_si512(); P]; MRV];
    pair_products(k2, k2, a.cast(), panels, &mut acc, |acc, av, bv| {
        _mm512_dpwssd_epi32(acc, av, bv)
    });
    let col: [__m512; P] = std::array::from_fn(|h| _mm512_loadu_ps(cs.add(h * NR)));
    let masks = col_masks::<P>(cols);
    each_row(&acc, rows, |r, accr| {
        let s = _mm512_set1_ps(*rs.add(r));
        for h in 0..P {
            let v = _mm512_mul_ps(_mm512_cvtepi32_ps(accr[h]), _mm512_mul_ps(s, col[h]));
            store16::<false>(c.add(r * ldc + h * NR), v, masks[h]);
        }
    });
}

/// `sum a[i] b[i]` over `n` i16 codes (`n` even), in i32.
///
/// Caller guarantees: `n` readable values at `a` and at `b`; AVX-512F/BW; the sum fits.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn dot_i16(a: *const i16, b: *const i16, n: usize) -> i32 {
    let mut acc = _mm512_setzero_si512();
    let mut j = 0;
    while j < n {
        let m = lanes32(n - j);
        let (x, y) = (
            _mm512_maskz_loadu_epi16(m, a.add(j)),
            _mm512_maskz_loadu_epi16(m, b.add(j)),
        );
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(x, y));
        j += 32;
    }
    _mm512_reduce_add_epi32(acc)
}

/// `sum |a[i]|` over `n` i16 codes.
///
/// Caller guarantees: `n` readable values at `a`; AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn abs_sum_i16(a: *const i16, n: usize) -> u64 {
    let (ones, mut acc) = (_mm512_set1_epi16(1), _mm512_setzero_si512());
    let mut j = 0;
    while j < n {
        let x = _mm512_abs_epi16(_mm512_maskz_loadu_epi16(lanes32(n - j), a.add(j)));
        acc = _mm512_add_epi32(acc, _mm512_madd_epi16(x, ones));
        j += 32;
    }
    _mm512_reduce_add_epi32(acc) as u32 as u64
}

/// Mask of the first `n` 16-bit lanes, all 32 when `n >= 32`.
#[inline]
fn lanes32(n: usize) -> u32 {
    if n >= 32 {
        u32::MAX
    } else {
        (1u32 << n) - 1
    }
}

/// [`super::x86::strip_exponentials`] on zmm registers ([`exp_rows16`]): the
/// exponentials of a strip's `rows` rows of scores (`ls` apart from `sp`, `t` each), four
/// rows at a time, then two, then one (four rows' independent reductions hide each other's
/// latency: the bf16 attention took 8.1-8.25 us per head on Zen 4 against 8.4-8.5 by
/// pairs), the cls key's score of row `r` from `cls(r)` when it was put apart; returns 1 /
/// each row's sum. `SHORT`: [`exp_short16`] (the bf16 and int16 attentions), else
/// [`exp_nonpos16`] (the f32 one, as the AVX2 tier's).
///
/// Caller guarantees: as [`exp_rows16`] for each row; `rows <= M`.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn strip_exponentials16<const M: usize, const SHORT: bool>(
    sp: *mut f32,
    ls: usize,
    rows: usize,
    t: usize,
    scale: f32,
    cls: impl Fn(usize) -> Option<f32>,
) -> [f32; M] {
    let mut inv = [0.0f32; M];
    let mut r = 0;
    while r + 4 <= rows {
        exp_group::<4, SHORT>(sp, ls, r, t, scale, &cls, &mut inv);
        r += 4;
    }
    if r + 2 <= rows {
        exp_group::<2, SHORT>(sp, ls, r, t, scale, &cls, &mut inv);
        r += 2;
    }
    if r < rows {
        exp_group::<1, SHORT>(sp, ls, r, t, scale, &cls, &mut inv);
    }
    inv
}

/// [`exp_rows16`] on the `R` rows `r0 ..` of [`strip_exponentials16`]'s strip; their
/// 1 / sums into `inv[r0 ..]`. Always inlined into it, whose features it uses.
///
/// Caller guarantees: as [`exp_rows16`] for each of those rows; `inv` holds `r0 + R` values.
#[inline(always)]
unsafe fn exp_group<const R: usize, const SHORT: bool>(
    sp: *mut f32,
    ls: usize,
    r0: usize,
    t: usize,
    scale: f32,
    cls: &impl Fn(usize) -> Option<f32>,
    inv: &mut [f32],
) {
    let rows = std::array::from_fn(|i| sp.add((r0 + i) * ls));
    let last = std::array::from_fn(|i| cls(r0 + i));
    inv[r0..r0 + R].copy_from_slice(&exp_rows16::<R, SHORT>(rows, t, last, scale));
}

/// In place on each of `R` rows of `n` scores: `e_j = exp(scale (x_j - max x))`; returns
/// 1 / sum e_j per row: `x86::exp_rows_padded`'s arithmetic per value (the same
/// exponential, [`exp_nonpos16`]) on 16 lanes. The last vector's lanes past `n` are stored
/// as 0; with `last_score[r]`, row r's value `n - 1` is that, not memory's (`n - 1` a
/// multiple of 16). `SHORT`: by [`exp_short16`] instead.
///
/// Caller guarantees: each `x[r]` points to `n.div_ceil(16) * 16` writable values, `n >= 1`.
/// Kept out of line: inlined into the attentions' strips (as LLVM chose once each group size
/// had one call site), the f32 attention measured 2% slower per head on Zen 4.
#[target_feature(enable = "avx512f")]
#[inline(never)]
unsafe fn exp_rows16<const R: usize, const SHORT: bool>(
    x: [*mut f32; R],
    n: usize,
    last_score: [Option<f32>; R],
    scale: f32,
) -> [f32; R] {
    let last = (n - 1) / 16 * 16;
    let live = lanes_or_all(n - last);
    let ninf = _mm512_set1_ps(f32::NEG_INFINITY);
    assert!(
        last_score.iter().all(Option::is_none) || last == n - 1,
        "exp_rows16: a last score needs n - 1 a multiple of 16"
    );
    let tail: [__m512; R] = std::array::from_fn(|r| match last_score[r] {
        Some(v) => _mm512_mask_mov_ps(ninf, 1, _mm512_set1_ps(v)),
        None => _mm512_mask_loadu_ps(ninf, live, x[r].add(last)),
    });
    let mut mx = tail;
    let mut j = 0;
    while j < last {
        for r in 0..R {
            mx[r] = _mm512_max_ps(mx[r], _mm512_loadu_ps(x[r].add(j)));
        }
        j += 16;
    }
    let sc = _mm512_set1_ps(scale);
    let exp = |x: __m512| {
        if SHORT {
            exp_short16(x)
        } else {
            exp_nonpos16(x)
        }
    };
    let shift: [__m512; R] =
        std::array::from_fn(|r| _mm512_set1_ps(-_mm512_reduce_max_ps(mx[r]) * scale));
    let mut sum: [__m512; R] = std::array::from_fn(|r| {
        let e = _mm512_maskz_mov_ps(live, exp(_mm512_fmadd_ps(tail[r], sc, shift[r])));
        _mm512_storeu_ps(x[r].add(last), e);
        e
    });
    let mut j = 0;
    while j < last {
        for r in 0..R {
            let p = x[r].add(j);
            let e = exp(_mm512_fmadd_ps(_mm512_loadu_ps(p), sc, shift[r]));
            _mm512_storeu_ps(p, e);
            sum[r] = _mm512_add_ps(sum[r], e);
        }
        j += 16;
    }
    std::array::from_fn(|r| 1.0 / _mm512_reduce_add_ps(sum[r]))
}

/// `x86::exp_nonpos8` on 16 lanes: e^x for lanes x <= 0 (inputs below -87 taken as -87;
/// NaN stays NaN), rounding to a power of 2 by adding 1.5 * 2^23 (+ the exponent bias), then
/// Cody-Waite reduction and the Taylor series to degree 7.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp_nonpos16(x: __m512) -> __m512 {
    use super::x86::{EXP_LN2, EXP_MAGIC, EXP_MAGIC_BASE, EXP_TAYLOR};
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // `vmaxps` returns its second operand when either is NaN.
    let x = _mm512_max_ps(_mm512_set1_ps(-87.0), x);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(EXP_MAGIC));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(EXP_MAGIC));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[0]), x);
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(EXP_LN2[1]), r);
    let mut p = _mm512_set1_ps(EXP_TAYLOR.0);
    for c in EXP_TAYLOR.1 {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0 / c));
    }
    let bits = _mm512_sub_epi32(
        _mm512_castps_si512(t),
        _mm512_castps_si512(_mm512_set1_ps(EXP_MAGIC_BASE)),
    );
    _mm512_mul_ps(p, _mm512_castsi512_ps(_mm512_slli_epi32::<23>(bits)))
}

/// e^x for lanes x <= 0 to a relative error of 2.9e-6 (in f32, over [-87, 0]), for the
/// bf16 and int16 attentions, whose weights are then rounded to bf16 (2^-9) or coded in 15
/// bits (a part in 32767 of the row's largest): [`exp_nonpos16`]'s clamp and rounding of
/// `x log2 e` to an integer `n`, one-constant reduction `r = x - n ln 2` (|n| <= 126, so its
/// error stays below 2e-7), a degree-4 polynomial fitted to e^r on |r| <= ln2/2 (least
/// squares on the relative error, Lawson reweighting; 2.6e-6 in exact arithmetic) and
/// `vscalefps` for the 2^n: nine instructions against fifteen.
#[target_feature(enable = "avx512f")]
#[inline]
fn exp_short16(x: __m512) -> __m512 {
    use super::x86::EXP_MAGIC;
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const C: [f32; 5] = [
        0.999_999_3,
        0.999_963_4,
        0.500_043_6,
        0.167_909_07,
        0.041_458_607,
    ];
    // `vmaxps` returns its second operand when either is NaN.
    let x = _mm512_max_ps(_mm512_set1_ps(-87.0), x);
    let t = _mm512_fmadd_ps(x, _mm512_set1_ps(LOG2E), _mm512_set1_ps(EXP_MAGIC));
    let n = _mm512_sub_ps(t, _mm512_set1_ps(EXP_MAGIC));
    let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(std::f32::consts::LN_2), x);
    let mut p = _mm512_set1_ps(C[4]);
    for c in C[..4].iter().rev() {
        p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(*c));
    }
    _mm512_scalef_ps(p, n)
}

/// Mask of the first `n` lanes, all 16 when `n >= 16`.
#[inline]
fn lanes_or_all(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        ((1u32 << n) - 1) as u16
    }
}

/// `sum a[i] b[i]` over `n` bf16 values (exact products, f32 sums).
///
/// Caller guarantees: `n` readable values at `a` and at `b`; AVX-512F/BW/VL.
#[target_feature(enable = "avx512f,avx512bw,avx512vl")]
#[inline]
unsafe fn dot_bf16(a: *const u16, b: *const u16, n: usize) -> f32 {
    let widen = |p: *const u16, m: u16| {
        let v = _mm256_maskz_loadu_epi16(m, p.cast());
        _mm512_castsi512_ps(_mm512_slli_epi32::<16>(_mm512_cvtepu16_epi32(v)))
    };
    let mut acc = _mm512_setzero_ps();
    let mut j = 0;
    while j < n {
        let m = lanes_or_all(n - j);
        acc = _mm512_fmadd_ps(widen(a.add(j), m), widen(b.add(j), m), acc);
        j += 16;
    }
    _mm512_reduce_add_ps(acc)
}

/// One strip ([`MRV`] rows of `k2` bf16 pairs at `a`) x `P` panels of `k2` x [`NR`] pairs:
/// the f32 sums of `vdpbf16ps`, stored (no bias, no activation) into `rows` rows of `cols`
/// values at stride `ldc`.
///
/// Caller guarantees: as stated; the CPU has AVX-512F/BW/BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
unsafe fn bf16_attention_tile<const P: usize>(
    k2: usize,
    a: *const u16,
    panels: [*const u32; P],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let acc = pair_sums(
        k2,
        a.cast(),
        panels.map(|p| p.cast::<i32>()),
        _mm512_setzero_ps(),
        |acc, av, bv| {
            // SAFETY: same-size plain-bits vector types (bf16 pairs as 32 x u16).
            let (av, bv) = unsafe {
                (
                    std::mem::transmute::<__m512i, __m512bh>(av),
                    std::mem::transmute::<__m512i, __m512bh>(bv),
                )
            };
            _mm512_dpbf16_ps(acc, av, bv)
        },
    );
    let masks = col_masks::<P>(cols);
    each_row(&acc, rows, |r, accr| {
        for h in 0..P {
            store16::<false>(c.add(r * ldc + h * NR), accr[h], masks[h]);
        }
    });
}

layer_norm_fn!(
    pub(super) layer_norm,
    layer_norm_row,
    "Row-wise LayerNorm (see [`Ops::layer_norm`]) on zmm registers, for the AVX-512 table \
     ([`super::x86::avx512_ops`], built after AVX-512F was confirmed): per row the mean and \
     the mean squared deviation (two passes, each on 4 accumulators, the tail masked in as \
     zeros), then `(x - mean) * rstd * gamma + beta` 16 values at a time."
);

/// One row of [`layer_norm`]. Caller guarantees: the CPU has AVX-512F; `g`, `b` and `out`
/// are as long as `x`.
#[target_feature(enable = "avx512f")]
unsafe fn layer_norm_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let dim = x.len();
    let n = dim as f32;
    let mean = _mm512_reduce_add_ps(fold16(x, |v, s| _mm512_add_ps(v, s))) / n;
    let mv = _mm512_set1_ps(mean);
    let (k, xp) = (dim, x.as_ptr());
    // The squared deviations, the tail's masked lanes set to the mean (deviation 0).
    let dev = |j: usize, m: u16| {
        let d = _mm512_sub_ps(_mm512_mask_loadu_ps(mv, m, xp.add(j)), mv);
        _mm512_mul_ps(d, d)
    };
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    while j + 64 <= k {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = _mm512_add_ps(*a, dev(j + 16 * i, u16::MAX));
        }
        j += 64;
    }
    while j + 16 <= k {
        acc[0] = _mm512_add_ps(acc[0], dev(j, u16::MAX));
        j += 16;
    }
    if j < k {
        acc[1] = _mm512_add_ps(acc[1], dev(j, lanes(k - j)));
    }
    let var = _mm512_reduce_add_ps(_mm512_add_ps(
        _mm512_add_ps(acc[0], acc[1]),
        _mm512_add_ps(acc[2], acc[3]),
    )) / n;
    let rv = _mm512_set1_ps(1.0 / (var + eps).sqrt());
    let (gp, bp, op) = (g.as_ptr(), b.as_ptr(), out.as_mut_ptr());
    let norm = |j: usize, m: u16| {
        let d = _mm512_mul_ps(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, xp.add(j)), mv), rv);
        let y = _mm512_fmadd_ps(
            d,
            _mm512_maskz_loadu_ps(m, gp.add(j)),
            _mm512_maskz_loadu_ps(m, bp.add(j)),
        );
        _mm512_mask_storeu_ps(op.add(j), m, y);
    };
    let mut j = 0;
    while j + 16 <= k {
        norm(j, u16::MAX);
        j += 16;
    }
    if j < k {
        norm(j, lanes(k - j));
    }
}

/// Mask of the first `n` (< 16) lanes.
#[inline]
fn lanes(n: usize) -> u16 {
    ((1u32 << n) - 1) as u16
}

/// `step(acc, v)` folded over `a` 16 values at a time on 4 accumulators (a single chain of
/// `vminps`/`vmaxps` waits on each one's latency: the row quantisers spent most of their
/// time there), the tail masked in as zeros; the accumulators start at 0 and are combined by
/// `step` too, so `step` must be a commutative, associative reduction to which 0 is neutral
/// for the result (min and max of a range that holds 0, max of |v|).
///
/// Caller guarantees: the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn fold16(a: &[f32], step: impl Fn(__m512, __m512) -> __m512) -> __m512 {
    let (k, p) = (a.len(), a.as_ptr());
    let mut acc = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    while j + 64 <= k {
        for (i, s) in acc.iter_mut().enumerate() {
            *s = step(_mm512_loadu_ps(p.add(j + 16 * i)), *s);
        }
        j += 64;
    }
    while j + 16 <= k {
        acc[0] = step(_mm512_loadu_ps(p.add(j)), acc[0]);
        j += 16;
    }
    if j < k {
        acc[1] = step(_mm512_maskz_loadu_ps(lanes(k - j), p.add(j)), acc[1]);
    }
    step(step(acc[0], acc[1]), step(acc[2], acc[3]))
}

/// [`super::quantize_row_u8`] on zmm registers for the AVX-512 and AMX int8 products: the
/// same minimum and maximum (NaN ignored: `vminps`/`vmaxps` return the second operand, the
/// running value, when the first is NaN), both in one pass over the row on 4 accumulators
/// each, the same [`super::Act8`], and per value `clamp(round(a * inv) + zp, 0, 255)` with
/// the rounding (to nearest even) done by the conversion to i32 and the rest in integers,
/// which is exact (|round(a * inv)| <= 255 < 2^24 for the values of the row, and a NaN
/// converts to `i32::MIN`, which stays far below 0; a row whose `inv` is not finite goes to
/// the reference): the same codes. The clamp is the
/// saturation of the packs that narrow 64 values at a time (`vpackssdw` to i16, then
/// `vpackuswb` to u8, `vpermd` back into order), 4 instructions where `vpmaxsd`, `vpminsd`
/// and `vpmovdb` took 12 (`vpmovdb` is two micro-ops on Zen 4). Writes `out[..a.len()]`;
/// returns the scale and the zero point.
///
/// Caller guarantees: the CPU has AVX-512F/BW; `out` holds at least `a.len()` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_u8(a: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (k, src, dst) = (a.len(), a.as_ptr(), out.as_mut_ptr());
    let mut lo = [_mm512_setzero_ps(); 4];
    let mut hi = [_mm512_setzero_ps(); 4];
    let mut j = 0;
    while j + 64 <= k {
        for i in 0..4 {
            let v = _mm512_loadu_ps(src.add(j + 16 * i));
            lo[i] = _mm512_min_ps(v, lo[i]);
            hi[i] = _mm512_max_ps(v, hi[i]);
        }
        j += 64;
    }
    while j < k {
        // Masked-off lanes load as 0, which the range holds anyway.
        let v = _mm512_maskz_loadu_ps(lanes((k - j).min(16)), src.add(j));
        lo[0] = _mm512_min_ps(v, lo[0]);
        hi[0] = _mm512_max_ps(v, hi[0]);
        j += 16;
    }
    let lo = _mm512_min_ps(_mm512_min_ps(lo[0], lo[1]), _mm512_min_ps(lo[2], lo[3]));
    let hi = _mm512_max_ps(_mm512_max_ps(hi[0], hi[1]), _mm512_max_ps(hi[2], hi[3]));
    let p = super::Act8::new(_mm512_reduce_min_ps(lo), _mm512_reduce_max_ps(hi));
    if !p.inv.is_finite() {
        // A range of subnormals: `255 / range` overflows, and the conversion would code
        // the infinite products as `i32::MIN`, not 255 (the reference's clamp).
        return super::quantize_row_u8(a, out);
    }
    let (iv, zp, top) = (
        _mm512_set1_ps(p.inv),
        _mm512_set1_epi32(p.zp as i32),
        _mm512_set1_epi32(super::ACT8_MAX),
    );
    let code = |v: __m512| {
        let r = _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(v, iv),
        );
        _mm512_add_epi32(r, zp)
    };
    // The packs interleave their operands per 128-bit lane: dword i of the result holds
    // codes 4i.. of vector (i % 4) of the four, so `vpermd` by this order restores them.
    let order = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
    let mut j = 0;
    while j + 64 <= k {
        let c: [__m512i; 4] = std::array::from_fn(|i| code(_mm512_loadu_ps(src.add(j + 16 * i))));
        let w = _mm512_packus_epi16(
            _mm512_packs_epi32(c[0], c[1]),
            _mm512_packs_epi32(c[2], c[3]),
        );
        _mm512_storeu_si512(dst.add(j).cast(), _mm512_permutexvar_epi32(order, w));
        j += 64;
    }
    while j < k {
        let m = lanes((k - j).min(16));
        let u = _mm512_min_epi32(
            _mm512_max_epi32(
                code(_mm512_maskz_loadu_ps(m, src.add(j))),
                _mm512_setzero_si512(),
            ),
            top,
        );
        _mm512_mask_cvtepi32_storeu_epi8(dst.add(j).cast(), m, u);
        j += 16;
    }
    (p.scale, p.zp as i32)
}

/// [`super::quantize_row`] with a stride of 2 on zmm registers, for the AVX-512 and AMX
/// tiers' 16-bit products, giving the reference's integers and scale in two passes over the
/// row. The first takes the largest |a| as the largest integer of the sign-cleared bit
/// patterns (4 accumulators): for non-negative floats the integer order is the numeric one,
/// and any NaN's pattern is above infinity's, so one `vpmaxud` per 16 values finds the
/// maximum and whether the row holds a NaN or an infinity (those rows, all-zero rows and
/// rows whose `limit / max` is not finite go to the reference). The second multiplies by
/// the same `inv`, rounds to nearest even by the conversion to i32 and packs pairs of
/// vectors to i16 (`vpackssdw`, then `vpermq` back into order). No clamp is needed: with
/// `|a| <= max`, `|a * inv| <= limit (1 + 2^-22)`, which rounds to at most `limit`, so the
/// reference's clamp to `±limit` never changes a value (measured on Zen 4: a third of the
/// int16 GEMM's non-product time went to the former clamp, NaN mask and `vpmovdw`).
/// `out` gets a zero after an odd count.
///
/// Caller guarantees: the CPU has AVX-512F/BW; `out` holds `a.len().div_ceil(2) * 2` values.
#[target_feature(enable = "avx512f,avx512bw")]
pub(super) unsafe fn quantize_row_i16(a: &[f32], limit: i32, out: &mut [i16]) -> f32 {
    let (k, src) = (a.len(), a.as_ptr());
    let abs = _mm512_set1_epi32(i32::MAX);
    let bits =
        |j: usize, m: u16| _mm512_and_si512(_mm512_maskz_loadu_epi32(m, src.add(j).cast()), abs);
    let mut acc = [_mm512_setzero_si512(); 4];
    let mut j = 0;
    while j + 64 <= k {
        for (i, s) in acc.iter_mut().enumerate() {
            *s = _mm512_max_epu32(bits(j + 16 * i, u16::MAX), *s);
        }
        j += 64;
    }
    while j + 16 <= k {
        acc[0] = _mm512_max_epu32(bits(j, u16::MAX), acc[0]);
        j += 16;
    }
    if j < k {
        acc[1] = _mm512_max_epu32(bits(j, lanes(k - j)), acc[1]);
    }
    let top = _mm512_max_epu32(
        _mm512_max_epu32(acc[0], acc[1]),
        _mm512_max_epu32(acc[2], acc[3]),
    );
    let amax = f32::from_bits(_mm512_reduce_max_epu32(top));
    let lim = limit as f32;
    let inv = lim / amax;
    if amax == 0.0 || !amax.is_finite() || !inv.is_finite() {
        return super::quantize_row(a, limit, out, 2);
    }
    codes_i16(src, k, inv, out);
    amax / lim
}

/// `out[j] = round(a[j] * inv)` (to nearest even) for the `k` values at `a`, saturated to
/// i16 (the callers' values stay within ±32767), then a zero after an odd count.
///
/// Caller guarantees: `k` readable values at `a`; `out` holds `k.div_ceil(2) * 2` values;
/// AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
unsafe fn codes_i16(src: *const f32, k: usize, inv: f32, out: &mut [i16]) {
    let dst = out.as_mut_ptr();
    let iv = _mm512_set1_ps(inv);
    let q = |v: __m512| {
        _mm512_cvt_roundps_epi32::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm512_mul_ps(v, iv),
        )
    };
    // `vpackssdw` interleaves its operands per 128-bit lane; this puts the 64-bit groups back.
    let order = _mm512_setr_epi64(0, 2, 4, 6, 1, 3, 5, 7);
    let mut j = 0;
    while j + 32 <= k {
        let (r0, r1) = (
            q(_mm512_loadu_ps(src.add(j))),
            q(_mm512_loadu_ps(src.add(j + 16))),
        );
        let w = _mm512_permutexvar_epi64(order, _mm512_packs_epi32(r0, r1));
        _mm512_storeu_si512(dst.add(j).cast(), w);
        j += 32;
    }
    while j < k {
        let m = lanes((k - j).min(16));
        _mm512_mask_cvtepi32_storeu_epi16(
            dst.add(j).cast(),
            m,
            q(_mm512_maskz_loadu_ps(m, src.add(j))),
        );
        j += 16;
    }
    if k % 2 == 1 {
        out[k] = 0;
    }
}

/// All bf16 panels of `b` over one rounded block of `rows` rows: two panels at a time, then
/// a last single one when their number is odd.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRV) * MRV` rows of `2*k2` values, `c`
/// points to `rows` writable rows of `b.n()` values at stride `ldc`, `b` is bf16, and the
/// CPU has AVX-512F/BW/BF16.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
unsafe fn block_bf16<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const u16,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k2 = b.k().div_ceil(2);
    each_tile(rows, b, |s, p, r, cols, two| {
        let (a, cs) = (ap.add(s * MRV * 2 * k2), c.add(s * MRV * ldc + p * NR));
        // SAFETY: strip `s` exists in `ap`; its rows are < rows and columns
        // p*NR .. p*NR + cols are < n, inside `c`; panel p (and p+1 when `two`) exist.
        if two {
            tile_bf16::<ACT, ACC, 2>(k2, a, b, p, cs, ldc, r, cols);
        } else {
            tile_bf16::<ACT, ACC, 1>(k2, a, b, p, cs, ldc, r, cols);
        }
    });
}

/// One rounded strip ([`MRV`] rows) x `P` bf16 panels (`P * 16` columns): `vdpbf16ps`
/// adds each pair's two exact products into 16 f32 lanes, then `acc + bias` and the
/// integer products' epilogue ([`act_int`]); columns past `cols` are masked off.
///
/// Caller guarantees: `a` points to [`MRV`] rows of `2*k2` values, `b` has bf16 panels
/// `p .. p + P`, and `c` to `rows` writable rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx512f,avx512bw,avx512bf16")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_bf16<const ACT: u8, const ACC: bool, const P: usize>(
    k2: usize,
    a: *const u16,
    b: &PackedB,
    p: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let panels = std::array::from_fn(|h| b.bf16_panel(p + h).as_ptr().cast::<i32>());
    let acc = pair_sums(k2, a.cast(), panels, _mm512_setzero_ps(), |acc, av, bv| {
        // SAFETY: same-size plain-bits vector types (bf16 pairs as 32 x u16).
        let (av, bv) = unsafe {
            (
                std::mem::transmute::<__m512i, __m512bh>(av),
                std::mem::transmute::<__m512i, __m512bh>(bv),
            )
        };
        _mm512_dpbf16_ps(acc, av, bv)
    });
    // GELU as the integer products' (error 1.5e-6 (1 + |x|), far below the bf16 rounding of
    // `fc2`'s input that follows; five multiply-adds fewer per 16 outputs than [`act`]'s).
    store_f32_tile::<ACC, P>(&acc, b, p, c, ldc, rows, cols, |v| act_int::<ACT>(v));
}

/// The k loop of the pair and quad products (VNNI on i16 pairs or u8 x i8 quads, and bf16):
/// for each pair (quad) of rows of `B`, the `P` panels' vectors of 16 column pairs (quads)
/// and each of the [`MRV`] rows' pair (quad) of `A` broadcast from memory, then
/// `acc[r][h] = madd(acc[r][h], row pair, panel h)`. Always inlined into its
/// `#[target_feature]` caller, whose features the closure has.
///
/// Caller guarantees: `a` points to [`MRV`] rows of `steps` 32-bit groups (`stride` apart)
/// and each `panels[h]` to `steps * NR` of them.
#[inline(always)]
unsafe fn pair_products<T: Copy, const P: usize>(
    steps: usize,
    stride: usize,
    a: *const i32,
    mut panels: [*const i32; P],
    acc: &mut [[T; P]; MRV],
    madd: impl Fn(T, __m512i, __m512i) -> T,
) {
    let mut ap = a;
    for _ in 0..steps {
        let bv: [__m512i; P] = std::array::from_fn(|h| {
            let v = _mm512_loadu_si512(panels[h] as *const __m512i);
            panels[h] = panels[h].add(NR);
            v
        });
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm512_set1_epi32(ap.add(r * stride).read_unaligned());
            for h in 0..P {
                accr[h] = madd(accr[h], av, bv[h]);
            }
        }
        ap = ap.add(1);
    }
}

/// [`pair_products`] from sums of zero (`zero`: the zero of `T`) over `k2` pairs (quads): the
/// first pair's products start the sums, so the accumulators begin as computed values.
/// Started from a constant array, LLVM kept them in memory and cleared them with a `memset`
/// call per tile (1.4% of an int16 pass on Zen 4; an opaque zero instead made it split the
/// int16 tile's loop and halved its speed).
///
/// Caller guarantees: as [`pair_products`]'s with `steps = stride = k2`.
#[inline(always)]
unsafe fn pair_sums<T: Copy, const P: usize>(
    k2: usize,
    a: *const i32,
    panels: [*const i32; P],
    zero: T,
    madd: impl Fn(T, __m512i, __m512i) -> T,
) -> [[T; P]; MRV] {
    let first = k2 > 0;
    let bv: [__m512i; P] = std::array::from_fn(|h| {
        if first {
            _mm512_loadu_si512(panels[h] as *const __m512i)
        } else {
            _mm512_setzero_si512()
        }
    });
    let mut acc: [[T; P]; MRV] = std::array::from_fn(|r| {
        let av = if first {
            _mm512_set1_epi32(a.add(r * k2).read_unaligned())
        } else {
            _mm512_setzero_si512()
        };
        std::array::from_fn(|h| madd(zero, av, bv[h]))
    });
    if first {
        let rest = panels.map(|p| p.add(NR));
        pair_products(k2 - 1, k2, a.add(1), rest, &mut acc, madd);
    }
    acc
}

/// The epilogue's activation on one tile row of a panel.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn act<const ACT: u8>(v: __m512) -> __m512 {
    if ACT == ACT_RELU {
        _mm512_max_ps(v, _mm512_setzero_ps())
    } else if ACT == ACT_GELU {
        gelu16(v)
    } else {
        v
    }
}

/// [`act`] for the integer products' epilogues: GELU as [`gelu16_int`].
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn act_int<const ACT: u8>(v: __m512) -> __m512 {
    if ACT == ACT_GELU {
        gelu16_int(v)
    } else {
        act::<ACT>(v)
    }
}

/// The AVX2 tier's integer-epilogue GELU (`x86::gelu8_int`: the lower-degree rational
/// erf [`super::GELU_INT_P`], same operations) on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
pub(super) fn gelu16_int(x: __m512) -> __m512 {
    gelu16_rational(x, &super::GELU_INT_P, &super::GELU_INT_Q)
}

/// The AVX2 tier's exact-erf GELU (`x86::gelu8`: same rational approximation, same
/// operations) on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
fn gelu16(x: __m512) -> __m512 {
    gelu16_rational(x, &super::GELU_P, &super::GELU_Q)
}

/// `x/2 (1 + erf(x/sqrt 2))` with `erf(x/sqrt 2) = xc P(xc^2) / Q(xc^2)` (`p` from the
/// `xc^0` coefficient, `q` from the `xc^2` one, Q's constant 1) as `x86::gelu8_rational`
/// computes it (`x (1/2 + xc (P/2) / Q)`), on 16 lanes.
#[target_feature(enable = "avx512f")]
#[inline]
fn gelu16_rational(x: __m512, p: &[f32], q: &[f32]) -> __m512 {
    let lim = 4.0 * std::f32::consts::SQRT_2;
    let xc = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-lim)), _mm512_set1_ps(lim));
    let u = _mm512_mul_ps(xc, xc);
    let (pl, ql) = (p.len() - 1, q.len() - 1);
    let mut pv = _mm512_set1_ps(0.5 * p[pl]);
    for c in p[..pl].iter().rev() {
        pv = _mm512_fmadd_ps(pv, u, _mm512_set1_ps(0.5 * *c));
    }
    let mut qv = _mm512_set1_ps(q[ql]);
    for c in q[..ql].iter().rev() {
        qv = _mm512_fmadd_ps(qv, u, _mm512_set1_ps(*c));
    }
    qv = _mm512_fmadd_ps(qv, u, _mm512_set1_ps(1.0));
    // Φ(x) = 1/2 + erf(x/sqrt 2)/2, the standard normal CDF.
    let phi = _mm512_fmadd_ps(xc, _mm512_div_ps(pv, qv), _mm512_set1_ps(0.5));
    _mm512_mul_ps(x, phi)
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Weights, EPIS};
    use super::super::{x86, AttentionScratch, Epilogue, Ops, PackedB};
    use proptest::prelude::*;
    use std::arch::x86_64::*;

    /// The AVX-512 table with the VNNI product, if this CPU has it (else the tests that
    /// need it say they skip, see [`check::available`]).
    fn vnni_ops() -> Option<Ops> {
        if !check::available("avx512vnni", super::vnni_gemm_int8().is_some()) {
            return None;
        }
        x86::avx512_ops()
    }

    #[test]
    fn f32_gemm_matches_scalar_on_odd_shapes() {
        let Some(ops) = x86::avx512_ops() else { return };
        check::gemm_odd_shapes(&ops, Weights::F32);
        check::gemm(
            &ops,
            300,
            40,
            1100,
            1100,
            40,
            Epilogue::RELU,
            5,
            Weights::F32,
        );
    }

    /// On the ViT shapes, every epilogue, f32 and integer weights: the same bits as the AVX2
    /// table (same FMAs in the same order; same integers and f32 epilogue).
    #[test]
    fn same_bits_as_avx2_on_model_shapes() {
        let (Some(ops), Some(avx2)) = (x86::avx512_ops(), x86::avx2_ops()) else {
            return;
        };
        check::same_bits_on_model_shapes(
            &ops,
            &avx2,
            &[Weights::F32, Weights::Int8, Weights::Int16],
        );
    }

    #[test]
    fn fma_probe_counts_flops() {
        let Some(ops) = x86::avx512_ops() else { return };
        let (sum, f) = ops.fma_probe(10);
        assert!(sum.is_finite());
        assert_eq!(f, 10 * super::PROBE_CHAINS as u64 * 16 * 2);
        assert_eq!(ops.fma_probe(0).1, 0);
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

    /// The AVX-512 table with the bf16 product, if this CPU has AVX-512 BF16.
    fn bf16_ops() -> Option<Ops> {
        super::bf16_gemm()?;
        x86::avx512_ops()
    }

    /// 32 values per instruction round as one at a time (the masked tail's `vcvtneps2bf16`):
    /// every length to 100, with NaN, infinities, subnormals and ties among the values.
    #[test]
    fn bf16_rows_round_as_single_values() {
        if bf16_ops().is_none() {
            return;
        }
        let special = [
            f32::NAN,
            f32::INFINITY,
            -f32::INFINITY,
            1e-40,
            -0.0,
            1.0 + 1.0 / 256.0,
        ];
        for k in 0..100usize {
            let a: Vec<f32> = (0..k)
                .map(|i| match i % 11 {
                    0..=5 => special[i % 11],
                    _ => (i as f32 * 0.377).sin() * 1e3,
                })
                .collect();
            let mut got = vec![7u16; k.div_ceil(2) * 2];
            // SAFETY: bf16_ops() confirmed AVX-512F/BW/VL/BF16; `got` has the room.
            unsafe { super::to_bf16_row(&a, &mut got) };
            for (i, v) in a.iter().enumerate() {
                let mut one = [7u16; 2];
                // SAFETY: as above.
                unsafe { super::to_bf16_row(std::slice::from_ref(v), &mut one) };
                assert_eq!(got[i], one[0], "k {k} value {i} ({v})");
            }
            if k % 2 == 1 {
                assert_eq!(got[k], 0);
            }
        }
    }

    #[test]
    fn gelu_int_accuracy() {
        if x86::avx512_ops().is_none() {
            return;
        }
        let worst = check::gelu_int(|xs| {
            let mut out = vec![0.0f32; xs.len()];
            for (x, o) in xs.chunks(16).zip(out.chunks_mut(16)) {
                let mut v = [0.0f32; 16];
                v[..x.len()].copy_from_slice(x);
                // SAFETY: AVX-512F confirmed just above; plain register arithmetic.
                let g = unsafe {
                    let mut r = [0.0f32; 16];
                    _mm512_storeu_ps(
                        r.as_mut_ptr(),
                        super::gelu16_int(_mm512_loadu_ps(v.as_ptr())),
                    );
                    r
                };
                o.copy_from_slice(&g[..x.len()]);
            }
            out
        });
        eprintln!("worst integer-epilogue gelu error / (1 + |x|) = {worst:e}");
    }

    #[test]
    fn bf16_attention_matches_reference() {
        if !check::available("avx512bf16", super::bf16_attention().is_some()) {
            return;
        }
        let Some(ops) = bf16_ops() else { return };
        assert!(ops.has_bf16_attention());
        check::attention_bf16_shapes(&ops);
    }

    #[test]
    fn int16_attention_matches_reference() {
        let Some(ops) = vnni_ops() else { return };
        assert!(ops.has_int16_attention());
        let worst = check::attention_int16_shapes(&ops);
        eprintln!("int16 attention: worst |out - exact| / max |v| = {worst:e}");
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn int16_attention_prop(t in 1usize..80, hd in 1usize..70, scale in 0.05f32..1.0, seed in 0u64..1000) {
            if let Some(ops) = vnni_ops() {
                check::attention_int16(&ops, t, hd, scale, seed, &mut AttentionScratch::default());
            }
        }
    }

    #[test]
    fn bf16_gemm_matches_scalar() {
        let Some(ops) = bf16_ops() else { return };
        check::gemm_odd_shapes(&ops, Weights::Bf16);
        // The ViT shapes, a single last panel, tails of 1..15 values in a row, and a long
        // reduction over several row blocks.
        for (m, n, k) in [
            (260, 576, 192),
            (260, 192, 768),
            (131, 208, 192),
            (25, 33, 31),
        ] {
            for epi in EPIS {
                check::gemm(
                    &ops,
                    m,
                    n,
                    k,
                    k + 1,
                    n + 3,
                    epi,
                    (m + n + k) as u64,
                    Weights::Bf16,
                );
            }
        }
        check::gemm(
            &ops,
            300,
            40,
            3216,
            3216,
            40,
            Epilogue::RELU,
            7,
            Weights::Bf16,
        );
    }

    /// Exactly representable products: `vdpbf16ps` gives the exact sums, as the emulation.
    #[test]
    fn bf16_gemm_exact_on_small_integers() {
        let Some(ops) = bf16_ops() else { return };
        let (m, n, k) = (29, 35, 77);
        let a: Vec<f32> = (0..m * k).map(|i| ((i * 7) % 17) as f32 - 8.0).collect();
        let w: Vec<f32> = (0..n * k).map(|i| ((i * 5) % 13) as f32 - 6.0).collect();
        let mut b = PackedB::pack_nk(&w, n, k, k, None);
        b.round_bf16();
        let (mut want, mut got) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        super::super::scalar::ops().gemm(m, &a, k, &b, &mut want, n, Epilogue::PLAIN);
        ops.gemm(m, &a, k, &b, &mut got, n, Epilogue::PLAIN);
        assert_eq!(got, want);
    }

    #[test]
    fn vnni_gemm_worst_case_sums() {
        let Some(ops) = vnni_ops() else { return };
        check::int_worst_case_sums(&ops);
    }

    #[test]
    fn attention_matches_definition() {
        let Some(ops) = x86::avx512_ops() else { return };
        check::attention_shapes(&ops);
    }

    #[test]
    fn layer_norm_matches_scalar_on_odd_shapes() {
        let Some(ops) = x86::avx512_ops() else { return };
        for dim in [1usize, 7, 15, 16, 17, 64, 192, 197, 768] {
            check::layer_norm(&ops, 3, dim, dim as u64);
        }
    }

    /// Whether this CPU has AVX-512F/BW (the row quantisers' instructions).
    fn has_avx512bw() -> bool {
        check::available(
            "avx512bw",
            is_x86_feature_detected!("avx512f") && is_x86_feature_detected!("avx512bw"),
        )
    }

    /// Both zmm row quantisers against the scalar reference on `a`: the same codes,
    /// integers, scales and zero points (NaN scales both NaN), nothing written past the row.
    fn quantisers_match(a: &[f32], limit: i32) {
        let len = a.len();
        let (mut want, mut got) = (vec![5u8; len + 3], vec![5u8; len + 3]);
        let w = super::super::quantize_row_u8(a, &mut want);
        // SAFETY: AVX-512F/BW confirmed by the caller; `got` holds `len` values.
        let g = unsafe { super::quantize_row_u8(a, &mut got) };
        assert_eq!(want, got, "u8 codes, len {len}");
        assert!(w.1 == g.1 && (w.0 == g.0 || (w.0.is_nan() && g.0.is_nan())));
        let n = len.div_ceil(2) * 2;
        let (mut want, mut got) = (vec![7i16; n + 2], vec![7i16; n + 2]);
        let w = super::super::quantize_row(a, limit, &mut want, 2);
        // SAFETY: as above; `got` holds `len.div_ceil(2) * 2` values.
        let g = unsafe { super::quantize_row_i16(a, limit, &mut got) };
        assert_eq!(want, got, "i16 integers, len {len}, limit {limit}");
        assert!(
            w == g || (w.is_nan() && g.is_nan()),
            "scale {w} against {g}"
        );
    }

    #[test]
    fn row_quantisers_match_scalar() {
        if !has_avx512bw() {
            return;
        }
        for len in 0..200usize {
            for kind in 0..check::SPECIAL_ROWS {
                let a = check::special_row(len, kind);
                quantisers_match(&a, [32767, 7000, 2300, 1][(len + kind as usize) % 4]);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        #[test]
        fn attention_prop(t in 1usize..80, hd in 1usize..70, scale in 0.05f32..1.0, seed in 0u64..1000) {
            if let Some(ops) = x86::avx512_ops() {
                check::attention(&ops, t, hd, scale, seed, &mut AttentionScratch::default());
            }
        }

        #[test]
        fn layer_norm_prop(rows in 1usize..5, dim in 1usize..300, seed in 0u64..1000) {
            if let Some(ops) = x86::avx512_ops() {
                check::layer_norm(&ops, rows, dim, seed);
            }
        }

        #[test]
        fn row_quantisers_prop(
            a in proptest::collection::vec(
                prop_oneof![
                    8 => -1e3f32..1e3,
                    1 => Just(0.0f32),
                    1 => Just(-0.0f32),
                    1 => Just(f32::NAN),
                    1 => -1e-30f32..1e-30,
                ],
                0..300,
            ),
            limit in 1i32..=32767,
        ) {
            if has_avx512bw() {
                quantisers_match(&a, limit);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn f32_gemm_prop(m in 0usize..40, n in 0usize..70, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000) {
            if let Some(ops) = x86::avx512_ops() {
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, Weights::F32);
            }
        }

        #[test]
        fn bf16_gemm_prop(m in 0usize..40, n in 0usize..70, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000) {
            if let Some(ops) = bf16_ops() {
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, Weights::Bf16);
            }
        }

        #[test]
        fn bf16_attention_prop(t in 1usize..80, hd in 1usize..70, scale in 0.05f32..1.0, seed in 0u64..1000) {
            if let Some(ops) = bf16_ops() {
                check::attention_bf16(&ops, t, hd, scale, seed, &mut AttentionScratch::default());
            }
        }

        #[test]
        fn vnni_gemm_prop(m in 0usize..40, n in 0usize..70, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000, wide in proptest::bool::ANY) {
            if let Some(ops) = vnni_ops() {
                let w = if wide { Weights::Int16 } else { Weights::Int8 };
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, w);
            }
        }
    }
}
