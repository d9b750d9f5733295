//! Partitions of any model: a set of named tensors sharing their first (galaxy) dimension.
//!
//! A [`TensorSet`] holds `n` galaxies as [`NamedTensor`]s, each with the dtype it was
//! stored as, its per-galaxy shape and its values: floats as f32 (what models are fed),
//! integers and booleans as i64 (so object ids stay exact). AstroMAE's partition is one
//! such set (`images`, `magnitudes`, optional `redshift` and `object_id`):
//! [`TensorSet::from_partition`] and [`TensorSet::to_partition`] convert without changing
//! a value, and [`write_tensors`] writes an AstroMAE-shaped set with
//! [`crate::write_partition`], byte for byte as before.
//!
//! [`read_tensors`] reads any input `cai partition` takes, detected from its bytes: the
//! native safetensors file with any tensor names, the original's `.pt` `TensorDataset`
//! (AstroMAE's `images`, `magnitudes`, `redshift`, or tensors named `0`, `1`, … or by
//! `names`), NumPy `.npy` (one tensor named after the file stem) and `.npz` (one tensor
//! per member, named after it). It never panics, whatever the bytes.

use std::borrow::Cow;

use crate::error::{Error, Result};
use crate::native::{
    detect_format, header_len, read_partition, write_partition, Format, Partition, FORMAT_NAME,
    FORMAT_VERSION, IMAGES, MAGNITUDES, NUM_BANDS, OBJECT_ID, REDSHIFT,
};

/// The element type a tensor was stored as (before floats became f32 and integers i64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoredDtype {
    /// Boolean, one byte.
    Bool,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 16-bit integer.
    U16,
    /// Signed 16-bit integer.
    I16,
    /// IEEE half float.
    F16,
    /// bfloat16.
    BF16,
    /// Unsigned 32-bit integer.
    U32,
    /// Signed 32-bit integer.
    I32,
    /// 32-bit float.
    F32,
    /// Unsigned 64-bit integer (values above `i64::MAX` are refused).
    U64,
    /// Signed 64-bit integer.
    I64,
    /// 64-bit float.
    F64,
}

impl StoredDtype {
    /// Every dtype, for parsing names.
    const ALL: [StoredDtype; 13] = [
        StoredDtype::Bool,
        StoredDtype::U8,
        StoredDtype::I8,
        StoredDtype::U16,
        StoredDtype::I16,
        StoredDtype::F16,
        StoredDtype::BF16,
        StoredDtype::U32,
        StoredDtype::I32,
        StoredDtype::F32,
        StoredDtype::U64,
        StoredDtype::I64,
        StoredDtype::F64,
    ];

    /// Bytes per element.
    pub fn size(self) -> usize {
        use StoredDtype::*;
        match self {
            Bool | U8 | I8 => 1,
            U16 | I16 | F16 | BF16 => 2,
            U32 | I32 | F32 => 4,
            U64 | I64 | F64 => 8,
        }
    }

    /// True for the float types (held as f32).
    pub fn is_float(self) -> bool {
        matches!(
            self,
            StoredDtype::F16 | StoredDtype::BF16 | StoredDtype::F32 | StoredDtype::F64
        )
    }

    /// The safetensors name (`F32`, `I64`, `BOOL`…), as manifests record it.
    pub fn name(self) -> &'static str {
        use StoredDtype::*;
        match self {
            Bool => "BOOL",
            U8 => "U8",
            I8 => "I8",
            U16 => "U16",
            I16 => "I16",
            F16 => "F16",
            BF16 => "BF16",
            U32 => "U32",
            I32 => "I32",
            F32 => "F32",
            U64 => "U64",
            I64 => "I64",
            F64 => "F64",
        }
    }

    /// The dtype of a safetensors name (`F32`…), if it is one of these.
    pub fn from_name(name: &str) -> Option<StoredDtype> {
        Self::ALL.into_iter().find(|d| d.name() == name)
    }

    fn of_safetensors(d: safetensors::Dtype) -> Option<StoredDtype> {
        use safetensors::Dtype as D;
        Some(match d {
            D::BOOL => StoredDtype::Bool,
            D::U8 => StoredDtype::U8,
            D::I8 => StoredDtype::I8,
            D::U16 => StoredDtype::U16,
            D::I16 => StoredDtype::I16,
            D::F16 => StoredDtype::F16,
            D::BF16 => StoredDtype::BF16,
            D::U32 => StoredDtype::U32,
            D::I32 => StoredDtype::I32,
            D::F32 => StoredDtype::F32,
            D::U64 => StoredDtype::U64,
            D::I64 => StoredDtype::I64,
            D::F64 => StoredDtype::F64,
            _ => return None,
        })
    }

    fn of_torch(d: cai_torch::DType) -> Option<StoredDtype> {
        use cai_torch::DType as D;
        Some(match d {
            D::F32 => StoredDtype::F32,
            D::F64 => StoredDtype::F64,
            D::F16 => StoredDtype::F16,
            D::BF16 => StoredDtype::BF16,
            D::I64 => StoredDtype::I64,
            D::I32 => StoredDtype::I32,
            D::I16 => StoredDtype::I16,
            D::I8 => StoredDtype::I8,
            D::U8 => StoredDtype::U8,
            D::Bool => StoredDtype::Bool,
            _ => return None,
        })
    }
}

impl std::fmt::Display for StoredDtype {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A tensor's values: floats as f32, integers and booleans as i64.
#[derive(Debug, Clone, PartialEq)]
pub enum TensorValues {
    /// From a float dtype.
    F32(Vec<f32>),
    /// From an integer or boolean dtype.
    I64(Vec<i64>),
}

impl TensorValues {
    /// Number of values.
    pub fn len(&self) -> usize {
        match self {
            TensorValues::F32(v) => v.len(),
            TensorValues::I64(v) => v.len(),
        }
    }

    /// True when there are no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Appends the values to `out` as little-endian f32 or i64, as files hold them.
    pub fn append_le(&self, out: &mut Vec<u8>) {
        match self {
            TensorValues::F32(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
            TensorValues::I64(v) => v
                .iter()
                .for_each(|x| out.extend_from_slice(&x.to_le_bytes())),
        }
    }

    fn slice(&self, from: usize, to: usize) -> TensorValues {
        match self {
            TensorValues::F32(v) => TensorValues::F32(v.get(from..to).unwrap_or(&[]).to_vec()),
            TensorValues::I64(v) => TensorValues::I64(v.get(from..to).unwrap_or(&[]).to_vec()),
        }
    }
}

/// One tensor of a [`TensorSet`].
#[derive(Debug, Clone, PartialEq)]
pub struct NamedTensor {
    /// Name (a safetensors key, an `.npz` member, a `.pt` position or `--names` entry).
    pub name: String,
    /// The dtype it was stored as.
    pub dtype: StoredDtype,
    /// Shape of one galaxy's slice (`[]` for a scalar per galaxy).
    pub shape: Vec<usize>,
    /// `n × product(shape)` values, galaxy first, row-major.
    pub values: TensorValues,
}

impl NamedTensor {
    /// Values per galaxy (1 for a scalar).
    pub fn per_galaxy(&self) -> usize {
        self.shape.iter().product()
    }

    /// The values as f32 (what models are fed): borrowed for floats, converted for
    /// integers.
    pub fn to_f32(&self) -> Cow<'_, [f32]> {
        match &self.values {
            TensorValues::F32(v) => Cow::Borrowed(v),
            TensorValues::I64(v) => Cow::Owned(v.iter().map(|&x| x as f32).collect()),
        }
    }

    /// Its manifest description: name, stored dtype, per-galaxy shape.
    pub fn info(&self) -> TensorInfo {
        TensorInfo {
            name: self.name.clone(),
            dtype: self.dtype.name().to_string(),
            shape: self.shape.clone(),
        }
    }

    /// `name F32[N, 5, 32, 32]`, for messages.
    pub fn describe(&self) -> String {
        self.info().describe()
    }
}

/// A tensor as a manifest records it: name, stored dtype (`F32`…) and per-galaxy shape.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TensorInfo {
    /// Tensor name.
    pub name: String,
    /// Stored dtype, as safetensors names it (`F32`, `I64`…).
    pub dtype: String,
    /// Shape of one galaxy's slice.
    pub shape: Vec<usize>,
}

impl TensorInfo {
    /// `name F32[N, 5, 32, 32]`.
    pub fn describe(&self) -> String {
        let dims: Vec<String> = std::iter::once("N".to_string())
            .chain(self.shape.iter().map(|d| d.to_string()))
            .collect();
        format!("{} {}[{}]", self.name, self.dtype, dims.join(", "))
    }
}

/// `n` galaxies as named tensors sharing their first dimension: a partition of any model.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TensorSet {
    /// Number of galaxies.
    pub n: usize,
    /// The tensors, in the input's order (safetensors: by name).
    pub tensors: Vec<NamedTensor>,
}

impl TensorSet {
    /// The tensor called `name`, if any.
    pub fn get(&self, name: &str) -> Option<&NamedTensor> {
        self.tensors.iter().find(|t| t.name == name)
    }

    /// The tensors' names, in order.
    pub fn names(&self) -> Vec<&str> {
        self.tensors.iter().map(|t| t.name.as_str()).collect()
    }

    /// The tensors as a manifest records them.
    pub fn infos(&self) -> Vec<TensorInfo> {
        self.tensors.iter().map(NamedTensor::info).collect()
    }

    /// The f32 tensor called `name`, if there is one of float dtype.
    pub fn f32(&self, name: &str) -> Option<&[f32]> {
        match &self.get(name)?.values {
            TensorValues::F32(v) => Some(v),
            TensorValues::I64(_) => None,
        }
    }

    /// AstroMAE's images `[n, 5, H, W]`, if the set has them.
    pub fn images(&self) -> Option<&[f32]> {
        self.f32(IMAGES)
    }

    /// AstroMAE's magnitudes `[n, 5]`, if the set has them.
    pub fn magnitudes(&self) -> Option<&[f32]> {
        self.f32(MAGNITUDES)
    }

    /// Redshift labels: a float tensor `redshift` of one value per galaxy (`[]` or `[1]`).
    pub fn redshift(&self) -> Option<&[f32]> {
        let t = self.get(REDSHIFT)?;
        (t.per_galaxy() == 1).then_some(())?;
        self.f32(REDSHIFT)
    }

    /// Object ids: an integer tensor `object_id` of one value per galaxy.
    pub fn object_id(&self) -> Option<&[i64]> {
        let t = self.get(OBJECT_ID)?;
        match (&t.values, t.shape.is_empty()) {
            (TensorValues::I64(v), true) => Some(v),
            _ => None,
        }
    }

    /// Checks that names are unique and non-empty and every tensor holds `n × per-galaxy`
    /// values; errors name `file`.
    pub fn validate(&self, file: &str) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for t in &self.tensors {
            if t.name.is_empty() || !seen.insert(t.name.as_str()) {
                return Err(Error::BadTensorData {
                    file: file.to_string(),
                    tensor: t.name.clone(),
                    reason: "tensor names must be unique and not empty".into(),
                });
            }
            let want = t.shape.iter().try_fold(self.n, |a, &d| a.checked_mul(d));
            if want != Some(t.values.len()) {
                return Err(Error::BadTensorData {
                    file: file.to_string(),
                    tensor: t.name.clone(),
                    reason: format!(
                        "{} values, {} galaxies of {:?} need {}",
                        t.values.len(),
                        self.n,
                        t.shape,
                        want.map_or_else(|| "more than memory holds".into(), |w| w.to_string())
                    ),
                });
            }
        }
        Ok(())
    }

    /// Galaxies `start..start + count`, clamped to `0..n`.
    pub fn slice(&self, start: usize, count: usize) -> TensorSet {
        let start = start.min(self.n);
        let end = start.saturating_add(count).min(self.n);
        TensorSet {
            n: end - start,
            tensors: self
                .tensors
                .iter()
                .map(|t| {
                    let per = t.per_galaxy();
                    NamedTensor {
                        name: t.name.clone(),
                        dtype: t.dtype,
                        shape: t.shape.clone(),
                        values: t.values.slice(start * per, end * per),
                    }
                })
                .collect(),
        }
    }

    /// Bytes one galaxy takes in a native file this crate writes (f32 for floats, i64 for
    /// integers), what partition sizes count.
    pub fn bytes_per_galaxy(&self) -> u64 {
        self.tensors
            .iter()
            .map(|t| {
                let size = match t.values {
                    TensorValues::F32(_) => 4,
                    TensorValues::I64(_) => 8,
                };
                t.per_galaxy() as u64 * size
            })
            .sum()
    }

    /// AstroMAE's partition as a set: `images` `[5, H, W]`, `magnitudes` `[5]`, then
    /// `redshift` `[]` and `object_id` `[]` when present (values moved, not copied).
    pub fn from_partition(p: Partition) -> TensorSet {
        let mut tensors = vec![
            NamedTensor {
                name: IMAGES.into(),
                dtype: StoredDtype::F32,
                shape: vec![p.channels, p.height, p.width],
                values: TensorValues::F32(p.images),
            },
            NamedTensor {
                name: MAGNITUDES.into(),
                dtype: StoredDtype::F32,
                shape: vec![p.channels],
                values: TensorValues::F32(p.magnitudes),
            },
        ];
        if let Some(z) = p.redshift {
            tensors.push(NamedTensor {
                name: REDSHIFT.into(),
                dtype: StoredDtype::F32,
                shape: vec![],
                values: TensorValues::F32(z),
            });
        }
        if let Some(id) = p.object_id {
            tensors.push(NamedTensor {
                name: OBJECT_ID.into(),
                dtype: StoredDtype::I64,
                shape: vec![],
                values: TensorValues::I64(id),
            });
        }
        TensorSet { n: p.n, tensors }
    }

    /// The set as AstroMAE's partition, if it is exactly one: float `images` `[5, H, W]`,
    /// float `magnitudes` `[5]`, optional float `redshift` `[]` or `[1]`, optional
    /// integer `object_id` `[]`, and nothing else.
    pub fn to_partition(&self) -> Option<Partition> {
        let images = self.get(IMAGES)?;
        let &[c, h, w] = images.shape.as_slice() else {
            return None;
        };
        let mags = self.get(MAGNITUDES)?;
        let shapes_ok = c == NUM_BANDS && h > 0 && w > 0 && mags.shape == [NUM_BANDS];
        let known = self
            .tensors
            .iter()
            .all(|t| [IMAGES, MAGNITUDES, REDSHIFT, OBJECT_ID].contains(&t.name.as_str()));
        let z_ok = self.get(REDSHIFT).is_none() || self.redshift().is_some();
        let id_ok = self.get(OBJECT_ID).is_none() || self.object_id().is_some();
        if !(shapes_ok && known && z_ok && id_ok) {
            return None;
        }
        Some(Partition {
            n: self.n,
            channels: c,
            height: h,
            width: w,
            images: self.images()?.to_vec(),
            magnitudes: self.magnitudes()?.to_vec(),
            redshift: self.redshift().map(<[f32]>::to_vec),
            object_id: self.object_id().map(<[i64]>::to_vec),
        })
    }

    /// Appends the galaxies of `other` (same tensor names, dtypes and shapes, in order).
    pub fn extend(&mut self, other: &TensorSet) -> Result<()> {
        let same = self.tensors.len() == other.tensors.len()
            && self
                .tensors
                .iter()
                .zip(&other.tensors)
                .all(|(a, b)| a.name == b.name && a.shape == b.shape && a.dtype == b.dtype);
        if !same {
            return Err(Error::InvalidPartition {
                reason: "cannot append tensor sets with different tensors".into(),
            });
        }
        for (a, b) in self.tensors.iter_mut().zip(&other.tensors) {
            match (&mut a.values, &b.values) {
                (TensorValues::F32(x), TensorValues::F32(y)) => x.extend_from_slice(y),
                (TensorValues::I64(x), TensorValues::I64(y)) => x.extend_from_slice(y),
                _ => {
                    return Err(Error::InvalidPartition {
                        reason: format!("tensor `{}` changes kind", a.name),
                    })
                }
            }
        }
        self.n += other.n;
        Ok(())
    }
}

/// A whole tensor as an input file holds it (first dimension = galaxies), before decoding.
#[derive(Debug, Clone)]
pub struct RawNamed<'a> {
    /// Name.
    pub name: String,
    /// Stored element type.
    pub dtype: StoredDtype,
    /// True when the bytes are big-endian (NumPy `>f4`), else little-endian.
    pub big_endian: bool,
    /// Full shape, galaxies first.
    pub shape: Vec<usize>,
    /// `product(shape) × dtype.size()` bytes, row-major.
    pub data: Cow<'a, [u8]>,
}

/// Checks and decodes whole tensors into a [`TensorSet`]: every tensor has rank ≥ 1, all
/// share their first dimension (an error names both tensors), names are unique, and each
/// holds exactly the bytes its shape needs. Errors name `file`.
pub fn tensor_set_from_raw(file: &str, raw: Vec<RawNamed<'_>>) -> Result<TensorSet> {
    let bad = |tensor: &str, reason: String| Error::BadTensorData {
        file: file.to_string(),
        tensor: tensor.to_string(),
        reason,
    };
    if raw.is_empty() {
        return Err(Error::InvalidPartition {
            reason: format!("{file}: no tensors"),
        });
    }
    let mut n: Option<(usize, String)> = None;
    let mut tensors = Vec::with_capacity(raw.len());
    for t in raw {
        let Some((&first, per_shape)) = t.shape.split_first() else {
            return Err(bad(
                &t.name,
                "is a scalar (rank 0); every tensor needs a first (galaxy) dimension".into(),
            ));
        };
        match &n {
            None => n = Some((first, t.name.clone())),
            Some((m, other)) if *m != first => {
                return Err(Error::GalaxyCount {
                    file: file.to_string(),
                    tensor: t.name.clone(),
                    got: first as u64,
                    other: other.clone(),
                    expected: *m as u64,
                })
            }
            Some(_) => {}
        }
        let want = t
            .shape
            .iter()
            .try_fold(t.dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
        if want != Some(t.data.len() as u64) {
            return Err(bad(
                &t.name,
                format!(
                    "shape {:?} of {} needs {} bytes, got {}",
                    t.shape,
                    t.dtype,
                    want.map_or_else(|| "more than 2^64".into(), |w| w.to_string()),
                    t.data.len()
                ),
            ));
        }
        let values = decode(file, &t.name, t.dtype, t.big_endian, &t.data)?;
        tensors.push(NamedTensor {
            shape: per_shape.to_vec(),
            name: t.name,
            dtype: t.dtype,
            values,
        });
    }
    let set = TensorSet {
        n: n.map_or(0, |(m, _)| m),
        tensors,
    };
    set.validate(file)?;
    Ok(set)
}

/// Decodes `bytes` of `dtype` (f32 for floats, i64 for integers and booleans).
fn decode(
    file: &str,
    name: &str,
    dtype: StoredDtype,
    big_endian: bool,
    bytes: &[u8],
) -> Result<TensorValues> {
    use StoredDtype::*;
    fn arr<const N: usize>(b: &[u8], big: bool) -> [u8; N] {
        let mut a = [0u8; N];
        a.copy_from_slice(b);
        if big {
            a.reverse();
        }
        a
    }
    let size = dtype.size();
    let chunks = bytes.chunks_exact(size);
    let be = big_endian;
    Ok(match dtype {
        F32 => TensorValues::F32(chunks.map(|b| f32::from_le_bytes(arr(b, be))).collect()),
        F64 => TensorValues::F32(
            chunks
                .map(|b| f64::from_le_bytes(arr(b, be)) as f32)
                .collect(),
        ),
        F16 => TensorValues::F32(
            chunks
                .map(|b| half::f16::from_le_bytes(arr(b, be)).to_f32())
                .collect(),
        ),
        BF16 => TensorValues::F32(
            chunks
                .map(|b| half::bf16::from_le_bytes(arr(b, be)).to_f32())
                .collect(),
        ),
        Bool | U8 => TensorValues::I64(bytes.iter().map(|&b| i64::from(b)).collect()),
        I8 => TensorValues::I64(bytes.iter().map(|&b| i64::from(b as i8)).collect()),
        U16 => TensorValues::I64(
            chunks
                .map(|b| i64::from(u16::from_le_bytes(arr(b, be))))
                .collect(),
        ),
        I16 => TensorValues::I64(
            chunks
                .map(|b| i64::from(i16::from_le_bytes(arr(b, be))))
                .collect(),
        ),
        U32 => TensorValues::I64(
            chunks
                .map(|b| i64::from(u32::from_le_bytes(arr(b, be))))
                .collect(),
        ),
        I32 => TensorValues::I64(
            chunks
                .map(|b| i64::from(i32::from_le_bytes(arr(b, be))))
                .collect(),
        ),
        I64 => TensorValues::I64(chunks.map(|b| i64::from_le_bytes(arr(b, be))).collect()),
        U64 => {
            let mut out = Vec::with_capacity(bytes.len() / 8);
            for b in chunks {
                let v = u64::from_le_bytes(arr(b, be));
                let v = i64::try_from(v).map_err(|_| Error::BadTensorData {
                    file: file.to_string(),
                    tensor: name.to_string(),
                    reason: format!("U64 value {v} does not fit in I64"),
                })?;
                out.push(v);
            }
            TensorValues::I64(out)
        }
    })
}

/// Reads any tensor input from the whole file's bytes, its format detected from them: a
/// native safetensors file (any tensor names; AstroMAE's read exactly as
/// [`read_partition`] reads them), the original's `.pt` `TensorDataset`, NumPy `.npy` or
/// `.npz`.
///
/// `names` renames the tensors in order (the `.pt`'s positional tensors, an `.npy`'s one
/// tensor, an `.npz`'s members); without it a `.pt` that is AstroMAE's gets `images`,
/// `magnitudes`, `redshift`, another `.pt` `0`, `1`, …, an `.npy` its file stem (from
/// `source_name`) and an `.npz` its member names. Errors name `source_name`.
pub fn read_tensors(
    source_name: &str,
    bytes: &[u8],
    names: Option<&[String]>,
) -> Result<TensorSet> {
    let set = match detect_format(bytes) {
        Format::Npy => {
            let stem = file_stem(source_name);
            let t = crate::npy::parse_npy(source_name, &stem, bytes)?;
            tensor_set_from_raw(source_name, vec![t])?
        }
        Format::Npz => {
            tensor_set_from_raw(source_name, crate::npy::parse_npz(source_name, bytes)?)?
        }
        Format::TorchZip => read_torch_tensors(source_name, bytes, names.is_some())?,
        Format::Native => {
            if names.is_some() {
                return Err(Error::UnsupportedFormat {
                    file: source_name.to_string(),
                    detected: "a safetensors file, whose tensors are named already".into(),
                    hint: "drop --names (it names the tensors of .pt, .npy and .npz files)".into(),
                });
            }
            read_safetensors(source_name, bytes)?
        }
        Format::TorchLegacy => {
            // read_partition says what to do with these.
            return read_partition(source_name, bytes).map(TensorSet::from_partition);
        }
    };
    match names {
        Some(names) => rename(source_name, set, names),
        None => Ok(set),
    }
}

/// `dir/file.npy` → `file`.
fn file_stem(source_name: &str) -> String {
    let base = source_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or(source_name);
    match base.rsplit_once('.') {
        Some((stem, _)) if !stem.is_empty() => stem.to_string(),
        _ => base.to_string(),
    }
}

fn rename(file: &str, mut set: TensorSet, names: &[String]) -> Result<TensorSet> {
    if names.len() != set.tensors.len() {
        return Err(Error::InvalidPartition {
            reason: format!(
                "{file}: {} names given ({}) for {} tensors ({})",
                names.len(),
                names.join(","),
                set.tensors.len(),
                set.names().join(", ")
            ),
        });
    }
    for (t, name) in set.tensors.iter_mut().zip(names) {
        t.name = name.clone();
    }
    set.validate(file)?;
    Ok(set)
}

/// A `.pt` `TensorDataset`: AstroMAE's when its tensors are (and `positional` is false),
/// else tensors `0`, `1`, ….
fn read_torch_tensors(file: &str, bytes: &[u8], positional: bool) -> Result<TensorSet> {
    let tensors = cai_torch::read_tensor_dataset(file, bytes).map_err(Error::Torch)?;
    if !positional {
        if let Ok(p) = crate::native::partition_of_torch(file, &tensors) {
            return Ok(TensorSet::from_partition(p));
        }
    }
    let raw = tensors
        .iter()
        .enumerate()
        .map(|(i, t)| {
            let dtype = StoredDtype::of_torch(t.dtype).ok_or_else(|| Error::WrongDtype {
                file: file.to_string(),
                tensor: i.to_string(),
                expected: "a float, integer or bool dtype".into(),
                got: format!("{:?}", t.dtype),
            })?;
            Ok(RawNamed {
                name: i.to_string(),
                dtype,
                big_endian: false,
                shape: t.shape.clone(),
                data: Cow::Borrowed(t.data.as_slice()),
            })
        })
        .collect::<Result<Vec<_>>>()?;
    tensor_set_from_raw(file, raw)
}

/// A safetensors file with any tensor names. One that holds `images` is AstroMAE's and is
/// read by [`read_partition`] (its checks and errors unchanged).
fn read_safetensors(file: &str, bytes: &[u8]) -> Result<TensorSet> {
    let total = bytes.len() as u64;
    let hl = header_len(file, bytes.get(..8), total)?;
    let json = bytes.get(8..8 + hl as usize).unwrap_or(&[]);
    let bad = |reason: String| Error::BadHeader {
        file: file.to_string(),
        reason,
    };
    let map: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(json).map_err(|e| {
            bad(format!(
                "header is not a JSON object ({e}); this is not a safetensors file"
            ))
        })?;
    let astromae = [IMAGES, MAGNITUDES, REDSHIFT, OBJECT_ID, "__metadata__"];
    if map.contains_key(IMAGES) {
        if map.keys().all(|k| astromae.contains(&k.as_str())) {
            return read_partition(file, bytes).map(TensorSet::from_partition);
        }
        // AstroMAE's tensors and others: all of them, or (when the others do not share the
        // galaxy dimension, as other tools' extras may not) AstroMAE's alone.
        return safetensors_set(file, bytes, hl, map)
            .or_else(|_| read_partition(file, bytes).map(TensorSet::from_partition));
    }
    safetensors_set(file, bytes, hl, map)
}

/// Every tensor of a safetensors file whose header (`hl` bytes) is `map`.
fn safetensors_set(
    file: &str,
    bytes: &[u8],
    hl: u64,
    map: serde_json::Map<String, serde_json::Value>,
) -> Result<TensorSet> {
    let total = bytes.len() as u64;
    let bad = |reason: String| Error::BadHeader {
        file: file.to_string(),
        reason,
    };
    let data_start = 8 + hl;
    let mut raw = Vec::new();
    for (key, value) in map {
        if key == "__metadata__" {
            let meta: std::collections::BTreeMap<String, String> = serde_json::from_value(value)
                .map_err(|e| bad(format!("`__metadata__` is not a map of strings: {e}")))?;
            for (k, want) in [("format", FORMAT_NAME), ("version", FORMAT_VERSION)] {
                if let Some(got) = meta.get(k) {
                    if got != want {
                        return Err(Error::BadMetadata {
                            file: file.to_string(),
                            key: k.to_string(),
                            expected: want.to_string(),
                            got: got.clone(),
                        });
                    }
                }
            }
            continue;
        }
        let info: safetensors::tensor::TensorInfo =
            serde_json::from_value(value).map_err(|e| bad(format!("entry `{key}`: {e}")))?;
        let dtype = StoredDtype::of_safetensors(info.dtype).ok_or_else(|| Error::WrongDtype {
            file: file.to_string(),
            tensor: key.clone(),
            expected: "a float, integer or bool dtype".into(),
            got: format!("{:?}", info.dtype),
        })?;
        let (s, e) = (info.data_offsets.0 as u64, info.data_offsets.1 as u64);
        let span = data_start
            .checked_add(s)
            .zip(data_start.checked_add(e))
            .filter(|(a, b)| a <= b);
        let Some((start, end)) = span else {
            return Err(Error::BadTensorData {
                file: file.to_string(),
                tensor: key,
                reason: format!("data_offsets [{s}, {e}] are not a range"),
            });
        };
        if end > total {
            return Err(Error::Truncated {
                file: file.to_string(),
                what: format!("tensor `{key}` data (shape {:?})", info.shape),
                needed: end,
                available: total,
            });
        }
        let data = bytes.get(start as usize..end as usize).unwrap_or(&[]);
        raw.push(RawNamed {
            name: key,
            dtype,
            big_endian: false,
            shape: info.shape,
            data: Cow::Borrowed(data),
        });
    }
    tensor_set_from_raw(file, raw)
}

/// Writes a set as a native safetensors file, whole, in memory. An AstroMAE-shaped set
/// ([`TensorSet::to_partition`]) is written by [`write_partition`], byte for byte as
/// before; any other set as F32 (floats) and I64 (integers) tensors in the canonical
/// order (8-byte types first, then by name), `__metadata__` `format` and `version`, the
/// header padded to 8 bytes, so equal sets give equal bytes.
pub fn write_tensors(set: &TensorSet) -> Result<Vec<u8>> {
    set.validate("the partition being written")?;
    if let Some(p) = set.to_partition() {
        return write_partition(&p);
    }
    let mut order: Vec<&NamedTensor> = set.tensors.iter().collect();
    order.sort_by_key(|t| (matches!(t.values, TensorValues::F32(_)), t.name.clone()));
    let mut json = format!(
        "{{\"__metadata__\":{{\"format\":\"{FORMAT_NAME}\",\"version\":\"{FORMAT_VERSION}\"}}"
    );
    let mut at = 0u64;
    for t in &order {
        let (dtype, size) = match t.values {
            TensorValues::F32(_) => ("F32", 4u64),
            TensorValues::I64(_) => ("I64", 8u64),
        };
        let len = t.values.len() as u64 * size;
        let shape: Vec<String> = std::iter::once(set.n)
            .chain(t.shape.iter().copied())
            .map(|d| d.to_string())
            .collect();
        // Serialising a string cannot fail.
        let key = serde_json::to_string(&t.name).unwrap_or_default();
        json.push_str(&format!(
            ",{key}:{{\"dtype\":\"{dtype}\",\"shape\":[{}],\"data_offsets\":[{at},{}]}}",
            shape.join(","),
            at + len
        ));
        at += len;
    }
    json.push('}');
    while !json.len().is_multiple_of(8) {
        json.push(' ');
    }
    let total =
        usize::try_from(8 + json.len() as u64 + at).map_err(|_| Error::InvalidPartition {
            reason: "partition too large to hold in memory".into(),
        })?;
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(&(json.len() as u64).to_le_bytes());
    out.extend_from_slice(json.as_bytes());
    for t in order {
        t.values.append_le(&mut out);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{generate, write_torch, SynthConfig};

    fn astromae(n: usize) -> Partition {
        let cfg = SynthConfig {
            galaxies: 10,
            seed: 3,
            size: 8,
        };
        generate(&cfg, 0, n)
    }

    fn other_set() -> TensorSet {
        TensorSet {
            n: 3,
            tensors: vec![
                NamedTensor {
                    name: "flux \"r\"".into(),
                    dtype: StoredDtype::F32,
                    shape: vec![2, 2],
                    values: TensorValues::F32((0..12).map(|i| i as f32 / 4.0).collect()),
                },
                NamedTensor {
                    name: "label".into(),
                    dtype: StoredDtype::I64,
                    shape: vec![],
                    values: TensorValues::I64(vec![4, -5, 6]),
                },
            ],
        }
    }

    #[test]
    fn astromae_sets_write_the_same_bytes_as_partitions() {
        for n in [0, 1, 5] {
            let p = astromae(n);
            let set = TensorSet::from_partition(p.clone());
            assert_eq!(set.to_partition().as_ref(), Some(&p));
            let bytes = write_tensors(&set).unwrap();
            assert_eq!(bytes, write_partition(&p).unwrap());
            let back = read_tensors("p.safetensors", &bytes, None).unwrap();
            assert_eq!(back, set);
            assert_eq!(back.images(), Some(p.images.as_slice()));
            assert_eq!(back.object_id(), p.object_id.as_deref());
        }
    }

    #[test]
    fn any_named_safetensors_round_trip_deterministically() {
        let set = other_set();
        let bytes = write_tensors(&set).unwrap();
        assert_eq!(bytes, write_tensors(&set).unwrap());
        // A standard safetensors file, readable by the safetensors crate.
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.tensor("label").unwrap().shape(), &[3]);
        let mut back = read_tensors("x.safetensors", &bytes, None).unwrap();
        back.tensors.sort_by(|a, b| a.name.cmp(&b.name));
        assert_eq!(back, set);
        assert!(back.to_partition().is_none());
        assert_eq!(back.slice(1, 5).n, 2);
        let e = read_tensors("x.safetensors", &bytes, Some(&["a".into()]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("drop --names"), "{e}");
        // AstroMAE's tensors with others: all read.
        let mut mixed = TensorSet::from_partition(astromae(3));
        mixed.tensors.push(set.slice(0, 3).tensors[1].clone());
        let back = read_tensors("m.safetensors", &write_tensors(&mixed).unwrap(), None).unwrap();
        assert_eq!(
            back.names(),
            ["images", "label", "magnitudes", "object_id", "redshift"]
        );
        // AstroMAE's files read exactly as before, errors included.
        let good = write_partition(&astromae(2)).unwrap();
        let e = read_tensors("f.safetensors", &good[..good.len() - 1], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("truncated") && e.contains("redshift"), "{e}");
    }

    #[test]
    fn galaxy_counts_must_agree_and_errors_name_both_tensors() {
        let a = 1.0f32.to_le_bytes().repeat(4);
        let raw = vec![
            RawNamed {
                name: "a".into(),
                dtype: StoredDtype::F32,
                big_endian: false,
                shape: vec![4],
                data: Cow::Borrowed(&a),
            },
            RawNamed {
                name: "b".into(),
                dtype: StoredDtype::F32,
                big_endian: false,
                shape: vec![2, 2],
                data: Cow::Borrowed(&a),
            },
        ];
        let e = tensor_set_from_raw("g.npz", raw).unwrap_err().to_string();
        assert_eq!(
            e,
            "g.npz: tensor `b` has 2 galaxies (first dimension) but `a` has 4"
        );
    }

    #[test]
    fn torch_datasets_are_astromae_or_positional_or_named() {
        let p = astromae(3);
        let pt = write_torch(&p).unwrap();
        let set = read_tensors("1.pt", &pt, None).unwrap();
        assert_eq!(set.names(), ["images", "magnitudes", "redshift"]);
        let set = read_tensors("1.pt", &pt, Some(&["x".into(), "y".into(), "z".into()])).unwrap();
        assert_eq!(set.names(), ["x", "y", "z"]);
        assert_eq!(set.f32("y"), Some(p.magnitudes.as_slice()));
        let e = read_tensors("1.pt", &pt, Some(&["x".into()]))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("1 names given") && e.contains("3 tensors"),
            "{e}"
        );
        // Not AstroMAE: tensors 0, 1, … in order.
        let t = |shape: Vec<usize>, v: &[f32]| cai_torch::TorchTensor::from_f32(shape, v).unwrap();
        let pt = cai_torch::write_tensor_dataset(&[
            t(vec![2, 3], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
            t(vec![2], &[0.5, 0.25]),
        ])
        .unwrap();
        let set = read_tensors("d.pt", &pt, None).unwrap();
        assert_eq!(set.names(), ["0", "1"]);
        assert_eq!(set.get("0").unwrap().shape, [3]);
        let bad = cai_torch::write_tensor_dataset(&[t(vec![2], &[1.0, 2.0]), t(vec![1], &[3.0])])
            .unwrap();
        let e = read_tensors("e.pt", &bad, None).unwrap_err().to_string();
        assert!(
            e.contains("e.pt") && e.contains("`1` has 1 galaxies"),
            "{e}"
        );
    }
}
