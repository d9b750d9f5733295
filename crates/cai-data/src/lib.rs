//! cai-data (skeleton).
