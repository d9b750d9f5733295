//! tract operators that run on CAI's own kernels ([`crate::kernels`]): what
//! [`super::lower`] puts in place of the subgraphs a transformer spends its time in.
//!
//! * [`NativeLinear`]: `act(x·W + b)` (optionally `+ residual`) on the packed GEMM with the
//!   bias, GELU and residual fused into its epilogue, the weights packed once at load.
//! * [`NativeLayerNorm`]: ONNX `LayerNormalization` in one pass per row (tract decomposes it
//!   into nine element-wise and reduction operators).
//! * [`NativeAttention`]: `softmax(scale · q·kᵀ)·v` per batch and head on the fused attention
//!   kernel (tract runs it as two matrix products with their packing and a softmax).
//! * [`NativeHeadsAttention`]: the same over every head of a fused `qkv` product, read in
//!   place (no transposed copies of q, k and v).
//!
//! Each takes and returns f32 tensors in the layout tract gives it (dense, row-major).

use std::cell::RefCell;

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::*;
use tract_onnx::tract_hir::internal::*;

use crate::kernels::{self, Act, AttentionScratch, Epilogue, HeadQkv, PackedB};

/// A tensor's f32 values (tract's tensors are dense and row-major).
pub(super) fn f32s(t: &Tensor) -> TractResult<&[f32]> {
    t.to_plain_array_view::<f32>()?
        .to_slice()
        .ok_or_else(|| format_err!("tensor of shape {:?} is not contiguous", t.shape()))
}

/// A tensor's f32 values, to write.
fn f32s_mut(t: &mut Tensor) -> TractResult<&mut [f32]> {
    let shape = t.shape().to_vec();
    t.to_plain_array_view_mut::<f32>()?
        .into_slice()
        .ok_or_else(|| format_err!("tensor of shape {shape:?} is not contiguous"))
}

/// `act(x·W + b)` over the last axis of `x` (`k` values) into `n` values, on
/// [`kernels::Ops::gemm`] with weights packed once. With `residual`, a second input of the
/// output's shape is added (`out = residual + act(x·W + b)`, the GEMM accumulating into it).
#[derive(Debug, Clone)]
pub struct NativeLinear {
    /// The weights `k x n` and bias, packed for the GEMM.
    pub w: Arc<PackedB>,
    /// Activation fused into the epilogue.
    pub act: Act,
    /// Whether a second input is accumulated into.
    pub residual: bool,
}

impl PartialEq for NativeLinear {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.w, &other.w) && self.act == other.act && self.residual == other.residual
    }
}

impl Eq for NativeLinear {}

impl Op for NativeLinear {
    fn name(&self) -> StaticName {
        "CaiLinear".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "k={} n={} act={:?} residual={}",
            self.w.k(),
            self.w.n(),
            self.act,
            self.residual
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for NativeLinear {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, mut inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (k, n) = (self.w.k(), self.w.n());
        let residual = if self.residual { inputs.pop() } else { None };
        let x = inputs
            .pop()
            .ok_or_else(|| format_err!("CaiLinear needs an input"))?;
        let shape = x.shape().to_vec();
        ensure!(
            shape.last() == Some(&k),
            "CaiLinear: input {shape:?} does not end in {k} values"
        );
        let m = x.len() / k.max(1);
        let mut out_shape = shape;
        if let Some(last) = out_shape.last_mut() {
            *last = n;
        }
        let (mut out, accumulate) = match residual {
            Some(r) => {
                ensure!(
                    r.shape() == out_shape.as_slice(),
                    "CaiLinear: residual {:?} is not the output's shape {out_shape:?}",
                    r.shape()
                );
                (r.into_tensor(), true)
            }
            None => (Tensor::zero::<f32>(&out_shape)?, false),
        };
        let a = f32s(&x)?;
        let c = f32s_mut(&mut out)?;
        let epi = Epilogue {
            act: self.act,
            accumulate,
        };
        kernels::ops().gemm(m, a, k, &self.w, c, n, epi);
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for NativeLinear {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(x.datum_type == f32::datum_type(), "CaiLinear takes f32");
        ensure!(
            x.shape.last() == Some(&self.w.k().to_dim()),
            "CaiLinear: input {:?} does not end in {} values",
            x.shape,
            self.w.k()
        );
        let mut dims: TVec<TDim> = x.shape.iter().cloned().collect();
        if let Some(last) = dims.last_mut() {
            *last = self.w.n().to_dim();
        }
        Ok(tvec!(f32::fact(dims)))
    }
}

/// ONNX `LayerNormalization` over the axes from `axis` on (rows of `dim` values), with
/// `scale` (and `bias`) inputs of `dim` values, in f32 on [`kernels::Ops::layer_norm`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeLayerNorm {
    /// First normalised axis (non-negative).
    pub axis: usize,
    /// `epsilon`, as its bits (so the op is `Eq`).
    pub eps_bits: u32,
}

impl Op for NativeLayerNorm {
    fn name(&self) -> StaticName {
        "CaiLayerNorm".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "axis={} eps={}",
            self.axis,
            f32::from_bits(self.eps_bits)
        )])
    }

    op_as_typed_op!();
}

/// `values` as exactly `dim` f32s: as they are, or one value repeated (a broadcast scalar).
fn per_column(t: &Tensor, dim: usize, what: &str) -> TractResult<Vec<f32>> {
    let t = t.cast_to::<f32>()?;
    let v = f32s(&t)?;
    match v.len() {
        l if l == dim => Ok(v.to_vec()),
        1 => Ok(vec![v[0]; dim]),
        l => bail!("LayerNormalization: {what} has {l} values for rows of {dim}"),
    }
}

impl EvalOp for NativeLayerNorm {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let dt = x.datum_type();
        let shape = x.shape().to_vec();
        ensure!(
            self.axis < shape.len(),
            "LayerNormalization: axis out of range"
        );
        let dim: usize = shape[self.axis..].iter().product();
        let rows = x.len() / dim.max(1);
        let gamma = per_column(&inputs[1], dim, "scale")?;
        let beta = match inputs.get(2) {
            Some(b) => per_column(b, dim, "bias")?,
            None => vec![0.0; dim],
        };
        let xf = x.cast_to::<f32>()?;
        let mut out = Tensor::zero::<f32>(&shape)?;
        kernels::ops().layer_norm(
            rows,
            dim,
            f32s(&xf)?,
            dim,
            &gamma,
            &beta,
            f32::from_bits(self.eps_bits),
            f32s_mut(&mut out)?,
            dim,
        );
        if dt != f32::datum_type() {
            out = out.cast_to_dt(dt)?.into_owned();
        }
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for NativeLayerNorm {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        Ok(tvec!(inputs[0].datum_type.fact(inputs[0].shape.clone())))
    }
}

/// The ONNX `LayerNormalization` node as parsed: wired as [`NativeLayerNorm`].
#[derive(Debug, Clone)]
struct LayerNormExpansion {
    axis: i64,
    eps: f32,
    inputs: usize,
}

impl Expansion for LayerNormExpansion {
    fn name(&self) -> StaticName {
        "CaiLayerNorm".into()
    }

    fn rules<'r, 'p: 'r, 's: 'r>(
        &'s self,
        s: &mut Solver<'r>,
        inputs: &'p [TensorProxy],
        outputs: &'p [TensorProxy],
    ) -> InferenceResult {
        check_input_arity(inputs, self.inputs)?;
        check_output_arity(outputs, 1)?;
        s.equals(&inputs[0].datum_type, &outputs[0].datum_type)?;
        s.equals(&inputs[0].shape, &outputs[0].shape)?;
        Ok(())
    }

    fn wire(
        &self,
        prefix: &str,
        model: &mut TypedModel,
        inputs: &[OutletId],
    ) -> TractResult<TVec<OutletId>> {
        let rank = model.outlet_fact(inputs[0])?.rank() as i64;
        let axis = if self.axis < 0 {
            self.axis + rank
        } else {
            self.axis
        };
        ensure!(
            (0..rank).contains(&axis),
            "LayerNormalization axis {} for a rank {rank} input",
            self.axis
        );
        let op = NativeLayerNorm {
            axis: axis as usize,
            eps_bits: self.eps.to_bits(),
        };
        model.wire_node(prefix, op, inputs)
    }
}

/// Parses an ONNX `LayerNormalization` into [`NativeLayerNorm`] when only its first output
/// is used (the mean and inverse deviation outputs, and a `stash_type` other than f32, go to
/// tract's own decomposition).
fn layer_norm_builder(
    ctx: &tract_onnx::model::ParsingContext,
    node: &tract_onnx::pb::NodeProto,
) -> TractResult<(Box<dyn InferenceOp>, Vec<String>)> {
    let attr = |name: &str| node.attribute.iter().find(|a| a.name == name);
    let axis = attr("axis").map(|a| a.i).unwrap_or(-1);
    let eps = attr("epsilon").map(|a| a.f).unwrap_or(1e-5);
    let stash_f32 = attr("stash_type").is_none_or(|a| a.i == 1);
    let extra_outputs = node.output.iter().skip(1).any(|o| !o.is_empty());
    if extra_outputs || !stash_f32 || !(2..=3).contains(&node.input.len()) {
        let tract = tract_onnx::onnx();
        let builder = tract
            .op_register
            .0
            .get("LayerNormalization")
            .ok_or_else(|| format_err!("tract has no LayerNormalization"))?;
        return builder(ctx, node);
    }
    Ok((
        expand(LayerNormExpansion {
            axis,
            eps,
            inputs: node.input.len(),
        }),
        vec![],
    ))
}

/// tract's ONNX front end with CAI's operators registered in place of tract's own where
/// they parse (today `LayerNormalization`).
pub fn onnx_with_native_ops() -> tract_onnx::Onnx {
    let mut onnx = tract_onnx::onnx();
    onnx.op_register
        .insert("LayerNormalization", layer_norm_builder);
    onnx
}

/// Scaled dot-product attention `softmax(scale · q·kᵀ)·v` over the last two axes: `q`, `k`
/// and `v` are `[.., t, hd]` of one shape, one head per leading index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeAttention {
    /// The positive scale of the scores, as its bits.
    pub scale_bits: u32,
}

thread_local! {
    static ATTENTION_SCRATCH: RefCell<AttentionScratch> = RefCell::new(AttentionScratch::default());
}

impl Op for NativeAttention {
    fn name(&self) -> StaticName {
        "CaiAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!("scale={}", f32::from_bits(self.scale_bits))])
    }

    op_as_typed_op!();
}

impl EvalOp for NativeAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let (q, k, v) = (&inputs[0], &inputs[1], &inputs[2]);
        let shape = q.shape().to_vec();
        ensure!(
            shape.len() >= 2 && k.shape() == shape.as_slice() && v.shape() == shape.as_slice(),
            "CaiAttention: q {:?}, k {:?} and v {:?} differ",
            q.shape(),
            k.shape(),
            v.shape()
        );
        let (t, hd) = (shape[shape.len() - 2], shape[shape.len() - 1]);
        let head = t * hd;
        let mut out = Tensor::zero::<f32>(&shape)?;
        let (qs, ks, vs) = (f32s(q)?, f32s(k)?, f32s(v)?);
        let scale = f32::from_bits(self.scale_bits);
        let ops = kernels::ops();
        let o = f32s_mut(&mut out)?;
        ATTENTION_SCRATCH.with_borrow_mut(|ws| {
            for (i, dst) in o.chunks_exact_mut(head.max(1)).enumerate() {
                let h = HeadQkv {
                    t,
                    hd,
                    ld: hd,
                    q: &qs[i * head..][..head],
                    k: &ks[i * head..][..head],
                    v: &vs[i * head..][..head],
                };
                ops.attention(&h, scale, dst, hd, ws);
            }
        });
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for NativeAttention {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        ensure!(
            inputs.iter().all(|f| f.datum_type == f32::datum_type()),
            "CaiAttention takes f32"
        );
        Ok(tvec!(f32::fact(inputs[0].shape.clone())))
    }
}

/// Multi-head attention read in place from one fused `qkv` product: the input is
/// `[.., t, 3·heads·hd]` (per token: every head's queries, then keys, then values, as
/// PyTorch's and timm's attention lay them out), the output `[.., t, heads·hd]` with the heads
/// merged. It replaces [`NativeAttention`] together with the reshape, the transpositions and
/// the three gathers around it, which copied the whole `qkv` tensor twice per block.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NativeHeadsAttention {
    /// Heads.
    pub heads: usize,
    /// The positive scale of the scores, as its bits.
    pub scale_bits: u32,
}

impl Op for NativeHeadsAttention {
    fn name(&self) -> StaticName {
        "CaiHeadsAttention".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        Ok(vec![format!(
            "heads={} scale={}",
            self.heads,
            f32::from_bits(self.scale_bits)
        )])
    }

    op_as_typed_op!();
}

impl EvalOp for NativeHeadsAttention {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let x = &inputs[0];
        let shape = x.shape().to_vec();
        let r = shape.len();
        ensure!(
            r >= 2 && self.heads > 0 && shape[r - 1].is_multiple_of(3 * self.heads),
            "CaiHeadsAttention: input {shape:?} is not [.., t, 3·{}·hd]",
            self.heads
        );
        let (t, c3) = (shape[r - 2], shape[r - 1]);
        let c = c3 / 3;
        let hd = c / self.heads;
        let mut out_shape = shape.clone();
        out_shape[r - 1] = c;
        let mut out = Tensor::zero::<f32>(&out_shape)?;
        let xs = f32s(x)?;
        let scale = f32::from_bits(self.scale_bits);
        let ops = kernels::ops();
        let o = f32s_mut(&mut out)?;
        if t > 0 && hd > 0 {
            ATTENTION_SCRATCH.with_borrow_mut(|ws| {
                for (src, dst) in xs.chunks_exact(t * c3).zip(o.chunks_exact_mut(t * c)) {
                    for h in 0..self.heads {
                        let head = HeadQkv {
                            t,
                            hd,
                            ld: c3,
                            q: &src[h * hd..],
                            k: &src[c + h * hd..],
                            v: &src[2 * c + h * hd..],
                        };
                        ops.attention(&head, scale, &mut dst[h * hd..], c, ws);
                    }
                }
            });
        }
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for NativeHeadsAttention {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        ensure!(
            x.datum_type == f32::datum_type(),
            "CaiHeadsAttention takes f32"
        );
        let r = x.rank();
        let c3 = x
            .shape
            .last()
            .and_then(|d| d.to_usize().ok())
            .filter(|c3| r >= 2 && self.heads > 0 && c3.is_multiple_of(3 * self.heads))
            .ok_or_else(|| format_err!("CaiHeadsAttention: input {:?}", x.shape))?;
        let mut shape: TVec<TDim> = x.shape.iter().cloned().collect();
        shape[r - 1] = (c3 / 3).into();
        Ok(tvec!(f32::fact(shape)))
    }
}

/// Where a 2-D convolution reads: input channels and size, kernel size, strides and the
/// zero padding before each axis (the padding after is implied by the output size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConvGeometry {
    /// Input channels.
    pub cin: usize,
    /// Input height and width.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Vertical stride.
    pub sh: usize,
    /// Horizontal stride.
    pub sw: usize,
    /// Zero rows above the input.
    pub pad_top: usize,
    /// Zero columns left of the input.
    pub pad_left: usize,
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl ConvGeometry {
    /// Values in one output pixel's patch: the GEMM's reduction length.
    pub fn patch(&self) -> usize {
        self.kh * self.kw * self.cin
    }

    /// Whether each output pixel reads exactly its own input pixel (a 1x1 convolution
    /// without stride or padding): the channels-last input is then the GEMM's `A` as it is.
    fn pointwise(&self) -> bool {
        self.kh == 1
            && self.kw == 1
            && self.sh == 1
            && self.sw == 1
            && self.pad_top == 0
            && self.pad_left == 0
            && (self.oh, self.ow) == (self.h, self.w)
    }

    /// The patches of `n` channels-last images (`[n, h, w, cin]`) as rows of `out`
    /// (`[n·oh·ow, kh·kw·cin]`, `(ky, kx, c)` within a row), zeros where the patch leaves the
    /// image.
    fn im2col(&self, hwc: &[f32], n: usize, out: &mut [f32]) {
        let (row, c) = (self.patch(), self.cin);
        let image = self.h * self.w * c;
        for (i, dst) in out
            .chunks_exact_mut(row)
            .take(n * self.oh * self.ow)
            .enumerate()
        {
            let g = i / (self.oh * self.ow);
            let (oy, ox) = ((i / self.ow) % self.oh, i % self.ow);
            let img = &hwc[g * image..][..image];
            for ky in 0..self.kh {
                let y = (oy * self.sh + ky)
                    .checked_sub(self.pad_top)
                    .filter(|&y| y < self.h);
                for kx in 0..self.kw {
                    let x = (ox * self.sw + kx)
                        .checked_sub(self.pad_left)
                        .filter(|&x| x < self.w);
                    let d = &mut dst[(ky * self.kw + kx) * c..][..c];
                    match (y, x) {
                        (Some(y), Some(x)) => d.copy_from_slice(&img[(y * self.w + x) * c..][..c]),
                        _ => d.fill(0.0),
                    }
                }
            }
        }
    }
}

/// ONNX `Conv` (2-D, channels-first, one group, no dilation) with constant weights and bias
/// (PyTorch's export has already folded an eval-mode BatchNorm into them), `act` fused, on
/// the packed GEMM: the images are read channels-last (one transposed copy), every output
/// pixel's patch is one row of `A` (im2col; none for a 1x1 convolution), and the product,
/// pixels by output channels, is transposed back to channels-first. tract runs the same
/// convolution as its own im2col and product between layout changes, which for the small
/// convolutions of a CNN branch costs several times the arithmetic.
#[derive(Debug, Clone)]
pub struct NativeConv {
    /// The weights, `(ky, kx, c)` by output channel, and the bias, packed for the GEMM.
    pub w: Arc<PackedB>,
    /// Input and output sizes, kernel, strides, padding.
    pub geo: ConvGeometry,
    /// Activation fused into the epilogue.
    pub act: Act,
}

impl NativeConv {
    /// Packs ONNX `OIHW` weights `[cout, cin, kh, kw]` and `cout` biases for `geo`.
    pub fn new(weights: &[f32], bias: &[f32], geo: ConvGeometry) -> TractResult<Self> {
        let k = geo.patch();
        let cout = bias.len();
        ensure!(
            cout > 0 && weights.len() == cout * k,
            "CaiConv: {} weights for {cout} outputs of {k} values",
            weights.len()
        );
        let mut w = vec![0.0f32; cout * k];
        for (o, dst) in w.chunks_exact_mut(k).enumerate() {
            for c in 0..geo.cin {
                for ky in 0..geo.kh {
                    for kx in 0..geo.kw {
                        dst[(ky * geo.kw + kx) * geo.cin + c] =
                            weights[((o * geo.cin + c) * geo.kh + ky) * geo.kw + kx];
                    }
                }
            }
        }
        Ok(Self {
            w: Arc::new(PackedB::pack_nk(&w, cout, k, k, Some(bias))),
            geo,
            act: Act::None,
        })
    }
}

impl PartialEq for NativeConv {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.w, &other.w) && self.geo == other.geo && self.act == other.act
    }
}

impl Eq for NativeConv {}

impl Op for NativeConv {
    fn name(&self) -> StaticName {
        "CaiConv".into()
    }

    fn info(&self) -> TractResult<Vec<String>> {
        let g = &self.geo;
        Ok(vec![format!(
            "{}x{}x{} -> {}x{}x{}, kernel {}x{} stride {}x{} act={:?}",
            g.cin,
            g.h,
            g.w,
            self.w.n(),
            g.oh,
            g.ow,
            g.kh,
            g.kw,
            g.sh,
            g.sw,
            self.act
        )])
    }

    op_as_typed_op!();
}

/// Per-thread buffers of [`NativeConv`]: the channels-last input, the patches, the product.
#[derive(Default)]
struct ConvScratch {
    hwc: Vec<f32>,
    col: Vec<f32>,
    out: Vec<f32>,
}

thread_local! {
    static CONV_SCRATCH: RefCell<ConvScratch> = RefCell::default();
}

impl EvalOp for NativeConv {
    op_out_of_plan!();

    fn eval(&self, _ctx: &EvalContext, inputs: TVec<TValue>) -> TractResult<TVec<TValue>> {
        let g = self.geo;
        let x = &inputs[0];
        let shape = x.shape();
        ensure!(
            shape.len() == 4 && shape[1..] == [g.cin, g.h, g.w],
            "CaiConv: input {shape:?} is not [n, {}, {}, {}]",
            g.cin,
            g.h,
            g.w
        );
        let n = shape[0];
        let (cout, k, pixels) = (self.w.n(), g.patch(), g.h * g.w);
        let (opix, rows) = (g.oh * g.ow, n * g.oh * g.ow);
        let mut out = Tensor::zero::<f32>(&[n, cout, g.oh, g.ow])?;
        let xs = f32s(x)?;
        let o = f32s_mut(&mut out)?;
        CONV_SCRATCH.with_borrow_mut(|s| {
            let hwc = crate::astromae::cnn::buf(&mut s.hwc, n * pixels * g.cin);
            for (src, dst) in xs
                .chunks_exact(g.cin * pixels)
                .zip(hwc.chunks_exact_mut(pixels * g.cin))
            {
                for (c, plane) in src.chunks_exact(pixels).enumerate() {
                    for (p, &v) in plane.iter().enumerate() {
                        dst[p * g.cin + c] = v;
                    }
                }
            }
            let a: &[f32] = if g.pointwise() {
                hwc
            } else {
                let col = crate::astromae::cnn::buf(&mut s.col, rows * k);
                g.im2col(hwc, n, col);
                col
            };
            let prod = crate::astromae::cnn::buf(&mut s.out, rows * cout);
            let epi = Epilogue {
                act: self.act,
                accumulate: false,
            };
            kernels::ops().gemm(rows, a, k, &self.w, prod, cout, epi);
            for (src, dst) in prod
                .chunks_exact(opix * cout)
                .zip(o.chunks_exact_mut(cout * opix))
            {
                for (p, px) in src.chunks_exact(cout).enumerate() {
                    for (c, &v) in px.iter().enumerate() {
                        dst[c * opix + p] = v;
                    }
                }
            }
        });
        Ok(tvec![out.into_tvalue()])
    }
}

impl TypedOp for NativeConv {
    as_op!();

    fn output_facts(&self, inputs: &[&TypedFact]) -> TractResult<TVec<TypedFact>> {
        let x = inputs[0];
        let g = &self.geo;
        ensure!(
            x.datum_type == f32::datum_type()
                && x.rank() == 4
                && x.shape[1..] == [g.cin.to_dim(), g.h.to_dim(), g.w.to_dim()],
            "CaiConv: input {:?} is not f32 [n, {}, {}, {}]",
            x.shape,
            g.cin,
            g.h,
            g.w
        );
        Ok(tvec!(f32::fact([
            x.shape[0].clone(),
            self.w.n().to_dim(),
            g.oh.to_dim(),
            g.ow.to_dim()
        ])))
    }
}
