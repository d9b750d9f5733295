//! Per-layer precision: which arithmetic ([`Precision`]) each weight matrix of AstroMAE
//! runs in, and the SmoothQuant factors folded into a layer before it is quantised.
//!
//! A plan names the patch embedding, the `qkv`, attention products (`attn`: f32, bf16 or
//! int16), `proj`, `fc1` and `fc2` of every block, the convolutional trunk (all of `vis_inception`'s convolutions) and the head (the
//! per-galaxy MLPs: the ViT's `head` and `vit_block`, `vis_inception.10/12`,
//! `magnitude_block`, `concat_block.0`). [`PrecisionPlan::uniform`] is what
//! [`crate::AstroMae::set_precision`] applies: every trunk layer in one precision (the
//! attention's products too where the CPU has a kernel for them), the head in f32. Plans serialise to JSON (precisions by name: `"f32"`, `"bf16"`, `"int8"`,
//! `"int16"`).

use serde::{Deserialize, Serialize};

use crate::kernels::Precision;

/// One layer (or group of layers) a [`PrecisionPlan`] sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PlanLayer {
    /// `patch_embed.proj`.
    PatchEmbed,
    /// `blocks.{i}.attn.qkv`.
    Qkv(usize),
    /// `blocks.{i}.attn`'s two products without weights (scores `QKᵀ`, then the softmax
    /// weights times `V`): f32, bf16 or int16 (no int8).
    Attn(usize),
    /// `blocks.{i}.attn.proj`.
    Proj(usize),
    /// `blocks.{i}.mlp.fc1`.
    Fc1(usize),
    /// `blocks.{i}.mlp.fc2`.
    Fc2(usize),
    /// Every convolution of `inception_model.vis_inception`.
    Cnn,
    /// The per-galaxy MLPs (`head`, `vit_block`, `vis_inception.10/12`,
    /// `magnitude_block`, `concat_block.0`).
    Head,
}

impl PlanLayer {
    /// For a block's `qkv`, `proj`, `fc1` or `fc2`: the block and the layer's place in that
    /// order (the order of [`crate::AstroMae::layer_input_means`]); `None` for the others.
    pub fn block_linear(self) -> Option<(usize, usize)> {
        match self {
            PlanLayer::Qkv(i) => Some((i, 0)),
            PlanLayer::Proj(i) => Some((i, 1)),
            PlanLayer::Fc1(i) => Some((i, 2)),
            PlanLayer::Fc2(i) => Some((i, 3)),
            _ => None,
        }
    }

    /// Every layer of a model with `depth` blocks, in forward order (CNN and head last).
    pub fn all(depth: usize) -> Vec<PlanLayer> {
        let mut v = vec![PlanLayer::PatchEmbed];
        for b in 0..depth {
            v.extend([
                PlanLayer::Qkv(b),
                PlanLayer::Attn(b),
                PlanLayer::Proj(b),
                PlanLayer::Fc1(b),
                PlanLayer::Fc2(b),
            ]);
        }
        v.extend([PlanLayer::Cnn, PlanLayer::Head]);
        v
    }

    /// Whether the layer reads a LayerNorm's output (`qkv` after `norm1`, `fc1` after
    /// `norm2`), so that smoothing factors can fold into that LayerNorm.
    pub fn follows_layer_norm(self) -> bool {
        matches!(self, PlanLayer::Qkv(_) | PlanLayer::Fc1(_))
    }
}

impl std::fmt::Display for PlanLayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PlanLayer::PatchEmbed => f.write_str("patch_embed"),
            PlanLayer::Qkv(b) => write!(f, "blocks.{b}.qkv"),
            PlanLayer::Attn(b) => write!(f, "blocks.{b}.attn"),
            PlanLayer::Proj(b) => write!(f, "blocks.{b}.proj"),
            PlanLayer::Fc1(b) => write!(f, "blocks.{b}.fc1"),
            PlanLayer::Fc2(b) => write!(f, "blocks.{b}.fc2"),
            PlanLayer::Cnn => f.write_str("cnn"),
            PlanLayer::Head => f.write_str("head"),
        }
    }
}

/// Serde for [`Precision`] by name (the kernels' type has no serde of its own).
mod by_name {
    use super::Precision;
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(p: &Precision, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(p.name())
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Precision, D::Error> {
        let s = String::deserialize(d)?;
        Precision::parse(&s).ok_or_else(|| {
            serde::de::Error::custom(format!("unknown precision {s:?} (f32|bf16|int8|int16)"))
        })
    }
}

/// The precisions of one transformer block's four matrices, and the SmoothQuant factors
/// (one per input channel) folded into `qkv` and `fc1` and their LayerNorms, if any.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlockPlan {
    /// `attn.qkv`.
    #[serde(with = "by_name")]
    pub qkv: Precision,
    /// The attention's products (f32, bf16 or int16; f32 in plans from before it was a
    /// choice).
    #[serde(
        default = "f32_precision",
        with = "by_name",
        skip_serializing_if = "is_f32"
    )]
    pub attn: Precision,
    /// `attn.proj`.
    #[serde(with = "by_name")]
    pub proj: Precision,
    /// `mlp.fc1`.
    #[serde(with = "by_name")]
    pub fc1: Precision,
    /// `mlp.fc2`.
    #[serde(with = "by_name")]
    pub fc2: Precision,
    /// Factors `s_j` for `qkv`: `norm1`'s gamma and beta divided by them, `qkv`'s input
    /// channel `j` multiplied by `s_j` (the same function in exact arithmetic).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qkv_smooth: Option<Vec<f32>>,
    /// The same for `fc1` and `norm2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fc1_smooth: Option<Vec<f32>>,
    /// The mean of each input channel of `qkv` over calibration inputs (before smoothing):
    /// when set and `qkv` is int8 or int16, its bias is corrected for the rounding of its
    /// weights ([`PrecisionPlan::input_mean`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub qkv_mean: Option<Vec<f32>>,
    /// The same for `proj`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub proj_mean: Option<Vec<f32>>,
    /// The same for `fc1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fc1_mean: Option<Vec<f32>>,
    /// The same for `fc2`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fc2_mean: Option<Vec<f32>>,
    /// GPTQ's int8 codes for `qkv` (`k * n`, row-major `k x n`, of the smoothed weights
    /// when `qkv_smooth` is set; [`PrecisionPlan::gptq`]), stored as hex.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "codes_hex")]
    pub qkv_gptq: Option<Vec<i8>>,
    /// The same for `proj`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "codes_hex")]
    pub proj_gptq: Option<Vec<i8>>,
    /// The same for `fc1`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "codes_hex")]
    pub fc1_gptq: Option<Vec<i8>>,
    /// The same for `fc2`.
    #[serde(default, skip_serializing_if = "Option::is_none", with = "codes_hex")]
    pub fc2_gptq: Option<Vec<i8>>,
}

/// Serde for optional int8 codes as one hex string (two digits per code, two's
/// complement).
mod codes_hex {
    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(c: &Option<Vec<i8>>, s: S) -> Result<S::Ok, S::Error> {
        match c {
            Some(c) => {
                let bytes: Vec<u8> = c.iter().map(|v| v.to_le_bytes()[0]).collect();
                s.serialize_some(&hex::encode(bytes))
            }
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<i8>>, D::Error> {
        let Some(h) = Option::<String>::deserialize(d)? else {
            return Ok(None);
        };
        let bytes = hex::decode(h).map_err(serde::de::Error::custom)?;
        Ok(Some(
            bytes.into_iter().map(|b| i8::from_le_bytes([b])).collect(),
        ))
    }
}

fn f32_precision() -> Precision {
    Precision::F32
}

fn is_f32(p: &Precision) -> bool {
    *p == Precision::F32
}

/// The attention products' precision in a uniform plan of `p`: bf16 or int16 as `p` where
/// this CPU has a kernel for them (AVX-512 BF16, AVX-512 VNNI), else f32: there is no int8
/// attention, and elsewhere the reference's scalar speed would make the pass slower (so a
/// fixed bf16 or int16 run's attention differs by CPU, within that precision's error).
fn uniform_attention(p: Precision) -> Precision {
    if crate::kernels::ops().has_attention_kernel(p) {
        p
    } else {
        Precision::F32
    }
}

impl BlockPlan {
    /// Every matrix in `p`; the attention's products too where `p` is bf16 or int16 and
    /// this CPU has a kernel for them ([`uniform_attention`]), else f32.
    fn uniform(p: Precision) -> Self {
        Self {
            qkv: p,
            attn: uniform_attention(p),
            proj: p,
            fc1: p,
            fc2: p,
            qkv_smooth: None,
            fc1_smooth: None,
            qkv_mean: None,
            proj_mean: None,
            fc1_mean: None,
            fc2_mean: None,
            qkv_gptq: None,
            proj_gptq: None,
            fc1_gptq: None,
            fc2_gptq: None,
        }
    }
}

/// The precision of every weight matrix of an AstroMAE model (see the module doc).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PrecisionPlan {
    /// `patch_embed.proj`.
    #[serde(with = "by_name")]
    pub patch_embed: Precision,
    /// One entry per transformer block.
    pub blocks: Vec<BlockPlan>,
    /// The convolutions of the CNN branch.
    #[serde(with = "by_name")]
    pub cnn: Precision,
    /// The per-galaxy MLPs.
    #[serde(with = "by_name")]
    pub head: Precision,
}

impl PrecisionPlan {
    /// Every layer f32 (the reference).
    pub fn f32(depth: usize) -> Self {
        Self::uniform(Precision::F32, depth)
    }

    /// What [`crate::AstroMae::set_precision`] applies: the patch embedding, every block
    /// and the CNN in `p`, the head in f32 (each of its MLPs alone moved z by 1e-3 to 2e-2
    /// in bf16 or int8 on the parity fixtures, for ≈3% of the FLOPs).
    pub fn uniform(p: Precision, depth: usize) -> Self {
        Self {
            patch_embed: p,
            blocks: vec![BlockPlan::uniform(p); depth],
            cnn: p,
            head: Precision::F32,
        }
    }

    /// The precision of `layer` (f32 for a block past the plan's depth).
    pub fn get(&self, layer: PlanLayer) -> Precision {
        let blk = |b: usize| self.blocks.get(b);
        match layer {
            PlanLayer::PatchEmbed => self.patch_embed,
            PlanLayer::Qkv(b) => blk(b).map_or(Precision::F32, |x| x.qkv),
            PlanLayer::Attn(b) => blk(b).map_or(Precision::F32, |x| x.attn),
            PlanLayer::Proj(b) => blk(b).map_or(Precision::F32, |x| x.proj),
            PlanLayer::Fc1(b) => blk(b).map_or(Precision::F32, |x| x.fc1),
            PlanLayer::Fc2(b) => blk(b).map_or(Precision::F32, |x| x.fc2),
            PlanLayer::Cnn => self.cnn,
            PlanLayer::Head => self.head,
        }
    }

    /// Sets the precision of `layer`; a block past the plan's depth is ignored.
    pub fn set(&mut self, layer: PlanLayer, p: Precision) {
        match layer {
            PlanLayer::PatchEmbed => self.patch_embed = p,
            PlanLayer::Qkv(b) => self.blocks.get_mut(b).into_iter().for_each(|x| x.qkv = p),
            PlanLayer::Attn(b) => self.blocks.get_mut(b).into_iter().for_each(|x| x.attn = p),
            PlanLayer::Proj(b) => self.blocks.get_mut(b).into_iter().for_each(|x| x.proj = p),
            PlanLayer::Fc1(b) => self.blocks.get_mut(b).into_iter().for_each(|x| x.fc1 = p),
            PlanLayer::Fc2(b) => self.blocks.get_mut(b).into_iter().for_each(|x| x.fc2 = p),
            PlanLayer::Cnn => self.cnn = p,
            PlanLayer::Head => self.head = p,
        }
    }

    /// The smoothing factors of `layer` (only `qkv` and `fc1` can have them).
    pub fn smoothing(&self, layer: PlanLayer) -> Option<&[f32]> {
        match layer {
            PlanLayer::Qkv(b) => self.blocks.get(b)?.qkv_smooth.as_deref(),
            PlanLayer::Fc1(b) => self.blocks.get(b)?.fc1_smooth.as_deref(),
            _ => None,
        }
    }

    /// Sets (or clears, with `None`) the smoothing factors of `layer`; ignored for layers
    /// that do not follow a LayerNorm.
    pub fn set_smoothing(&mut self, layer: PlanLayer, s: Option<Vec<f32>>) {
        match layer {
            PlanLayer::Qkv(b) => self
                .blocks
                .get_mut(b)
                .into_iter()
                .for_each(|x| x.qkv_smooth = s.clone()),
            PlanLayer::Fc1(b) => self
                .blocks
                .get_mut(b)
                .into_iter()
                .for_each(|x| x.fc1_smooth = s.clone()),
            _ => {}
        }
    }

    /// The mean of each input channel of `layer` over calibration inputs, if the plan has
    /// it (only the blocks' `qkv`, `proj`, `fc1` and `fc2`). A layer converted to int8 or
    /// int16 with a mean gets its bias corrected for the rounding of its weights: `bias_j
    /// += sum_k mean_k (W_kj - Q_kj)` with `Q` the dequantised weights, so that its outputs
    /// keep their mean over those inputs ("bias correction"; the rounding errors of 8-bit
    /// weights otherwise shift every output by a fixed amount, which the pooling over
    /// tokens does not average out: on the parity fixtures int8 everywhere went from
    /// max |Δz| 1.1e-2 to 2.9e-3 in a PyTorch simulation, see `docs/kernels.md`).
    pub fn input_mean(&self, layer: PlanLayer) -> Option<&[f32]> {
        let (i, which) = layer.block_linear()?;
        let x = self.blocks.get(i)?;
        [&x.qkv_mean, &x.proj_mean, &x.fc1_mean, &x.fc2_mean][which].as_deref()
    }

    /// Sets (or clears, with `None`) the input means of `layer`; ignored for layers outside
    /// the blocks (see [`PrecisionPlan::input_mean`]).
    pub fn set_input_mean(&mut self, layer: PlanLayer, m: Option<Vec<f32>>) {
        let Some((i, which)) = layer.block_linear() else {
            return;
        };
        if let Some(x) = self.blocks.get_mut(i) {
            *[
                &mut x.qkv_mean,
                &mut x.proj_mean,
                &mut x.fc1_mean,
                &mut x.fc2_mean,
            ][which] = m;
        }
    }

    /// GPTQ's int8 codes for `layer` (only the blocks' `qkv`, `proj`, `fc1` and `fc2`), if
    /// the plan has them: when set and the layer is int8, its integers are these codes
    /// (chosen once on calibration inputs, [`crate::AstroMae::gptq_codes`]) rather than its
    /// weights rounded to nearest, with the same per-column scales.
    pub fn gptq(&self, layer: PlanLayer) -> Option<&[i8]> {
        let (i, which) = layer.block_linear()?;
        let x = self.blocks.get(i)?;
        [&x.qkv_gptq, &x.proj_gptq, &x.fc1_gptq, &x.fc2_gptq][which].as_deref()
    }

    /// Sets (or clears, with `None`) the GPTQ codes of `layer`; ignored for layers outside
    /// the blocks (see [`PrecisionPlan::gptq`]).
    pub fn set_gptq(&mut self, layer: PlanLayer, c: Option<Vec<i8>>) {
        let Some((i, which)) = layer.block_linear() else {
            return;
        };
        if let Some(x) = self.blocks.get_mut(i) {
            *[
                &mut x.qkv_gptq,
                &mut x.proj_gptq,
                &mut x.fc1_gptq,
                &mut x.fc2_gptq,
            ][which] = c;
        }
    }

    /// Every layer of the plan, in forward order.
    pub fn layers(&self) -> Vec<PlanLayer> {
        PlanLayer::all(self.blocks.len())
    }

    /// The precision every weight matrix of the plan shares, if they all share one (the
    /// attention's products, without weights, do not count).
    pub fn single(&self) -> Option<Precision> {
        let mut it = self
            .layers()
            .into_iter()
            .filter(|l| !matches!(l, PlanLayer::Attn(_)))
            .map(|l| self.get(l));
        let first = it.next()?;
        it.all(|p| p == first).then_some(first)
    }

    /// The trunk's precision when the plan is [`PrecisionPlan::uniform`] in it (head f32,
    /// no smoothing).
    pub fn as_uniform(&self) -> Option<Precision> {
        let p = self.patch_embed;
        (*self == Self::uniform(p, self.blocks.len())).then_some(p)
    }

    /// A short summary: the layers grouped by precision, e.g.
    /// `int16: patch_embed blocks.0-11.{qkv,proj,fc1} cnn; f32: blocks.0-11.fc2 head`
    /// (every layer named, smoothing marked with `~`, bias correction with `+`, GPTQ
    /// rounding with `*`).
    pub fn summary(&self) -> String {
        let mut parts = Vec::new();
        for p in Precision::ALL {
            let names: Vec<String> = self
                .layers()
                .into_iter()
                .filter(|l| self.get(*l) == p)
                .map(|l| {
                    let mark = if self.smoothing(l).is_some() { "~" } else { "" };
                    let fix = if self.input_mean(l).is_some()
                        && matches!(p, Precision::Int8 | Precision::Int16)
                    {
                        "+"
                    } else {
                        ""
                    };
                    let g = if self.gptq(l).is_some() && p == Precision::Int8 {
                        "*"
                    } else {
                        ""
                    };
                    format!("{l}{mark}{fix}{g}")
                })
                .collect();
            if !names.is_empty() {
                parts.push(format!("{p}: {}", compress(&names)));
            }
        }
        parts.join("; ")
    }
}

/// Groups `blocks.{i}.{x}` names by their tail, listing the block numbers as ranges
/// (`blocks.0-3,5.fc1`); other names stay as they are.
fn compress(names: &[String]) -> String {
    let mut tails: Vec<(String, Vec<usize>)> = Vec::new();
    let mut out: Vec<String> = Vec::new();
    for n in names {
        let parsed = n.strip_prefix("blocks.").and_then(|r| {
            let (b, t) = r.split_once('.')?;
            Some((b.parse::<usize>().ok()?, t.to_string()))
        });
        match parsed {
            Some((b, t)) => match tails.iter_mut().find(|(x, _)| *x == t) {
                Some((_, v)) => v.push(b),
                None => tails.push((t, vec![b])),
            },
            None => out.push(n.clone()),
        }
    }
    let mut blocks: Vec<String> = tails
        .into_iter()
        .map(|(t, mut v)| {
            v.sort_unstable();
            format!("blocks.{}.{t}", ranges(&v))
        })
        .collect();
    blocks.append(&mut out);
    blocks.join(" ")
}

/// `[0,1,2,5]` -> `0-2,5`.
fn ranges(v: &[usize]) -> String {
    let mut s = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        s.push(if i == j {
            v[i].to_string()
        } else {
            format!("{}-{}", v[i], v[j])
        });
        i = j + 1;
    }
    s.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_json_round_trip() {
        let mut p = PrecisionPlan::uniform(Precision::Int16, 3);
        // (Its attention is int16 on CPUs with a kernel for it: this test is about the rest.)
        for b in 0..3 {
            p.set(PlanLayer::Attn(b), Precision::F32);
        }
        p.set(PlanLayer::Fc2(1), Precision::Bf16);
        p.set(PlanLayer::Head, Precision::Int8);
        p.set_smoothing(PlanLayer::Qkv(2), Some(vec![0.5, 1.25, 3.0e-7, 7.1]));
        let json = serde_json::to_string(&p).unwrap_or_default();
        assert!(json.contains("\"fc2\":\"bf16\""), "{json}");
        let back: PrecisionPlan = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back, p);
        assert_eq!(
            back.smoothing(PlanLayer::Qkv(2)),
            Some(&[0.5, 1.25, 3.0e-7, 7.1][..])
        );
        assert!(serde_json::from_str::<PrecisionPlan>(&json.replace("bf16", "fp8")).is_err());
        // Input means (bias correction) round-trip too, and older plans without them read.
        p.set_input_mean(PlanLayer::Fc2(0), Some(vec![0.25, -1.5]));
        p.set_input_mean(PlanLayer::Head, Some(vec![1.0])); // not a block layer: ignored
        assert_eq!(p.input_mean(PlanLayer::Head), None);
        let json2 = serde_json::to_string(&p).unwrap_or_default();
        assert!(json2.contains("\"fc2_mean\":[0.25,-1.5]"), "{json2}");
        let back: PrecisionPlan = serde_json::from_str(&json2).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.input_mean(PlanLayer::Fc2(0)), Some(&[0.25, -1.5][..]));
        assert_eq!(back.input_mean(PlanLayer::Fc2(1)), None);
        assert!(!json.contains("_mean"), "{json}");
        // GPTQ codes round-trip as hex (two's complement).
        p.set_gptq(PlanLayer::Proj(1), Some(vec![-127, 0, 5, 127, -1]));
        p.set_gptq(PlanLayer::Cnn, Some(vec![1])); // not a block layer: ignored
        assert_eq!(p.gptq(PlanLayer::Cnn), None);
        let json3 = serde_json::to_string(&p).unwrap_or_default();
        assert!(json3.contains("\"proj_gptq\":\"8100057fff\""), "{json3}");
        let back: PrecisionPlan = serde_json::from_str(&json3).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            back.gptq(PlanLayer::Proj(1)),
            Some(&[-127, 0, 5, 127, -1][..])
        );
        assert!(!json2.contains("_gptq"), "{json2}");
        // The attention's precision: written only when not f32, f32 when absent.
        assert!(!json3.contains("\"attn\""), "{json3}");
        p.set(PlanLayer::Attn(1), Precision::Bf16);
        let json4 = serde_json::to_string(&p).unwrap_or_default();
        assert_eq!(json4.matches("\"attn\":\"bf16\"").count(), 1, "{json4}");
        let back: PrecisionPlan = serde_json::from_str(&json4).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(back.get(PlanLayer::Attn(1)), Precision::Bf16);
        assert_eq!(back.get(PlanLayer::Attn(2)), Precision::F32);
    }

    #[test]
    fn get_set_and_summary() {
        let mut p = PrecisionPlan::f32(4);
        assert_eq!(p.single(), Some(Precision::F32));
        assert_eq!(p.as_uniform(), Some(Precision::F32));
        assert_eq!(p.layers().len(), 1 + 5 * 4 + 2);
        for b in 0..4 {
            p.set(PlanLayer::Fc1(b), Precision::Int16);
        }
        p.set(PlanLayer::Fc1(2), Precision::Int8);
        p.set(PlanLayer::Fc1(7), Precision::Int8); // past the depth: ignored
        assert_eq!(p.get(PlanLayer::Fc1(7)), Precision::F32);
        assert_eq!(p.get(PlanLayer::Fc1(2)), Precision::Int8);
        assert_eq!(p.single(), None);
        assert_eq!(p.as_uniform(), None);
        p.set_smoothing(PlanLayer::Fc1(0), Some(vec![1.0]));
        p.set_smoothing(PlanLayer::Proj(0), Some(vec![1.0])); // no LayerNorm before: ignored
        assert_eq!(p.smoothing(PlanLayer::Proj(0)), None);
        assert_eq!(
            p.summary(),
            "f32: blocks.0-3.qkv blocks.0-3.attn blocks.0-3.proj blocks.0-3.fc2 patch_embed cnn head; \
             int8: blocks.2.fc1; int16: blocks.0.fc1~ blocks.1,3.fc1"
        );
        p.set_input_mean(PlanLayer::Fc1(2), Some(vec![0.5]));
        p.set_input_mean(PlanLayer::Qkv(1), Some(vec![0.5])); // f32: not marked
        assert!(
            p.summary().contains("int8: blocks.2.fc1+;"),
            "{}",
            p.summary()
        );
        let u = PrecisionPlan::uniform(Precision::Bf16, 2);
        assert_eq!(u.as_uniform(), Some(Precision::Bf16));
        assert_eq!(u.get(PlanLayer::Head), Precision::F32);
    }
}
