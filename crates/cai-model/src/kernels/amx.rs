//! x86-64 products on AMX tiles (Intel Sapphire Rapids and later): int8 x int8 on
//! `tdpbusd` and bf16 on `tdpbf16ps`, for the `amx` tier (the `avx512` table with these two
//! products; int16 stays on AVX-512 VNNI's `vpdpwssd`, AMX has no 16-bit product).
//!
//! One `tdpbusd` multiplies a 16 x 64 tile of u8 codes by a 64 x 16 tile of i8 weights into
//! a 16 x 16 tile of i32 sums (16,384 multiply-adds, 16 times a zmm `vpdpbusd`); `tdpbf16ps`
//! does the same with 16 x 32 bf16 pairs into f32 sums. A step of the k loop here loads two
//! strips of 16 rows of `A` and two [`NR`]-wide weight panels (four 1 KiB tiles) and does
//! four products into four accumulator tiles: 32 rows x 32 columns. The accumulators are
//! then stored to a 4 KiB buffer and the epilogue (zero point x column sum, scales, bias,
//! activation, masked store) is the AVX-512 VNNI and BF16 tiles' own, on zmm registers.
//!
//! * Weights: [`PackedB`]'s int8 quads and bf16 pairs are already AMX `B` tiles (per panel
//!   and group of rows, 16 columns x 4 bytes = one 64-byte tile row), padded with zeros to
//!   whole tiles of the reduction ([`super::TILE_K_GROUPS`]), so nothing is repacked.
//! * Activations: rows quantised to u8 by the AVX-512 quantiser (the same codes as every
//!   other tier) or rounded to bf16 by `vcvtneps2bf16`, each row padded with zeros to a multiple
//!   of 64 bytes, in blocks of whole 32-row strip pairs; the rows past `m` in the last strip
//!   pair are computed and never stored, and a last single panel is paired with itself.
//! * Exactness: the i32 sums are the exact integers of the scalar reference (integer sums
//!   in any order, wrapping; [`PackedB::quantize_int8`] keeps the exact result within i32)
//!   and the epilogue does the reference's f32 operations in its order, so int8 gives the
//!   scalar reference's bits. bf16 sums the exact products of the same bf16 values in f32
//!   in another order than `vdpbf16ps` (and, like it, flushes bf16 subnormals).
//!
//! Detection ([`int8_gemm`], [`bf16_gemm`]), once per process: AVX-512 F/BW/VL with VNNI and
//! BF16 (the rest of the tier), CPUID leaf 7's AMX-TILE and AMX-INT8 / AMX-BF16 bits, the OS
//! enabling the tile state in XCR0 (bits 17 and 18), and Linux granting this process the
//! tile data (`arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`); without any of them
//! the tier falls back to `avx512`. Stable Rust has no AMX intrinsics or target features
//! (rustc 1.95: `x86_amx_intrinsics` and `amx-tile` are unstable), so the tile instructions
//! are `asm!` with their mnemonics. Each product loads the tile configuration once per
//! call and releases the tiles when it returns ([`Tiles`]); no compiled Rust code touches
//! the tile registers (this crate enables no AMX target feature), so they keep their values
//! between the `asm!` blocks of one call.

use std::arch::asm;
use std::arch::x86_64::*;
use std::cell::Cell;
use std::sync::OnceLock;

use super::avx512::{act_int, col_masks, panel_biases, store_sums, Int8Epilogue};
use super::{Epilogue, GemmFn, PackedB, NR};

/// Rows of a tile (and of a strip of `A`).
const TR: usize = 16;
/// Bytes in a tile row.
const TB: usize = 64;
/// Rows of `A` per step of the tile loop (two strips).
const MR: usize = 2 * TR;
/// Target size (bytes) of a block of `A` rows rounded to bf16.
const A_BLOCK_BF16: usize = 128 * 1024;

/// What this CPU and OS allow: (int8 on `tdpbusd`, bf16 on `tdpbf16ps`).
fn support() -> (bool, bool) {
    static SUPPORT: OnceLock<(bool, bool)> = OnceLock::new();
    *SUPPORT.get_or_init(detect)
}

/// The AMX int8 product (int16 weights go to AVX-512 VNNI), if this CPU has AMX-INT8 with
/// the AVX-512 VNNI tier and Linux granted the tile state. Checked once here, which is what
/// makes the `unsafe` tile instructions and `#[target_feature]` calls sound.
pub fn int8_gemm() -> Option<GemmFn> {
    (support().0 && super::avx512::vnni_gemm_int8().is_some()).then_some(gemm_int8 as GemmFn)
}

/// The AMX bf16 product, if this CPU has AMX-BF16 with AVX-512 BF16 (which rounds the rows
/// of `A`) and Linux granted the tile state.
pub fn bf16_gemm() -> Option<GemmFn> {
    (support().1 && super::avx512::bf16_gemm().is_some()).then_some(gemm_bf16 as GemmFn)
}

/// Whether this CPU has AMX-TILE (whether or not the OS lets this process use it), for
/// messages.
pub fn cpu_has_amx() -> bool {
    leaf7_edx().is_some_and(|edx| edx & (1 << 24) != 0)
}

/// CPUID leaf 7 (subleaf 0) EDX, if the CPU has that leaf.
fn leaf7_edx() -> Option<u32> {
    // SAFETY: CPUID exists on every x86-64 CPU and only reads identification registers.
    #[allow(unused_unsafe)]
    let (max, edx) = unsafe { (__cpuid(0).eax, __cpuid_count(7, 0).edx) };
    (max >= 7).then_some(edx)
}

/// The checks of the module doc, in order; the tile-data request is made only when all the
/// others pass.
fn detect() -> (bool, bool) {
    let base = is_x86_feature_detected!("avx512f")
        && is_x86_feature_detected!("avx512bw")
        && is_x86_feature_detected!("avx512vl")
        && is_x86_feature_detected!("avx2")
        && is_x86_feature_detected!("fma")
        && is_x86_feature_detected!("xsave");
    let Some(edx) = leaf7_edx() else {
        return (false, false);
    };
    let (tile, bf16, int8) = (
        edx & (1 << 24) != 0,
        edx & (1 << 22) != 0,
        edx & (1 << 25) != 0,
    );
    // SAFETY: CPUID leaf 1 exists on every x86-64 CPU.
    #[allow(unused_unsafe)]
    let osxsave = unsafe { __cpuid(1) }.ecx & (1 << 27) != 0;
    if !(base && tile && osxsave && (int8 || bf16)) {
        return (false, false);
    }
    // SAFETY: XSAVE is present and the OS set CR4.OSXSAVE (CPUID.1:ECX.27), so XGETBV(0)
    // is defined.
    let xcr0 = unsafe { xcr0() };
    const TILE_STATE: u64 = (1 << 17) | (1 << 18);
    if xcr0 & TILE_STATE != TILE_STATE || !request_tile_data() {
        tracing::debug!("AMX present but its tile state is not enabled for this process");
        return (false, false);
    }
    (int8, bf16)
}

/// XCR0: which register states the OS saves.
///
/// Caller guarantees: the CPU has XSAVE and the OS enabled it (CPUID.1:ECX.OSXSAVE).
#[target_feature(enable = "xsave")]
unsafe fn xcr0() -> u64 {
    _xgetbv(0)
}

/// Asks Linux for the AMX tile data state for this process (all its threads); Linux
/// enables it lazily, per process, since 5.16, and a tile instruction without it faults.
#[cfg(target_os = "linux")]
fn request_tile_data() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl(ARCH_REQ_XCOMP_PERM, feature) takes two integers, reads and writes
    // no memory of ours, and only widens what this process may use.
    let r = unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        )
    };
    r == 0
}

/// Other systems: not wired up (no way to ask here), so no AMX.
#[cfg(not(target_os = "linux"))]
fn request_tile_data() -> bool {
    false
}

/// The tile configuration (palette 1): tiles 0-7 all 16 rows of 64 bytes. Tiles 0-3 are
/// the accumulators (strip s, panel h in tile 2s + h), 4-5 the strips of `A`, 6-7 the
/// panels of `B`.
#[repr(C, align(64))]
struct TileConfig([u8; 64]);

static CONFIG: TileConfig = {
    let mut c = [0u8; 64];
    c[0] = 1;
    let mut t = 0;
    while t < 8 {
        c[16 + 2 * t] = TB as u8;
        c[48 + t] = TR as u8;
        t += 1;
    }
    TileConfig(c)
};

/// The tiles configured for one product; releases them (back to the init state, which
/// context switches save cheaply) when dropped.
struct Tiles(());

impl Tiles {
    /// Loads [`CONFIG`].
    ///
    /// Caller guarantees: [`support`] confirmed AMX and the tile data permission.
    unsafe fn configure() -> Tiles {
        // SAFETY: per the caller; `CONFIG` is 64 readable, 64-byte aligned bytes.
        unsafe {
            asm!("ldtilecfg [{0}]", in(reg) &CONFIG.0, options(nostack, readonly, preserves_flags));
        }
        Tiles(())
    }
}

impl Drop for Tiles {
    fn drop(&mut self) {
        // SAFETY: a `Tiles` exists only after `configure`, so AMX is usable.
        unsafe { asm!("tilerelease", options(nostack, nomem, preserves_flags)) };
    }
}

/// The accumulator tiles of one step, stored as 32 rows of 32 values (strip s's rows at
/// `s * 16`, panel h's columns at `h * 16`).
#[repr(C, align(64))]
struct Acc<T>([T; MR * 2 * NR]);

/// `kb` steps of 64 bytes along rows of `A` (strips at `a0`, `a1`, row stride `rs` bytes)
/// and 16 tile rows of 64 bytes of two panels (`b0`, `b1`), summed by `tdpbusd` (or with
/// `BF16`, `tdpbf16ps`) into four tiles, which are stored to `out` (128-byte rows). With
/// `TWO` false only the first strip (`a0`) is multiplied, into two tiles stored as the
/// first 16 rows of `out` (`a1` is not read): the last strip pair of a block whose rows
/// end within its first strip costs half the products.
///
/// Caller guarantees: [`Tiles::configure`] ran on this thread; `kb >= 1`; `a0` (and with
/// `TWO`, `a1`) point to 16 rows of `64 * kb` readable bytes at stride `rs`, `b0` and `b1`
/// to `1024 * kb` readable bytes, and `out` to 4 KiB of writable bytes.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn tiles_2x2<const BF16: bool, const TWO: bool>(
    kb: usize,
    a0: *const u8,
    a1: *const u8,
    rs: usize,
    b0: *const u8,
    b1: *const u8,
    out: *mut u8,
) {
    macro_rules! steps {
        ($op:literal) => {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "tilezero tmm2",
                "tilezero tmm3",
                "2:",
                "tileloadd tmm4, [{a0} + {rs}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                concat!($op, " tmm0, tmm4, tmm6"),
                "tileloadd tmm5, [{a1} + {rs}*1]",
                concat!($op, " tmm1, tmm4, tmm7"),
                concat!($op, " tmm2, tmm5, tmm6"),
                concat!($op, " tmm3, tmm5, tmm7"),
                "add {a0}, 64",
                "add {a1}, 64",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {s128}*1], tmm0",
                "tilestored [{c} + {s128}*1 + 64], tmm1",
                "tilestored [{c} + {s128}*1 + 2048], tmm2",
                "tilestored [{c} + {s128}*1 + 2112], tmm3",
                a0 = inout(reg) a0 => _,
                a1 = inout(reg) a1 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                n = inout(reg) kb => _,
                rs = in(reg) rs,
                s64 = in(reg) TB,
                s128 = in(reg) 2 * TB,
                c = in(reg) out,
                options(nostack),
            )
        };
    }
    macro_rules! steps_one {
        ($op:literal) => {
            asm!(
                "tilezero tmm0",
                "tilezero tmm1",
                "2:",
                "tileloadd tmm4, [{a0} + {rs}*1]",
                "tileloadd tmm6, [{b0} + {s64}*1]",
                "tileloadd tmm7, [{b1} + {s64}*1]",
                concat!($op, " tmm0, tmm4, tmm6"),
                concat!($op, " tmm1, tmm4, tmm7"),
                "add {a0}, 64",
                "add {b0}, 1024",
                "add {b1}, 1024",
                "dec {n}",
                "jnz 2b",
                "tilestored [{c} + {s128}*1], tmm0",
                "tilestored [{c} + {s128}*1 + 64], tmm1",
                a0 = inout(reg) a0 => _,
                b0 = inout(reg) b0 => _,
                b1 = inout(reg) b1 => _,
                n = inout(reg) kb => _,
                rs = in(reg) rs,
                s64 = in(reg) TB,
                s128 = in(reg) 2 * TB,
                c = in(reg) out,
                options(nostack),
            )
        };
    }
    // SAFETY: per the caller: the tiles are configured and every load and store is in
    // bounds.
    unsafe {
        match (BF16, TWO) {
            (true, true) => steps!("tdpbf16ps"),
            (false, true) => steps!("tdpbusd"),
            (true, false) => {
                let _ = a1;
                steps_one!("tdpbf16ps")
            }
            (false, false) => {
                let _ = a1;
                steps_one!("tdpbusd")
            }
        }
    }
}

/// [`tiles_2x2`] for strip pair `s` of a block of `rows` rows: both strips, or only the
/// first when the block's rows end within it.
///
/// Caller guarantees: those of [`tiles_2x2`] for the strips at `ap + s * 32 * rs` and 16
/// rows further.
#[inline(always)]
#[allow(clippy::too_many_arguments)]
unsafe fn strip_pair<const BF16: bool>(
    rows: usize,
    s: usize,
    ap: *const u8,
    rs: usize,
    b0: *const u8,
    b1: *const u8,
    out: *mut u8,
) {
    let a0 = ap.add(s * MR * rs);
    let a1 = a0.add(TR * rs);
    // SAFETY: per the caller.
    unsafe {
        if rows - s * MR > TR {
            tiles_2x2::<BF16, true>(rs / TB, a0, a1, rs, b0, b1, out);
        } else {
            tiles_2x2::<BF16, false>(rs / TB, a0, a1, rs, b0, b1, out);
        }
    }
}

/// The int8 product (see [`super::Ops::gemm`]): int8 weights on AMX tiles, blocks of `A`
/// rows quantised by [`super::x86::quantized_blocks8`] in 32-row strip pairs of rows
/// padded to 64 bytes; 16-bit weights (and an empty reduction) on AVX-512 VNNI.
fn gemm_int8(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    if !b.is_int8() || b.k() == 0 {
        super::avx512::gemm_int8_vnni(m, a, lda, b, c, ldc, epi);
        return;
    }
    // SAFETY: reachable only through `int8_gemm` (AMX-INT8 with its tile data permission,
    // AVX-512F/BW/VNNI, AVX2 and FMA confirmed); `quantized_blocks8` hands `block_int8`
    // whole strip pairs of u8 rows of `k.next_multiple_of(64)` bytes, their scales and
    // zero points, and a block of `c` of `rows` rows of `b.n()` values at stride `ldc`.
    unsafe {
        let _tiles = Tiles::configure();
        super::x86::quantized_blocks8(
            m,
            a,
            lda,
            b,
            c,
            ldc,
            (MR, TB),
            super::avx512::quantize_row_u8,
            |rows, ap, sp, zp, cp| {
                per_epilogue!(epi, block_int8, [], (rows, ap, sp, zp, b, cp, ldc))
            },
        );
    }
}

/// Every pair of int8 panels of `b` (a last single one paired with itself) over one
/// quantised block of `rows` rows, 32 rows at a time, panels outermost so a pair stays in
/// L1 while the block's strips pass.
///
/// Caller guarantees: the tiles are configured; `ap` holds `rows.div_ceil(32) * 32` rows
/// of `b.k().next_multiple_of(64)` codes, `sa` and `zp` as many scales and zero points, `c`
/// points to `rows` writable rows of `b.n()` values at stride `ldc`, `b` is int8 with
/// `k > 0`, and the CPU has AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
unsafe fn block_int8<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const u8,
    sa: *const f32,
    zp: *const i32,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let rs = b.k().next_multiple_of(TB);
    let (n, panels) = (b.n(), b.panels());
    let mut acc = Acc([0i32; MR * 2 * NR]);
    for p in (0..panels).step_by(2) {
        let two = p + 1 < panels;
        let cols = (n - p * NR).min(2 * NR);
        let b0 = b.q8_panel(p).as_ptr().cast::<u8>();
        let b1 = if two {
            b.q8_panel(p + 1).as_ptr().cast::<u8>()
        } else {
            b0
        };
        for s in 0..rows.div_ceil(MR) {
            // SAFETY: strip pair `s` exists in `ap` (rows padded to whole pairs), each row
            // `rs / 64` tile rows long; a panel holds `rs / 64` tiles of `B` (its quads
            // padded to whole tiles); `acc` is 4 KiB.
            strip_pair::<false>(rows, s, ap, rs, b0, b1, acc.0.as_mut_ptr().cast());
            let r = MR.min(rows - s * MR);
            let (sz, cs) = (
                (sa.add(s * MR), zp.add(s * MR)),
                c.add(s * MR * ldc + p * NR),
            );
            // SAFETY: rows `s*32 .. s*32 + r` < rows and columns `p*16 .. p*16 + cols` < n
            // are inside `c`; panel p (and p + 1 when `two`) exist.
            if two {
                store_int8::<ACT, ACC, 2>(&acc, b, p, sz, cs, ldc, r, cols);
            } else {
                store_int8::<ACT, ACC, 1>(&acc, b, p, sz, cs, ldc, r, cols);
            }
        }
    }
}

/// The epilogue of one step's i32 sums (`P` panels): `sum - zero point x column sum` (the
/// exact `sum (u - zp) q` of the scalar reference), `* (row scale * column scale) + bias`
/// and the activation, in the reference's order of f32 operations, for the first `rows`
/// rows; columns past `cols` masked off. The AVX-512 VNNI tile's epilogue.
///
/// Caller guarantees: `b` has int8 panels `p .. p + P`, `(sa, zp)` point to `rows` scales
/// and zero points, `c` to `rows` writable rows of `cols` values at stride `ldc`, and the
/// CPU has AVX-512F/BW.
#[target_feature(enable = "avx512f,avx512bw")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_int8<const ACT: u8, const ACC: bool, const P: usize>(
    acc: &Acc<i32>,
    b: &PackedB,
    p: usize,
    (sa, zp): (*const f32, *const i32),
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let epi = Int8Epilogue::<P>::new(b, p, cols);
    for r in 0..rows {
        let sums: [__m512i; P] = std::array::from_fn(|h| {
            _mm512_load_si512(acc.0.as_ptr().add(r * 2 * NR + h * NR).cast())
        });
        epi.row::<ACT, ACC>(c.add(r * ldc), &sums, *sa.add(r), *zp.add(r));
    }
}

thread_local! {
    /// Per-thread buffer for blocks of `A` rows rounded to bf16.
    static BPACK: Cell<Vec<u16>> = const { Cell::new(Vec::new()) };
}

/// The bf16 product (see [`super::Ops::gemm`] and [`PackedB::round_bf16`]): blocks of `A`
/// rows rounded to bf16 (`vcvtneps2bf16`) into rows of `k` values padded with zeros to a
/// multiple of 32 (64 bytes), then every pair of bf16 panels over the block on AMX tiles.
/// An empty reduction goes to the AVX-512 BF16 product.
fn gemm_bf16(
    m: usize,
    a: &[f32],
    lda: usize,
    b: &PackedB,
    c: &mut [f32],
    ldc: usize,
    epi: Epilogue,
) {
    let k = b.k();
    if k == 0 {
        super::avx512::gemm_bf16(m, a, lda, b, c, ldc, epi);
        return;
    }
    let rs = k.next_multiple_of(TB / 2);
    let mc = ((A_BLOCK_BF16 / (2 * rs)) / MR * MR).max(MR * 4);
    let mut qa = BPACK.take();
    let padded = mc.min(m).div_ceil(MR) * MR;
    if qa.len() < padded * rs {
        qa.resize(padded * rs, 0);
    }
    // SAFETY: reachable only through `bf16_gemm` (AMX-BF16 with its tile data permission,
    // AVX-512F/BW/VL/BF16 confirmed).
    let _tiles = unsafe { Tiles::configure() };
    let mut m0 = 0;
    while m0 < m {
        let rows = mc.min(m - m0);
        for r in 0..rows {
            let i = m0 + r;
            let out = &mut qa[r * rs..(r + 1) * rs];
            // SAFETY: as above (AVX-512 BF16); `out` holds more than `k` values.
            unsafe { super::avx512::to_bf16_row(&a[i * lda..i * lda + k], out) };
            out[k..].fill(0);
        }
        let (ap, cp) = (qa.as_ptr(), c[m0 * ldc..].as_mut_ptr());
        // SAFETY: as above; `qa` holds whole strip pairs of `rows` rounded rows of `rs`
        // values (the rows past `rows` in the last pair are stale and never stored), and
        // `cp` a block of `rows` rows of `b.n()` values at stride `ldc` (as `Ops::gemm`
        // checked).
        unsafe { per_epilogue!(epi, block_bf16, [], (rows, ap, b, cp, ldc)) };
        m0 += rows;
    }
    BPACK.set(qa);
}

/// [`block_int8`] for bf16: `tdpbf16ps` into f32 tiles, then `sum + bias` and the
/// activation (the AVX-512 BF16 tile's epilogue).
///
/// Caller guarantees: the tiles are configured; `ap` holds `rows.div_ceil(32) * 32` rows
/// of `b.k().next_multiple_of(32)` bf16 values, `c` points to `rows` writable rows of
/// `b.n()` values at stride `ldc`, `b` is bf16 with `k > 0`, and the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
unsafe fn block_bf16<const ACT: u8, const ACC: bool>(
    rows: usize,
    ap: *const u16,
    b: &PackedB,
    c: *mut f32,
    ldc: usize,
) {
    let rs = 2 * b.k().next_multiple_of(TB / 2);
    let (n, panels) = (b.n(), b.panels());
    let mut acc = Acc([0f32; MR * 2 * NR]);
    let ap = ap.cast::<u8>();
    for p in (0..panels).step_by(2) {
        let two = p + 1 < panels;
        let cols = (n - p * NR).min(2 * NR);
        let b0 = b.bf16_panel(p).as_ptr().cast::<u8>();
        let b1 = if two {
            b.bf16_panel(p + 1).as_ptr().cast::<u8>()
        } else {
            b0
        };
        for s in 0..rows.div_ceil(MR) {
            // SAFETY: as in `block_int8`: strip pair `s` exists, rows and panels hold
            // `rs / 64` whole tiles, `acc` is 4 KiB.
            strip_pair::<true>(rows, s, ap, rs, b0, b1, acc.0.as_mut_ptr().cast());
            let r = MR.min(rows - s * MR);
            let cs = c.add(s * MR * ldc + p * NR);
            // SAFETY: rows and columns inside `c`, panels exist, as in `block_int8`.
            if two {
                store_bf16::<ACT, ACC, 2>(&acc, b, p, cs, ldc, r, cols);
            } else {
                store_bf16::<ACT, ACC, 1>(&acc, b, p, cs, ldc, r, cols);
            }
        }
    }
}

/// `C[r][..cols] (=|+=) act(sum + bias)` for the first `rows` rows of one step's f32 sums
/// (GELU as the AVX-512 bf16 tile's, [`act_int`]).
///
/// Caller guarantees: `b` has panels `p .. p + P`, `c` points to `rows` writable rows of
/// `cols` values at stride `ldc`, and the CPU has AVX-512F.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::too_many_arguments)]
unsafe fn store_bf16<const ACT: u8, const ACC: bool, const P: usize>(
    acc: &Acc<f32>,
    b: &PackedB,
    p: usize,
    c: *mut f32,
    ldc: usize,
    rows: usize,
    cols: usize,
) {
    let (bias, masks) = (panel_biases::<P>(b, p), col_masks::<P>(cols));
    for r in 0..rows {
        let sums: [__m512; P] =
            std::array::from_fn(|h| _mm512_load_ps(acc.0.as_ptr().add(r * 2 * NR + h * NR)));
        store_sums::<ACC, P>(c.add(r * ldc), &sums, &bias, &masks, |v| act_int::<ACT>(v));
    }
}

#[cfg(test)]
mod tests {
    use super::super::check::{self, Weights, EPIS};
    use super::super::{x86, Epilogue, Ops, PackedB};
    use proptest::prelude::*;

    /// The AMX table if this CPU (and OS) has AMX-INT8 and AMX-BF16; else the tests say
    /// they skip (and fail where `CAI_TEST_REQUIRE` names `amx`, see [`check::available`]).
    fn amx_ops() -> Option<Ops> {
        let has = super::int8_gemm().is_some() && super::bf16_gemm().is_some();
        if !check::available("amx", has) {
            return None;
        }
        x86::amx_ops()
    }

    #[test]
    fn amx_gemm_matches_scalar_on_odd_shapes() {
        let Some(ops) = amx_ops() else { return };
        for w in [Weights::Int8, Weights::Bf16, Weights::Int16] {
            check::gemm_odd_shapes(&ops, w);
        }
    }

    /// The ViT shapes (65 tokens x 4 galaxies: 36 and 12 panels), a single last panel
    /// (n = 208), a partial last strip pair (m = 131, 33), reductions with tails of every
    /// tile size (k = 31, 63, 65, 100) and a long one over several row blocks.
    #[test]
    fn amx_gemm_model_shapes_and_tails() {
        let Some(ops) = amx_ops() else { return };
        for w in [Weights::Int8, Weights::Bf16] {
            for (m, n, k) in [
                (260, 576, 192),
                (260, 192, 768),
                (131, 208, 192),
                (33, 17, 31),
                (40, 48, 63),
                (17, 33, 65),
                (70, 40, 100),
            ] {
                for epi in EPIS {
                    check::gemm(&ops, m, n, k, k + 1, n + 3, epi, (m + n + k) as u64, w);
                }
            }
            check::gemm(&ops, 1100, 40, 3216, 3216, 40, Epilogue::RELU, 7, w);
        }
        check::int_worst_case_sums(&ops);
    }

    /// Every row count from 1 to 80 at the ViT's reductions: blocks whose last strip pair
    /// has 1-16 rows (only its first strip multiplied) and 17-32 rows (both), against the
    /// scalar reference, with each epilogue.
    #[test]
    fn amx_gemm_single_strip_tails() {
        let Some(ops) = amx_ops() else { return };
        for w in [Weights::Int8, Weights::Bf16] {
            for m in 1..=80 {
                for (n, k) in [(40, 192), (24, 768)] {
                    let epi = EPIS[m % EPIS.len()];
                    check::gemm(&ops, m, n, k, k, n, epi, m as u64, w);
                }
            }
        }
    }

    /// int8 on AMX gives the AVX-512 VNNI tier's bits (the same integers and epilogue),
    /// and int16 (on VNNI in both) too.
    #[test]
    fn int8_same_bits_as_vnni_on_model_shapes() {
        let (Some(ops), Some(avx512)) = (amx_ops(), x86::avx512_ops()) else {
            return;
        };
        check::same_bits_on_model_shapes(&ops, &avx512, &[Weights::Int8, Weights::Int16]);
    }

    /// One `PackedB` of each kind used by many threads at once: each thread's tiles are
    /// its own (configured and released per call).
    #[test]
    fn amx_gemm_on_several_threads() {
        let Some(ops) = amx_ops() else { return };
        let (m, n, k) = (97, 80, 200);
        let a = check::lcg(1, m * k, 1.0);
        let w = check::lcg(2, n * k, 0.2);
        for kind in [Weights::Int8, Weights::Bf16] {
            let mut b = PackedB::pack_nk(&w, n, k, k, None);
            match kind {
                Weights::Int8 => b.quantize_int8(),
                _ => b.round_bf16(),
            }
            let mut want = vec![0.0f32; m * n];
            ops.gemm(m, &a, k, &b, &mut want, n, Epilogue::GELU);
            std::thread::scope(|s| {
                for _ in 0..4 {
                    s.spawn(|| {
                        for _ in 0..8 {
                            let mut got = vec![0.0f32; m * n];
                            ops.gemm(m, &a, k, &b, &mut got, n, Epilogue::GELU);
                            assert_eq!(got, want, "{kind:?}");
                        }
                    });
                }
            });
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// Random shapes and strides, int8 and bf16, against the scalar reference.
        #[test]
        fn amx_gemm_random_shapes(
            m in 0usize..80,
            n in 0usize..70,
            k in 0usize..300,
            pad_a in 0usize..5,
            pad_c in 0usize..5,
            epi in 0usize..EPIS.len(),
            bf16 in proptest::bool::ANY,
            seed in 0u64..1000,
        ) {
            let Some(ops) = amx_ops() else { return Ok(()) };
            let w = if bf16 { Weights::Bf16 } else { Weights::Int8 };
            check::gemm(&ops, m, n, k, k.max(1) + pad_a, n.max(1) + pad_c, EPIS[epi], seed, w);
        }
    }
}
