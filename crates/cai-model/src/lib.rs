//! cai-model (skeleton).
