//! # cai-engine
//!
//! Where ranks run. The three stages are the same on every engine: [`stages::plan_run`]
//! (Initialize), [`worker::Worker::run_rank`] (one rank of the distributed map) and
//! [`summarize::summarize`] (Summarize). An engine only decides where ranks run:
//! [`local::LocalEngine`] runs them on this machine's cores; `slurm` (feature `slurm`) runs
//! them as a Slurm job array; `aws` (feature `aws`) generates the Step Functions + Lambda
//! workflow (`cai_core::cost` prices it).
//!
//! What a run writes under its results location is named in `cai_core::layout` and read
//! back through `cai_core::results`; the predictions' Parquet schema is
//! `cai_core::predictions`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
pub mod error;
pub mod local;
#[cfg(feature = "slurm")]
pub mod slurm;
pub mod stages;
pub mod summarize;
pub mod worker;

pub use error::{Error, Result};
