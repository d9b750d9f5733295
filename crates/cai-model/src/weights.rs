//! Named f32 tensors ([`Weights`]) keyed by the original PyTorch `state_dict` names, with
//! safetensors input/output, and the path builder ([`Vb`]) the layers load through.
//!
//! Element types: safetensors `F32`, `F64`, `F16` and `BF16` are converted to f32 on
//! reading. `I64` is accepted only for `*.num_batches_tracked` (BatchNorm's counter, a
//! buffer the forward pass never reads); it is kept as f32 and written back as `I64`.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Display;
use std::sync::Mutex;

use rayon::prelude::*;
use safetensors::{Dtype, SafeTensors, View};

use crate::Error;

/// One dense tensor: row-major `data` of `shape.iter().product()` f32 values.
#[derive(Debug, Clone, PartialEq)]
pub struct Tensor {
    /// Dimensions, outermost first (PyTorch order).
    pub shape: Vec<usize>,
    /// Row-major values.
    pub data: Vec<f32>,
}

impl Tensor {
    /// A tensor from a shape and its data. The caller is responsible for
    /// `data.len() == shape.iter().product()`; [`Weights::to_safetensors`] checks it.
    pub fn new(shape: Vec<usize>, data: Vec<f32>) -> Self {
        Self { shape, data }
    }

    /// A tensor of zeros.
    pub fn zeros(shape: &[usize]) -> Self {
        Self {
            shape: shape.to_vec(),
            data: vec![0.0; shape.iter().product()],
        }
    }

    /// Number of elements the shape describes.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// Named tensors, ordered by key, plus string metadata (safetensors `__metadata__`).
/// `Debug` lists keys and shapes, not values.
#[derive(Clone, Default, PartialEq)]
pub struct Weights {
    tensors: BTreeMap<String, Tensor>,
    metadata: BTreeMap<String, String>,
}

impl std::fmt::Debug for Weights {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let shapes: BTreeMap<&str, &[usize]> = self
            .tensors
            .iter()
            .map(|(k, t)| (k.as_str(), t.shape.as_slice()))
            .collect();
        f.debug_struct("Weights")
            .field("tensors", &shapes)
            .field("metadata", &self.metadata)
            .finish()
    }
}

impl Weights {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds or replaces a tensor.
    pub fn insert(&mut self, key: impl Into<String>, t: Tensor) {
        self.tensors.insert(key.into(), t);
    }

    /// The tensor stored under `key`.
    pub fn get(&self, key: &str) -> Option<&Tensor> {
        self.tensors.get(key)
    }

    /// Removes and returns the tensor under `key`.
    pub fn remove(&mut self, key: &str) -> Option<Tensor> {
        self.tensors.remove(key)
    }

    /// All keys in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> + '_ {
        self.tensors.keys().map(String::as_str)
    }

    /// All (key, tensor) pairs in key order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> + '_ {
        self.tensors.iter().map(|(k, t)| (k.as_str(), t))
    }

    /// Number of tensors.
    pub fn len(&self) -> usize {
        self.tensors.len()
    }

    /// True when there are no tensors.
    pub fn is_empty(&self) -> bool {
        self.tensors.is_empty()
    }

    /// Removes `prefix` (e.g. `"module."`, added by `torch.nn.DataParallel`) from every key
    /// that starts with it; other keys are kept unchanged. If a stripped key collides with
    /// an unprefixed one, the stripped (formerly prefixed) tensor wins.
    pub fn strip_prefix(self, prefix: &str) -> Self {
        let mut plain = BTreeMap::new();
        let mut stripped = Vec::new();
        for (k, t) in self.tensors {
            match k.strip_prefix(prefix) {
                Some(rest) => stripped.push((rest.to_string(), t)),
                None => {
                    plain.insert(k, t);
                }
            }
        }
        plain.extend(stripped);
        Self {
            tensors: plain,
            metadata: self.metadata,
        }
    }

    /// String metadata (read from / written to the safetensors `__metadata__`).
    pub fn metadata(&self) -> &BTreeMap<String, String> {
        &self.metadata
    }

    /// Sets one metadata entry.
    pub fn set_metadata(&mut self, key: impl Into<String>, value: impl Into<String>) {
        self.metadata.insert(key.into(), value.into());
    }

    /// Parses a safetensors file. `source_name` is only used in error messages. Tensors
    /// are decoded in parallel on the current rayon pool (loading time is start-up time).
    pub fn from_safetensors(source_name: &str, bytes: &[u8]) -> Result<Self, Error> {
        let st_err = |e: safetensors::SafeTensorError| Error::Safetensors {
            file: source_name.to_string(),
            message: e.to_string(),
        };
        let (_, meta) = SafeTensors::read_metadata(bytes).map_err(st_err)?;
        let st = SafeTensors::deserialize(bytes).map_err(st_err)?;
        let mut out = Weights::new();
        if let Some(m) = meta.metadata() {
            out.metadata = m.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        }
        let views: Vec<_> = st.iter().collect();
        let decoded: Vec<(String, Tensor)> = views
            .into_par_iter()
            .map(|(name, view)| {
                let data = decode(source_name, name, view.dtype(), view.data())?;
                Ok((name.to_string(), Tensor::new(view.shape().to_vec(), data)))
            })
            .collect::<Result<_, Error>>()?;
        out.tensors.extend(decoded);
        Ok(out)
    }

    /// Serialises to safetensors bytes: f32 tensors (`*.num_batches_tracked` as I64), with
    /// this set's metadata merged with `metadata` (entries in `metadata` win).
    pub fn to_safetensors(&self, metadata: &BTreeMap<String, String>) -> Result<Vec<u8>, Error> {
        let mut views = Vec::with_capacity(self.tensors.len());
        for (k, t) in &self.tensors {
            let expected = t.numel();
            if t.data.len() != expected {
                return Err(Error::DataLength {
                    file: "<in memory>".to_string(),
                    key: k.clone(),
                    shape: t.shape.clone(),
                    expected,
                    got: t.data.len(),
                });
            }
            let (dtype, bytes) = if is_counter(k) {
                let b = t
                    .data
                    .iter()
                    .flat_map(|v| (*v as i64).to_le_bytes())
                    .collect();
                (Dtype::I64, b)
            } else {
                let b = t.data.iter().flat_map(|v| v.to_le_bytes()).collect();
                (Dtype::F32, b)
            };
            views.push((
                k.clone(),
                OwnedView {
                    dtype,
                    shape: t.shape.clone(),
                    bytes,
                },
            ));
        }
        let mut meta: HashMap<String, String> = self
            .metadata
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        meta.extend(metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
        let sorted: BTreeMap<&String, &String> = meta.iter().collect();
        let sorted = serde_json::to_string(&sorted).ok();
        let meta = if meta.is_empty() { None } else { Some(meta) };
        let mut bytes = safetensors::serialize(views, meta).map_err(|e| Error::Safetensors {
            file: "<in memory>".to_string(),
            message: e.to_string(),
        })?;
        if let Some(sorted) = sorted {
            sort_metadata(&mut bytes, &sorted);
        }
        Ok(bytes)
    }
}

/// safetensors writes the metadata map in `HashMap` order, which differs from process to
/// process; rewrite it in key order (`sorted`: the same map, compact JSON, so the same
/// length) so that the same weights always give the same bytes. Leaves `bytes` as they are
/// when the header is not laid out as expected.
fn sort_metadata(bytes: &mut [u8], sorted: &str) {
    const KEY: &[u8] = b"\"__metadata__\":";
    let Some(len) = bytes
        .get(..8)
        .and_then(|b| <[u8; 8]>::try_from(b).ok())
        .map(|b| u64::from_le_bytes(b) as usize)
    else {
        return;
    };
    let Some(header) = bytes.get_mut(8..8usize.saturating_add(len)) else {
        return;
    };
    let Some(at) = header.windows(KEY.len()).position(|w| w == KEY) else {
        return;
    };
    let start = at + KEY.len();
    let Some(old) = header.get(start..start + sorted.len()) else {
        return;
    };
    let map = |b: &[u8]| serde_json::from_slice::<BTreeMap<String, String>>(b).ok();
    let old = map(old);
    if old.is_some() && old == map(sorted.as_bytes()) {
        header[start..start + sorted.len()].copy_from_slice(sorted.as_bytes());
    }
}

fn is_counter(key: &str) -> bool {
    key.ends_with("num_batches_tracked")
}

struct OwnedView {
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: Vec<u8>,
}

impl View for OwnedView {
    fn dtype(&self) -> Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> Cow<'_, [u8]> {
        Cow::Borrowed(&self.bytes)
    }
    fn data_len(&self) -> usize {
        self.bytes.len()
    }
}

fn decode(file: &str, key: &str, dtype: Dtype, b: &[u8]) -> Result<Vec<f32>, Error> {
    Ok(match dtype {
        Dtype::F32 => b
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        Dtype::F64 => b
            .chunks_exact(8)
            .map(|c| f64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        Dtype::F16 => b
            .chunks_exact(2)
            .map(|c| f16_to_f32(u16::from_le_bytes([c[0], c[1]])))
            .collect(),
        Dtype::BF16 => b
            .chunks_exact(2)
            .map(|c| f32::from_bits((u16::from_le_bytes([c[0], c[1]]) as u32) << 16))
            .collect(),
        Dtype::I64 if is_counter(key) => b
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as f32)
            .collect(),
        other => {
            return Err(Error::Dtype {
                file: file.to_string(),
                key: key.to_string(),
                dtype: format!("{other:?}"),
            })
        }
    })
}

/// IEEE 754 binary16 to f32 (exact).
pub(crate) fn f16_to_f32(h: u16) -> f32 {
    let sign = ((h >> 15) as u32) << 31;
    let exp = ((h >> 10) & 0x1f) as u32;
    let mant = (h & 0x3ff) as u32;
    let bits = match exp {
        0 => {
            // Zero or subnormal: mant * 2^-24, exact in f32.
            let v = mant as f32 * f32::from_bits(0x3380_0000); // 2^-24
            return if sign != 0 { -v } else { v };
        }
        31 => sign | 0x7f80_0000 | (mant << 13),
        _ => sign | ((exp + 112) << 23) | (mant << 13),
    };
    f32::from_bits(bits)
}

/// Records which keys were read, so unused ones can be reported. Shared by the branches'
/// loaders, which run in parallel.
#[derive(Debug, Default)]
pub(crate) struct KeyLog {
    used: Mutex<BTreeSet<String>>,
}

impl KeyLog {
    fn used(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        // A panic while holding the lock leaves a set that is still valid.
        self.used.lock().unwrap_or_else(|e| e.into_inner())
    }
    pub(crate) fn mark(&self, key: &str) {
        self.used().insert(key.to_string());
    }
    pub(crate) fn is_used(&self, key: &str) -> bool {
        self.used().contains(key)
    }
}

/// Path builder over [`Weights`] in the style of candle's `VarBuilder`: `pp` appends one key
/// segment, `get` fetches a tensor with its expected shape.
#[derive(Clone)]
pub(crate) struct Vb<'a> {
    w: &'a Weights,
    file: &'a str,
    prefix: String,
    log: &'a KeyLog,
}

impl<'a> Vb<'a> {
    pub(crate) fn new(w: &'a Weights, file: &'a str, log: &'a KeyLog) -> Self {
        Self {
            w,
            file,
            prefix: String::new(),
            log,
        }
    }

    /// Appends one key segment.
    pub(crate) fn pp(&self, seg: impl Display) -> Vb<'a> {
        let prefix = if self.prefix.is_empty() {
            seg.to_string()
        } else {
            format!("{}.{}", self.prefix, seg)
        };
        Vb {
            prefix,
            ..self.clone()
        }
    }

    /// Full key of `name` under this prefix.
    pub(crate) fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}.{}", self.prefix, name)
        }
    }

    pub(crate) fn file(&self) -> &'a str {
        self.file
    }

    pub(crate) fn contains(&self, name: &str) -> bool {
        self.w.get(&self.key(name)).is_some()
    }

    /// The tensor `name` whatever its shape (used to read dimensions from the checkpoint).
    pub(crate) fn get_any(&self, name: &str) -> Result<&'a Tensor, Error> {
        let key = self.key(name);
        let t = self.w.get(&key).ok_or_else(|| Error::MissingKey {
            file: self.file.to_string(),
            key: key.clone(),
        })?;
        if t.data.len() != t.numel() {
            return Err(Error::DataLength {
                file: self.file.to_string(),
                key,
                shape: t.shape.clone(),
                expected: t.numel(),
                got: t.data.len(),
            });
        }
        self.log.mark(&key);
        Ok(t)
    }

    /// The tensor `name`, which must have shape `expected`.
    pub(crate) fn get(&self, name: &str, expected: &[usize]) -> Result<&'a Tensor, Error> {
        let t = self.get_any(name)?;
        if t.shape != expected {
            return Err(Error::Shape {
                file: self.file.to_string(),
                key: self.key(name),
                expected: expected.to_vec(),
                got: t.shape.clone(),
            });
        }
        Ok(t)
    }

    /// Rank-checked dimension `dim` of tensor `name` (for reading the configuration).
    pub(crate) fn dim(&self, name: &str, rank: usize, dim: usize) -> Result<usize, Error> {
        let t = self.get_any(name)?;
        if t.shape.len() != rank {
            let mut expected = vec![0; rank];
            expected[..rank.min(t.shape.len())]
                .copy_from_slice(&t.shape[..rank.min(t.shape.len())]);
            return Err(Error::Shape {
                file: self.file.to_string(),
                key: self.key(name),
                expected,
                got: t.shape.clone(),
            });
        }
        Ok(t.shape[dim])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_is_written_in_key_order() {
        let mut w = Weights::default();
        w.tensors
            .insert("a".into(), Tensor::new(vec![2], vec![1.0, 2.0]));
        let meta: BTreeMap<String, String> =
            (0..8).map(|i| (format!("k{i}"), format!("v{i}"))).collect();
        let bytes = w.to_safetensors(&meta).unwrap();
        let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
        let header = std::str::from_utf8(&bytes[8..8 + n]).unwrap();
        let order: Vec<usize> = (0..8)
            .map(|i| header.find(&format!("\"k{i}\"")).unwrap())
            .collect();
        assert!(order.windows(2).all(|p| p[0] < p[1]), "{header}");
        let back = Weights::from_safetensors("t", &bytes).unwrap();
        assert_eq!(back.metadata.len(), 8);
    }

    #[test]
    fn f16_conversion() {
        assert_eq!(f16_to_f32(0x3c00), 1.0);
        assert_eq!(f16_to_f32(0xc000), -2.0);
        assert_eq!(f16_to_f32(0x0001), 2f32.powi(-24));
        assert_eq!(f16_to_f32(0x7bff), 65504.0);
        assert!(f16_to_f32(0x7c00).is_infinite());
        assert!(f16_to_f32(0x7e00).is_nan());
        assert_eq!(f16_to_f32(0x8000).to_bits(), (-0.0f32).to_bits());
    }

    #[test]
    fn strip_prefix_keeps_others() {
        let mut w = Weights::new();
        w.insert("module.a", Tensor::zeros(&[1]));
        w.insert("b", Tensor::zeros(&[2]));
        let w = w.strip_prefix("module.");
        let keys: Vec<_> = w.keys().collect();
        assert_eq!(keys, vec!["a", "b"]);
    }

    #[test]
    fn safetensors_round_trip_with_counter_and_metadata() {
        let mut w = Weights::new();
        w.insert(
            "x.weight",
            Tensor::new(vec![2, 3], vec![1., 2., 3., 4., 5., -6.5]),
        );
        w.insert("bn.num_batches_tracked", Tensor::new(vec![], vec![42.0]));
        w.set_metadata("heads", "3");
        let mut extra = BTreeMap::new();
        extra.insert("format".to_string(), "pt".to_string());
        let bytes = w.to_safetensors(&extra).unwrap();
        let st = SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(
            st.tensor("bn.num_batches_tracked").unwrap().dtype(),
            Dtype::I64
        );
        let back = Weights::from_safetensors("mem", &bytes).unwrap();
        assert_eq!(back.get("x.weight"), w.get("x.weight"));
        assert_eq!(back.get("bn.num_batches_tracked").unwrap().data, vec![42.0]);
        assert_eq!(back.metadata().get("heads").map(String::as_str), Some("3"));
        assert_eq!(
            back.metadata().get("format").map(String::as_str),
            Some("pt")
        );
    }

    #[test]
    fn other_dtypes_convert_or_fail() {
        let bf: Vec<u8> = [1.5f32, -2.0]
            .iter()
            .flat_map(|v| ((v.to_bits() >> 16) as u16).to_le_bytes())
            .collect();
        let f64b: Vec<u8> = [0.25f64, 3.0]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let f16b: Vec<u8> = [0x3c00u16, 0x3800]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let i64b: Vec<u8> = 7i64.to_le_bytes().to_vec();
        struct V(Dtype, Vec<usize>, Vec<u8>);
        impl View for &V {
            fn dtype(&self) -> Dtype {
                self.0
            }
            fn shape(&self) -> &[usize] {
                &self.1
            }
            fn data(&self) -> Cow<'_, [u8]> {
                Cow::Borrowed(&self.2)
            }
            fn data_len(&self) -> usize {
                self.2.len()
            }
        }
        let a = V(Dtype::BF16, vec![2], bf);
        let b = V(Dtype::F64, vec![2], f64b);
        let c = V(Dtype::F16, vec![2], f16b);
        let d = V(Dtype::I64, vec![1], i64b.clone());
        let bytes = safetensors::serialize(
            vec![
                ("a", &a),
                ("b", &b),
                ("c", &c),
                ("n.num_batches_tracked", &d),
            ],
            None,
        )
        .unwrap();
        let w = Weights::from_safetensors("f", &bytes).unwrap();
        assert_eq!(w.get("a").unwrap().data, vec![1.5, -2.0]);
        assert_eq!(w.get("b").unwrap().data, vec![0.25, 3.0]);
        assert_eq!(w.get("c").unwrap().data, vec![1.0, 0.5]);
        assert_eq!(w.get("n.num_batches_tracked").unwrap().data, vec![7.0]);

        let e = V(Dtype::I64, vec![1], i64b);
        let bytes = safetensors::serialize(vec![("layer.weight", &e)], None).unwrap();
        let err = Weights::from_safetensors("bad.safetensors", &bytes).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("bad.safetensors") && msg.contains("layer.weight"),
            "{msg}"
        );
    }

    #[test]
    fn garbage_is_an_error_naming_the_file() {
        let err = Weights::from_safetensors("junk.st", b"not a safetensors file").unwrap_err();
        assert!(err.to_string().contains("junk.st"));
    }
}
