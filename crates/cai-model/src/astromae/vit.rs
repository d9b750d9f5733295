//! The ViT branch (timm 0.4.12 pieces, MAE-style global pool): `patch_embed`, `cls_token`,
//! `pos_embed`, `blocks`, then the mean of the patch tokens, `fc_norm`, `head` and
//! `vit_block` (Linear -> ReLU -> Linear).
//!
//! All tokens of a chunk of galaxies form one matrix (`g * (T+1)` rows x `dim`), so every
//! Linear is one GEMM, except `qkv`: it runs per galaxy, and that galaxy's attention (per
//! head, on slices of the fused qkv output) right after it, while the output is in L2.
//! The MLP runs in row blocks so its hidden activations stay in cache. A call with fewer
//! galaxies than threads splits each galaxy's GEMMs into two halves of rows on two threads
//! ([`split_rows`]); attention and LayerNorm stay on one.

use super::cnn::buf;
use super::layers::{LayerNorm, Linear};
use super::plan::PlanLayer;
use super::Config;
use crate::kernels::{AttentionScratch, Epilogue, HeadQkv, Ops, PackedB, Precision, Tier};
use crate::weights::Vb;
use crate::Error;

/// timm's ViT LayerNorm eps.
const LN_EPS: f32 = 1e-6;
/// Rows per MLP block (hidden activations of `ROWS x mlp`, 295 KB at mlp 768, stay in L2);
/// a multiple of the AVX2 and NEON strip height (6) and of AMX's strip pair (32), so no
/// block but the last ends in a part-empty strip (66 rows made AMX compute 96). On the
/// `amx` tier the layers that run on the zmm tiles (13 rows, f32 and int16) compute 104
/// rows of each 96-row block.
const MLP_ROWS: usize = 96;
/// [`MLP_ROWS`] on the `avx512` tier: 8 strips of its 13-row tile, and a chunk of 8
/// galaxies (520 rows) is 5 such blocks (96-row blocks leave one of 40, 4 strips of 13).
const MLP_ROWS_AVX512: usize = 104;
/// Where [`split_rows`] cuts: a multiple of the AVX2 and NEON GEMM strip height (6), so the
/// first half ends on a whole strip (kept on the `amx` tier, whose zmm tiles have 13 rows
/// and AMX tiles 16).
const SPLIT_ALIGN: usize = 24;

/// The rows of the tier's row blocks and split points: [`MLP_ROWS`] and [`SPLIT_ALIGN`],
/// on the `avx512` tier [`MLP_ROWS_AVX512`] and its 13-row strips (65 tokens are 5 of
/// them: a galaxy's `qkv`, split as 39 + 26 rows, computes no padding row).
fn row_blocks(ops: &Ops) -> (usize, usize) {
    if ops.tier == Tier::Avx512 {
        (MLP_ROWS_AVX512, 13)
    } else {
        (MLP_ROWS, SPLIT_ALIGN)
    }
}

/// The first row of the second half when `m` rows are split in two on a multiple of
/// `align`: `m` itself (no second half) when there are too few rows to split.
fn split_point(m: usize, align: usize) -> usize {
    ((m / 2).div_ceil(align) * align).min(m)
}

/// Runs `f(first row, rows, their rows of c)` over the `m` rows of `c` (`ldc` apart): with
/// `split`, as two halves on two threads of the rayon pool (one galaxy on an otherwise idle
/// second core), else once. Every row is computed the same way either way, so results do
/// not change.
fn split_rows(
    ops: &Ops,
    split: bool,
    m: usize,
    ldc: usize,
    c: &mut [f32],
    f: impl Fn(usize, usize, &mut [f32]) + Sync,
) {
    let m0 = split_point(m, row_blocks(ops).1);
    if !split || m0 == 0 || m0 == m {
        f(0, m, c);
        return;
    }
    let (c0, c1) = c.split_at_mut(m0 * ldc);
    rayon::join(|| f(0, m0, c0), || f(m0, m - m0, c1));
}

/// `timm.models.layers.PatchEmbed`: Conv2d(C -> D, kernel = stride = patch), flattened.
#[derive(Debug, Clone)]
pub(crate) struct PatchEmbed {
    proj: Linear,
}

impl PatchEmbed {
    fn load(vb: &Vb, cfg: &Config) -> Result<Self, Error> {
        let p = vb.pp("proj");
        let (d, c, k) = (cfg.dim, cfg.channels, cfg.patch);
        let w = p.get("weight", &[d, c, k, k])?;
        let b = p.get("bias", &[d])?;
        // [D, C, p, p] is already [out][(c, ky, kx)] row-major.
        Ok(Self {
            proj: Linear::from_parts(&w.data, &b.data, c * k * k, d),
        })
    }
}

/// `timm Attention`: fused `qkv` Linear(D, 3D), heads, scaled softmax, `proj` Linear(D, D).
#[derive(Debug, Clone)]
pub(crate) struct Attention {
    qkv: Linear,
    proj: Linear,
    heads: usize,
    /// The precision of the two products: f32 ([`Ops::attention`]), bf16
    /// ([`Ops::attention_bf16`]) or int16 ([`Ops::attention_int16`]).
    products: Precision,
}

/// `timm Mlp`: `fc1` -> GELU (erf) -> `fc2`.
#[derive(Debug, Clone)]
pub(crate) struct Mlp {
    fc1: Linear,
    fc2: Linear,
}

impl Mlp {
    /// GELU(fc1(`xn`)) for `rows` rows in blocks of [`row_blocks`] rows (so they stay in cache),
    /// each block handed to `f(first row, rows, hidden activations)` before the next.
    fn hidden_blocks(
        &self,
        ops: &Ops,
        rows: usize,
        d: usize,
        xn: &[f32],
        h: &mut [f32],
        mut f: impl FnMut(usize, usize, &[f32]),
    ) {
        let hid = self.fc1.out_features();
        let block = row_blocks(ops).0;
        let hbuf = &mut h[..block.min(rows) * hid];
        let mut r0 = 0;
        while r0 < rows {
            let m = block.min(rows - r0);
            self.fc1
                .forward(ops, m, &xn[r0 * d..], d, hbuf, hid, Epilogue::GELU);
            f(r0, m, &hbuf[..m * hid]);
            r0 += m;
        }
    }
}

/// `timm Block`: `x += attn(norm1(x)); x += mlp(norm2(x))`.
#[derive(Debug, Clone)]
pub(crate) struct Block {
    norm1: LayerNorm,
    attn: Attention,
    norm2: LayerNorm,
    mlp: Mlp,
}

impl Block {
    fn load(vb: &Vb, cfg: &Config) -> Result<Self, Error> {
        let d = cfg.dim;
        let a = vb.pp("attn");
        let m = vb.pp("mlp");
        Ok(Self {
            norm1: LayerNorm::load(&vb.pp("norm1"), d, LN_EPS)?,
            attn: Attention {
                qkv: Linear::load(&a.pp("qkv"), d, 3 * d)?,
                proj: Linear::load(&a.pp("proj"), d, d)?,
                heads: cfg.heads,
                products: Precision::F32,
            },
            norm2: LayerNorm::load(&vb.pp("norm2"), d, LN_EPS)?,
            mlp: Mlp {
                fc1: Linear::load(&m.pp("fc1"), d, cfg.mlp)?,
                fc2: Linear::load(&m.pp("fc2"), cfg.mlp, d)?,
            },
        })
    }

    /// One block over `g` galaxies of `t1` rows each, in place on `s.x`; with `split` (only
    /// for chunks of at most one MLP block of rows, [`row_blocks`]) its GEMMs run in two halves of rows on two
    /// threads.
    fn forward(&self, ops: &Ops, g: usize, t1: usize, d: usize, s: &mut VitScratch, split: bool) {
        self.attend(ops, g, t1, d, s, split);
        let rows = g * t1;
        let (x, xn) = (&mut s.x[..rows * d], &mut s.xn[..rows * d]);
        self.norm2.forward(ops, rows, x, xn);
        let xn = &*xn;
        let hid = self.mlp.fc1.out_features();
        let (block, align) = row_blocks(ops);
        let m0 = split_point(rows, align);
        if split && rows <= block && m0 > 0 && m0 < rows {
            // Each half of the rows on its own thread: its hidden activations (in its own
            // part of `s.h`, which holds `rows` of them), then fc2 into its rows of x.
            let (h0, h1) = s.h[..rows * hid].split_at_mut(m0 * hid);
            let (x0, x1) = x.split_at_mut(m0 * d);
            let half = |r0: usize, m: usize, h: &mut [f32], xo: &mut [f32]| {
                self.mlp
                    .fc1
                    .forward(ops, m, &xn[r0 * d..], d, h, hid, Epilogue::GELU);
                self.mlp
                    .fc2
                    .forward(ops, m, h, hid, xo, d, Epilogue::RESIDUAL);
            };
            rayon::join(|| half(0, m0, h0, x0), || half(m0, rows - m0, h1, x1));
            return;
        }
        self.mlp
            .hidden_blocks(ops, rows, d, xn, &mut s.h, |r0, m, h| {
                self.mlp
                    .fc2
                    .forward(ops, m, h, hid, &mut x[r0 * d..], d, Epilogue::RESIDUAL);
            });
    }

    /// The last block, reduced to what the global pool reads: the mean over the patch
    /// tokens of `x + fc2(h)` (`h` = GELU(fc1(norm2(x)))) is `mean(x) + fc2(mean(h))`,
    /// because `fc2` is affine, so `fc2` runs on one row per galaxy instead of 64 (2.4% of
    /// the model's FLOPs). Leaves the `g x d` pooled, not yet `fc_norm`ed, rows in `s.pool`.
    fn forward_pooled(
        &self,
        ops: &Ops,
        g: usize,
        t1: usize,
        d: usize,
        s: &mut VitScratch,
        split: bool,
    ) {
        self.attend(ops, g, t1, d, s, split);
        let rows = g * t1;
        let (x, xn) = (&s.x[..rows * d], &mut s.xn[..rows * d]);
        self.norm2.forward(ops, rows, x, xn);
        let pool = &mut s.pool[..g * d];
        mean_patch_rows(x, g, t1, d, pool);
        let hid = self.mlp.fc1.out_features();
        let hbar = &mut s.hbar[..g * hid];
        hbar.fill(0.0);
        if split && rows <= row_blocks(ops).0 {
            // fc1 in two halves of rows on two threads, then the sums as below.
            let h = &mut s.h[..rows * hid];
            let xn = &*xn;
            split_rows(ops, true, rows, hid, h, |r0, m, hc| {
                self.mlp
                    .fc1
                    .forward(ops, m, &xn[r0 * d..], d, hc, hid, Epilogue::GELU);
            });
            add_patch_rows(h, 0, t1, hid, hbar);
        } else {
            self.mlp
                .hidden_blocks(ops, rows, d, xn, &mut s.h, |r0, _, h| {
                    add_patch_rows(h, r0, t1, hid, hbar);
                });
        }
        scale_to_mean(hbar, t1);
        self.mlp
            .fc2
            .forward(ops, g, hbar, hid, pool, d, Epilogue::RESIDUAL);
    }

    /// `x += attn(norm1(x))` over `g` galaxies of `t1` rows each, in place on `s.x`.
    fn attend(&self, ops: &Ops, g: usize, t1: usize, d: usize, s: &mut VitScratch, split: bool) {
        let rows = g * t1;
        let x = &mut s.x[..rows * d];
        let xn = &mut s.xn[..rows * d];
        self.norm1.forward(ops, rows, x, xn);
        let heads = self.attn.heads;
        let hd = d / heads;
        let scale = (hd as f32).powf(-0.5);
        let att = &mut s.att[..rows * d];
        // qkv for one galaxy at a time, its attention right after, while its 150 KB of
        // queries, keys and values are still in L2 (measured 0.6-1.6% faster on the
        // blocks than qkv for the whole chunk first, whose 600 KB spill to L3).
        let qkv = &mut s.qkv[..t1 * 3 * d];
        let xn = &*xn;
        for gi in 0..g {
            split_rows(ops, split, t1, 3 * d, qkv, |r0, m, c| {
                let a = &xn[(gi * t1 + r0) * d..];
                self.attn
                    .qkv
                    .forward(ops, m, a, d, c, 3 * d, Epilogue::PLAIN);
            });
            for h in 0..heads {
                let head = HeadQkv {
                    t: t1,
                    hd,
                    ld: 3 * d,
                    q: &qkv[h * hd..],
                    k: &qkv[d + h * hd..],
                    v: &qkv[2 * d + h * hd..],
                };
                let dst = &mut att[gi * t1 * d + h * hd..];
                ops.attention_in(self.attn.products, &head, scale, dst, d, &mut s.attn);
            }
        }
        let att = &*att;
        split_rows(ops, split, rows, d, x, |r0, m, c| {
            let a = &att[r0 * d..];
            self.attn
                .proj
                .forward(ops, m, a, d, c, d, Epilogue::RESIDUAL);
        });
    }
}

/// What [`Vit::visit_inputs`] calls: `(block, which, rows, width)`.
type InputVisitor<'a> = dyn FnMut(usize, usize, &[f32], usize) + 'a;

/// The mean over the patch tokens (rows 1.. of each galaxy's `t1`) of `g` galaxies' rows
/// of `x`, into `pool` (`g x d`).
fn mean_patch_rows(x: &[f32], g: usize, t1: usize, d: usize, pool: &mut [f32]) {
    let pool = &mut pool[..g * d];
    pool.fill(0.0);
    add_patch_rows(&x[..g * t1 * d], 0, t1, d, pool);
    scale_to_mean(pool, t1);
}

/// Adds each patch-token row of `rows` (`width` wide; row `i` is row `r0 + i` of a chunk of
/// galaxies of `t1` rows) into its galaxy's row of `acc`. Row 0 of each galaxy, the class
/// token, is left out, as the pool leaves it out.
fn add_patch_rows(rows: &[f32], r0: usize, t1: usize, width: usize, acc: &mut [f32]) {
    for (i, row) in rows.chunks_exact(width).enumerate() {
        let r = r0 + i;
        if !r.is_multiple_of(t1) {
            for (a, v) in acc[(r / t1) * width..][..width].iter_mut().zip(row) {
                *a += v;
            }
        }
    }
}

/// Divides the sums of [`add_patch_rows`] by the number of patch tokens (`t1 - 1`).
fn scale_to_mean(acc: &mut [f32], t1: usize) {
    let inv = 1.0 / (t1 - 1) as f32;
    for a in acc.iter_mut() {
        *a *= inv;
    }
}

/// Reusable buffers for one chunk of galaxies.
#[derive(Debug, Default)]
pub(crate) struct VitScratch {
    x: Vec<f32>,
    xn: Vec<f32>,
    qkv: Vec<f32>,
    att: Vec<f32>,
    h: Vec<f32>,
    /// The pooled rows (`g x d`) and the mean of the last block's hidden rows (`g x mlp`).
    pool: Vec<f32>,
    hbar: Vec<f32>,
    patches: Vec<f32>,
    attn: AttentionScratch,
}

impl VitScratch {
    /// Grows the buffers (never shrinks) for chunks of up to `g` galaxies.
    pub(crate) fn ensure(&mut self, cfg: &Config, g: usize) {
        let t1 = cfg.tokens + 1;
        let rows = g * t1;
        let d = cfg.dim;
        buf(&mut self.x, rows * d);
        buf(&mut self.xn, rows * d);
        buf(&mut self.qkv, t1 * 3 * d);
        buf(&mut self.att, rows * d);
        buf(
            &mut self.h,
            MLP_ROWS.max(MLP_ROWS_AVX512).min(rows) * cfg.mlp,
        );
        buf(&mut self.pool, g * d);
        buf(&mut self.hbar, g * cfg.mlp);
    }
}

/// The whole ViT branch.
#[derive(Debug, Clone)]
pub(crate) struct Vit {
    patch_embed: PatchEmbed,
    cls_token: Vec<f32>,
    pos_embed: Vec<f32>,
    blocks: Vec<Block>,
    fc_norm: LayerNorm,
    head: Linear,
    vit_block: [Linear; 2],
    cfg: Config,
}

impl Vit {
    pub(crate) fn load(root: &Vb, cfg: &Config) -> Result<Self, Error> {
        let d = cfg.dim;
        let patch_embed = PatchEmbed::load(&root.pp("patch_embed"), cfg)?;
        let cls_token = root.get("cls_token", &[1, 1, d])?.data.clone();
        let pos_embed = root.get("pos_embed", &[1, cfg.tokens + 1, d])?.data.clone();
        let blocks = (0..cfg.depth)
            .map(|i| Block::load(&root.pp("blocks").pp(i), cfg))
            .collect::<Result<Vec<_>, _>>()?;
        let fc_norm = LayerNorm::load(&root.pp("fc_norm"), d, LN_EPS)?;
        let head = Linear::load(&root.pp("head"), d, d)?;
        let vb = root.pp("vit_block");
        let hidden = vb.pp(0).dim("weight", 2, 0)?;
        let out = vb.pp(2).dim("weight", 2, 0)?;
        let vit_block = [
            Linear::load(&vb.pp(0), d, hidden)?,
            Linear::load(&vb.pp(2), hidden, out)?,
        ];
        Ok(Self {
            patch_embed,
            cls_token,
            pos_embed,
            blocks,
            fc_norm,
            head,
            vit_block,
            cfg: cfg.clone(),
        })
    }

    /// Visits the packed weight of one trunk layer (`patch_embed` or a block's `qkv`,
    /// `proj`, `fc1`, `fc2`) with the rows it multiplies per galaxy (the last block's
    /// `fc2` runs on the pooled row only). Other layers and blocks past the depth visit
    /// nothing.
    pub(crate) fn layer_mut(&mut self, layer: PlanLayer, f: &mut dyn FnMut(&mut PackedB, usize)) {
        let (t, depth) = (self.cfg.tokens, self.blocks.len());
        let t1 = t + 1;
        match layer {
            PlanLayer::PatchEmbed => f(&mut self.patch_embed.proj.w, t),
            PlanLayer::Qkv(b) => {
                if let Some(x) = self.blocks.get_mut(b) {
                    f(&mut x.attn.qkv.w, t1)
                }
            }
            PlanLayer::Proj(b) => {
                if let Some(x) = self.blocks.get_mut(b) {
                    f(&mut x.attn.proj.w, t1)
                }
            }
            PlanLayer::Fc1(b) => {
                if let Some(x) = self.blocks.get_mut(b) {
                    f(&mut x.mlp.fc1.w, t1)
                }
            }
            PlanLayer::Fc2(b) => {
                if let Some(x) = self.blocks.get_mut(b) {
                    f(&mut x.mlp.fc2.w, if b + 1 == depth { 1 } else { t1 })
                }
            }
            PlanLayer::Attn(_) | PlanLayer::Cnn | PlanLayer::Head => {}
        }
    }

    /// Runs block `b`'s attention products in `p` (f32, bf16 or int16; int8 runs f32); a
    /// block past the
    /// model's depth is ignored.
    pub(crate) fn set_attention(&mut self, b: usize, p: Precision) {
        if let Some(x) = self.blocks.get_mut(b) {
            x.attn.products = p;
        }
    }

    /// The packed weights of a block layer (`qkv`, `proj`, `fc1`, `fc2`); `None` for the
    /// other layers or a block past the model's depth.
    pub(crate) fn block_weights(&self, layer: PlanLayer) -> Option<&PackedB> {
        let (b, i) = layer.block_linear()?;
        let x = self.blocks.get(b)?;
        Some(match i {
            0 => &x.attn.qkv.w,
            1 => &x.attn.proj.w,
            2 => &x.mlp.fc1.w,
            _ => &x.mlp.fc2.w,
        })
    }

    /// Visits the packed weights of the per-galaxy MLPs `head` and `vit_block`.
    pub(crate) fn tail_weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        self.head.weights_mut(f);
        self.vit_block.iter_mut().for_each(|l| l.weights_mut(f));
    }

    /// Folds SmoothQuant factors into `layer` (a block's `qkv` or `fc1`) and the LayerNorm
    /// before it: the LayerNorm's gamma and beta are divided by `s[j]`, the layer's input
    /// channel `j` multiplied by it (the same function in exact arithmetic). The layer's
    /// weights must still be f32. Returns false (and changes nothing) for other layers or
    /// a length mismatch.
    pub(crate) fn smooth(&mut self, layer: PlanLayer, s: &[f32]) -> bool {
        let (norm, lin) = match layer {
            PlanLayer::Qkv(b) => match self.blocks.get_mut(b) {
                Some(x) => (&mut x.norm1, &mut x.attn.qkv),
                None => return false,
            },
            PlanLayer::Fc1(b) => match self.blocks.get_mut(b) {
                Some(x) => (&mut x.norm2, &mut x.mlp.fc1),
                None => return false,
            },
            _ => return false,
        };
        let (k, n) = (lin.w.k(), lin.w.n());
        if s.len() != k || norm.weight.len() != k || lin.w.is_quantized() || lin.w.is_bf16() {
            return false;
        }
        for (j, sj) in s.iter().enumerate() {
            norm.weight[j] /= sj;
            norm.bias[j] /= sj;
        }
        let mut w = vec![0.0f32; n * k];
        for (jo, row) in w.chunks_exact_mut(k.max(1)).enumerate().take(n) {
            for (kk, v) in row.iter_mut().enumerate() {
                *v = lin.w.at(kk, jo) * s[kk];
            }
        }
        let bias = lin.w.bias().to_vec();
        lin.w = PackedB::pack_nk(&w, n, k, k, Some(&bias));
        true
    }

    /// Per block, the largest |value| of each channel of the `norm1` and `norm2` outputs
    /// (the inputs of `qkv` and `fc1`) over `g` galaxies, merged into `acc` (one pair of
    /// `dim`-long vectors per block, grown as needed). Runs the blocks unsplit.
    pub(crate) fn norm_absmax(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        s: &mut VitScratch,
        acc: &mut Vec<[Vec<f32>; 2]>,
    ) {
        let cfg = &self.cfg;
        let (d, t1) = (cfg.dim, cfg.tokens + 1);
        acc.resize_with(self.blocks.len(), || [vec![0.0; d], vec![0.0; d]]);
        self.embed(ops, images, g, s, false);
        let rows = g * t1;
        let merge = |a: &mut Vec<f32>, x: &[f32]| {
            for row in x.chunks_exact(d) {
                for (m, v) in a.iter_mut().zip(row) {
                    *m = m.max(v.abs());
                }
            }
        };
        for (blk, a) in self.blocks.iter().zip(acc.iter_mut()) {
            blk.attend(ops, g, t1, d, s, false);
            merge(&mut a[0], &s.xn[..rows * d]);
            let (x, xn) = (&mut s.x[..rows * d], &mut s.xn[..rows * d]);
            blk.norm2.forward(ops, rows, x, xn);
            merge(&mut a[1], xn);
            let hid = blk.mlp.fc1.out_features();
            let xn = &*xn;
            blk.mlp
                .hidden_blocks(ops, rows, d, xn, &mut s.h, |r0, m, h| {
                    blk.mlp
                        .fc2
                        .forward(ops, m, h, hid, &mut x[r0 * d..], d, Epilogue::RESIDUAL);
                });
        }
    }

    /// Runs the blocks unsplit over `g` galaxies, as [`Vit::trunk`] computes them, and
    /// hands `f` the input rows of each block's `qkv`, `proj`, `fc1` and `fc2` (`f(block,
    /// which, rows, width)`, `which` in that order; possibly several calls per layer). The
    /// last block's `fc2` input is the mean of the patch tokens' hidden activations
    /// ([`Block::forward_pooled`]); those patch rows are what `f` gets there (the mean of
    /// their means is theirs: every galaxy has as many).
    fn visit_inputs(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        s: &mut VitScratch,
        f: &mut InputVisitor<'_>,
    ) {
        let cfg = &self.cfg;
        let (d, t1) = (cfg.dim, cfg.tokens + 1);
        let depth = self.blocks.len();
        self.embed(ops, images, g, s, false);
        let rows = g * t1;
        for (bi, blk) in self.blocks.iter().enumerate() {
            blk.attend(ops, g, t1, d, s, false);
            f(bi, 0, &s.xn[..rows * d], d);
            f(bi, 1, &s.att[..rows * d], d);
            let (x, xn) = (&mut s.x[..rows * d], &mut s.xn[..rows * d]);
            blk.norm2.forward(ops, rows, x, xn);
            f(bi, 2, xn, d);
            let hid = blk.mlp.fc1.out_features();
            let last = bi + 1 == depth;
            let xn = &*xn;
            blk.mlp
                .hidden_blocks(ops, rows, d, xn, &mut s.h, |r0, m, h| {
                    if last {
                        for (r, row) in h[..m * hid].chunks_exact(hid).enumerate() {
                            if !(r0 + r).is_multiple_of(t1) {
                                f(bi, 3, row, hid);
                            }
                        }
                    } else {
                        f(bi, 3, &h[..m * hid], hid);
                    }
                    blk.mlp
                        .fc2
                        .forward(ops, m, h, hid, &mut x[r0 * d..], d, Epilogue::RESIDUAL);
                });
        }
    }

    /// Per block, the sums (f64) of each input channel of `qkv`, `proj`, `fc1` and `fc2` over
    /// `g` galaxies and the rows summed, added into `acc` (grown as needed); the rows are
    /// those of [`Vit::visit_inputs`].
    #[allow(clippy::type_complexity)]
    pub(crate) fn input_sums(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        s: &mut VitScratch,
        acc: &mut Vec<([Vec<f64>; 4], [usize; 4])>,
    ) {
        let (d, m) = (self.cfg.dim, self.cfg.mlp);
        acc.resize_with(self.blocks.len(), || {
            (
                [vec![0.0; d], vec![0.0; d], vec![0.0; d], vec![0.0; m]],
                [0; 4],
            )
        });
        self.visit_inputs(ops, images, g, s, &mut |b, which, x, w| {
            let (sums, n) = &mut acc[b];
            for row in x.chunks_exact(w) {
                for (a, v) in sums[which].iter_mut().zip(row) {
                    *a += f64::from(*v);
                }
                n[which] += 1;
            }
        });
    }

    /// Per block, the Gram matrices `X^T X` (f64, row-major) of the inputs of `qkv`,
    /// `proj`, `fc1` and `fc2` over `g` galaxies (the rows of [`Vit::visit_inputs`]), added
    /// into `acc` (grown as needed): the Hessians GPTQ rounds with ([`crate::gptq`]).
    pub(crate) fn input_grams(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        s: &mut VitScratch,
        acc: &mut Vec<[Vec<f64>; 4]>,
    ) {
        let (d, m) = (self.cfg.dim, self.cfg.mlp);
        acc.resize_with(self.blocks.len(), || zero_grams(d, m));
        self.visit_inputs(ops, images, g, s, &mut |b, which, x, w| {
            crate::gptq::add_gram(&mut acc[b][which], x, w);
        });
    }

    /// Runs only the transformer blocks over `g` galaxies, `reps` times, on this thread, and
    /// returns the `clock` seconds they took and their multiply-add FLOPs (for `cai bench`'s
    /// in-block efficiency; token values are synthetic: the blocks' work does not depend on
    /// them).
    pub(crate) fn time_blocks(
        &self,
        ops: &Ops,
        g: usize,
        reps: usize,
        s: &mut VitScratch,
        clock: &dyn Fn() -> f64,
    ) -> (f64, u64) {
        let cfg = &self.cfg;
        let (d, t1) = (cfg.dim, cfg.tokens + 1);
        s.ensure(cfg, g);
        for (i, v) in s.x[..g * t1 * d].iter_mut().enumerate() {
            *v = ((i % 97) as f32 - 48.0) * 0.02;
        }
        let t = clock();
        for _ in 0..reps {
            for blk in &self.blocks {
                blk.forward(ops, g, t1, d, s, false);
            }
        }
        let secs = clock() - t;
        let flops = (reps * g) as u64 * self.blocks.len() as u64 * cfg.block_flops();
        (secs, flops)
    }

    /// Output width (1096).
    pub(crate) fn out_features(&self) -> usize {
        self.vit_block[1].out_features()
    }

    /// Width of `vit_block.0`.
    pub(crate) fn hidden(&self) -> usize {
        self.vit_block[0].out_features()
    }

    /// `g` NCHW images -> `g x dim` pooled, `fc_norm`ed token features in `out`.
    pub(crate) fn trunk(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        out: &mut [f32],
        s: &mut VitScratch,
        split: bool,
    ) {
        let cfg = &self.cfg;
        let (d, t1) = (cfg.dim, cfg.tokens + 1);
        self.embed(ops, images, g, s, split);
        match self.blocks.split_last() {
            Some((last, rest)) => {
                for blk in rest {
                    blk.forward(ops, g, t1, d, s, split);
                }
                last.forward_pooled(ops, g, t1, d, s, split);
            }
            None => mean_patch_rows(&s.x, g, t1, d, &mut s.pool),
        }
        let pooled = &s.pool[..g * d];
        self.fc_norm.forward(ops, g, pooled, &mut out[..g * d]);
    }

    /// The patch embedding of `g` NCHW images plus the cls token and position embedding:
    /// the blocks' input, `g x (tokens + 1) x dim` in `s.x`.
    fn embed(&self, ops: &Ops, images: &[f32], g: usize, s: &mut VitScratch, split: bool) {
        let cfg = &self.cfg;
        let (c, img, p, d) = (cfg.channels, cfg.image, cfg.patch, cfg.dim);
        let grid = img / p;
        let (t, t1) = (cfg.tokens, cfg.tokens + 1);
        let kp = c * p * p;
        s.ensure(cfg, g);
        let patches = buf(&mut s.patches, g * t * kp);
        for gi in 0..g {
            let im = &images[gi * c * img * img..(gi + 1) * c * img * img];
            for ty in 0..grid {
                for tx in 0..grid {
                    let row = &mut patches[((gi * t) + ty * grid + tx) * kp..][..kp];
                    for ch in 0..c {
                        for ky in 0..p {
                            let src = &im[(ch * img + ty * p + ky) * img + tx * p..][..p];
                            row[(ch * p + ky) * p..(ch * p + ky + 1) * p].copy_from_slice(src);
                        }
                    }
                }
            }
        }
        let x = buf(&mut s.x, g * t1 * d);
        for gi in 0..g {
            let xg = &mut x[gi * t1 * d..(gi + 1) * t1 * d];
            let pg = &patches[gi * t * kp..];
            split_rows(ops, split, t, d, &mut xg[d..], |r0, m, c| {
                let a = &pg[r0 * kp..];
                self.patch_embed
                    .proj
                    .forward(ops, m, a, kp, c, d, Epilogue::PLAIN);
            });
            xg[..d].copy_from_slice(&self.cls_token[..d]);
            for (v, pe) in xg.iter_mut().zip(&self.pos_embed) {
                *v += pe;
            }
        }
    }

    /// `head` -> `vit_block.0` -> ReLU -> `vit_block.2` for `m` pooled rows into `out`
    /// (stride `ldo`). `t1` holds `m x dim`, `t2` holds `m x hidden`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tail(
        &self,
        ops: &Ops,
        m: usize,
        pooled: &[f32],
        t1: &mut [f32],
        t2: &mut [f32],
        out: &mut [f32],
        ldo: usize,
    ) {
        let d = self.cfg.dim;
        let hd = self.hidden();
        self.head.forward(ops, m, pooled, d, t1, d, Epilogue::PLAIN);
        self.vit_block[0].forward(ops, m, t1, d, t2, hd, Epilogue::RELU);
        self.vit_block[1].forward(ops, m, t2, hd, out, ldo, Epilogue::PLAIN);
    }
}

/// Zeroed Gram matrices (f64, row-major) of one block's `qkv`, `proj`, `fc1` and `fc2`
/// inputs: three of width `d`, `fc2`'s of width `m`.
fn zero_grams(d: usize, m: usize) -> [Vec<f64>; 4] {
    [
        vec![0.0; d * d],
        vec![0.0; d * d],
        vec![0.0; d * d],
        vec![0.0; m * m],
    ]
}
