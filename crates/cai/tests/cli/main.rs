//! End-to-end tests of the `cai` binary: one binary, a module per theme.

mod util;

mod pipeline;
mod s3;
mod slurm;
