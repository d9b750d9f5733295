//! cai-torch (skeleton).
