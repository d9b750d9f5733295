//! cai-data: galaxy datasets for CAI-rs.
//!
//! - [`native`]: the native partition format (one safetensors file with
//!   `images` `[N,5,H,W]`, `magnitudes` `[N,5]`, optional `redshift` and
//!   `object_id`), read from bytes by [`read_partition`] (which also detects
//!   the original's `.pt` files) and written by [`write_partition`].
//! - [`dataset`]: streaming access to big native files, [`DatasetReader`]
//!   (positioned reads of galaxy ranges) and [`DatasetWriter`] (chunked
//!   writes to `<path>.partial`, renamed on finish).
//! - [`synth`]: deterministic, plausible synthetic SDSS-like galaxies.
//! - [`partition`]: cutting a dataset into partitions plus a `manifest.json`.
//! - [`tensors`]: partitions of any model, [`TensorSet`] (named tensors sharing the
//!   galaxy dimension), read from safetensors, `.pt`, `.npy` or `.npz` by
//!   [`read_tensors`] and written by [`write_tensors`]; [`npy`] parses NumPy files.
//!
//! This crate knows nothing about object stores or async: it works on bytes,
//! files and callbacks, and the caller moves the bytes.
//!
//! ```
//! use cai_data::{generate, read_partition, write_partition, SynthConfig};
//!
//! let cfg = SynthConfig { galaxies: 100, seed: 7, size: 32 };
//! let p = generate(&cfg, 0, 4);
//! let bytes = write_partition(&p).unwrap();
//! let q = read_partition("example.safetensors", &bytes).unwrap();
//! assert_eq!(p, q);
//! assert_eq!(q.image_shape(), [5, 32, 32]);
//! ```
#![forbid(unsafe_code)]
#![deny(missing_docs)]

pub mod dataset;
pub mod error;
pub mod native;
pub mod npy;
pub mod partition;
pub mod synth;
pub mod tensors;

pub use dataset::{DatasetReader, DatasetSpec, DatasetWriter, GalaxySource};
pub use error::{Error, Result};
pub use native::{
    detect_format, partition_from_tensors, read_partition, write_partition, ElemType, Format,
    Partition, RawTensor,
};
pub use native::{read_torch, write_torch};
pub use partition::{
    galaxies_per_partition, parse_size, partition_dataset, Manifest, ManifestEntry, PartitionFile,
};
pub use partition::{partition_dataset_as, partition_key_as, partition_tensor_set, FileFormat};
pub use synth::{galaxy_params, generate, generate_into, write_dataset, GalaxyParams, SynthConfig};
pub use tensors::{
    read_tensors, write_tensors, NamedTensor, StoredDtype, TensorInfo, TensorSet, TensorValues,
};
