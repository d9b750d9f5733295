//! The convolutional side, `inception_model`: the image branch `vis_inception` (a
//! Sequential of a 1x1 convolution, Inception blocks and average pools, flattened into two
//! Linear layers) and the magnitude MLP `magnitude_block`.
//!
//! Layout: images are processed NHWC (channels innermost), so a 1x1 convolution is one GEMM
//! over pixels and a kxk convolution is im2col + GEMM. BatchNorm (eval) is folded into the
//! preceding convolution at load time. The first 1x1 convolution is applied after the first
//! 2x2 average pool (both are linear, so they commute), saving 3/4 of its work. The flatten
//! (NCHW order `c*S + y*W + x` in the original) is absorbed by permuting the columns of
//! `vis_inception.10.weight`.

use super::layers::{avg_pool2, im2col, max_pool3, Linear};
use crate::kernels::{Epilogue, Ops, PackedB};
use crate::weights::Vb;
use crate::Error;

/// BatchNorm2d eps (PyTorch default; not stored in the state_dict).
const BN_EPS: f64 = 1e-5;

/// Key of the shared first convolution as `ViT_Astro` registers it first.
pub(crate) const CONV_INIT: &str = "inception_model.conv2d_init";
/// The same module as index 0 of the Sequential.
pub(crate) const VIS0: &str = "inception_model.vis_inception.0";

/// `ConvBlock`: Conv2d (with bias) -> BatchNorm2d (eval) -> ReLU, BN folded into the conv.
#[derive(Debug, Clone)]
pub(crate) struct ConvBlock {
    k: usize,
    cin: usize,
    cout: usize,
    w: PackedB,
}

impl ConvBlock {
    /// Loads `conv.{weight,bias}` and `bn.{weight,bias,running_mean,running_var}`; the
    /// output width comes from the checkpoint, `cin` and `k` are required.
    fn load(vb: &Vb, cin: usize, k: usize) -> Result<Self, Error> {
        let conv = vb.pp("conv");
        let bn = vb.pp("bn");
        let cout = conv.dim("weight", 4, 0)?;
        let w = conv.get("weight", &[cout, cin, k, k])?;
        let b = conv.get("bias", &[cout])?;
        let gamma = bn.get("weight", &[cout])?;
        let beta = bn.get("bias", &[cout])?;
        let mean = bn.get("running_mean", &[cout])?;
        let var = bn.get("running_var", &[cout])?;
        let kk = k * k * cin;
        let mut wf = vec![0.0f32; cout * kk];
        let mut bf = vec![0.0f32; cout];
        for o in 0..cout {
            let s = gamma.data[o] as f64 / (var.data[o] as f64 + BN_EPS).sqrt();
            bf[o] = ((b.data[o] as f64 - mean.data[o] as f64) * s + beta.data[o] as f64) as f32;
            for c in 0..cin {
                for ky in 0..k {
                    for kx in 0..k {
                        let src = w.data[((o * cin + c) * k + ky) * k + kx] as f64;
                        wf[o * kk + (ky * k + kx) * cin + c] = (src * s) as f32;
                    }
                }
            }
        }
        Ok(Self {
            k,
            cin,
            cout,
            w: PackedB::pack_nk(&wf, cout, kk, kk, Some(&bf)),
        })
    }

    fn weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        f(&mut self.w)
    }

    /// `px` pixels (rows) of `x` (already im2col'ed for k > 1) into `out` at stride `ldo`.
    fn forward(&self, ops: &Ops, px: usize, x: &[f32], out: &mut [f32], ldo: usize) {
        ops.gemm(
            px,
            x,
            self.k * self.k * self.cin,
            &self.w,
            out,
            ldo,
            Epilogue::RELU,
        );
    }
}

/// An Inception block (`blocks.photoz.InceptionBlock`); the "custom" variant (index 8)
/// concatenates only branches 1, 2 and 4, and its branch3 weights are not loaded.
#[derive(Debug, Clone)]
pub(crate) struct Inception {
    branch1: ConvBlock,
    branch2: [ConvBlock; 2],
    branch3: Option<[ConvBlock; 2]>,
    branch4: ConvBlock,
    cin: usize,
    cout: usize,
}

/// Reusable buffers for one chunk of galaxies.
#[derive(Debug, Default)]
pub(crate) struct CnnScratch {
    t: Vec<f32>,
    col: Vec<f32>,
    mp: Vec<f32>,
    hmax: Vec<f32>,
    a: Vec<f32>,
    b: Vec<f32>,
}

/// `v[..n]`, growing `v` if needed (no allocation once warm).
pub(crate) fn buf(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl Inception {
    fn load(vb: &Vb, cin: usize, custom: bool) -> Result<Self, Error> {
        let branch1 = ConvBlock::load(&vb.pp("branch1"), cin, 1)?;
        let b2a = ConvBlock::load(&vb.pp("branch2").pp(0), cin, 1)?;
        let b2b = ConvBlock::load(&vb.pp("branch2").pp(1), b2a.cout, 3)?;
        let branch3 = if custom {
            None
        } else {
            let b3a = ConvBlock::load(&vb.pp("branch3").pp(0), cin, 1)?;
            let b3b = ConvBlock::load(&vb.pp("branch3").pp(1), b3a.cout, 5)?;
            Some([b3a, b3b])
        };
        let branch4 = ConvBlock::load(&vb.pp("branch4").pp(1), cin, 1)?;
        let cout =
            branch1.cout + b2b.cout + branch3.as_ref().map_or(0, |b| b[1].cout) + branch4.cout;
        Ok(Self {
            branch1,
            branch2: [b2a, b2b],
            branch3,
            branch4,
            cin,
            cout,
        })
    }

    fn weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        self.branch1.weights_mut(f);
        self.branch2.iter_mut().for_each(|b| b.weights_mut(f));
        if let Some(b3) = &mut self.branch3 {
            b3.iter_mut().for_each(|b| b.weights_mut(f));
        }
        self.branch4.weights_mut(f);
    }

    /// `g` NHWC images `h x w x cin` -> `g` NHWC images `h x w x cout` in `out`.
    #[allow(clippy::too_many_arguments)]
    fn forward(
        &self,
        ops: &Ops,
        x: &[f32],
        g: usize,
        h: usize,
        w: usize,
        out: &mut [f32],
        s: &mut CnnScratch,
    ) {
        let px = g * h * w;
        let co = self.cout;
        let mut off = 0;
        self.branch1.forward(ops, px, x, out, co);
        off += self.branch1.cout;
        let mut kxk = |pair: &[ConvBlock; 2], off: usize| {
            let t = buf(&mut s.t, px * pair[0].cout);
            pair[0].forward(ops, px, x, t, pair[0].cout);
            let col = buf(&mut s.col, px * pair[1].k * pair[1].k * pair[1].cin);
            im2col(t, g, h, w, pair[0].cout, pair[1].k, col);
            pair[1].forward(ops, px, col, &mut out[off..], co);
            pair[1].cout
        };
        off += kxk(&self.branch2, off);
        if let Some(b3) = &self.branch3 {
            off += kxk(b3, off);
        }
        let mp = buf(&mut s.mp, px * self.cin);
        let hmax = buf(&mut s.hmax, h * w * self.cin);
        max_pool3(x, g, h, w, self.cin, hmax, mp);
        self.branch4.forward(ops, px, mp, &mut out[off..], co);
    }
}

/// `inception_model.vis_inception`: image -> 1096 features.
#[derive(Debug, Clone)]
pub(crate) struct VisInception {
    conv0: Linear,
    channels: usize,
    image: usize,
    blocks: [Inception; 5],
    /// Flattened width (channels of block 8 x (image/8)^2).
    pub(crate) flat: usize,
    fc10: Linear,
    fc12: Linear,
}

impl VisInception {
    /// Loads the branch. `root` is the state_dict root; the first convolution may appear
    /// under `conv2d_init`, `vis_inception.0` or both (then they must be equal).
    pub(crate) fn load(root: &Vb, channels: usize, image: usize) -> Result<Self, Error> {
        let vb = root.pp("inception_model").pp("vis_inception");
        let conv0 = load_conv0(root, channels)?;
        let c0 = conv0.out_features();
        let b2 = Inception::load(&vb.pp(2), c0, false)?;
        let b3 = Inception::load(&vb.pp(3), b2.cout, false)?;
        let b5 = Inception::load(&vb.pp(5), b3.cout, false)?;
        let b6 = Inception::load(&vb.pp(6), b5.cout, false)?;
        let b8 = Inception::load(&vb.pp(8), b6.cout, true)?;
        let s = image / 8;
        let flat = b8.cout * s * s;
        let fc10v = vb.pp(10);
        let hidden = fc10v.dim("weight", 2, 0)?;
        let w10 = fc10v.get("weight", &[hidden, flat])?;
        let b10 = fc10v.get("bias", &[hidden])?;
        // Permute input columns from NCHW flatten order (c*S*S + p) to NHWC (p*C + c).
        let c8 = b8.cout;
        let mut wp = vec![0.0f32; hidden * flat];
        for o in 0..hidden {
            for c in 0..c8 {
                for p in 0..s * s {
                    wp[o * flat + p * c8 + c] = w10.data[o * flat + c * s * s + p];
                }
            }
        }
        let fc10 = Linear::from_parts(&wp, &b10.data, flat, hidden);
        let out = vb.pp(12).dim("weight", 2, 0)?;
        let fc12 = Linear::load(&vb.pp(12), hidden, out)?;
        Ok(Self {
            conv0,
            channels,
            image,
            blocks: [b2, b3, b5, b6, b8],
            flat,
            fc10,
            fc12,
        })
    }

    /// Visits the packed weights of the convolutions (not `vis_inception.10/12`), each
    /// with the pixels (GEMM rows) it runs on per galaxy: the first convolution and blocks
    /// 2 and 3 at half the image size, 5 and 6 at a quarter, 8 at an eighth.
    pub(crate) fn trunk_weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB, usize)) {
        let img = self.image;
        let px = |div: usize| (img / div) * (img / div);
        let rows = [px(2), px(2), px(4), px(4), px(8)];
        self.conv0.weights_mut(&mut |w: &mut PackedB| f(w, px(2)));
        for (b, r) in self.blocks.iter_mut().zip(rows) {
            b.weights_mut(&mut |w: &mut PackedB| f(w, r));
        }
    }

    /// Visits the packed weights of `vis_inception.10` and `.12`.
    pub(crate) fn tail_weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        self.fc10.weights_mut(f);
        self.fc12.weights_mut(f);
    }

    /// Output width (1096).
    pub(crate) fn out_features(&self) -> usize {
        self.fc12.out_features()
    }

    /// Width of the hidden layer `vis_inception.10`.
    pub(crate) fn hidden(&self) -> usize {
        self.fc10.out_features()
    }

    /// The convolutional trunk for `g` NCHW images -> `g x flat` (NHWC flatten) in `out`.
    pub(crate) fn trunk(
        &self,
        ops: &Ops,
        images: &[f32],
        g: usize,
        out: &mut [f32],
        s: &mut CnnScratch,
    ) {
        let (c, h, w) = (self.channels, self.image, self.image);
        // 2x2 average pool straight from NCHW into NHWC, then the 1x1 conv (they commute).
        let (h2, w2) = (h / 2, w / 2);
        let mut pooled = std::mem::take(&mut s.a);
        let p = buf(&mut pooled, g * h2 * w2 * c);
        for gi in 0..g {
            let img = &images[gi * c * h * w..(gi + 1) * c * h * w];
            for ch in 0..c {
                let plane = &img[ch * h * w..(ch + 1) * h * w];
                for y in 0..h2 {
                    let r0 = &plane[2 * y * w..2 * y * w + w];
                    let r1 = &plane[(2 * y + 1) * w..(2 * y + 1) * w + w];
                    for x in 0..w2 {
                        let v = (r0[2 * x] + r0[2 * x + 1] + r1[2 * x] + r1[2 * x + 1]) * 0.25;
                        p[((gi * h2 + y) * w2 + x) * c + ch] = v;
                    }
                }
            }
        }
        let c0 = self.conv0.out_features();
        let mut cur = std::mem::take(&mut s.b);
        let px = g * h2 * w2;
        self.conv0
            .forward(ops, px, p, c, buf(&mut cur, px * c0), c0, Epilogue::PLAIN);
        let (mut hh, mut ww, mut cc) = (h2, w2, c0);
        let mut next = pooled;
        for (i, blk) in self.blocks.iter().enumerate() {
            if i == 2 || i == 4 {
                // AvgPool2d(2) at Sequential indices 4 and 7.
                let n = g * (hh / 2) * (ww / 2) * cc;
                let (h3, w3) =
                    avg_pool2(&cur[..g * hh * ww * cc], g, hh, ww, cc, buf(&mut next, n));
                std::mem::swap(&mut cur, &mut next);
                hh = h3;
                ww = w3;
            }
            debug_assert_eq!(cc, blk.cin);
            let n = g * hh * ww * blk.cout;
            if i == 4 {
                blk.forward(ops, &cur[..g * hh * ww * cc], g, hh, ww, &mut out[..n], s);
            } else {
                blk.forward(
                    ops,
                    &cur[..g * hh * ww * cc],
                    g,
                    hh,
                    ww,
                    buf(&mut next, n),
                    s,
                );
                std::mem::swap(&mut cur, &mut next);
            }
            cc = blk.cout;
        }
        s.a = cur;
        s.b = next;
    }

    /// `vis_inception.10` -> ReLU -> `.12` for `m` flattened rows into `out` (stride `ldo`);
    /// `tmp` holds `m x hidden`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn tail(
        &self,
        ops: &Ops,
        m: usize,
        flat: &[f32],
        tmp: &mut [f32],
        out: &mut [f32],
        ldo: usize,
    ) {
        let hd = self.hidden();
        self.fc10
            .forward(ops, m, flat, self.flat, tmp, hd, Epilogue::RELU);
        self.fc12
            .forward(ops, m, tmp, hd, out, ldo, Epilogue::PLAIN);
    }
}

/// Loads the shared first 1x1 convolution from either (or both) of its keys.
fn load_conv0(root: &Vb, channels: usize) -> Result<Linear, Error> {
    let a = root.pp(CONV_INIT);
    let b = root.pp(VIS0);
    let has_a = a.contains("weight") || a.contains("bias");
    let has_b = b.contains("weight") || b.contains("bias");
    let src = if has_a { &a } else { &b };
    let out = src.dim("weight", 4, 0)?;
    let w = src.get("weight", &[out, channels, 1, 1])?;
    let bias = src.get("bias", &[out])?;
    if has_a && has_b {
        for name in ["weight", "bias"] {
            let x = a.get_any(name)?;
            let y = b.get_any(name)?;
            if x != y {
                return Err(Error::DuplicateMismatch {
                    file: root.file().to_string(),
                    key_a: a.key(name),
                    key_b: b.key(name),
                });
            }
        }
    }
    Ok(Linear::from_parts(&w.data, &bias.data, channels, out))
}

/// `inception_model.magnitude_block`: Linear -> ReLU, four times, then a Linear.
#[derive(Debug, Clone)]
pub(crate) struct MagnitudeBlock {
    layers: Vec<Linear>,
    pub(crate) inputs: usize,
}

impl MagnitudeBlock {
    pub(crate) fn load(root: &Vb) -> Result<Self, Error> {
        let vb = root.pp("inception_model").pp("magnitude_block");
        let inputs = vb.pp(0).dim("weight", 2, 1)?;
        let mut layers = Vec::new();
        let mut width = inputs;
        for idx in [0, 2, 4, 6, 8] {
            let out = vb.pp(idx).dim("weight", 2, 0)?;
            layers.push(Linear::load(&vb.pp(idx), width, out)?);
            width = out;
        }
        Ok(Self { layers, inputs })
    }

    pub(crate) fn out_features(&self) -> usize {
        self.layers.last().map_or(0, Linear::out_features)
    }

    /// Visits the packed weights of every layer.
    pub(crate) fn weights_mut(&mut self, f: &mut dyn FnMut(&mut PackedB)) {
        self.layers.iter_mut().for_each(|l| l.weights_mut(f));
    }

    /// Widest hidden layer (scratch size per row).
    pub(crate) fn max_width(&self) -> usize {
        self.layers
            .iter()
            .map(Linear::out_features)
            .max()
            .unwrap_or(0)
    }

    /// `m` rows of magnitudes -> `out` (stride `ldo`); `t1`, `t2` hold `m x max_width`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn forward(
        &self,
        ops: &Ops,
        m: usize,
        mags: &[f32],
        t1: &mut [f32],
        t2: &mut [f32],
        out: &mut [f32],
        ldo: usize,
    ) {
        let last = self.layers.len() - 1;
        let mut width = self.inputs;
        let (mut src, mut dst) = (t2, t1);
        for (i, l) in self.layers.iter().enumerate() {
            let input: &[f32] = if i == 0 { mags } else { &*src };
            let n = l.out_features();
            if i == last {
                l.forward(ops, m, input, width, out, ldo, Epilogue::PLAIN);
            } else {
                l.forward(ops, m, input, width, dst, n, Epilogue::RELU);
                std::mem::swap(&mut src, &mut dst);
            }
            width = n;
        }
    }
}
