//! End-to-end tests of the `cai` binary: one binary, a module per theme.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod util;

mod aws;
mod bench;
mod conformance;
mod faults;
mod help;
mod kills;
#[cfg(feature = "aws")]
mod lambda;
#[cfg(feature = "aws")]
mod lease;
#[cfg(feature = "onnx")]
mod onnx;
mod pipeline;
mod s3;
#[cfg(feature = "aws")]
mod sfn;
mod slurm;
mod sweep;
#[cfg(feature = "onnx")]
mod tensors;
mod torch_files;
#[cfg(feature = "aws")]
mod workflow;
