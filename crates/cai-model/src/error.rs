//! Errors of cai-model. Every variant names the offending file, key or shape.

/// Everything that can go wrong while loading weights or running the model.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A tensor the architecture needs is absent from the weights.
    #[error("{file}: missing tensor `{key}`")]
    MissingKey {
        /// Source the weights came from (file name or URL).
        file: String,
        /// Full state_dict key.
        key: String,
    },

    /// A tensor has a different shape than the architecture requires.
    #[error("{file}: tensor `{key}` has shape {got:?}, expected {expected:?}")]
    Shape {
        /// Source the weights came from.
        file: String,
        /// Full state_dict key.
        key: String,
        /// Shape the architecture requires.
        expected: Vec<usize>,
        /// Shape found in the weights.
        got: Vec<usize>,
    },

    /// Two keys that must hold the same tensor (the shared first convolution) differ.
    #[error("{file}: `{key_a}` and `{key_b}` must be the same tensor but differ")]
    DuplicateMismatch {
        /// Source the weights came from.
        file: String,
        /// First key.
        key_a: String,
        /// Second key.
        key_b: String,
    },

    /// A tensor has an element type that cannot be converted to f32.
    #[error("{file}: tensor `{key}` has unsupported dtype {dtype}")]
    Dtype {
        /// Source the weights came from.
        file: String,
        /// Full state_dict key.
        key: String,
        /// The dtype as the file names it.
        dtype: String,
    },

    /// A tensor's data length does not match its shape.
    #[error("{file}: tensor `{key}` has {got} elements but its shape {shape:?} needs {expected}")]
    DataLength {
        /// Source the weights came from.
        file: String,
        /// Key of the tensor.
        key: String,
        /// Shape declared.
        shape: Vec<usize>,
        /// Elements the shape needs.
        expected: usize,
        /// Elements present.
        got: usize,
    },

    /// The safetensors container itself is malformed.
    #[error("{file}: invalid safetensors data: {message}")]
    Safetensors {
        /// Source the bytes came from.
        file: String,
        /// What the parser reported.
        message: String,
    },

    /// The tensors are individually well formed but describe an inconsistent model.
    #[error("{file}: inconsistent model configuration: {message}")]
    Config {
        /// Source the weights came from.
        file: String,
        /// What is inconsistent (names the keys involved).
        message: String,
    },

    /// The caller cancelled the run (Ctrl-C in `cai.run`); not a failure of the rank, so
    /// workers do not record it and a resumed run does the rank again.
    #[error("cancelled: {reason}")]
    Cancelled {
        /// Who cancelled and how to go on.
        reason: String,
    },

    /// A caller passed buffers whose sizes do not fit the model.
    #[error("invalid input `{what}`: expected {expected} values, got {got}")]
    Input {
        /// Which argument.
        what: &'static str,
        /// Number of values the model expects.
        expected: usize,
        /// Number of values passed.
        got: usize,
    },

    /// A PyTorch `.pt` model file that cannot be read safely (the message names the file:
    /// forbidden global, bad CRC, short storage, absurd shape…).
    #[error("{0}")]
    Torch(#[source] cai_torch::Error),

    /// A weight is NaN or infinite.
    #[error(
        "{file}: tensor `{key}` holds {value} at element {index}; refusing non-finite weights"
    )]
    NonFinite {
        /// Source the weights came from.
        file: String,
        /// Full state_dict key.
        key: String,
        /// Flat index of the first non-finite element.
        index: usize,
        /// The value (NaN, inf or -inf).
        value: f32,
    },

    /// Fitting the last layer failed (too few galaxies, singular normal equations).
    #[error("fitting the last layer: {0}")]
    Fit(String),

    /// A stored precision plan (`<model>.precision.json`) cannot be read or written.
    #[error("{path}: {message}")]
    PlanFile {
        /// The plan file.
        path: String,
        /// What went wrong.
        message: String,
    },

    /// A model's inputs do not bind to the data's tensors (names, shapes or dtypes); the
    /// message lists both sides.
    #[error("the model's inputs do not match the data: {message}")]
    Binding {
        /// What does not match, and the inputs and tensors side by side.
        message: String,
    },

    /// An ONNX model that cannot be loaded, optimised or run (the message names the node,
    /// operator or input).
    #[error("{file}: {message}")]
    Onnx {
        /// The model file.
        file: String,
        /// What the runtime reported.
        message: String,
    },
}
