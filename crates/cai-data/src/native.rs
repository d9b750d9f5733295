//! The native partition format: one safetensors file per partition or dataset.
//!
//! A file holds the tensors
//!
//! | name         | dtype | shape          | required |
//! |--------------|-------|----------------|----------|
//! | `images`     | F32   | `[N, 5, H, W]` | yes      |
//! | `magnitudes` | F32   | `[N, 5]`       | yes      |
//! | `redshift`   | F32   | `[N]`          | no       |
//! | `object_id`  | I64   | `[N]`          | no       |
//!
//! and the `__metadata__` `format = "cai-partition"`, `version = "1"`,
//! `bands = "u,g,r,i,z"`. Bands are in that order in both `images` and
//! `magnitudes`.
//!
//! Writers here lay the data out in the canonical safetensors order (by dtype
//! alignment, then by name): `object_id`, `images`, `magnitudes`, `redshift`,
//! with the header JSON written in a fixed key order, so equal partitions give
//! equal bytes (and equal checksums). Readers accept any safetensors file with
//! those tensors in any order; they also accept F64 for the float tensors, I32
//! for `object_id`, `[N, 1]` for `redshift`, and files without `__metadata__`
//! (other tools' exports). Unknown extra tensors are ignored.
//!
//! [`read_partition`] is a pure function of bytes that never panics (it is
//! fuzzed by a property test and by `fuzz/`); it detects the format by its first
//! bytes and reads the original's PyTorch `.pt` `TensorDataset` files too (see
//! [`read_torch`]; [`write_torch`] writes them).

use std::collections::BTreeMap;

use crate::error::{Error, Result};

/// The `format` metadata value of native files.
pub const FORMAT_NAME: &str = "cai-partition";
/// The `version` metadata value this crate writes and reads.
pub const FORMAT_VERSION: &str = "1";
/// The band order of images and magnitudes, as written in the `bands` metadata.
pub const BANDS: &str = "u,g,r,i,z";
/// Number of photometric bands (image channels and magnitudes per galaxy).
pub const NUM_BANDS: usize = 5;
/// Largest safetensors header accepted (the safetensors crate's own limit).
pub const MAX_HEADER_BYTES: u64 = 100_000_000;

/// Tensor names used by the native format.
pub(crate) const IMAGES: &str = "images";
pub(crate) const MAGNITUDES: &str = "magnitudes";
pub(crate) const REDSHIFT: &str = "redshift";
pub(crate) const OBJECT_ID: &str = "object_id";

/// A set of galaxies held in memory: images, magnitudes and optional labels.
///
/// Arrays are row-major: `images` is `[n, channels, height, width]`,
/// `magnitudes` is `[n, channels]` (one magnitude per band), `redshift` and
/// `object_id` are `[n]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Partition {
    /// Number of galaxies.
    pub n: usize,
    /// Channels (bands) per image; 5 (u, g, r, i, z) in every file.
    pub channels: usize,
    /// Image height in pixels.
    pub height: usize,
    /// Image width in pixels.
    pub width: usize,
    /// Pixel values, `[n, channels, height, width]`.
    pub images: Vec<f32>,
    /// Magnitudes, `[n, channels]`.
    pub magnitudes: Vec<f32>,
    /// Spectroscopic redshifts (labels), `[n]`, if known.
    pub redshift: Option<Vec<f32>>,
    /// Object identifiers, `[n]`, if known.
    pub object_id: Option<Vec<i64>>,
}

impl Partition {
    /// An empty partition (no galaxies) of images `[channels, height, width]`.
    pub fn empty(image_shape: [usize; 3], redshift: bool, object_id: bool) -> Self {
        Partition {
            n: 0,
            channels: image_shape[0],
            height: image_shape[1],
            width: image_shape[2],
            images: Vec::new(),
            magnitudes: Vec::new(),
            redshift: redshift.then(Vec::new),
            object_id: object_id.then(Vec::new),
        }
    }

    /// `[channels, height, width]` of one image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.channels, self.height, self.width]
    }

    /// Number of values in one image (`channels * height * width`).
    pub fn image_len(&self) -> usize {
        self.channels
            .saturating_mul(self.height)
            .saturating_mul(self.width)
    }

    /// The image of galaxy `i` (`[channels, height, width]`), if `i < n`.
    pub fn image(&self, i: usize) -> Option<&[f32]> {
        let len = self.image_len();
        self.images
            .get(i.checked_mul(len)?..i.checked_add(1)?.checked_mul(len)?)
    }

    /// The magnitudes of galaxy `i` (`[channels]`), if `i < n`.
    pub fn magnitudes_of(&self, i: usize) -> Option<&[f32]> {
        let c = self.channels;
        self.magnitudes
            .get(i.checked_mul(c)?..i.checked_add(1)?.checked_mul(c)?)
    }

    /// Checks that every array has the length its shape implies.
    pub fn validate(&self) -> Result<()> {
        let bad = |reason: String| Err(Error::InvalidPartition { reason });
        if self.channels == 0 || self.height == 0 || self.width == 0 {
            return bad(format!(
                "image shape [{}, {}, {}] has a zero dimension",
                self.channels, self.height, self.width
            ));
        }
        let Some(want) = self
            .n
            .checked_mul(self.channels)
            .and_then(|v| v.checked_mul(self.height))
            .and_then(|v| v.checked_mul(self.width))
        else {
            return bad(format!(
                "shape [{}, {}, {}, {}] overflows",
                self.n, self.channels, self.height, self.width
            ));
        };
        if self.images.len() != want {
            return bad(format!(
                "images has {} values, shape [{}, {}, {}, {}] needs {want}",
                self.images.len(),
                self.n,
                self.channels,
                self.height,
                self.width
            ));
        }
        if self.magnitudes.len() != self.n * self.channels {
            return bad(format!(
                "magnitudes has {} values, shape [{}, {}] needs {}",
                self.magnitudes.len(),
                self.n,
                self.channels,
                self.n * self.channels
            ));
        }
        if let Some(z) = &self.redshift {
            if z.len() != self.n {
                return bad(format!("redshift has {} values, n is {}", z.len(), self.n));
            }
        }
        if let Some(id) = &self.object_id {
            if id.len() != self.n {
                return bad(format!(
                    "object_id has {} values, n is {}",
                    id.len(),
                    self.n
                ));
            }
        }
        Ok(())
    }

    /// Galaxies `start..start + count`, clamped to `0..n` (so a range past the
    /// end gives fewer, possibly zero, galaxies).
    pub fn slice(&self, start: usize, count: usize) -> Partition {
        let start = start.min(self.n);
        let end = start.saturating_add(count).min(self.n);
        let il = self.image_len();
        let c = self.channels;
        let take = |v: &Vec<f32>, per: usize| {
            v.get(start * per..end * per)
                .map(<[f32]>::to_vec)
                .unwrap_or_default()
        };
        Partition {
            n: end - start,
            channels: self.channels,
            height: self.height,
            width: self.width,
            images: take(&self.images, il),
            magnitudes: take(&self.magnitudes, c),
            redshift: self
                .redshift
                .as_ref()
                .map(|z| z.get(start..end).map(<[f32]>::to_vec).unwrap_or_default()),
            object_id: self
                .object_id
                .as_ref()
                .map(|z| z.get(start..end).map(<[i64]>::to_vec).unwrap_or_default()),
        }
    }

    /// Number of NaN or infinite values in `images` and `magnitudes`.
    pub fn nonfinite_count(&self) -> usize {
        self.images
            .iter()
            .chain(&self.magnitudes)
            .filter(|v| !v.is_finite())
            .count()
    }

    /// Appends the galaxies of `other` (same image shape and label columns).
    pub fn extend(&mut self, other: &Partition) -> Result<()> {
        if other.image_shape() != self.image_shape() {
            return Err(Error::InvalidPartition {
                reason: format!(
                    "cannot append images {:?} to images {:?}",
                    other.image_shape(),
                    self.image_shape()
                ),
            });
        }
        if other.redshift.is_some() != self.redshift.is_some()
            || other.object_id.is_some() != self.object_id.is_some()
        {
            return Err(Error::InvalidPartition {
                reason: "cannot append partitions with different label columns".into(),
            });
        }
        self.n += other.n;
        self.images.extend_from_slice(&other.images);
        self.magnitudes.extend_from_slice(&other.magnitudes);
        if let (Some(a), Some(b)) = (&mut self.redshift, &other.redshift) {
            a.extend_from_slice(b);
        }
        if let (Some(a), Some(b)) = (&mut self.object_id, &other.object_id) {
            a.extend_from_slice(b);
        }
        Ok(())
    }
}

/// What a file looks like, judged from its first bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// A safetensors file (the native format; safetensors has no magic, so
    /// this is also the answer for anything unrecognised and the native
    /// reader then says what is wrong).
    Native,
    /// A zip archive holding a PyTorch `torch.save` pickle (`.pt`).
    TorchZip,
    /// A zip archive of `.npy` arrays (`.npz`).
    Npz,
    /// A NumPy `.npy` array.
    Npy,
    /// A PyTorch file in the legacy (pre-1.6, non-zip) pickle format.
    TorchLegacy,
}

/// Detects the format of `bytes` from its magic bytes.
pub fn detect_format(bytes: &[u8]) -> Format {
    // A safetensors header is a JSON object right after the 8-byte length.
    if bytes.get(8) == Some(&b'{') {
        return Format::Native;
    }
    if bytes.starts_with(crate::npy::NPY_MAGIC) {
        return Format::Npy;
    }
    if bytes.starts_with(b"PK\x03\x04") {
        // First local file header: name length at 26, name at 30.
        let name_len = bytes
            .get(26..28)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .unwrap_or(0);
        let name = bytes.get(30..30 + name_len).unwrap_or(&[]);
        if name.ends_with(b".npy") {
            Format::Npz
        } else {
            Format::TorchZip
        }
    } else if bytes.starts_with(b"\x80\x02\x8a\x0a") {
        // Pickle protocol 2, LONG1 of 10 bytes: torch's legacy magic number.
        Format::TorchLegacy
    } else {
        Format::Native
    }
}

/// Reads a partition or dataset from the whole file's bytes.
///
/// `source_name` is used only in error messages (a path, a URL or a key).
/// The format is detected by [`detect_format`]; native files are read here,
/// `.pt` zips go to [`read_torch`]. Never panics, whatever the bytes.
pub fn read_partition(source_name: &str, bytes: &[u8]) -> Result<Partition> {
    match detect_format(bytes) {
        Format::Native => read_native(source_name, bytes),
        Format::TorchZip => read_torch(source_name, bytes),
        Format::Npz | Format::Npy => Err(Error::UnsupportedFormat {
            file: source_name.to_string(),
            detected: "a NumPy array (.npy or .npz)".into(),
            hint: "cut it into native partitions with `cai partition --input FILE` first".into(),
        }),
        Format::TorchLegacy => Err(Error::UnsupportedFormat {
            file: source_name.to_string(),
            detected: "a legacy (non-zip) PyTorch pickle".into(),
            hint: "re-save it with torch.save(..., _use_new_zipfile_serialization=True)".into(),
        }),
    }
}

/// Reads the original's PyTorch `.pt` `TensorDataset` (a partition `1.pt` … or a whole
/// dataset) through `cai-torch`, which interprets the pickle without executing anything.
///
/// The dataset's `tensors` tuple is positional: images `[N, 5, H, W]`, magnitudes
/// `[N, 5]`, then optionally redshift (`[N]` or `[N, 1]`) and object ids. Floats may be
/// f32 or f64 (converted to f32, as the original model does); ids i32 or i64. Errors name
/// `source_name`: hostile or damaged files (forbidden globals, bad CRC, short storages,
/// absurd shapes…) come back as [`Error::Torch`].
pub fn read_torch(source_name: &str, bytes: &[u8]) -> Result<Partition> {
    let tensors = cai_torch::read_tensor_dataset(source_name, bytes).map_err(Error::Torch)?;
    partition_of_torch(source_name, &tensors)
}

/// AstroMAE's partition from a `TensorDataset`'s positional tensors (see [`read_torch`]).
pub(crate) fn partition_of_torch(
    source_name: &str,
    tensors: &[cai_torch::TorchTensor],
) -> Result<Partition> {
    let raw: Vec<RawTensor<'_>> = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| raw_of_torch(source_name, i, t))
        .collect::<Result<_>>()?;
    let found = || {
        raw.iter()
            .enumerate()
            .map(|(i, _)| format!("tensors[{i}]"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    match raw.as_slice() {
        [images, magnitudes, rest @ ..] if rest.len() <= 2 => {
            partition_from_tensors(source_name, images, magnitudes, rest.first(), rest.get(1))
        }
        [_, _, ..] => Err(Error::UnsupportedFormat {
            file: source_name.to_string(),
            detected: format!("a TensorDataset of {} tensors", raw.len()),
            hint: "expected (images, magnitudes[, redshift[, object_id]])".into(),
        }),
        _ => Err(Error::MissingTensor {
            file: source_name.to_string(),
            tensor: if raw.is_empty() { IMAGES } else { MAGNITUDES }.to_string(),
            found: if raw.is_empty() {
                "an empty TensorDataset".into()
            } else {
                found()
            },
        }),
    }
}

/// Views a `cai-torch` tensor as a [`RawTensor`], refusing dtypes partitions never use.
fn raw_of_torch<'a>(
    file: &str,
    index: usize,
    t: &'a cai_torch::TorchTensor,
) -> Result<RawTensor<'a>> {
    use cai_torch::DType;
    let dtype = match t.dtype {
        DType::F32 => ElemType::F32,
        DType::F64 => ElemType::F64,
        DType::I32 => ElemType::I32,
        DType::I64 => ElemType::I64,
        other => {
            let names = [IMAGES, MAGNITUDES, REDSHIFT, OBJECT_ID];
            return Err(Error::WrongDtype {
                file: file.to_string(),
                tensor: names
                    .get(index)
                    .map_or_else(|| format!("tensors[{index}]"), |n| n.to_string()),
                expected: "F32 or F64 (I32/I64 for object ids)".into(),
                got: format!("{other:?}"),
            });
        }
    };
    Ok(RawTensor {
        dtype,
        shape: t.shape.clone(),
        data: &t.data,
    })
}

/// Writes a partition as the original's `TensorDataset` `.pt` (what its splitter saved):
/// `(images f32 [N,5,H,W], magnitudes f32 [N,5][, redshift f32 [N]])`, readable by
/// `torch.load(path, weights_only=False)`. Object ids are not written (the original's
/// files have none; a partition's galaxies are its rows, in dataset order).
pub fn write_torch(p: &Partition) -> Result<Vec<u8>> {
    p.validate()?;
    let mut tensors = vec![
        cai_torch::TorchTensor::from_f32(vec![p.n, p.channels, p.height, p.width], &p.images)
            .map_err(Error::Torch)?,
        cai_torch::TorchTensor::from_f32(vec![p.n, p.channels], &p.magnitudes)
            .map_err(Error::Torch)?,
    ];
    if let Some(z) = &p.redshift {
        tensors.push(cai_torch::TorchTensor::from_f32(vec![p.n], z).map_err(Error::Torch)?);
    }
    cai_torch::write_tensor_dataset(&tensors).map_err(Error::Torch)
}

/// Element types accepted in input tensors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ElemType {
    /// 32-bit float.
    F32,
    /// 64-bit float (converted to f32 when read).
    F64,
    /// 32-bit signed integer.
    I32,
    /// 64-bit signed integer.
    I64,
}

impl ElemType {
    /// Bytes per element.
    pub fn size(self) -> usize {
        match self {
            ElemType::F32 | ElemType::I32 => 4,
            ElemType::F64 | ElemType::I64 => 8,
        }
    }

    fn is_float(self) -> bool {
        matches!(self, ElemType::F32 | ElemType::F64)
    }

    fn name(self) -> &'static str {
        match self {
            ElemType::F32 => "F32",
            ElemType::F64 => "F64",
            ElemType::I32 => "I32",
            ElemType::I64 => "I64",
        }
    }
}

/// A contiguous little-endian tensor handed over by another reader (such as
/// the PyTorch reader), to be checked and turned into a [`Partition`].
#[derive(Debug, Clone)]
pub struct RawTensor<'a> {
    /// Element type.
    pub dtype: ElemType,
    /// Shape, outermost first.
    pub shape: Vec<usize>,
    /// `product(shape) * dtype.size()` bytes, little-endian, row-major.
    pub data: &'a [u8],
}

/// Checks and converts positional tensors (`images`, `magnitudes`, optional
/// `redshift`, optional `object_id`) into a [`Partition`]; errors name `file`.
pub fn partition_from_tensors(
    file: &str,
    images: &RawTensor<'_>,
    magnitudes: &RawTensor<'_>,
    redshift: Option<&RawTensor<'_>>,
    object_id: Option<&RawTensor<'_>>,
) -> Result<Partition> {
    let specs = [
        (IMAGES, Some(images)),
        (MAGNITUDES, Some(magnitudes)),
        (REDSHIFT, redshift),
        (OBJECT_ID, object_id),
    ];
    for (name, t) in specs {
        if let Some(t) = t {
            let want = numel_bytes(file, name, &t.shape, t.dtype)?;
            if want != t.data.len() as u64 {
                return Err(Error::BadTensorData {
                    file: file.to_string(),
                    tensor: name.to_string(),
                    reason: format!(
                        "shape {:?} of {} needs {want} bytes, got {}",
                        t.shape,
                        t.dtype.name(),
                        t.data.len()
                    ),
                });
            }
        }
    }
    let layout = check_layout(
        file,
        (images.dtype, &images.shape),
        (magnitudes.dtype, &magnitudes.shape),
        redshift.map(|t| (t.dtype, t.shape.as_slice())),
        object_id.map(|t| (t.dtype, t.shape.as_slice())),
    )?;
    let mut p = Partition {
        n: layout.n,
        channels: layout.c,
        height: layout.h,
        width: layout.w,
        images: Vec::new(),
        magnitudes: Vec::new(),
        redshift: None,
        object_id: None,
    };
    decode_floats(images.dtype, images.data, &mut p.images);
    decode_floats(magnitudes.dtype, magnitudes.data, &mut p.magnitudes);
    if let Some(t) = redshift {
        let mut z = Vec::new();
        decode_floats(t.dtype, t.data, &mut z);
        p.redshift = Some(z);
    }
    if let Some(t) = object_id {
        let mut id = Vec::new();
        decode_ints(t.dtype, t.data, &mut id);
        p.object_id = Some(id);
    }
    Ok(p)
}

/// Writes a partition as a native safetensors file, whole, in memory.
///
/// The layout is deterministic: equal partitions give equal bytes.
pub fn write_partition(p: &Partition) -> Result<Vec<u8>> {
    p.validate()?;
    let layout = Layout::for_write(
        p.n as u64,
        p.image_shape(),
        p.redshift.is_some(),
        p.object_id.is_some(),
    )?;
    let total = usize::try_from(layout.file_len()).map_err(|_| Error::InvalidPartition {
        reason: "partition too large to hold in memory".into(),
    })?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&layout.header_bytes());
    // Canonical order: object_id, images, magnitudes, redshift.
    if let Some(ids) = &p.object_id {
        for v in ids {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    for v in p.images.iter().chain(&p.magnitudes) {
        out.extend_from_slice(&v.to_le_bytes());
    }
    if let Some(z) = &p.redshift {
        for v in z {
            out.extend_from_slice(&v.to_le_bytes());
        }
    }
    debug_assert_eq!(out.len(), total);
    Ok(out)
}

fn read_native(file: &str, bytes: &[u8]) -> Result<Partition> {
    let total = bytes.len() as u64;
    let header_len = header_len(file, bytes.get(..8), total)?;
    let json = bytes.get(8..8 + header_len as usize).unwrap_or(&[]);
    let layout = Layout::parse(file, json, total)?;
    let span_bytes = |s: &Span| -> &[u8] {
        // Layout::parse checked 0 <= start <= end <= total.
        bytes.get(s.start as usize..s.end as usize).unwrap_or(&[])
    };
    let mut p = Partition {
        n: layout.n,
        channels: layout.c,
        height: layout.h,
        width: layout.w,
        images: Vec::new(),
        magnitudes: Vec::new(),
        redshift: None,
        object_id: None,
    };
    decode_floats(
        layout.images.dtype,
        span_bytes(&layout.images),
        &mut p.images,
    );
    decode_floats(
        layout.magnitudes.dtype,
        span_bytes(&layout.magnitudes),
        &mut p.magnitudes,
    );
    if let Some(s) = &layout.redshift {
        let mut z = Vec::new();
        decode_floats(s.dtype, span_bytes(s), &mut z);
        p.redshift = Some(z);
    }
    if let Some(s) = &layout.object_id {
        let mut id = Vec::new();
        decode_ints(s.dtype, span_bytes(s), &mut id);
        p.object_id = Some(id);
    }
    Ok(p)
}

/// Reads the 8-byte header length and checks it against the limit and the
/// file length. `first8` is `None` when the file is shorter than 8 bytes.
pub(crate) fn header_len(file: &str, first8: Option<&[u8]>, total: u64) -> Result<u64> {
    let Some(Ok(arr)) = first8.map(<[u8; 8]>::try_from) else {
        return Err(Error::Truncated {
            file: file.to_string(),
            what: "the 8-byte safetensors header length".into(),
            needed: 8,
            available: total,
        });
    };
    let len = u64::from_le_bytes(arr);
    if len > MAX_HEADER_BYTES {
        return Err(Error::HeaderTooLarge {
            file: file.to_string(),
            len,
            max: MAX_HEADER_BYTES,
        });
    }
    if 8 + len > total {
        return Err(Error::Truncated {
            file: file.to_string(),
            what: "the safetensors header".into(),
            needed: 8 + len,
            available: total,
        });
    }
    Ok(len)
}

/// Where one tensor lives in a file: absolute byte offsets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Span {
    pub dtype: ElemType,
    pub start: u64,
    pub end: u64,
}

/// The checked layout of a native file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Layout {
    /// Header JSON length (without the 8-byte prefix).
    pub header_len: u64,
    pub n: usize,
    pub c: usize,
    pub h: usize,
    pub w: usize,
    pub images: Span,
    pub magnitudes: Span,
    pub redshift: Option<Span>,
    pub object_id: Option<Span>,
}

/// Shape facts derived from the tensors' shapes.
struct Shapes {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
}

fn elem_type(file: &str, tensor: &str, dtype: safetensors::Dtype, float: bool) -> Result<ElemType> {
    use safetensors::Dtype as D;
    let t = match dtype {
        D::F32 => Some(ElemType::F32),
        D::F64 => Some(ElemType::F64),
        D::I32 => Some(ElemType::I32),
        D::I64 => Some(ElemType::I64),
        _ => None,
    };
    match t {
        Some(t) if t.is_float() == float => Ok(t),
        _ => Err(Error::WrongDtype {
            file: file.to_string(),
            tensor: tensor.to_string(),
            expected: if float {
                "F32 (or F64)"
            } else {
                "I64 (or I32)"
            }
            .into(),
            got: format!("{dtype:?}"),
        }),
    }
}

fn numel_bytes(file: &str, tensor: &str, shape: &[usize], dtype: ElemType) -> Result<u64> {
    shape
        .iter()
        .try_fold(dtype.size() as u64, |acc, &d| acc.checked_mul(d as u64))
        .ok_or_else(|| Error::BadTensorData {
            file: file.to_string(),
            tensor: tensor.to_string(),
            reason: format!("shape {shape:?} overflows"),
        })
}

fn check_layout(
    file: &str,
    images: (ElemType, &[usize]),
    magnitudes: (ElemType, &[usize]),
    redshift: Option<(ElemType, &[usize])>,
    object_id: Option<(ElemType, &[usize])>,
) -> Result<Shapes> {
    let wrong_shape = |tensor: &str, expected: &str, got: &[usize]| Error::WrongShape {
        file: file.to_string(),
        tensor: tensor.to_string(),
        expected: expected.to_string(),
        got: got.to_vec(),
    };
    let float_only = |tensor: &str, t: ElemType| {
        if t.is_float() {
            Ok(())
        } else {
            Err(Error::WrongDtype {
                file: file.to_string(),
                tensor: tensor.to_string(),
                expected: "F32 (or F64)".into(),
                got: t.name().into(),
            })
        }
    };
    float_only(IMAGES, images.0)?;
    float_only(MAGNITUDES, magnitudes.0)?;
    let &[n, c, h, w] = images.1 else {
        return Err(wrong_shape(IMAGES, "[N, 5, H, W] (rank 4)", images.1));
    };
    if c != NUM_BANDS || h == 0 || w == 0 {
        return Err(wrong_shape(
            IMAGES,
            "[N, 5, H, W] with bands u,g,r,i,z on axis 1 and H, W > 0",
            images.1,
        ));
    }
    let count = |tensor: &str, got: usize| {
        if got == n {
            Ok(())
        } else {
            Err(Error::CountMismatch {
                file: file.to_string(),
                tensor: tensor.to_string(),
                expected: n as u64,
                got: got as u64,
            })
        }
    };
    match magnitudes.1 {
        &[m, 5] => count(MAGNITUDES, m)?,
        other => return Err(wrong_shape(MAGNITUDES, "[N, 5]", other)),
    }
    if let Some((t, shape)) = redshift {
        float_only(REDSHIFT, t)?;
        match shape {
            &[m] | &[m, 1] => count(REDSHIFT, m)?,
            other => return Err(wrong_shape(REDSHIFT, "[N] (or [N, 1])", other)),
        }
    }
    if let Some((t, shape)) = object_id {
        if t.is_float() {
            return Err(Error::WrongDtype {
                file: file.to_string(),
                tensor: OBJECT_ID.to_string(),
                expected: "I64 (or I32)".into(),
                got: t.name().into(),
            });
        }
        match shape {
            &[m] => count(OBJECT_ID, m)?,
            other => return Err(wrong_shape(OBJECT_ID, "[N]", other)),
        }
    }
    Ok(Shapes { n, c, h, w })
}

impl Layout {
    /// Parses and checks the header JSON of a file of `total` bytes.
    pub(crate) fn parse(file: &str, json: &[u8], total: u64) -> Result<Layout> {
        let bad = |reason: String| Error::BadHeader {
            file: file.to_string(),
            reason,
        };
        let header_len = json.len() as u64;
        let data_start = 8 + header_len;
        let text = std::str::from_utf8(json).map_err(|e| {
            bad(format!(
                "header is not UTF-8 ({e}); this is not a safetensors file"
            ))
        })?;
        let map: serde_json::Map<String, serde_json::Value> =
            serde_json::from_str(text).map_err(|e| {
                bad(format!(
                    "header is not a JSON object ({e}); this is not a safetensors file"
                ))
            })?;
        let mut tensors: BTreeMap<String, safetensors::tensor::TensorInfo> = BTreeMap::new();
        let mut metadata: BTreeMap<String, String> = BTreeMap::new();
        for (key, value) in map {
            if key == "__metadata__" {
                metadata = serde_json::from_value(value)
                    .map_err(|e| bad(format!("`__metadata__` is not a map of strings: {e}")))?;
            } else {
                let info = serde_json::from_value(value)
                    .map_err(|e| bad(format!("entry `{key}`: {e}")))?;
                tensors.insert(key, info);
            }
        }
        for (key, want) in [
            ("format", FORMAT_NAME),
            ("version", FORMAT_VERSION),
            ("bands", BANDS),
        ] {
            if let Some(got) = metadata.get(key) {
                if got != want {
                    return Err(Error::BadMetadata {
                        file: file.to_string(),
                        key: key.to_string(),
                        expected: want.to_string(),
                        got: got.clone(),
                    });
                }
            }
        }
        let found = || tensors.keys().cloned().collect::<Vec<_>>().join(", ");
        let get = |name: &str, float: bool| -> Result<Option<(Span, Vec<usize>)>> {
            let Some(info) = tensors.get(name) else {
                return Ok(None);
            };
            let dtype = elem_type(file, name, info.dtype, float)?;
            let want = numel_bytes(file, name, &info.shape, dtype)?;
            let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
            if e < s || e - s != want {
                return Err(Error::BadTensorData {
                    file: file.to_string(),
                    tensor: name.to_string(),
                    reason: format!(
                        "data_offsets [{s}, {e}] hold {} bytes but shape {:?} of {} needs {want}",
                        e.saturating_sub(s),
                        info.shape,
                        dtype.name()
                    ),
                });
            }
            let (Some(start), Some(end)) = (data_start.checked_add(s), data_start.checked_add(e))
            else {
                return Err(Error::BadTensorData {
                    file: file.to_string(),
                    tensor: name.to_string(),
                    reason: "data_offsets overflow".into(),
                });
            };
            if end > total {
                return Err(Error::Truncated {
                    file: file.to_string(),
                    what: format!("tensor `{name}` data (shape {:?})", info.shape),
                    needed: end,
                    available: total,
                });
            }
            Ok(Some((Span { dtype, start, end }, info.shape.clone())))
        };
        let missing = |tensor: &str| Error::MissingTensor {
            file: file.to_string(),
            tensor: tensor.to_string(),
            found: if tensors.is_empty() {
                "none".into()
            } else {
                found()
            },
        };
        let (images, images_shape) = get(IMAGES, true)?.ok_or_else(|| missing(IMAGES))?;
        let (magnitudes, mags_shape) = get(MAGNITUDES, true)?.ok_or_else(|| missing(MAGNITUDES))?;
        let redshift = get(REDSHIFT, true)?;
        let object_id = get(OBJECT_ID, false)?;
        let shapes = check_layout(
            file,
            (images.dtype, &images_shape),
            (magnitudes.dtype, &mags_shape),
            redshift.as_ref().map(|(s, sh)| (s.dtype, sh.as_slice())),
            object_id.as_ref().map(|(s, sh)| (s.dtype, sh.as_slice())),
        )?;
        Ok(Layout {
            header_len,
            n: shapes.n,
            c: shapes.c,
            h: shapes.h,
            w: shapes.w,
            images,
            magnitudes,
            redshift: redshift.map(|(s, _)| s),
            object_id: object_id.map(|(s, _)| s),
        })
    }

    /// The layout this crate writes for `n` galaxies of `image_shape`.
    pub(crate) fn for_write(
        n: u64,
        image_shape: [usize; 3],
        redshift: bool,
        object_id: bool,
    ) -> Result<Layout> {
        let [c, h, w] = image_shape;
        let too_big = || Error::InvalidPartition {
            reason: format!("{n} galaxies of {image_shape:?} overflow the file size"),
        };
        if c != NUM_BANDS || h == 0 || w == 0 {
            return Err(Error::InvalidPartition {
                reason: format!(
                    "image shape {image_shape:?} is not [5, H, W] with H, W > 0 (bands u,g,r,i,z)"
                ),
            });
        }
        let nn = usize::try_from(n).map_err(|_| too_big())?;
        let per_image = (c as u64 * h as u64 * w as u64 * 4).max(1);
        let ids = if object_id { n * 8 } else { 0 };
        let imgs = n.checked_mul(per_image).ok_or_else(too_big)?;
        let mags = n * 4 * NUM_BANDS as u64;
        let zs = if redshift { n * 4 } else { 0 };
        // Offsets relative to the data start; the header length depends on
        // the offsets' digits, so compute the JSON once with relative offsets.
        let rel = [
            0,
            ids,
            ids + imgs,
            ids + imgs + mags,
            ids + imgs + mags + zs,
        ];
        let json = header_json(nn, image_shape, redshift, object_id, &rel);
        let header_len = json.len() as u64;
        let ds = 8 + header_len;
        let span = |dtype, a: u64, b: u64| Span {
            dtype,
            start: ds + a,
            end: ds + b,
        };
        Ok(Layout {
            header_len,
            n: nn,
            c,
            h,
            w,
            object_id: object_id.then(|| span(ElemType::I64, rel[0], rel[1])),
            images: span(ElemType::F32, rel[1], rel[2]),
            magnitudes: span(ElemType::F32, rel[2], rel[3]),
            redshift: redshift.then(|| span(ElemType::F32, rel[3], rel[4])),
        })
    }

    /// Total file length.
    pub(crate) fn file_len(&self) -> u64 {
        [
            Some(self.images),
            Some(self.magnitudes),
            self.redshift,
            self.object_id,
        ]
        .iter()
        .flatten()
        .map(|s| s.end)
        .max()
        .unwrap_or(8 + self.header_len)
    }

    /// The 8-byte length and the header JSON of a layout made by
    /// [`Layout::for_write`].
    pub(crate) fn header_bytes(&self) -> Vec<u8> {
        let ds = 8 + self.header_len;
        let rel = |s: Option<Span>| s.map(|s| (s.start - ds, s.end - ds));
        let ids = rel(self.object_id).unwrap_or((0, 0));
        let z = rel(self.redshift);
        let mags = rel(Some(self.magnitudes)).unwrap_or_default();
        let imgs = rel(Some(self.images)).unwrap_or_default();
        let offsets = [ids.0, imgs.0, mags.0, mags.1, z.map_or(mags.1, |z| z.1)];
        let json = header_json(
            self.n,
            [self.c, self.h, self.w],
            self.redshift.is_some(),
            self.object_id.is_some(),
            &offsets,
        );
        let mut out = Vec::with_capacity(8 + json.len());
        out.extend_from_slice(&(json.len() as u64).to_le_bytes());
        out.extend_from_slice(json.as_bytes());
        out
    }
}

/// The header JSON in a fixed key order, padded with spaces to a multiple of
/// 8 bytes (as the safetensors crate does). `rel` are the relative offsets
/// object_id start, images start, magnitudes start, redshift start, end.
fn header_json(
    n: usize,
    [c, h, w]: [usize; 3],
    redshift: bool,
    object_id: bool,
    rel: &[u64; 5],
) -> String {
    let mut s = format!(
        "{{\"__metadata__\":{{\"bands\":\"{BANDS}\",\"format\":\"{FORMAT_NAME}\",\"version\":\"{FORMAT_VERSION}\"}},\
\"images\":{{\"dtype\":\"F32\",\"shape\":[{n},{c},{h},{w}],\"data_offsets\":[{},{}]}},\
\"magnitudes\":{{\"dtype\":\"F32\",\"shape\":[{n},{NUM_BANDS}],\"data_offsets\":[{},{}]}}",
        rel[1], rel[2], rel[2], rel[3]
    );
    if object_id {
        s.push_str(&format!(
            ",\"object_id\":{{\"dtype\":\"I64\",\"shape\":[{n}],\"data_offsets\":[{},{}]}}",
            rel[0], rel[1]
        ));
    }
    if redshift {
        s.push_str(&format!(
            ",\"redshift\":{{\"dtype\":\"F32\",\"shape\":[{n}],\"data_offsets\":[{},{}]}}",
            rel[3], rel[4]
        ));
    }
    s.push('}');
    while s.len() % 8 != 0 {
        s.push(' ');
    }
    s
}

/// Appends the floats of little-endian `bytes` of type `dtype` to `out`.
pub(crate) fn decode_floats(dtype: ElemType, bytes: &[u8], out: &mut Vec<f32>) {
    out.reserve(bytes.len() / dtype.size());
    match dtype {
        ElemType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]])),
        ),
        ElemType::F64 => {
            out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
        ElemType::I32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| i32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f32),
        ),
        ElemType::I64 => {
            out.extend(bytes.chunks_exact(8).map(|b| {
                i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as f32
            }))
        }
    }
}

/// Appends the integers of little-endian `bytes` of type `dtype` to `out`.
pub(crate) fn decode_ints(dtype: ElemType, bytes: &[u8], out: &mut Vec<i64>) {
    out.reserve(bytes.len() / dtype.size());
    match dtype {
        ElemType::I64 => out.extend(
            bytes
                .chunks_exact(8)
                .map(|b| i64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])),
        ),
        ElemType::I32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| i64::from(i32::from_le_bytes([b[0], b[1], b[2], b[3]]))),
        ),
        ElemType::F32 => out.extend(
            bytes
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as i64),
        ),
        ElemType::F64 => {
            out.extend(bytes.chunks_exact(8).map(|b| {
                f64::from_le_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]) as i64
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(n: usize, labels: bool) -> Partition {
        let (c, h, w) = (5, 4, 3);
        Partition {
            n,
            channels: c,
            height: h,
            width: w,
            images: (0..n * c * h * w).map(|i| i as f32 * 0.5).collect(),
            magnitudes: (0..n * c).map(|i| 15.0 + i as f32).collect(),
            redshift: labels.then(|| (0..n).map(|i| i as f32 / 100.0).collect()),
            object_id: labels.then(|| (0..n).map(|i| 1000 + i as i64).collect()),
        }
    }

    #[test]
    fn round_trip_with_and_without_labels() {
        for labels in [false, true] {
            for n in [0, 1, 7] {
                let p = sample(n, labels);
                let bytes = write_partition(&p).unwrap();
                assert_eq!(bytes.len() % 4, 0);
                let q = read_partition("t", &bytes).unwrap();
                assert_eq!(p, q);
            }
        }
    }

    #[test]
    fn output_is_standard_safetensors() {
        let p = sample(3, true);
        let bytes = write_partition(&p).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        let imgs = st.tensor("images").unwrap();
        assert_eq!(imgs.shape(), &[3, 5, 4, 3]);
        assert_eq!(imgs.dtype(), safetensors::Dtype::F32);
        assert_eq!(
            st.tensor("object_id").unwrap().dtype(),
            safetensors::Dtype::I64
        );
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let m = meta.metadata().clone().unwrap();
        assert_eq!(m["format"], "cai-partition");
        assert_eq!(m["version"], "1");
        assert_eq!(m["bands"], "u,g,r,i,z");
        // Header length is a multiple of 8, so the data is 8-aligned.
        let hl = u64::from_le_bytes(bytes[..8].try_into().unwrap());
        assert_eq!(hl % 8, 0);
    }

    #[test]
    fn reads_files_from_the_safetensors_crate_with_f64_and_i32() {
        use safetensors::tensor::TensorView;
        use safetensors::Dtype;
        let n = 2;
        let imgs: Vec<u8> = (0..n * 5 * 2 * 2)
            .flat_map(|i| (i as f32).to_le_bytes())
            .collect();
        let mags: Vec<u8> = (0..n * 5).flat_map(|i| (i as f64).to_le_bytes()).collect();
        let z: Vec<u8> = [0.1f64, 0.2].iter().flat_map(|v| v.to_le_bytes()).collect();
        let ids: Vec<u8> = [7i32, 8].iter().flat_map(|v| v.to_le_bytes()).collect();
        let tensors = vec![
            (
                "images",
                TensorView::new(Dtype::F32, vec![n, 5, 2, 2], &imgs).unwrap(),
            ),
            (
                "magnitudes",
                TensorView::new(Dtype::F64, vec![n, 5], &mags).unwrap(),
            ),
            (
                "redshift",
                TensorView::new(Dtype::F64, vec![n, 1], &z).unwrap(),
            ),
            (
                "object_id",
                TensorView::new(Dtype::I32, vec![n], &ids).unwrap(),
            ),
            (
                "extra",
                TensorView::new(Dtype::U8, vec![1], &[1u8]).unwrap(),
            ),
        ];
        let bytes = safetensors::serialize(tensors, None).unwrap();
        let p = read_partition("ext.safetensors", &bytes).unwrap();
        assert_eq!(p.n, 2);
        assert_eq!(p.magnitudes[9], 9.0);
        assert_eq!(p.redshift, Some(vec![0.1, 0.2]));
        assert_eq!(p.object_id, Some(vec![7, 8]));
    }

    #[test]
    fn deterministic_bytes() {
        let p = sample(4, true);
        assert_eq!(write_partition(&p).unwrap(), write_partition(&p).unwrap());
    }

    fn err(bytes: &[u8]) -> String {
        read_partition("f.safetensors", bytes)
            .unwrap_err()
            .to_string()
    }

    #[test]
    fn errors_name_file_and_problem() {
        let good = write_partition(&sample(2, true)).unwrap();
        let e = err(&good[..5]);
        assert!(
            e.contains("f.safetensors") && e.contains("truncated"),
            "{e}"
        );
        let e = err(&good[..good.len() - 1]);
        assert!(e.contains("truncated") && e.contains("redshift"), "{e}");
        let mut big = good.clone();
        big[..8].copy_from_slice(&(200_000_000u64).to_le_bytes());
        let e = err(&big);
        assert!(e.contains("larger than the limit"), "{e}");
        let e = err(b"\x08\0\0\0\0\0\0\0not json");
        assert!(e.contains("not a JSON object"), "{e}");
        let e = err(
            b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x0c\0\0\0archive/data.pkl",
        );
        assert!(e.contains("zip") && e.contains("f.safetensors"), "{e}");
        let e = err(b"PK\x03\x04\x14\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0\x05\0\0\0x.npy");
        assert!(e.contains(".npz"), "{e}");
    }

    #[test]
    fn torch_partitions_round_trip_and_accept_f64() {
        for labels in [false, true] {
            let mut p = sample(3, labels);
            let bytes = write_torch(&p).unwrap();
            assert_eq!(detect_format(&bytes), Format::TorchZip);
            let q = read_partition("3.pt", &bytes).unwrap();
            p.object_id = None; // the original's files carry no ids
            assert_eq!(p, q);
        }
        // f64 magnitudes and redshift, as the original's files may hold.
        let p = sample(2, true);
        let t = |shape: Vec<usize>, v: &[f32]| {
            let d: Vec<f64> = v.iter().map(|&x| f64::from(x)).collect();
            cai_torch::TorchTensor::from_f64(shape, &d).unwrap()
        };
        let tensors = [
            cai_torch::TorchTensor::from_f32(vec![2, 5, 4, 3], &p.images).unwrap(),
            t(vec![2, 5], &p.magnitudes),
            t(vec![2], p.redshift.as_ref().unwrap()),
        ];
        let bytes = cai_torch::write_tensor_dataset(&tensors).unwrap();
        let q = read_partition("1.pt", &bytes).unwrap();
        assert_eq!(q.magnitudes, p.magnitudes);
        assert_eq!(q.redshift, p.redshift);
        // Wrong dtype, wrong rank, too few tensors: named errors.
        let u8s = cai_torch::TorchTensor {
            dtype: cai_torch::DType::U8,
            shape: vec![2, 5],
            data: vec![0; 10],
        };
        let bad = cai_torch::write_tensor_dataset(&[tensors[0].clone(), u8s]).unwrap();
        let e = read_partition("2.pt", &bad).unwrap_err().to_string();
        assert!(
            e.contains("2.pt") && e.contains("magnitudes") && e.contains("U8"),
            "{e}"
        );
        let one = cai_torch::write_tensor_dataset(&tensors[..1]).unwrap();
        let e = read_partition("4.pt", &one).unwrap_err().to_string();
        assert!(e.contains("4.pt") && e.contains("magnitudes"), "{e}");
        let flat = cai_torch::TorchTensor::from_f32(vec![120], &p.images).unwrap();
        let bad = cai_torch::write_tensor_dataset(&[flat, tensors[1].clone()]).unwrap();
        let e = read_partition("5.pt", &bad).unwrap_err().to_string();
        assert!(e.contains("5.pt") && e.contains("images"), "{e}");
    }

    #[test]
    fn detection_does_not_mistake_header_lengths_for_magic() {
        // Header length 640 starts with 0x80 0x02, like a pickle.
        let mut b = 640u64.to_le_bytes().to_vec();
        b.push(b'{');
        assert_eq!(detect_format(&b), Format::Native);
        assert_eq!(
            detect_format(b"\x80\x02\x8a\x0a\x6c\xfc\x9c\x46\xf9\x20\x6a\xa8\x50\x19"),
            Format::TorchLegacy
        );
        assert_eq!(detect_format(b"PK\x03\x04"), Format::TorchZip);
        assert_eq!(detect_format(b""), Format::Native);
    }

    fn with_header(json: &str, data: usize) -> Vec<u8> {
        let mut v = (json.len() as u64).to_le_bytes().to_vec();
        v.extend_from_slice(json.as_bytes());
        v.resize(v.len() + data, 0);
        v
    }

    #[test]
    fn shape_and_dtype_errors() {
        let e = err(&with_header(
            r#"{"magnitudes":{"dtype":"F32","shape":[1,5],"data_offsets":[0,20]}}"#,
            20,
        ));
        assert!(
            e.contains("missing tensor `images`") && e.contains("magnitudes"),
            "{e}"
        );
        let e = err(&with_header(
            r#"{"images":{"dtype":"F16","shape":[1,5,1,1],"data_offsets":[0,10]},"magnitudes":{"dtype":"F32","shape":[1,5],"data_offsets":[10,30]}}"#,
            30,
        ));
        assert!(e.contains("dtype F16"), "{e}");
        let e = err(&with_header(
            r#"{"images":{"dtype":"F32","shape":[1,1,1,5],"data_offsets":[0,20]},"magnitudes":{"dtype":"F32","shape":[1,5],"data_offsets":[20,40]}}"#,
            40,
        ));
        assert!(e.contains("shape [1, 1, 1, 5]"), "{e}");
        let e = err(&with_header(
            r#"{"images":{"dtype":"F32","shape":[1,5,1,1],"data_offsets":[0,20]},"magnitudes":{"dtype":"F32","shape":[2,5],"data_offsets":[20,60]}}"#,
            60,
        ));
        assert!(
            e.contains("`magnitudes` has 2 galaxies but `images` has 1"),
            "{e}"
        );
        let e = err(&with_header(
            r#"{"images":{"dtype":"F32","shape":[2,5,1,1],"data_offsets":[0,20]},"magnitudes":{"dtype":"F32","shape":[2,5],"data_offsets":[20,60]}}"#,
            60,
        ));
        assert!(e.contains("needs 40"), "{e}");
        let e = err(&with_header(
            r#"{"__metadata__":{"format":"other"},"images":{"dtype":"F32","shape":[1,5,1,1],"data_offsets":[0,20]},"magnitudes":{"dtype":"F32","shape":[1,5],"data_offsets":[20,40]}}"#,
            40,
        ));
        assert!(e.contains("metadata `format`"), "{e}");
        let e = err(&with_header(
            r#"{"images":{"dtype":"F32","shape":[1,5,1,1],"data_offsets":[0,20]},"magnitudes":{"dtype":"F32","shape":[1,5],"data_offsets":[20,40]},"object_id":{"dtype":"F32","shape":[1],"data_offsets":[40,44]}}"#,
            44,
        ));
        assert!(e.contains("object_id") && e.contains("I64"), "{e}");
    }

    #[test]
    fn slice_clamps_and_extend_appends() {
        let p = sample(5, true);
        let s = p.slice(3, 10);
        assert_eq!(s.n, 2);
        assert_eq!(s.object_id, Some(vec![1003, 1004]));
        s.validate().unwrap();
        assert_eq!(p.slice(9, 1).n, 0);
        let mut a = p.slice(0, 3);
        a.extend(&s).unwrap();
        assert_eq!(a, p);
        assert_eq!(p.image(4).unwrap(), &p.images[4 * 60..]);
        assert!(p.image(5).is_none());
    }

    #[test]
    fn validate_and_nonfinite() {
        let mut p = sample(2, false);
        p.validate().unwrap();
        assert_eq!(p.nonfinite_count(), 0);
        p.images[3] = f32::NAN;
        p.magnitudes[0] = f32::INFINITY;
        assert_eq!(p.nonfinite_count(), 2);
        p.images.pop();
        assert!(p.validate().is_err());
        assert!(write_partition(&p).is_err());
    }
}
