//! The `torch.save` zip container: layout checks, bounded entry reads, tensor materialisation.
//!
//! Layout (one top folder, the "archive name", which torch takes from the first entry):
//! `<archive>/data.pkl`, `<archive>/data/<key>` (one per storage), `<archive>/byteorder`,
//! `<archive>/version` (or `.data/version`), and optional bookkeeping entries.

use std::borrow::Cow;
use std::collections::HashMap;
use std::io::Read;
use std::rc::Rc;

use crate::pickle::TensorMeta;
use crate::zipindex::{self, ZipIndex, ZipMethod};
use crate::{Error, Limits, TorchTensor};

/// Zip local-file-header magic, which every `torch.save` zip starts with.
pub(crate) const ZIP_MAGIC: &[u8; 4] = b"PK\x03\x04";

/// An opened torch zip with its entry names checked.
pub(crate) struct TorchZip<'a> {
    file: &'a str,
    bytes: &'a [u8],
    index: ZipIndex,
    by_name: HashMap<String, usize>,
    prefix: String,
    big_endian: bool,
    storages: HashMap<String, Rc<Cow<'a, [u8]>>>,
    bytes_read: u64,
    limits: &'a Limits,
}

/// True if `name` is a relative path with no `..`, `.`, empty, drive or backslash parts.
fn safe_name(name: &str) -> bool {
    !name.is_empty()
        && !name.starts_with('/')
        && !name.contains('\\')
        && !name.contains('\0')
        && !name.contains(':')
        && name
            .split('/')
            .all(|c| !c.is_empty() && c != ".." && c != ".")
}

impl<'a> TorchZip<'a> {
    /// Opens and validates the archive: names, one top folder, `data.pkl`, version, byteorder.
    pub(crate) fn open(file: &'a str, bytes: &'a [u8], limits: &'a Limits) -> Result<Self, Error> {
        if !bytes.starts_with(ZIP_MAGIC) {
            let reason = if bytes.starts_with(&[0x80, 0x02, 0x8a, 0x0a]) {
                "this is the legacy (pre-1.6) torch.save format, which is not supported; \
                 re-save it with a current torch"
            } else {
                "the file does not start with a zip header"
            };
            return Err(Error::Layout {
                file: file.to_string(),
                reason: reason.to_string(),
            });
        }
        let index = zipindex::index(file, bytes, limits)?;
        let mut by_name = HashMap::with_capacity(index.entries.len());
        let mut prefix: Option<String> = None;
        for (i, e) in index.entries.iter().enumerate() {
            let name = &e.name;
            if !safe_name(name) {
                return Err(Error::UnsafeEntryName {
                    file: file.to_string(),
                    entry: name.clone(),
                });
            }
            let top = name.split('/').next().unwrap_or_default().to_string();
            match &prefix {
                None => prefix = Some(top),
                Some(p) if *p == top && name.len() > p.len() => {}
                Some(p) => {
                    return Err(Error::Layout {
                        file: file.to_string(),
                        reason: format!("entry `{name}` is outside the archive folder `{p}/`"),
                    })
                }
            }
            if by_name.insert(name.clone(), i).is_some() {
                return Err(Error::Layout {
                    file: file.to_string(),
                    reason: format!("duplicate entry `{name}`"),
                });
            }
        }
        let Some(prefix) = prefix else {
            return Err(Error::Layout {
                file: file.to_string(),
                reason: "the zip is empty".to_string(),
            });
        };
        let mut z = TorchZip {
            file,
            bytes,
            index,
            by_name,
            prefix,
            big_endian: false,
            storages: HashMap::new(),
            bytes_read: 0,
            limits,
        };
        let version = match z.read_small(".data/version")? {
            Some(v) => Some(v),
            None => z.read_small("version")?,
        };
        if let Some(v) = version {
            let text = String::from_utf8_lossy(&v);
            let ok = text
                .trim()
                .parse::<u32>()
                .is_ok_and(|n| (1..=64).contains(&n));
            if !ok {
                return Err(Error::Layout {
                    file: file.to_string(),
                    reason: format!("unsupported archive version {:?}", text.trim()),
                });
            }
        }
        if let Some(b) = z.read_small("byteorder")? {
            let text = String::from_utf8_lossy(&b);
            match text.trim() {
                "little" => {}
                "big" => z.big_endian = true,
                other => {
                    return Err(Error::UnknownByteorder {
                        file: file.to_string(),
                        value: other.chars().take(64).collect(),
                    })
                }
            }
        }
        Ok(z)
    }

    fn full(&self, rel: &str) -> String {
        format!("{}/{rel}", self.prefix)
    }

    /// Reads a bookkeeping entry of at most 64 bytes, if present.
    fn read_small(&mut self, rel: &str) -> Result<Option<Vec<u8>>, Error> {
        Ok(self
            .read(rel, 64, "bookkeeping entry size (bytes)")?
            .map(Cow::into_owned))
    }

    /// Reads an entry fully and checks its CRC, refusing more than `max` bytes. Stored
    /// entries (all of torch.save's) are borrowed from the input, not copied.
    fn read(
        &mut self,
        rel: &str,
        max: u64,
        what: &'static str,
    ) -> Result<Option<Cow<'a, [u8]>>, Error> {
        let name = self.full(rel);
        let Some(&i) = self.by_name.get(&name) else {
            return Ok(None);
        };
        let entry = &self.index.entries[i];
        let file = self.file;
        let corrupt = |reason: String| Error::CorruptEntry {
            file: file.to_string(),
            entry: name.clone(),
            reason,
        };
        let declared = entry.size;
        let stored = entry.method == ZipMethod::Stored;
        // Deflate expands at most ~1032:1; a larger claimed ratio is a decompression bomb.
        if !stored
            && declared
                > entry
                    .compressed_size
                    .saturating_mul(1100)
                    .saturating_add(1024)
        {
            return Err(corrupt(format!(
                "claims {declared} bytes from {} compressed bytes",
                entry.compressed_size
            )));
        }
        if declared > max {
            return Err(Error::Limit {
                file: file.to_string(),
                what,
                got: declared,
                limit: max,
            });
        }
        // The index checked that the data lies inside the file.
        let span = usize::try_from(entry.data_offset).ok().and_then(|s| {
            let e = s.checked_add(usize::try_from(entry.compressed_size).ok()?)?;
            self.bytes.get(s..e)
        });
        let Some(raw) = span else {
            return Err(corrupt(
                "the entry's data runs past the end of the file".into(),
            ));
        };
        let data: Cow<'a, [u8]> = if stored {
            Cow::Borrowed(raw)
        } else {
            // Read at most one byte more than declared (<= max), so the output is bounded
            // whatever the data holds.
            let cap = usize::try_from(declared).unwrap_or(0).min(1 << 30);
            let mut out = Vec::with_capacity(cap);
            flate2::read::DeflateDecoder::new(raw)
                .take(declared.saturating_add(1))
                .read_to_end(&mut out)
                .map_err(|e| corrupt(format!("deflate data: {e}")))?;
            if out.len() as u64 != declared {
                return Err(corrupt(format!(
                    "inflates to {} bytes, the zip declares {declared}",
                    out.len()
                )));
            }
            Cow::Owned(out)
        };
        let crc = crc32fast::hash(&data);
        if crc != entry.crc32 {
            return Err(corrupt(format!(
                "Invalid checksum: CRC32 {crc:08x}, the zip says {:08x}",
                entry.crc32
            )));
        }
        Ok(Some(data))
    }

    /// The pickle (`data.pkl`).
    pub(crate) fn read_pickle(&mut self) -> Result<Cow<'a, [u8]>, Error> {
        let max = self.limits.max_pickle_bytes;
        self.read("data.pkl", max, "data.pkl size (bytes)")?
            .ok_or_else(|| Error::MissingEntry {
                file: self.file.to_string(),
                entry: self.full("data.pkl"),
            })
    }

    fn storage(&mut self, tensor: &str, key: &str) -> Result<Rc<Cow<'a, [u8]>>, Error> {
        if let Some(s) = self.storages.get(key) {
            return Ok(s.clone());
        }
        let budget = self
            .limits
            .max_total_tensor_bytes
            .saturating_sub(self.bytes_read);
        let data = self
            .read(&format!("data/{key}"), budget, "tensor bytes read")?
            .ok_or_else(|| Error::MissingStorage {
                file: self.file.to_string(),
                tensor: tensor.to_string(),
                key: key.to_string(),
            })?;
        self.bytes_read += data.len() as u64;
        let data = Rc::new(data);
        self.storages.insert(key.to_string(), data.clone());
        Ok(data)
    }

    /// Turns a strided view into an owned contiguous little-endian tensor, checking the
    /// shape against the limits and the storage bounds first. `produced` counts the bytes
    /// of all tensors made so far (limited by `max_total_tensor_bytes`).
    pub(crate) fn materialise(
        &mut self,
        name: &str,
        meta: &TensorMeta,
        produced: &mut u64,
    ) -> Result<TorchTensor, Error> {
        let dtype = meta.storage.dtype;
        let es = dtype.size() as u64;
        let absurd = |reason: String| Error::AbsurdShape {
            file: self.file.to_string(),
            tensor: name.to_string(),
            shape: meta.shape.clone(),
            reason,
        };
        let numel = meta
            .shape
            .iter()
            .try_fold(1u64, |acc, &d| acc.checked_mul(d))
            .ok_or_else(|| absurd("the element count overflows 64 bits".to_string()))?;
        if numel > self.limits.max_tensor_elements {
            return Err(absurd(format!(
                "{numel} elements, the limit is {}",
                self.limits.max_tensor_elements
            )));
        }
        let nbytes = numel * es;
        if produced.saturating_add(nbytes) > self.limits.max_total_tensor_bytes {
            return Err(Error::Limit {
                file: self.file.to_string(),
                what: "tensor bytes produced",
                got: produced.saturating_add(nbytes),
                limit: self.limits.max_total_tensor_bytes,
            });
        }
        let shape: Vec<usize> = meta
            .shape
            .iter()
            .map(|&d| usize::try_from(d))
            .collect::<Result<_, _>>()
            .map_err(|_| absurd("a dimension does not fit in usize".to_string()))?;
        let storage = self.storage(name, &meta.storage.key)?;
        if numel == 0 {
            return Ok(TorchTensor {
                dtype,
                shape,
                data: Vec::new(),
            });
        }
        // Last element touched, in elements: offset + sum((size - 1) * stride).
        let last = meta
            .shape
            .iter()
            .zip(&meta.stride)
            .try_fold(meta.offset, |acc, (&d, &s)| {
                (d - 1).checked_mul(s).and_then(|x| acc.checked_add(x))
            })
            .ok_or_else(|| absurd("offset and strides overflow 64 bits".to_string()))?;
        let needed = last
            .checked_add(1)
            .and_then(|n| n.checked_mul(es))
            .ok_or_else(|| absurd("offset and strides overflow 64 bits".to_string()))?;
        let got = (storage.len() as u64).min(meta.storage.numel.saturating_mul(es));
        if needed > got {
            return Err(Error::StorageTooShort {
                file: self.file.to_string(),
                tensor: name.to_string(),
                key: meta.storage.key.clone(),
                view: format!(
                    "shape {:?}, stride {:?}, offset {}",
                    meta.shape, meta.stride, meta.offset
                ),
                needed,
                got,
            });
        }
        *produced += nbytes;
        // All indices below are < storage.len() (checked above), so they fit in usize.
        let es = es as usize;
        let offset = meta.offset as usize;
        let mut data = if is_contiguous(&meta.shape, &meta.stride) {
            storage[offset * es..offset * es + numel as usize * es].to_vec()
        } else {
            gather(&storage, offset, &shape, &meta.stride, es, numel as usize)
        };
        if self.big_endian && es > 1 {
            data.chunks_exact_mut(es).for_each(<[u8]>::reverse);
        }
        Ok(TorchTensor { dtype, shape, data })
    }
}

/// Row-major contiguity, ignoring the strides of size-1 dimensions (as torch does).
fn is_contiguous(shape: &[u64], stride: &[u64]) -> bool {
    let mut expected = 1u64;
    for (&d, &s) in shape.iter().zip(stride).rev() {
        if d != 1 && s != expected {
            return false;
        }
        expected = expected.saturating_mul(d);
    }
    true
}

/// Copies a strided view element by element (odometer over the shape).
fn gather(
    storage: &[u8],
    offset: usize,
    shape: &[usize],
    stride: &[u64],
    es: usize,
    numel: usize,
) -> Vec<u8> {
    let stride: Vec<usize> = stride.iter().map(|&s| s as usize).collect();
    let mut out = Vec::with_capacity(numel * es);
    let mut idx = vec![0usize; shape.len()];
    let mut pos = offset;
    for _ in 0..numel {
        out.extend_from_slice(&storage[pos * es..pos * es + es]);
        for d in (0..shape.len()).rev() {
            idx[d] += 1;
            pos += stride[d];
            if idx[d] < shape[d] {
                break;
            }
            pos -= stride[d] * shape[d];
            idx[d] = 0;
        }
    }
    out
}

/// True if `bytes` is a zip whose entries look like a `torch.save` archive (`*/data.pkl`).
pub(crate) fn looks_like_torch_zip(bytes: &[u8]) -> bool {
    if !bytes.starts_with(ZIP_MAGIC) {
        return false;
    }
    let Ok(index) = zipindex::index("", bytes, &Limits::default()) else {
        return false;
    };
    let found = index.entries.iter().any(|e| {
        e.name
            .strip_suffix("/data.pkl")
            .is_some_and(|top| !top.is_empty() && !top.contains('/'))
    });
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(safe_name("archive/data/0"));
        assert!(!safe_name("../x"));
        assert!(!safe_name("archive/../../etc/passwd"));
        assert!(!safe_name("/etc/passwd"));
        assert!(!safe_name("archive\\..\\x"));
        assert!(!safe_name("C:/x"));
        assert!(!safe_name("archive//data"));
        assert!(!safe_name("archive/./data"));
    }

    #[test]
    fn contiguity_and_gather() {
        assert!(is_contiguous(&[2, 3], &[3, 1]));
        assert!(is_contiguous(&[1, 3], &[99, 1]));
        assert!(!is_contiguous(&[2, 3], &[1, 2]));
        // storage 0..6 as u8, viewed transposed [3, 2] with stride [1, 3]
        let s: Vec<u8> = (0..6).collect();
        assert_eq!(
            gather(&s, 0, &[3, 2], &[1, 3], 1, 6),
            vec![0, 3, 1, 4, 2, 5]
        );
        // expanded (stride 0) view
        assert_eq!(gather(&s, 2, &[2, 2], &[0, 1], 1, 4), vec![2, 3, 2, 3]);
    }
}
