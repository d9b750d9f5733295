//! aarch64 kernels: NEON (Advanced SIMD), for the arm64 (Graviton) Lambda build.
//!
//! Hand-written, as the x86 kernels are, because the compiler does not make a
//! register-blocked GEMM of the reference loops: for aarch64 it turns the scalar tier's
//! 16-column inner loop into 4 `fmul` + 4 `fadd` per row and step, one row at a time (no
//! fused multiply-add without fast-math, each `A` value loaded once per panel), and it
//! vectorises neither exp nor erf.
//!
//! GEMM: a 6x16 register tile. 24 `float32x4_t` accumulators, the 4 registers of one row
//! of a [`PackedB`] panel (one `ld1` of four registers) and the 6 values of a packed `A`
//! column (one q and one d register) take 30 of NEON's 32 vector registers; each step is
//! 24 `fmla` by lane (`vfmaq_laneq_f32`), so no broadcasts are needed. `A` is packed per
//! block of rows (about 96 KiB) into strips of 6 interleaved rows, as on x86, so the tile
//! reads one contiguous stream of `A` and one of `B`. Bias, activation and residual
//! accumulation are applied to the tile in registers before it is stored (monomorphised per
//! epilogue).
//!
//! Transcendentals: the same algorithms and constants as the x86 kernels: `exp` (softmax)
//! by Cody-Waite range reduction and a degree-7 polynomial; the exact GELU through the
//! rational approximation of erf fitted for this crate (`examples/fit_erf.rs`), with the
//! reciprocal by `frecpe` and two Newton steps instead of a division.
//!
//! Integer product (int8 and int16 weights, both stored as i16): the same 6x16 tile with 24
//! `int32x4_t` accumulators and `smlal`/`smlal2` by lane (`vmlal_laneq_s16`), each weight
//! panel row pair de-interleaved by one `ld2` per 8 columns. Each row of `A` is quantised by
//! the reference's quantiser (`quantize_row`, or for int8 weights u8 codes minus their zero
//! point, `quantize_row_int8_pairs`) straight into strips of 6 interleaved rows, so the
//! integers, their exact i32 sums and the f32 epilogue (multiply, then add, as the
//! reference) give the scalar reference's results bit for bit (GELU aside, which is the
//! NEON one). NEON has no i16 dot product: a `smlal` does 4 multiply-adds, as an `fmla`
//! does, so this gives int16's accuracy without f32's speed being passed (unmeasured on
//! arm64 hardware); what it replaces is the scalar reference, several times slower.
//!
//! int8 x int8 on `sdot` (FEAT_DotProd: Graviton2 and later, Apple M1 and later), when the
//! CPU has it: 16 multiply-adds of i8 per instruction, four times `fmla`'s. Each row of `A`
//! becomes the reference's u8 codes ([`quantize_row_u8_neon`], the same codes as
//! [`super::quantize_row_u8`]) stored as `u - 128` (an i8), in strips of 6 rows whose 4
//! codes per group of 4 columns of `A` lie side by side; the weights are read in the
//! `vpdpbusd` layout the x86 tiers use (per panel, 4 consecutive rows of each column in 4
//! bytes). A 6x16 tile of 24 `int32x4_t` sums takes one `sdot` by element per 4 rows of `A`,
//! 4 columns and 1 row of the tile. Since `sum (u - zp) q = sum (u - 128) q + (128 - zp) sum
//! q`, the sums start at `(128 - zp) x column sum`, which leaves the reference's exact i32
//! sums (in wrapping arithmetic, as on x86), then the reference's f32 epilogue: the same
//! results bit for bit. `sdot` is not yet a stable intrinsic in Rust, so it is written as
//! inline assembly (`sdot_lane`). Tested under qemu (`scripts/test-aarch64.sh`, whose CPU
//! has DotProd; `QEMU_CPU=cortex-a72` for a CPU without it); unmeasured on arm64 hardware.
//!
//! The table is built only after `is_aarch64_feature_detected!("neon")` confirmed NEON
//! (every aarch64 Linux CPU has it, and the target enables it by default), which is what
//! makes the `unsafe` calls into `#[target_feature]` functions sound.

use std::arch::aarch64::*;
use std::arch::asm;
use std::cell::Cell;

use super::{
    quantize_row_for, Act8, Epilogue, Ops, PackedB, Tier, ACT8_MAX, ACT_GELU, ACT_RELU, NR,
};

/// Rows of the register tile.
const MR: usize = 6;
/// Target size (f32 values) of the block of `A` rows kept hot while panels pass over it.
const A_BLOCK: usize = 24 * 1024;
/// Fewest rows per block: with a long reduction (the 3216-wide head) it is cheaper to stream
/// a larger `A` block than to re-read all of `B` (megabytes) for every few rows.
const MIN_BLOCK_ROWS: usize = 66;

/// The NEON table, if this CPU has NEON.
pub fn neon_ops() -> Option<Ops> {
    if std::arch::is_aarch64_feature_detected!("neon") {
        Some(Ops {
            tier: Tier::Neon,
            gemm: gemm_neon,
            gemm_int8: if has_dotprod() {
                gemm_int_dot
            } else {
                gemm_int_neon
            },
            gemm_bf16: None,
            layer_norm: layer_norm_neon,
            softmax: softmax_neon,
            attention: super::attention_composed,
            attention_bf16: None,
            attention_int16: None,
            fma_probe: fma_probe_neon,
        })
    } else {
        None
    }
}

/// Whether this CPU has `sdot` (FEAT_DotProd), for the int8 x int8 product.
pub fn has_dotprod() -> bool {
    std::arch::is_aarch64_feature_detected!("dotprod")
}

/// Target size (i16 values) of a quantised block of `A` rows.
const A_BLOCK_Q: usize = 48 * 1024;
/// Target size (bytes) of a block of `A` rows as codes for `sdot`.
const A_BLOCK_Q8: usize = 64 * 1024;

thread_local! {
    /// Per-thread buffer for packed blocks of `A` (grows to the largest block, then reused).
    static APACK: Cell<Vec<f32>> = const { Cell::new(Vec::new()) };
    /// Per-thread buffers for quantised blocks of `A` and their row scales.
    static QPACK: Cell<(Vec<i16>, Vec<f32>)> = const { Cell::new((Vec::new(), Vec::new())) };
    /// Per-thread buffers for blocks of `A` as `sdot` codes: the strips, the row scales,
    /// the zero points and one row's u8 codes.
    static Q8PACK: Cell<Q8Buffers> = const { Cell::new((Vec::new(), Vec::new(), Vec::new(), Vec::new())) };
}

/// See `Q8PACK`.
type Q8Buffers = (Vec<i8>, Vec<f32>, Vec<i32>, Vec<u8>);

fn gemm_neon(
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
    let mut buf = APACK.take();
    let need = mc.min(m.div_ceil(MR) * MR) * k;
    if buf.len() < need {
        buf.resize(need, 0.0);
    }
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        pack_a(&a[m0 * lda..], lda, rows, k, &mut buf);
        let cblk = &mut c[m0 * ldc..];
        // SAFETY: `buf` holds rows.div_ceil(MR) packed strips of k*MR values; `Ops::gemm`
        // checked that `c` holds `m` rows of `b.n()` values at stride `ldc`, so `cblk` holds
        // `rows` of them; this function is only reachable through `neon_ops`, which
        // confirmed NEON.
        unsafe {
            let (ap, cp) = (buf.as_ptr(), cblk.as_mut_ptr());
            per_epilogue!(epi, block, [], (rows, ap, b, cp, ldc))
        }
        m0 += rows;
    }
    APACK.set(buf);
}

/// Packs `rows` rows of `k` values (stride `lda`) into strips of [`MR`] interleaved rows:
/// strip `s` holds, for each `kk`, the values of rows `s*MR .. s*MR+MR` (zero past `rows`).
/// `out` needs `rows.div_ceil(MR) * k * MR` values.
fn pack_a(a: &[f32], lda: usize, rows: usize, k: usize, out: &mut [f32]) {
    for s in 0..rows.div_ceil(MR) {
        let dst = &mut out[s * k * MR..(s + 1) * k * MR];
        let body = if s * MR + MR <= rows { k / 4 * 4 } else { 0 };
        if body > 0 {
            let src = &a[s * MR * lda..];
            assert!(src.len() >= (MR - 1) * lda + k);
            // SAFETY: NEON is present (only reachable through `neon_ops`); the assert above
            // bounds the reads (MR rows of `body <= k` values at stride lda) and `dst` holds
            // the `body * MR` values written.
            unsafe { pack_strip(src.as_ptr(), lda, body, dst.as_mut_ptr()) };
        }
        for r in 0..MR {
            let i = s * MR + r;
            for kk in body..k {
                dst[kk * MR + r] = if i < rows { a[i * lda + kk] } else { 0.0 };
            }
        }
    }
}

/// The first `body` (a multiple of 4) columns of one full strip of [`MR`] rows, 4 columns
/// at a time: rows 0-3 through a 4x4 register transpose, rows 4-5 zipped in pairs.
///
/// Caller guarantees: NEON; `a` has MR rows of `body` values at stride `lda`; `dst` has
/// room for `body*MR` values.
#[target_feature(enable = "neon")]
unsafe fn pack_strip(a: *const f32, lda: usize, body: usize, dst: *mut f32) {
    let mut kk = 0;
    while kk < body {
        let r0 = vld1q_f32(a.add(kk));
        let r1 = vld1q_f32(a.add(lda + kk));
        let r2 = vld1q_f32(a.add(2 * lda + kk));
        let r3 = vld1q_f32(a.add(3 * lda + kk));
        let r4 = vld1q_f32(a.add(4 * lda + kk));
        let r5 = vld1q_f32(a.add(5 * lda + kk));
        // t0 = (r0[0], r1[0], r0[2], r1[2]), t1 = (r0[1], r1[1], r0[3], r1[3]), ...
        let t0 = vreinterpretq_f64_f32(vtrn1q_f32(r0, r1));
        let t1 = vreinterpretq_f64_f32(vtrn2q_f32(r0, r1));
        let t2 = vreinterpretq_f64_f32(vtrn1q_f32(r2, r3));
        let t3 = vreinterpretq_f64_f32(vtrn2q_f32(r2, r3));
        // Column j of rows 0-3, and (r4[j], r5[j]) pairs.
        let c = [
            vreinterpretq_f32_f64(vtrn1q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn1q_f64(t1, t3)),
            vreinterpretq_f32_f64(vtrn2q_f64(t0, t2)),
            vreinterpretq_f32_f64(vtrn2q_f64(t1, t3)),
        ];
        let z0 = vzip1q_f32(r4, r5);
        let z1 = vzip2q_f32(r4, r5);
        let pairs = [
            vget_low_f32(z0),
            vget_high_f32(z0),
            vget_low_f32(z1),
            vget_high_f32(z1),
        ];
        let d = dst.add(kk * MR);
        for j in 0..4 {
            vst1q_f32(d.add(j * MR), c[j]);
            vst1_f32(d.add(j * MR + 4), pairs[j]);
        }
        kk += 4;
    }
}

/// All panels of `b` over one packed block of `rows` rows.
///
/// Caller guarantees: NEON; `ap` holds `rows.div_ceil(MR)` strips of `k*MR` values and `c`
/// points to `rows` writable rows of `b.n()` values at stride `ldc`.
#[target_feature(enable = "neon")]
unsafe fn block<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k = b.k();
    each_panel_strip(rows, b, |p, s, r, cols| {
        // SAFETY: strip `s` exists in `ap`; its rows s*MR .. s*MR + r are < rows and
        // columns p*NR .. p*NR + cols are < n, inside `c`.
        tile::<ACT, ACC>(
            k,
            ap.add(s * k * MR),
            b.panel(p).as_ptr(),
            b.panel_bias(p).as_ptr(),
            c.add(s * MR * ldc + p * NR),
            ldc,
            r,
            cols,
        );
    });
}

/// Calls `tile(p, s, rows, cols)` for every [`NR`]-wide panel `p` of `b` (`cols`: its
/// columns) and every strip `s` of [`MR`] rows of a block of `rows` rows (`rows` here: the
/// strip's), panels outermost so a panel stays in L1 while the block's strips pass.
#[inline(always)]
fn each_panel_strip(rows: usize, b: &PackedB, mut tile: impl FnMut(usize, usize, usize, usize)) {
    for p in 0..b.panels() {
        let cols = NR.min(b.n() - p * NR);
        for s in 0..rows.div_ceil(MR) {
            tile(p, s, MR.min(rows - s * MR), cols);
        }
    }
}

/// One packed strip (MR rows) x one panel (16 columns):
/// `C[r][0..cols] (=|+=) act(sum_k A[r][k] B[k][..] + bias)` for `r < rows`.
///
/// Caller guarantees: NEON; `a` points to `k*MR` values, `b` to `k*NR` values, `bias` to
/// `NR` values and `c` to `rows` writable rows of `cols` values at stride `ldc`.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile<const ACT: u8, const ACC: bool>(
    k: usize,
    a: *const f32,
    b: *const f32,
    bias: *const f32,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[vdupq_n_f32(0.0); 4]; MR];
    let (mut ap, mut bp) = (a, b);
    // One rank-1 update of the tile from `ap` (MR values) and `bp` (NR values).
    macro_rules! step {
        ($ap:expr, $bp:expr) => {{
            let bv = vld1q_f32_x4($bp);
            let bs = [bv.0, bv.1, bv.2, bv.3];
            let a03 = vld1q_f32($ap);
            let a45 = vld1_f32($ap.add(4));
            for (j, bj) in bs.iter().enumerate() {
                acc[0][j] = vfmaq_laneq_f32::<0>(acc[0][j], *bj, a03);
                acc[1][j] = vfmaq_laneq_f32::<1>(acc[1][j], *bj, a03);
                acc[2][j] = vfmaq_laneq_f32::<2>(acc[2][j], *bj, a03);
                acc[3][j] = vfmaq_laneq_f32::<3>(acc[3][j], *bj, a03);
                acc[4][j] = vfmaq_lane_f32::<0>(acc[4][j], *bj, a45);
                acc[5][j] = vfmaq_lane_f32::<1>(acc[5][j], *bj, a45);
            }
        }};
    }
    // Unrolled by 4 (the same order of operations as one step at a time).
    let mut kk = 0;
    while kk + 4 <= k {
        step!(ap, bp);
        step!(ap.add(MR), bp.add(NR));
        step!(ap.add(2 * MR), bp.add(2 * NR));
        step!(ap.add(3 * MR), bp.add(3 * NR));
        ap = ap.add(4 * MR);
        bp = bp.add(4 * NR);
        kk += 4;
    }
    while kk < k {
        step!(ap, bp);
        ap = ap.add(MR);
        bp = bp.add(NR);
        kk += 1;
    }
    let bv = vld1q_f32_x4(bias);
    let bias = [bv.0, bv.1, bv.2, bv.3];
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let mut v = [vdupq_n_f32(0.0); 4];
        for j in 0..4 {
            v[j] = act::<ACT>(vaddq_f32(accr[j], bias[j]));
        }
        store_row::<ACC>(c.add(r * ldc), v, cols);
    }
}

/// The epilogue's activation on 4 values of a tile row.
#[target_feature(enable = "neon")]
#[inline]
fn act<const ACT: u8>(v: float32x4_t) -> float32x4_t {
    if ACT == ACT_RELU {
        vmaxq_f32(v, vdupq_n_f32(0.0))
    } else if ACT == ACT_GELU {
        gelu4(v)
    } else {
        v
    }
}

/// The integer product (`b` quantised): `A` quantised per row into strips, then
/// [`block_q`] per block of rows.
fn gemm_int_neon(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k();
    let k2 = k.div_ceil(2);
    let strip = MR * 2 * k2;
    let mc = ((A_BLOCK_Q / (2 * k2).max(1)) / MR * MR).max(MIN_BLOCK_ROWS);
    let padded = mc.min(m.div_ceil(MR) * MR);
    let (mut qa, mut sa) = QPACK.take();
    if qa.len() < padded / MR * strip {
        qa.resize(padded / MR * strip, 0);
    }
    if sa.len() < padded {
        sa.resize(padded, 0.0);
    }
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        // The rows of a last part strip past `rows` keep what the buffer held: the tile
        // never stores their sums (as on x86).
        for (r, sr) in sa[..rows].iter_mut().enumerate() {
            // Row r's pair kp goes to qa[(r / MR) * strip + kp * 2 * MR + 2 * (r % MR) ..][..2]
            // (with k = 0 there is nothing to write, and `qa` may be empty).
            let out = qa
                .get_mut((r / MR) * strip + 2 * (r % MR)..)
                .unwrap_or(&mut []);
            let i = m0 + r;
            *sr = quantize_row_for(b, &a[i * lda..i * lda + k], out, 2 * MR);
        }
        let cblk = &mut c[m0 * ldc..];
        // SAFETY: `qa` holds rows.div_ceil(MR) strips of `strip` values and `sa` as many
        // scales; `Ops::gemm` checked that `c` holds `m` rows of `b.n()` values at stride
        // `ldc`, so `cblk` holds `rows` of them, and that `b` is quantised; this function is
        // only reachable through `neon_ops`, which confirmed NEON.
        unsafe {
            let (ap, sp, cp) = (qa.as_ptr(), sa.as_ptr(), cblk.as_mut_ptr());
            per_epilogue!(epi, block_q, [], (rows, ap, sp, b, cp, ldc))
        }
        m0 += rows;
    }
    QPACK.set((qa, sa));
}

/// All integer panels of `b` over one quantised block of `rows` rows.
///
/// Caller guarantees: NEON; `ap` holds `rows.div_ceil(MR)` strips of `MR*2*k2` values,
/// `sa` as many row scales, `c` points to `rows` writable rows of `b.n()` values at stride
/// `ldc`, and `b` is quantised.
#[target_feature(enable = "neon")]
unsafe fn block_q<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i16,
    sa: *const f32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k2 = b.k().div_ceil(2);
    each_panel_strip(rows, b, |p, s, r, cols| {
        let (bias, scale) = (b.panel_bias(p).as_ptr(), b.q_scale(p).as_ptr());
        // SAFETY: strip `s` exists in `ap` (and its scales in `sa`); its rows
        // s*MR .. s*MR + r are < rows and columns p*NR .. p*NR + cols are < n, inside `c`.
        tile_q::<ACT, ACC>(
            k2,
            ap.add(s * MR * 2 * k2),
            b.q_panel(p).as_ptr(),
            [sa.add(s * MR), scale, bias],
            c.add(s * MR * ldc + p * NR),
            ldc,
            r,
            cols,
        );
    });
}

/// One quantised strip (MR rows) x one integer panel (16 columns): exact i32 sums, then
/// `C[r][..cols] (=|+=) act(sum * (row scale * column scale) + bias)` for `r < rows`.
///
/// Caller guarantees: NEON; `a` points to `k2*2*MR` values, `b` to `k2*2*NR`, `[sa, scale,
/// bias]` to `MR`, `NR` and `NR` values, `c` to `rows` writable rows of `cols` values at
/// stride `ldc`.
#[target_feature(enable = "neon")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_q<const ACT: u8, const ACC: bool>(
    k2: usize,
    a: *const i16,
    b: *const i16,
    [sa, scale, bias]: [*const f32; 3],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let mut acc = [[vdupq_n_s32(0); 4]; MR];
    let (mut ap, mut bp) = (a, b);
    for _ in 0..k2 {
        // Columns 0-7 and 8-15: `.0` the weights of row 2kp, `.1` of row 2kp+1.
        let lo = vld2q_s16(bp);
        let hi = vld2q_s16(bp.add(16));
        // (a[2kp], a[2kp+1]) of rows 0-3, then of rows 4-5.
        let a03 = vld1q_s16(ap);
        let a45 = vld1_s16(ap.add(8));
        macro_rules! row {
            ($r:literal, $mla:ident, $mlah:ident, $av:expr, $l0:literal, $l1:literal) => {
                acc[$r][0] = $mla::<$l0>(acc[$r][0], vget_low_s16(lo.0), $av);
                acc[$r][0] = $mla::<$l1>(acc[$r][0], vget_low_s16(lo.1), $av);
                acc[$r][1] = $mlah::<$l0>(acc[$r][1], lo.0, $av);
                acc[$r][1] = $mlah::<$l1>(acc[$r][1], lo.1, $av);
                acc[$r][2] = $mla::<$l0>(acc[$r][2], vget_low_s16(hi.0), $av);
                acc[$r][2] = $mla::<$l1>(acc[$r][2], vget_low_s16(hi.1), $av);
                acc[$r][3] = $mlah::<$l0>(acc[$r][3], hi.0, $av);
                acc[$r][3] = $mlah::<$l1>(acc[$r][3], hi.1, $av);
            };
        }
        row!(0, vmlal_laneq_s16, vmlal_high_laneq_s16, a03, 0, 1);
        row!(1, vmlal_laneq_s16, vmlal_high_laneq_s16, a03, 2, 3);
        row!(2, vmlal_laneq_s16, vmlal_high_laneq_s16, a03, 4, 5);
        row!(3, vmlal_laneq_s16, vmlal_high_laneq_s16, a03, 6, 7);
        row!(4, vmlal_lane_s16, vmlal_high_lane_s16, a45, 0, 1);
        row!(5, vmlal_lane_s16, vmlal_high_lane_s16, a45, 2, 3);
        ap = ap.add(2 * MR);
        bp = bp.add(2 * NR);
    }
    int_epilogue::<ACT, ACC>(&acc, [sa, scale, bias], c, ldc, rows, cols);
}

/// The integer tiles' epilogue: for each of the first `rows` rows of exact i32 sums,
/// `C[r][..cols] (=|+=) act(sum * (row scale * column scale) + bias)` in the reference's
/// order of f32 operations.
///
/// Caller guarantees: NEON; `[sa, scale, bias]` point to `rows`, [`NR`] and [`NR`] values,
/// `c` to `rows` writable rows of `cols` values at stride `ldc`.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn int_epilogue<const ACT: u8, const ACC: bool>(
    acc: &[[int32x4_t; 4]; MR],
    [sa, scale, bias]: [*const f32; 3],
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let sc = vld1q_f32_x4(scale);
    let sc = [sc.0, sc.1, sc.2, sc.3];
    let bv = vld1q_f32_x4(bias);
    let bias = [bv.0, bv.1, bv.2, bv.3];
    for (r, accr) in acc.iter().enumerate().take(rows) {
        let s = *sa.add(r);
        let mut v = [vdupq_n_f32(0.0); 4];
        for j in 0..4 {
            // The reference's `(sum as f32).mul_add(sa * scale, bias)`: one fused rounding.
            let f = vcvtq_f32_s32(accr[j]);
            v[j] = act::<ACT>(vfmaq_f32(bias[j], f, vmulq_n_f32(sc[j], s)));
        }
        store_row::<ACC>(c.add(r * ldc), v, cols);
    }
}

/// The int8 x int8 product on `sdot` (see the module doc); 16-bit weights go to
/// [`gemm_int_neon`]. Blocks of `A` rows become strips of `u - 128` codes, then
/// [`block_dot`] per block.
fn gemm_int_dot(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    if !b.is_int8() {
        return gemm_int_neon(m, a, lda, b, c, ldc, epi);
    }
    let k = b.k();
    let k4 = k.div_ceil(4);
    let strip = MR * 4 * k4;
    let mc = ((A_BLOCK_Q8 / (4 * k4).max(1)) / MR * MR).max(MIN_BLOCK_ROWS);
    let padded = mc.min(m.div_ceil(MR) * MR);
    let (mut qa, mut sa, mut za, mut row) = Q8PACK.take();
    if qa.len() < padded / MR * strip {
        qa.resize(padded / MR * strip, 0);
    }
    if sa.len() < padded {
        sa.resize(padded, 0.0);
        za.resize(padded, 0);
    }
    // One row's codes, padded with 128 (0 once shifted) to whole groups of 4.
    row.clear();
    row.resize(4 * k4, 128);
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        // The rows of a last part strip past `rows` keep what the buffer held: the tile
        // never stores their sums.
        for r in 0..rows {
            let i = m0 + r;
            // SAFETY: `neon_ops` confirmed NEON before handing out this function; `row`
            // holds at least k codes.
            let (s, z) = unsafe { quantize_row_u8_neon(&a[i * lda..i * lda + k], &mut row) };
            sa[r] = s;
            za[r] = z;
            let base = (r / MR) * strip + 4 * (r % MR);
            for (kq, quad) in row.chunks_exact(4).enumerate() {
                let dst = &mut qa[base + kq * 4 * MR..][..4];
                for (d, u) in dst.iter_mut().zip(quad) {
                    *d = (*u ^ 0x80) as i8;
                }
            }
        }
        let cblk = &mut c[m0 * ldc..];
        // SAFETY: `qa` holds rows.div_ceil(MR) strips of `strip` codes and `sa`, `za` as
        // many scales and zero points; `Ops::gemm` checked that `c` holds `m` rows of
        // `b.n()` values at stride `ldc` and that `b` is quantised (int8 here); this
        // function is only reachable through `neon_ops`, which confirmed NEON and DotProd.
        unsafe {
            let (ap, sp, zp, cp) = (qa.as_ptr(), sa.as_ptr(), za.as_ptr(), cblk.as_mut_ptr());
            per_epilogue!(epi, block_dot, [], (rows, ap, sp, zp, b, cp, ldc))
        }
        m0 += rows;
    }
    Q8PACK.set((qa, sa, za, row));
}

/// All int8 panels of `b` over one block of `rows` rows of `sdot` codes.
///
/// Caller guarantees: NEON and DotProd; `ap` holds `rows.div_ceil(MR)` strips of
/// `MR*4*k4` codes, `sa` and `zp` as many row scales and zero points, `c` points to `rows`
/// writable rows of `b.n()` values at stride `ldc`, and `b` is int8.
#[target_feature(enable = "neon,dotprod")]
unsafe fn block_dot<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const i8,
    sa: *const f32,
    zp: *const i32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let k4 = b.k().div_ceil(4);
    each_panel_strip(rows, b, |p, s, r, cols| {
        // SAFETY: strip `s` exists in `ap` (and its scales and zero points in `sa`, `zp`);
        // its rows s*MR .. s*MR + r are < rows and columns p*NR .. p*NR + cols are < n,
        // inside `c`; panel p exists.
        tile_dot::<ACT, ACC>(
            k4,
            ap.add(s * MR * 4 * k4),
            b,
            p,
            (sa.add(s * MR), zp.add(s * MR)),
            c.add(s * MR * ldc + p * NR),
            ldc,
            r,
            cols,
        );
    });
}

/// `acc += ` the 4 products of each i32 lane of `b` (4 weights of one column) with the 4
/// codes in lane `L` of `a` (one row of `A`): `sdot` by element, as inline assembly while
/// its intrinsic is unstable.
///
/// Caller guarantees: the CPU has DotProd.
#[inline(always)]
unsafe fn sdot_lane<const L: usize>(acc: int32x4_t, b: int8x16_t, a: int8x16_t) -> int32x4_t {
    let mut acc = acc;
    macro_rules! sdot {
        ($lane:literal) => {
            asm!(
                concat!("sdot {0:v}.4s, {1:v}.16b, {2:v}.4b[", $lane, "]"),
                inout(vreg) acc,
                in(vreg) b,
                in(vreg) a,
                options(pure, nomem, nostack, preserves_flags)
            )
        };
    }
    match L {
        0 => sdot!("0"),
        1 => sdot!("1"),
        2 => sdot!("2"),
        _ => sdot!("3"),
    }
    acc
}

/// One strip of `sdot` codes ([`MR`] rows) x one int8 panel (16 columns): exact i32 sums
/// (started at `(128 - zp) x column sum`), then `C[r][..cols] (=|+=) act(sum * (row scale
/// * column scale) + bias)` for `r < rows`, as [`tile_q`].
///
/// Caller guarantees: NEON and DotProd; `a` points to `k4*4*MR` codes, `b` is int8 with
/// panel `p`, `(sa, zp)` to [`MR`] scales and zero points, `c` to `rows` writable rows of
/// `cols` values at stride `ldc`.
#[target_feature(enable = "neon,dotprod")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn tile_dot<const ACT: u8, const ACC: bool>(
    k4: usize,
    a: *const i8,
    b: &PackedB,
    p: usize,
    (sa, zp): (*const f32, *const i32),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let cs = b.q_colsum(p).as_ptr();
    let colsum = [
        vld1q_s32(cs),
        vld1q_s32(cs.add(4)),
        vld1q_s32(cs.add(8)),
        vld1q_s32(cs.add(12)),
    ];
    // Wrapping products, as the sums are: the exact value is what fits in i32 at the end.
    let mut acc: [[int32x4_t; 4]; MR] = std::array::from_fn(|r| {
        let z = 128i32.wrapping_sub(zp.add(r).read());
        std::array::from_fn(|j| vmulq_n_s32(colsum[j], z))
    });
    let (mut ap, mut bp) = (a, b.q8_panel(p).as_ptr());
    for _ in 0..k4 {
        // Columns 0-3, 4-7, 8-11, 12-15: 4 weights (rows 4kq..4kq+4) per column.
        let bv = [
            vld1q_s8(bp),
            vld1q_s8(bp.add(16)),
            vld1q_s8(bp.add(32)),
            vld1q_s8(bp.add(48)),
        ];
        // 4 codes of rows 0-3, then of rows 4-5 (the upper half unused).
        let a03 = vld1q_s8(ap);
        let a45 = vcombine_s8(vld1_s8(ap.add(16)), vdup_n_s8(0));
        for j in 0..4 {
            acc[0][j] = sdot_lane::<0>(acc[0][j], bv[j], a03);
            acc[1][j] = sdot_lane::<1>(acc[1][j], bv[j], a03);
            acc[2][j] = sdot_lane::<2>(acc[2][j], bv[j], a03);
            acc[3][j] = sdot_lane::<3>(acc[3][j], bv[j], a03);
            acc[4][j] = sdot_lane::<0>(acc[4][j], bv[j], a45);
            acc[5][j] = sdot_lane::<1>(acc[5][j], bv[j], a45);
        }
        ap = ap.add(4 * MR);
        bp = bp.add(4 * NR);
    }
    let (scale, bias) = (b.q_scale(p).as_ptr(), b.panel_bias(p).as_ptr());
    int_epilogue::<ACT, ACC>(&acc, [sa, scale, bias], c, ldc, rows, cols);
}

/// [`super::quantize_row_u8`] on NEON: the row's smallest and largest values (NaN
/// ignored, as the reference's `min`/`max` do: `fminnm`/`fmaxnm`), [`Act8::new`]'s
/// parameters, then `clamp(round_ties_even(a * inv) + zp, 0, 255)` 16 values at a time
/// (`fcvtns` rounds to nearest even and saturates; a NaN product gives code 0 as in the
/// reference). The same codes as the reference for every input (tested); returns the scale
/// and the zero point.
///
/// Caller guarantees: NEON; `out` holds at least `a.len()` codes.
#[target_feature(enable = "neon")]
unsafe fn quantize_row_u8_neon(a: &[f32], out: &mut [u8]) -> (f32, i32) {
    let n = a.len();
    let ap = a.as_ptr();
    let (mut lo, mut hi) = (vdupq_n_f32(0.0), vdupq_n_f32(0.0));
    let mut j = 0;
    while j + 4 <= n {
        let v = vld1q_f32(ap.add(j));
        lo = vminnmq_f32(lo, v);
        hi = vmaxnmq_f32(hi, v);
        j += 4;
    }
    let (mut l, mut h) = (vminnmvq_f32(lo), vmaxnmvq_f32(hi));
    for v in &a[j..] {
        l = l.min(*v);
        h = h.max(*v);
    }
    let p = Act8::new(l, h);
    let (inv, zp) = (vdupq_n_f32(p.inv), vdupq_n_s32(p.zp as i32));
    let (zero, top) = (vdupq_n_s32(0), vdupq_n_s32(ACT8_MAX));
    let code4 = |v: float32x4_t| {
        // `fcvtns` saturates an infinite product (a subnormal row's `inv` overflows), and
        // so must the addition, as the reference's f32 sum does.
        let x = vmulq_f32(v, inv);
        let q = vqaddq_s32(vcvtnq_s32_f32(x), zp);
        let q = vminq_s32(vmaxq_s32(q, zero), top);
        // NaN products (a NaN, or 0 x an infinite `inv`) to 0, as the reference's cast.
        vandq_s32(q, vreinterpretq_s32_u32(vceqq_f32(x, x)))
    };
    let op = out.as_mut_ptr();
    let mut j = 0;
    while j + 16 <= n {
        let q: [int32x4_t; 4] = std::array::from_fn(|i| code4(vld1q_f32(ap.add(j + 4 * i))));
        let lo16 = vcombine_s16(vqmovn_s32(q[0]), vqmovn_s32(q[1]));
        let hi16 = vcombine_s16(vqmovn_s32(q[2]), vqmovn_s32(q[3]));
        vst1q_u8(op.add(j), vcombine_u8(vqmovun_s16(lo16), vqmovun_s16(hi16)));
        j += 16;
    }
    for (o, v) in out[j..n].iter_mut().zip(&a[j..]) {
        *o = p.code(*v);
    }
    (p.scale, p.zp as i32)
}

/// Stores (or, with `ACC`, adds) the first `cols` of the 16 values `v` at `cr`.
///
/// Caller guarantees: NEON; `cr` points to `cols` writable values.
#[target_feature(enable = "neon")]
#[inline]
unsafe fn store_row<const ACC: bool>(cr: *mut f32, v: [float32x4_t; 4], cols: usize) {
    if cols == NR {
        for (j, vj) in v.iter().enumerate() {
            let d = cr.add(4 * j);
            let out = if ACC {
                vaddq_f32(*vj, vld1q_f32(d))
            } else {
                *vj
            };
            vst1q_f32(d, out);
        }
    } else {
        let mut tmp = [0.0f32; NR];
        vst1q_f32_x4(tmp.as_mut_ptr(), float32x4x4_t(v[0], v[1], v[2], v[3]));
        for (j, t) in tmp.iter().enumerate().take(cols) {
            let dst = cr.add(j);
            *dst = if ACC { *dst + t } else { *t };
        }
    }
}

/// e^x for each lane (inputs clamped to [-87, 88]); see the x86 `exp8`.
#[target_feature(enable = "neon")]
#[inline]
fn exp4(x: float32x4_t) -> float32x4_t {
    const LOG2E: f32 = std::f32::consts::LOG2_E;
    const LN2_HI: f32 = 0.693_359_4;
    const LN2_LO: f32 = -2.121_944_4e-4;
    let x = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-87.0)), vdupq_n_f32(88.0));
    let n = vrndnq_f32(vmulq_f32(x, vdupq_n_f32(LOG2E)));
    let r = vfmsq_f32(x, n, vdupq_n_f32(LN2_HI));
    let r = vfmsq_f32(r, n, vdupq_n_f32(LN2_LO));
    // Taylor series of e^r to degree 7; |r| <= ln2/2 gives truncation error ~5e-9.
    const C: [f32; 7] = [
        1.0 / 720.0,
        1.0 / 120.0,
        1.0 / 24.0,
        1.0 / 6.0,
        0.5,
        1.0,
        1.0,
    ];
    let mut p = vdupq_n_f32(1.0 / 5040.0);
    for c in C {
        p = vfmaq_f32(vdupq_n_f32(c), p, r);
    }
    let e = vshlq_n_s32::<23>(vaddq_s32(vcvtnq_s32_f32(n), vdupq_n_s32(127)));
    vmulq_f32(p, vreinterpretq_f32_s32(e))
}

/// Exact-erf GELU for each lane: `x/2 (1 + erf(x/sqrt 2))` with
/// `erf(x/sqrt 2) = xc P(xc^2) / Q(xc^2)`, `xc = clamp(x, ±4 sqrt 2)`; the coefficients of
/// the x86 `gelu8` (`examples/fit_erf.rs`). `1/Q` by `frecpe` (8 bits) and two Newton
/// steps (`frecps`), to f32 precision without a division.
#[target_feature(enable = "neon")]
#[inline]
fn gelu4(x: float32x4_t) -> float32x4_t {
    use super::{GELU_P as P, GELU_Q as Q};
    let lim = 4.0 * std::f32::consts::SQRT_2;
    let xc = vminq_f32(vmaxq_f32(x, vdupq_n_f32(-lim)), vdupq_n_f32(lim));
    let u = vmulq_f32(xc, xc);
    let mut p = vdupq_n_f32(P[6]);
    for c in P[..6].iter().rev() {
        p = vfmaq_f32(vdupq_n_f32(*c), p, u);
    }
    let mut q = vdupq_n_f32(Q[3]);
    for c in Q[..3].iter().rev() {
        q = vfmaq_f32(vdupq_n_f32(*c), q, u);
    }
    q = vfmaq_f32(vdupq_n_f32(1.0), q, u);
    let mut r = vrecpeq_f32(q);
    r = vmulq_f32(r, vrecpsq_f32(q, r));
    r = vmulq_f32(r, vrecpsq_f32(q, r));
    let e = vmulq_f32(vmulq_f32(xc, p), r);
    let half_x = vmulq_f32(x, vdupq_n_f32(0.5));
    vfmaq_f32(half_x, half_x, e)
}

#[allow(clippy::too_many_arguments)]
fn layer_norm_neon(
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
        let or = &mut out[r * ldo..r * ldo + dim];
        // SAFETY: reachable only through `neon_ops` (NEON confirmed); the slices are
        // exactly `dim` long (gamma/beta checked >= dim by `Ops::layer_norm`).
        unsafe { layer_norm_row(xr, &gamma[..dim], &beta[..dim], eps, or) }
    }
}

#[target_feature(enable = "neon")]
fn layer_norm_row(x: &[f32], g: &[f32], b: &[f32], eps: f32, out: &mut [f32]) {
    let dim = x.len();
    let body = dim / 4 * 4;
    let mut s = vdupq_n_f32(0.0);
    for ch in x[..body].chunks_exact(4) {
        // SAFETY: `ch` has exactly 4 values.
        s = vaddq_f32(s, unsafe { vld1q_f32(ch.as_ptr()) });
    }
    let mut sum = vaddvq_f32(s);
    for v in &x[body..] {
        sum += v;
    }
    let mean = sum / dim as f32;
    let mv = vdupq_n_f32(mean);
    let mut q = vdupq_n_f32(0.0);
    for ch in x[..body].chunks_exact(4) {
        // SAFETY: `ch` has exactly 4 values.
        let d = vsubq_f32(unsafe { vld1q_f32(ch.as_ptr()) }, mv);
        q = vfmaq_f32(q, d, d);
    }
    let mut var = vaddvq_f32(q);
    for v in &x[body..] {
        var += (v - mean) * (v - mean);
    }
    let rstd = 1.0 / (var / dim as f32 + eps).sqrt();
    let rv = vdupq_n_f32(rstd);
    for j in (0..body).step_by(4) {
        // SAFETY: j + 4 <= body <= dim = len of x, g, b and out.
        unsafe {
            let d = vmulq_f32(vsubq_f32(vld1q_f32(x.as_ptr().add(j)), mv), rv);
            let y = vfmaq_f32(
                vld1q_f32(b.as_ptr().add(j)),
                d,
                vld1q_f32(g.as_ptr().add(j)),
            );
            vst1q_f32(out.as_mut_ptr().add(j), y);
        }
    }
    for j in body..dim {
        out[j] = (x[j] - mean) * rstd * g[j] + b[j];
    }
}

fn softmax_neon(rows: usize, n: usize, x: &mut [f32], ld: usize, scale: f32) {
    for r in 0..rows {
        // SAFETY: reachable only through `neon_ops` (NEON confirmed).
        unsafe { softmax_row(&mut x[r * ld..r * ld + n], scale) }
    }
}

#[target_feature(enable = "neon")]
fn softmax_row(x: &mut [f32], scale: f32) {
    let n = x.len();
    let body = n / 4 * 4;
    let mut tail = [f32::NEG_INFINITY; 4];
    tail[..n - body].copy_from_slice(&x[body..]);
    // SAFETY (loads/stores below): every chunk / `tail` has exactly 4 values.
    let tv = unsafe { vld1q_f32(tail.as_ptr()) };
    let mut mx = tv;
    for ch in x[..body].chunks_exact(4) {
        mx = vmaxq_f32(mx, unsafe { vld1q_f32(ch.as_ptr()) });
    }
    let max = vdupq_n_f32(vmaxvq_f32(mx));
    let sc = vdupq_n_f32(scale);
    let mut s = vdupq_n_f32(0.0);
    for ch in x[..body].chunks_exact_mut(4) {
        let e = exp4(vmulq_f32(
            vsubq_f32(unsafe { vld1q_f32(ch.as_ptr()) }, max),
            sc,
        ));
        s = vaddq_f32(s, e);
        unsafe { vst1q_f32(ch.as_mut_ptr(), e) };
    }
    let te = exp4(vmulq_f32(vsubq_f32(tv, max), sc));
    unsafe { vst1q_f32(tail.as_mut_ptr(), te) };
    let mut sum = vaddvq_f32(s);
    for t in &tail[..n - body] {
        sum += t;
    }
    let inv = vdupq_n_f32(1.0 / sum);
    for ch in x[..body].chunks_exact_mut(4) {
        let v = vmulq_f32(unsafe { vld1q_f32(ch.as_ptr()) }, inv);
        unsafe { vst1q_f32(ch.as_mut_ptr(), v) };
    }
    let inv = 1.0 / sum;
    for (d, t) in x[body..].iter_mut().zip(&tail) {
        *d = t * inv;
    }
}

/// Independent FMA chains for [`fma_probe_neon`]: Neoverse N1 (Graviton2) issues two
/// 128-bit FMAs per cycle, V1/V2 (Graviton3/4) four, each with a latency of 4 cycles, so
/// up to 16 chains are needed.
const PROBE_CHAINS: usize = 16;

fn fma_probe_neon(iters: u64) -> (f32, u64) {
    // SAFETY: reachable only through `neon_ops` (NEON confirmed).
    let sum = unsafe { fma_chains(iters) };
    (sum, iters * PROBE_CHAINS as u64 * 4 * 2)
}

/// `acc = acc * m + a` on [`PROBE_CHAINS`] registers of 4 lanes, `iters` times.
#[target_feature(enable = "neon")]
fn fma_chains(iters: u64) -> f32 {
    let m = vdupq_n_f32(std::hint::black_box(0.999_999));
    let a = vdupq_n_f32(std::hint::black_box(1e-7));
    let mut acc = [vdupq_n_f32(0.0); PROBE_CHAINS];
    for (i, v) in acc.iter_mut().enumerate() {
        *v = vdupq_n_f32(i as f32 * 0.01);
    }
    for _ in 0..iters {
        for v in acc.iter_mut() {
            *v = vfmaq_f32(a, *v, m);
        }
    }
    let mut s = vdupq_n_f32(0.0);
    for v in acc {
        s = vaddq_f32(s, v);
    }
    vaddvq_f32(s)
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Weights};
    use super::super::{scalar, Epilogue, PackedB};
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn gemm_matches_scalar_on_odd_shapes() {
        let Some(ops) = neon_ops() else { return };
        check::gemm_odd_shapes(&ops, Weights::F32);
    }

    #[test]
    fn attention_matches_definition() {
        let Some(ops) = neon_ops() else { return };
        check::attention_shapes(&ops);
    }

    /// Full and partial strips, `k` not a multiple of the packing's 4, several row blocks.
    #[test]
    fn gemm_large_k_blocks_rows() {
        let Some(ops) = neon_ops() else { return };
        check::gemm(
            &ops,
            300,
            40,
            1100,
            1101,
            40,
            Epilogue::RELU,
            5,
            Weights::F32,
        );
        check::gemm(&ops, 13, 33, 6, 6, 35, Epilogue::GELU, 6, Weights::F32);
    }

    /// The NEON integer product gives the scalar reference's results bit for bit (within
    /// the GELU's tolerance with that epilogue): odd shapes, a long reduction, both weights.
    #[test]
    fn gemm_int8_equals_scalar() {
        let Some(ops) = neon_ops() else { return };
        check::gemm_odd_shapes(&ops, Weights::Int8);
        check::gemm_odd_shapes(&ops, Weights::Int16);
        check::gemm(
            &ops,
            70,
            40,
            3216,
            3216,
            40,
            Epilogue::RELU,
            7,
            Weights::Int8,
        );
        check::gemm(
            &ops,
            130,
            576,
            192,
            192,
            576,
            Epilogue::RESIDUAL,
            8,
            Weights::Int16,
        );
        let a = check::lcg(1, 5 * 33, 1.0);
        let mut b = PackedB::pack_nk(&check::lcg(2, 20 * 33, 1.0), 20, 33, 33, None);
        b.quantize_int8();
        for epi in [Epilogue::PLAIN, Epilogue::RELU, Epilogue::RESIDUAL] {
            let (mut c0, mut c1) = (vec![0.5; 5 * 20], vec![0.5; 5 * 20]);
            scalar::ops().gemm(5, &a, 33, &b, &mut c0, 20, epi);
            ops.gemm(5, &a, 33, &b, &mut c1, 20, epi);
            let bits = |c: &[f32]| c.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(&c0), bits(&c1), "{epi:?}");
        }
    }

    /// The table with the `smlal` integer product whatever the CPU (the int8 path of CPUs
    /// without DotProd), so both are tested under a qemu CPU that has it.
    fn smlal_ops() -> Option<Ops> {
        neon_ops().map(|o| Ops {
            gemm_int8: gemm_int_neon,
            ..o
        })
    }

    /// Where the CPU has DotProd, int8 runs on `sdot` (the test says it skips otherwise,
    /// and fails where `CAI_TEST_REQUIRE` names `dotprod`, see [`check::available`]); both
    /// int8 paths give the scalar reference's results.
    #[test]
    fn gemm_int8_both_paths_equal_scalar() {
        let (Some(ops), Some(smlal)) = (neon_ops(), smlal_ops()) else {
            return;
        };
        let dot = gemm_int_dot as *const () as usize;
        assert_eq!(ops.gemm_int8 as *const () as usize == dot, has_dotprod());
        let mut tables = vec![&smlal];
        if check::available("dotprod", has_dotprod()) {
            tables.push(&ops);
        }
        for o in tables {
            check::gemm_odd_shapes(o, Weights::Int8);
            check::gemm(o, 131, 576, 192, 192, 576, Epilogue::GELU, 9, Weights::Int8);
            check::gemm(o, 70, 40, 3216, 3216, 40, Epilogue::RELU, 7, Weights::Int8);
        }
    }

    /// The NEON u8 quantiser gives the reference's codes, scale and zero point on every
    /// kind of [`check::special_row`] (NaN, infinities, signed zeros, subnormals, ranges
    /// that overflow) and length.
    #[test]
    fn quantize_row_u8_equals_reference() {
        for len in [0usize, 1, 3, 4, 15, 16, 17, 31, 63, 64, 65, 192, 768] {
            for kind in 0..check::SPECIAL_ROWS {
                let a = check::special_row(len, kind);
                let (mut want, mut got) = (vec![7u8; len], vec![7u8; len]);
                let w = super::super::quantize_row_u8(&a, &mut want);
                // SAFETY: the test runs only where NEON was confirmed.
                let g = unsafe { quantize_row_u8_neon(&a, &mut got) };
                assert_eq!(want, got, "len {len} kind {kind}");
                assert_eq!(
                    (w.0.to_bits(), w.1),
                    (g.0.to_bits(), g.1),
                    "len {len} kind {kind}"
                );
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn quantize_row_u8_prop(v in proptest::collection::vec(-1e4f32..1e4, 0..200), shift in -100f32..100.0) {
            if neon_ops().is_some() {
                let a: Vec<f32> = v.iter().map(|x| x + shift).collect();
                let (mut want, mut got) = (vec![0u8; a.len()], vec![0u8; a.len()]);
                let w = super::super::quantize_row_u8(&a, &mut want);
                // SAFETY: NEON confirmed.
                let g = unsafe { quantize_row_u8_neon(&a, &mut got) };
                prop_assert_eq!(want, got);
                prop_assert_eq!((w.0.to_bits(), w.1), (g.0.to_bits(), g.1));
            }
        }

        #[test]
        fn gemm_int8_smlal_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000) {
            if let Some(ops) = smlal_ops() {
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, check::EPIS[e], seed, Weights::Int8);
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn gemm_int_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000, int16 in proptest::bool::ANY) {
            if let Some(ops) = neon_ops() {
                let w = if int16 { Weights::Int16 } else { Weights::Int8 };
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, check::EPIS[e], seed, w);
            }
        }
    }

    #[test]
    fn softmax_matches_scalar_on_odd_shapes() {
        let Some(ops) = neon_ops() else { return };
        check::softmax_odd_shapes(&ops);
    }

    #[test]
    fn layer_norm_matches_scalar_on_odd_shapes() {
        let Some(ops) = neon_ops() else { return };
        for dim in [1usize, 3, 4, 7, 8, 192, 197] {
            check::layer_norm(&ops, 3, dim, dim as u64);
        }
    }

    #[test]
    fn gelu_accuracy() {
        let Some(ops) = neon_ops() else { return };
        let worst = check::gelu(&ops);
        eprintln!("worst NEON gelu error / (1 + |x|) = {worst:e}");
    }

    #[test]
    fn fma_probe_counts_flops() {
        let Some(ops) = neon_ops() else { return };
        let (sum, f) = ops.fma_probe(10);
        assert!(sum.is_finite());
        assert_eq!(f, 10 * PROBE_CHAINS as u64 * 8);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn gemm_prop(m in 0usize..40, n in 0usize..50, k in 0usize..70, pad_a in 0usize..4, pad_c in 0usize..4, e in 0usize..5, seed in 0u64..1000) {
            if let Some(ops) = neon_ops() {
                check::gemm(&ops, m, n, k, k + pad_a, n + pad_c, check::EPIS[e], seed, Weights::F32);
            }
        }

        #[test]
        fn softmax_prop(rows in 1usize..5, n in 1usize..80, scale in 0.01f32..2.0, seed in 0u64..1000) {
            if let Some(ops) = neon_ops() {
                check::softmax(&ops, rows, n, scale, seed);
            }
        }

        #[test]
        fn layer_norm_prop(rows in 1usize..5, dim in 1usize..300, seed in 0u64..1000) {
            if let Some(ops) = neon_ops() {
                check::layer_norm(&ops, rows, dim, seed);
            }
        }
    }
}
