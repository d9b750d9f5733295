//! A model file described: what `cai model inspect` prints (as text, or as JSON through
//! serde).

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::{AstroMae, ModelFileInfo};

/// A model file's form, hyperparameters, widths, size and cost.
#[derive(Debug, Clone, Serialize)]
pub struct Inspection {
    /// The file as given.
    pub file: String,
    /// Its form (safetensors, a pickled module, a state_dict…).
    pub form: String,
    /// Where in the file the weights were found.
    pub locations: Vec<String>,
    /// The pickled classes it names.
    pub classes: Vec<String>,
    /// Patch size.
    pub patch: usize,
    /// Patch tokens.
    pub tokens: usize,
    /// Transformer blocks.
    pub depth: usize,
    /// Attention heads.
    pub heads: usize,
    /// Where `heads` came from.
    pub heads_from: &'static str,
    /// Embedding width.
    pub dim: usize,
    /// MLP hidden width.
    pub mlp: usize,
    /// Input bands x height x width.
    pub input: [usize; 3],
    /// Output widths of the branches.
    pub widths: BTreeMap<&'static str, usize>,
    /// Parameters.
    pub parameters: usize,
    /// Tensors.
    pub tensors: usize,
    /// FLOPs per galaxy of the original model.
    pub flops_per_galaxy: u64,
    /// What cai runs of them (the last block's `fc2` on the pooled row only).
    pub executed_flops_per_galaxy: u64,
    /// Keys of the file no layer uses.
    pub unused_keys: Vec<String>,
}

impl Inspection {
    /// The description of `model`, loaded from `file` with `info`.
    pub fn new(file: &str, model: &AstroMae, info: ModelFileInfo) -> Self {
        let cfg = model.config();
        Self {
            file: file.to_string(),
            form: info.form.to_string(),
            locations: info.locations,
            classes: info.classes,
            patch: cfg.patch,
            tokens: cfg.tokens,
            depth: cfg.depth,
            heads: cfg.heads,
            heads_from: if info.heads_attr.is_some() {
                "blocks.0.attn.num_heads"
            } else {
                "file metadata `heads`, else dim/64"
            },
            dim: cfg.dim,
            mlp: cfg.mlp,
            input: [cfg.channels, cfg.image, cfg.image],
            widths: BTreeMap::from([
                ("vit_block", 1096),
                ("inception", 1096),
                ("magnitude_block", 1024),
                ("concat_block", model.feature_width()),
            ]),
            parameters: info.param_count,
            tensors: info.tensors,
            flops_per_galaxy: cfg.flops_per_galaxy(),
            executed_flops_per_galaxy: cfg.executed_flops_per_galaxy(),
            unused_keys: info.unused_keys,
        }
    }
}

/// One `name: value` line per field, as `cai model inspect` prints them.
impl fmt::Display for Inspection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let none = |v: &[String]| {
            if v.is_empty() {
                "-".to_string()
            } else {
                v.join(", ")
            }
        };
        let w = |k: &str| self.widths.get(k).copied().unwrap_or(0);
        writeln!(f, "file:          {}", self.file)?;
        writeln!(f, "form:          {}", self.form)?;
        writeln!(f, "locations:     {}", none(&self.locations))?;
        writeln!(f, "classes:       {}", none(&self.classes))?;
        writeln!(
            f,
            "input:         {}x{}x{} (bands x height x width)",
            self.input[0], self.input[1], self.input[2]
        )?;
        writeln!(f, "patch:         {}", self.patch)?;
        writeln!(f, "tokens:        {} patches + 1 cls", self.tokens)?;
        writeln!(f, "depth:         {}", self.depth)?;
        writeln!(
            f,
            "heads:         {} (from {})",
            self.heads, self.heads_from
        )?;
        writeln!(
            f,
            "widths:        dim {}, mlp {}, vit_block {}, inception {}, magnitude_block {}, concat_block {}",
            self.dim,
            self.mlp,
            w("vit_block"),
            w("inception"),
            w("magnitude_block"),
            w("concat_block")
        )?;
        writeln!(f, "parameters:    {}", self.parameters)?;
        writeln!(f, "tensors:       {}", self.tensors)?;
        writeln!(
            f,
            "FLOPs/galaxy:  {:.3} GFLOP (multiply-adds x 2; cai runs {:.3} of them)",
            self.flops_per_galaxy as f64 / 1e9,
            self.executed_flops_per_galaxy as f64 / 1e9
        )?;
        write!(f, "unused keys:   {}", none(&self.unused_keys))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{build_model, init, Config};

    #[test]
    fn describes_a_seeded_model() {
        let cfg = Config {
            depth: 1,
            ..Config::astromae()
        };
        let w = init::astromae_weights(0, &cfg);
        let bytes = w.to_safetensors(&BTreeMap::new()).unwrap();
        let mw = crate::read_model_weights("m.safetensors", &bytes).unwrap();
        let (model, info) = build_model("m.safetensors", &mw).unwrap();
        let i = Inspection::new("m.safetensors", &model, info);
        assert_eq!((i.depth, i.dim), (cfg.depth, cfg.dim));
        let text = i.to_string();
        assert!(text.starts_with("file:          m.safetensors\n"), "{text}");
        assert!(text.ends_with("unused keys:   -"), "{text}");
        assert_eq!(text.lines().count(), 14);
    }
}
