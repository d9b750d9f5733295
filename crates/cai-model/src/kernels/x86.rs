//! x86-64 kernels: AVX2 + FMA.
//!
//! GEMM: a 6x16 register tile (12 accumulators). `A` is taken a block of rows at a time
//! (about 96 KiB, kept in L2) and read in strips of 6 rows where it lies (a last, partial
//! strip is packed with zero rows), while every 64-byte aligned [`PackedB`] panel (in L1)
//! passes over the block. Bias, activation and residual accumulation are applied to the
//! tile in registers before it is stored (monomorphised per epilogue).
//!
//! The integer product: the same loop over quantised rows of `A` (pairs of i16, see
//! `quantized_blocks`) with a 6x16 tile of i32 sums by `vpmaddwd` + `vpaddd`, or by AVX-VNNI's
//! `vpdpwssd` on CPUs that have it (Intel Alder Lake and later client cores): one instruction
//! instead of two, the same integers.
//!
//! Attention: fused per head and strip of 6 queries on the same tile (`attention_avx2`):
//! the strip's scores, their exponentials and its output run back to back in L1.
//!
//! Transcendentals: `exp` (softmax) by Cody-Waite range reduction with a degree-7
//! polynomial (relative error about 2e-7); the exact GELU through a rational approximation of
//! erf fitted for this crate (`examples/fit_erf.rs`; GELU error below 2e-7 (1 + |x|)).
//!
//! Tables are built only after `is_x86_feature_detected!` confirmed the features, which is
//! what makes the `unsafe` calls into `#[target_feature]` functions sound.

use std::arch::x86_64::*;
use std::cell::Cell;

use super::{
    cls_key_apart, quantize_row, quantize_row_int8_pairs, Act8, AttentionScratch, Epilogue,
    HeadQkv, Ops, PackedB, Tier, ACT_GELU, ACT_RELU, NR,
};

/// Rows of the register tile.
const MR: usize = 6;
/// Target size (f32 values) of the block of `A` rows kept hot while panels pass over it.
const A_BLOCK: usize = 24 * 1024;
/// Fewest rows per block: with a long reduction (the 3216-wide head) it is cheaper to stream
/// a larger `A` block from L3 than to re-read all of `B` (megabytes) for every few rows.
const MIN_BLOCK_ROWS: usize = 66;

/// The AVX2+FMA table, if this CPU has both.
pub fn avx2_ops() -> Option<Ops> {
    if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
        Some(Ops {
            tier: Tier::Avx2,
            gemm: gemm_avx2,
            gemm_int8: if is_x86_feature_detected!("avxvnni") {
                gemm_int8_avx2::<true>
            } else {
                gemm_int8_avx2::<false>
            },
            gemm_bf16: None,
            layer_norm: layer_norm_avx2,
            softmax: softmax_avx2,
            attention: attention_avx2,
            attention_bf16: None,
            attention_int16: None,
            fma_probe: fma_probe_avx2,
        })
    } else {
        None
    }
}

/// The AVX-512 table, if this CPU has AVX-512F (and AVX2+FMA): the f32 product and the
/// FMA probe on 512-bit registers, the integer product on AVX-512 VNNI and the bf16 one on
/// AVX-512 BF16 when the CPU has them ([`super::avx512`]), LayerNorm and attention on zmm
/// registers too; softmax is the AVX2 kernel.
pub fn avx512_ops() -> Option<Ops> {
    let (gemm, fma_probe) = super::avx512::f32_kernels()?;
    avx2_ops().map(|o| Ops {
        tier: Tier::Avx512,
        gemm,
        gemm_int8: super::avx512::vnni_gemm_int8().unwrap_or(o.gemm_int8),
        gemm_bf16: super::avx512::bf16_gemm(),
        attention: super::avx512::attention,
        attention_bf16: super::avx512::bf16_attention(),
        attention_int16: super::avx512::int16_attention(),
        layer_norm: super::avx512::layer_norm,
        fma_probe,
        ..o
    })
}

/// The AMX table, if this CPU has the AVX-512 tier and AMX-INT8 or AMX-BF16 that Linux
/// lets this process use ([`super::amx`]): the `avx512` table with the int8 product on
/// `tdpbusd` and the bf16 one on `tdpbf16ps` tiles (int16 stays on AVX-512 VNNI).
pub fn amx_ops() -> Option<Ops> {
    let o = avx512_ops()?;
    let (int8, bf16) = (super::amx::int8_gemm(), super::amx::bf16_gemm());
    if int8.is_none() && bf16.is_none() {
        return None;
    }
    Some(Ops {
        tier: Tier::Amx,
        gemm_int8: int8.unwrap_or(o.gemm_int8),
        gemm_bf16: bf16.or(o.gemm_bf16),
        ..o
    })
}

thread_local! {
    /// Per-thread buffer for packed blocks of `A` (grows to the largest block, then reused).
    static APACK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
}

thread_local! {
    /// Per-thread buffers for quantised blocks of `A` and their row scales.
    static QPACK: Cell<(Vec<i16>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
}

/// Rows of the int8 register tile: 6 x 2 i32 accumulators, 2 weight registers, the
/// broadcast row pair and one product fill the 16 ymm registers (with the k loop unrolled
/// by 2 the compiler spilled; one step per iteration it does not). Measured by interleaved
/// A/B on the int16 ViT blocks: 7% faster than 4 rows (per k step, 6 loads for 8
/// products there; 8 loads for 12 here).
const MRQ: usize = 6;
/// Target size (i16 values) of a quantised block of `A`.
const A_BLOCK_Q: usize = 48 * 1024;

/// No activation, like `ACT_NONE`, for attention's tiles: a separate instantiation of
/// [`tile`], so the GEMM's stays inlined in [`block`] (one shared by both was compiled out
/// of line and called per tile).
const ACT_NONE_ATTN: u8 = 3;

fn gemm_avx2(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k();
    let mc = ((A_BLOCK / k.max(1)) / MR * MR).max(MIN_BLOCK_ROWS);
    // Whole strips of MR rows are read where they lie (measured as fast as packing them:
    // the rows of a block are contiguous and stay in L2); only a last, partial strip is
    // packed, with zero rows.
    let full = m / MR * MR;
    let mut m0 = 0;
    while m0 < full {
        let rows = mc.min(full - m0);
        // SAFETY: rows m0 .. m0 + rows (a multiple of MR) of `a` hold `k` values each at
        // stride `lda` (checked by `Ops::gemm`), and of `c` `b.n()` values at stride `ldc`;
        // reachable only through `avx2_ops` (AVX2 and FMA confirmed).
        unsafe {
            let (ap, cp) = (a.as_ptr().add(m0 * lda), c.as_mut_ptr().add(m0 * ldc));
            dispatch::<true>(epi, rows, ap, lda, b, cp, ldc);
        }
        m0 += rows;
    }
    if m0 == m {
        return;
    }
    let mut buf = APACK.take();
    let need = mc.min((m - m0).div_ceil(MR) * MR) * k + PACK_SLACK;
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    while m0 < m {
        let rows = mc.min(m - m0);
        pack_a(&a[m0 * lda..], lda, rows, k, &mut buf);
        // SAFETY: `buf` holds rows.div_ceil(MR) packed strips of k*MR values; `Ops::gemm`
        // checked that `c` holds `m` rows of `b.n()` values at stride `ldc`; reachable only
        // through `avx2_ops` (AVX2 and FMA confirmed).
        unsafe {
            let cp = c.as_mut_ptr().add(m0 * ldc);
            dispatch::<false>(epi, rows, buf.as_ptr(), 0, b, cp, ldc);
        }
        m0 += rows;
    }
    APACK.set(buf);
}

/// [`block`] monomorphised for `epi`.
///
/// Caller guarantees what [`block`] needs.
#[target_feature(enable = "avx2,fma")]
unsafe fn dispatch<const DIRECT: bool>(
    epi: Epilogue,
    rows: usize,
    ap: *const f32,
    lda: usize,
    b: &PackedB,
    cp: *mut f32,
    ldc: usize,
) {
    per_epilogue!(epi, block, [DIRECT], (rows, ap, lda, b, cp, ldc))
}

/// Packs `rows` rows of `k` values (stride `lda`) into strips of [`MR`] interleaved rows:
/// strip `s` holds, for each `kk`, the values of rows `s*MR .. s*MR+MR` (zero past `rows`).
/// `out` needs `rows.div_ceil(MR) * k * MR + PACK_SLACK` values.
fn pack_a(a: &[f32], lda: usize, rows: usize, k: usize, out: &mut [f32]) {
    for s in 0..rows.div_ceil(MR) {
        let full = s * MR + MR <= rows;
        if full && k >= 8 {
            let src = &a[s * MR * lda..];
            let dst = &mut out[s * k * MR..];
            assert!(src.len() >= (MR - 1) * lda + k && dst.len() >= k * MR + PACK_SLACK);
            // SAFETY: AVX2 is present (only reachable through `avx2_ops`); the assert above
            // bounds every read (MR rows of k values at stride lda) and write (k*MR values
            // plus the slack the last 8-wide store may touch).
            unsafe { pack_strip(src.as_ptr(), lda, k, dst.as_mut_ptr()) };
            continue;
        }
        let dst = &mut out[s * k * MR..(s + 1) * k * MR];
        for r in 0..MR {
            let i = s * MR + r;
            if i < rows {
                let src = &a[i * lda..i * lda + k];
                for (d, v) in dst.chunks_exact_mut(MR).zip(src) {
                    d[r] = *v;
                }
            } else {
                for d in dst.chunks_exact_mut(MR) {
                    d[r] = 0.0;
                }
            }
        }
    }
}

/// Values the 8-wide stores of [`pack_strip`] may write past a strip.
const PACK_SLACK: usize = 8;

/// One full strip: 6 rows, 8 columns at a time through an 8x8 register transpose; each
/// column of 6 values is stored with an 8-wide store whose last 2 lanes the next store (or
/// the scalar tail, or the next strip) overwrites.
///
/// Caller guarantees: `a` has MR rows of `k` values at stride `lda`; `dst` has room for
/// `k*MR + PACK_SLACK` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_strip(a: *const f32, lda: usize, k: usize, dst: *mut f32) {
    let mut kk = 0;
    while kk + 8 <= k {
        let r0 = _mm256_loadu_ps(a.add(kk));
        let r1 = _mm256_loadu_ps(a.add(lda + kk));
        let r2 = _mm256_loadu_ps(a.add(2 * lda + kk));
        let r3 = _mm256_loadu_ps(a.add(3 * lda + kk));
        let r4 = _mm256_loadu_ps(a.add(4 * lda + kk));
        let r5 = _mm256_loadu_ps(a.add(5 * lda + kk));
        let z = _mm256_setzero_ps();
        let cols = transpose8([r0, r1, r2, r3, r4, r5, z, z]);
        for (j, col) in cols.iter().enumerate() {
            _mm256_storeu_ps(dst.add((kk + j) * MR), *col);
        }
        kk += 8;
    }
    while kk < k {
        for r in 0..MR {
            *dst.add(kk * MR + r) = *a.add(r * lda + kk);
        }
        kk += 1;
    }
}

/// Packs one full panel of [`NR`] columns for [`PackedB::repack_nk`]: `panel[kk*NR + j] =
/// w[j*ld + kk]` for `j < NR`, `kk < k`, by 8x8 register transposes (the scalar loop writes
/// with a stride of `NR`; attention repacks its keys this way per galaxy and head). Returns
/// false, packing nothing, when the CPU lacks AVX2 or the tier in use is not an x86 one.
pub(super) fn pack_panel_nk(w: &[f32], ld: usize, k: usize, panel: &mut [f32]) -> bool {
    if !matches!(super::ops().tier, Tier::Avx2 | Tier::Avx512) || k < 8 {
        return false;
    }
    assert!(w.len() >= (NR - 1) * ld + k && ld >= k && panel.len() >= k * NR);
    // SAFETY: the AVX2 tier is only selected after AVX2 and FMA were detected; the assert
    // bounds the reads (NR rows of k values at stride ld) and the writes (k rows of NR).
    unsafe { pack_panel_nk_avx2(w.as_ptr(), ld, k, panel.as_mut_ptr()) };
    true
}

/// See [`pack_panel_nk`]; caller guarantees AVX2, `NR` rows of `k >= 8` readable values at
/// stride `ld` from `w` and `k * NR` writable values at `dst`.
#[target_feature(enable = "avx2,fma")]
unsafe fn pack_panel_nk_avx2(w: *const f32, ld: usize, k: usize, dst: *mut f32) {
    // Blocks of 8 kk; the last block overlaps the previous one when k % 8 != 0 (it rewrites
    // the same values).
    let mut kk = 0;
    loop {
        let k0 = kk.min(k - 8);
        for half in 0..2 {
            let src = w.add(half * 8 * ld + k0);
            let rows: [__m256; 8] = std::array::from_fn(|r| _mm256_loadu_ps(src.add(r * ld)));
            let cols = transpose8(rows);
            for (j, col) in cols.iter().enumerate() {
                _mm256_storeu_ps(dst.add((k0 + j) * NR + half * 8), *col);
            }
        }
        if k0 + 8 >= k {
            break;
        }
        kk += 8;
    }
}

/// The transpose of the 8x8 matrix whose rows are `r`.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
    let t0 = _mm256_unpacklo_ps(r[0], r[1]);
    let t1 = _mm256_unpackhi_ps(r[0], r[1]);
    let t2 = _mm256_unpacklo_ps(r[2], r[3]);
    let t3 = _mm256_unpackhi_ps(r[2], r[3]);
    let t4 = _mm256_unpacklo_ps(r[4], r[5]);
    let t5 = _mm256_unpackhi_ps(r[4], r[5]);
    let t6 = _mm256_unpacklo_ps(r[6], r[7]);
    let t7 = _mm256_unpackhi_ps(r[6], r[7]);
    let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
    let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
    let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
    let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
    let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
    let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
    let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
    let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
    [
        _mm256_permute2f128_ps::<0x20>(u0, u4),
        _mm256_permute2f128_ps::<0x20>(u1, u5),
        _mm256_permute2f128_ps::<0x20>(u2, u6),
        _mm256_permute2f128_ps::<0x20>(u3, u7),
        _mm256_permute2f128_ps::<0x31>(u0, u4),
        _mm256_permute2f128_ps::<0x31>(u1, u5),
        _mm256_permute2f128_ps::<0x31>(u2, u6),
        _mm256_permute2f128_ps::<0x31>(u3, u7),
    ]
}

/// All panels of `b` over one block of `rows` rows of `A`: packed strips (`DIRECT` false)
/// or, with `DIRECT`, rows read where they lie at stride `lda` (`rows` a multiple of MR).
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MR)` strips of `k*MR` values (or `rows`
/// rows of `k` values at stride `lda`) and `c` points to `rows` writable rows of `b.n()`
/// values at stride `ldc`.
#[target_feature(enable = "avx2,fma")]
unsafe fn block<const ACT: u8, const ACC: bool, const DIRECT: bool>(
    rows: usize,
    ap: *const f32,
    lda: usize,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let (k, n) = (b.k(), b.n());
    let strip = if DIRECT { MR * lda } else { k * MR };
    for p in 0..b.panels() {
        let bp = b.panel(p).as_ptr();
        let bias = b.panel_bias(p).as_ptr();
        let cols = NR.min(n - p * NR);
        let mut s = 0;
        while s * MR < rows {
            let r = MR.min(rows - s * MR);
            // SAFETY: strip `s` exists in `ap`; its rows s*MR .. s*MR + r are < rows and
            // columns p*NR .. p*NR + cols are < n, inside `c`.
            tile::<ACT, ACC, DIRECT>(
                k,
                ap.add(s * strip),
                lda,
                bp,
                bias,
                c.add(s * MR * ldc + p * NR),
                ldc,
                r,
                cols,
            );
            s += 1;
        }
    }
}

/// One strip (MR rows) x one panel (16 columns):
/// `C[r][0..cols] (=|+=) act(sum_k A[r][k] B[k][..] + bias)` for `r < rows`. `A` is a
/// packed strip, or with `DIRECT` MR rows at stride `lda`.
///
/// Caller guarantees: `a` points to `k*MR` values (with `DIRECT`, MR rows of `k` values
/// at stride `lda`), `b` to `k*NR` values, `bias` to `NR` values and `c` to `rows`
/// writable rows of `cols` values at stride `ldc`.
#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const ACT: u8, const ACC: bool, const DIRECT: bool>(
    k: usize,
    a: *const f32,
    lda: usize,
    b: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[_mm256_setzero_ps(); 2]; MR];
    let (mut ap, mut bp) = (a, b);
    // One rank-1 update of the tile from `ap` (MR values) and `bp` (NR values).
    macro_rules! step {
        ($ap:expr, $bp:expr) => {{
            let b0 = _mm256_loadu_ps($bp);
            let b1 = _mm256_loadu_ps($bp.add(8));
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*$ap.add(if DIRECT { r * lda } else { r }));
                accr[0] = _mm256_fmadd_ps(av, b0, accr[0]);
                accr[1] = _mm256_fmadd_ps(av, b1, accr[1]);
            }
        }};
    }
    // Unrolled by 4 (the same order of operations as one step at a time, so results do
    // not change): fewer loop branches and pointer updates per FMA.
    // Distance between consecutive k of one row of `A`.
    let ks = if DIRECT { 1 } else { MR };
    let mut kk = 0;
    while kk + 4 <= k {
        step!(ap, bp);
        step!(ap.add(ks), bp.add(NR));
        step!(ap.add(2 * ks), bp.add(2 * NR));
        step!(ap.add(3 * ks), bp.add(3 * NR));
        ap = ap.add(4 * ks);
        bp = bp.add(4 * NR);
        kk += 4;
    }
    while kk < k {
        step!(ap, bp);
        ap = ap.add(ks);
        bp = bp.add(NR);
        kk += 1;
    }
    let bias0 = _mm256_loadu_ps(bias);
    let bias1 = _mm256_loadu_ps(bias.add(8));
    if rows == MR && cols == NR {
        // A full tile (nearly all of them): each row spelled out so the accumulators stay
        // in registers (a loop with a run-time bound made the compiler spill all 12 to
        // the stack and read them back).
        macro_rules! row {
            ($r:literal) => {{
                let (v0, v1) = act::<ACT>(
                    _mm256_add_ps(acc[$r][0], bias0),
                    _mm256_add_ps(acc[$r][1], bias1),
                );
                store_row::<ACC>(c.add($r * ldc), v0, v1, NR);
            }};
        }
        row!(0);
        row!(1);
        row!(2);
        row!(3);
        row!(4);
        row!(5);
        return;
    }
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let (v0, v1) = act::<ACT>(_mm256_add_ps(accr[0], bias0), _mm256_add_ps(accr[1], bias1));
        store_row::<ACC>(c.add(r * ldc), v0, v1, cols);
    }
}

/// The epilogue's activation on the two halves of a tile row.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn act<const ACT: u8>(v0: __m256, v1: __m256) -> (__m256, __m256) {
    if ACT == ACT_RELU {
        (
            _mm256_max_ps(v0, _mm256_setzero_ps()),
            _mm256_max_ps(v1, _mm256_setzero_ps()),
        )
    } else if ACT == ACT_GELU {
        (gelu8(v0), gelu8(v1))
    } else {
        (v0, v1)
    }
}

/// [`act`] for the integer products' epilogues: GELU as [`gelu8_int`].
#[target_feature(enable = "avx2,fma")]
#[inline]
fn act_int<const ACT: u8>(v0: __m256, v1: __m256) -> (__m256, __m256) {
    if ACT == ACT_GELU {
        (gelu8_int(v0), gelu8_int(v1))
    } else {
        act::<ACT>(v0, v1)
    }
}

/// One head's attention (see [`Ops::attention`]), fused per strip of [`MR`] queries: the
/// strip's scores against every key (6x16 tiles over the packed `Kᵀ`; with 65 tokens the
/// cls key's column as dot products, stored last), their exponentials, the strip's output
/// from the unnormalised weights (6x16 tiles over `V`, packed in the same key order), then
/// each output row scaled by 1 / its sum. A strip's scores (6 x 80 values) stay in L1 and
/// their rows are padded to whole vectors, so the softmax needs no masked loads or stores
/// (slow on AMD cores) and no pass to normalise them. Hand-written: no crate fuses these at
/// this size (65 tokens x 32 per head).
fn attention_avx2(
    _ops: &Ops,
    h: &HeadQkv<'_>,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    ws: &mut AttentionScratch,
) {
    let (k0, ls, off) = prepare_strips(h, ws, MR);
    // SAFETY: `Ops::attention` checked that q, k and v hold t rows of hd values at stride
    // ld and `out` t rows of hd at stride ldo; `ws.s[off..]` holds MR rows of `ls` values
    // and `ws.q` MR rows of hd; the packed panels hold hd (keys) and t (values) rows of
    // NR; reachable only through `avx2_ops` (AVX2 and FMA confirmed).
    unsafe {
        let sp = ws.s.as_mut_ptr().add(off);
        let strips = Strips {
            kp: &ws.kp,
            vp: &ws.vp,
            qpad: ws.q.as_ptr(),
            sp,
            ls,
        };
        strips.run(h, k0 == 1, scale, out.as_mut_ptr(), ldo);
    }
}

/// The setup of a fused attention kernel with strips of `mr` queries (this tier's and
/// the `avx512` one's): packs `Kᵀ` (without the cls key when [`cls_key_apart`]) and `V` in
/// the same key order, sizes the scores to `mr` rows of `ls` values (a multiple of 16 holding
/// t rounded up to 8 and every panel of keys) from `off`, the first at a 64-byte boundary so
/// the tiles' stores are aligned, and copies the last, partial strip of queries into `ws.q`
/// padded with zero rows to `mr`. Returns the number of keys put apart (0 or 1), `ls` and
/// `off`.
pub(super) fn prepare_strips(
    h: &HeadQkv<'_>,
    ws: &mut AttentionScratch,
    mr: usize,
) -> (usize, usize, usize) {
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let k0 = usize::from(cls_key_apart(t));
    ws.kp.repack_nk(&h.k[k0 * ld..], t - k0, hd, ld, None);
    ws.vp.repack_kn_rotated(h.v, t, hd, ld, k0, None);
    let (ls, off) = score_strip(ws, t, ws.kp.panels(), mr);
    if ws.q.len() < mr * hd {
        ws.q.resize(mr * hd, 0.0);
    }
    let full = t / mr * mr;
    if full < t {
        let (rows, pad) = ws.q[..mr * hd].split_at_mut((t - full) * hd);
        for (i, row) in rows.chunks_exact_mut(hd).enumerate() {
            row.copy_from_slice(&h.q[(full + i) * ld..][..hd]);
        }
        pad.fill(0.0);
    }
    (k0, ls, off)
}

/// A fused kernel's strip of `mr` rows of scores for `t` tokens whose keys fill `kpanels`
/// panels of [`NR`]: the row stride `ls` (at least `t` rounded up to 8 and the panels'
/// columns, a multiple of [`NR`]) and the offset in `ws.s` of its first, 64-byte aligned
/// value; `ws.s` grows to hold them.
pub(super) fn score_strip(
    ws: &mut AttentionScratch,
    t: usize,
    kpanels: usize,
    mr: usize,
) -> (usize, usize) {
    let ls = (t.div_ceil(8) * 8).max(kpanels * NR).div_ceil(NR) * NR;
    let need = mr * ls + NR;
    if ws.s.len() < need {
        ws.s.resize(need, 0.0);
    }
    (ls, ((64 - ws.s.as_ptr() as usize % 64) % 64) / 4)
}

/// The exponentials of a strip's `rows` rows of scores (`ls` apart from `sp`, `t` each),
/// two rows at a time ([`exp_rows_padded`]), with the cls key's score of row `r` from
/// `cls(r)` when it was put apart; returns 1 / each row's sum (the first `rows` of `M`).
///
/// Caller guarantees: as [`exp_rows_padded`] for each row; `rows <= M`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn strip_exponentials<const M: usize>(
    sp: *mut f32,
    ls: usize,
    rows: usize,
    t: usize,
    scale: f32,
    cls: impl Fn(usize) -> Option<f32>,
) -> [f32; M] {
    let mut inv = [0.0f32; M];
    let mut r = 0;
    while r + 2 <= rows {
        let pair = [sp.add(r * ls), sp.add((r + 1) * ls)];
        let iv = exp_rows_padded::<2>(pair, t, [cls(r), cls(r + 1)], scale);
        inv[r..r + 2].copy_from_slice(&iv);
        r += 2;
    }
    if r < rows {
        inv[r] = exp_rows_padded::<1>([sp.add(r * ls)], t, [cls(r)], scale)[0];
    }
    inv
}

/// The buffers [`attention_avx2`] hands to its strips.
struct Strips<'a> {
    kp: &'a PackedB,
    vp: &'a PackedB,
    /// The last, partial strip of queries padded with zero rows (MR rows of hd).
    qpad: *const f32,
    /// Scores: MR rows of `ls` values.
    sp: *mut f32,
    ls: usize,
}

impl Strips<'_> {
    /// Caller guarantees as stated in [`attention_avx2`].
    #[target_feature(enable = "avx2,fma")]
    unsafe fn run(&self, h: &HeadQkv<'_>, cls_last: bool, scale: f32, out: *mut f32, ldo: usize) {
        let (t, hd, ld, ls, sp) = (h.t, h.hd, h.ld, self.ls, self.sp);
        let nk = t - usize::from(cls_last);
        let mut i0 = 0;
        while i0 < t {
            let rows = MR.min(t - i0);
            let (qa, lda) = if rows == MR {
                (h.q.as_ptr().add(i0 * ld), ld)
            } else {
                (self.qpad, hd)
            };
            for p in 0..self.kp.panels() {
                let cols = NR.min(nk - p * NR);
                let (bp, bias) = (self.kp.panel(p).as_ptr(), self.kp.panel_bias(p).as_ptr());
                tile::<ACT_NONE_ATTN, false, true>(
                    hd,
                    qa,
                    lda,
                    bp,
                    bias,
                    sp.add(p * NR),
                    ls,
                    MR,
                    cols,
                );
            }
            // The cls scores go to exp_rows_padded in registers: stored here and loaded
            // back as part of a vector, they would stall on store forwarding.
            let cls = |r: usize| cls_last.then(|| dot_avx2(qa.add(r * lda), h.k.as_ptr(), hd));
            let inv = strip_exponentials::<MR>(sp, ls, rows, t, scale, cls);
            for p in 0..self.vp.panels() {
                let cols = NR.min(hd - p * NR);
                let (bp, bias) = (self.vp.panel(p).as_ptr(), self.vp.panel_bias(p).as_ptr());
                let c = out.add(i0 * ldo + p * NR);
                tile::<ACT_NONE_ATTN, false, true>(t, sp, ls, bp, bias, c, ldo, rows, cols);
            }
            for (r, iv) in inv.iter().enumerate().take(rows) {
                scale_row(out.add((i0 + r) * ldo), hd, *iv);
            }
            i0 += rows;
        }
    }
}

/// `x[..n] *= s`. Caller guarantees `n` writable values at `x`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn scale_row(x: *mut f32, n: usize, s: f32) {
    let sv = _mm256_set1_ps(s);
    let body = n / 8 * 8;
    let mut j = 0;
    while j < body {
        _mm256_storeu_ps(x.add(j), _mm256_mul_ps(_mm256_loadu_ps(x.add(j)), sv));
        j += 8;
    }
    for j in body..n {
        *x.add(j) *= s;
    }
}

/// In place on each of `R` rows of `n` scores: `e_j = exp(scale (x_j - max x))`; returns
/// 1 / sum e_j per row. Rows side by side: one row's exponentials, sum, horizontal sum and
/// division are a chain of dependent steps, and two rows keep the pipes busier (more would
/// spill registers). Rows must be readable and writable up to `n` rounded up to 8 values:
/// the last vector is loaded whole, its lanes past `n` taken as -inf and stored as 0. With
/// `last_score[r]`, row r's value `n - 1` is that, not memory's (`n - 1` a multiple of 8).
///
/// Caller guarantees: each `x[r]` points to `n.div_ceil(8) * 8` writable values, `n >= 1`.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn exp_rows_padded<const R: usize>(
    x: [*mut f32; R],
    n: usize,
    last_score: [Option<f32>; R],
    scale: f32,
) -> [f32; R] {
    let last = (n - 1) / 8 * 8;
    let live = _mm256_castsi256_ps(_mm256_cmpgt_epi32(
        _mm256_set1_epi32((n - last) as i32),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    ));
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    assert!(
        last_score.iter().all(Option::is_none) || last == n - 1,
        "exp_rows_padded: a last score needs n - 1 a multiple of 8"
    );
    let tail: [__m256; R] = std::array::from_fn(|r| match last_score[r] {
        Some(v) => _mm256_blend_ps::<1>(ninf, _mm256_set1_ps(v)),
        None => _mm256_blendv_ps(ninf, _mm256_loadu_ps(x[r].add(last)), live),
    });
    let mut mx = tail;
    let mut j = 0;
    while j < last {
        for r in 0..R {
            mx[r] = _mm256_max_ps(mx[r], _mm256_loadu_ps(x[r].add(j)));
        }
        j += 8;
    }
    let sc = _mm256_set1_ps(scale);
    // scale (x - max) as one multiply-add.
    let shift: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(-hmax(mx[r]) * scale));
    let mut sum: [__m256; R] = std::array::from_fn(|r| {
        let e = _mm256_and_ps(exp_nonpos8(_mm256_fmadd_ps(tail[r], sc, shift[r])), live);
        _mm256_storeu_ps(x[r].add(last), e);
        e
    });
    let mut j = 0;
    while j < last {
        for r in 0..R {
            let p = x[r].add(j);
            let e = exp_nonpos8(_mm256_fmadd_ps(_mm256_loadu_ps(p), sc, shift[r]));
            _mm256_storeu_ps(p, e);
            sum[r] = _mm256_add_ps(sum[r], e);
        }
        j += 8;
    }
    std::array::from_fn(|r| 1.0 / hsum(sum[r]))
}

/// e^x for lanes x <= 0, as [`exp8`] (inputs below -87 taken as -87, so never a denormal
/// or zero; NaN stays NaN), with the rounding to an integer power of 2 done by adding
/// 1.5 * 2^23 (+ the exponent bias): one multiply-add instead of a round and a conversion.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp_nonpos8(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    // `vmaxps` returns its second operand when either is NaN.
    let x = _mm256_max_ps(_mm256_set1_ps(-87.0), x);
    let t = _mm256_fmadd_ps(x, _mm256_set1_ps(LOG2E), _mm256_set1_ps(EXP_MAGIC));
    let n = _mm256_sub_ps(t, _mm256_set1_ps(EXP_MAGIC));
    let p = exp_reduced(x, n);
    // (round(x log2 e) + 127) << 23 = 2^round(x log2 e) as f32 bits.
    let bits = _mm256_sub_epi32(
        _mm256_castps_si256(t),
        _mm256_castps_si256(_mm256_set1_ps(EXP_MAGIC_BASE)),
    );
    _mm256_mul_ps(p, _mm256_castsi256_ps(_mm256_slli_epi32::<23>(bits)))
}

/// `sum a[i] b[i]` for `i < n`. Caller guarantees `n` readable values at `a` and at `b`.
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) unsafe fn dot_avx2(a: *const f32, b: *const f32, n: usize) -> f32 {
    let body = n / 8 * 8;
    let v = fold4(body, |acc, j| {
        _mm256_fmadd_ps(_mm256_loadu_ps(a.add(j)), _mm256_loadu_ps(b.add(j)), acc)
    });
    let mut s = hsum(v);
    for j in body..n {
        s += *a.add(j) * *b.add(j);
    }
    s
}

/// A row quantiser for the 16-bit products ([`super::quantize_row`] with a stride of 2, at
/// an activation limit): each tier passes its widest, all giving the same integers.
pub(super) type RowQuant16 = unsafe fn(&[f32], i32, &mut [i16]) -> f32;
/// A row quantiser for the int8 products ([`super::quantize_row_u8`]): each tier passes its
/// widest, all giving the same codes.
pub(super) type RowQuant8 = unsafe fn(&[f32], &mut [u8]) -> (f32, i32);

/// The int8 product (see [`super::Ops::gemm`]): blocks of `A` rows are quantised
/// ([`quantized_blocks`]), then every int8 panel of `b` passes over the block, [`MRQ`]
/// rows at a time. `VNNI`: on AVX-VNNI (Intel Alder Lake and later client cores, without
/// AVX-512), whose `vpdpwssd` on ymm does `vpmaddwd` and `vpaddd` in one instruction on the
/// same integers, so the results are the same to the bit.
fn gemm_int8_avx2<const VNNI: bool>(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    if VNNI && b.is_int8() {
        // SAFETY: as below; `quantized_blocks8` hands `block_q8_vnni` whole strips of u8
        // rows, their scales and zero points, and a block of `c` of `rows` rows.
        unsafe {
            quantized_blocks8(
                m,
                a,
                lda,
                b,
                c,
                ldc,
                (MRQ, 4),
                quantize_row_u8_avx2,
                |rows, ap, sp, zp, cp| {
                    per_epilogue!(epi, block_q8_vnni, [], (rows, ap, sp, zp, b, cp, ldc))
                },
            );
        }
        return;
    }
    // SAFETY: reachable only through `avx2_ops` (AVX2 and FMA confirmed, and AVX-VNNI when
    // `VNNI`); `quantized_blocks` hands `block_q` whole strips of quantised rows and their
    // scales and a block of `c` with `rows` rows of `b.n()` values at stride `ldc`, which is
    // what it needs.
    unsafe {
        quantized_blocks(
            m,
            a,
            lda,
            b,
            c,
            ldc,
            MRQ,
            quantize_row_avx2,
            |rows, ap, sp, cp| {
                if VNNI {
                    per_epilogue!(epi, block_q_vnni, [], (rows, ap, sp, b, cp, ldc))
                } else {
                    per_epilogue!(epi, block_q, [], (rows, ap, sp, b, cp, ldc))
                }
            },
        );
    }
}

/// Quantises `A` a block of rows at a time (about [`A_BLOCK_Q`] values, at least 16
/// strips) with [`quantize_row`]'s integers (int8 weights: [`quantize_row_int8_pairs`]'s),
/// into rows of `2 * k2` i16 and one scale per row, and calls `run(rows, qa, sa, c)` for each block: `qa` holds `rows.div_ceil(strip) *
/// strip` rows (the rows past `rows` in the last strip are stale and must not be stored),
/// `sa` as many scales, and `c` points to the block's first row of `C`. The integer kernels
/// of every x86 tier share it.
///
/// Caller guarantees: AVX2 and FMA are present; `a` and `c` hold `m` rows of `b.k()` and
/// `b.n()` values at strides `lda` and `ldc` (as [`super::Ops::gemm`] checks).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn quantized_blocks(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    strip: usize,
    quantize: RowQuant16,
    mut run: impl FnMut(usize, *const i16, *const f32, *mut f32),
) {
    let k = b.k();
    let (limit, int8) = (b.q_limit(), b.is_int8());
    let rs = 2 * k.div_ceil(2);
    let mc = ((A_BLOCK_Q / rs.max(1)) / strip * strip).max(strip * 16);
    let (mut qa, mut sa) = QPACK.take();
    let padded = mc.min(m).div_ceil(strip) * strip;
    if qa.len() < padded * rs {
        qa.resize(padded * rs, 0);
    }
    if sa.len() < padded {
        sa.resize(padded, 0.0);
    }
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        for r in 0..rows {
            let i = m0 + r;
            let (row, out) = (&a[i * lda..i * lda + k], &mut qa[r * rs..(r + 1) * rs]);
            sa[r] = if int8 {
                quantize_row_int8_pairs(row, out, 2)
            } else {
                quantize(row, limit, out)
            };
        }
        run(rows, qa.as_ptr(), sa.as_ptr(), c[m0 * ldc..].as_mut_ptr());
        m0 += rows;
    }
    QPACK.set((qa, sa));
}

/// All int8 panels of `b` over one quantised block of `rows` rows.
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRQ) * MRQ` rows of `2*k2` values, `sa`
/// as many scales, `c` points to `rows` writable rows of `b.n()` values at
/// stride `ldc`, and `b` is int8.
#[target_feature(enable = "avx2,fma")]
unsafe fn block_q<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    q_panels::<ACT, ACC>(rows, ap, sa, b, c, ldc, |acc, a, w| {
        _mm256_add_epi32(acc, _mm256_madd_epi16(a, w))
    });
}

/// [`block_q`] on AVX-VNNI's `vpdpwssd`.
///
/// Caller guarantees: as [`block_q`], and the CPU has AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn block_q_vnni<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    q_panels::<ACT, ACC>(rows, ap, sa, b, c, ldc, |acc, a, w| {
        _mm256_dpwssd_avx_epi32(acc, a, w)
    });
}

/// The body of [`block_q`] and [`block_q_vnni`], with `madd(acc, row pairs, weight pairs)`
/// adding the pair products into i32 lanes. Always inlined into its `#[target_feature]`
/// callers, whose features the closure has.
///
/// Caller guarantees: as [`block_q`].
#[inline(always)]
unsafe fn q_panels<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
    madd: impl Fn(__m256i, __m256i, __m256i) -> __m256i + Copy,
) {
    let (k2, n) = (b.k().div_ceil(2), b.n());
    for p in 0..b.panels() {
        let bp = b.q_panel(p).as_ptr();
        let bias = b.panel_bias(p).as_ptr();
        let scale = b.q_scale(p).as_ptr();
        let cols = NR.min(n - p * NR);
        let mut s = 0;
        while s * MRQ < rows {
            let r = MRQ.min(rows - s * MRQ);
            // SAFETY: strip `s` exists in `ap`; its rows are < rows and columns
            // p*NR .. p*NR + cols are < n, inside `c`.
            tile_q::<ACT, ACC>(
                k2,
                ap.add(s * MRQ * 2 * k2),
                bp,
                sa.add(s * MRQ),
                scale,
                bias,
                c.add(s * MRQ * ldc + p * NR),
                ldc,
                r,
                cols,
                madd,
            );
            s += 1;
        }
    }
}

/// One quantised strip ([`MRQ`] rows) x one int8 panel (16 columns): i32 sums by `madd`
/// (`vpmaddwd` + `vpaddd`, or `vpdpwssd`), then `acc * (row scale * column scale) + bias`
/// and the epilogue, in the scalar reference's order of f32 operations.
///
/// Caller guarantees: `a` points to [`MRQ`] rows of `2*k2` values, `b` to `k2*NR*2`, `sa` to [`MRQ`],
/// `scale` and `bias` to [`NR`], and `c` to `rows` writable rows of `cols` values at
/// stride `ldc`.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_q<const ACT: u8, const ACC: bool>(
    k2: usize,
    a: *const i16,
    b: *const i16,
    sa: *const f32,
    scale: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
    madd: impl Fn(__m256i, __m256i, __m256i) -> __m256i,
) {
    let mut acc = [[_mm256_setzero_si256(); 2]; MRQ];
    let rs = 2 * k2;
    let (mut ap, mut bp) = (a, b);
    macro_rules! step {
        ($ap:expr, $bp:expr) => {{
            let b0 = _mm256_loadu_si256($bp as *const __m256i);
            let b1 = _mm256_loadu_si256($bp.add(16) as *const __m256i);
            for (r, accr) in acc.iter_mut().enumerate() {
                let av = _mm256_set1_epi32(($ap.add(r * rs) as *const i32).read_unaligned());
                accr[0] = madd(accr[0], av, b0);
                accr[1] = madd(accr[1], av, b1);
            }
        }};
    }
    for _ in 0..k2 {
        step!(ap, bp);
        ap = ap.add(2);
        bp = bp.add(2 * NR);
    }
    let bias0 = _mm256_loadu_ps(bias);
    let bias1 = _mm256_loadu_ps(bias.add(8));
    let sc0 = _mm256_loadu_ps(scale);
    let sc1 = _mm256_loadu_ps(scale.add(8));
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let s = _mm256_set1_ps(*sa.add(r));
        let (v0, v1) = act_int::<ACT>(
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(accr[0]), _mm256_mul_ps(s, sc0), bias0),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(accr[1]), _mm256_mul_ps(s, sc1), bias1),
        );
        store_row::<ACC>(c.add(r * ldc), v0, v1, cols);
    }
}

/// Target size (bytes) of a block of `A` rows quantised to u8.
const A_BLOCK_Q8: usize = 96 * 1024;

thread_local! {
    /// Per-thread buffers for blocks of `A` quantised to u8, their scales and zero points.
    static QPACK8: Cell<(Vec<u8>, Vec<f32>, Vec<i32>)> =
        const { Cell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// The int8 x int8 analogue of [`quantized_blocks`]: blocks of `A` rows (about
/// [`A_BLOCK_Q8`] bytes, at least 16 strips) quantised to u8 codes
/// ([`quantize_row_u8_avx2`]) in rows of `k` bytes rounded up to a multiple of `align` (4
/// for `vpdpbusd`, 64 for AMX tiles; zero past `k`), one scale and one zero point per row,
/// in blocks of whole strips of `strip` rows; `run(rows, qa, sa, zp, c)` for each block, as
/// there (the rows past `rows` in the last strip are stale and must not be stored). The
/// VNNI and AMX products share it.
///
/// Caller guarantees: AVX2 and FMA are present; `a` and `c` hold `m` rows of `b.k()` and
/// `b.n()` values at strides `lda` and `ldc` (as [`super::Ops::gemm`] checks).
#[target_feature(enable = "avx2,fma")]
#[allow(clippy::too_many_arguments)]
pub(super) unsafe fn quantized_blocks8(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    (strip, align): (usize, usize),
    quantize: RowQuant8,
    mut run: impl FnMut(usize, *const u8, *const f32, *const i32, *mut f32),
) {
    let k = b.k();
    let rs = k.next_multiple_of(align);
    let mc = ((A_BLOCK_Q8 / rs.max(1)) / strip * strip).max(strip * 16);
    let (mut qa, mut sa, mut zp) = QPACK8.take();
    let padded = mc.min(m).div_ceil(strip) * strip;
    if qa.len() < padded * rs {
        qa.resize(padded * rs, 0);
    }
    if sa.len() < padded {
        sa.resize(padded, 0.0);
        zp.resize(padded, 0);
    }
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        for r in 0..rows {
            let i = m0 + r;
            let out = &mut qa[r * rs..(r + 1) * rs];
            (sa[r], zp[r]) = quantize(&a[i * lda..i * lda + k], out);
            out[k..].fill(0);
        }
        run(
            rows,
            qa.as_ptr(),
            sa.as_ptr(),
            zp.as_ptr(),
            c[m0 * ldc..].as_mut_ptr(),
        );
        m0 += rows;
    }
    QPACK8.set((qa, sa, zp));
}

/// [`super::quantize_row_u8`] 32 values at a time: the same minimum and maximum (NaN
/// ignored: `vminps` returns its second operand, the running minimum, when the first is
/// NaN), the same [`Act8`] and the same f32 operations per value, so the same codes. Writes
/// `out[..a.len()]`; returns the scale and the zero point.
///
/// Caller guarantees: AVX2 is present; `out` holds at least `a.len()` values.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn quantize_row_u8_avx2(a: &[f32], out: &mut [u8]) -> (f32, i32) {
    let k = a.len();
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let body8 = k / 8 * 8;
    for ch in a[..body8].chunks_exact(8) {
        let v = _mm256_loadu_ps(ch.as_ptr());
        lo = _mm256_min_ps(v, lo);
        hi = _mm256_max_ps(v, hi);
    }
    let (mut mn, mut mx) = (-hmax(_mm256_sub_ps(_mm256_setzero_ps(), lo)), hmax(hi));
    for v in &a[body8..] {
        mn = mn.min(*v);
        mx = mx.max(*v);
    }
    let p = Act8::new(mn, mx);
    let (iv, zp, zero, top) = (
        _mm256_set1_ps(p.inv),
        _mm256_set1_ps(p.zp),
        _mm256_setzero_ps(),
        _mm256_set1_ps(super::ACT8_MAX as f32),
    );
    let q = |ptr: *const f32| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(_mm256_loadu_ps(ptr), iv),
        );
        // `vmaxps` returns its second operand (0) for a NaN first one: NaN codes 0.
        _mm256_cvttps_epi32(_mm256_min_ps(
            _mm256_max_ps(_mm256_add_ps(r, zp), zero),
            top,
        ))
    };
    let body = k / 32 * 32;
    let order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
    let mut kk = 0;
    while kk < body {
        let ap = a.as_ptr().add(kk);
        let (q0, q1, q2, q3) = (q(ap), q(ap.add(8)), q(ap.add(16)), q(ap.add(24)));
        // packs/packus work per 128-bit lane: dwords [q0 lo, q1 lo, q2 lo, q3 lo, q0 hi,
        // q1 hi, q2 hi, q3 hi] (4 codes each); restore the order.
        let u = _mm256_packus_epi16(_mm256_packs_epi32(q0, q1), _mm256_packs_epi32(q2, q3));
        let u = _mm256_permutevar8x32_epi32(u, order);
        _mm256_storeu_si256(out.as_mut_ptr().add(kk) as *mut __m256i, u);
        kk += 32;
    }
    for (o, v) in out[body..k].iter_mut().zip(&a[body..]) {
        *o = p.code(*v);
    }
    (p.scale, p.zp as i32)
}

/// All int8 panels of `b` over one block of `rows` rows quantised to u8, on AVX-VNNI's
/// `vpdpbusd` (ymm): [`MRQ`] rows x 16 columns per tile, as [`block_q`].
///
/// Caller guarantees: `ap` holds `rows.div_ceil(MRQ) * MRQ` rows of `4*k4` codes, `sa`
/// and `zp` as many scales and zero points, `c` points to `rows` writable
/// rows of `b.n()` values at stride `ldc`, `b` is int8, and the CPU has AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
unsafe fn block_q8_vnni<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const u8,
    sa: *const f32,
    zp: *const i32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let (k4, n) = (b.k().div_ceil(4), b.n());
    for p in 0..b.panels() {
        let cols = NR.min(n - p * NR);
        let mut s = 0;
        while s * MRQ < rows {
            let r = MRQ.min(rows - s * MRQ);
            // SAFETY: strip `s` exists in `ap` (and its scales and zero points); its rows
            // are < rows and columns p*NR .. p*NR + cols are < n, inside `c`.
            tile_q8_vnni::<ACT, ACC>(
                k4,
                ap.add(s * MRQ * 4 * k4),
                b,
                p,
                (sa.add(s * MRQ), zp.add(s * MRQ)),
                c.add(s * MRQ * ldc + p * NR),
                ldc,
                r,
                cols,
            );
            s += 1;
        }
    }
}

/// One u8 strip ([`MRQ`] rows) x one int8 panel: `vpdpbusd` sums of (code x weight) in
/// i32, minus `zero point x column sum` (the exact `sum (u - zp) q`, the scalar reference's
/// integer), then `acc * (row scale * column scale) + bias` and the epilogue in its order.
///
/// Caller guarantees: `a` points to [`MRQ`] rows of `4*k4` codes, `b` has int8 panel `p`,
/// `(sa, zp)` to [`MRQ`] scales and zero points, `c` to `rows` writable rows of `cols`
/// values at stride `ldc`, and the CPU has AVX-VNNI.
#[target_feature(enable = "avx2,fma,avxvnni")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_q8_vnni<const ACT: u8, const ACC: bool>(
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
    let mut acc = [[_mm256_setzero_si256(); 2]; MRQ];
    let (mut ap, mut bp) = (a.cast::<i32>(), b.q8_panel(p).as_ptr());
    for _ in 0..k4 {
        let b0 = _mm256_loadu_si256(bp as *const __m256i);
        let b1 = _mm256_loadu_si256(bp.add(32) as *const __m256i);
        for (r, accr) in acc.iter_mut().enumerate() {
            let av = _mm256_set1_epi32(ap.add(r * k4).read_unaligned());
            accr[0] = _mm256_dpbusd_avx_epi32(accr[0], av, b0);
            accr[1] = _mm256_dpbusd_avx_epi32(accr[1], av, b1);
        }
        ap = ap.add(1);
        bp = bp.add(4 * NR);
    }
    let (bias, scale, cs) = (
        b.panel_bias(p).as_ptr(),
        b.q_scale(p).as_ptr(),
        b.q_colsum(p).as_ptr(),
    );
    let (bias0, bias1) = (_mm256_loadu_ps(bias), _mm256_loadu_ps(bias.add(8)));
    let (sc0, sc1) = (_mm256_loadu_ps(scale), _mm256_loadu_ps(scale.add(8)));
    let cs0 = _mm256_loadu_si256(cs as *const __m256i);
    let cs1 = _mm256_loadu_si256(cs.add(8) as *const __m256i);
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let s = _mm256_set1_ps(*sa.add(r));
        let z = _mm256_set1_epi32(*zp.add(r));
        let i0 = _mm256_sub_epi32(accr[0], _mm256_mullo_epi32(z, cs0));
        let i1 = _mm256_sub_epi32(accr[1], _mm256_mullo_epi32(z, cs1));
        let (v0, v1) = act_int::<ACT>(
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(i0), _mm256_mul_ps(s, sc0), bias0),
            _mm256_fmadd_ps(_mm256_cvtepi32_ps(i1), _mm256_mul_ps(s, sc1), bias1),
        );
        store_row::<ACC>(c.add(r * ldc), v0, v1, cols);
    }
}

/// [`quantize_row`] with a stride of 2 (row-major pairs), 16 values at a time; the
/// integers and the scale are identical to the scalar function's (same max, same f32
/// multiply, round to nearest even, clamp).
///
/// Caller guarantees: AVX2 is present; `out` holds `a.len().div_ceil(2) * 2` values.
#[target_feature(enable = "avx2,fma")]
unsafe fn quantize_row_avx2(a: &[f32], limit: i32, out: &mut [i16]) -> f32 {
    let k = a.len();
    let body = k / 16 * 16;
    let sign = _mm256_set1_ps(-0.0);
    let mut mx = _mm256_setzero_ps();
    for ch in a[..body].chunks_exact(8) {
        mx = _mm256_max_ps(mx, _mm256_andnot_ps(sign, _mm256_loadu_ps(ch.as_ptr())));
    }
    let mut amax = hmax(mx);
    for v in &a[body..] {
        amax = amax.max(v.abs());
    }
    if amax == 0.0 || !amax.is_finite() {
        return quantize_row(a, limit, out, 2);
    }
    let lim = limit as f32;
    let inv = lim / amax;
    let (iv, hi, lo) = (
        _mm256_set1_ps(inv),
        _mm256_set1_ps(lim),
        _mm256_set1_ps(-lim),
    );
    let q = |p: *const f32| {
        let r = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(
            _mm256_mul_ps(_mm256_loadu_ps(p), iv),
        );
        _mm256_cvttps_epi32(_mm256_min_ps(_mm256_max_ps(r, lo), hi))
    };
    let mut kk = 0;
    while kk < body {
        let (q0, q1) = (q(a.as_ptr().add(kk)), q(a.as_ptr().add(kk + 8)));
        // packs works per 128-bit lane: [q0 lo, q1 lo, q0 hi, q1 hi]; restore the order.
        let p = _mm256_permute4x64_epi64::<0xD8>(_mm256_packs_epi32(q0, q1));
        _mm256_storeu_si256(out.as_mut_ptr().add(kk) as *mut __m256i, p);
        kk += 16;
    }
    for (kk, v) in a.iter().enumerate().skip(body) {
        out[kk] = (v * inv).round_ties_even().clamp(-lim, lim) as i16;
    }
    if k % 2 == 1 {
        out[k] = 0;
    }
    amax / lim
}

/// Stores (or, with `ACC`, adds) the first `cols` of the 16 values `v0 ++ v1` at `cr`.
///
/// Caller guarantees: `cr` points to `cols` writable values.
#[target_feature(enable = "avx2,fma")]
#[inline]
unsafe fn store_row<const ACC: bool>(cr: *mut f32, mut v0: __m256, mut v1: __m256, cols: usize) {
    if cols == NR {
        if ACC {
            v0 = _mm256_add_ps(v0, _mm256_loadu_ps(cr));
            v1 = _mm256_add_ps(v1, _mm256_loadu_ps(cr.add(8)));
        }
        _mm256_storeu_ps(cr, v0);
        _mm256_storeu_ps(cr.add(8), v1);
    } else {
        let mut tmp = [0.0f32; NR];
        _mm256_storeu_ps(tmp.as_mut_ptr(), v0);
        _mm256_storeu_ps(tmp.as_mut_ptr().add(8), v1);
        for (j, t) in tmp.iter().enumerate().take(cols) {
            let dst = cr.add(j);
            *dst = if ACC { *dst + t } else { *t };
        }
    }
}

/// 1.5 * 2^23 + 127: in `x log2 e + EXP_MAGIC` the low mantissa bits are
/// round(x log2 e) + 127 (the exponentials of the attention kernels, here and in `avx512`).
pub(super) const EXP_MAGIC: f32 = 12_583_039.0;
/// 1.5 * 2^23: [`EXP_MAGIC`]'s bits less this one's are round(x log2 e) + 127.
pub(super) const EXP_MAGIC_BASE: f32 = 12_582_912.0;
/// ln 2 in two parts for the Cody-Waite reduction (the high part exact in few bits).
pub(super) const EXP_LN2: [f32; 2] = [0.693_359_4, -2.121_944_4e-4];
/// The Taylor series of e^r from its degree-7 term down: 1 / 7!, then each `1 / c`.
pub(super) const EXP_TAYLOR: (f32, [f32; 7]) =
    (1.0 / 5040.0, [720.0, 120.0, 24.0, 6.0, 2.0, 1.0, 1.0]);

/// e^(x - n ln 2) for lanes with n = round(x log2 e): Cody-Waite reduction (ln 2 in two
/// parts) to |r| <= ln2/2, then the Taylor series of e^r to degree 7 (truncation error
/// about 5e-9).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp_reduced(x: __m256, n: __m256) -> __m256 {
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[0]), x);
    let r = _mm256_fnmadd_ps(n, _mm256_set1_ps(EXP_LN2[1]), r);
    let mut p = _mm256_set1_ps(EXP_TAYLOR.0);
    for c in EXP_TAYLOR.1 {
        p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(1.0 / c));
    }
    p
}

/// e^x for each lane (inputs clamped to [-87, 88]).
#[target_feature(enable = "avx2,fma")]
#[inline]
fn exp8(x: __m256) -> __m256 {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    let x = _mm256_min_ps(
        _mm256_max_ps(x, _mm256_set1_ps(-87.0)),
        _mm256_set1_ps(88.0),
    );
    let n = _mm256_round_ps::<{ _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC }>(_mm256_mul_ps(
        x,
        _mm256_set1_ps(LOG2E),
    ));
    let p = exp_reduced(x, n);
    let e = _mm256_slli_epi32::<23>(_mm256_add_epi32(
        _mm256_cvtps_epi32(n),
        _mm256_set1_epi32(127),
    ));
    _mm256_mul_ps(p, _mm256_castsi256_ps(e))
}

/// Exact-erf GELU for each lane: `x/2 (1 + erf(x/sqrt 2))` with
/// `erf(x/sqrt 2) = xc P(xc^2) / Q(xc^2)`, `xc = clamp(x, ±4 sqrt 2)` (beyond, erf rounds
/// to ±1 in f32). P (degree 6) and Q (degree 4, Q(0) = 1) were fitted for this crate by
/// weighted least squares with Lawson reweighting (`examples/fit_erf.rs`): erf error 5e-8 in
/// exact arithmetic, GELU error below 2e-7 (1 + |x|) in f32. No exp; one exact division,
/// as `x (1/2 + xc (P/2) / Q)`: four fewer instructions than a reciprocal estimate refined by
/// Newton's method and multiplied in, at the same measured speed on Zen 3.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu8(x: __m256) -> __m256 {
    gelu8_rational(x, &super::GELU_P, &super::GELU_Q)
}

/// [`gelu8`] with the lower-degree rational erf of the integer products' epilogues
/// ([`super::GELU_INT_P`], [`super::GELU_INT_Q`]): GELU error 1.7e-6 (1 + |x|).
#[target_feature(enable = "avx2,fma")]
#[inline]
pub(super) fn gelu8_int(x: __m256) -> __m256 {
    gelu8_rational(x, &super::GELU_INT_P, &super::GELU_INT_Q)
}

/// `x (Q + xc P) / 2Q`, computed as `x (1/2 + xc (P/2) / Q)` (one instruction fewer: the
/// halved coefficients are exact), for `P(xc^2)` with coefficients `p` (from `xc^0`) and
/// `Q(xc^2)` = 1 + `q` (from `xc^2`), each by Horner's rule from its highest coefficient.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn gelu8_rational(x: __m256, p: &[f32], q: &[f32]) -> __m256 {
    let lim = 4.0 * std::f32::consts::SQRT_2;
    let xc = _mm256_min_ps(_mm256_max_ps(x, _mm256_set1_ps(-lim)), _mm256_set1_ps(lim));
    let u = _mm256_mul_ps(xc, xc);
    let (pl, ql) = (p.len() - 1, q.len() - 1);
    let mut pv = _mm256_set1_ps(0.5 * p[pl]);
    for c in p[..pl].iter().rev() {
        pv = _mm256_fmadd_ps(pv, u, _mm256_set1_ps(0.5 * *c));
    }
    let mut qv = _mm256_set1_ps(q[ql]);
    for c in q[..ql].iter().rev() {
        qv = _mm256_fmadd_ps(qv, u, _mm256_set1_ps(*c));
    }
    qv = _mm256_fmadd_ps(qv, u, _mm256_set1_ps(1.0));
    // Φ(x) = 1/2 + erf(x/sqrt 2)/2, the standard normal CDF.
    let phi = _mm256_fmadd_ps(xc, _mm256_div_ps(pv, qv), _mm256_set1_ps(0.5));
    _mm256_mul_ps(x, phi)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_add_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
fn hmax(v: __m256) -> f32 {
    let s = _mm_max_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_max_ps(s, _mm_movehl_ps(s, s));
    let s = _mm_max_ss(s, _mm_movehdup_ps(s));
    _mm_cvtss_f32(s)
}

layer_norm_fn!(
    layer_norm_avx2,
    layer_norm_row,
    "LayerNorm of the AVX2 table ([`avx2_ops`], built after AVX2 and FMA were confirmed)."
);

/// One row of LayerNorm. The sum and the sum of squares run on 4 accumulators each: one
/// chain of dependent adds over the row made it wait on the adder's latency.
#[target_feature(enable = "avx2,fma")]
fn layer_norm_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let dim = x.len();
    let body = dim / 8 * 8;
    let load = |j: usize| {
        // SAFETY: callers pass j + 8 <= body <= dim = x.len().
        unsafe { _mm256_loadu_ps(x.as_ptr().add(j)) }
    };
    let mut sum = hsum(fold4(body, |a, j| _mm256_add_ps(a, load(j))));
    for v in &x[body..] {
        sum += v;
    }
    let mean = sum / dim as f32;
    let mv = _mm256_set1_ps(mean);
    let mut var = hsum(fold4(body, |a, j| {
        let d = _mm256_sub_ps(load(j), mv);
        _mm256_fmadd_ps(d, d, a)
    }));
    for v in &x[body..] {
        var += (v - mean) * (v - mean);
    }
    let rstd = 1.0 / (var / dim as f32 + eps).sqrt();
    let rv = _mm256_set1_ps(rstd);
    for j in (0..body).step_by(8) {
        // SAFETY: j + 8 <= body <= dim = len of x, g, b and out.
        unsafe {
            let d = _mm256_mul_ps(_mm256_sub_ps(load(j), mv), rv);
            let y = _mm256_fmadd_ps(
                d,
                _mm256_loadu_ps(g.as_ptr().add(j)),
                _mm256_loadu_ps(b.as_ptr().add(j)),
            );
            _mm256_storeu_ps(out.as_mut_ptr().add(j), y);
        }
    }
    for j in body..dim {
        out[j] = (x[j] - mean) * rstd * g[j] + b[j];
    }
}

/// `step` folded over `j = 0, 8, .. < body` on 4 accumulators in turn (breaking the chain
/// of dependent steps one accumulator would make), then the 4 added lane by lane.
#[target_feature(enable = "avx2,fma")]
#[inline]
fn fold4(body: usize, step: impl Fn(__m256, usize) -> __m256) -> __m256 {
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut j = 0;
    while j + 32 <= body {
        for (i, a) in acc.iter_mut().enumerate() {
            *a = step(*a, j + 8 * i);
        }
        j += 32;
    }
    while j < body {
        acc[0] = step(acc[0], j);
        j += 8;
    }
    _mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))
}

fn softmax_avx2(rows: usize, n: usize, x: &mut [f32], ld: usize, scale: f32) {
    let mut r = 0;
    while r < rows {
        let rr = SOFTMAX_ROWS.min(rows - r);
        let xr = &mut x[r * ld..];
        assert!(xr.len() >= (rr - 1) * ld + n);
        // SAFETY: reachable only through `avx2_ops` (AVX2+FMA confirmed); the assert bounds
        // the `rr` rows of `n` values at stride `ld` that the function reads and writes.
        unsafe {
            match rr {
                SOFTMAX_ROWS => softmax_strip::<SOFTMAX_ROWS>(xr.as_mut_ptr(), ld, n, scale),
                3 => softmax_strip::<3>(xr.as_mut_ptr(), ld, n, scale),
                2 => softmax_strip::<2>(xr.as_mut_ptr(), ld, n, scale),
                _ => softmax_strip::<1>(xr.as_mut_ptr(), ld, n, scale),
            }
        }
        r += rr;
    }
}

/// Rows [`softmax_strip`] works on together: one row's passes are chains of dependent
/// steps (max, then exp and sum, then scale), so rows side by side keep the pipes busy.
const SOFTMAX_ROWS: usize = 4;

/// Softmax of `R` rows of `n` values at stride `ld`, in place: the maximum, `exp(scale (x -
/// max))` and its sum, then the scaling by 1 / sum. The last `n % 8` values of each row
/// are read and written with masked loads and stores.
///
/// Caller guarantees: AVX2 and FMA; `x` points to `R` rows of `n` writable values at
/// stride `ld`.
#[target_feature(enable = "avx2,fma")]
unsafe fn softmax_strip<const R: usize>(x: *mut f32, ld: usize, n: usize, scale: f32) {
    let body = n / 8 * 8;
    let rest = (n - body) as i32;
    let mask = _mm256_cmpgt_epi32(
        _mm256_set1_epi32(rest),
        _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7),
    );
    let maskf = _mm256_castsi256_ps(mask);
    let ninf = _mm256_set1_ps(f32::NEG_INFINITY);
    let row = |r: usize| x.add(r * ld);
    let mut mx = [ninf; R];
    let mut c = 0;
    while c < body {
        for (r, m) in mx.iter_mut().enumerate() {
            *m = _mm256_max_ps(*m, _mm256_loadu_ps(row(r).add(c)));
        }
        c += 8;
    }
    if rest > 0 {
        for (r, m) in mx.iter_mut().enumerate() {
            let t = _mm256_blendv_ps(ninf, _mm256_maskload_ps(row(r).add(body), mask), maskf);
            *m = _mm256_max_ps(*m, t);
        }
    }
    let max: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(hmax(mx[r])));
    let sc = _mm256_set1_ps(scale);
    let mut sum = [_mm256_setzero_ps(); R];
    let mut c = 0;
    while c < body {
        for r in 0..R {
            let p = row(r).add(c);
            let e = exp8(_mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(p), max[r]), sc));
            sum[r] = _mm256_add_ps(sum[r], e);
            _mm256_storeu_ps(p, e);
        }
        c += 8;
    }
    if rest > 0 {
        for r in 0..R {
            let p = row(r).add(body);
            let v = _mm256_maskload_ps(p, mask);
            let e = _mm256_and_ps(exp8(_mm256_mul_ps(_mm256_sub_ps(v, max[r]), sc)), maskf);
            sum[r] = _mm256_add_ps(sum[r], e);
            _mm256_maskstore_ps(p, mask, e);
        }
    }
    let inv: [__m256; R] = std::array::from_fn(|r| _mm256_set1_ps(1.0 / hsum(sum[r])));
    let mut c = 0;
    while c < body {
        for (r, iv) in inv.iter().enumerate() {
            let p = row(r).add(c);
            _mm256_storeu_ps(p, _mm256_mul_ps(_mm256_loadu_ps(p), *iv));
        }
        c += 8;
    }
    if rest > 0 {
        for (r, iv) in inv.iter().enumerate() {
            let p = row(r).add(body);
            _mm256_maskstore_ps(p, mask, _mm256_mul_ps(_mm256_maskload_ps(p, mask), *iv));
        }
    }
}

/// Independent FMA chains for [`fma_probe_avx2`]: Zen 3/4 and recent Intel cores issue two
/// 256-bit FMAs per cycle with a latency of 4-5 cycles, so at least 10 chains are needed.
const PROBE_CHAINS: usize = 12;

fn fma_probe_avx2(iters: u64) -> (f32, u64) {
    // SAFETY: reachable only through `avx2_ops` (AVX2+FMA confirmed).
    let sum = unsafe { fma_chains(iters) };
    (sum, iters * PROBE_CHAINS as u64 * 8 * 2)
}

/// `acc = acc * m + a` on [`PROBE_CHAINS`] registers of 8 lanes, `iters` times.
#[target_feature(enable = "avx2,fma")]
fn fma_chains(iters: u64) -> f32 {
    let m = _mm256_set1_ps(std::hint::black_box(0.999_999));
    let a = _mm256_set1_ps(std::hint::black_box(1e-7));
    let mut acc = [_mm256_setzero_ps(); PROBE_CHAINS];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = _mm256_set1_ps(i as f32 * 0.01);
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = _mm256_fmadd_ps(*v, m, a);
        }
    }
    let mut s = _mm256_setzero_ps();
    for v in acc {
        s = _mm256_add_ps(s, v);
    }
    hsum(s)
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Weights, EPIS};
    use super::super::Epilogue;
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gemm_matches_scalar_on_odd_shapes() {
        let Some(ops) = avx2_ops() else { return };
        for w in [Weights::F32, Weights::Int8, Weights::Int16] {
            check::gemm_odd_shapes(&ops, w);
        }
    }

    #[test]
    fn gemm_int8_long_reductions_and_worst_case_sums() {
        let Some(ops) = avx2_ops() else { return };
        // Long reductions (activation limit below 32767) and several row blocks.
        for w in [Weights::Int8, Weights::Int16] {
            check::gemm(&ops, 300, 40, 3216, 3216, 40, Epilogue::RELU, 7, w);
        }
        check::int_worst_case_sums(&ops);
    }

    /// The AVX2 table with AVX-VNNI's integer product and the one without it, if this CPU
    /// has AVX-VNNI.
    fn avxvnni_and_plain() -> Option<(Ops, Ops)> {
        let ops = avx2_ops()?;
        if !check::available("avxvnni", is_x86_feature_detected!("avxvnni")) {
            return None;
        }
        let plain = Ops {
            gemm_int8: gemm_int8_avx2::<false>,
            ..ops
        };
        Some((ops, plain))
    }

    /// AVX-VNNI's `vpdpwssd` gives the same integers as `vpmaddwd` + `vpaddd`: the scalar
    /// reference's results on odd shapes, long reductions and the worst-case sums, and the
    /// plain AVX2 kernel's bits on the ViT shapes.
    #[test]
    fn avxvnni_gemm_matches_avx2_and_scalar() {
        let Some((ops, plain)) = avxvnni_and_plain() else {
            return;
        };
        for w in [Weights::Int8, Weights::Int16] {
            check::gemm_odd_shapes(&ops, w);
            check::gemm(&ops, 300, 40, 3216, 3216, 40, Epilogue::RELU, 7, w);
        }
        check::int_worst_case_sums(&ops);
        check::same_bits_on_model_shapes(&ops, &plain, &[Weights::Int8, Weights::Int16]);
    }

    /// The plain AVX2 integer product (no VNNI: int8 x int8 as i16 pairs on `vpmaddwd`)
    /// against the scalar reference, wherever AVX2 is (`avx2_ops` picks AVX-VNNI when the
    /// CPU has it, so this is the only test of the plain kernel on such CPUs).
    #[test]
    fn plain_avx2_integer_gemm_matches_scalar() {
        let Some(ops) = avx2_ops() else { return };
        let plain = Ops {
            gemm_int8: gemm_int8_avx2::<false>,
            ..ops
        };
        for w in [Weights::Int8, Weights::Int16] {
            check::gemm_odd_shapes(&plain, w);
            check::gemm(&plain, 300, 40, 3216, 3216, 40, Epilogue::RELU, 7, w);
        }
        check::int_worst_case_sums(&plain);
    }

    /// The AVX2 u8 quantiser gives [`super::super::quantize_row_u8`]'s codes, scale and
    /// zero point on rows of every length around its 8- and 32-value steps, with NaN,
    /// infinities, zeros of both signs and one-signed rows.
    #[test]
    fn u8_quantiser_matches_scalar() {
        if !is_x86_feature_detected!("avx2") || !is_x86_feature_detected!("fma") {
            return;
        }
        for len in 0..100usize {
            for kind in 0..check::SPECIAL_ROWS {
                let a = check::special_row(len, kind);
                let (mut want, mut got) = (vec![5u8; len + 3], vec![5u8; len + 3]);
                let w = super::super::quantize_row_u8(&a, &mut want);
                // SAFETY: AVX2 and FMA confirmed above; `got` holds `len` values.
                let g = unsafe { quantize_row_u8_avx2(&a, &mut got) };
                assert_eq!(want, got, "len {len} kind {kind}");
                assert!(w.1 == g.1 && (w.0 == g.0 || (w.0.is_nan() && g.0.is_nan())));
            }
        }
    }

    #[test]
    fn gemm_large_k_blocks_rows() {
        let Some(ops) = avx2_ops() else { return };
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

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn gemm_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000) {
            if let Some(ops) = avx2_ops() {
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, Weights::F32);
            }
        }

        #[test]
        fn avxvnni_gemm_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000, wide in proptest::bool::ANY) {
            if let Some((ops, _)) = avxvnni_and_plain() {
                let w = if wide { Weights::Int16 } else { Weights::Int8 };
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, w);
            }
        }

        #[test]
        fn gemm_int8_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000, wide in proptest::bool::ANY) {
            if let Some(ops) = avx2_ops() {
                let w = if wide { Weights::Int16 } else { Weights::Int8 };
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, EPIS[e], seed, w);
            }
        }

        #[test]
        fn softmax_prop(rows in 1usize..5, n in 1usize..80, scale in 0.01f32..2.0, seed in 0u64..1000) {
            if let Some(ops) = avx2_ops() {
                check::softmax(&ops, rows, n, scale, seed);
            }
        }

        #[test]
        fn attention_prop(t in 1usize..80, hd in 1usize..40, scale in 0.05f32..1.0, seed in 0u64..1000) {
            if let Some(ops) = avx2_ops() {
                check::attention(&ops, t, hd, scale, seed, &mut AttentionScratch::default());
            }
        }

        #[test]
        fn layer_norm_prop(rows in 1usize..5, dim in 1usize..300, seed in 0u64..1000) {
            if let Some(ops) = avx2_ops() {
                check::layer_norm(&ops, rows, dim, seed);
            }
        }
    }

    #[test]
    fn softmax_and_layer_norm_match_scalar_on_odd_shapes() {
        let Some(ops) = avx2_ops() else { return };
        check::softmax_odd_shapes(&ops);
        for dim in [1usize, 7, 8, 192, 197] {
            check::layer_norm(&ops, 3, dim, dim as u64);
        }
    }

    #[test]
    fn attention_matches_definition() {
        let Some(ops) = avx2_ops() else { return };
        check::attention_shapes(&ops);
    }

    /// GELU approximation: |simd - exact| <= 1e-6 * (1 + |x|) over a dense sweep.
    #[test]
    fn gelu_accuracy() {
        let Some(ops) = avx2_ops() else { return };
        let worst = check::gelu(&ops);
        eprintln!("worst gelu error / (1 + |x|) = {worst:e}");
    }

    /// The integer epilogues' GELU: |simd - exact| <= 2e-6 * (1 + |x|) over a dense sweep.
    #[test]
    fn gelu_int_accuracy() {
        if avx2_ops().is_none() {
            return;
        }
        let worst = check::gelu_int(|xs| {
            let mut out = vec![0.0f32; xs.len()];
            for (x, o) in xs.chunks(8).zip(out.chunks_mut(8)) {
                let mut v = [0.0f32; 8];
                v[..x.len()].copy_from_slice(x);
                // SAFETY: AVX2 and FMA confirmed just above; plain register arithmetic.
                let g = unsafe {
                    let mut r = [0.0f32; 8];
                    _mm256_storeu_ps(r.as_mut_ptr(), gelu8_int(_mm256_loadu_ps(v.as_ptr())));
                    r
                };
                o.copy_from_slice(&g[..x.len()]);
            }
            out
        });
        eprintln!("worst integer-epilogue gelu error / (1 + |x|) = {worst:e}");
    }
}
