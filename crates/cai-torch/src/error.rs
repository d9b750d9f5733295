//! The one error type of this crate.

/// Everything that can go wrong while reading or writing a PyTorch file.
///
/// Each variant names the file (`file`: the source name the caller passed in) and the
/// offending entry, global, key, offset or shape, so a user can tell what was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The bytes are not a zip archive this reader accepts: truncated, end records that
    /// disagree with each other or with the file, overlapping entries…
    #[error("{file}: not a readable zip archive: {problem}")]
    Zip {
        /// Source name of the file.
        file: String,
        /// What is wrong, and where.
        #[source]
        problem: ZipProblem,
    },
    /// A zip entry could not be read fully: bad CRC, truncated data, bad compression.
    #[error("{file}: entry `{entry}` is corrupt: {reason}")]
    CorruptEntry {
        /// Source name of the file.
        file: String,
        /// Entry name inside the zip.
        entry: String,
        /// What went wrong (e.g. the CRC check failed).
        reason: String,
    },
    /// A zip entry name that could escape a directory or is otherwise unsafe.
    #[error("{file}: unsafe entry name {entry:?} in the zip (path traversal or absolute path)")]
    UnsafeEntryName {
        /// Source name of the file.
        file: String,
        /// The refused name.
        entry: String,
    },
    /// The zip does not follow the torch.save layout (`<archive>/data.pkl`, one top folder…).
    #[error("{file}: not a torch.save archive: {reason}")]
    Layout {
        /// Source name of the file.
        file: String,
        /// What is wrong with the layout.
        reason: String,
    },
    /// A required zip entry is missing.
    #[error("{file}: missing zip entry `{entry}`")]
    MissingEntry {
        /// Source name of the file.
        file: String,
        /// Entry name that was looked for.
        entry: String,
    },
    /// The `byteorder` entry holds something other than `little` or `big`.
    #[error("{file}: unknown byteorder {value:?} (expected \"little\" or \"big\")")]
    UnknownByteorder {
        /// Source name of the file.
        file: String,
        /// What the entry held.
        value: String,
    },
    /// The pickle refers to a global that is not on the whitelist.
    #[error("{file}: forbidden global `{global}` at pickle offset {offset}; refusing to load")]
    ForbiddenGlobal {
        /// Source name of the file.
        file: String,
        /// `module.name` of the global.
        global: String,
        /// Byte offset of the opcode in data.pkl.
        offset: usize,
    },
    /// A pickle opcode this reader does not implement (or refuses: INST, OBJ, EXT*…).
    #[error("{file}: unsupported pickle opcode 0x{opcode:02x} ({name}) at offset {offset}")]
    UnsupportedOpcode {
        /// Source name of the file.
        file: String,
        /// The opcode byte.
        opcode: u8,
        /// Its pickletools name, or `unknown`.
        name: &'static str,
        /// Byte offset in data.pkl.
        offset: usize,
    },
    /// A malformed pickle: stack underflow, wrong operand types, truncation, opcodes out of place.
    #[error("{file}: malformed pickle at offset {offset}: {reason}")]
    Pickle {
        /// Source name of the file.
        file: String,
        /// Byte offset of the opcode in data.pkl.
        offset: usize,
        /// What is wrong.
        reason: String,
    },
    /// A resource limit was hit (memo, stack, container size, nesting, tensor bytes…).
    #[error("{file}: limit exceeded: {what} is {got}, the limit is {limit}")]
    Limit {
        /// Source name of the file.
        file: String,
        /// Which limit.
        what: &'static str,
        /// The value that hit it.
        got: u64,
        /// The limit in force (see [`crate::Limits`]).
        limit: u64,
    },
    /// A tensor refers to a storage whose `data/<key>` entry is not in the zip.
    #[error(
        "{file}: tensor `{tensor}` refers to storage `{key}`, which is missing from the archive"
    )]
    MissingStorage {
        /// Source name of the file.
        file: String,
        /// Name of the tensor (state-dict key or dataset index).
        tensor: String,
        /// Storage key.
        key: String,
    },
    /// A storage holds fewer bytes than its tensor's offset, shape and strides need.
    #[error("{file}: tensor `{tensor}` ({view}) needs {needed} bytes of storage `{key}`, which has {got}")]
    StorageTooShort {
        /// Source name of the file.
        file: String,
        /// Name of the tensor.
        tensor: String,
        /// Storage key.
        key: String,
        /// The view: shape, strides and storage offset (in elements).
        view: String,
        /// Bytes needed.
        needed: u64,
        /// Bytes present.
        got: u64,
    },
    /// A shape whose element count overflows or exceeds [`crate::Limits::max_tensor_elements`].
    #[error("{file}: tensor `{tensor}` has an absurd shape {shape:?}: {reason}")]
    AbsurdShape {
        /// Source name of the file.
        file: String,
        /// Name of the tensor.
        tensor: String,
        /// The shape as pickled.
        shape: Vec<u64>,
        /// Why it is refused.
        reason: String,
    },
    /// The top-level object is not what the caller asked for.
    #[error("{file}: expected {expected}, found {found}")]
    UnexpectedContent {
        /// Source name of the file.
        file: String,
        /// What was expected (e.g. `a TensorDataset`).
        expected: &'static str,
        /// What was found.
        found: String,
    },
    /// A tensor whose data length does not match its dtype and shape, or a bad conversion.
    #[error("invalid tensor {what}: dtype {dtype:?}, shape {shape:?}, {len} data bytes")]
    InvalidTensor {
        /// Which tensor (index or name).
        what: String,
        /// Its dtype.
        dtype: crate::DType,
        /// Its shape.
        shape: Vec<usize>,
        /// Length of its data.
        len: usize,
    },
    /// A checkpoint saved as a dict of several things holds more than one entry that
    /// could be the model, and nothing tells them apart.
    #[error(
        "{file}: several entries could hold the model: {}; name the one to use",
        .candidates.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    )]
    AmbiguousCheckpoint {
        /// Source name of the file.
        file: String,
        /// The candidate keys, in file order.
        candidates: Vec<String>,
    },
    /// A checkpoint saved as a dict holds no state_dict and no module.
    #[error(
        "{file}: no entry holds a state_dict or a module; the top-level keys are {}",
        .keys.iter().map(|c| format!("`{c}`")).collect::<Vec<_>>().join(", ")
    )]
    NoModelInCheckpoint {
        /// Source name of the file.
        file: String,
        /// The dict's top-level keys (non-string keys as their Python kind).
        keys: Vec<String>,
    },
    /// Writing the zip failed.
    #[error("writing the .pt zip failed: {0}")]
    Write(#[source] zip::result::ZipError),
}

/// What is wrong with a zip, found while locating its entries ([`Error::Zip`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZipProblem {
    /// Fewer bytes than the smallest zip (an empty one, 22 bytes).
    #[error("{len} bytes is too short for a zip archive (at least 22)")]
    TooShort {
        /// Length of the file.
        len: u64,
    },
    /// No end of central directory record ends the file (truncated, or not a zip).
    #[error(
        "no end of central directory record ends the file (searched its last {searched} bytes); \
         the file is truncated or not a zip"
    )]
    NoEndRecord {
        /// How many bytes from the end were searched.
        searched: u64,
    },
    /// A record lacks its signature or holds impossible values.
    #[error("the {record} at offset {offset} {reason}")]
    BadRecord {
        /// Which record (`zip64 end of central directory record`, `local header of `x``…).
        record: String,
        /// Where it is (or should be).
        offset: u64,
        /// What is wrong.
        reason: String,
    },
    /// Records that must agree do not (counts, sizes, offsets).
    #[error("{0}")]
    Inconsistent(String),
    /// A range a record names lies outside the file or the area it must stay in.
    #[error("the {what} ({start}..{end}) runs past {len}, the end of the area it must lie in")]
    OutOfRange {
        /// What the range holds.
        what: String,
        /// Its first byte.
        start: u64,
        /// One past its last byte.
        end: u64,
        /// Where the area ends (the file's length, or the central directory's start).
        len: u64,
    },
    /// Two entries share bytes (a zip bomb trick, or corruption).
    #[error(
        "entries `{first}` ({}..{}) and `{second}` (from {second_start}) overlap",
        .first_span.0, .first_span.1
    )]
    Overlap {
        /// The entry that starts first.
        first: String,
        /// Its bytes, local header to data descriptor.
        first_span: (u64, u64),
        /// The entry whose local header starts inside it.
        second: String,
        /// Where that local header starts.
        second_start: u64,
    },
    /// A zip split over several disks.
    #[error("multi-disk zip archives are not supported")]
    MultiDisk,
    /// An encrypted entry.
    #[error("entry `{entry}` is encrypted")]
    Encrypted {
        /// The entry's name.
        entry: String,
    },
    /// A compression method other than stored (0) or deflate (8).
    #[error("entry `{entry}` uses compression method {method}; only stored (0) and deflate (8) are read")]
    UnsupportedMethod {
        /// The entry's name.
        entry: String,
        /// The method number.
        method: u16,
    },
    /// Reading the file failed.
    #[error("reading {len} bytes at offset {offset} failed")]
    Io {
        /// Where the read started.
        offset: u64,
        /// How many bytes were asked for.
        len: u64,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
}
