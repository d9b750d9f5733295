//! cai-core (skeleton).
