//! A naive f64 AstroMAE forward pass written straight from the architecture description
//! (NCHW, plain loops, reading tensors by key). Independent of the fast path.

use cai_model::Weights;

pub struct Reference<'a> {
    w: &'a Weights,
    heads: usize,
}

fn t<'a>(w: &'a Weights, key: &str) -> (&'a [usize], Vec<f64>) {
    let t = w
        .get(key)
        .unwrap_or_else(|| panic!("reference: missing {key}"));
    (&t.shape, t.data.iter().map(|v| *v as f64).collect())
}

fn linear(w: &Weights, prefix: &str, x: &[f64]) -> Vec<f64> {
    let (shape, wt) = t(w, &format!("{prefix}.weight"));
    let (_, b) = t(w, &format!("{prefix}.bias"));
    let (out, inp) = (shape[0], shape[1]);
    assert_eq!(x.len(), inp, "{prefix}");
    (0..out)
        .map(|o| b[o] + (0..inp).map(|i| wt[o * inp + i] * x[i]).sum::<f64>())
        .collect()
}

fn relu(v: Vec<f64>) -> Vec<f64> {
    v.into_iter().map(|x| x.max(0.0)).collect()
}

fn layer_norm(w: &Weights, prefix: &str, x: &[f64], eps: f64) -> Vec<f64> {
    let (_, g) = t(w, &format!("{prefix}.weight"));
    let (_, b) = t(w, &format!("{prefix}.bias"));
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n;
    x.iter()
        .enumerate()
        .map(|(i, v)| (v - mean) / (var + eps).sqrt() * g[i] + b[i])
        .collect()
}

fn gelu(x: f64) -> f64 {
    0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2))
}

/// A CHW feature map.
#[derive(Clone)]
struct Map {
    c: usize,
    h: usize,
    w: usize,
    v: Vec<f64>,
}

impl Map {
    fn at(&self, c: usize, y: isize, x: isize) -> Option<f64> {
        if y < 0 || x < 0 || y >= self.h as isize || x >= self.w as isize {
            None
        } else {
            Some(self.v[(c * self.h + y as usize) * self.w + x as usize])
        }
    }
}

fn conv(w: &Weights, prefix: &str, x: &Map) -> Map {
    let (shape, wt) = t(w, &format!("{prefix}.weight"));
    let (_, b) = t(w, &format!("{prefix}.bias"));
    let (co, ci, k) = (shape[0], shape[1], shape[2]);
    assert_eq!(ci, x.c, "{prefix}");
    let pad = (k / 2) as isize;
    let mut v = vec![0.0; co * x.h * x.w];
    for o in 0..co {
        for y in 0..x.h {
            for xx in 0..x.w {
                let mut s = b[o];
                for c in 0..ci {
                    for ky in 0..k {
                        for kx in 0..k {
                            if let Some(p) = x.at(
                                c,
                                y as isize + ky as isize - pad,
                                xx as isize + kx as isize - pad,
                            ) {
                                s += wt[((o * ci + c) * k + ky) * k + kx] * p;
                            }
                        }
                    }
                }
                v[(o * x.h + y) * x.w + xx] = s;
            }
        }
    }
    Map {
        c: co,
        h: x.h,
        w: x.w,
        v,
    }
}

fn conv_block(w: &Weights, prefix: &str, x: &Map) -> Map {
    let mut m = conv(w, &format!("{prefix}.conv"), x);
    let (_, g) = t(w, &format!("{prefix}.bn.weight"));
    let (_, b) = t(w, &format!("{prefix}.bn.bias"));
    let (_, mean) = t(w, &format!("{prefix}.bn.running_mean"));
    let (_, var) = t(w, &format!("{prefix}.bn.running_var"));
    let hw = m.h * m.w;
    for (i, v) in m.v.iter_mut().enumerate() {
        let c = i / hw;
        *v = ((*v - mean[c]) / (var[c] + 1e-5).sqrt() * g[c] + b[c]).max(0.0);
    }
    m
}

fn avg_pool(x: &Map) -> Map {
    let (h, w) = (x.h / 2, x.w / 2);
    let mut v = vec![0.0; x.c * h * w];
    for c in 0..x.c {
        for y in 0..h {
            for xx in 0..w {
                let (y2, x2) = (2 * y as isize, 2 * xx as isize);
                let s: f64 = [(0, 0), (0, 1), (1, 0), (1, 1)]
                    .iter()
                    .map(|(dy, dx)| x.at(c, y2 + dy, x2 + dx).unwrap_or(0.0))
                    .sum();
                v[(c * h + y) * w + xx] = s / 4.0;
            }
        }
    }
    Map { c: x.c, h, w, v }
}

fn max_pool3(x: &Map) -> Map {
    let mut out = x.clone();
    for c in 0..x.c {
        for y in 0..x.h as isize {
            for xx in 0..x.w as isize {
                let mut m = f64::NEG_INFINITY;
                for dy in -1..=1 {
                    for dx in -1..=1 {
                        if let Some(v) = x.at(c, y + dy, xx + dx) {
                            m = m.max(v);
                        }
                    }
                }
                out.v[(c * x.h + y as usize) * x.w + xx as usize] = m;
            }
        }
    }
    out
}

fn cat(maps: &[Map]) -> Map {
    let (h, w) = (maps[0].h, maps[0].w);
    let mut v = Vec::new();
    for m in maps {
        v.extend_from_slice(&m.v);
    }
    Map {
        c: maps.iter().map(|m| m.c).sum(),
        h,
        w,
        v,
    }
}

fn inception(w: &Weights, prefix: &str, x: &Map, custom: bool) -> Map {
    let b1 = conv_block(w, &format!("{prefix}.branch1"), x);
    let b2 = conv_block(
        w,
        &format!("{prefix}.branch2.1"),
        &conv_block(w, &format!("{prefix}.branch2.0"), x),
    );
    let b4 = conv_block(w, &format!("{prefix}.branch4.1"), &max_pool3(x));
    if custom {
        cat(&[b1, b2, b4])
    } else {
        let b3 = conv_block(
            w,
            &format!("{prefix}.branch3.1"),
            &conv_block(w, &format!("{prefix}.branch3.0"), x),
        );
        cat(&[b1, b2, b3, b4])
    }
}

impl<'a> Reference<'a> {
    pub fn new(w: &'a Weights, heads: usize) -> Self {
        Self { w, heads }
    }

    fn vit(&self, img: &[f64], c: usize, hw: usize) -> Vec<f64> {
        let w = self.w;
        let (pshape, pw) = t(w, "patch_embed.proj.weight");
        let (_, pb) = t(w, "patch_embed.proj.bias");
        let (d, p) = (pshape[0], pshape[2]);
        let grid = hw / p;
        let (_, cls) = t(w, "cls_token");
        let (_, pos) = t(w, "pos_embed");
        let t1 = grid * grid + 1;
        let mut x = vec![vec![0.0; d]; t1];
        for j in 0..d {
            x[0][j] = cls[j] + pos[j];
        }
        for ty in 0..grid {
            for tx in 0..grid {
                let tok = 1 + ty * grid + tx;
                for o in 0..d {
                    let mut s = pb[o];
                    for ch in 0..c {
                        for ky in 0..p {
                            for kx in 0..p {
                                s += pw[((o * c + ch) * p + ky) * p + kx]
                                    * img[(ch * hw + ty * p + ky) * hw + tx * p + kx];
                            }
                        }
                    }
                    x[tok][o] = s + pos[tok * d + o];
                }
            }
        }
        let hd = d / self.heads;
        let scale = (hd as f64).powf(-0.5);
        let mut i = 0;
        while w.get(&format!("blocks.{i}.norm1.weight")).is_some() {
            let b = format!("blocks.{i}");
            let qkv: Vec<Vec<f64>> = x
                .iter()
                .map(|r| {
                    linear(
                        w,
                        &format!("{b}.attn.qkv"),
                        &layer_norm(w, &format!("{b}.norm1"), r, 1e-6),
                    )
                })
                .collect();
            let mut att = vec![vec![0.0; d]; t1];
            for h in 0..self.heads {
                for qi in 0..t1 {
                    let logits: Vec<f64> = (0..t1)
                        .map(|kj| {
                            (0..hd)
                                .map(|e| qkv[qi][h * hd + e] * qkv[kj][d + h * hd + e])
                                .sum::<f64>()
                                * scale
                        })
                        .collect();
                    let mx = logits.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
                    let ex: Vec<f64> = logits.iter().map(|l| (l - mx).exp()).collect();
                    let sum: f64 = ex.iter().sum();
                    for e in 0..hd {
                        att[qi][h * hd + e] = (0..t1)
                            .map(|kj| ex[kj] / sum * qkv[kj][2 * d + h * hd + e])
                            .sum();
                    }
                }
            }
            for (r, a) in x.iter_mut().zip(&att) {
                let pr = linear(w, &format!("{b}.attn.proj"), a);
                for (v, q) in r.iter_mut().zip(pr) {
                    *v += q;
                }
            }
            for r in x.iter_mut() {
                let h1: Vec<f64> = linear(
                    w,
                    &format!("{b}.mlp.fc1"),
                    &layer_norm(w, &format!("{b}.norm2"), r, 1e-6),
                )
                .into_iter()
                .map(gelu)
                .collect();
                let h2 = linear(w, &format!("{b}.mlp.fc2"), &h1);
                for (v, q) in r.iter_mut().zip(h2) {
                    *v += q;
                }
            }
            i += 1;
        }
        let mut pooled = vec![0.0; d];
        for r in &x[1..] {
            for (p, v) in pooled.iter_mut().zip(r) {
                *p += v / (t1 - 1) as f64;
            }
        }
        let h = linear(w, "head", &layer_norm(w, "fc_norm", &pooled, 1e-6));
        linear(w, "vit_block.2", &relu(linear(w, "vit_block.0", &h)))
    }

    fn cnn(&self, img: &[f64], c: usize, hw: usize) -> Vec<f64> {
        let w = self.w;
        let p = "inception_model.vis_inception";
        let x = Map {
            c,
            h: hw,
            w: hw,
            v: img.to_vec(),
        };
        let x = conv(w, "inception_model.conv2d_init", &x);
        let x = avg_pool(&x);
        let x = inception(w, &format!("{p}.2"), &x, false);
        let x = inception(w, &format!("{p}.3"), &x, false);
        let x = avg_pool(&x);
        let x = inception(w, &format!("{p}.5"), &x, false);
        let x = inception(w, &format!("{p}.6"), &x, false);
        let x = avg_pool(&x);
        let x = inception(w, &format!("{p}.8"), &x, true);
        // Flatten NCHW.
        linear(
            w,
            &format!("{p}.12"),
            &relu(linear(w, &format!("{p}.10"), &x.v)),
        )
    }

    fn mag(&self, m: &[f64]) -> Vec<f64> {
        let p = "inception_model.magnitude_block";
        let mut x = m.to_vec();
        for idx in [0, 2, 4, 6] {
            x = relu(linear(self.w, &format!("{p}.{idx}"), &x));
        }
        linear(self.w, &format!("{p}.8"), &x)
    }

    /// (features after concat_block.0 + ReLU, prediction) for one galaxy.
    pub fn forward(&self, img: &[f32], mag: &[f32], c: usize, hw: usize) -> (Vec<f64>, f64) {
        let img: Vec<f64> = img.iter().map(|v| *v as f64).collect();
        let mag: Vec<f64> = mag.iter().map(|v| *v as f64).collect();
        let mut x = self.vit(&img, c, hw);
        x.extend(self.cnn(&img, c, hw));
        x.extend(self.mag(&mag));
        let f = relu(linear(self.w, "concat_block.0", &x));
        let z = linear(self.w, "concat_block.2", &f)[0];
        (f, z)
    }
}
