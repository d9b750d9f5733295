//! # cai-report
//!
//! Results a person can read, from any run on any engine: [`stats`] makes the original's
//! tables (per-run means with an IQR outlier filter, means over repetitions, measured
//! workflow durations) and [`html`] one self-contained HTML report with inline SVG
//! [`figures`] (and PNG copies). [`load`] reads what the run and summarize stages wrote
//! under a results location (a path, `file://` or `s3://` URL).
//!
//! ```
//! use cai_report::stats::{filtered_mean, iqr_fences};
//! // 1,2,3,4,100: Q1 = 2, Q3 = 4 (linear interpolation), fences −1 .. 7: 100 is dropped.
//! let f = iqr_fences(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
//! assert_eq!((f.lo, f.hi), (-1.0, 7.0));
//! assert_eq!(filtered_mean(&[1.0, 2.0, 3.0, 4.0, 100.0]), 2.5);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod error;
pub mod figures;
pub mod html;
pub mod load;
pub mod stats;
pub mod synthetic;

pub use error::{Error, Result};
