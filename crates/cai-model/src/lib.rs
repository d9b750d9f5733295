//! cai-model: the AstroMAE photometric-redshift model in Rust (f32, CPU), with the SIMD
//! kernels it runs on.
//!
//! * [`Weights`] / [`Tensor`]: named tensors keyed like the original PyTorch `state_dict`
//!   (safetensors in and out; cai-torch fills them from `.pt` files).
//! * [`AstroMae`]: the model, loaded by key name with shape checks ([`Error::MissingKey`],
//!   [`Error::Shape`]); implements [`Model`], the seam the engine calls.
//! * [`init::astromae_weights`]: seeded weights shaped like the original's.
//! * [`fit::fit_last_layer`]: ridge regression of the last Linear on the features.
//! * [`PrecisionPlan`]: the arithmetic (f32, bf16, int16, int8) of each layer;
//!   [`mixed::choose`] picks the fastest mix within a bound on |Δz| by measurement, and
//!   [`formula`] gives the full-size model of the committed parity fixture to judge on.
//! * [`TensorModel`]: the general seam (named input tensors in, named outputs out, a galaxy
//!   dimension first); every [`Model`] is one, and so is [`OnnxModel`] (feature `onnx`, on
//!   by default), any ONNX graph run by `tract`.
//! * [`kernels`]: GEMM, LayerNorm and softmax behind a dispatch table (scalar reference,
//!   AVX2+FMA, NEON), chosen once per process (`CAI_KERNELS` overrides).
//!
//! Inference uses the current rayon thread pool: wrap calls in `pool.install(..)` to choose
//! the thread count.
//!
//! ```
//! use cai_model::{init, AstroMae, Config, Model};
//! let mut cfg = Config::astromae();
//! cfg.depth = 1; // a small model for the example
//! let weights = init::astromae_weights(7, &cfg);
//! let model = AstroMae::load(&weights, "seeded")?;
//! let (c, h, w) = model.input_shape();
//! let z = model.predict(&vec![0.1; 2 * c * h * w], &vec![18.0; 2 * 5], 2)?;
//! assert_eq!(z.len(), 2);
//! # Ok::<(), cai_model::Error>(())
//! ```
#![deny(missing_docs)]

mod astromae;
pub mod checkpoint;
pub mod clock;
mod error;
pub mod fit;
pub mod formula;
pub mod gptq;
pub mod init;
pub mod inspect;
pub mod kernels;
pub mod mixed;
#[cfg(feature = "onnx")]
pub mod onnx;
pub mod tensors;
mod weights;

pub use astromae::{
    AstroMae, BlockPlan, BlockSpeed, Config, LoadOptions, PlanLayer, PrecisionPlan, CHUNK,
    HEAD_ROWS,
};
pub use checkpoint::{
    build_model, load_model_file, read_model_weights, MappedFile, ModelFileInfo, ModelForm,
    ModelWeights,
};
pub use error::Error;
#[cfg(feature = "onnx")]
pub use onnx::OnnxModel;
pub use tensors::{
    check_bindings, DType, NamedBatch, NamedOutput, NamedOutputs, TensorModel, TensorSpec,
    REDSHIFT_OUTPUT,
};
pub use weights::{Tensor, Weights};

/// A redshift model: what the engine's workers call.
pub trait Model: Send + Sync {
    /// Predicted redshift for `n` galaxies: `images` holds `n*C*H*W` f32 values (NCHW, see
    /// [`Model::input_shape`]), `magnitudes` `n*5`.
    fn predict(&self, images: &[f32], magnitudes: &[f32], n: usize) -> Result<Vec<f32>, Error>;

    /// `(channels, height, width)` the model expects, e.g. `(5, 32, 32)`.
    fn input_shape(&self) -> (usize, usize, usize);
}
