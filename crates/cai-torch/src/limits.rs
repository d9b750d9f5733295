//! Resource limits and read options.

/// Bounds that keep a hostile file from hanging the reader or exhausting memory.
///
/// Every limit is checked before the matching allocation. The defaults fit the original's
/// files (a ≈60 MB checkpoint with a ≈60 KB pickle, 100 MB partitions) with wide margins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limits {
    /// Largest `data.pkl` accepted, in bytes (default 16 MiB).
    pub max_pickle_bytes: u64,
    /// Most pickle opcodes executed (default 8 Mi). Pickles have no loops, so this and
    /// `max_pickle_bytes` bound the run time.
    pub max_ops: u64,
    /// Deepest pickle stack, counting marks (default 100,000).
    pub max_stack: usize,
    /// Most memo entries (default 1 Mi).
    pub max_memo: usize,
    /// Longest list, tuple, dict or set (default 4 Mi items).
    pub max_container_len: usize,
    /// Most lists, dicts, sets and objects created (default 1 Mi).
    pub max_objects: usize,
    /// Deepest nesting of tuples, and of modules inside modules (default 256).
    pub max_depth: usize,
    /// Most modules visited when walking a whole-module checkpoint, counting a module
    /// reached by two paths twice (default 100,000).
    pub max_modules: usize,
    /// Most elements in one tensor (default 2^31).
    pub max_tensor_elements: u64,
    /// Most bytes of tensor data read and produced by one call, all tensors together
    /// (default 8 GiB).
    pub max_total_tensor_bytes: u64,
    /// Most entries in the zip (default 100,000).
    pub max_zip_entries: usize,
    /// Largest zip central directory, in bytes (default 64 MiB; 100,000 entries with
    /// 100-byte names take ≈15 MB).
    pub max_central_directory_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_pickle_bytes: 16 << 20,
            max_ops: 8 << 20,
            max_stack: 100_000,
            max_memo: 1 << 20,
            max_container_len: 4 << 20,
            max_objects: 1 << 20,
            max_depth: 256,
            max_modules: 100_000,
            max_tensor_elements: 1 << 31,
            max_total_tensor_bytes: 8 << 30,
            max_zip_entries: 100_000,
            max_central_directory_bytes: 64 << 20,
        }
    }
}

/// Options for the `*_with` readers: limits, and class paths to allow beyond the built-in
/// whitelist.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ReadOptions {
    /// Resource limits.
    pub limits: Limits,
    /// Extra `module.Class` paths to accept as plain objects (e.g. a model class of your
    /// own). They are never called: an allowed class only names an object whose state is
    /// recorded.
    pub extra_classes: Vec<String>,
    /// State-dict keys the caller's model has (e.g. `patch_embed.proj.weight`). In a
    /// checkpoint saved as a dict of several things, the one entry whose tensors include
    /// all of them is the model; a prefix they all sit under (Lightning's `model.`) is
    /// removed from the keys. Empty: a dict checkpoint must hold exactly one candidate.
    pub model_keys: Vec<String>,
}
