//! Test-only checks of a SIMD table against [`scalar`], with stated tolerances, for the
//! per-ISA test modules (`x86.rs` and `aarch64.rs`; they take any [`Ops`]), and one test of
//! whatever tier [`super::best`] picks on this CPU.

use super::{scalar, Act, AttentionScratch, Epilogue, HeadQkv, Ops, PackedB};

/// Whether a kernel that needs CPU feature `what` can be tested here (`has`). When it
/// cannot, the test says so on stderr instead of passing silently, and fails if the
/// environment variable `CAI_TEST_REQUIRE` (a comma-separated list, or `all`) names
/// `what`: set it where the feature must be present, e.g. in an emulator
/// (`scripts/test-avx512.sh CAI_TEST_REQUIRE=avx512vnni kernels::`).
pub fn available(what: &'static str, has: bool) -> bool {
    use std::collections::BTreeSet;
    use std::sync::Mutex;
    static SAID: Mutex<BTreeSet<&str>> = Mutex::new(BTreeSet::new());
    if has {
        return true;
    }
    let required = std::env::var("CAI_TEST_REQUIRE").unwrap_or_default();
    let required = required
        .split(',')
        .any(|r| r.trim() == what || r.trim() == "all");
    assert!(
        !required,
        "CAI_TEST_REQUIRE names {what}, which this CPU lacks"
    );
    if SAID.lock().map(|mut s| s.insert(what)).unwrap_or(true) {
        eprintln!("SKIPPED: this CPU lacks {what}; its kernel tests do not run here");
    }
    false
}

/// Deterministic values in `[-scale, scale)`.
pub fn lcg(seed: u64, n: usize, scale: f32) -> Vec<f32> {
    let mut s = seed
        .wrapping_mul(6364136223846793005)
        .wrapping_add(1442695040888963407);
    (0..n)
        .map(|_| {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
        })
        .collect()
}

/// Every epilogue combination the model uses, and GELU with accumulation.
pub const EPIS: [Epilogue; 5] = [
    Epilogue::PLAIN,
    Epilogue::RELU,
    Epilogue::GELU,
    Epilogue::RESIDUAL,
    Epilogue {
        act: Act::Gelu,
        accumulate: true,
    },
];

/// The weights of a checked product.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Weights {
    /// f32 weights.
    F32,
    /// [`PackedB::quantize_int8`].
    Int8,
    /// [`PackedB::quantize_int16`].
    Int16,
    /// [`PackedB::round_bf16`].
    Bf16,
}

impl Weights {
    /// Converts `b` to these weights; true if they are integers.
    fn apply(self, b: &mut PackedB) -> bool {
        match self {
            Weights::F32 => false,
            Weights::Int8 => {
                b.quantize_int8();
                true
            }
            Weights::Int16 => {
                b.quantize_int16();
                true
            }
            Weights::Bf16 => {
                b.round_bf16();
                false
            }
        }
    }
}

/// Runs `ops` and the scalar table on the same product and compares every element of `C`
/// (including the padding between rows, which must stay untouched). With integer weights
/// `B` is quantised first and the results must be equal (same integers, same f32
/// operations) except for the GELU approximation (1e-6 (1 + |x|)). In f32, and in bf16
/// (the same bf16 inputs, exact products; only the order of the sums differs), the
/// tolerance is 1e-5 * (1 + sum_k |a_ik b_kj| + |bias_j|) plus the GELU approximation
/// error 1e-6 (1 + |x|).
#[allow(clippy::too_many_arguments)]
pub fn gemm(
    ops: &Ops,
    m: usize,
    n: usize,
    k: usize,
    lda: usize,
    ldc: usize,
    epi: Epilogue,
    seed: u64,
    weights: Weights,
) {
    let a = lcg(seed, m.max(1) * lda, 1.0);
    let w = lcg(seed + 1, n * k, 1.0);
    let bias = lcg(seed + 2, n, 0.5);
    let mut b = PackedB::pack_nk(&w, n, k, k, Some(&bias));
    let int = weights.apply(&mut b);
    let c0 = lcg(seed + 3, m.max(1) * ldc, 1.0);
    let mut want = c0.clone();
    let mut got = c0.clone();
    scalar::ops().gemm(m, &a, lda, &b, &mut want, ldc, epi);
    ops.gemm(m, &a, lda, &b, &mut got, ldc, epi);
    for i in 0..m.max(1) {
        for j in 0..ldc {
            let idx = i * ldc + j;
            if i >= m || j >= n {
                assert_eq!(got[idx], c0[idx], "wrote outside C at ({i},{j})");
                continue;
            }
            let mag: f32 = (0..k)
                .map(|kk| (a[i * lda + kk] * w[j * k + kk]).abs())
                .sum::<f32>()
                + bias[j].abs();
            // The integer epilogues' GELU is the lower-degree one on x86 (1.5e-6 (1 + |x|)).
            let gelu = if epi.act == Act::Gelu {
                if int {
                    2e-6 * (1.0 + mag)
                } else {
                    1e-6 * (1.0 + mag)
                }
            } else {
                0.0
            };
            let tol = if int { gelu } else { 1e-5 * (1.0 + mag) + gelu };
            let d = (got[idx] - want[idx]).abs();
            assert!(
                d <= tol,
                "{weights:?} m{m} n{n} k{k} {epi:?} ({i},{j}): {} vs {} (tol {tol})",
                got[idx],
                want[idx]
            );
        }
    }
}

/// The integer product's worst case for its i32 sums, int8 and int16 weights: every weight
/// and activation at its maximum, one sign (the activation limit is exactly what keeps
/// this from overflowing); equal to the scalar reference, and to the exact -192.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))] // NEON borrows the scalar product
pub fn int_worst_case_sums(ops: &Ops) {
    let (m, n, k) = (13, 40, 768);
    let w = vec![0.25f32; n * k];
    for bits in [8, 13] {
        let mut b = PackedB::pack_nk(&w, n, k, k, None);
        if bits == 8 {
            b.quantize_int8();
        } else {
            b.quantize_int16();
        }
        assert_eq!(b.weight_bits(), Some(bits));
        let a = vec![-1.0f32; m * k];
        let (mut want, mut got) = (vec![0.0f32; m * n], vec![0.0f32; m * n]);
        scalar::ops().gemm(m, &a, k, &b, &mut want, n, Epilogue::PLAIN);
        ops.gemm(m, &a, k, &b, &mut got, n, Epilogue::PLAIN);
        assert_eq!(got, want);
        assert!(
            got.iter().all(|v| (v + 192.0).abs() < 1e-3),
            "w{bits}: {got:?}"
        );
    }
}

/// Two tables give the same bits on the ViT shapes (65 tokens x 4 galaxies, a long
/// reduction, a single last panel) for every epilogue and each kind of weights in `kinds`:
/// for kernels that do the same arithmetic in the same order, in other instructions.
#[cfg(target_arch = "x86_64")]
pub fn same_bits_on_model_shapes(ops: &Ops, other: &Ops, kinds: &[Weights]) {
    for (m, n, k) in [(260, 576, 192), (131, 192, 768), (65, 208, 192)] {
        let a = lcg(1, m * k, 1.0);
        let w = lcg(2, n * k, 0.1);
        let bias = lcg(3, n, 0.5);
        for &kind in kinds {
            let mut b = PackedB::pack_nk(&w, n, k, k, Some(&bias));
            kind.apply(&mut b);
            for epi in EPIS {
                let c0 = lcg(4, m * n, 1.0);
                let (mut want, mut got) = (c0.clone(), c0);
                other.gemm(m, &a, k, &b, &mut want, n, epi);
                ops.gemm(m, &a, k, &b, &mut got, n, epi);
                let same = want
                    .iter()
                    .zip(&got)
                    .all(|(x, y)| x.to_bits() == y.to_bits());
                assert!(same, "m{m} n{n} k{k} {kind:?} {epi:?}");
            }
        }
    }
}

/// [`gemm`] on every combination of the odd sizes 0, 1, 7 and 197 and every epilogue,
/// with padded strides.
pub fn gemm_odd_shapes(ops: &Ops, weights: Weights) {
    let dims = [0usize, 1, 7, 197];
    let mut seed = 0;
    for &m in &dims {
        for &n in &dims {
            for &k in &dims {
                for epi in EPIS {
                    seed += 10;
                    gemm(ops, m, n, k, k.max(1) + 3, n.max(1) + 5, epi, seed, weights);
                }
            }
        }
    }
}

/// Softmax against the scalar one: 2e-6 absolute on probabilities (exp polynomial ~2e-7
/// relative, sums in a different order); the padding stays untouched.
pub fn softmax(ops: &Ops, rows: usize, n: usize, scale: f32, seed: u64) {
    let ld = n + 3;
    let x0 = lcg(seed, rows * ld, 20.0);
    let mut want = x0.clone();
    let mut got = x0.clone();
    scalar::ops().softmax_rows(rows, n, &mut want, ld, scale);
    ops.softmax_rows(rows, n, &mut got, ld, scale);
    for i in 0..rows * ld {
        if i % ld >= n {
            assert_eq!(got[i], x0[i]);
        } else {
            assert!(
                (got[i] - want[i]).abs() <= 2e-6,
                "{i}: {} vs {}",
                got[i],
                want[i]
            );
        }
    }
}

/// [`softmax`] on odd lengths, and extreme logits (no NaN, no overflow).
pub fn softmax_odd_shapes(ops: &Ops) {
    for n in [1usize, 3, 4, 7, 8, 65, 197] {
        softmax(ops, 3, n, 0.125, n as u64);
    }
    let mut x = vec![-1e30f32, 0.0, 1e30, 5.0, -5.0, 88.0, -100.0, 3.0, 1.0];
    ops.softmax_rows(1, 9, &mut x, 9, 1.0);
    assert!(x.iter().all(|v| v.is_finite()));
    assert!((x[2] - 1.0).abs() < 1e-6);
}

/// One head's attention against its definition evaluated in f64: |tier - exact| <= 2e-5
/// (each output is an average of values in [-1, 1]); `out` outside the head's `t` rows of
/// `hd` values stays untouched. `ws` may come from earlier calls of other shapes.
pub fn attention(ops: &Ops, t: usize, hd: usize, scale: f32, seed: u64, ws: &mut AttentionScratch) {
    let (ld, ldo) = (3 * hd + 5, hd + 3);
    let qkv = lcg(seed, t * ld, 1.0);
    let head = fused_head(&qkv, t, hd, ld);
    let out0 = lcg(seed + 1, t * ldo, 1.0);
    let mut got = out0.clone();
    ops.attention(&head, scale, &mut got, ldo, ws);
    let at = |x: &[f32], i: usize, c: usize| f64::from(x[i * ld + c]);
    for i in 0..t {
        let s: Vec<f64> = (0..t)
            .map(|j| {
                let qk: f64 = (0..hd).map(|c| at(head.q, i, c) * at(head.k, j, c)).sum();
                f64::from(scale) * qk
            })
            .collect();
        let mx = s.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
        let e: Vec<f64> = s.iter().map(|v| (v - mx).exp()).collect();
        let z: f64 = e.iter().sum();
        for c in 0..ldo {
            let g = got[i * ldo + c];
            if c >= hd {
                assert_eq!(g, out0[i * ldo + c], "t{t} hd{hd}: row {i} col {c} touched");
                continue;
            }
            let want: f64 = (0..t).map(|j| e[j] / z * at(head.v, j, c)).sum();
            assert!(
                (f64::from(g) - want).abs() <= 2e-5,
                "t{t} hd{hd}: out[{i}][{c}] = {g} vs {want}"
            );
        }
    }
}

/// One head of `t` tokens and `hd` values whose queries, keys and values are columns
/// `0..hd`, `hd..2hd` and `2hd..3hd` of rows `ld` apart (a fused qkv matrix's layout).
fn fused_head(qkv: &[f32], t: usize, hd: usize, ld: usize) -> HeadQkv<'_> {
    HeadQkv {
        t,
        hd,
        ld,
        q: qkv,
        k: &qkv[hd..],
        v: &qkv[2 * hd..],
    }
}

/// [`attention`] over token counts around the tile sizes (6 rows, 16 keys; 65 = cls + 64
/// patches) and head widths, reusing one scratch throughout.
pub fn attention_shapes(ops: &Ops) {
    let mut ws = AttentionScratch::default();
    for t in [1usize, 2, 5, 6, 7, 16, 17, 33, 65, 66, 97] {
        for hd in [1usize, 8, 13, 32, 64] {
            attention(
                ops,
                t,
                hd,
                (hd as f32).powf(-0.5),
                (t * 100 + hd) as u64,
                &mut ws,
            );
        }
    }
}

/// [`Ops::attention_bf16`] on `t` tokens of `hd` values against
/// [`super::attention_bf16_reference`] (the same roundings: apart from the order of the f32
/// sums, a softmax weight may round to the other bf16 neighbour, one part in 256) and,
/// loosely, against exact attention (bf16's error); columns past `hd` untouched.
pub fn attention_bf16(
    ops: &Ops,
    t: usize,
    hd: usize,
    scale: f32,
    seed: u64,
    ws: &mut AttentionScratch,
) {
    let run = |h: &HeadQkv<'_>, out: &mut [f32], ldo| ops.attention_bf16(h, scale, out, ldo, ws);
    let reference =
        |h: &HeadQkv<'_>, out: &mut [f32], ldo| super::attention_bf16_reference(h, scale, out, ldo);
    beside_reference(t, hd, scale, seed, run, reference, |i, c, g, w, e, vmax| {
        assert!(
            (g - w).abs() <= vmax / 256.0 + 1e-5,
            "t{t} hd{hd}: out[{i}][{c}] = {g}, reference {w}"
        );
        assert!(
            (g - e).abs() <= 0.05 * vmax + 1e-5,
            "t{t} hd{hd}: out[{i}][{c}] = {g}, f32 attention {e}"
        );
    });
}

/// A reduced-precision attention (`run`) and its reference on one random head of `t` tokens
/// and `hd` values (a fused qkv's layout), beside exact attention: `check(i, c, got,
/// reference, exact, largest |v|)` for every output value; columns past `hd` untouched.
fn beside_reference(
    t: usize,
    hd: usize,
    scale: f32,
    seed: u64,
    run: impl FnOnce(&HeadQkv<'_>, &mut [f32], usize),
    reference: impl FnOnce(&HeadQkv<'_>, &mut [f32], usize),
    mut check: impl FnMut(usize, usize, f32, f32, f32, f32),
) {
    let (ld, ldo) = (3 * hd + 5, hd + 3);
    let qkv = lcg(seed, t * ld, 1.0);
    let head = fused_head(&qkv, t, hd, ld);
    let out0 = lcg(seed + 1, t * ldo, 1.0);
    let (mut got, mut want, mut exact) = (out0.clone(), out0.clone(), out0.clone());
    run(&head, &mut got, ldo);
    reference(&head, &mut want, ldo);
    scalar::ops().attention(
        &head,
        scale,
        &mut exact,
        ldo,
        &mut AttentionScratch::default(),
    );
    let vmax = (0..t * hd)
        .map(|i| head.v[(i / hd) * ld + i % hd].abs())
        .fold(0.0f32, f32::max);
    for i in 0..t {
        for c in 0..ldo {
            let (g, w, e) = (got[i * ldo + c], want[i * ldo + c], exact[i * ldo + c]);
            if c >= hd {
                assert_eq!(g, out0[i * ldo + c], "t{t} hd{hd}: row {i} col {c} touched");
            } else {
                check(i, c, g, w, e, vmax);
            }
        }
    }
}

/// [`attention_bf16`] over the shapes of [`attention_shapes`], reusing one scratch.
pub fn attention_bf16_shapes(ops: &Ops) {
    let mut ws = AttentionScratch::default();
    for t in [1usize, 2, 5, 6, 7, 16, 17, 33, 65, 66, 97] {
        for hd in [1usize, 8, 13, 32, 64] {
            let scale = (hd as f32).powf(-0.5);
            attention_bf16(ops, t, hd, scale, (t * 100 + hd) as u64, &mut ws);
        }
    }
}

/// [`Ops::attention_int16`] on `t` tokens of `hd` values against
/// [`super::attention_int16_reference`] (the same codes and scores: apart from the
/// exponentials' last bits and the order of the f32 sums, a weight's code may round the
/// other way, a part in 4000 at most) and against exact attention (int16's error: within
/// 1e-3 of the largest |v|; 4.8e-5 on [`attention_int16_shapes`], up to about 2.5e-4 at
/// the proptest's sharper scales); columns past `hd` untouched. Returns the largest
/// difference from exact attention over the largest |v|.
pub fn attention_int16(
    ops: &Ops,
    t: usize,
    hd: usize,
    scale: f32,
    seed: u64,
    ws: &mut AttentionScratch,
) -> f32 {
    let run = |h: &HeadQkv<'_>, out: &mut [f32], ldo| ops.attention_int16(h, scale, out, ldo, ws);
    let reference = |h: &HeadQkv<'_>, out: &mut [f32], ldo| {
        super::attention_int16_reference(h, scale, out, ldo)
    };
    let mut worst = 0.0f32;
    beside_reference(t, hd, scale, seed, run, reference, |i, c, g, w, e, vmax| {
        assert!(
            (g - w).abs() <= vmax / 2048.0 + 1e-6,
            "t{t} hd{hd}: out[{i}][{c}] = {g}, reference {w}"
        );
        assert!(
            (g - e).abs() <= 1e-3 * vmax + 1e-6,
            "t{t} hd{hd}: out[{i}][{c}] = {g}, f32 attention {e}"
        );
        worst = worst.max((g - e).abs() / vmax.max(f32::MIN_POSITIVE));
    });
    worst
}

/// [`attention_int16`] over the shapes of [`attention_shapes`], reusing one scratch;
/// returns the largest relative difference from exact attention.
pub fn attention_int16_shapes(ops: &Ops) -> f32 {
    let mut ws = AttentionScratch::default();
    let mut worst = 0.0f32;
    for t in [1usize, 2, 5, 6, 7, 16, 17, 33, 65, 66, 97] {
        for hd in [1usize, 8, 13, 32, 64] {
            let scale = (hd as f32).powf(-0.5);
            let w = attention_int16(ops, t, hd, scale, (t * 100 + hd) as u64, &mut ws);
            worst = worst.max(w);
        }
    }
    worst
}

/// Checks a SIMD GELU of the integer epilogues against [`scalar::gelu`] over a dense sweep
/// of [-20, 20] and a few far values: `|simd - exact| <= 2e-6 (1 + |x|)`. `f` maps a slice
/// of inputs to outputs. Returns the worst error / (1 + |x|).
#[cfg(target_arch = "x86_64")]
pub fn gelu_int(f: impl Fn(&[f32]) -> Vec<f32>) -> f32 {
    let xs: Vec<f32> = (-200_000..=200_000)
        .map(|i| i as f32 * 1e-4)
        .chain([-1e4, 1e4, -87.0, 0.0])
        .collect();
    let got = f(&xs);
    let mut worst = 0.0f32;
    for (x, g) in xs.iter().zip(&got) {
        let want = scalar::gelu(*x);
        let d = (g - want).abs();
        worst = worst.max(d / (1.0 + x.abs()));
        assert!(
            d <= 2e-6 * (1.0 + x.abs()),
            "gelu_int({x}) = {g}, want {want}"
        );
    }
    worst
}

/// Kinds of [`special_row`].
pub const SPECIAL_ROWS: u64 = 9;

/// A row of `len` values for the row quantisers' tests, by `kind` (< [`SPECIAL_ROWS`]):
/// random, all positive, all negative, a NaN in the middle, an infinity last, zeros of both
/// signs, a NaN second to last, subnormals only (`limit / max` overflows), values near
/// `f32::MAX / 10` (their range overflows).
pub fn special_row(len: usize, kind: u64) -> Vec<f32> {
    let mut a = lcg(len as u64 * 7 + kind, len, 3.0);
    match kind {
        1 => a.iter_mut().for_each(|v| *v = v.abs()),
        2 => a.iter_mut().for_each(|v| *v = -v.abs() - 1.0),
        3 if len > 0 => a[len / 2] = f32::NAN,
        4 if len > 0 => a[len - 1] = f32::INFINITY,
        5 => a
            .iter_mut()
            .for_each(|v| *v = if *v > 0.0 { 0.0 } else { -0.0 }),
        6 if len > 1 => a[len - 2] = f32::NAN,
        7 => a.iter_mut().for_each(|v| *v *= 1e-40),
        8 => a.iter_mut().for_each(|v| *v *= 1e37),
        _ => {}
    }
    a
}

/// LayerNorm against the scalar one: 1e-5 (1 + |y|) (sums in a different order).
pub fn layer_norm(ops: &Ops, rows: usize, dim: usize, seed: u64) {
    let ld = dim + 2;
    let x = lcg(seed, rows * ld, 3.0);
    let g = lcg(seed + 1, dim, 2.0);
    let b = lcg(seed + 2, dim, 1.0);
    let mut want = vec![0.0; rows * ld];
    let mut got = vec![0.0; rows * ld];
    scalar::ops().layer_norm(rows, dim, &x, ld, &g, &b, 1e-6, &mut want, ld);
    ops.layer_norm(rows, dim, &x, ld, &g, &b, 1e-6, &mut got, ld);
    for i in 0..rows * ld {
        assert!(
            (got[i] - want[i]).abs() <= 1e-5 * (1.0 + want[i].abs()),
            "{i}: {} vs {}",
            got[i],
            want[i]
        );
    }
}

/// The tier's GELU epilogue against the exact GELU, through a product with `k = 1`,
/// `B = 1` and no bias (so the epilogue sees `x` itself): |tier - exact| <= 1e-6 (1 + |x|)
/// over a dense sweep of [-20, 20] and a few far values. Returns the worst error / (1 + |x|).
pub fn gelu(ops: &Ops) -> f32 {
    let xs: Vec<f32> = (-200_000..=200_000)
        .map(|i| i as f32 * 1e-4)
        .chain([-1e4, 1e4, -87.0, 0.0])
        .collect();
    let one = PackedB::pack_nk(&[1.0], 1, 1, 1, None);
    let mut got = vec![0.0; xs.len()];
    ops.gemm(xs.len(), &xs, 1, &one, &mut got, 1, Epilogue::GELU);
    let mut worst = 0.0f32;
    for (x, g) in xs.iter().zip(&got) {
        let want = scalar::gelu(*x);
        let d = (g - want).abs();
        worst = worst.max(d / (1.0 + x.abs()));
        assert!(d <= 1e-6 * (1.0 + x.abs()), "gelu({x}) = {g}, want {want}");
    }
    worst
}

/// Whatever tier this CPU selects, against the scalar reference (the per-ISA modules add
/// proptests and their own edge cases).
#[test]
fn best_tier_matches_scalar() {
    let ops = super::best();
    gemm_odd_shapes(&ops, Weights::F32);
    gemm_odd_shapes(&ops, Weights::Bf16);
    softmax_odd_shapes(&ops);
    attention_shapes(&ops);
    attention_bf16_shapes(&ops);
    let worst16 = attention_int16_shapes(&ops);
    eprintln!(
        "{:?}: int16 attention, worst |out - exact| / max |v| = {worst16:e}",
        ops.tier
    );
    for dim in [1usize, 3, 4, 7, 8, 192, 197] {
        layer_norm(&ops, 3, dim, dim as u64);
    }
    let worst = gelu(&ops);
    eprintln!("{:?}: worst gelu error / (1 + |x|) = {worst:e}", ops.tier);
}

#[test]
fn scalar_attention_matches_definition() {
    attention_shapes(&scalar::ops());
}

/// The bf16 emulation (tiers without `vdpbf16ps`) is the f32 product on bf16-rounded
/// activations and weights, bit for bit; the packed bf16 pairs are the rounded weights' bits.
#[test]
fn bf16_is_the_f32_product_of_rounded_values() {
    use super::round_bf16;
    let (m, n, k) = (70, 37, 45);
    let a = lcg(11, m * k, 3.0);
    let w = lcg(12, n * k, 0.3);
    let bias = lcg(13, n, 0.5);
    let mut b = PackedB::pack_nk(&w, n, k, k, Some(&bias));
    b.round_bf16();
    assert!(b.is_bf16() && !b.is_quantized());
    b.round_bf16(); // a second call changes nothing
    let k2 = k.div_ceil(2).next_multiple_of(super::TILE_K_GROUPS);
    for p in 0..b.panels() {
        let panel = b.bf16_panel(p);
        assert_eq!(panel.len(), k2 * super::NR * 2);
        for (i, bits) in panel.iter().enumerate() {
            let (kk, jj) = ((i / (2 * super::NR)) * 2 + i % 2, (i / 2) % super::NR);
            let j = p * super::NR + jj;
            let want = if kk < k && j < n {
                (round_bf16(w[j * k + kk]).to_bits() >> 16) as u16
            } else {
                0
            };
            assert_eq!(*bits, want, "panel {p} k {kk} column {jj}");
        }
    }
    let rw: Vec<f32> = w.iter().map(|v| round_bf16(*v)).collect();
    let ra: Vec<f32> = a.iter().map(|v| round_bf16(*v)).collect();
    let f = PackedB::pack_nk(&rw, n, k, k, Some(&bias));
    for ops in [scalar::ops(), super::best()] {
        if ops.gemm_bf16.is_some() {
            continue; // the native product sums in another order: `best_tier_matches_scalar`
        }
        for epi in EPIS {
            let (mut want, mut got) = (vec![0.5f32; m * n], vec![0.5f32; m * n]);
            ops.gemm(m, &ra, k, &f, &mut want, n, epi);
            ops.gemm(m, &a, k, &b, &mut got, n, epi);
            assert_eq!(got, want, "{:?} {epi:?}", ops.tier);
        }
    }
}
