//! Compute kernels: a safe slice API over a dispatch table filled once per process.
//!
//! * [`scalar`] is the reference, written in plain loops; it runs everywhere.
//! * [`x86`] holds AVX2+FMA kernels (chosen when the CPU has both).
//!
//! [`ops`] detects the CPU on first use, caches the chosen [`Ops`] table in a `OnceLock`
//! and logs the tier through `tracing`. The environment variable `CAI_KERNELS`
//! (`scalar`, `avx2`, `avx512`) forces a tier; a tier the CPU lacks falls back to the best
//! available one with a warning. There are no AVX-512 kernels yet: on such CPUs the
//! `avx512` tier reuses the AVX2 table (and says so in the log).
//!
//! The matrix product works on weights packed once into [`PackedB`] panels of [`NR`]
//! columns; activations (`A`) stay row-major with any row stride, and the result is written
//! with any row stride, so concatenations and column offsets are free. Epilogues (bias,
//! ReLU, exact-erf GELU, accumulate into the output for residuals) are fused.

use std::sync::OnceLock;

pub mod scalar;
#[cfg(target_arch = "x86_64")]
pub mod x86;

/// Width of one packed weight panel (columns of `B`).
pub const NR: usize = 16;

/// Alignment (in f32 elements) of packed panel data: 64 bytes.
const ALIGN: usize = 16;

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
            for kk in 0..k {
                let src = &w[kk * ld + p * NR..kk * ld + p * NR + cols];
                panel[kk * NR..kk * NR + cols].copy_from_slice(src);
            }
        }
    }

    fn reset(&mut self, k: usize, n: usize, bias: Option<&[f32]>) {
        self.k = k;
        self.n = n;
        let len = n.div_ceil(NR) * NR * k;
        self.data.clear();
        self.data.resize(len + ALIGN, 0.0);
        let addr = self.data.as_ptr() as usize;
        self.off = ((64 - addr % 64) % 64) / 4;
        self.bias.clear();
        self.bias.resize(n.div_ceil(NR) * NR, 0.0);
        if let Some(b) = bias {
            self.bias[..n].copy_from_slice(&b[..n]);
        }
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

    /// `B[kk][j]`.
    pub fn at(&self, kk: usize, j: usize) -> f32 {
        self.panel(j / NR)[kk * NR + j % NR]
    }
}

/// Which implementation a table uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tier {
    /// Plain loops.
    Scalar,
    /// AVX2 + FMA.
    Avx2,
    /// AVX-512F (currently backed by the AVX2 kernels).
    Avx512,
}

/// `C[m x n] (=|+=) act(A[m x k] · B + bias)`; see [`Ops::gemm`].
pub type GemmFn = fn(usize, &[f32], usize, &PackedB, &mut [f32], usize, Epilogue);
/// Row-wise LayerNorm; see [`Ops::layer_norm`].
pub type LayerNormFn = fn(usize, usize, &[f32], usize, &[f32], &[f32], f32, &mut [f32], usize);
/// Row-wise scaled softmax; see [`Ops::softmax_rows`].
pub type SoftmaxFn = fn(usize, usize, &mut [f32], usize, f32);
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
    layer_norm: LayerNormFn,
    softmax: SoftmaxFn,
    fma_probe: FmaProbeFn,
}

impl Ops {
    /// `C = act(A·B + bias)` (or `C +=` with [`Epilogue::accumulate`]) for `m` rows:
    /// row `i` of `A` is `a[i*lda .. i*lda + b.k()]`, row `i` of `C` is
    /// `c[i*ldc .. i*ldc + b.n()]`. Values of `c` outside those rows are untouched.
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
        (self.gemm)(m, a, lda, b, c, ldc, epi)
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

    /// Runs this tier's peak-rate probe: `iters` rounds of independent f32 multiply-add
    /// chains (enough of them to cover the FMA latency on current cores), nothing but
    /// register arithmetic. Returns a checksum (print or `black_box` it) and the FLOPs
    /// done (2 per multiply-add and lane); FLOPs over elapsed time is the tier's peak on
    /// the calling thread. See [`fma_peak`].
    pub fn fma_probe(&self, iters: u64) -> (f32, u64) {
        (self.fma_probe)(iters)
    }
}

/// This thread's measured f32 FMA peak in GFLOP/s for `ops`' tier: runs
/// [`Ops::fma_probe`] in growing rounds until one takes at least `min_seconds`, and
/// reports the best rate over three such rounds (the least disturbed by other load).
pub fn fma_peak(ops: &Ops, min_seconds: f64) -> f64 {
    let mut iters = 1u64 << 14;
    let mut best = 0.0f64;
    let mut long_rounds = 0;
    while long_rounds < 3 {
        let t = std::time::Instant::now();
        let (sum, flops) = ops.fma_probe(iters);
        let secs = t.elapsed().as_secs_f64();
        std::hint::black_box(sum);
        if secs >= min_seconds {
            long_rounds += 1;
            best = best.max(flops as f64 / secs / 1e9);
        } else {
            iters = iters.saturating_mul(2);
        }
    }
    best
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
        Some(name @ ("avx2" | "avx512")) => match by_name(name) {
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
                "unknown CAI_KERNELS value (scalar|avx2|avx512); using the best available"
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
        _ => None,
    }
}

#[cfg(not(target_arch = "x86_64"))]
fn by_name(_name: &str) -> Option<Ops> {
    None
}

fn best() -> Ops {
    #[cfg(target_arch = "x86_64")]
    {
        if let Some(o) = x86::avx512_ops() {
            return o;
        }
        if let Some(o) = x86::avx2_ops() {
            return o;
        }
    }
    scalar::ops()
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(fma_peak(&best(), 1e-4) > 0.0);
    }

    #[test]
    fn select_honours_names() {
        assert_eq!(select(Some("scalar")).tier, Tier::Scalar);
        let best = best().tier;
        assert_eq!(select(Some("nonsense")).tier, best);
        assert_eq!(select(None).tier, best);
    }
}
