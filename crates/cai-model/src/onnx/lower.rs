//! Lowering of tract's typed graph onto CAI's kernels: the model passes that put the
//! operators of [`super::native`] in place of the subgraphs they compute, the way ONNX
//! Runtime's graph fusions do. Hand-written because this is where the ONNX path's speed
//! comes from; everything not matched stays tract's.
//!
//! [`lower`] runs on the typed graph before tract's declutter, where the ONNX export's
//! layout is intact (tract's declutter would otherwise move the residual stream to
//! channels-first and fold transposes into the products):
//! * a product with a constant 2-D weight over the last axis (`MatMul`, `Gemm`) becomes a
//!   [`NativeLinear`] on weights packed once;
//! * `q·kᵀ`, an optional scalar scale, a softmax over the last axis and the product with `v`
//!   become one [`NativeAttention`];
//! * where q, k and v are cut from one `qkv` product (reshape to heads, transpose, gather)
//!   and the heads merged again after it, the whole of it becomes one
//!   [`NativeHeadsAttention`] reading the product in place;
//! * a 2-D convolution with constant weights becomes a [`NativeConv`] (im2col + the packed
//!   GEMM).
//!
//! [`fuse`] runs after the declutter: a [`NativeLinear`] absorbs the constant bias `Add`
//! that follows it, then an exact GELU or a ReLU (a [`NativeConv`] a ReLU too), then the
//! residual `Add` (its epilogue accumulates into the other operand). `LayerNormalization` needs no pass: it is parsed straight into
//! [`super::native::NativeLayerNorm`].

use tract_onnx::prelude::*;
use tract_onnx::tract_core::internal::DimLike;
use tract_onnx::tract_core::ops::array::Gather;
use tract_onnx::tract_core::ops::binary::{BinMiniOp, TypedBinOp};
use tract_onnx::tract_core::ops::change_axes::AxisOp;
use tract_onnx::tract_core::ops::cnn::{Conv, KernelFormat};
use tract_onnx::tract_core::ops::einsum::EinSum;
use tract_onnx::tract_core::ops::element_wise::ElementWiseOp;
use tract_onnx::tract_core::ops::math::{Add, Div, Max, Mul};
use tract_onnx::tract_core::ops::nn::DataFormat;
use tract_onnx::tract_core::ops::nn::{GeluExact, Softmax, SoftmaxKind};

use super::native::{
    ConvGeometry, NativeAttention, NativeConv, NativeHeadsAttention, NativeLinear,
};
use crate::kernels::{Act, PackedB};

/// What the passes changed, for the log and the tests.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Lowered {
    /// Products with a constant weight now on the packed GEMM.
    pub linear: usize,
    /// Attention blocks now on the fused kernel.
    pub attention: usize,
    /// Of those, the ones reading q, k and v in place from their `qkv` product.
    pub heads_in_place: usize,
    /// Bias additions fused into a product's epilogue.
    pub bias: usize,
    /// GELUs fused into a product's epilogue.
    pub gelu: usize,
    /// Residual additions fused into a product's epilogue.
    pub residual: usize,
    /// 2-D convolutions now on im2col + the packed GEMM.
    pub conv: usize,
    /// ReLUs fused into a convolution's or a product's epilogue.
    pub relu: usize,
}

/// An `EinSum` of two f32 inputs, as its axis strings: `(a, b, out)`, e.g.
/// `("amk", "kn", "amn")`.
fn einsum_strings(model: &TypedModel, node: &TypedNode) -> Option<(String, String, String)> {
    let op = node.op_as::<EinSum>()?;
    if op.q_params.is_some() || op.operating_dt != f32::datum_type() || node.inputs.len() != 2 {
        return None;
    }
    let facts = model.node_input_facts(node.id).ok()?;
    if facts.iter().any(|f| f.datum_type != f32::datum_type()) {
        return None;
    }
    let (ins, outs) = op.axes.to_strs();
    if ins.len() != 2 || outs.len() != 1 {
        return None;
    }
    Some((ins[0].clone(), ins[1].clone(), outs[0].clone()))
}

/// `(prefix, second to last, last)` of an axis string, the prefix's letters all distinct
/// from the last two.
fn split_last_two(s: &str) -> Option<(&str, char, char)> {
    let chars: Vec<char> = s.chars().collect();
    let [.., x, y] = chars[..] else {
        return None;
    };
    let prefix = &s[..s.len() - x.len_utf8() - y.len_utf8()];
    (x != y && !prefix.contains(x) && !prefix.contains(y)).then_some((prefix, x, y))
}

/// A product `x[.., k] · W` with `W` a constant `[k, n]` (or `[n, k]`) summed over `x`'s
/// last axis: the weight packed for the GEMM.
fn match_linear(model: &TypedModel, node: &TypedNode) -> Option<PackedB> {
    let (a, b, out) = einsum_strings(model, node)?;
    let w = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    if w.rank() != 2 {
        return None;
    }
    let (prefix, k) = {
        let mut chars = a.chars();
        let k = chars.next_back()?;
        (chars.as_str(), k)
    };
    let bc: Vec<char> = b.chars().collect();
    let (n, kn) = match bc[..] {
        [x, y] if x == k && y != k => (y, true),
        [x, y] if y == k && x != k => (x, false),
        _ => return None,
    };
    if prefix.contains(k) || prefix.contains(n) || out != format!("{prefix}{n}") {
        return None;
    }
    let (rows, cols) = (w.shape()[0], w.shape()[1]);
    let data = super::native::f32s(&w).ok()?;
    Some(if kn {
        PackedB::pack_kn(data, rows, cols, cols, None)
    } else {
        PackedB::pack_nk(data, rows, cols, cols, None)
    })
}

/// The node's only successor, when its single output feeds exactly one input.
fn sole_successor(model: &TypedModel, node: &TypedNode) -> Option<usize> {
    if node.outputs.len() != 1 || model.output_outlets().ok()?.contains(&node.id.into()) {
        return None;
    }
    match node.outputs[0].successors[..] {
        [inlet] => Some(inlet.node),
        _ => None,
    }
}

/// A scalar constant: a tensor of one value (any rank), as f32.
fn scalar_const(model: &TypedModel, outlet: OutletId) -> Option<f32> {
    let k = model.outlet_fact(outlet).ok()?.konst.clone()?;
    if k.len() != 1 {
        return None;
    }
    k.cast_to_scalar::<f32>().ok()
}

/// `q·kᵀ → [× or ÷ scalar] → softmax(last axis) → ·v` ending at `node` (the product with
/// `v`): the outlets of `q`, `k` (rows, not transposed), `v` and the scale.
fn match_attention(model: &TypedModel, node: &TypedNode) -> Option<([OutletId; 3], f32)> {
    let (a, b, out) = einsum_strings(model, node)?;
    // p·v: "..mt,..td->..md"
    let (pa, m, t) = split_last_two(&a)?;
    let (pb, t2, d) = split_last_two(&b)?;
    if pa != pb || t2 != t || out != format!("{pa}{m}{d}") || m == d {
        return None;
    }
    let v = node.inputs[1];
    let softmax = model.node(node.inputs[0].node);
    let sm = softmax.op_as::<Softmax>()?;
    let rank = model.outlet_fact(node.inputs[0]).ok()?.rank();
    if sm.kind != SoftmaxKind::Softmax
        || sm.quant_output_dt.is_some()
        || sm.axes[..] != [rank - 1]
        || sole_successor(model, softmax) != Some(node.id)
    {
        return None;
    }
    // An optional scale between the scores and the softmax.
    let mut scores = model.node(softmax.inputs[0].node);
    let mut feeds = softmax.id;
    let mut scale = 1.0f32;
    if let Some(bin) = scores.op_as::<TypedBinOp>() {
        let (mul, div) = (bin.0.is::<Mul>(), bin.0.is::<Div>());
        if !(mul || div) || sole_successor(model, scores) != Some(softmax.id) {
            return None;
        }
        let (other, c) = match (
            scalar_const(model, scores.inputs[0]),
            scalar_const(model, scores.inputs[1]),
        ) {
            (None, Some(c)) => (scores.inputs[0], c),
            (Some(c), None) if mul => (scores.inputs[1], c),
            _ => return None,
        };
        scale = if div { 1.0 / c } else { c };
        feeds = scores.id;
        scores = model.node(other.node);
    }
    if !(scale.is_finite() && scale > 0.0) || sole_successor(model, scores) != Some(feeds) {
        return None;
    }
    // q·kᵀ: "..mh,..hn->..mn" (k transposed) or "..mh,..nh->..mn".
    let (qa, qb, qo) = einsum_strings(model, scores)?;
    let (p1, m1, h1) = split_last_two(&qa)?;
    let (p2, x, y) = split_last_two(&qb)?;
    let (p3, om, on) = split_last_two(&qo)?;
    if p1 != p2 || p1 != p3 || om != m1 {
        return None;
    }
    let q = scores.inputs[0];
    let k = if x == h1 && y == on {
        // The keys come transposed: take them from before the transposition.
        let kt = model.node(scores.inputs[1].node);
        let r = model.outlet_fact(scores.inputs[1]).ok()?.rank();
        match kt.op_as::<AxisOp>()? {
            AxisOp::Move(from, to)
                if (*from, *to) == (r - 2, r - 1) || (*from, *to) == (r - 1, r - 2) =>
            {
                kt.inputs[0]
            }
            _ => return None,
        }
    } else if x == on && y == h1 {
        scores.inputs[1]
    } else {
        return None;
    };
    let shape = |o: OutletId| model.outlet_fact(o).ok().map(|f| f.shape.clone());
    let qs = shape(q)?;
    if shape(k)? != qs || shape(v)? != qs {
        return None;
    }
    Some(([q, k, v], scale))
}

/// The input of `node` when it is an [`AxisOp`], with the op.
fn axis_op(model: &TypedModel, outlet: OutletId) -> Option<(&AxisOp, &TypedNode)> {
    let node = model.node(outlet.node);
    Some((node.op_as::<AxisOp>()?, node))
}

/// The heads of a [`NativeAttention`] cut from one `qkv` product and merged again after it,
/// as PyTorch exports `qkv.reshape(.., t, 3, heads, hd).permute(2, .., 3, 1, 4)`, `q, k, v
/// = qkv[0], qkv[1], qkv[2]`, then `(attn @ v).transpose(1, 2).reshape(.., t, heads·hd)`;
/// matched at that last reshape: `(the qkv product, heads, the scale's bits)`.
fn match_heads_in_place(model: &TypedModel, node: &TypedNode) -> Option<(OutletId, usize, u32)> {
    // The heads merged: [.., t, heads, hd] -> [.., t, heads·hd].
    let AxisOp::Reshape(at, from, to) = node.op_as::<AxisOp>()? else {
        return None;
    };
    let rank = model.outlet_fact(node.inputs[0]).ok()?.rank();
    if rank < 4 || *at != rank - 2 || from.len() != 2 || to.len() != 1 {
        return None;
    }
    // [.., heads, t, hd] -> [.., t, heads, hd].
    let (mv, swap) = axis_op(model, node.inputs[0])?;
    if !matches!(mv, AxisOp::Move(a, b) if (*a, *b) == (rank - 3, rank - 2) || (*a, *b) == (rank - 2, rank - 3))
        || sole_successor(model, swap) != Some(node.id)
    {
        return None;
    }
    let attention = model.node(swap.inputs[0].node);
    let att = attention.op_as::<NativeAttention>()?;
    if sole_successor(model, attention) != Some(swap.id) {
        return None;
    }
    // q, k and v: indices 0, 1 and 2 of axis 0 of one tensor.
    let mut stacked = None;
    for (i, input) in attention.inputs.iter().enumerate() {
        let g = model.node(input.node);
        let gather = g.op_as::<Gather>()?;
        let index = model.outlet_fact(g.inputs[1]).ok()?.konst.clone()?;
        let index = index.cast_to_scalar::<i64>().ok()?;
        if gather.axis != 0 || index != i as i64 || model.outlet_fact(g.inputs[1]).ok()?.rank() != 0
        {
            return None;
        }
        if *stacked.get_or_insert(g.inputs[0]) != g.inputs[0] {
            return None;
        }
    }
    // Back through the transpositions to the split into heads, composing them.
    let mut moves = Vec::new();
    let mut at_outlet = stacked?;
    let (split, x) = loop {
        let (op, n) = axis_op(model, at_outlet)?;
        match op {
            AxisOp::Move(a, b) => moves.push((*a, *b)),
            AxisOp::Reshape(..) => break (op, n.inputs[0]),
            _ => return None,
        }
        at_outlet = n.inputs[0];
    };
    // [.., t, 3·heads·hd] -> [.., t, 3, heads, hd].
    let AxisOp::Reshape(at, from, to) = split else {
        return None;
    };
    let xrank = model.outlet_fact(x).ok()?.rank();
    if xrank + 2 != rank + 1 || *at != xrank - 1 || from.len() != 1 || to.len() != 3 {
        return None;
    }
    let dims: Vec<usize> = to
        .iter()
        .map(|d| d.to_i64().ok()?.try_into().ok())
        .collect::<Option<_>>()?;
    let heads = dims[1];
    if dims[0] != 3 || heads == 0 || dims[2] == 0 {
        return None;
    }
    // The moves must take [b.., t, 3, heads, hd] to [3, b.., heads, t, hd].
    let p = xrank - 2; // leading (batch) axes
    let mut axes: Vec<usize> = (0..xrank + 2).collect();
    for (a, b) in moves.iter().rev() {
        if *a >= axes.len() || *b >= axes.len() {
            return None;
        }
        let ax = axes.remove(*a);
        axes.insert(*b, ax);
    }
    let want: Vec<usize> = std::iter::once(p + 1)
        .chain(0..p)
        .chain([p + 2, p, p + 3])
        .collect();
    (axes == want).then_some((x, heads, att.scale_bits))
}

/// A 2-D convolution of an f32 channels-first input of known channels and size, with
/// constant `OIHW` weights and bias, one group and no dilation: its operator on the GEMM.
fn match_conv(model: &TypedModel, node: &TypedNode) -> Option<NativeConv> {
    let op = node.op_as::<Conv>()?;
    let spec = &op.pool_spec;
    if op.q_params.is_some()
        || op.group != 1
        || op.kernel_fmt != KernelFormat::OIHW
        || spec.data_format != DataFormat::NCHW
        || spec.rank() != 2
        || spec.dilations().iter().any(|&d| d != 1)
        || node.inputs.len() != 3
    {
        return None;
    }
    let x = model.outlet_fact(node.inputs[0]).ok()?;
    if x.datum_type != f32::datum_type() || x.rank() != 4 {
        return None;
    }
    let dims: Vec<usize> = x.shape[1..]
        .iter()
        .map(|d| d.to_usize().ok())
        .collect::<Option<_>>()?;
    let [cin, h, w] = dims[..] else {
        return None;
    };
    let kernel = model.outlet_fact(node.inputs[1]).ok()?.konst.clone()?;
    let bias = model.outlet_fact(node.inputs[2]).ok()?.konst.clone()?;
    let [kh, kw] = spec.kernel_shape[..] else {
        return None;
    };
    let cout = spec.output_channels;
    if kernel.datum_type() != f32::datum_type()
        || kernel.shape() != [cout, cin, kh, kw]
        || bias.datum_type() != f32::datum_type()
        || !(bias.len() == cout || bias.len() == 1)
    {
        return None;
    }
    let pads = spec.computed_padding(&[h, w]);
    let geo = ConvGeometry {
        cin,
        h,
        w,
        kh,
        kw,
        sh: spec.stride(0),
        sw: spec.stride(1),
        pad_top: pads[0].pad_before,
        pad_left: pads[1].pad_before,
        oh: pads[0].convoluted,
        ow: pads[1].convoluted,
    };
    let bias = super::native::f32s(&bias).ok()?;
    let bias = if bias.len() == cout {
        bias.to_vec()
    } else {
        vec![bias[0]; cout]
    };
    NativeConv::new(super::native::f32s(&kernel).ok()?, &bias, geo).ok()
}

/// Applies the first patch `find` makes, until it makes none; returns how many applied.
fn rewrite(
    model: &mut TypedModel,
    mut find: impl FnMut(&TypedModel, &TypedNode) -> TractResult<Option<TypedModelPatch>>,
) -> TractResult<usize> {
    let mut count = 0;
    loop {
        let mut patch = None;
        for id in model.eval_order()? {
            if let Some(p) = find(model, model.node(id))? {
                patch = Some(p);
                break;
            }
        }
        match patch {
            Some(p) => {
                p.apply(model)?;
                model.compact()?;
                count += 1;
            }
            None => return Ok(count),
        }
    }
}

/// The lowering before tract's declutter: constant-weight products and attention blocks
/// onto CAI's kernels.
pub fn lower(model: &mut TypedModel) -> TractResult<Lowered> {
    model.prop_consts()?;
    let attention = rewrite(model, |model, node| {
        let Some((inputs, scale)) = match_attention(model, node) else {
            return Ok(None);
        };
        let op = NativeAttention {
            scale_bits: scale.to_bits(),
        };
        let name = format!("{}.cai_attention", node.name);
        Ok(Some(replace_by(model, &name, op, &inputs, node.id)?))
    })?;
    let heads_in_place = rewrite(model, |model, node| {
        let Some((x, heads, scale_bits)) = match_heads_in_place(model, node) else {
            return Ok(None);
        };
        let op = NativeHeadsAttention { heads, scale_bits };
        let name = format!("{}.cai_heads_attention", node.name);
        Ok(Some(replace_by(model, &name, op, &[x], node.id)?))
    })?;
    let conv = rewrite(model, |model, node| {
        let Some(op) = match_conv(model, node) else {
            return Ok(None);
        };
        let name = format!("{}.cai_conv", node.name);
        Ok(Some(replace_by(
            model,
            &name,
            op,
            &node.inputs[..1],
            node.id,
        )?))
    })?;
    let linear = rewrite(model, |model, node| {
        let Some(w) = match_linear(model, node) else {
            return Ok(None);
        };
        let op = NativeLinear {
            w: Arc::new(w),
            act: Act::None,
            residual: false,
        };
        let name = format!("{}.cai_linear", node.name);
        Ok(Some(replace_by(
            model,
            &name,
            op,
            &node.inputs[..1],
            node.id,
        )?))
    })?;
    Ok(Lowered {
        linear,
        attention,
        heads_in_place,
        conv,
        ..Lowered::default()
    })
}

/// A [`NativeLinear`] whose output feeds only `succ`, which is an f32 `Add` of it and one
/// other operand: `(linear op, other operand)`.
fn linear_then_add<'m>(
    model: &'m TypedModel,
    node: &'m TypedNode,
) -> Option<(&'m NativeLinear, &'m TypedNode, OutletId)> {
    let lin = node.op_as::<NativeLinear>()?;
    let (succ, other) = binary_successor::<Add>(model, node)?;
    Some((lin, succ, other))
}

/// The node's sole successor when it is the binary operator `B` (`Add`, `Max`) of the node's
/// output and one other operand: `(successor, other operand)`.
fn binary_successor<'m, B: BinMiniOp>(
    model: &'m TypedModel,
    node: &TypedNode,
) -> Option<(&'m TypedNode, OutletId)> {
    let succ = model.node(sole_successor(model, node)?);
    let bin = succ.op_as::<TypedBinOp>()?;
    if !bin.0.is::<B>() || succ.inputs.len() != 2 {
        return None;
    }
    let me: OutletId = node.id.into();
    let other = match (succ.inputs[0] == me, succ.inputs[1] == me) {
        (true, false) => succ.inputs[1],
        (false, true) => succ.inputs[0],
        _ => return None,
    };
    Some((succ, other))
}

/// The node's sole successor when it is a ReLU as ONNX's `Relu` arrives in tract: `max(x, 0)`
/// with a constant of zeros broadcast over `x`.
fn relu_successor<'m>(model: &'m TypedModel, node: &TypedNode) -> Option<&'m TypedNode> {
    let (succ, other) = binary_successor::<Max>(model, node)?;
    let zeros = model.outlet_fact(other).ok()?.konst.clone()?;
    let rank = model.outlet_fact(node.id.into()).ok()?.rank();
    let broadcast = zeros.rank() <= rank && zeros.shape().iter().all(|&d| d == 1);
    let all_zero = super::native::f32s(&zeros)
        .ok()
        .is_some_and(|v| v.iter().all(|&z| z == 0.0));
    (broadcast && all_zero).then_some(succ)
}

/// A patch replacing `last`'s output by `op` (one of ours) on `inputs`; what fed only `last`
/// is left unused and dropped when the model is compacted.
fn replace_by(
    model: &TypedModel,
    name: &str,
    op: impl Into<Box<dyn TypedOp>>,
    inputs: &[OutletId],
    last: usize,
) -> TractResult<TypedModelPatch> {
    let mut patch = TypedModelPatch::default();
    let taps = patch.taps(model, inputs)?;
    let out = patch.wire_node(name, op, &taps)?;
    patch.shunt_outside(model, last.into(), out[0])?;
    Ok(patch)
}

/// The fusions after tract's declutter: bias, then GELU or ReLU, then residual into the
/// [`NativeLinear`] epilogues; ReLU into the [`NativeConv`] epilogues.
pub fn fuse(model: &mut TypedModel, lowered: &mut Lowered) -> TractResult<()> {
    lowered.bias += rewrite(model, |model, node| {
        let Some((lin, add, other)) = linear_then_add(model, node) else {
            return Ok(None);
        };
        if lin.residual || lin.act != Act::None {
            return Ok(None);
        }
        let Some(bias) = model.outlet_fact(other)?.konst.clone() else {
            return Ok(None);
        };
        let n = lin.w.n();
        let shape = bias.shape();
        if bias.datum_type() != f32::datum_type()
            || shape.last() != Some(&n)
            || shape.iter().rev().skip(1).any(|&d| d != 1)
            || shape.len() > model.outlet_fact(node.id.into())?.rank()
        {
            return Ok(None);
        }
        let mut w = (*lin.w).clone();
        w.set_bias(super::native::f32s(&bias)?);
        let op = NativeLinear {
            w: Arc::new(w),
            act: Act::None,
            residual: false,
        };
        Ok(Some(replace_by(
            model,
            &node.name,
            op,
            &node.inputs,
            add.id,
        )?))
    })?;
    lowered.gelu += rewrite(model, |model, node| {
        let Some(lin) = node.op_as::<NativeLinear>() else {
            return Ok(None);
        };
        if lin.residual || lin.act != Act::None {
            return Ok(None);
        }
        let Some(succ) = sole_successor(model, node).map(|s| model.node(s)) else {
            return Ok(None);
        };
        let is_gelu = succ
            .op_as::<ElementWiseOp>()
            .is_some_and(|e| e.0.is::<GeluExact>() && e.1.is_none());
        if !is_gelu {
            return Ok(None);
        }
        let op = NativeLinear {
            w: lin.w.clone(),
            act: Act::Gelu,
            residual: false,
        };
        Ok(Some(replace_by(
            model,
            &node.name,
            op,
            &node.inputs,
            succ.id,
        )?))
    })?;
    lowered.relu += rewrite(model, |model, node| {
        let op: Box<dyn TypedOp> = if let Some(lin) = node.op_as::<NativeLinear>() {
            if lin.residual || lin.act != Act::None {
                return Ok(None);
            }
            Box::new(NativeLinear {
                act: Act::Relu,
                ..lin.clone()
            })
        } else if let Some(conv) = node.op_as::<NativeConv>() {
            if conv.act != Act::None {
                return Ok(None);
            }
            Box::new(NativeConv {
                act: Act::Relu,
                ..conv.clone()
            })
        } else {
            return Ok(None);
        };
        let Some(relu) = relu_successor(model, node) else {
            return Ok(None);
        };
        Ok(Some(replace_by(
            model,
            &node.name,
            op,
            &node.inputs,
            relu.id,
        )?))
    })?;
    lowered.residual += rewrite(model, |model, node| {
        let Some((lin, add, other)) = linear_then_add(model, node) else {
            return Ok(None);
        };
        if lin.residual {
            return Ok(None);
        }
        let mine = model.outlet_fact(node.id.into())?;
        let theirs = model.outlet_fact(other)?;
        if theirs.konst.is_some()
            || theirs.datum_type != f32::datum_type()
            || theirs.shape != mine.shape
        {
            return Ok(None);
        }
        let op = NativeLinear {
            w: lin.w.clone(),
            act: lin.act,
            residual: true,
        };
        let inputs = [node.inputs[0], other];
        Ok(Some(replace_by(model, &node.name, op, &inputs, add.id)?))
    })?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use tract_onnx::pb;

    use super::super::{Lowering, OnnxModel};
    use super::Lowered;
    use crate::tensors::{NamedBatch, TensorModel, TensorSpec};

    const T: usize = 6;
    const D: usize = 8;
    const F: usize = 16;

    fn node(
        op: &str,
        inputs: &[&str],
        output: &str,
        attribute: Vec<pb::AttributeProto>,
    ) -> pb::NodeProto {
        pb::NodeProto {
            op_type: op.into(),
            name: output.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    fn int(name: &str, i: i64) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            i,
            r#type: 2,
            ..Default::default()
        }
    }

    fn ints(name: &str, ints: &[i64]) -> pb::AttributeProto {
        pb::AttributeProto {
            name: name.into(),
            ints: ints.to_vec(),
            r#type: 7,
            ..Default::default()
        }
    }

    /// A constant of `dims` with seeded values in (-scale, scale) (or all `fill`).
    fn tensor(name: &str, dims: &[usize], seed: &mut u64, scale: f32) -> pb::TensorProto {
        let len: usize = dims.iter().product();
        let float_data = (0..len)
            .map(|_| {
                *seed = seed
                    .wrapping_mul(6_364_136_223_846_793_005)
                    .wrapping_add(1_442_695_040_888_963_407);
                ((*seed >> 40) as f32 / (1u64 << 24) as f32 * 2.0 - 1.0) * scale
            })
            .collect();
        pb::TensorProto {
            name: name.into(),
            dims: dims.iter().map(|&d| d as i64).collect(),
            data_type: 1,
            float_data,
            ..Default::default()
        }
    }

    fn scalar(name: &str, v: f32) -> pb::TensorProto {
        pb::TensorProto {
            name: name.into(),
            dims: vec![],
            data_type: 1,
            float_data: vec![v],
            ..Default::default()
        }
    }

    fn value(name: &str) -> pb::ValueInfoProto {
        value_of(name, &[T, D])
    }

    /// An f32 value of shape `[N, dims..]`, `N` symbolic.
    fn value_of(name: &str, dims: &[usize]) -> pb::ValueInfoProto {
        use pb::tensor_shape_proto::{dimension::Value, Dimension};
        let dims = std::iter::once(Value::DimParam("N".into()))
            .chain(dims.iter().map(|&d| Value::DimValue(d as i64)));
        pb::ValueInfoProto {
            name: name.into(),
            r#type: Some(pb::TypeProto {
                value: Some(pb::type_proto::Value::TensorType(pb::type_proto::Tensor {
                    elem_type: 1,
                    shape: Some(pb::TensorShapeProto {
                        dim: dims
                            .map(|v| Dimension {
                                value: Some(v),
                                ..Default::default()
                            })
                            .collect(),
                    }),
                })),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// One pre-norm transformer block as PyTorch exports it at opset 17 (one head, `T`
    /// tokens of `D`): LayerNormalization, q/k/v products, `q·kᵀ × scale`, softmax, `·v`,
    /// the projection and residual, then LayerNormalization, fc1, exact GELU as
    /// `x/√2 → Erf → +1 → ×x → ×½`, fc2 and the residual.
    fn block() -> pb::ModelProto {
        let mut seed = 7u64;
        let mut init = vec![
            tensor("g1", &[D], &mut seed, 1.0),
            tensor("b1", &[D], &mut seed, 0.5),
            tensor("wq", &[D, D], &mut seed, 0.5),
            tensor("bq", &[D], &mut seed, 0.2),
            tensor("wk", &[D, D], &mut seed, 0.5),
            tensor("wv", &[D, D], &mut seed, 0.5),
            tensor("wp", &[D, D], &mut seed, 0.5),
            tensor("bp", &[D], &mut seed, 0.2),
            tensor("g2", &[D], &mut seed, 1.0),
            tensor("b2", &[D], &mut seed, 0.5),
            tensor("w1", &[D, F], &mut seed, 0.5),
            tensor("c1", &[F], &mut seed, 0.2),
            tensor("w2", &[F, D], &mut seed, 0.5),
            tensor("c2", &[D], &mut seed, 0.2),
        ];
        init.push(scalar("scale", 0.35));
        init.push(scalar("sqrt2", std::f32::consts::SQRT_2));
        init.push(scalar("one", 1.0));
        init.push(scalar("half", 0.5));
        let ln = |x: &str, g: &str, b: &str, out: &str| {
            let eps = pb::AttributeProto {
                name: "epsilon".into(),
                f: 1e-5,
                r#type: 1,
                ..Default::default()
            };
            node(
                "LayerNormalization",
                &[x, g, b],
                out,
                vec![int("axis", -1), eps],
            )
        };
        let nodes = vec![
            ln("x", "g1", "b1", "n1"),
            node("MatMul", &["n1", "wq"], "q0", vec![]),
            node("Add", &["q0", "bq"], "q", vec![]),
            node("MatMul", &["n1", "wk"], "k", vec![]),
            node("MatMul", &["n1", "wv"], "v", vec![]),
            node("Transpose", &["k"], "kt", vec![ints("perm", &[0, 2, 1])]),
            node("MatMul", &["q", "kt"], "s", vec![]),
            node("Mul", &["s", "scale"], "s2", vec![]),
            node("Softmax", &["s2"], "p", vec![int("axis", -1)]),
            node("MatMul", &["p", "v"], "o", vec![]),
            node("MatMul", &["o", "wp"], "pr0", vec![]),
            node("Add", &["pr0", "bp"], "pr", vec![]),
            node("Add", &["x", "pr"], "x1", vec![]),
            ln("x1", "g2", "b2", "n2"),
            node("MatMul", &["n2", "w1"], "h0", vec![]),
            node("Add", &["h0", "c1"], "h", vec![]),
            node("Div", &["h", "sqrt2"], "hd", vec![]),
            node("Erf", &["hd"], "he", vec![]),
            node("Add", &["he", "one"], "h1", vec![]),
            node("Mul", &["h", "h1"], "hm", vec![]),
            node("Mul", &["hm", "half"], "g", vec![]),
            node("MatMul", &["g", "w2"], "f0", vec![]),
            node("Add", &["f0", "c2"], "f", vec![]),
            node("Add", &["x1", "f"], "y", vec![]),
        ];
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: init,
                input: vec![value("x")],
                output: vec![value("y")],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    /// Three convolutions as PyTorch exports them: 3x3 with padding and a ReLU, 2x3 with
    /// strides 2x1 and uneven padding, 1x1 and a ReLU; `[N, 3, 9, 7]` in, `[N, 6, 5, 6]` out.
    fn convs() -> pb::ModelProto {
        let mut seed = 11u64;
        let init = vec![
            tensor("w1", &[4, 3, 3, 3], &mut seed, 0.5),
            tensor("b1", &[4], &mut seed, 0.2),
            tensor("w2", &[5, 4, 2, 3], &mut seed, 0.5),
            tensor("b2", &[5], &mut seed, 0.2),
            tensor("w3", &[6, 5, 1, 1], &mut seed, 0.5),
            tensor("b3", &[6], &mut seed, 0.2),
        ];
        let nodes = vec![
            node(
                "Conv",
                &["x", "w1", "b1"],
                "c1",
                vec![ints("kernel_shape", &[3, 3]), ints("pads", &[1, 1, 1, 1])],
            ),
            node("Relu", &["c1"], "r1", vec![]),
            node(
                "Conv",
                &["r1", "w2", "b2"],
                "c2",
                vec![
                    ints("kernel_shape", &[2, 3]),
                    ints("strides", &[2, 1]),
                    ints("pads", &[0, 1, 1, 0]),
                ],
            ),
            node("Conv", &["c2", "w3", "b3"], "c3", vec![]),
            node("Relu", &["c3"], "y", vec![]),
        ];
        pb::ModelProto {
            ir_version: 8,
            opset_import: vec![pb::OperatorSetIdProto {
                domain: String::new(),
                version: 17,
            }],
            graph: Some(pb::GraphProto {
                node: nodes,
                initializer: init,
                input: vec![value_of("x", &[3, 9, 7])],
                output: vec![value_of("y", &[6, 5, 6])],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn convolutions_lower_onto_the_gemm_and_keep_their_values() {
        let proto = convs();
        let native =
            OnnxModel::from_proto("convs.onnx", &proto, Lowering::Native).expect("lowered");
        let tract = OnnxModel::from_proto("convs.onnx", &proto, Lowering::Tract).expect("tract");
        assert_eq!(
            (native.lowered().conv, native.lowered().relu),
            (3, 2),
            "{:?}",
            native.lowered()
        );
        for n in [1, 2, 9] {
            let x: Vec<f32> = (0..n * 3 * 9 * 7)
                .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let batch = NamedBatch {
                n,
                tensors: vec![(TensorSpec::f32("x", &[3, 9, 7]), &x[..])],
            };
            let out = |m: &OnnxModel| {
                let o = m.run(&batch).expect("the convolutions run");
                o.outputs.into_iter().next().expect("one output").values
            };
            let (a, b) = (out(&native), out(&tract));
            assert_eq!(a.len(), n * 6 * 5 * 6);
            assert_eq!(a.len(), b.len());
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 1e-5, "n={n}: lowered and tract differ by {worst}");
            assert!(a.iter().all(|&v| v >= 0.0), "the last ReLU is applied");
        }
    }

    fn run(model: &OnnxModel, x: &[f32], n: usize) -> Vec<f32> {
        let batch = NamedBatch {
            n,
            tensors: vec![(TensorSpec::f32("x", &[T, D]), x)],
        };
        let out = model.run(&batch).expect("the block runs");
        out.outputs.into_iter().next().expect("one output").values
    }

    #[test]
    fn a_transformer_block_lowers_onto_the_kernels_and_keeps_its_values() {
        let proto = block();
        let native =
            OnnxModel::from_proto("block.onnx", &proto, Lowering::Native).expect("lowered");
        let tract = OnnxModel::from_proto("block.onnx", &proto, Lowering::Tract).expect("tract");
        assert_eq!(
            native.lowered(),
            Lowered {
                linear: 6,
                attention: 1,
                heads_in_place: 0,
                bias: 4,
                gelu: 1,
                residual: 2,
                conv: 0,
                relu: 0,
            },
            "every product, the attention and the epilogues are on CAI's kernels"
        );
        assert_eq!(tract.lowered(), Lowered::default());
        for n in [1, 3, 8] {
            let x: Vec<f32> = (0..n * T * D)
                .map(|i| ((i * 7919) % 1000) as f32 / 250.0 - 2.0)
                .collect();
            let (a, b) = (run(&native, &x, n), run(&tract, &x, n));
            assert_eq!(a.len(), n * T * D);
            let worst = a
                .iter()
                .zip(&b)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(worst <= 2e-5, "n={n}: lowered and tract differ by {worst}");
            assert!(a.iter().all(|v| v.is_finite()));
        }
    }
}
