//! Seeded, deterministic weights shaped exactly like the original's `state_dict`.
//!
//! Scales follow PyTorch's defaults: Linear and Conv2d weight and bias
//! ~ U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (kaiming_uniform with a = sqrt 5); LayerNorm weight
//! 1, bias 0; BatchNorm weight 1, bias 0, running_mean 0, running_var 1; `cls_token`
//! ~ N(0, 0.02); `pos_embed` the fixed 2-D sin-cos embedding of MAE (cls row zero).
//!
//! Like the original, the first convolution appears under both `conv2d_init` and
//! `vis_inception.0` (same values), and block 8 carries (unused) branch3 weights.
//! `num_batches_tracked` counters are omitted (they are i64 buffers the forward pass never
//! reads). Metadata `heads` records the head count.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

use crate::{Config, Tensor, Weights};

/// Widths of the non-ViT parts of AstroMAE.
const VIT_HIDDEN: usize = 1096;
const CNN_HIDDEN: usize = 1096;
const MAG_HIDDEN: usize = 1024;
const HEAD_HIDDEN: usize = 1024;
const CONV0: usize = 32;
/// (Sequential index, in channels, branch width, custom).
const INCEPTION: [(usize, usize, usize, bool); 5] = [
    (2, 32, 16, false),
    (3, 64, 16, false),
    (5, 64, 8, false),
    (6, 32, 8, false),
    (8, 32, 4, true),
];

struct Init {
    rng: ChaCha8Rng,
    w: Weights,
}

impl Init {
    fn uniform(&mut self, key: &str, shape: &[usize], fan_in: usize) {
        let b = 1.0 / (fan_in.max(1) as f32).sqrt();
        let n: usize = shape.iter().product();
        let data = (0..n).map(|_| self.rng.random_range(-b..b)).collect();
        self.w.insert(key, Tensor::new(shape.to_vec(), data));
    }

    fn constant(&mut self, key: &str, shape: &[usize], v: f32) {
        let n: usize = shape.iter().product();
        self.w.insert(key, Tensor::new(shape.to_vec(), vec![v; n]));
    }

    fn linear(&mut self, prefix: &str, inp: usize, out: usize) {
        self.uniform(&format!("{prefix}.weight"), &[out, inp], inp);
        self.uniform(&format!("{prefix}.bias"), &[out], inp);
    }

    fn conv(&mut self, prefix: &str, cin: usize, cout: usize, k: usize) {
        self.uniform(&format!("{prefix}.weight"), &[cout, cin, k, k], cin * k * k);
        self.uniform(&format!("{prefix}.bias"), &[cout], cin * k * k);
    }

    fn layer_norm(&mut self, prefix: &str, d: usize) {
        self.constant(&format!("{prefix}.weight"), &[d], 1.0);
        self.constant(&format!("{prefix}.bias"), &[d], 0.0);
    }

    fn conv_block(&mut self, prefix: &str, cin: usize, cout: usize, k: usize) {
        self.conv(&format!("{prefix}.conv"), cin, cout, k);
        self.constant(&format!("{prefix}.bn.weight"), &[cout], 1.0);
        self.constant(&format!("{prefix}.bn.bias"), &[cout], 0.0);
        self.constant(&format!("{prefix}.bn.running_mean"), &[cout], 0.0);
        self.constant(&format!("{prefix}.bn.running_var"), &[cout], 1.0);
    }
}

/// MAE's fixed 2-D sin-cos position embedding: `(1 + grid^2) x dim`, first row (cls) zero;
/// for token (row i, column j) the first half of the width encodes j, the second half i,
/// each as `[sin(pos * w_k), cos(pos * w_k)]` with `w_k = 10000^(-k / (dim/4))`.
pub fn sincos_pos_embed(dim: usize, grid: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; (1 + grid * grid) * dim];
    let quarter = dim / 4;
    for i in 0..grid {
        for j in 0..grid {
            let row = &mut out[(1 + i * grid + j) * dim..(2 + i * grid + j) * dim];
            for (half, pos) in [(0, j), (1, i)] {
                for k in 0..quarter {
                    let omega = 1.0 / 10000f64.powf(k as f64 / quarter as f64);
                    let a = pos as f64 * omega;
                    row[half * 2 * quarter + k] = a.sin() as f32;
                    row[half * 2 * quarter + quarter + k] = a.cos() as f32;
                }
            }
        }
    }
    out
}

/// The seeded (untrained) AstroMAE as a safetensors file, its metadata saying so: what
/// `cai model init` writes.
pub fn seeded_safetensors(seed: u64) -> Result<Vec<u8>, crate::Error> {
    let meta = std::collections::BTreeMap::from([(
        "cai.weights".to_string(),
        format!("seeded init, seed {seed}, untrained"),
    )]);
    astromae_weights(seed, &Config::astromae()).to_safetensors(&meta)
}

/// Deterministic AstroMAE weights for `seed` and the ViT shape `cfg` (the CNN, magnitude
/// and head widths are the original's fixed ones).
pub fn astromae_weights(seed: u64, cfg: &Config) -> Weights {
    let mut s = Init {
        rng: ChaCha8Rng::seed_from_u64(seed),
        w: Weights::new(),
    };
    let (d, c, p, t) = (cfg.dim, cfg.channels, cfg.patch, cfg.tokens);
    let normal = Normal::new(0.0f32, 0.02).ok();
    let draw_normal = |s: &mut Init, n: usize| -> Vec<f32> {
        match &normal {
            Some(dist) => (0..n).map(|_| dist.sample(&mut s.rng)).collect(),
            None => vec![0.0; n],
        }
    };
    let cls = draw_normal(&mut s, d);
    s.w.insert("cls_token", Tensor::new(vec![1, 1, d], cls));
    let grid = (t as f64).sqrt().round() as usize;
    let pos = if d % 4 == 0 && grid * grid == t {
        sincos_pos_embed(d, grid)
    } else {
        draw_normal(&mut s, (t + 1) * d)
    };
    s.w.insert("pos_embed", Tensor::new(vec![1, t + 1, d], pos));
    s.conv("patch_embed.proj", c, d, p);
    for i in 0..cfg.depth {
        let b = format!("blocks.{i}");
        s.layer_norm(&format!("{b}.norm1"), d);
        s.linear(&format!("{b}.attn.qkv"), d, 3 * d);
        s.linear(&format!("{b}.attn.proj"), d, d);
        s.layer_norm(&format!("{b}.norm2"), d);
        s.linear(&format!("{b}.mlp.fc1"), d, cfg.mlp);
        s.linear(&format!("{b}.mlp.fc2"), cfg.mlp, d);
    }
    s.layer_norm("fc_norm", d);
    s.linear("head", d, d);
    s.linear("vit_block.0", d, VIT_HIDDEN);
    s.linear("vit_block.2", VIT_HIDDEN, VIT_HIDDEN);

    s.conv("inception_model.conv2d_init", c, CONV0, 1);
    for name in ["weight", "bias"] {
        if let Some(t) =
            s.w.get(&format!("inception_model.conv2d_init.{name}"))
                .cloned()
        {
            s.w.insert(format!("inception_model.vis_inception.0.{name}"), t);
        }
    }
    let mut cout = CONV0;
    for (idx, cin, wd, custom) in INCEPTION {
        let b = format!("inception_model.vis_inception.{idx}");
        s.conv_block(&format!("{b}.branch1"), cin, wd, 1);
        s.conv_block(&format!("{b}.branch2.0"), cin, wd, 1);
        s.conv_block(&format!("{b}.branch2.1"), wd, wd, 3);
        s.conv_block(&format!("{b}.branch3.0"), cin, wd, 1);
        s.conv_block(&format!("{b}.branch3.1"), wd, wd, 5);
        s.conv_block(&format!("{b}.branch4.1"), cin, wd, 1);
        cout = if custom { 3 * wd } else { 4 * wd };
    }
    let s8 = cfg.image / 8;
    s.linear(
        "inception_model.vis_inception.10",
        cout * s8 * s8,
        CNN_HIDDEN,
    );
    s.linear("inception_model.vis_inception.12", CNN_HIDDEN, CNN_HIDDEN);
    let mut width = c;
    for idx in [0, 2, 4, 6, 8] {
        s.linear(
            &format!("inception_model.magnitude_block.{idx}"),
            width,
            MAG_HIDDEN,
        );
        width = MAG_HIDDEN;
    }
    s.linear(
        "concat_block.0",
        VIT_HIDDEN + CNN_HIDDEN + MAG_HIDDEN,
        HEAD_HIDDEN,
    );
    s.linear("concat_block.2", HEAD_HIDDEN, 1);
    s.w.set_metadata("heads", cfg.heads.to_string());
    s.w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sincos_matches_definition() {
        let pe = sincos_pos_embed(8, 2);
        assert!(pe[..8].iter().all(|v| *v == 0.0));
        // token (i=1, j=0): first half encodes j=0 -> sin 0, cos 1; second half i=1.
        let row = &pe[(1 + 2) * 8..(1 + 3) * 8];
        assert_eq!(&row[..4], &[0.0, 0.0, 1.0, 1.0]);
        assert!((row[4] - 1f32.sin()).abs() < 1e-7);
        assert!((row[5] - (0.01f32).sin()).abs() < 1e-7);
        assert!((row[6] - 1f32.cos()).abs() < 1e-7);
    }
}
