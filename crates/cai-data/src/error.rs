//! The error type of cai-data.
//!
//! Every variant that comes from reading names the file (or other source) it
//! was read from, and what exactly is wrong with it: the tensor, the expected
//! and the found dtype or shape, the byte counts.

use std::path::PathBuf;

/// Errors of reading, writing, generating and partitioning galaxy datasets.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// An operating-system error on a file.
    #[error("{op} {path}: {source}")]
    Io {
        /// What was being done ("open", "read", "write", "rename", ...).
        op: &'static str,
        /// The file.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },

    /// The file ends before something it announces.
    #[error("{file}: truncated file: {what} needs {needed} bytes, the file has {available}")]
    Truncated {
        /// The file or source name.
        file: String,
        /// What could not be read (header length, header, tensor data).
        what: String,
        /// Bytes needed (end offset of what was to be read).
        needed: u64,
        /// Bytes available.
        available: u64,
    },

    /// The safetensors header announces more than the allowed size.
    #[error("{file}: header of {len} bytes is larger than the limit of {max} bytes; refusing to read it")]
    HeaderTooLarge {
        /// The file or source name.
        file: String,
        /// Announced header length.
        len: u64,
        /// The limit.
        max: u64,
    },

    /// The safetensors header is not valid UTF-8 JSON of the expected shape.
    #[error("{file}: invalid safetensors header: {reason}")]
    BadHeader {
        /// The file or source name.
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A required tensor is absent.
    #[error("{file}: missing tensor `{tensor}` (found: {found})")]
    MissingTensor {
        /// The file or source name.
        file: String,
        /// The missing tensor.
        tensor: String,
        /// The tensors that are present, comma separated.
        found: String,
    },

    /// A tensor has a dtype this reader does not accept.
    #[error("{file}: tensor `{tensor}` has dtype {got}, expected {expected}")]
    WrongDtype {
        /// The file or source name.
        file: String,
        /// The tensor.
        tensor: String,
        /// Accepted dtypes.
        expected: String,
        /// Found dtype.
        got: String,
    },

    /// A tensor has the wrong rank or shape.
    #[error("{file}: tensor `{tensor}` has shape {got:?}, expected {expected}")]
    WrongShape {
        /// The file or source name.
        file: String,
        /// The tensor.
        tensor: String,
        /// The expected shape, in words (e.g. "[N, 5]").
        expected: String,
        /// The found shape.
        got: Vec<usize>,
    },

    /// Tensors disagree about the number of galaxies.
    #[error("{file}: tensor `{tensor}` has {got} galaxies but `images` has {expected}")]
    CountMismatch {
        /// The file or source name.
        file: String,
        /// The tensor that disagrees.
        tensor: String,
        /// N from `images`.
        expected: u64,
        /// N from this tensor.
        got: u64,
    },

    /// Two tensors of one input disagree on the number of galaxies (their first dimension).
    #[error("{file}: tensor `{tensor}` has {got} galaxies (first dimension) but `{other}` has {expected}")]
    GalaxyCount {
        /// The input file.
        file: String,
        /// The tensor that differs.
        tensor: String,
        /// Its first dimension.
        got: u64,
        /// The tensor it was compared with.
        other: String,
        /// That tensor's first dimension.
        expected: u64,
    },

    /// A NumPy `.npy` array or `.npz` archive that cannot be read.
    #[error("{file}: {reason}")]
    BadNpy {
        /// The file (an `.npz` member as `archive.npz:member.npy`).
        file: String,
        /// What is wrong.
        reason: String,
    },

    /// A tensor's byte range disagrees with its shape or with the file.
    #[error("{file}: tensor `{tensor}` data is inconsistent: {reason}")]
    BadTensorData {
        /// The file or source name.
        file: String,
        /// The tensor.
        tensor: String,
        /// What is wrong (offsets vs. shape vs. file length).
        reason: String,
    },

    /// The `__metadata__` of a file contradicts this format.
    #[error("{file}: metadata `{key}` is {got:?}, expected {expected:?}")]
    BadMetadata {
        /// The file or source name.
        file: String,
        /// The metadata key.
        key: String,
        /// Expected value.
        expected: String,
        /// Found value.
        got: String,
    },

    /// The file is in a format this build does not read (yet).
    #[error("{file}: unsupported format: {detected}; {hint}")]
    UnsupportedFormat {
        /// The file or source name.
        file: String,
        /// What the file looks like.
        detected: String,
        /// What to do about it.
        hint: String,
    },

    /// A PyTorch `.pt` file that cannot be read safely (the message names the file).
    #[error("{0}")]
    Torch(#[source] cai_torch::Error),

    /// An in-memory partition whose fields disagree with each other.
    #[error("invalid partition: {reason}")]
    InvalidPartition {
        /// What is wrong.
        reason: String,
    },

    /// A galaxy range outside the dataset.
    #[error("{file}: range {start}..{start}+{count} is outside the dataset of {len} galaxies")]
    OutOfRange {
        /// The file or source name.
        file: String,
        /// First galaxy asked for.
        start: u64,
        /// Number of galaxies asked for.
        count: u64,
        /// Galaxies in the dataset.
        len: u64,
    },

    /// A streaming writer was used out of order or finished early.
    #[error("{path}: dataset writer: {reason}")]
    Writer {
        /// The final path of the dataset being written.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },

    /// A manifest that cannot be read or that contradicts itself.
    #[error("{source_name}: invalid manifest: {reason}")]
    Manifest {
        /// Where the manifest came from.
        source_name: String,
        /// What is wrong.
        reason: String,
    },

    /// A partition whose bytes do not match its manifest entry.
    #[error("{key}: partition does not match the manifest: {reason}")]
    Checksum {
        /// The partition key.
        key: String,
        /// What differs (size or sha256).
        reason: String,
    },

    /// A size such as "25MB" that cannot be parsed.
    #[error("invalid size {input:?}: {reason} (examples: 25MB, 1.5GB, 512KB, 1000000)")]
    ParseSize {
        /// The text given.
        input: String,
        /// What is wrong.
        reason: String,
    },
}

/// A `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An [`Error::Io`] for `op` on `path`.
    pub(crate) fn io(op: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            op,
            path: path.into(),
            source,
        }
    }
}
