//! cai-engine (skeleton).
