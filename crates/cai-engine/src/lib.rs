//! # cai-engine
//!
//! Where ranks run. The three stages are the same on every engine: [`stages::plan_run`]
//! (Initialize), [`worker::Worker::run_rank`] (one rank of the distributed map) and
//! [`summarize::summarize`] (Summarize). An engine only decides where ranks run, behind one
//! trait, [`Engine`]: a [`RunRequest`] in, [`RunEvent`]s out as it goes, a [`RunReport`] at
//! the end. [`local::LocalEngine`] runs ranks on this machine's cores; `slurm` (feature
//! `slurm`) runs them as a Slurm job array; `aws` (feature `aws`) generates the Step
//! Functions + Lambda workflow and serves its handlers (the engine that deploys and starts
//! it is `cai_aws::AwsEngine`, beside the AWS SDK); `cai_core::cost` prices a run at AWS list
//! prices. [`task::RankTask`] is one rank as its own process (`cai worker`, each Slurm
//! array task).
//!
//! What a run writes under its results location is named in `cai_core::layout` and read
//! back through `cai_core::results`; the predictions' Parquet schema is
//! `cai_core::predictions`.
#![forbid(unsafe_code)]
#![deny(missing_docs)]

#[cfg(feature = "aws")]
pub mod aws;
#[cfg(feature = "bench")]
pub mod bench;
#[cfg(feature = "bench")]
pub mod bench_tensor;
pub mod demo;
pub mod engine;
pub mod error;
pub mod local;
pub mod partition;
#[cfg(feature = "slurm")]
pub mod slurm;
pub mod stages;
pub mod summarize;
pub mod sweep;
pub mod task;
pub mod worker;

pub use engine::{Engine, NoEvents, RunEnd, RunEvent, RunEvents, RunReport, RunRequest};
pub use error::{Error, Result};
