//! cai-model (in progress).
#![deny(missing_docs)]

mod error;
pub mod kernels;
mod weights;

pub use error::Error;
pub use weights::{Tensor, Weights};
