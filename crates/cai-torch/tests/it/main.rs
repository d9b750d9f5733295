//! Integration tests for cai-torch: one binary, a module per theme.

// Test helpers outside #[test] fns unwrap freely, as the tests themselves may.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod forms;
mod hostile;
mod mutation;
mod parity;
mod torchlike;
mod util;
mod wrapped;
mod writer;
mod zips;
