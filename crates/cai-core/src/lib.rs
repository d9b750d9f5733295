//! # cai-core
//!
//! The parts of CAI-rs every engine shares and that know nothing of ML or engines:
//! the original's input [`payload`], the [`plan`] (Initialize: which partitions each rank
//! runs), the per-rank [`report`] (`<rank>.json` with the original's keys), the run
//! [`summary`], the redshift [`metrics`], and [`storage`] locations as URLs. A results
//! location's keys are named once in [`layout`] and read through [`results`]; one run at a
//! time holds a location's [`lease`]; the
//! per-galaxy [`predictions`] are Parquet; [`cost`] prices a run at AWS list prices.
//!
//! ```
//! use cai_core::plan::assign;
//! // 5 files over 3 ranks, the original's rule: ceil(5/3)=2, ceil(3/2)=2, 1.
//! assert_eq!(assign(5, 3), vec![0..2, 2..4, 4..5]);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod cost;
pub mod error;
pub mod layout;
pub mod lease;
pub mod limits;
pub mod metrics;
pub mod payload;
pub mod plan;
pub mod predictions;
pub mod report;
pub mod results;
pub mod storage;
pub mod summary;

pub use error::{Error, Result};
pub use storage::StorageUrl;
