//! What the measuring examples share: the model and galaxies they run.

use cai_model::{formula, AstroMae, Config, LoadOptions};

/// A model with galaxies to run it on.
pub struct Setup {
    pub model: AstroMae,
    pub images: Vec<f32>,
    pub magnitudes: Vec<f32>,
    /// Where they came from, for the printout.
    pub source: String,
}

/// The PyTorch parity fixtures' model and galaxies (`$CAI_PARITY_DIR/model.pt` over `1.pt`)
/// when `CAI_PARITY_DIR` is set, else the full-size formula model on `formula_galaxies`
/// formula inputs.
pub fn model_and_inputs(formula_galaxies: usize) -> Result<Setup, Box<dyn std::error::Error>> {
    match std::env::var_os("CAI_PARITY_DIR") {
        Some(dir) => {
            let dir = std::path::PathBuf::from(dir);
            let bytes = std::fs::read(dir.join("model.pt"))?;
            let mw = cai_model::read_model_weights("model.pt", &bytes)?;
            let opts = LoadOptions {
                heads: mw.heads_attr,
                ..LoadOptions::default()
            };
            let model = AstroMae::load_with(&mw.weights, "model.pt", &opts)?;
            let ds = cai_torch::read_tensor_dataset("1.pt", &std::fs::read(dir.join("1.pt"))?)?;
            match (ds.first(), ds.get(1)) {
                (Some(i), Some(m)) => Ok(Setup {
                    model,
                    images: i.to_f32()?,
                    magnitudes: m.to_f32()?,
                    source: format!("{}", dir.display()),
                }),
                _ => Err("1.pt holds fewer than two tensors".into()),
            }
        }
        None => {
            let cfg = Config::astromae();
            let model = AstroMae::load(&formula::weights(&cfg), "formula")?;
            let (img, mag) = formula::inputs(formula_galaxies, cfg.channels, cfg.image);
            Ok(Setup {
                model,
                images: img,
                magnitudes: mag,
                source: "the formula model".to_string(),
            })
        }
    }
}
