//! Reads PyTorch `torch.save` files without executing code, and writes `TensorDataset` files.
//!
//! The original CAI system ships its model as a whole pickled `nn.Module` wrapped in
//! `nn.DataParallel`, and its data as `TensorDataset` partitions, and loads both with
//! `torch.load(weights_only=False)`, which runs whatever the pickle says. This crate reads
//! the same files with a pickle interpreter of its own (a private module) that:
//!
//! - resolves only a whitelist of globals (tensor/parameter rebuild functions, typed
//!   storages, `OrderedDict`, `set`, `torch.device`, `torch.nn.modules.*` classes, timm's ViT
//!   pieces, the original model's `blocks.*` classes, `DataParallel`, `TensorDataset`) and
//!   refuses anything else with [`Error::ForbiddenGlobal`] naming it and its byte offset;
//! - never calls anything: each whitelisted callable's meaning is written in Rust, and an
//!   allowed class only yields a plain object whose `BUILD` state is recorded;
//! - bounds every allocation and the run time by [`Limits`].
//!
//! Tensors come out as [`TorchTensor`]: dtype, shape and contiguous little-endian bytes
//! (strided views are materialised, `cuda:0` storages load like CPU ones). Model files are
//! read by [`read_checkpoint`], whose [`Checkpoint`] lists tensors in `state_dict()` order
//! whatever the [`CheckpointForm`]; partitions by [`read_tensor_dataset`]; and
//! [`write_tensor_dataset`] writes partitions that `torch.load` reads back as a
//! `TensorDataset`.
//!
//! The zip itself is read by a reader of its own ([`read_zip_index`]): it takes the
//! end records (zip64 included, which torch always writes) at their word and checks them
//! against the central directory, the local headers and the data descriptors, instead of
//! searching for a displaced central directory as general zip readers do (a search that
//! misplaced it in every `torch.save` file with a 21-character name stem).
//!
//! Checkpoints saved as a dict of several things (a training loop's `{"epoch": …,
//! "model_state_dict": …, "optimizer_state_dict": …}`, Lightning's `{"state_dict": …}`,
//! `{"model": module}`) load from the one entry holding a state dict or a module, or the
//! one holding [`ReadOptions::model_keys`]; numpy scalars in them (`numpy.core` and numpy
//! 2's `numpy._core`) become plain values.
//!
//! Neighbours: `cai-model` maps checkpoint keys to layers, `cai-data` wraps partitions.
//!
//! ```
//! use cai_torch::{read_tensor_dataset, write_tensor_dataset, TorchTensor};
//!
//! let images = TorchTensor::from_f32(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0])?;
//! let z = TorchTensor::from_f64(vec![2], &[0.1, 0.2])?;
//! let bytes = write_tensor_dataset(&[images.clone(), z.clone()])?;
//! assert!(cai_torch::is_torch_zip(&bytes));
//! let back = read_tensor_dataset("1.pt", &bytes)?;
//! assert_eq!(back, vec![images, z]);
//! # Ok::<(), cai_torch::Error>(())
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

mod checkpoint;
mod container;
mod dataset;
mod error;
mod limits;
mod pickle;
mod tensor;
mod zipindex;

pub use checkpoint::{Attr, Checkpoint, CheckpointForm, ModuleInfo};
pub use error::{Error, ZipProblem};
pub use limits::{Limits, ReadOptions};
pub use tensor::{DType, TorchTensor};
pub use zipindex::{ZipEntry, ZipIndex, ZipMethod};

/// Reads a model checkpoint: a whole pickled module (bare or in `DataParallel`) or a
/// `state_dict` (with or without `module.` prefixes), auto-detected.
///
/// `source_name` only labels errors. Tensors come in `state_dict()` order with any
/// `module.` prefix removed; a module reachable under two names appears under both, as
/// `state_dict()` does. Uses [`Limits::default`] and the built-in class whitelist.
pub fn read_checkpoint(source_name: &str, bytes: &[u8]) -> Result<Checkpoint, Error> {
    checkpoint::read(source_name, bytes, &ReadOptions::default())
}

/// [`read_checkpoint`] with explicit limits and extra allowed classes.
pub fn read_checkpoint_with(
    source_name: &str,
    bytes: &[u8],
    options: &ReadOptions,
) -> Result<Checkpoint, Error> {
    checkpoint::read(source_name, bytes, options)
}

/// Reads a `TensorDataset` `.pt` file and returns its `tensors` tuple, in order (for the
/// original's partitions: images, magnitudes, redshifts).
pub fn read_tensor_dataset(source_name: &str, bytes: &[u8]) -> Result<Vec<TorchTensor>, Error> {
    dataset::read(source_name, bytes, &ReadOptions::default())
}

/// [`read_tensor_dataset`] with explicit limits and extra allowed classes.
pub fn read_tensor_dataset_with(
    source_name: &str,
    bytes: &[u8],
    options: &ReadOptions,
) -> Result<Vec<TorchTensor>, Error> {
    dataset::read(source_name, bytes, options)
}

/// Writes `tensors` as a `TensorDataset` `.pt` (a `torch.save` zip, pickle protocol 2,
/// storages stored uncompressed and 64-byte aligned) that
/// `torch.load(path, weights_only=False)` returns as a `TensorDataset`.
///
/// Errors if a tensor's data length does not match its dtype and shape.
pub fn write_tensor_dataset(tensors: &[TorchTensor]) -> Result<Vec<u8>, Error> {
    dataset::write(tensors)
}

/// Locates every entry of the zip in `reader` from its end records and central directory,
/// checked against each other and the file (see [`ZipProblem`] for what is refused).
///
/// Reads only the end records, the central directory, and each entry's local header and
/// data descriptor, so a multi-gigabyte file is indexed in a few reads. `source_name`
/// labels errors. Uses [`Limits::default`] for the entry count and directory size.
pub fn read_zip_index<R: std::io::Read + std::io::Seek>(
    source_name: &str,
    reader: R,
) -> Result<ZipIndex, Error> {
    let src = zipindex::SeekSource::new(reader).map_err(|source| Error::Zip {
        file: source_name.to_string(),
        problem: ZipProblem::Io {
            offset: 0,
            len: 0,
            source,
        },
    })?;
    zipindex::index(source_name, src, &Limits::default())
}

/// True if `bytes` look like a `torch.save` zip: a zip header, a readable central directory
/// and an `<archive>/data.pkl` entry. Reads no entry data.
pub fn is_torch_zip(bytes: &[u8]) -> bool {
    container::looks_like_torch_zip(bytes)
}
