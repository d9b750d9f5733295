//! Compute kernels: a safe slice API over a dispatch table filled once per process.
//!
//! * [`scalar`] is the reference, written in plain loops; it runs everywhere.
//! * [`x86`] holds AVX2+FMA kernels (chosen when the CPU has both), with the integer
//!   product on AVX-VNNI (`vpdpwssd` on ymm) where the CPU has it.
//! * [`avx512`] holds the f32 product and FMA probe on 512-bit registers, the integer
//!   product on AVX-512 VNNI (`vpdpwssd`) and the bf16 one on AVX-512 BF16 (`vdpbf16ps`),
//!   for CPUs with AVX-512F (and VNNI, BF16).
//! * [`amx`] holds the int8 and bf16 products on AMX tiles (`tdpbusd`, `tdpbf16ps`) for
//!   the `amx` tier: the `avx512` table with those two products, on CPUs with AMX whose
//!   OS grants the tile state (Intel Sapphire Rapids and later).
//! * `aarch64` holds NEON kernels (chosen on arm64, e.g. Graviton Lambdas), the integer
//!   product on `smlal` (no faster than f32 there: NEON has no 16-bit dot product).
//!
//! [`ops`] detects the CPU on first use, caches the chosen [`Ops`] table in a `OnceLock`
//! and logs the tier through `tracing`. The environment variable `CAI_KERNELS`
//! (`scalar`, `avx2`, `avx512`, `amx`, `neon`) forces a tier; a tier the CPU lacks falls back to
//! the best available one with a warning. The `avx512` tier ([`avx512`]) runs the f32
//! product and the FMA probe on 512-bit registers, and the integer and bf16 products on
//! AVX-512 VNNI and BF16 when the CPU has them, and LayerNorm, attention and the row
//! quantisers of the integer products on zmm registers too; softmax is the AVX2 kernel.
//!
//! The matrix product works on weights packed once into [`PackedB`] panels of [`NR`]
//! columns; activations (`A`) stay row-major with any row stride, and the result is written
//! with any row stride, so concatenations and column offsets are free. Epilogues (bias,
//! ReLU, exact-erf GELU, accumulate into the output for residuals) are fused.
//!
//! Attention ([`Ops::attention`]) is one call per galaxy and head. The AVX2 tier fuses it
//! per strip of 6 queries (scores, exponentials and output back to back in L1, the rows
//! normalised at the end), the AVX-512 tier (and so AMX's) per strip of 13 on its zmm f32
//! tile, with the same bits; the other tiers compose it of their GEMM and softmax. Measured
//! by interleaved A/B on one thread (65 tokens, 6 heads of 32): the fused kernel runs
//! attention 11-13% faster than the composition on AVX2; on the Intel Xeon of 2026-12-06
//! (AstroMAE's heads: 65 tokens, 64 values) the zmm one took 41 us a head against 52-56 us
//! for the AVX2 one and 43-50 us for the composition on zmm tiles (best of 10 interleaved
//! rounds in one process, three runs, load 7).
//!
//! Reduced precision ([`Precision`]) is a property of a packed weight matrix:
//! [`PackedB::round_bf16`] rounds it to bfloat16 values, and [`Ops::gemm`] then rounds the
//! activations to bf16 too and sums the exact products in f32 (`vdpbf16ps` on AVX-512 BF16,
//! the f32 kernels on the rounded values elsewhere). [`PackedB::quantize_int16`] replaces it
//! by [`INT16_WEIGHT_BITS`] (13) bit integers with one symmetric scale per output column,
//! stored as i16; [`Ops::gemm`] then quantises each row of `A` on the fly to integers with
//! one scale per row ([`quantize_row`]), accumulates `vpmaddwd` (`vpdpwssd`) products in
//! i32 and applies the epilogue in f32. The activations get the most bits that cannot
//! overflow the i32 sum against these weights ([`activation_limit`]: `limit * max_j sum_k
//! |q_kj|` fits in an i32, at most 32767), so no reduction length can overflow and no sum
//! needs splitting.
//!
//! [`PackedB::quantize_int8`] makes the product int8 x int8. The weights are int8 with one
//! symmetric scale per output column, stored in groups of 4 consecutive rows per column
//! (one 64-byte row of a panel: 16 columns x 4 rows, the operand `vpdpbusd` reads), with
//! each column's sum of integers. Each row of `A` is quantised to u8 codes with its own
//! scale and zero point ([`quantize_row_u8`], [`Act8`]: `a ≈ (u - zp) * scale`);
//! `vpdpbusd` adds four `u x q` products into each i32 lane (64 per zmm instruction, twice
//! `vpdpwssd`'s 32), and the epilogue subtracts `zp * colsum_j`, which leaves exactly
//! `sum_k (u_k - zp) q_kj`, then applies `acc * (row scale * column scale) + bias`, the
//! activation and the accumulation, as for int16 (the raw sums may wrap in i32; the
//! subtraction wraps back, and [`PackedB::quantize_int8`] keeps the exact sum within i32).
//! AVX-512 VNNI runs it on a 13 x 32 zmm tile, AVX-VNNI on the 6 x 16 ymm one. Tiers without
//! an 8-bit dot product multiply the same integers (`u - zp` and `q` as i16 pairs, made
//! from the int8 panels on first use) on `vpmaddwd` (plain AVX2) or `smlal` (NEON): every
//! tier gives the scalar reference's integers and so its bits. Plain AVX2 does not use
//! `vpmaddubsw`: its i16 sums of two u8 x i8 products saturate (2 * 255 * 127 > 32767), so
//! it would need 7-bit codes (twice the activation error, and other integers than the VNNI
//! tiers) for at most 4/3 of `vpmaddwd`'s rate (3 instructions per 32 products against 2
//! per 16); the i16 path keeps int8's results identical across CPUs at int16's speed.
//!
//! Asymmetric activations (zero point where 0 falls in the row's range, 255 levels over
//! `max - min`) rather than symmetric ones (zero point 128, 127 levels each side): the step
//! is never coarser (`(max - min) / 255 <= 2 max|a| / 255`), and about half as coarse for
//! one-sided rows such as `fc2`'s GELU outputs (down to -0.17), for the same kernel (the zero
//! point is one `vpmulld` per tile row and panel in the epilogue). Measured through
//! `tests/parity.rs` (8 galaxies, max/mean |Δz| against f32): on the original-structure
//! `model.pt` fixture asymmetric 1.04e-2/5.7e-3, symmetric 1.29e-2/5.8e-3; on the formula
//! fixture 6.7e-3/3.1e-3 against 7.1e-3/2.9e-3. The 16-bit activations int8 had before gave
//! 1.1e-2 and 5.6e-3 (max): int8's error is its weights', 8-bit activations add little.
//!
//! Speed (Intel Xeon with AVX-512 VNNI/BF16 and AVX-VNNI, 2 vCPUs shared with other builds,
//! load 12-14; `cai bench --threads 1 --batch 128 --seconds 2 --precision all`, per
//! CPU-second): int8 237 galaxies/s against 173 with 16-bit activations on `vpdpwssd`
//! (1.37x), int16 151, f32 127; the ViT blocks alone at 124% of the f32 FMA probe (int16
//! 87%, f32 64%). `examples/gemm_speed` on the ViT shapes (260 rows): int8 1.3-1.6x int16's
//! GFLOP/s in the same run (e.g. fc2 280-316 against 172-211), 2-3x f32's. Short of
//! `vpdpbusd`'s 2x over `vpdpwssd`: the epilogue (zero point, dequantisation, GELU) and the
//! quantisation of `A` now weigh twice as much against the shorter k loop.
//!
//! Why these widths (measured by a fake-quantisation study of chosen layers, since replaced
//! by `examples/quant_study.rs` on the real kernels; max |Δz| against f32 on the PyTorch parity fixtures, 8 galaxies; with 16-bit
//! activations, before int8 x int8):
//! * int8 weights' error (max 1.1e-2) is spread over every ViT layer (each of `qkv`,
//!   `proj`, `fc1`, `fc2` alone 4e-3 to 5e-3, the CNN 6.5e-4), so keeping a few layers in
//!   f32 cannot fix it; finer weight scales barely help (per 64 rows of `k` 3.7e-3, per 16
//!   4.9e-3): these weights have no outlier rows to isolate.
//! * Only more weight bits do: 10 bits 1.4e-3, 12 bits 5.7e-4, 13 bits 1.5e-4 (each with
//!   the activations it leaves). The i16 storage and `vpmaddwd` take them at no cost in
//!   speed; the price is activation bits. Bounding the sums by the actual column sums of
//!   |q| rather than by `k * wmax` lets the activations against 13-bit weights reach
//!   |q| ≈ 2300 in `fc2` (k = 768), ≈ 7000 in `qkv`, `proj` and `fc1`, more elsewhere (with
//!   the `k * wmax` bound: 3.7e-4 instead of 1.5e-4), and 13 bits is the best split
//!   measured (14 bits: 2.3e-4). That is [`Precision::Int16`]: 1.9e-4 through the integer
//!   kernels. [`Precision::Int8`] is the fast one, for layers (or models) that tolerate it.

use std::sync::OnceLock;

/// Activation codes of the SIMD tiers' tiles, which are monomorphised per epilogue.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ACT_NONE: u8 = 0;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ACT_RELU: u8 = 1;
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const ACT_GELU: u8 = 2;

/// `per_epilogue!(epi, f, [G..], (args..))` calls `f::<ACT, ACCUMULATE, G..>(args..)` with
/// the activation code and accumulation flag of `epi`: one monomorphised tile per epilogue.
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
macro_rules! per_epilogue {
    ($epi:expr, $f:ident, [$($g:tt),*], ($($arg:expr),*)) => {{
        use $crate::kernels::{Act, ACT_GELU, ACT_NONE, ACT_RELU};
        match ($epi.act, $epi.accumulate) {
            (Act::None, false) => $f::<ACT_NONE, false $(, $g)*>($($arg),*),
            (Act::None, true) => $f::<ACT_NONE, true $(, $g)*>($($arg),*),
            (Act::Relu, false) => $f::<ACT_RELU, false $(, $g)*>($($arg),*),
            (Act::Relu, true) => $f::<ACT_RELU, true $(, $g)*>($($arg),*),
            (Act::Gelu, false) => $f::<ACT_GELU, false $(, $g)*>($($arg),*),
            (Act::Gelu, true) => $f::<ACT_GELU, true $(, $g)*>($($arg),*),
        }
    }};
}

/// `layer_norm_fn!(name, row, "doc line")` defines `fn name`, a [`LayerNormFn`] that
/// runs the `#[target_feature]` function `row(x, gamma, beta, eps, out)` on each row, every
/// slice exactly `dim` long: the frame of the SIMD tiers' LayerNorms. The doc line says
/// which table holds it, where the row's target features are confirmed.
#[cfg(target_arch = "x86_64")]
macro_rules! layer_norm_fn {
    ($vis:vis $name:ident, $row:path, $safety:literal) => {
        #[doc = $safety]
        #[allow(clippy::too_many_arguments)]
        $vis fn $name(
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
            let (g, b) = (&gamma[..dim], &beta[..dim]);
            for r in 0..rows {
                let (xr, or) = (&x[r * ldx..r * ldx + dim], &mut out[r * ldo..r * ldo + dim]);
                // SAFETY: the table holding `$name` is built only where `$row`'s target
                // features were confirmed (the doc line above says where); the slices are
                // exactly `dim` long (gamma and beta checked >= dim by `Ops::layer_norm`).
                unsafe { $row(xr, g, b, eps, or) }
            }
        }
    };
}

#[cfg(target_arch = "aarch64")]
pub mod aarch64;
#[cfg(target_arch = "x86_64")]
pub mod amx;
#[cfg(target_arch = "x86_64")]
pub mod avx512;
#[cfg(test)]
mod check;
pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Numerator of the SIMD GELUs' rational erf, `erf(x/sqrt 2) ≈ xc P(xc²) / Q(xc²)` (from the
/// `xc^0` coefficient; fitted by `examples/fit_erf.rs`, erf error 5e-8).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const GELU_P: [f32; 7] = [
    0.797_884_2,
    0.075_640_59,
    0.009_268_996,
    0.000_379_452_4,
    6.873_761_3e-6,
    -4.398_001e-8,
    2.123_207_9e-10,
];
/// Denominator of the same rational erf, from the `xc²` coefficient (the constant term is 1).
#[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
const GELU_Q: [f32; 4] = [0.261_465_25, 0.030_199_822, 0.001_943_877_3, 6.862_669_4e-5];

/// The integer products' GELU (int8 and int16 epilogues on the x86 tiers): the same
/// rational form as [`GELU_P`] / [`GELU_Q`] at degrees 4 and 3 (`examples/fit_erf.rs 4 3`:
/// erf error 3.4e-6, GELU error 1.5e-6 (1 + |x|) in f32), three multiply-adds fewer per 16
/// outputs: int8's `fc1` 7% faster on Zen 4, for an error a thousand times below the 8-bit
/// rounding of the activations that follow.
#[cfg(target_arch = "x86_64")]
const GELU_INT_P: [f32; 5] = [
    0.797_902_8,
    0.057_214_763,
    0.008_452_247,
    9.909_471e-5,
    -2.190_956e-7,
];
/// Denominator of [`GELU_INT_P`]'s rational erf, from the `xc²` coefficient.
#[cfg(target_arch = "x86_64")]
const GELU_INT_Q: [f32; 3] = [0.238_478_27, 0.025_206_689, 0.001_417_754_8];

/// Width of one packed weight panel (columns of `B`).
pub const NR: usize = 16;

/// Alignment (in f32 elements) of packed panel data: 64 bytes.
const ALIGN: usize = 16;

/// The bf16 pairs and int8 quads of a panel are padded with zeros to a multiple of this
/// many groups of rows of `B` (32 bf16 or 64 int8 rows): a panel is then a column of whole
/// AMX `B` tiles (16 rows of 64 bytes), so the AMX products need no repacking and no
/// special tile for the reduction's tail. The other tiers read only the groups they need.
const TILE_K_GROUPS: usize = 16;

/// Activation applied in a GEMM epilogue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Identity.
    None,
    /// max(x, 0).
    Relu,
    /// x/2 (1 + erf(x/sqrt 2)), the exact GELU (SIMD tiers use a rational approximation of
    /// erf; GELU error below 2e-7 (1 + |x|)).
    Gelu,
}

/// What happens to `A·B` before it is stored: `C = act(A·B + bias)`, then, when
/// `accumulate`, `C += ` that instead of `C =` (residual connections).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Epilogue {
    /// Activation applied after the bias.
    pub act: Act,
    /// Add into the existing output instead of overwriting it.
    pub accumulate: bool,
}

impl Epilogue {
    /// `C = A·B + bias`.
    pub const PLAIN: Epilogue = Epilogue {
        act: Act::None,
        accumulate: false,
    };
    /// `C = relu(A·B + bias)`.
    pub const RELU: Epilogue = Epilogue {
        act: Act::Relu,
        accumulate: false,
    };
    /// `C = gelu(A·B + bias)`.
    pub const GELU: Epilogue = Epilogue {
        act: Act::Gelu,
        accumulate: false,
    };
    /// `C += A·B + bias`.
    pub const RESIDUAL: Epilogue = Epilogue {
        act: Act::None,
        accumulate: true,
    };
}

/// The right-hand matrix `B` (`k x n`) of a product, packed into panels of [`NR`] columns:
/// panel `p` holds, for each of the `k` rows, the [`NR`] values of columns
/// `p*NR .. p*NR+NR` (zero beyond `n`). A bias of `n` values (zero padded) travels with it.
#[derive(Clone, Default)]
pub struct PackedB {
    k: usize,
    n: usize,
    off: usize,
    data: Vec<f32>,
    bias: Vec<f32>,
    quant: Option<Box<QuantB>>,
    bf16: Option<Box<Bf16B>>,
}

impl std::fmt::Debug for PackedB {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PackedB")
            .field("k", &self.k)
            .field("n", &self.n)
            .finish_non_exhaustive()
    }
}

impl PackedB {
    /// Packs `B[kk][j] = w[j*ld + kk]`: `w` is `n` rows of (at least) `k` values, the
    /// layout of a PyTorch `Linear` weight `[out, in]` (`ld = in`).
    ///
    /// Panics if `w` or `bias` are too short (callers check shapes first).
    pub fn pack_nk(w: &[f32], n: usize, k: usize, ld: usize, bias: Option<&[f32]>) -> Self {
        let mut p = PackedB::default();
        p.repack_nk(w, n, k, ld, bias);
        p
    }

    /// Packs `B[kk][j] = w[kk*ld + j]`: `w` is `k` rows of (at least) `n` values.
    ///
    /// Panics if `w` or `bias` are too short.
    pub fn pack_kn(w: &[f32], k: usize, n: usize, ld: usize, bias: Option<&[f32]>) -> Self {
        let mut p = PackedB::default();
        p.repack_kn(w, k, n, ld, bias);
        p
    }

    /// Like [`PackedB::pack_nk`], reusing this allocation.
    pub fn repack_nk(&mut self, w: &[f32], n: usize, k: usize, ld: usize, bias: Option<&[f32]>) {
        if n > 0 && k > 0 {
            assert!(
                ld >= k && w.len() >= (n - 1) * ld + k,
                "pack_nk: source too short"
            );
        }
        self.reset(k, n, bias);
        let panels = self.panels();
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            let base = self.off + p * k * NR;
            let panel = &mut self.data[base..base + k * NR];
            #[cfg(target_arch = "x86_64")]
            if cols == NR && x86::pack_panel_nk(&w[p * NR * ld..], ld, k, panel) {
                continue;
            }
            for jj in 0..cols {
                let row = &w[(p * NR + jj) * ld..(p * NR + jj) * ld + k];
                for (kk, v) in row.iter().enumerate() {
                    panel[kk * NR + jj] = *v;
                }
            }
        }
    }

    /// Like [`PackedB::pack_kn`], reusing this allocation.
    pub fn repack_kn(&mut self, w: &[f32], k: usize, n: usize, ld: usize, bias: Option<&[f32]>) {
        self.repack_kn_rotated(w, k, n, ld, 0, bias);
    }

    /// Like [`PackedB::repack_kn`] with the rows of `w` taken in the order `first`, ..,
    /// `k - 1`, `0`, .., `first - 1` (attention puts the cls token's scores last).
    ///
    /// Panics if `w` or `bias` are too short, or `first > k`.
    pub fn repack_kn_rotated(
        &mut self,
        w: &[f32],
        k: usize,
        n: usize,
        ld: usize,
        first: usize,
        bias: Option<&[f32]>,
    ) {
        assert!(first <= k, "pack_kn: first row past k");
        let src_row = |kk: usize| {
            if kk + first < k {
                kk + first
            } else {
                kk + first - k
            }
        };
        if n > 0 && k > 0 {
            assert!(
                ld >= n && w.len() >= (k - 1) * ld + n,
                "pack_kn: source too short"
            );
        }
        self.reset(k, n, bias);
        let panels = self.panels();
        for p in 0..panels {
            let cols = NR.min(n - p * NR);
            let base = self.off + p * k * NR;
            let panel = &mut self.data[base..base + k * NR];
            if cols == NR {
                // Fixed-size copies compile to two vector moves; a `copy_from_slice` of a
                // run-time length called memmove for each 64-byte row (attention repacks V
                // this way per galaxy and head).
                for (kk, dst) in panel.chunks_exact_mut(NR).enumerate() {
                    let src: &[f32; NR] = w[src_row(kk) * ld + p * NR..][..NR]
                        .try_into()
                        .expect("NR values");
                    let dst: &mut [f32; NR] = dst.try_into().expect("NR values");
                    *dst = *src;
                }
                continue;
            }
            for kk in 0..k {
                let row = src_row(kk) * ld + p * NR;
                let src = &w[row..row + cols];
                panel[kk * NR..kk * NR + cols].copy_from_slice(src);
            }
        }
    }

    /// Rounds every weight to the nearest bfloat16 value (ties to even; the bias stays
    /// f32) and lays them out as bf16 pairs for `vdpbf16ps`. From then on [`Ops::gemm`]
    /// rounds the activations to bf16 too and sums the exact products in f32: on AVX-512
    /// BF16 with `vdpbf16ps`, elsewhere with the f32 kernels on the rounded values (the same
    /// arithmetic up to the order of the sums, so any CPU shows the native path's accuracy).
    /// Does nothing if the weights are already integers or bf16.
    pub fn round_bf16(&mut self) {
        if self.quant.is_some() || self.bf16.is_some() {
            return;
        }
        for v in &mut self.data {
            *v = round_bf16(*v);
        }
        let (k, n) = (self.k, self.n);
        let k2 = k.div_ceil(2).next_multiple_of(TILE_K_GROUPS);
        let mut data = vec![0u16; self.panels() * k2 * NR * 2];
        for j in 0..n {
            let (p, jj) = (j / NR, j % NR);
            for kk in 0..k {
                data[((p * k2 + kk / 2) * NR + jj) * 2 + kk % 2] =
                    (self.at(kk, j).to_bits() >> 16) as u16;
            }
        }
        self.bf16 = Some(Box::new(Bf16B { k2, data }));
    }

    /// Whether [`PackedB::round_bf16`] ran ([`Ops::gemm`] then rounds the activations to
    /// bf16 as well).
    pub fn is_bf16(&self) -> bool {
        self.bf16.is_some()
    }

    /// bf16 panel `p`: `k2 * NR * 2` values, `k2` = `k.div_ceil(2)` rounded up to a
    /// multiple of [`TILE_K_GROUPS`], the pairs
    /// `(B[2kp][j], B[2kp+1][j])` of each column as bf16 bits (zero beyond `k` and `n`).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    fn bf16_panel(&self, p: usize) -> &[u16] {
        match &self.bf16 {
            Some(h) => &h.data[p * h.k2 * NR * 2..(p + 1) * h.k2 * NR * 2],
            None => &[],
        }
    }

    /// Replaces the f32 weights by int8 ones, one symmetric scale per column
    /// (`max |w| / 127`), with their column sums. From then on [`Ops::gemm`] runs the
    /// int8 x int8 product: each row of `A` quantised to u8 codes with a zero point
    /// ([`quantize_row_u8`]), `vpdpbusd` on VNNI CPUs. Does nothing if already quantised,
    /// and keeps f32 weights for a reduction so long (over 2^31 / (127 * 255) rows) that
    /// the i32 sums could overflow.
    pub fn quantize_int8(&mut self) {
        self.quantize(8, None);
    }

    /// [`PackedB::quantize_int8`] with the given column scales (`n` values, e.g. those of
    /// [`PackedB::int8_scales`] taken before the weights were changed): each weight becomes
    /// `round(w / scale_j)` clamped to ±127. Weights that are already `q * scale_j`
    /// (GPTQ's, [`crate::gptq`]) keep exactly those integers. Scales of another length
    /// quantise as [`PackedB::quantize_int8`] does.
    pub fn quantize_int8_scaled(&mut self, scales: &[f32]) {
        self.quantize(8, (scales.len() == self.n).then_some(scales));
    }

    /// The column scales [`PackedB::quantize_int8`] would use: `max_k |B[k][j]| / 127`
    /// (0 for an all-zero column, NaN for a non-finite one).
    pub fn int8_scales(&self) -> Vec<f32> {
        int8_column_scales(&self.weights_kn(), self.k, self.n)
    }

    /// The weights as a dense row-major `k x n` matrix (`B[kk][j]` at `kk * n + j`;
    /// dequantised for integer weights).
    pub fn weights_kn(&self) -> Vec<f32> {
        let n = self.n;
        let mut w = vec![0.0f32; self.k * n];
        for (kk, row) in w.chunks_exact_mut(n.max(1)).enumerate().take(self.k) {
            for (j, v) in row.iter_mut().enumerate() {
                *v = self.at(kk, j);
            }
        }
        w
    }

    /// Replaces the f32 weights by [`INT16_WEIGHT_BITS`]-bit integers (stored, like int8
    /// ones, as i16), one symmetric scale per column (`max |w| / 4095`); the activations
    /// then get as many bits as cannot overflow i32 ([`activation_limit`]). Same kernel and
    /// speed as [`PackedB::quantize_int8`], about 60 times less error on AstroMAE (see the
    /// module doc). Long reductions leave the activations fewer bits (|q| ≤ 2^31 / sum |q_w|:
    /// about 2300 at k = 768, 500 at k = 3216), so the gain over int8 shrinks with `k`.
    /// Does nothing if already quantised, and keeps f32 weights beyond 2^31 / 4095 rows.
    pub fn quantize_int16(&mut self) {
        self.quantize(INT16_WEIGHT_BITS, None);
    }

    /// Symmetric per-column quantisation to `bits`-bit integers (`2 <= bits <= 15`). Leaves
    /// the weights f32 when a column's sum of |q| times the largest activation (see
    /// [`activation_limit`]; 255 for int8) passes `i32::MAX` (a reduction of more than
    /// `2^31 / (2^(bits-1) - 1)` rows for 16-bit activations, `2^31 / (127 * 255)` for int8),
    /// where the i32 sums could overflow. Int8 weights also get the layout of
    /// `vpdpbusd` (groups of 4 consecutive rows per column) and their column sums.
    /// `scales` (`n` values), when given, replace the per-column `max |w| / (2^(bits-1)-1)`.
    fn quantize(&mut self, bits: u32, scales: Option<&[f32]>) {
        if self.quant.is_some() {
            return;
        }
        let (k, n) = (self.k, self.n);
        let (k2, k4) = (k.div_ceil(2), k.div_ceil(4).next_multiple_of(TILE_K_GROUPS));
        let panels = self.panels();
        let wmax = ((1i32 << (bits - 1)) - 1) as f32;
        let int8 = bits == 8;
        let mut scale = vec![0.0f32; panels * NR];
        let mut data = vec![0i16; if int8 { 0 } else { panels * k2 * NR * 2 }];
        let (mut data8, mut colsum) = if int8 {
            (vec![0i8; panels * k4 * NR * 4], vec![0i32; panels * NR])
        } else {
            (Vec::new(), Vec::new())
        };
        let mut worst = 0u64;
        for (j, sj) in scale.iter_mut().enumerate().take(n) {
            let amax = match scales {
                Some(s) => s[j] * wmax,
                None => (0..k).fold(0.0f32, |m, kk| m.max(self.at(kk, j).abs())),
            };
            if amax == 0.0 || !amax.is_finite() {
                *sj = if amax == 0.0 { 0.0 } else { f32::NAN };
                continue;
            }
            let inv = match scales {
                Some(s) => {
                    *sj = s[j];
                    1.0 / s[j]
                }
                None => {
                    *sj = amax / wmax;
                    wmax / amax
                }
            };
            let (p, jj) = (j / NR, j % NR);
            let (mut sum, mut signed) = (0u64, 0i64);
            for kk in 0..k {
                let q = (self.at(kk, j) * inv).round_ties_even().clamp(-wmax, wmax);
                sum += q.abs() as u64;
                signed += q as i64;
                if int8 {
                    data8[((p * k4 + kk / 4) * NR + jj) * 4 + kk % 4] = q as i8;
                } else {
                    data[((p * k2 + kk / 2) * NR + jj) * 2 + kk % 2] = q as i16;
                }
            }
            if int8 {
                // |signed| <= sum, which the check below keeps under 2^31 / 255.
                colsum[j] = signed.clamp(i32::MIN as i64, i32::MAX as i64) as i32;
            }
            worst = worst.max(sum);
        }
        let limit = if int8 {
            if worst.saturating_mul(ACT8_MAX as u64) > i32::MAX as u64 {
                return;
            }
            ACT8_MAX
        } else {
            if worst > i32::MAX as u64 {
                // Not even 1-level activations could be summed in i32: stay f32.
                return;
            }
            activation_limit(worst)
        };
        self.quant = Some(Box::new(QuantB {
            k2,
            data,
            scale,
            limit,
            bits,
            k4,
            data8,
            colsum,
            pairs8: OnceLock::new(),
        }));
        self.data = Vec::new();
        self.off = 0;
    }

    /// Whether [`PackedB::quantize_int8`] or [`PackedB::quantize_int16`] ran ([`Ops::gemm`]
    /// then runs the integer product).
    pub fn is_quantized(&self) -> bool {
        self.quant.is_some()
    }

    /// Bits of the integer weights (8 or [`INT16_WEIGHT_BITS`]), `None` for f32 weights.
    pub fn weight_bits(&self) -> Option<u32> {
        self.quant.as_ref().map(|q| q.bits)
    }

    /// Largest |q| of the quantised activations (see [`activation_limit`]); 0 for f32
    /// weights.
    pub fn activation_limit(&self) -> i32 {
        self.q_limit()
    }

    /// Int8 panel `p`: `k2 * NR * 2` values, `k2 = k.div_ceil(2)`.
    fn q_panel(&self, p: usize) -> &[i16] {
        match &self.quant {
            Some(q) => {
                let data = if q.bits == 8 {
                    q.pairs8.get_or_init(|| q.int8_pairs())
                } else {
                    &q.data
                };
                &data[p * q.k2 * NR * 2..(p + 1) * q.k2 * NR * 2]
            }
            None => &[],
        }
    }

    /// Column scales of int8 panel `p` ([`NR`] values).
    fn q_scale(&self, p: usize) -> &[f32] {
        match &self.quant {
            Some(q) => &q.scale[p * NR..p * NR + NR],
            None => &[],
        }
    }

    /// The activation limit of the integer form.
    fn q_limit(&self) -> i32 {
        self.quant.as_ref().map_or(0, |q| q.limit)
    }

    /// Whether the weights are int8 for the int8 x int8 product ([`PackedB::quantize_int8`]):
    /// the activations are then quantised by [`quantize_row_u8`].
    fn is_int8(&self) -> bool {
        self.quant.as_ref().is_some_and(|q| q.bits == 8)
    }

    /// Int8 panel `p` in `vpdpbusd`'s layout: `k4 * NR * 4` values, `k4` = `k.div_ceil(4)`
    /// rounded up to a multiple of [`TILE_K_GROUPS`];
    /// for each group `kq` of 4 rows, column `jj`'s `q[4kq..4kq+4][jj]` at
    /// `(kq * NR + jj) * 4` (zero beyond `k` and `n`). Empty unless [`PackedB::is_int8`].
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    fn q8_panel(&self, p: usize) -> &[i8] {
        match &self.quant {
            Some(q) if q.bits == 8 => &q.data8[p * q.k4 * NR * 4..(p + 1) * q.k4 * NR * 4],
            _ => &[],
        }
    }

    /// Column sums `sum_k q_kj` of int8 panel `p` ([`NR`] values; zero padded), which undo
    /// the activations' zero point in the i32 sums. Empty unless [`PackedB::is_int8`].
    #[cfg_attr(
        not(any(target_arch = "x86_64", target_arch = "aarch64")),
        allow(dead_code)
    )]
    fn q_colsum(&self, p: usize) -> &[i32] {
        match &self.quant {
            Some(q) if q.bits == 8 => &q.colsum[p * NR..p * NR + NR],
            _ => &[],
        }
    }

    /// Bytes held by the weights (and bias).
    pub fn bytes(&self) -> usize {
        self.data.len() * 4
            + self.bias.len() * 4
            + self.quant.as_ref().map_or(0, |q| {
                let pairs = q.pairs8.get().map_or(0, Vec::len);
                (q.data.len() + pairs) * 2 + q.scale.len() * 4 + q.data8.len() + q.colsum.len() * 4
            })
            + self.bf16.as_ref().map_or(0, |h| h.data.len() * 2)
    }

    /// Shapes the buffers for `k x n` and sets the bias. The packers overwrite every value
    /// of the first `n` columns, so only the last panel's padding columns are zeroed here
    /// (attention repacks small matrices per head: clearing whole buffers was a measurable
    /// share of its time).
    fn reset(&mut self, k: usize, n: usize, bias: Option<&[f32]>) {
        self.quant = None;
        self.bf16 = None;
        self.k = k;
        self.n = n;
        let len = n.div_ceil(NR) * NR * k;
        self.data.resize(len + ALIGN, 0.0);
        let addr = self.data.as_ptr() as usize;
        self.off = ((64 - addr % 64) % 64) / 4;
        let cols = n % NR;
        if cols != 0 {
            let last = self.off + (n / NR) * k * NR;
            for row in self.data[last..last + k * NR].chunks_exact_mut(NR) {
                row[cols..].fill(0.0);
            }
        }
        self.bias.resize(n.div_ceil(NR) * NR, 0.0);
        match bias {
            Some(b) => self.bias[..n].copy_from_slice(&b[..n]),
            None => self.bias[..n].fill(0.0),
        }
        self.bias[n..].fill(0.0);
    }

    /// Replaces the bias added in the epilogue by `bias` (`n` values): a bias found after
    /// the weights were packed (the ONNX lowering fuses a following `Add` this way).
    ///
    /// Panics if `bias` has fewer than `n` values.
    pub fn set_bias(&mut self, bias: &[f32]) {
        let n = self.n;
        self.bias[..n].copy_from_slice(&bias[..n]);
    }

    /// Rows of `B` (the reduction length).
    pub fn k(&self) -> usize {
        self.k
    }

    /// Columns of `B` (outputs).
    pub fn n(&self) -> usize {
        self.n
    }

    /// Number of [`NR`]-wide panels.
    pub fn panels(&self) -> usize {
        self.n.div_ceil(NR)
    }

    /// Panel `p`: `k * NR` values.
    pub fn panel(&self, p: usize) -> &[f32] {
        let base = self.off + p * self.k * NR;
        &self.data[base..base + self.k * NR]
    }

    /// The bias of panel `p` ([`NR`] values, zero padded).
    pub fn panel_bias(&self, p: usize) -> &[f32] {
        &self.bias[p * NR..p * NR + NR]
    }

    /// The bias (`n` values; zeros when packed without one).
    pub fn bias(&self) -> &[f32] {
        &self.bias[..self.n]
    }

    /// `B[kk][j]` (for an int8 matrix, the dequantised value).
    pub fn at(&self, kk: usize, j: usize) -> f32 {
        if let Some(q) = &self.quant {
            let (p, jj) = (j / NR, j % NR);
            let v = if q.bits == 8 {
                q.data8[((p * q.k4 + kk / 4) * NR + jj) * 4 + kk % 4] as i16
            } else {
                q.data[((p * q.k2 + kk / 2) * NR + jj) * 2 + kk % 2]
            };
            return v as f32 * q.scale[j];
        }
        self.panel(j / NR)[kk * NR + j % NR]
    }
}

/// Arithmetic of a model's weight matrices. LayerNorm, softmax, GELU, attention scores and
/// all epilogues stay in f32 whatever the precision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub enum Precision {
    /// f32 weights and activations (the reference).
    #[default]
    F32,
    /// Weights rounded to bfloat16 (round to nearest even) at load, activations rounded to
    /// bf16 per product, exact products summed in f32 (as `vdpbf16ps` does). On AVX-512
    /// BF16 at twice f32's multiply rate; elsewhere the same arithmetic in the f32 kernels
    /// (bf16 accuracy at f32 speed).
    Bf16,
    /// int8 x int8: weights int8 per output column (symmetric, scale = max |w| / 127),
    /// activations 8-bit per row (u8 codes with a zero point, scale = range / 255), i32
    /// accumulation: `vpdpbusd` on AVX-512 VNNI and AVX-VNNI, four times f32's multiplies
    /// per instruction; i16 pairs on `vpmaddwd` (NEON `smlal`) elsewhere, the same integers.
    Int8,
    /// 16-bit integer operands: weights [`INT16_WEIGHT_BITS`] (13) bits per output column,
    /// activations per row with as many bits as cannot overflow the i32 sums (13 to 16
    /// bits on AstroMAE's layers, see [`activation_limit`]), i32 accumulation. The same
    /// kernel and speed as int8 on AVX2 (`vpmaddwd` multiplies i16 either way), with about
    /// 60 times less error.
    Int16,
}

impl Precision {
    /// All precisions, f32 first.
    pub const ALL: [Precision; 4] = [
        Precision::F32,
        Precision::Bf16,
        Precision::Int8,
        Precision::Int16,
    ];

    /// `f32`, `bf16`, `int8` or `int16`.
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::Bf16 => "bf16",
            Precision::Int8 => "int8",
            Precision::Int16 => "int16",
        }
    }

    /// Parses `f32`, `bf16`, `int8` or `int16` (case-insensitive).
    pub fn parse(s: &str) -> Option<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" => Some(Precision::F32),
            "bf16" => Some(Precision::Bf16),
            "int8" | "i8" => Some(Precision::Int8),
            "int16" | "i16" => Some(Precision::Int16),
            _ => None,
        }
    }

    /// One line on how this CPU runs the precision (for start-up messages).
    pub fn support(self) -> String {
        match self {
            Precision::F32 => format!("f32 on the {:?} kernels", ops().tier),
            Precision::Bf16 => {
                if ops().gemm_bf16.is_some() {
                    format!(
                        "bf16 weights and activations, f32 sums, on the {:?} kernels ({}){}",
                        ops().tier,
                        if ops().tier == Tier::Amx {
                            "AMX: tdpbf16ps on 16x32 tiles"
                        } else {
                            "AVX-512 BF16: vdpbf16ps"
                        },
                        if ops().has_bf16_attention() {
                            "; the attention's products in bf16 too"
                        } else {
                            ""
                        }
                    )
                } else if cpu_has_avx512_bf16() {
                    format!(
                        "bf16: this CPU has AVX-512 BF16, but the {:?} kernels do not use it (CAI_KERNELS?); weights and activations rounded to bf16 and computed with the f32 kernels (bf16 accuracy, f32 speed)",
                        ops().tier
                    )
                } else {
                    "bf16: this CPU has no AVX-512 BF16 (vdpbf16ps); weights and activations are rounded to bf16 and computed with the f32 kernels (bf16 accuracy, f32 speed)".to_string()
                }
            }
            Precision::Int8 | Precision::Int16 => format!(
                "{}, i32 accumulation, on the {:?} kernels{}{}",
                if self == Precision::Int8 {
                    "int8 weights x 8-bit activations (u8 codes, per-row zero point)".to_string()
                } else {
                    format!("int16: {INT16_WEIGHT_BITS}-bit weights x 13-16-bit activations")
                },
                ops().tier,
                match ops().tier {
                    #[cfg(target_arch = "x86_64")]
                    Tier::Amx if self == Precision::Int8 && amx::int8_gemm().is_some() => {
                        " (AMX: tdpbusd on 16x64 tiles)"
                    }
                    #[cfg(target_arch = "x86_64")]
                    Tier::Avx512 | Tier::Amx if avx512::vnni_gemm_int8().is_some() => {
                        if self == Precision::Int8 {
                            " (AVX-512 VNNI: vpdpbusd on zmm)"
                        } else {
                            " (AVX-512 VNNI: vpdpwssd on zmm)"
                        }
                    }
                    #[cfg(target_arch = "x86_64")]
                    Tier::Avx2 if std::arch::is_x86_feature_detected!("avxvnni") => {
                        if self == Precision::Int8 {
                            " (AVX-VNNI: vpdpbusd on ymm)"
                        } else {
                            " (AVX-VNNI: vpdpwssd on ymm)"
                        }
                    }
                    Tier::Avx2 | Tier::Avx512 if cpu_has_vnni() => {
                        " (vpmaddwd: this CPU's VNNI is for the other x86 tier, see CAI_KERNELS)"
                    }
                    Tier::Avx2 | Tier::Avx512 => " (no VNNI on this CPU: vpmaddwd)",
                    #[cfg(target_arch = "aarch64")]
                    Tier::Neon if self == Precision::Int8 && aarch64::has_dotprod() => {
                        " (NEON sdot: 16 multiply-adds per instruction, four times f32's fmla)"
                    }
                    Tier::Neon => {
                        " (NEON smlal: 4 multiply-adds per instruction, as f32's fmla does: at best f32's speed)"
                    }
                    _ => {
                        " (the integer products run the scalar reference here, far slower than f32: no SIMD integer kernel for this CPU)"
                    }
                },
                if self == Precision::Int16 && ops().has_int16_attention() {
                    "; the attention's products in int16 too"
                } else {
                    ""
                }
            ),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Precision::parse(s).ok_or_else(|| format!("unknown precision {s:?} (f32|bf16|int8|int16)"))
    }
}

fn cpu_has_avx512_bf16() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

fn cpu_has_vnni() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512vnni")
            || std::arch::is_x86_feature_detected!("avxvnni")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// Rounds to the nearest bfloat16 value (ties to even), returned as f32. NaN stays NaN.
/// Branch-free (NaN kept by a mask), so loops over it vectorise (the bf16 emulation rounds
/// every row of `A` with it).
#[inline]
pub fn round_bf16(x: f32) -> f32 {
    let b = x.to_bits();
    let r = b.wrapping_add(0x7FFF + ((b >> 16) & 1)) & 0xFFFF_0000;
    let nan = ((0x7F80_0000u32.wrapping_sub(b & 0x7FFF_FFFF)) as i32 >> 31) as u32;
    f32::from_bits((b & nan) | (r & !nan))
}

/// Values of `A` rounded per block by the bf16 emulation (256 KiB of f32), and its fewest
/// rows per block: each block streams all of `B` again, so blocks of a few rows (long
/// reductions) would re-read `B` for every few rows (`examples/gemm_speed`, fc2's 768-long
/// rows: in blocks of 21, about 20% below f32; of 96, within a few %).
const BF16_A_BLOCK: usize = 64 * 1024;
const BF16_MIN_ROWS: usize = 96;

/// Weight bits of [`Precision::Int16`]: the fake-quantisation study (module doc) measured
/// max |Δz| on the parity fixtures of 5.7e-4 at 12 bits, 1.5e-4 at 13 and 2.3e-4 at 14 (more
/// weight bits leave fewer for the activations, see [`activation_limit`]).
pub const INT16_WEIGHT_BITS: u32 = 13;

/// Largest |q| of a quantised activation row against integer weights whose largest column
/// sum of |q| is `max_col_abs_sum`: `limit * max_col_abs_sum` fits in an i32, so no sum (nor
/// any partial sum, in any order) can overflow; at most 32767 (i16).
pub fn activation_limit(max_col_abs_sum: u64) -> i32 {
    let by_w = (i32::MAX as u64) / max_col_abs_sum.max(1);
    by_w.min(i16::MAX as u64) as i32
}

/// Quantises one row of activations symmetrically to `[-limit, limit]`: element `kk` goes
/// to `out[(kk / 2) * stride2 + kk % 2]` (pairs, as `vpmaddwd` consumes them); the second
/// element of an odd length's last pair is set to 0. Returns the scale (`a ≈ q * scale`;
/// 0 for an all-zero row). Every tier quantises through this function, so the integers
/// are identical.
///
/// Panics if `out` is too short.
pub fn quantize_row(a: &[f32], limit: i32, out: &mut [i16], stride2: usize) -> f32 {
    let amax = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let k2 = a.len().div_ceil(2);
    if a.len() % 2 == 1 {
        out[(k2 - 1) * stride2 + 1] = 0;
    }
    if amax == 0.0 || !amax.is_finite() {
        for kk in 0..a.len() {
            out[(kk / 2) * stride2 + kk % 2] = 0;
        }
        return if amax == 0.0 { 0.0 } else { f32::NAN };
    }
    let lim = limit as f32;
    let inv = lim / amax;
    for (kk, v) in a.iter().enumerate() {
        let q = (v * inv).round_ties_even().clamp(-lim, lim);
        out[(kk / 2) * stride2 + kk % 2] = q as i16;
    }
    amax / lim
}

/// Largest code of an int8 activation (`0..=255`), and so the largest |u - zero point|.
pub const ACT8_MAX: i32 = 255;

/// Whether int8 activations are quantised symmetrically (zero point 128, scale
/// `max |a| / 127`) rather than asymmetrically (scale `(max - min) / 255` over the row's
/// range widened to hold 0, zero point where 0 falls). Asymmetric measured better on the
/// parity fixtures (max |Δz| 1.04e-2 against 1.29e-2 on `model.pt`; see the module doc);
/// kept as a switch for such studies (the kernels take any zero point).
const ACT8_SYMMETRIC: bool = false;

/// How one row of activations maps to the unsigned 8-bit codes of the int8 product:
/// `u = clamp(round(a * inv) + zp, 0, 255)` (round to nearest even, in f32), so that
/// `a ≈ (u - zp) * scale`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Act8 {
    /// Dequantisation step (0 for an all-zero row, NaN for a row with an infinity).
    pub scale: f32,
    /// The quantiser's multiplier (0 when `scale` is not a positive number).
    pub inv: f32,
    /// Zero point, a whole number in `0..=255` (the code of 0.0).
    pub zp: f32,
}

impl Act8 {
    /// The parameters for a row whose smallest and largest values (NaN ignored) are
    /// `min` and `max`. The SIMD quantisers find `min` and `max` their own way and call
    /// this, so every tier quantises with the same numbers.
    pub fn new(min: f32, max: f32) -> Act8 {
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        let (range, levels) = if ACT8_SYMMETRIC {
            (hi.max(-lo), 127.0)
        } else {
            (hi - lo, ACT8_MAX as f32)
        };
        if !(range > 0.0 && range.is_finite()) {
            let scale = if range == 0.0 { 0.0 } else { f32::NAN };
            return Act8 {
                scale,
                inv: 0.0,
                zp: 0.0,
            };
        }
        let inv = levels / range;
        let zp = if ACT8_SYMMETRIC {
            128.0
        } else {
            (-lo * inv).round_ties_even().clamp(0.0, ACT8_MAX as f32)
        };
        Act8 {
            scale: range / levels,
            inv,
            zp,
        }
    }

    /// The code of `v` (NaN gives 0).
    #[inline]
    pub fn code(&self, v: f32) -> u8 {
        ((v * self.inv).round_ties_even() + self.zp).clamp(0.0, ACT8_MAX as f32) as u8
    }
}

/// The smallest and largest value of `a`, NaN ignored (0 and 0 for an empty row are as
/// good as any: [`Act8::new`] widens the range to hold 0).
fn min_max(a: &[f32]) -> (f32, f32) {
    a.iter()
        .fold((0.0f32, 0.0f32), |(lo, hi), v| (lo.min(*v), hi.max(*v)))
}

/// Quantises one row of activations to the unsigned codes of the int8 product
/// ([`Act8`]): `out[kk]` for `kk < a.len()` (the rest of `out` is untouched). Returns the
/// scale and the zero point. The SIMD quantisers give the same codes.
///
/// Panics if `out` is shorter than `a`.
pub fn quantize_row_u8(a: &[f32], out: &mut [u8]) -> (f32, i32) {
    let (lo, hi) = min_max(a);
    let p = Act8::new(lo, hi);
    for (o, v) in out[..a.len()].iter_mut().zip(a) {
        *o = p.code(*v);
    }
    (p.scale, p.zp as i32)
}

/// [`quantize_row_u8`]'s codes minus the zero point, as i16 in [`quantize_row`]'s pair
/// layout (element `kk` at `out[(kk / 2) * stride2 + kk % 2]`, the odd tail's partner 0):
/// the int8 product for the tiers that multiply i16 pairs. Returns the scale.
///
/// Panics if `out` is too short.
pub fn quantize_row_int8_pairs(a: &[f32], out: &mut [i16], stride2: usize) -> f32 {
    let (lo, hi) = min_max(a);
    let p = Act8::new(lo, hi);
    let zp = p.zp as i16;
    for (kk, v) in a.iter().enumerate() {
        out[(kk / 2) * stride2 + kk % 2] = p.code(*v) as i16 - zp;
    }
    if a.len() % 2 == 1 {
        out[(a.len() / 2) * stride2 + 1] = 0;
    }
    p.scale
}

/// Quantises a row of `A` for `b`'s integer product on i16 pairs: int8 weights take
/// [`quantize_row_int8_pairs`], the others [`quantize_row`] at `b`'s activation limit.
pub(crate) fn quantize_row_for(b: &PackedB, a: &[f32], out: &mut [i16], stride2: usize) -> f32 {
    if b.is_int8() {
        quantize_row_int8_pairs(a, out, stride2)
    } else {
        quantize_row(a, b.q_limit(), out, stride2)
    }
}

/// The int8 column scales of a dense row-major `k x n` matrix (`w[kk * n + j]`):
/// `max_k |w_kj| / 127` (0 for an all-zero column, NaN for a non-finite one), as
/// [`PackedB::int8_scales`] gives them for its weights.
///
/// Panics if `w` holds fewer than `k * n` values.
pub fn int8_column_scales(w: &[f32], k: usize, n: usize) -> Vec<f32> {
    (0..n)
        .map(|j| {
            let amax = (0..k).fold(0.0f32, |m, kk| m.max(w[kk * n + j].abs()));
            if amax.is_finite() {
                amax / 127.0
            } else {
                f32::NAN
            }
        })
        .collect()
}

/// The bf16 form of a [`PackedB`] (beside its bf16-rounded f32 weights, which tiers
/// without `vdpbf16ps` use): per panel, for each pair of rows `kp`, the [`NR`] column pairs
/// `(B[2kp][j], B[2kp+1][j])` as bf16 bits (zero beyond `k` and `n`).
#[derive(Clone, Default)]
struct Bf16B {
    k2: usize,
    data: Vec<u16>,
}

/// The integer form of a [`PackedB`]: one scale per column, the activation limit and the
/// weight bits; 16-bit weights as, per panel and pair of rows `kp`, the [`NR`] pairs
/// `(q[2kp][j], q[2kp+1][j])` as i16 (zero beyond `k` and `n`); int8 weights as, per panel
/// and group of 4 rows `kq`, the [`NR`] quads `q[4kq..4kq+4][j]` as i8 (`vpdpbusd`'s
/// operand), with each column's sum of `q`. The tiers without an 8-bit dot product read
/// int8 weights as i16 pairs too, made on first use (`pairs8`), so VNNI CPUs hold one byte
/// per weight.
#[derive(Clone, Default)]
struct QuantB {
    k2: usize,
    data: Vec<i16>,
    scale: Vec<f32>,
    limit: i32,
    bits: u32,
    k4: usize,
    data8: Vec<i8>,
    colsum: Vec<i32>,
    pairs8: OnceLock<Vec<i16>>,
}

impl QuantB {
    /// The int8 weights in the i16 pair layout of 16-bit ones.
    fn int8_pairs(&self) -> Vec<i16> {
        let panels = self.colsum.len() / NR;
        let mut out = vec![0i16; panels * self.k2 * NR * 2];
        for p in 0..panels {
            for kq in 0..self.k4 {
                for jj in 0..NR {
                    for d in 0..4 {
                        let kk = kq * 4 + d;
                        if kk < self.k2 * 2 {
                            out[((p * self.k2 + kk / 2) * NR + jj) * 2 + kk % 2] =
                                self.data8[((p * self.k4 + kq) * NR + jj) * 4 + d] as i16;
                        }
                    }
                }
            }
        }
        out
    }
}

/// Which implementation a table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Plain loops.
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F: the f32 product and FMA probe on 512-bit registers, the integer product
    /// on AVX-512 VNNI when the CPU has it; the other kernels AVX2 + FMA.
    Avx512,
    /// [`Tier::Avx512`] with the int8 and bf16 products on AMX tiles (`tdpbusd`,
    /// `tdpbf16ps`; Intel Sapphire Rapids and later, with Linux's permission).
    Amx,
    /// aarch64 NEON.
    Neon,
}

/// `C[m x n] (=|+=) act(A[m x k] · B + bias)`; see [`Ops::gemm`].
pub type GemmFn = fn(usize, &[f32], usize, &PackedB, &mut [f32], usize, Epilogue);
/// Row-wise LayerNorm; see [`Ops::layer_norm`].
pub type LayerNormFn = fn(usize, usize, &[f32], usize, &[f32], &[f32], f32, &mut [f32], usize);
/// Row-wise scaled softmax; see [`Ops::softmax_rows`].
pub type SoftmaxFn = fn(usize, usize, &mut [f32], usize, f32);
/// One head's attention; see [`Ops::attention`].
pub type AttentionFn = fn(&Ops, &HeadQkv<'_>, f32, &mut [f32], usize, &mut AttentionScratch);
/// Peak-rate probe: `iters` rounds of independent f32 FMA chains; returns a checksum and
/// the FLOPs done. See [`Ops::fma_probe`].
pub type FmaProbeFn = fn(u64) -> (f32, u64);

/// A dispatch table of kernels. All entries take safe slices; the bounds are checked by the
/// `Ops` methods before an entry runs.
#[derive(Debug, Clone, Copy)]
pub struct Ops {
    /// The implementation tier.
    pub tier: Tier,
    gemm: GemmFn,
    gemm_int8: GemmFn,
    /// The bf16 product where the CPU has one (`vdpbf16ps`); `None`: bf16 weights run
    /// [`Ops::gemm`]'s emulation on the f32 product.
    gemm_bf16: Option<GemmFn>,
    layer_norm: LayerNormFn,
    softmax: SoftmaxFn,
    attention: AttentionFn,
    /// Attention with bf16 products where the CPU has `vdpbf16ps`; `None`:
    /// [`Ops::attention_bf16`] runs [`attention_bf16_reference`].
    attention_bf16: Option<AttentionFn>,
    /// Attention with int16 products where the CPU has a kernel for them; `None`:
    /// [`Ops::attention_int16`] runs [`attention_int16_reference`].
    attention_int16: Option<AttentionFn>,
    fma_probe: FmaProbeFn,
}

/// One attention head's queries, keys and values over `t` tokens, `hd` values per token:
/// row `i` of each starts at `i * ld` of its slice (three column ranges of a fused QKV
/// matrix, say).
#[derive(Debug, Clone, Copy)]
pub struct HeadQkv<'a> {
    /// Tokens (rows).
    pub t: usize,
    /// Values per token and head.
    pub hd: usize,
    /// Row stride of `q`, `k` and `v`.
    pub ld: usize,
    /// Queries.
    pub q: &'a [f32],
    /// Keys.
    pub k: &'a [f32],
    /// Values.
    pub v: &'a [f32],
}

/// Buffers a thread reuses across [`Ops::attention`] calls (packed keys and values, the
/// scores): they grow to the largest head seen, so attention allocates nothing per call.
#[derive(Debug, Clone, Default)]
pub struct AttentionScratch {
    kp: PackedB,
    vp: PackedB,
    s: Vec<f32>,
    /// A fused kernel's last, partial strip of queries, padded with zero rows.
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    q: Vec<f32>,
    /// The bf16 and int16 kernels' operands ([`Ops::attention_bf16`],
    /// [`Ops::attention_int16`]).
    #[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
    pairs: PairAttention,
}

/// Operands of the bf16 and int16 attention kernels, as 16-bit codes (bf16 bits or i16):
/// the keys row by row, `Kᵀ` and `V` in panels of column pairs (one u32 per pair, low half
/// first), a strip of queries and one of unnormalised softmax weights; for int16, the keys'
/// scales (one per key, in panel order) and the values' (one per column).
#[derive(Debug, Clone, Default)]
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
struct PairAttention {
    /// Pairs as f32 bit patterns (so the f32 panel transpose moves them).
    keys: Vec<f32>,
    kt: Vec<f32>,
    vt: Vec<u32>,
    kcls: Vec<u16>,
    q: Vec<u16>,
    p: Vec<u16>,
    kscale: Vec<f32>,
    vscale: Vec<f32>,
}

/// Largest |code| of a key or a value column in the int16 attention (13 bits, as the
/// int16 weights).
pub const ATT16_KV_LIMIT: i32 = 8191;

/// Largest sum over a row of the int16 attention's weight codes: times
/// [`ATT16_KV_LIMIT`] it stays within an i32, so the weights' product with `V` cannot
/// overflow.
const ATT16_WEIGHT_SUM: f32 = (i32::MAX / ATT16_KV_LIMIT) as f32;

/// The largest code of a row of the int16 attention's unnormalised softmax weights (each
/// in [0, 1], the largest exactly 1) whose sum is `1 / inv_sum` over `t` tokens: 32767,
/// or less where the codes' sum (up to `t / 2` above `limit / inv_sum` by rounding) would
/// pass [`ATT16_WEIGHT_SUM`]. The kernels and the reference share it.
pub(crate) fn attention_weight_limit(t: usize, inv_sum: f32) -> f32 {
    ((ATT16_WEIGHT_SUM - t as f32) * inv_sum)
        .floor()
        .clamp(1.0, i16::MAX as f32)
}

/// With `t % NR == 1` tokens (65 in AstroMAE: the cls token and 64 patches) the cls key
/// would fill an [`NR`]-wide panel of `QKᵀ` with NR - 1 columns of zeros (a fifth of its
/// multiply-adds), so its column of scores is a dot product per query instead.
fn cls_key_apart(t: usize) -> bool {
    t % NR == 1 && t > 1
}

/// `sum a[i] b[i]` in 8 lanes (which the compiler vectorises), then across them.
fn dot(a: &[f32], b: &[f32]) -> f32 {
    let mut acc = [0.0f32; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: f32 = ca
        .remainder()
        .iter()
        .zip(cb.remainder())
        .map(|(x, y)| x * y)
        .sum();
    for (x, y) in ca.zip(cb) {
        for j in 0..8 {
            acc[j] += x[j] * y[j];
        }
    }
    acc.iter().sum::<f32>() + tail
}

/// Attention composed of the table's own GEMM and softmax (the tiers without a fused
/// kernel): `S = QKᵀ` for the whole head, softmax over its rows, then `S V`.
fn attention_composed(
    ops: &Ops,
    h: &HeadQkv<'_>,
    scale: f32,
    out: &mut [f32],
    ldo: usize,
    ws: &mut AttentionScratch,
) {
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let k0 = usize::from(cls_key_apart(t));
    if ws.s.len() < t * t {
        ws.s.resize(t * t, 0.0);
    }
    let sc = &mut ws.s[..t * t];
    ws.kp.repack_nk(&h.k[k0 * ld..], t - k0, hd, ld, None);
    ops.gemm(t, h.q, ld, &ws.kp, &mut sc[k0..], t, Epilogue::PLAIN);
    if k0 == 1 {
        for (i, row) in sc.chunks_exact_mut(t).enumerate() {
            row[0] = dot(&h.q[i * ld..][..hd], &h.k[..hd]);
        }
    }
    ops.softmax_rows(t, t, sc, t, scale);
    ws.vp.repack_kn(h.v, t, hd, ld, None);
    ops.gemm(t, sc, t, &ws.vp, out, ldo, Epilogue::PLAIN);
}

/// Whether a head has work (`t` and `hd` non-zero); panics if `q`, `k`, `v` or `out` are
/// too short for `t` rows of `hd` values at their strides: what the attention kernels may
/// then rely on.
fn head_in_bounds(h: &HeadQkv<'_>, out: &[f32], ldo: usize) -> bool {
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    if t == 0 || hd == 0 {
        return false;
    }
    let need = (t - 1) * ld + hd;
    assert!(
        ld >= hd && h.q.len() >= need && h.k.len() >= need && h.v.len() >= need,
        "attention: q, k or v too short"
    );
    assert!(
        ldo >= hd && out.len() >= (t - 1) * ldo + hd,
        "attention: out too short"
    );
    true
}

/// The arithmetic of [`Ops::attention_bf16`] in plain code: `q`, `k`, `v` rounded to bf16,
/// scores and sums in f64, each row's weights `exp(scale (s - max s))` rounded to bf16 in
/// the products and exact in the normalising sum. The tiers without `vdpbf16ps` run it, and
/// the kernels are tested against it.
pub fn attention_bf16_reference(h: &HeadQkv<'_>, scale: f32, out: &mut [f32], ldo: usize) {
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let round = |x: &[f32], rows: usize| -> Vec<f64> {
        (0..rows * hd)
            .map(|i| round_bf16(x[(i / hd) * ld + i % hd]) as f64)
            .collect()
    };
    let (q, k, v) = (round(h.q, t), round(h.k, t), round(h.v, t));
    let mut s = vec![0.0f64; t];
    let mut acc = vec![0.0f64; hd];
    for i in 0..t {
        let qi = &q[i * hd..(i + 1) * hd];
        for (j, sj) in s.iter_mut().enumerate() {
            *sj = qi
                .iter()
                .zip(&k[j * hd..(j + 1) * hd])
                .map(|(a, b)| a * b)
                .sum();
        }
        let m = s.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let mut sum = 0.0;
        acc.fill(0.0);
        for (j, sj) in s.iter().enumerate() {
            let e = ((scale as f64) * (sj - m)).exp() as f32;
            sum += e as f64;
            let w = round_bf16(e) as f64;
            for (a, vv) in acc.iter_mut().zip(&v[j * hd..(j + 1) * hd]) {
                *a += w * vv;
            }
        }
        for (o, a) in out[i * ldo..i * ldo + hd].iter_mut().zip(&acc) {
            *o = (a / sum) as f32;
        }
    }
}

/// The arithmetic of [`Ops::attention_int16`] in plain code. Keys are quantised per key
/// ([`quantize_row`], limit [`ATT16_KV_LIMIT`]), values per column (same limit), each query
/// per row with the largest limit that keeps its products with every key within an i32
/// ([`activation_limit`] of the keys' largest sum of |codes|); a score is the exact integer
/// dot product times the query's and the key's scales; the row's weights `exp(scale (s -
/// max s))` (f64, rounded to f32) are coded as `round(w * L)` with `L` from
/// [`attention_weight_limit`]; the output is the exact integer product with `V`'s codes
/// times the column's scale and `1 / (L * sum w)`. The tiers without an int16 attention
/// kernel run it, and the kernels are tested against it.
pub fn attention_int16_reference(h: &HeadQkv<'_>, scale: f32, out: &mut [f32], ldo: usize) {
    let (t, hd, ld) = (h.t, h.hd, h.ld);
    let w2 = 2 * hd.div_ceil(2);
    let mut kc = vec![0i16; t * w2];
    let mut ks = vec![0.0f32; t];
    let mut widest = 0u64;
    for j in 0..t {
        let codes = &mut kc[j * w2..(j + 1) * w2];
        ks[j] = quantize_row(&h.k[j * ld..][..hd], ATT16_KV_LIMIT, codes, 2);
        widest = widest.max(codes.iter().map(|c| c.unsigned_abs() as u64).sum());
    }
    let lq = activation_limit(widest);
    let lv = ATT16_KV_LIMIT as f32;
    let mut vc = vec![0i32; t * hd];
    let mut vs = vec![0.0f32; hd];
    for c in 0..hd {
        let amax = (0..t).fold(0.0f32, |m, j| m.max(h.v[j * ld + c].abs()));
        let nan = (0..t).any(|j| h.v[j * ld + c].is_nan());
        let inv = if amax > 0.0 { lv / amax } else { 0.0 };
        for j in 0..t {
            vc[j * hd + c] = (h.v[j * ld + c] * inv).round_ties_even().clamp(-lv, lv) as i32;
        }
        vs[c] = if nan { f32::NAN } else { amax / lv };
    }
    let mut qc = vec![0i16; w2];
    let mut s = vec![0.0f32; t];
    let mut w = vec![0.0f32; t];
    for i in 0..t {
        let sq = quantize_row(&h.q[i * ld..][..hd], lq, &mut qc, 2);
        for (j, sj) in s.iter_mut().enumerate() {
            let dot: i64 = qc
                .iter()
                .zip(&kc[j * w2..(j + 1) * w2])
                .map(|(a, b)| i64::from(*a) * i64::from(*b))
                .sum();
            *sj = dot as f32 * (sq * ks[j]);
        }
        let m = s.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let mut sum = 0.0f64;
        for (wj, sj) in w.iter_mut().zip(&s) {
            *wj = ((scale as f64) * (*sj as f64 - m as f64)).exp() as f32;
            sum += *wj as f64;
        }
        let inv = (1.0 / sum) as f32;
        let lp = attention_weight_limit(t, inv);
        let rf = inv / lp;
        for c in 0..hd {
            let acc: i64 = (0..t)
                .map(|j| (w[j] * lp).round_ties_even() as i64 * i64::from(vc[j * hd + c]))
                .sum();
            out[i * ldo + c] = acc as f32 * (rf * vs[c]);
        }
    }
}

impl Ops {
    /// `C = act(A·B + bias)` (or `C +=` with [`Epilogue::accumulate`]) for `m` rows:
    /// row `i` of `A` is `a[i*lda .. i*lda + b.k()]`, row `i` of `C` is
    /// `c[i*ldc .. i*ldc + b.n()]`. Values of `c` outside those rows are untouched.
    /// When `b` is int8 ([`PackedB::quantize_int8`]), each row of `A` is quantised with
    /// [`quantize_row`] and the product is `acc_i32 * (scale_row * scale_col) + bias`.
    ///
    /// Panics if the slices are too short for `m`, the strides or `b`'s shape.
    #[allow(clippy::too_many_arguments)]
    pub fn gemm(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        b: &PackedB,
        c: &mut [f32],
        ldc: usize,
        epi: Epilogue,
    ) {
        if m == 0 || b.n() == 0 {
            return;
        }
        assert!(
            lda >= b.k() && a.len() >= (m - 1) * lda + b.k(),
            "gemm: A too short"
        );
        assert!(
            ldc >= b.n() && c.len() >= (m - 1) * ldc + b.n(),
            "gemm: C too short"
        );
        if b.is_quantized() {
            (self.gemm_int8)(m, a, lda, b, c, ldc, epi)
        } else if b.is_bf16() {
            match self.gemm_bf16 {
                Some(f) => f(m, a, lda, b, c, ldc, epi),
                None => self.gemm_bf16_emulated(m, a, lda, b, c, ldc, epi),
            }
        } else {
            (self.gemm)(m, a, lda, b, c, ldc, epi)
        }
    }

    /// The bf16 product on the f32 kernels: blocks of `A` rows rounded to bf16 (into a
    /// per-thread buffer), then the f32 product against the bf16-rounded weights. Products
    /// of two bf16 values are exact in f32, so this is `vdpbf16ps`'s arithmetic up to the
    /// order of the sums (and its flushing of bf16 subnormals to zero).
    #[allow(clippy::too_many_arguments)]
    fn gemm_bf16_emulated(
        &self,
        m: usize,
        a: &[f32],
        lda: usize,
        b: &PackedB,
        c: &mut [f32],
        ldc: usize,
        epi: Epilogue,
    ) {
        thread_local! {
            static ROUNDED: std::cell::Cell<Vec<f32>> = const { std::cell::Cell::new(Vec::new()) };
        }
        let k = b.k();
        let rows = (BF16_A_BLOCK / k.max(1)).max(BF16_MIN_ROWS);
        let mut buf = ROUNDED.take();
        buf.resize(rows.min(m) * k, 0.0);
        let mut m0 = 0;
        while m0 < m {
            let r = rows.min(m - m0);
            for (i, dst) in buf.chunks_exact_mut(k.max(1)).take(r).enumerate() {
                let src = &a[(m0 + i) * lda..(m0 + i) * lda + k];
                for (d, v) in dst.iter_mut().zip(src) {
                    *d = round_bf16(*v);
                }
            }
            (self.gemm)(r, &buf, k, b, &mut c[m0 * ldc..], ldc, epi);
            m0 += r;
        }
        ROUNDED.set(buf);
    }

    /// LayerNorm over each of `rows` rows of `dim` values:
    /// `out = (x - mean) / sqrt(var + eps) * gamma + beta` (biased variance).
    /// Row `r` of `x` starts at `r*ldx`, of `out` at `r*ldo`.
    ///
    /// Panics if a slice is too short.
    #[allow(clippy::too_many_arguments)]
    pub fn layer_norm(
        &self,
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
        if rows == 0 || dim == 0 {
            return;
        }
        assert!(
            gamma.len() >= dim && beta.len() >= dim,
            "layer_norm: params too short"
        );
        assert!(
            ldx >= dim && x.len() >= (rows - 1) * ldx + dim,
            "layer_norm: x too short"
        );
        assert!(
            ldo >= dim && out.len() >= (rows - 1) * ldo + dim,
            "layer_norm: out too short"
        );
        (self.layer_norm)(rows, dim, x, ldx, gamma, beta, eps, out, ldo)
    }

    /// In place, for each of `rows` rows of `n` values starting at `r*ld`:
    /// `x = softmax(scale * x)`. `scale` must be positive.
    ///
    /// Panics if `x` is too short.
    pub fn softmax_rows(&self, rows: usize, n: usize, x: &mut [f32], ld: usize, scale: f32) {
        if rows == 0 || n == 0 {
            return;
        }
        assert!(
            ld >= n && x.len() >= (rows - 1) * ld + n,
            "softmax: x too short"
        );
        (self.softmax)(rows, n, x, ld, scale)
    }

    /// Scaled dot-product attention of one head: `out[i] = sum_j p_ij v_j` with
    /// `p_i = softmax(scale * (q_i . k_j) over j)`, row `i` of `out` at `out[i * ldo]`
    /// (`h.hd` values; the rest of `out` is untouched). Fused into one pass per strip of
    /// queries where the tier has a kernel for it (AVX2), else composed of
    /// [`Ops::gemm`] and [`Ops::softmax_rows`]. `scale` must be positive.
    ///
    /// Panics if a slice is too short for `h.t` rows of `h.hd` values at its stride.
    pub fn attention(
        &self,
        h: &HeadQkv<'_>,
        scale: f32,
        out: &mut [f32],
        ldo: usize,
        ws: &mut AttentionScratch,
    ) {
        if head_in_bounds(h, out, ldo) {
            (self.attention)(self, h, scale, out, ldo, ws)
        }
    }

    /// [`Ops::attention`] with bf16 products: queries, keys, values and the softmax weights
    /// (before their normalisation) rounded to bfloat16 (ties to even), the exact products
    /// summed in f32 (`vdpbf16ps`), exponentials and normalisation in f32. Where the CPU has
    /// no `vdpbf16ps` the same arithmetic runs as [`attention_bf16_reference`] (bf16
    /// accuracy, below f32 speed: `auto` only picks it where it measures faster).
    ///
    /// Panics as [`Ops::attention`].
    pub fn attention_bf16(
        &self,
        h: &HeadQkv<'_>,
        scale: f32,
        out: &mut [f32],
        ldo: usize,
        ws: &mut AttentionScratch,
    ) {
        let reference =
            |h: &HeadQkv<'_>, out: &mut [f32]| attention_bf16_reference(h, scale, out, ldo);
        self.kernel_or_reference(self.attention_bf16, reference, h, scale, out, ldo, ws);
    }

    /// Runs `kernel` on the head, or `reference` where the tier has none (after the
    /// bounds checks every attention entry makes).
    #[allow(clippy::too_many_arguments)]
    fn kernel_or_reference(
        &self,
        kernel: Option<AttentionFn>,
        reference: impl FnOnce(&HeadQkv<'_>, &mut [f32]),
        h: &HeadQkv<'_>,
        scale: f32,
        out: &mut [f32],
        ldo: usize,
        ws: &mut AttentionScratch,
    ) {
        if head_in_bounds(h, out, ldo) {
            match kernel {
                Some(f) => f(self, h, scale, out, ldo, ws),
                None => reference(h, out),
            }
        }
    }

    /// Whether [`Ops::attention_bf16`] has a kernel of its own on this tier (else it runs
    /// the slower reference).
    pub fn has_bf16_attention(&self) -> bool {
        self.attention_bf16.is_some()
    }

    /// [`Ops::attention`] with int16 products (`vpdpwssd`): keys and values as 13-bit codes
    /// (per key, per value column), queries with as many bits as an i32 sum allows (per
    /// query), the unnormalised softmax weights as up to 15-bit codes (per row), exact
    /// integer sums; exponentials and scaling in f32 (see [`attention_int16_reference`],
    /// which the tiers without a kernel for it run: `auto` only picks it where it measures
    /// faster). Near f32's results where bf16's rounding is not (the GEMMs' int16 class).
    ///
    /// Panics as [`Ops::attention`].
    pub fn attention_int16(
        &self,
        h: &HeadQkv<'_>,
        scale: f32,
        out: &mut [f32],
        ldo: usize,
        ws: &mut AttentionScratch,
    ) {
        let reference =
            |h: &HeadQkv<'_>, out: &mut [f32]| attention_int16_reference(h, scale, out, ldo);
        self.kernel_or_reference(self.attention_int16, reference, h, scale, out, ldo, ws);
    }

    /// Whether [`Ops::attention_int16`] has a kernel of its own on this tier.
    pub fn has_int16_attention(&self) -> bool {
        self.attention_int16.is_some()
    }

    /// Attention with its two products in `p`: [`Ops::attention`] for f32 (and int8, which
    /// attention does not run in), [`Ops::attention_bf16`], [`Ops::attention_int16`].
    ///
    /// Panics as [`Ops::attention`].
    pub fn attention_in(
        &self,
        p: Precision,
        h: &HeadQkv<'_>,
        scale: f32,
        out: &mut [f32],
        ldo: usize,
        ws: &mut AttentionScratch,
    ) {
        match p {
            Precision::Bf16 => self.attention_bf16(h, scale, out, ldo, ws),
            Precision::Int16 => self.attention_int16(h, scale, out, ldo, ws),
            Precision::F32 | Precision::Int8 => self.attention(h, scale, out, ldo, ws),
        }
    }

    /// Whether attention in `p` runs a kernel of this tier's own: always for f32, where
    /// the tier has one for bf16 and int16 (else their slow references), never for int8.
    pub fn has_attention_kernel(&self, p: Precision) -> bool {
        match p {
            Precision::F32 => true,
            Precision::Bf16 => self.has_bf16_attention(),
            Precision::Int16 => self.has_int16_attention(),
            Precision::Int8 => false,
        }
    }

    /// Runs this tier's peak-rate probe: `iters` rounds of independent f32 multiply-add
    /// chains (enough of them to cover the FMA latency on current cores), nothing but
    /// register arithmetic. Returns a checksum (print or `black_box` it) and the FLOPs
    /// done (2 per multiply-add and lane); FLOPs over elapsed time is the tier's peak on
    /// the calling thread. See [`fma_peak`].
    pub fn fma_probe(&self, iters: u64) -> (f32, u64) {
        (self.fma_probe)(iters)
    }
}

/// This thread's measured f32 FMA peak in GFLOP/s for `ops`' tier, timed by `clock`
/// (seconds; the thread's CPU clock, say, so other load does not count): [`Ops::fma_probe`]
/// sized by [`probe_rounds`] to take at least `min_seconds`, then the best rate over three
/// such rounds (the least disturbed by other load).
pub fn fma_peak(ops: &Ops, clock: &dyn Fn() -> f64, min_seconds: f64) -> f64 {
    let iters = probe_rounds(ops, clock, min_seconds);
    let mut best = 0.0f64;
    for _ in 0..3 {
        let t = clock();
        let (sum, flops) = ops.fma_probe(iters);
        let secs = clock() - t;
        std::hint::black_box(sum);
        best = best.max(flops as f64 / secs.max(1e-9) / 1e9);
    }
    best
}

/// Iterations of [`Ops::fma_probe`] for one round of at least `seconds` by `clock`
/// (seconds): doubled from 2^12 until a round takes that long (at most 2^34).
pub fn probe_rounds(ops: &Ops, clock: &dyn Fn() -> f64, seconds: f64) -> u64 {
    let mut iters = 1u64 << 12;
    loop {
        let t = clock();
        std::hint::black_box(ops.fma_probe(iters));
        if clock() - t >= seconds || iters >= 1 << 34 {
            return iters;
        }
        iters *= 2;
    }
}

static OPS: OnceLock<Ops> = OnceLock::new();

/// The kernel table for this process (detected once, `CAI_KERNELS` honoured).
pub fn ops() -> &'static Ops {
    OPS.get_or_init(|| {
        let wanted = std::env::var("CAI_KERNELS").ok();
        let ops = select(wanted.as_deref());
        tracing::info!(tier = ?ops.tier, "cai-model kernels selected");
        ops
    })
}

/// The best table for this CPU, or the one `wanted` names when the CPU supports it.
fn select(wanted: Option<&str>) -> Ops {
    let best = best();
    match wanted
        .map(str::trim)
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("") | Some("auto") => best,
        Some("scalar") => scalar::ops(),
        Some(name @ ("avx2" | "avx512" | "amx" | "neon")) => match by_name(name) {
            Some(o) => o,
            None => {
                tracing::warn!(
                    requested = name,
                    "CAI_KERNELS tier not supported by this CPU; using the best available"
                );
                best
            }
        },
        Some(other) => {
            tracing::warn!(
                requested = other,
                "unknown CAI_KERNELS value (scalar|avx2|avx512|amx|neon); using the best available"
            );
            best
        }
    }
}

#[cfg(target_arch = "x86_64")]
fn by_name(name: &str) -> Option<Ops> {
    match name {
        "avx2" => x86::avx2_ops(),
        "avx512" => x86::avx512_ops(),
        "amx" => x86::amx_ops(),
        _ => None,
    }
}

#[cfg(target_arch = "aarch64")]
fn by_name(name: &str) -> Option<Ops> {
    match name {
        "neon" => aarch64::neon_ops(),
        _ => None,
    }
}

#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
fn by_name(_name: &str) -> Option<Ops> {
    None
}

fn best() -> Ops {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(o) = x86::amx_ops() {
            return o;
        }
        if let Some(o) = x86::avx512_ops() {
            return o;
        }
        if let Some(o) = x86::avx2_ops() {
            return o;
        }
    }
    #[cfg(target_arch = "aarch64")]
    if let Some(o) = aarch64::neon_ops() {
        return o;
    }
    scalar::ops()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Given scales: RTN's own scales quantise as `quantize_int8`; weights that are
    /// `code * scale` keep exactly those codes (GPTQ's, however far from RTN's).
    #[test]
    fn int8_with_given_scales() {
        let (n, k) = (21, 37);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.45)
            .collect();
        let f = PackedB::pack_nk(&w, n, k, k, None);
        let sc = f.int8_scales();
        let (mut a, mut b) = (f.clone(), f.clone());
        a.quantize_int8();
        b.quantize_int8_scaled(&sc);
        assert_eq!(a.weights_kn(), b.weights_kn());
        // Codes anywhere in -127..=127, as f32 weights, with those scales.
        let codes: Vec<i8> = (0..k * n).map(|i| ((i * 37) % 255) as i8).collect();
        let codes: Vec<i8> = codes.iter().map(|c| (*c).max(-127)).collect();
        let deq: Vec<f32> = codes
            .iter()
            .enumerate()
            .map(|(i, c)| f32::from(*c) * sc[i % n])
            .collect();
        let mut g = PackedB::pack_kn(&deq, k, n, n, None);
        g.quantize_int8_scaled(&sc);
        assert_eq!(g.weights_kn(), deq);
        // Scales of another length: plain int8.
        let mut c = f.clone();
        c.quantize_int8_scaled(&sc[1..]);
        assert_eq!(c.weights_kn(), a.weights_kn());
    }

    #[test]
    fn pack_layouts_agree() {
        let (n, k) = (19, 5);
        let w: Vec<f32> = (0..n * k).map(|i| i as f32).collect();
        let bias: Vec<f32> = (0..n).map(|i| -(i as f32)).collect();
        let a = PackedB::pack_nk(&w, n, k, k, Some(&bias));
        // The transpose, packed the other way, is the same matrix.
        let mut wt = vec![0.0; n * k];
        for j in 0..n {
            for kk in 0..k {
                wt[kk * n + j] = w[j * k + kk];
            }
        }
        let b = PackedB::pack_kn(&wt, k, n, n, Some(&bias));
        for kk in 0..k {
            for j in 0..n {
                assert_eq!(a.at(kk, j), w[j * k + kk]);
                assert_eq!(b.at(kk, j), w[j * k + kk]);
            }
        }
        assert_eq!(a.panels(), 2);
        assert_eq!(a.panel(1)[NR - 1], 0.0);
        assert_eq!(a.bias(), &bias[..]);
        assert_eq!(a.panel(0).as_ptr() as usize % 64, 0);
    }

    /// Every value of a packed matrix, padding included (zero), against its source.
    fn check_packed(p: &PackedB, n: usize, k: usize, get: impl Fn(usize, usize) -> f32) {
        assert_eq!((p.n(), p.k()), (n, k));
        for kk in 0..k {
            for j in 0..p.panels() * NR {
                let want = if j < n { get(kk, j) } else { 0.0 };
                assert_eq!(p.panel(j / NR)[kk * NR + j % NR], want, "kk {kk} j {j}");
            }
        }
        for j in 0..p.panels() * NR {
            assert_eq!(p.panel_bias(j / NR)[j % NR], if j < n { 0.5 } else { 0.0 });
        }
    }

    proptest::proptest! {
        /// One `PackedB` repacked through a sequence of shapes, both layouts, the `k x n` one
        /// with its rows rotated (as attention reuses its buffers): no value of an earlier
        /// matrix survives in the padding, and the SIMD panel packer (on CPUs that have one)
        /// agrees with the definition.
        #[test]
        fn repacking_reuses_buffers_exactly(
            shapes in proptest::collection::vec((1usize..40, 1usize..70, 0usize..5, proptest::bool::ANY, 0usize..71), 1..6)
        ) {
            let mut p = PackedB::default();
            for (i, &(n, k, pad, nk, rot)) in shapes.iter().enumerate() {
                let bias = vec![0.5f32; n];
                if nk {
                    let ld = k + pad;
                    let w: Vec<f32> = (0..n * ld).map(|v| (v + i) as f32 + 1.0).collect();
                    p.repack_nk(&w, n, k, ld, Some(&bias));
                    check_packed(&p, n, k, |kk, j| w[j * ld + kk]);
                } else {
                    let ld = n + pad;
                    let w: Vec<f32> = (0..k * ld).map(|v| (v + i) as f32 + 1.0).collect();
                    // Rows taken from `first` on, wrapping (first = 0: repack_kn itself).
                    let first = rot % (k + 1);
                    p.repack_kn_rotated(&w, k, n, ld, first, Some(&bias));
                    check_packed(&p, n, k, |kk, j| w[((kk + first) % k) * ld + j]);
                }
            }
        }
    }

    fn lcg_vec(seed: &mut u64, n: usize) -> Vec<f32> {
        (0..n)
            .map(|_| {
                *seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                (*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0
            })
            .collect()
    }

    /// The scalar integer products (int8 and int16) against the f32 one: each output within
    /// `sum_k |a||w| * (1/(2 wmax) + 1/(2 limit)) + 1e-6` (half a quantisation step of each
    /// factor per term), on shapes with long and odd reductions. For AstroMAE's reduction
    /// lengths int16's error is at least 4 times smaller than int8's (measured here: 23
    /// times at k = 192, 6.8 at 768; uniform weights leave it the fewest activation bits;
    /// at k = 3216 only 2.4).
    #[test]
    fn integer_references_are_close_to_f32() {
        let ops = scalar::ops();
        let mut s = 1u64;
        for (m, n, k) in [(5, 33, 7), (3, 16, 192), (4, 24, 768), (2, 20, 3216)] {
            let a = lcg_vec(&mut s, m * k);
            let w = lcg_vec(&mut s, n * k);
            let bias = lcg_vec(&mut s, n);
            let f = PackedB::pack_nk(&w, n, k, k, Some(&bias));
            let mut cf = vec![0.0; m * n];
            ops.gemm(m, &a, k, &f, &mut cf, n, Epilogue::PLAIN);
            let mut worst = [0.0f32; 2];
            for (wi, bits) in [8, INT16_WEIGHT_BITS].into_iter().enumerate() {
                let mut q = f.clone();
                if bits == 8 {
                    q.quantize_int8();
                } else {
                    q.quantize_int16();
                }
                // Int8 quads are padded to whole AMX tiles of 64 rows, more than f32's
                // bytes for a shorter reduction.
                assert!(q.is_quantized() && (q.bytes() < f.bytes() || k < 4 * TILE_K_GROUPS));
                assert_eq!(q.weight_bits(), Some(bits));
                let mut cq = vec![0.0; m * n];
                ops.gemm(m, &a, k, &q, &mut cq, n, Epilogue::PLAIN);
                let lim = q.activation_limit() as f32;
                let qmax = ((1 << (bits - 1)) - 1) as f32;
                for i in 0..m {
                    let row = &a[i * k..(i + 1) * k];
                    let amax = row.iter().fold(0f32, |x, v| x.max(v.abs()));
                    // Half an activation step: int8 spreads 255 levels over the row's
                    // range (widened to hold 0), int16 +-lim levels over +-amax.
                    let ahalf = if bits == 8 {
                        let (lo, hi) = min_max(row);
                        (hi - lo) / (2.0 * lim)
                    } else {
                        amax / (2.0 * lim)
                    };
                    for j in 0..n {
                        let wmax = (0..k).fold(0f32, |x, kk| x.max(w[j * k + kk].abs()));
                        let whalf = wmax / (2.0 * qmax);
                        let term = amax * whalf + wmax * ahalf + ahalf * whalf;
                        let bound = k as f32 * term + 1e-6;
                        let d = (cf[i * n + j] - cq[i * n + j]).abs();
                        assert!(d <= bound, "w{bits} ({m},{n},{k}) [{i},{j}]: {d} > {bound}");
                        worst[wi] = worst[wi].max(d);
                    }
                }
            }
            if (192..=768).contains(&k) {
                assert!(
                    worst[1] * 4.0 <= worst[0],
                    "({m},{n},{k}): int16 {} vs int8 {}",
                    worst[1],
                    worst[0]
                );
            }
        }
    }

    /// The activation limit keeps the i32 sums exact even in the worst case: every weight
    /// at the column maximum and every activation at the limit, all of one sign (the
    /// product is then `k` exactly, up to f32 rounding of the scales).
    #[test]
    fn integer_sums_cannot_overflow() {
        for k in [1usize, 2, 191, 768, 3216, 40_000] {
            for bits in [8, INT16_WEIGHT_BITS] {
                let w = vec![0.5f32; 2 * k];
                let mut b = PackedB::pack_nk(&w, 2, k, k, None);
                if bits == 8 {
                    b.quantize_int8();
                } else {
                    b.quantize_int16();
                }
                let qmax = (1u64 << (bits - 1)) - 1;
                let lim = b.activation_limit();
                assert!((1..=32767).contains(&lim));
                assert!(k as u64 * qmax * lim as u64 <= i32::MAX as u64);
                let a = vec![-2.0f32; k];
                let mut c = vec![0.0f32; 2];
                scalar::ops().gemm(1, &a, k, &b, &mut c, 2, Epilogue::PLAIN);
                for v in c {
                    assert!((v + k as f32).abs() <= 1e-5 * k as f32, "k{k} w{bits}: {v}");
                }
            }
        }
        // Beyond 2^31 / 4095 rows not even 1-level activations fit: the weights stay f32.
        let k = (i32::MAX as usize) / 4095 + 1;
        let mut b = PackedB::pack_nk(&vec![1.0f32; k], 1, k, k, None);
        b.quantize_int16();
        assert!(!b.is_quantized());
        assert_eq!(b.at(k - 1, 0), 1.0);
        // int8 x int8: codes up to 255 from the zero point against weights up to 127.
        let k = (i32::MAX as usize) / (127 * 255);
        for (k, fits) in [(k, true), (k + 1, false)] {
            let mut b = PackedB::pack_nk(&vec![1.0f32; k], 1, k, k, None);
            b.quantize_int8();
            assert_eq!(b.is_quantized(), fits, "k {k}");
        }
    }

    /// Int8 weights in `vpdpbusd`'s layout (groups of 4 rows per column) hold the same
    /// integers as the i16 pairs, zero past `k` and `n`, and their column sums.
    #[test]
    fn int8_layouts_agree() {
        let (n, k) = (21, 11);
        let w = lcg_vec(&mut 5, n * k);
        let mut b = PackedB::pack_nk(&w, n, k, k, None);
        b.quantize_int8();
        assert!(b.is_int8() && b.weight_bits() == Some(8));
        assert_eq!(b.activation_limit(), ACT8_MAX);
        let k4 = k.div_ceil(4).next_multiple_of(TILE_K_GROUPS);
        for p in 0..b.panels() {
            let (quads, pairs, sums) = (b.q8_panel(p), b.q_panel(p), b.q_colsum(p));
            assert_eq!(quads.len(), k4 * NR * 4);
            for jj in 0..NR {
                let mut sum = 0i32;
                for kk in 0..k4 * 4 {
                    let q8 = quads[((kk / 4) * NR + jj) * 4 + kk % 4];
                    let pair = if kk < k {
                        pairs[((kk / 2) * NR + jj) * 2 + kk % 2]
                    } else {
                        0
                    };
                    assert_eq!(q8 as i16, pair, "panel {p} k {kk} col {jj}");
                    let j = p * NR + jj;
                    if kk >= k || j >= n {
                        assert_eq!(q8, 0);
                    } else {
                        let scale = b.q_scale(p)[jj];
                        assert!((q8 as f32 * scale - w[j * k + kk]).abs() <= scale / 2.0 + 1e-7);
                    }
                    sum += q8 as i32;
                }
                assert_eq!(sums[jj], sum, "panel {p} col {jj}");
            }
        }
        let mut b16 = PackedB::pack_nk(&w, n, k, k, None);
        b16.quantize_int16();
        assert!(!b16.is_int8() && b16.q8_panel(0).is_empty() && b16.q_colsum(0).is_empty());
    }

    #[test]
    fn quantize_row_u8_codes() {
        // Range [-0.5, 2] over 255 levels: inv 102, zero point 51.
        let a = [1.0f32, -0.5, 0.0, 2.0, f32::NAN];
        let mut out = [7u8; 6];
        let (scale, zp) = quantize_row_u8(&a, &mut out);
        assert_eq!((scale, zp), (2.5 / 255.0, 51));
        assert_eq!(out, [153, 0, 51, 255, 0, 7]);
        let mut pairs = [9i16; 10];
        assert_eq!(quantize_row_int8_pairs(&a, &mut pairs, 4), scale);
        assert_eq!(pairs, [102, -51, 9, 9, 0, 204, 9, 9, -51, 0]);
        // All-zero, empty and all-negative rows; an infinity makes the scale NaN.
        assert_eq!(quantize_row_u8(&[0.0; 3], &mut out), (0.0, 0));
        assert_eq!(&out[..3], &[0, 0, 0]);
        assert_eq!(quantize_row_u8(&[], &mut out), (0.0, 0));
        let (s, z) = quantize_row_u8(&[-2.0, -1.0], &mut out);
        assert_eq!((s, z), (2.0 / 255.0, 255));
        assert_eq!(&out[..2], &[0, 127]); // -127.5 rounds to even
        assert!(quantize_row_u8(&[1.0, f32::INFINITY], &mut out).0.is_nan());
        // Every value within half a step of its code's value.
        let row = lcg_vec(&mut 9, 1000);
        let mut codes = vec![0u8; 1000];
        let (s, z) = quantize_row_u8(&row, &mut codes);
        for (v, u) in row.iter().zip(&codes) {
            assert!(
                (((*u as i32 - z) as f32) * s - v).abs() <= s * 0.5001,
                "{v}"
            );
        }
    }

    #[test]
    fn bf16_rounding() {
        assert_eq!(round_bf16(1.0), 1.0);
        assert_eq!(round_bf16(-0.0), -0.0);
        // 1 + 2^-8 is a tie between 1 and 1 + 2^-7: to even (1).
        assert_eq!(round_bf16(1.0 + 1.0 / 256.0), 1.0);
        assert_eq!(round_bf16(1.0 + 3.0 / 256.0), 1.0 + 4.0 / 256.0);
        assert!(round_bf16(f32::NAN).is_nan());
        assert_eq!(round_bf16(f32::INFINITY), f32::INFINITY);
        for x in [0.1f32, 3.7, -123.456, 1e-20] {
            let r = round_bf16(x);
            assert_eq!(r.to_bits() & 0xFFFF, 0);
            assert!((r - x).abs() <= x.abs() / 256.0);
        }
        for p in Precision::ALL {
            assert_eq!(Precision::parse(p.name()), Some(p));
        }
    }

    #[test]
    fn quantize_row_layout() {
        let a = [1.0f32, -2.0, 0.5];
        let mut out = [9i16; 8];
        let s = quantize_row(&a, 100, &mut out, 4);
        assert_eq!(s, 0.02);
        assert_eq!(out, [50, -100, 9, 9, 25, 0, 9, 9]);
        let s = quantize_row(&[0.0; 3], 100, &mut out, 4);
        assert_eq!(s, 0.0);
        assert_eq!(activation_limit(0), 32767);
        assert_eq!(activation_limit(192 * 127), 32767);
        assert_eq!(activation_limit(3216 * 127), 5257);
        assert_eq!(activation_limit(768 * 4095), 682);
        assert_eq!(activation_limit(u64::MAX), 0);
    }

    #[test]
    fn fma_probe_counts_flops() {
        for ops in [scalar::ops(), best()] {
            let (_, zero) = ops.fma_probe(0);
            assert_eq!(zero, 0);
            let (sum, f10) = ops.fma_probe(10);
            let (_, f20) = ops.fma_probe(20);
            assert!(sum.is_finite());
            assert!(f10 > 0 && f20 == 2 * f10, "{f10} {f20}");
        }
        let start = std::time::Instant::now();
        assert!(fma_peak(&best(), &|| start.elapsed().as_secs_f64(), 1e-4) > 0.0);
    }

    #[test]
    fn select_honours_names() {
        assert_eq!(select(Some("scalar")).tier, Tier::Scalar);
        let best = best().tier;
        assert_eq!(select(Some("nonsense")).tier, best);
        assert_eq!(select(None).tier, best);
        #[cfg(target_arch = "aarch64")]
        assert_eq!(select(Some("neon")).tier, Tier::Neon);
    }
}
