//! AstroMAE (`ViT_Astro` of the original): a ViT branch, an Inception CNN branch and a
//! magnitude MLP, concatenated into a regression head that predicts redshift.
//!
//! Layers load from the original `state_dict` key names (field names follow the key
//! segments: `blocks.3.attn.qkv` is `vit.blocks[3].attn.qkv`). The ViT shape (patch size,
//! width, depth, MLP width, token count) is read from the tensor shapes; the head count is
//! not visible in shapes and comes from [`LoadOptions::heads`], the safetensors metadata key
//! `heads`, or `dim / 64`.
//!
//! Inference runs in two phases, both parallel over the current rayon pool:
//! 1. per chunk of a few galaxies: the ViT trunk (all tokens of the chunk as one matrix) and
//!    the convolutional trunk (with fewer galaxies than threads, each galaxy's ViT GEMMs
//!    run in two halves of rows on two threads);
//! 2. per block of up to [`HEAD_ROWS`] galaxies: the per-galaxy MLPs (`head`, `vit_block`,
//!    `vis_inception.10/12`, `magnitude_block`, `concat_block`), which are dominated by
//!    reading their weights and so want many rows at once.
//!
//! Each output row is computed with the same arithmetic whatever the batch split or thread
//! count, so results are bit-identical across them. Working buffers live in a per-thread
//! cache reused across calls (about 7.5 MB per thread for the full model).
//!
//! The model keeps only its packed layers, not the weights it was loaded from: whoever
//! saves a model keeps those weights and [`AstroMae::write_back`] updates them.

pub(crate) mod cnn;
mod head;
mod layers;
mod plan;
mod vit;

pub use plan::{BlockPlan, PlanLayer, PrecisionPlan};

use std::cell::Cell;

use rayon::prelude::*;

use crate::kernels;
use crate::weights::{KeyLog, Vb};
use crate::{Error, Model, Weights};
use cnn::{buf, CnnScratch, MagnitudeBlock, VisInception};
use head::ConcatBlock;
use vit::{Vit, VitScratch};

/// Most galaxies per ViT/CNN chunk (phase 1). A chunk's activations (about 0.25 MB per
/// galaxy) stay within L2/L3, and every block's 1.8 MB of weights is read once per chunk.
/// Measured by interleaved A/B on one thread (Zen 3): with 8 the ViT blocks run 2% faster
/// than with 4 (rounds of one pass, alternating), the whole model 0-3% (batch 16 and 32,
/// alternating calls); 16 is no faster than 8.
pub const CHUNK: usize = 8;
/// Most galaxies per head block (phase 2).
pub const HEAD_ROWS: usize = 128;
/// `predict` processes at most this many galaxies at a time (bounds its memory).
const PREDICT_BLOCK: usize = 1024;

/// Shape of the ViT branch and of the input.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Patch size (kernel and stride of `patch_embed.proj`).
    pub patch: usize,
    /// Token width D.
    pub dim: usize,
    /// Number of transformer blocks.
    pub depth: usize,
    /// Attention heads (D must be divisible by it).
    pub heads: usize,
    /// Hidden width of each block's MLP.
    pub mlp: usize,
    /// Number of patch tokens, `(image / patch)^2` (the cls token not included).
    pub tokens: usize,
    /// Input height and width.
    pub image: usize,
    /// Input channels (photometric bands).
    pub channels: usize,
}

/// Fixed widths of the non-ViT parts (as in the original).
const VIT_HIDDEN: u64 = 1096;
const CNN_HIDDEN: u64 = 1096;
const MAG_HIDDEN: u64 = 1024;
const HEAD_HIDDEN: u64 = 1024;

impl Config {
    /// The published AstroMAE: patch 4, D 192, depth 12, 3 heads, MLP 768, 32x32x5 input.
    pub fn astromae() -> Self {
        Self {
            patch: 4,
            dim: 192,
            depth: 12,
            heads: 3,
            mlp: 768,
            tokens: 64,
            image: 32,
            channels: 5,
        }
    }

    /// Multiply-add FLOPs (2 per MAC) of one transformer block for one galaxy: `qkv`,
    /// `q kᵀ`, `s v`, `proj`, `fc1` and `fc2` (norms, softmax and GELU not counted).
    pub fn block_flops(&self) -> u64 {
        let (d, t1, m) = (self.dim as u64, self.tokens as u64 + 1, self.mlp as u64);
        let hd = d / self.heads.max(1) as u64;
        let heads = self.heads as u64;
        2 * (t1 * d * 3 * d + 2 * heads * t1 * t1 * hd + t1 * d * d + 2 * t1 * d * m)
    }

    /// Multiply-add FLOPs (2 per MAC) of one galaxy through the original architecture,
    /// with the original's fixed widths for the CNN, magnitude and head parts (activations,
    /// norms and pooling not counted). About 0.765 GFLOP for [`Config::astromae`].
    pub fn flops_per_galaxy(&self) -> u64 {
        let (d, t) = (self.dim as u64, self.tokens as u64);
        let (c, p) = (self.channels as u64, self.patch as u64);
        let mut macs = t * d * c * p * p;
        macs += self.depth as u64 * self.block_flops() / 2;
        macs += d * d + d * VIT_HIDDEN + VIT_HIDDEN * VIT_HIDDEN;
        // Inception branch at the original's resolutions and widths.
        let px0 = (self.image * self.image) as u64;
        macs += px0 * c * 32;
        let inc = |px: u64, cin: u64, w: u64, custom: bool| -> u64 {
            let b1 = px * cin * w;
            let b2 = px * cin * w + px * 9 * w * w;
            let b3 = if custom {
                0
            } else {
                px * cin * w + px * 25 * w * w
            };
            let b4 = px * cin * w;
            b1 + b2 + b3 + b4
        };
        let (p1, p2, p3) = (px0 / 4, px0 / 16, px0 / 64);
        macs += inc(p1, 32, 16, false) + inc(p1, 64, 16, false);
        macs += inc(p2, 64, 8, false) + inc(p2, 32, 8, false);
        macs += inc(p3, 32, 4, true);
        macs += 12 * p3 * CNN_HIDDEN + CNN_HIDDEN * CNN_HIDDEN;
        macs += c * MAG_HIDDEN + 4 * MAG_HIDDEN * MAG_HIDDEN;
        macs += (VIT_HIDDEN + CNN_HIDDEN + MAG_HIDDEN) * HEAD_HIDDEN + HEAD_HIDDEN;
        2 * macs
    }

    /// The FLOPs of [`Config::flops_per_galaxy`] that cai does not run: the last block's
    /// `fc2` runs once on the mean of the patch tokens' hidden rows (all the global pool
    /// needs) instead of on each of the `tokens` rows.
    pub fn flops_skipped_per_galaxy(&self) -> u64 {
        if self.depth == 0 {
            return 0;
        }
        let (d, t, m) = (self.dim as u64, self.tokens as u64, self.mlp as u64);
        2 * t.saturating_sub(1) * m * d
    }

    /// Multiply-add FLOPs cai runs per galaxy: [`Config::flops_per_galaxy`] less
    /// [`Config::flops_skipped_per_galaxy`] (about 0.746 GFLOP for [`Config::astromae`]).
    pub fn executed_flops_per_galaxy(&self) -> u64 {
        self.flops_per_galaxy() - self.flops_skipped_per_galaxy()
    }

    /// Reads the ViT shape from the weights.
    fn from_weights(root: &Vb, w: &Weights, opts: &LoadOptions) -> Result<Self, Error> {
        let file = root.file();
        let pe = root.pp("patch_embed").pp("proj");
        let dim = pe.dim("weight", 4, 0)?;
        let channels = pe.dim("weight", 4, 1)?;
        let patch = pe.dim("weight", 4, 2)?;
        let t1 = root.dim("pos_embed", 3, 1)?;
        let tokens = t1.saturating_sub(1);
        let grid = (tokens as f64).sqrt().round() as usize;
        if grid * grid != tokens || tokens == 0 {
            return Err(Error::Config {
                file: file.to_string(),
                message: format!(
                    "pos_embed has {t1} rows; expected 1 + a square number of patch tokens"
                ),
            });
        }
        let mut depth = 0;
        while root.pp("blocks").pp(depth).contains("norm1.weight") {
            depth += 1;
        }
        let mlp = root
            .pp("blocks")
            .pp(0)
            .pp("mlp")
            .pp("fc1")
            .dim("weight", 2, 0)?;
        let meta = match w.metadata().get("heads") {
            Some(s) => Some(s.trim().parse::<usize>().map_err(|_| Error::Config {
                file: file.to_string(),
                message: format!("metadata `heads` = {s:?} is not a positive integer"),
            })?),
            None => None,
        };
        if let (Some(m), Some(h)) = (meta, opts.heads) {
            if m != h {
                tracing::warn!(
                    file,
                    metadata = m,
                    hint = h,
                    "heads: file metadata overrides the caller's hint"
                );
            }
        }
        let heads = meta.or(opts.heads).unwrap_or((dim / 64).max(1));
        if heads == 0 || dim % heads != 0 {
            return Err(Error::Config {
                file: file.to_string(),
                message: format!("{heads} heads do not divide the token width {dim}"),
            });
        }
        Ok(Self {
            patch,
            dim,
            depth,
            heads,
            mlp,
            tokens,
            image: grid * patch,
            channels,
        })
    }
}

/// Options for [`AstroMae::load_with`].
#[derive(Debug, Clone, Default)]
pub struct LoadOptions {
    /// Attention heads (not visible in tensor shapes). Precedence: the weights' metadata
    /// key `heads`, then this hint, then `dim / 64`.
    pub heads: Option<usize>,
    /// Arithmetic of the weight matrices (default f32); see [`AstroMae::set_precision`].
    pub precision: kernels::Precision,
}

/// The AstroMAE model, loaded and ready for inference. `Debug` shows the configuration,
/// not the weights.
#[derive(Clone)]
pub struct AstroMae {
    cfg: Config,
    vit: Vit,
    cnn: VisInception,
    mag: MagnitudeBlock,
    head: ConcatBlock,
    params: usize,
    unused: Vec<String>,
    plan: PrecisionPlan,
}

/// Per-thread working memory, reused across calls (grown on demand, never shrunk).
#[derive(Debug, Default)]
struct Scratch {
    vit: VitScratch,
    cnn: CnnScratch,
    cat: Vec<f32>,
    t1: Vec<f32>,
    t2: Vec<f32>,
}

thread_local! {
    static SCRATCH: Cell<Option<Box<Scratch>>> = const { Cell::new(None) };
}

/// Runs `f` with this thread's value of `key` (taken out of the cell, so re-entrant use
/// would merely allocate a fresh one).
fn with_local<T: Default, R>(
    key: &'static std::thread::LocalKey<Cell<Option<Box<T>>>>,
    f: impl FnOnce(&mut T) -> R,
) -> R {
    let mut v = key.take().unwrap_or_default();
    let r = f(&mut v);
    key.set(Some(v));
    r
}

/// Runs `f` with this thread's [`Scratch`].
fn with_scratch<R>(f: impl FnOnce(&mut Scratch) -> R) -> R {
    with_local(&SCRATCH, f)
}

/// The calling thread's buffers for one `predict` or `features` call, reused across calls:
/// the trunks' outputs (written per chunk in phase 1, read per row block in phase 2, so no
/// worker's own scratch can hold them) and `predict`'s block of features.
#[derive(Debug, Default)]
struct CallBufs {
    pooled: Vec<f32>,
    flat: Vec<f32>,
    feats: Vec<f32>,
}

thread_local! {
    static CALL: Cell<Option<Box<CallBufs>>> = const { Cell::new(None) };
}

/// Runs `f` with the calling thread's [`CallBufs`].
fn with_call_bufs<R>(f: impl FnOnce(&mut CallBufs) -> R) -> R {
    with_local(&CALL, f)
}

impl std::fmt::Debug for AstroMae {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AstroMae")
            .field("config", &self.cfg)
            .field("params", &self.param_count())
            .field("unused_keys", &self.unused)
            .finish_non_exhaustive()
    }
}

/// Keys a checkpoint legitimately holds that the forward pass never reads.
fn ignorable(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
        || key.starts_with("inception_model.vis_inception.8.branch3.")
}

/// BatchNorm buffers (not parameters).
fn is_buffer(key: &str) -> bool {
    key.ends_with("running_mean")
        || key.ends_with("running_var")
        || key.ends_with("num_batches_tracked")
}

/// Parameters as PyTorch's `model.parameters()` counts them: every stored tensor except
/// BatchNorm buffers, the shared first convolution counted once.
fn param_count(weights: &Weights) -> usize {
    let dup = weights.get(&format!("{}.weight", cnn::CONV_INIT)).is_some();
    let vis0 = format!("{}.", cnn::VIS0);
    let counted = |k: &str| !(is_buffer(k) || (dup && k.starts_with(&vis0)));
    weights
        .iter()
        .filter(|(k, _)| counted(k))
        .map(|(_, t)| t.numel())
        .sum()
}

impl AstroMae {
    /// Builds the model from `state_dict`-named weights (without the `module.` prefix;
    /// see [`Weights::strip_prefix`]). `source_name` appears in errors.
    pub fn load(weights: &Weights, source_name: &str) -> Result<Self, Error> {
        Self::load_with(weights, source_name, &LoadOptions::default())
    }

    /// [`AstroMae::load`] with options.
    pub fn load_with(
        weights: &Weights,
        source_name: &str,
        opts: &LoadOptions,
    ) -> Result<Self, Error> {
        let log = KeyLog::default();
        let root = Vb::new(weights, source_name, &log);
        let cfg = Config::from_weights(&root, weights, opts)?;
        // The branches pack their weights in parallel (start-up time), so the head's input
        // width is read from its weight and checked against the branches' widths after.
        let head_w = root.pp("concat_block").pp(0);
        let inputs = head_w.dim("weight", 2, 1)?;
        let (vit, (cnn, (mag, head))) = rayon::join(
            || Vit::load(&root, &cfg),
            || {
                rayon::join(
                    || VisInception::load(&root, cfg.channels, cfg.image),
                    || {
                        rayon::join(
                            || MagnitudeBlock::load(&root),
                            || ConcatBlock::load(&root, inputs),
                        )
                    },
                )
            },
        );
        let (vit, cnn, mag, head) = (vit?, cnn?, mag?, head?);
        let got = vit.out_features() + cnn.out_features() + mag.out_features();
        if got != inputs {
            return Err(Error::Shape {
                file: source_name.to_string(),
                key: head_w.key("weight"),
                expected: vec![head.hidden(), got],
                got: vec![head.hidden(), inputs],
            });
        }
        let widths = [
            ("token width (patch_embed.proj.weight dim 0)", cfg.dim),
            (
                "input channels (patch_embed.proj.weight dim 1)",
                cfg.channels,
            ),
            ("patch size (patch_embed.proj.weight dim 2)", cfg.patch),
            ("MLP width (blocks.0.mlp.fc1.weight dim 0)", cfg.mlp),
            (
                "magnitudes (inception_model.magnitude_block.0.weight dim 1)",
                mag.inputs,
            ),
            ("features (concat_block.0.weight dim 0)", head.hidden()),
            (
                "flattened CNN output (inception_model.vis_inception.10.weight dim 1)",
                cnn.flat,
            ),
        ];
        if let Some((what, _)) = widths.iter().find(|(_, v)| *v == 0) {
            return Err(Error::Config {
                file: source_name.to_string(),
                message: format!("{what} is zero"),
            });
        }
        let unused: Vec<String> = weights
            .keys()
            .filter(|k| !log.is_used(k) && !ignorable(k))
            .map(str::to_string)
            .collect();
        tracing::debug!(?cfg, source_name, "loaded AstroMAE");
        let mut model = Self {
            cfg,
            vit,
            cnn,
            mag,
            head,
            params: param_count(weights),
            plan: PrecisionPlan::f32(0),
            unused,
        };
        model.plan = PrecisionPlan::f32(model.cfg.depth);
        model.set_precision(opts.precision)?;
        Ok(model)
    }

    /// Converts the weight matrices of the two trunks (the ViT's `patch_embed` and blocks,
    /// ≈95% of the FLOPs, and the Inception convolutions) to `precision`: bf16 rounds the
    /// weights, int8 and int16 quantise them per output column (8- and 13-bit integers) and
    /// drop their f32 copy. The per-galaxy MLPs (`head`, `vit_block`, `vis_inception.10/12`,
    /// `magnitude_block`, `concat_block`: ≈3% of the FLOPs) stay f32: on the parity fixtures
    /// each of them alone moved z by 1e-3 to 2e-2 in bf16 or int8. This is
    /// [`AstroMae::set_plan`] with [`PrecisionPlan::uniform`]; the same rules apply.
    pub fn set_precision(&mut self, precision: kernels::Precision) -> Result<(), Error> {
        self.set_plan(&PrecisionPlan::uniform(precision, self.cfg.depth))
    }

    /// Converts each layer to the precision `plan` gives it, folding in the plan's
    /// smoothing factors first. Only f32 layers can be converted (a conversion is not
    /// reversible): a layer already in the plan's precision (and smoothing) is left alone,
    /// any other non-f32 layer is an error (load the model again). Checks the plan's depth
    /// and smoothing lengths first, so an error changes nothing.
    pub fn set_plan(&mut self, plan: &PrecisionPlan) -> Result<(), Error> {
        use kernels::Precision;
        let err = |message: String| Error::Config {
            file: "(precision plan)".into(),
            message,
        };
        if plan.blocks.len() != self.cfg.depth {
            return Err(err(format!(
                "the plan has {} blocks, the model {}",
                plan.blocks.len(),
                self.cfg.depth
            )));
        }
        let layers = plan.layers();
        let mut todo = Vec::new();
        for &l in &layers {
            let (cur, want) = (self.plan.get(l), plan.get(l));
            let (cur_s, want_s) = (self.plan.smoothing(l), plan.smoothing(l));
            let (cur_m, want_m) = (self.plan.input_mean(l), plan.input_mean(l));
            let (cur_g, want_g) = (self.plan.gptq(l), plan.gptq(l));
            if cur == want && cur_s == want_s && cur_m == want_m && cur_g == want_g {
                continue;
            }
            if cur != Precision::F32 || cur_s.is_some() || cur_m.is_some() || cur_g.is_some() {
                return Err(err(format!(
                    "cannot convert {l} from {cur}{} to {want}{}; load the model again",
                    if cur_s.is_some() { " (smoothed)" } else { "" },
                    if want_s.is_some() { " (smoothed)" } else { "" },
                )));
            }
            if let Some(s) = want_s {
                let d = self.cfg.dim;
                if s.len() != d || s.iter().any(|v| !v.is_finite() || *v <= 0.0) {
                    return Err(err(format!(
                        "{l}: smoothing needs {d} positive factors, the plan has {} values",
                        s.len()
                    )));
                }
            }
            if let Some(m) = want_m {
                let k = if matches!(l, PlanLayer::Fc2(_)) {
                    self.cfg.mlp
                } else {
                    self.cfg.dim
                };
                if m.len() != k || m.iter().any(|v| !v.is_finite()) {
                    return Err(err(format!(
                        "{l}: bias correction needs {k} finite input means, the plan has {} values",
                        m.len()
                    )));
                }
            }
            if matches!(l, PlanLayer::Attn(_)) && want == Precision::Int8 {
                return Err(err(format!("{l} runs in f32, bf16 or int16, not {want}")));
            }
            if let Some(g) = want_g {
                let (k, n) = self.layer_shape(l);
                if g.len() != k * n {
                    return Err(err(format!(
                        "{l}: GPTQ codes for a {k} x {n} layer, the plan has {} values",
                        g.len()
                    )));
                }
            }
            todo.push(l);
        }
        for l in todo {
            let s = plan.smoothing(l);
            if let Some(s) = s {
                self.vit.smooth(l, s);
            }
            let p = plan.get(l);
            // The means of the inputs the (smoothed) weights see: x_j / s_j.
            let mean = plan
                .input_mean(l)
                .filter(|_| matches!(p, Precision::Int8 | Precision::Int16))
                .map(|m| match s {
                    Some(s) => m.iter().zip(s).map(|(v, f)| v / f).collect(),
                    None => m.to_vec(),
                });
            let codes = plan.gptq(l).filter(|_| p == Precision::Int8);
            if let PlanLayer::Attn(b) = l {
                self.vit.set_attention(b, p);
            }
            self.layer_weights_mut(l, &mut |w, _| {
                convert_layer(w, p, mean.as_deref(), codes);
            });
            self.plan.set(l, p);
            self.plan.set_smoothing(l, s.map(<[f32]>::to_vec));
            self.plan
                .set_input_mean(l, plan.input_mean(l).map(<[f32]>::to_vec));
            self.plan.set_gptq(l, plan.gptq(l).map(<[i8]>::to_vec));
        }
        Ok(())
    }

    /// Visits the packed weights of one plan layer, each with the GEMM rows it runs on per
    /// galaxy.
    fn layer_weights_mut(
        &mut self,
        layer: PlanLayer,
        f: &mut dyn FnMut(&mut kernels::PackedB, usize),
    ) {
        match layer {
            PlanLayer::Cnn => self.cnn.trunk_weights_mut(f),
            PlanLayer::Head => {
                let mut g = |w: &mut kernels::PackedB| f(w, 1);
                self.vit.tail_weights_mut(&mut g);
                self.cnn.tail_weights_mut(&mut g);
                self.mag.weights_mut(&mut g);
                self.head.weights_mut(&mut g);
            }
            _ => self.vit.layer_mut(layer, f),
        }
    }

    /// Multiply-add FLOPs (2 per MAC) per galaxy of each plan layer's weight matrices, and
    /// of the attention's two products for `attn` layers, in [`PlanLayer::all`] order
    /// (norms and activations are in no layer).
    pub fn layer_flops(&self) -> Vec<(PlanLayer, u64)> {
        let mut m = self.clone();
        let t1 = self.cfg.tokens + 1;
        PlanLayer::all(self.cfg.depth)
            .into_iter()
            .map(|l| {
                if matches!(l, PlanLayer::Attn(_)) {
                    return (l, 4 * (t1 * t1 * self.cfg.dim) as u64);
                }
                let mut flops = 0u64;
                m.layer_weights_mut(l, &mut |w, rows| {
                    flops += 2 * (rows * w.k() * w.n()) as u64;
                });
                (l, flops)
            })
            .collect()
    }

    /// The largest |value| per input channel of `layer`'s weight matrix (its rows of `B`),
    /// for the layers that follow a LayerNorm (`qkv`, `fc1`); `None` for others.
    pub fn input_channel_absmax(&self, layer: PlanLayer) -> Option<Vec<f32>> {
        if !layer.follows_layer_norm() {
            return None;
        }
        let w = self.vit.block_weights(layer)?;
        Some(
            (0..w.k())
                .map(|kk| (0..w.n()).fold(0.0f32, |a, j| a.max(w.at(kk, j).abs())))
                .collect(),
        )
    }

    /// Runs `pass` (a statistics pass of the ViT trunk) over `n` galaxies in chunks on this
    /// thread's scratch, accumulating into one value: the calibration statistics' loop.
    fn over_vit_chunks<A: Default>(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
        pass: impl Fn(&Vit, &kernels::Ops, &[f32], usize, &mut VitScratch, &mut A),
    ) -> Result<A, Error> {
        self.check(images, magnitudes, n)?;
        let ops = kernels::ops();
        let img = self.cfg.channels * self.cfg.image * self.cfg.image;
        let mut acc = A::default();
        with_scratch(|s| {
            for chunk in images.chunks(CHUNK * img) {
                pass(
                    &self.vit,
                    ops,
                    chunk,
                    chunk.len() / img,
                    &mut s.vit,
                    &mut acc,
                );
            }
        });
        Ok(acc)
    }

    /// Per block, the largest |value| of each channel of the inputs of `qkv` (`norm1`'s
    /// output) and of `fc1` (`norm2`'s) over `n` galaxies (inputs as for
    /// [`Model::predict`]): the activation statistics SmoothQuant needs.
    pub fn layer_norm_absmax(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
    ) -> Result<Vec<[Vec<f32>; 2]>, Error> {
        self.over_vit_chunks(images, magnitudes, n, Vit::norm_absmax)
    }

    /// Per block, the mean of each input channel of `qkv`, `proj`, `fc1` and `fc2` (in
    /// that order) over `n` galaxies (inputs as for [`Model::predict`]), as the f32 forward
    /// pass computes them (the last block's `fc2` sees the mean of the patch tokens' hidden
    /// activations, so its mean is over those rows): what bias correction needs
    /// ([`PrecisionPlan::input_mean`]).
    pub fn layer_input_means(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
    ) -> Result<Vec<[Vec<f32>; 4]>, Error> {
        let acc = self.over_vit_chunks(images, magnitudes, n, Vit::input_sums)?;
        Ok(acc
            .into_iter()
            .map(|(sums, rows)| {
                std::array::from_fn(|i| {
                    let r = rows[i].max(1) as f64;
                    sums[i].iter().map(|v| (v / r) as f32).collect()
                })
            })
            .collect())
    }

    /// Per block, the Gram matrices `X^T X` (f64, `k x k` row-major) of the inputs `X` of
    /// `qkv`, `proj`, `fc1` and `fc2` (in that order; rows as for
    /// [`AstroMae::layer_input_means`]) over `n` galaxies, as the f32 forward pass computes
    /// them: the Hessians [`AstroMae::gptq_codes`] rounds with.
    pub fn layer_input_grams(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
    ) -> Result<Vec<[Vec<f64>; 4]>, Error> {
        self.over_vit_chunks(images, magnitudes, n, Vit::input_grams)
    }

    /// `(k, n)` of a block layer's weight matrix (`(0, 0)` for other layers).
    fn layer_shape(&self, layer: PlanLayer) -> (usize, usize) {
        let (d, m) = (self.cfg.dim, self.cfg.mlp);
        match layer {
            PlanLayer::Qkv(_) => (d, 3 * d),
            PlanLayer::Proj(_) => (d, d),
            PlanLayer::Fc1(_) => (d, m),
            PlanLayer::Fc2(_) => (m, d),
            _ => (0, 0),
        }
    }

    /// GPTQ's int8 codes ([`crate::gptq::gptq_int8`]) for a block layer of this f32 model
    /// whose inputs have the Gram matrix `gram` (from [`AstroMae::layer_input_grams`]),
    /// with `smoothing` folded in first when given (the weights' input channel `j` times
    /// `s_j`, the inputs' divided by it), as [`AstroMae::set_plan`] folds it: the codes a
    /// plan stores for the layer ([`PrecisionPlan::gptq`]).
    ///
    /// # Errors
    /// [`Error::Config`] for a layer outside the blocks, a converted layer, or a Gram matrix
    /// or factors of the wrong length.
    pub fn gptq_codes(
        &self,
        layer: PlanLayer,
        gram: &[f64],
        smoothing: Option<&[f32]>,
    ) -> Result<Vec<i8>, Error> {
        let err = |message: String| Error::Config {
            file: "(gptq)".into(),
            message,
        };
        let w = match self.vit.block_weights(layer) {
            Some(w) if self.plan.get(layer) == kernels::Precision::F32 && !w.is_quantized() => w,
            _ => return Err(err(format!("{layer}: GPTQ needs an f32 block layer"))),
        };
        let (k, n) = (w.k(), w.n());
        let mut wk = w.weights_kn();
        let mut h = gram.to_vec();
        if h.len() != k * k {
            return Err(err(format!(
                "{layer}: a {k} x {k} Gram matrix, not {} values",
                h.len()
            )));
        }
        if let Some(s) = smoothing {
            // As `Vit::smooth` folds them (and `set_plan` will): row kk of the weights times
            // s_kk, the same f32 products it packs; the inputs, so their Gram matrix, / s.
            if s.len() != k || !layer.follows_layer_norm() || w.is_bf16() {
                return Err(err(format!("{layer}: cannot fold {} factors", s.len())));
            }
            for (row, sk) in wk.chunks_exact_mut(n.max(1)).zip(s) {
                row.iter_mut().for_each(|v| *v *= sk);
            }
            for a in 0..k {
                for b in 0..k {
                    h[a * k + b] /= f64::from(s[a]) * f64::from(s[b]);
                }
            }
        }
        let scales = kernels::int8_column_scales(&wk, k, n);
        crate::gptq::gptq_int8(&wk, k, n, &h, &scales)
    }

    /// For studies (`examples/quant_study`): a block layer's weights as a dense row-major
    /// `k x n` matrix (dequantised if converted), their int8 per-column scales
    /// ([`kernels::PackedB::int8_scales`]), `k` and `n`.
    #[doc(hidden)]
    #[allow(clippy::type_complexity)]
    pub fn study_layer_weights(
        &self,
        layer: PlanLayer,
    ) -> Option<(Vec<f32>, Vec<f32>, usize, usize)> {
        let w = self.vit.block_weights(layer)?;
        Some((w.weights_kn(), w.int8_scales(), w.k(), w.n()))
    }

    /// For studies of where int8's error comes from (`examples/quant_study`): rounds the
    /// weights of `layer` to int8 values (to nearest, or `codes`), bias corrected with
    /// `mean` when given, but keeps them (and so the activations) f32: the error of the
    /// weights alone. The plan still names the layer f32.
    #[doc(hidden)]
    pub fn study_round_weights(
        &mut self,
        layer: PlanLayer,
        mean: Option<&[f32]>,
        codes: Option<&[i8]>,
    ) {
        self.layer_weights_mut(layer, &mut |w, _| {
            let before = mean.map(|m| at_mean(w, m));
            let (k, n) = (w.k(), w.n());
            let sc = w.int8_scales();
            let wk = w.weights_kn();
            let q = match codes {
                Some(c) if c.len() == k * n => c.to_vec(),
                _ => crate::gptq::rtn_int8(&wk, n, &sc),
            };
            repack_codes(w, &q, &sc);
            if let (Some(b), Some(m)) = (before, mean) {
                fix_bias(w, &b, m);
            }
        });
    }

    /// The trunk's precision when the model runs a [`PrecisionPlan::uniform`] plan (what
    /// [`AstroMae::set_precision`] sets), `None` for a mixed plan.
    pub fn precision(&self) -> Option<kernels::Precision> {
        self.plan.as_uniform()
    }

    /// The precision of every layer.
    pub fn plan(&self) -> &PrecisionPlan {
        &self.plan
    }

    /// The ViT shape and input size.
    pub fn config(&self) -> &Config {
        &self.cfg
    }

    /// Keys present in the weights that the model did not read (besides the known
    /// leftovers: `num_batches_tracked`, the unused branch3 of the custom Inception block).
    pub fn unused_keys(&self) -> &[String] {
        &self.unused
    }

    /// Number of parameters as PyTorch's `model.parameters()` counts them: every stored
    /// tensor except BatchNorm buffers, the shared first convolution counted once.
    pub fn param_count(&self) -> usize {
        self.params
    }

    /// Width of [`AstroMae::features`] rows (1024).
    pub fn feature_width(&self) -> usize {
        self.head.hidden()
    }

    /// Number of magnitudes per galaxy (5).
    pub fn magnitudes(&self) -> usize {
        self.mag.inputs
    }

    fn check(&self, images: &[f32], magnitudes: &[f32], n: usize) -> Result<(), Error> {
        let (c, h, w) = self.input_shape();
        let expected = n * c * h * w;
        if images.len() != expected {
            return Err(Error::Input {
                what: "images",
                expected,
                got: images.len(),
            });
        }
        let expected = n * self.mag.inputs;
        if magnitudes.len() != expected {
            return Err(Error::Input {
                what: "magnitudes",
                expected,
                got: magnitudes.len(),
            });
        }
        Ok(())
    }

    /// Times the ViT's transformer blocks alone (about 95% of the model's FLOPs) on the
    /// calling thread: `reps` passes over a chunk of [`CHUNK`] galaxies of synthetic tokens,
    /// measured by `clock` (seconds; e.g. the thread's CPU clock). Returns the seconds and
    /// the FLOPs done ([`Config::block_flops`] per block and galaxy).
    pub fn time_vit_blocks(&self, reps: usize, clock: &dyn Fn() -> f64) -> (f64, u64) {
        let ops = kernels::ops();
        with_scratch(|s| self.vit.time_blocks(ops, CHUNK, reps, &mut s.vit, clock))
    }

    /// The ViT blocks' speed as a share of this core's FMA peak, both measured on the
    /// calling thread in alternating rounds (about 10 ms of the FMA probe, then one pass of
    /// the blocks over [`CHUNK`] galaxies) for about `seconds` of its CPU time: whatever
    /// else the machine runs slows both alike, where a peak taken once, at another moment,
    /// would not. Timed by [`crate::clock::thread_cpu_seconds`] (wall time where missing).
    pub fn measure_vit_blocks(&self, seconds: f64) -> BlockSpeed {
        let start = std::time::Instant::now();
        let clock =
            || crate::clock::thread_cpu_seconds().unwrap_or_else(|| start.elapsed().as_secs_f64());
        let ops = kernels::ops();
        // Warm-up: buffers sized, weights and code in cache; and size the probe's rounds.
        self.time_vit_blocks(1, &clock);
        let iters = kernels::probe_rounds(ops, &clock, 0.01);
        let mut out = BlockSpeed::default();
        let t0 = clock();
        while out.rounds == 0 || clock() - t0 < seconds {
            let t = clock();
            let (sum, flops) = ops.fma_probe(iters);
            std::hint::black_box(sum);
            out.probe_seconds += clock() - t;
            out.probe_flops += flops;
            let (secs, flops) = self.time_vit_blocks(1, &clock);
            out.block_seconds += secs;
            out.block_flops += flops;
            out.rounds += 1;
        }
        out
    }

    /// Penultimate features: the ReLU output after `concat_block.0`, `n x 1024`
    /// row-major (for fitting the last layer). Inputs as for [`Model::predict`].
    pub fn features(
        &self,
        images: &[f32],
        magnitudes: &[f32],
        n: usize,
    ) -> Result<Vec<f32>, Error> {
        self.check(images, magnitudes, n)?;
        let mut out = vec![0.0f32; n * self.feature_width()];
        with_call_bufs(|cb| self.features_into(images, magnitudes, n, &mut out, cb));
        Ok(out)
    }

    /// Fills `out` (`n x feature_width`); inputs already checked. The trunks' outputs go
    /// to `cb` (grown once, then reused: no allocation per batch).
    fn features_into(
        &self,
        images: &[f32],
        mags: &[f32],
        n: usize,
        out: &mut [f32],
        cb: &mut CallBufs,
    ) {
        if n == 0 {
            return;
        }
        let ops = kernels::ops();
        let cfg = &self.cfg;
        let threads = rayon::current_num_threads().max(1);
        let (d, f) = (cfg.dim, self.cnn.flat);
        let img = cfg.channels * cfg.image * cfg.image;

        // Phase 1: ViT and CNN trunks per chunk of galaxies.
        let g = n.div_ceil(threads).clamp(1, CHUNK);
        // Fewer galaxies than threads (g is then 1): each galaxy's ViT GEMMs split their
        // rows over two threads, so a lone galaxy does not leave a core idle.
        let split = n < threads;
        // Every value of both is written by the trunks before phase 2 reads it.
        let pooled = buf(&mut cb.pooled, n * d);
        let flat = buf(&mut cb.flat, n * f);
        pooled
            .par_chunks_mut(g * d)
            .zip(flat.par_chunks_mut(g * f))
            .zip(images.par_chunks(g * img))
            .for_each(|((po, fl), im)| {
                with_scratch(|s| {
                    let gi = im.len() / img;
                    self.vit.trunk(ops, im, gi, po, &mut s.vit, split);
                    self.cnn.trunk(ops, im, gi, fl, &mut s.cnn);
                })
            });

        // Phase 2: the per-galaxy MLPs over larger row blocks.
        let r = n.div_ceil(threads).clamp(1, HEAD_ROWS);
        let (nm, hw) = (self.mag.inputs, self.head.hidden());
        let (vo, co) = (self.vit.out_features(), self.cnn.out_features());
        let width = self.head.inputs;
        let t1w = d.max(self.mag.max_width());
        let t2w = self
            .vit
            .hidden()
            .max(self.cnn.hidden())
            .max(self.mag.max_width());
        out.par_chunks_mut(r * hw)
            .zip(pooled.par_chunks(r * d))
            .zip(flat.par_chunks(r * f))
            .zip(mags.par_chunks(r * nm))
            .for_each(|(((fo, po), fl), mg)| {
                with_scratch(|s| {
                    let m = po.len() / d;
                    let cat = buf(&mut s.cat, m * width);
                    let t1 = buf(&mut s.t1, m * t1w);
                    let t2 = buf(&mut s.t2, m * t2w);
                    self.vit.tail(ops, m, po, t1, t2, cat, width);
                    self.cnn.tail(ops, m, fl, t2, &mut cat[vo..], width);
                    self.mag
                        .forward(ops, m, mg, t1, t2, &mut cat[vo + co..], width);
                    self.head.features(ops, m, cat, fo);
                })
            });
    }

    /// Replaces the last Linear (`concat_block.2`): `weight` of [`AstroMae::feature_width`]
    /// values and a bias. [`AstroMae::write_back`] carries it into saved weights.
    pub fn set_last_layer(&mut self, weight: &[f32], bias: f32) -> Result<(), Error> {
        let hw = self.head.hidden();
        if weight.len() != hw {
            return Err(Error::Input {
                what: "last layer weight",
                expected: hw,
                got: weight.len(),
            });
        }
        self.head.last_w = weight.to_vec();
        self.head.last_b = bias;
        Ok(())
    }

    /// Updates `weights`, the weights this model was loaded from, with what the model may
    /// have changed since: the last layer ([`AstroMae::set_last_layer`]) and the metadata
    /// `heads`. The result is ready for [`Weights::to_safetensors`]. The model keeps no
    /// copy of its weights (its packed layers are all it needs to predict; a copy would
    /// cost start-up time and the weights' size in memory), so saving takes them back.
    pub fn write_back(&self, weights: &mut Weights) {
        let hw = self.head.hidden();
        weights.insert(
            "concat_block.2.weight",
            crate::Tensor::new(vec![1, hw], self.head.last_w.clone()),
        );
        weights.insert(
            "concat_block.2.bias",
            crate::Tensor::new(vec![1], vec![self.head.last_b]),
        );
        weights.set_metadata("heads", self.cfg.heads.to_string());
    }
}

impl Model for AstroMae {
    fn predict(&self, images: &[f32], magnitudes: &[f32], n: usize) -> Result<Vec<f32>, Error> {
        self.check(images, magnitudes, n)?;
        let img = images.len() / n.max(1);
        let nm = self.mag.inputs;
        let hw = self.head.hidden();
        let mut preds = Vec::with_capacity(n);
        with_call_bufs(|cb| {
            let mut feats = std::mem::take(&mut cb.feats);
            let mut start = 0;
            while start < n {
                let b = PREDICT_BLOCK.min(n - start);
                let fb = buf(&mut feats, b * hw);
                self.features_into(
                    &images[start * img..(start + b) * img],
                    &magnitudes[start * nm..(start + b) * nm],
                    b,
                    fb,
                    cb,
                );
                preds.extend(fb.chunks_exact(hw).map(|row| self.head.predict_row(row)));
                start += b;
            }
            cb.feats = feats;
        });
        Ok(preds)
    }

    fn input_shape(&self) -> (usize, usize, usize) {
        (self.cfg.channels, self.cfg.image, self.cfg.image)
    }
}

/// Converts one packed matrix (f32) to `p`.
pub(crate) fn convert(w: &mut kernels::PackedB, p: kernels::Precision) {
    use kernels::Precision;
    match p {
        Precision::F32 => {}
        Precision::Bf16 => w.round_bf16(),
        Precision::Int8 => w.quantize_int8(),
        Precision::Int16 => w.quantize_int16(),
    }
}

/// [`convert`] with the bias corrected for the rounding of the weights, given the mean
/// `mean` of each input channel (`w.k()` values): `bias_j += sum_k mean_k (W_kj - Q_kj)`
/// with `Q` the converted (dequantised) weights, summed in f64, so that the layer's output
/// over inputs with that mean keeps its mean (see [`PrecisionPlan::input_mean`]). A
/// `mean` of another length converts without correction.
#[cfg(test)]
pub(crate) fn convert_corrected(w: &mut kernels::PackedB, p: kernels::Precision, mean: &[f32]) {
    convert_layer(w, p, Some(mean), None);
}

/// `sum_k mean_k B[k][j]` per column (f64).
fn at_mean(w: &kernels::PackedB, mean: &[f32]) -> Vec<f64> {
    (0..w.n())
        .map(|j| {
            mean.iter()
                .enumerate()
                .map(|(kk, m)| f64::from(*m) * f64::from(w.at(kk, j)))
                .sum()
        })
        .collect()
}

/// Adds `before_j - sum_k mean_k B[k][j]` to each bias (bias correction after the weights
/// changed from those that gave `before`).
fn fix_bias(w: &mut kernels::PackedB, before: &[f64], mean: &[f32]) {
    let after = at_mean(w, mean);
    let bias: Vec<f32> = (0..w.n())
        .map(|j| (f64::from(w.bias()[j]) + before[j] - after[j]) as f32)
        .collect();
    w.set_bias(&bias);
}

/// Repacks `w` (f32, `k x n`) as the int8 `codes` (`k * n`, row-major) times the
/// per-column `scales`, bias kept: the weights those codes stand for, still f32.
fn repack_codes(w: &mut kernels::PackedB, codes: &[i8], scales: &[f32]) {
    let (k, n) = (w.k(), w.n());
    let deq: Vec<f32> = codes
        .iter()
        .enumerate()
        .map(|(i, c)| f32::from(*c) * scales[i % n])
        .collect();
    let bias = w.bias().to_vec();
    w.repack_kn(&deq, k, n, n, Some(&bias));
}

/// Converts one packed matrix (f32) to `p` as a plan layer is converted: int8 with the
/// given GPTQ `codes` (`k * n`, [`AstroMae::gptq_codes`]) when `p` is int8 and they fit,
/// else [`convert`]; then, with a `mean` of `k` values, the bias corrected as in
/// [`convert_corrected`].
pub(crate) fn convert_layer(
    w: &mut kernels::PackedB,
    p: kernels::Precision,
    mean: Option<&[f32]>,
    codes: Option<&[i8]>,
) {
    let (k, n) = (w.k(), w.n());
    let mean = mean.filter(|m| m.len() == k);
    let before = mean.map(|m| at_mean(w, m));
    match codes {
        Some(c) if p == kernels::Precision::Int8 && c.len() == k * n && !w.is_quantized() => {
            let sc = w.int8_scales();
            repack_codes(w, c, &sc);
            w.quantize_int8_scaled(&sc);
        }
        _ => convert(w, p),
    }
    if let (Some(b), Some(m)) = (before, mean) {
        fix_bias(w, &b, m);
    }
}

/// What [`AstroMae::measure_vit_blocks`] measured: FLOPs and CPU seconds of the blocks and
/// of the FMA probe, over the same alternating rounds.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct BlockSpeed {
    /// Multiply-add FLOPs (2 per MAC) the blocks did.
    pub block_flops: u64,
    /// CPU seconds the blocks took.
    pub block_seconds: f64,
    /// FLOPs the FMA probe did.
    pub probe_flops: u64,
    /// CPU seconds the FMA probe took.
    pub probe_seconds: f64,
    /// Rounds (one probe run and one pass of the blocks each).
    pub rounds: usize,
}

impl BlockSpeed {
    /// The blocks' GFLOP per CPU-second.
    pub fn block_gflops(&self) -> f64 {
        self.block_flops as f64 / self.block_seconds.max(1e-12) / 1e9
    }

    /// The FMA probe's GFLOP per CPU-second over the same rounds.
    pub fn probe_gflops(&self) -> f64 {
        self.probe_flops as f64 / self.probe_seconds.max(1e-12) / 1e9
    }

    /// The blocks' rate over the probe's: the share of the peak reached in the blocks.
    pub fn peak_share(&self) -> f64 {
        self.block_gflops() / self.probe_gflops().max(1e-12)
    }
}

#[cfg(test)]
mod tests {
    use super::{convert, convert_corrected};
    use crate::kernels::{PackedB, Precision};

    /// `sum_k mean_k B[k][j] + bias_j` per column.
    fn at_mean(w: &PackedB, mean: &[f32]) -> Vec<f64> {
        (0..w.n())
            .map(|j| {
                f64::from(w.bias()[j])
                    + mean
                        .iter()
                        .enumerate()
                        .map(|(kk, m)| f64::from(*m) * f64::from(w.at(kk, j)))
                        .sum::<f64>()
            })
            .collect()
    }

    /// Bias correction: at the input means, the converted layer gives the f32 layer's
    /// outputs (to f32 rounding of the bias); without it, int8 weights move them.
    #[test]
    fn corrected_bias_keeps_outputs_at_the_mean() {
        let (n, k) = (37, 29);
        let w: Vec<f32> = (0..n * k)
            .map(|i| ((i * 7919) % 1013) as f32 / 1013.0 - 0.4)
            .collect();
        let bias: Vec<f32> = (0..n).map(|j| j as f32 * 0.01 - 0.1).collect();
        let mean: Vec<f32> = (0..k).map(|kk| 0.3 + (kk % 5) as f32 * 0.2).collect();
        let f = PackedB::pack_nk(&w, n, k, k, Some(&bias));
        let want = at_mean(&f, &mean);
        for p in [Precision::Int8, Precision::Int16] {
            let (mut plain, mut fixed) = (f.clone(), f.clone());
            convert(&mut plain, p);
            convert_corrected(&mut fixed, p, &mean);
            let err = |w: &PackedB| {
                at_mean(w, &mean)
                    .iter()
                    .zip(&want)
                    .map(|(a, b)| (a - b).abs())
                    .fold(0.0f64, f64::max)
            };
            assert!(err(&fixed) < 1e-6, "{p}: {}", err(&fixed));
            if p == Precision::Int8 {
                assert!(err(&plain) > 1e-4, "{p}: {}", err(&plain));
            }
            // The same weights: only the bias moved.
            assert!((0..n).all(|j| (0..k).all(|kk| plain.at(kk, j) == fixed.at(kk, j))));
        }
        // A mean of the wrong length: plain conversion.
        let (mut a, mut b) = (f.clone(), f);
        convert(&mut a, Precision::Int8);
        convert_corrected(&mut b, Precision::Int8, &mean[1..]);
        assert_eq!(a.bias(), b.bias());
    }
}
