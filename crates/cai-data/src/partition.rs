//! Cutting a dataset into partitions, like the original's `split_data.py`,
//! and the `manifest.json` that describes them.
//!
//! The dataset is cut in index order into partitions of equal galaxy counts
//! (the last one smaller). Each partition is a native file named
//! `00001.safetensors`, `00002.safetensors`, … and handed to a sink callback
//! as soon as it is made, so memory stays bounded by one partition. The
//! returned [`Manifest`] lists every key with its galaxy count, byte size,
//! SHA-256 and first galaxy, so a planner needs no listing and detects a
//! missing or damaged partition before any work starts.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::dataset::GalaxySource;
use crate::error::{Error, Result};
use crate::native::{
    read_partition, write_partition, write_torch, Partition, FORMAT_NAME, NUM_BANDS,
};
use crate::tensors::{write_tensors, StoredDtype, TensorInfo, TensorSet};

/// The manifest `version` this crate writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

/// Bytes one galaxy counts for when sizing partitions:
/// `4 * (5*H*W + 5 + 1)` (f32 image, 5 magnitudes, 1 redshift), i.e.
/// 20,504 bytes for 32x32 images, as in the original's `.pt` files.
pub fn bytes_per_galaxy(image_shape: [usize; 3]) -> u64 {
    let [c, h, w] = image_shape;
    4 * ((c as u64) * (h as u64) * (w as u64) + NUM_BANDS as u64 + 1)
}

/// Galaxies per partition for a partition size of `size_bytes`:
/// `max(1, size_bytes / bytes_per_galaxy(image_shape))` (integer division).
///
/// The size counts tensor data only, as the original's partition names did
/// (with 1 MB = 2^20 bytes, see [`parse_size`]): `25MB` gives 1,278 galaxies
/// of 32x32 ("≈1,280"), `100MB` gives 5,114 (the original: "≈5,113"). Files
/// are slightly bigger than `size_bytes`: they add a header of a few hundred
/// bytes and 8 bytes of `object_id` per galaxy.
pub fn galaxies_per_partition(image_shape: [usize; 3], size_bytes: u64) -> u64 {
    (size_bytes / bytes_per_galaxy(image_shape).max(1)).max(1)
}

/// One partition made by [`partition_dataset`], handed to the sink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionFile {
    /// File name: the 1-based partition number, 5 digits, `.safetensors`
    /// (`00001.safetensors`; more digits past 99,999), or `1.pt`, `2.pt`, … for
    /// [`FileFormat::Torch`].
    pub key: String,
    /// The 1-based partition number (the number in `key`).
    pub index: usize,
    /// Index in the dataset of this partition's first galaxy.
    pub first_galaxy: u64,
    /// Number of galaxies in this partition.
    pub galaxies: u64,
    /// The whole native file.
    pub bytes: Vec<u8>,
}

/// One partition in a [`Manifest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestEntry {
    /// File name, relative to the manifest (`00001.safetensors`).
    pub key: String,
    /// Number of galaxies.
    pub galaxies: u64,
    /// File size in bytes.
    pub bytes: u64,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: String,
    /// Index in the dataset of the first galaxy.
    pub first_galaxy: u64,
}

impl ManifestEntry {
    /// Checks that `bytes` are this partition: same size and SHA-256.
    pub fn verify(&self, bytes: &[u8]) -> Result<()> {
        if bytes.len() as u64 != self.bytes {
            return Err(Error::Checksum {
                key: self.key.clone(),
                reason: format!("{} bytes, the manifest says {}", bytes.len(), self.bytes),
            });
        }
        let got = sha256_hex(bytes);
        if got != self.sha256 {
            return Err(Error::Checksum {
                key: self.key.clone(),
                reason: format!("sha256 {got}, the manifest says {}", self.sha256),
            });
        }
        Ok(())
    }
}

/// The `manifest.json` written beside the partitions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Format of the partitions: `"cai-partition"`.
    pub format: String,
    /// Manifest version: 1.
    pub version: u32,
    /// Galaxies in all partitions together.
    pub total_galaxies: u64,
    /// `[channels, height, width]` of every image: AstroMAE's data only (absent for
    /// other tensors).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_shape: Option<[usize; 3]>,
    /// Whether the partitions carry redshift labels.
    pub labelled: bool,
    /// Every partition's tensors: name, stored dtype and per-galaxy shape (absent in
    /// manifests written before any model's tensors were cut).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors: Option<Vec<TensorInfo>>,
    /// The partitions, in dataset order.
    pub partitions: Vec<ManifestEntry>,
}

impl Manifest {
    /// Pretty-printed JSON.
    pub fn to_json(&self) -> String {
        // Serialising plain strings and integers cannot fail.
        serde_json::to_string_pretty(self).unwrap_or_default()
    }

    /// Parses and checks a manifest; errors name `source` (a path or URL).
    ///
    /// Checks: format and version, image shape, unique non-empty keys,
    /// 64-hex-digit checksums, partitions contiguous from galaxy 0 and
    /// adding up to `total_galaxies`.
    pub fn from_json(source: &str, bytes: &[u8]) -> Result<Manifest> {
        let bad = |reason: String| Error::Manifest {
            source_name: source.to_string(),
            reason,
        };
        let m: Manifest =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("not a manifest: {e}")))?;
        if m.format != FORMAT_NAME {
            return Err(bad(format!(
                "format is {:?}, expected {FORMAT_NAME:?}",
                m.format
            )));
        }
        if m.version != MANIFEST_VERSION {
            return Err(bad(format!(
                "version {} is not supported (expected {MANIFEST_VERSION})",
                m.version
            )));
        }
        if let Some([c, h, w]) = m.image_shape {
            if c != NUM_BANDS || h == 0 || w == 0 {
                return Err(bad(format!(
                    "image_shape {:?} is not [5, H, W] with H, W > 0",
                    [c, h, w]
                )));
            }
        }
        match &m.tensors {
            None if m.image_shape.is_none() => {
                return Err(bad("neither image_shape nor tensors is given".into()))
            }
            None => {}
            Some(tensors) => {
                let mut names = std::collections::HashSet::new();
                for t in tensors {
                    if t.name.is_empty() || !names.insert(t.name.as_str()) {
                        return Err(bad(format!(
                            "tensor name {:?} is empty or listed twice",
                            t.name
                        )));
                    }
                    if StoredDtype::from_name(&t.dtype).is_none() {
                        return Err(bad(format!(
                            "tensor `{}` has unknown dtype {:?}",
                            t.name, t.dtype
                        )));
                    }
                }
            }
        }
        let mut keys = std::collections::HashSet::new();
        let mut next = 0u64;
        for e in &m.partitions {
            if e.key.is_empty() {
                return Err(bad("a partition has an empty key".into()));
            }
            if !keys.insert(e.key.as_str()) {
                return Err(bad(format!("key {:?} is listed twice", e.key)));
            }
            if e.sha256.len() != 64 || !e.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "{}: sha256 {:?} is not 64 hex digits",
                    e.key, e.sha256
                )));
            }
            if e.first_galaxy != next {
                return Err(bad(format!(
                    "{}: first_galaxy {} but the partitions before it end at {next}",
                    e.key, e.first_galaxy
                )));
            }
            next = next
                .checked_add(e.galaxies)
                .ok_or_else(|| bad(format!("{}: galaxy count overflows", e.key)))?;
        }
        if next != m.total_galaxies {
            return Err(bad(format!(
                "partitions hold {next} galaxies, total_galaxies says {}",
                m.total_galaxies
            )));
        }
        Ok(m)
    }

    /// The entry for `key`, if listed.
    pub fn entry(&self, key: &str) -> Option<&ManifestEntry> {
        self.partitions.iter().find(|e| e.key == key)
    }

    /// The partitions' tensors: as recorded, or (in an older manifest) AstroMAE's
    /// `images`, `magnitudes`, `redshift` when labelled, and `object_id`.
    pub fn tensor_infos(&self) -> Vec<TensorInfo> {
        match (&self.tensors, self.image_shape) {
            (Some(t), _) => t.clone(),
            (None, Some(shape)) => astromae_infos(shape, self.labelled, true),
            (None, None) => Vec::new(),
        }
    }
}

/// AstroMAE's tensors as a manifest records them: `images` F32 `[C, H, W]`,
/// `magnitudes` F32 `[C]`, `redshift` F32 `[]` when labelled, `object_id` I64 `[]`.
pub fn astromae_infos(image_shape: [usize; 3], labelled: bool, object_id: bool) -> Vec<TensorInfo> {
    let info = |name: &str, dtype: &str, shape: &[usize]| TensorInfo {
        name: name.to_string(),
        dtype: dtype.to_string(),
        shape: shape.to_vec(),
    };
    let mut v = vec![
        info("images", "F32", &image_shape),
        info("magnitudes", "F32", &image_shape[..1]),
    ];
    if labelled {
        v.push(info("redshift", "F32", &[]));
    }
    if object_id {
        v.push(info("object_id", "I64", &[]));
    }
    v
}

/// Lowercase hex SHA-256 of `bytes`.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// The key of partition number `number` (1-based): `00001.safetensors`.
pub fn partition_key(number: usize) -> String {
    format!("{number:05}.safetensors")
}

/// Cuts `source` in index order into partitions of
/// [`galaxies_per_partition`]`(image_shape, size_bytes)` galaxies (the last
/// one holds the rest), writes each as a native file and hands it to `sink`
/// before reading the next, and returns the manifest.
///
/// Partitions always carry `object_id`: when the source has none, each
/// galaxy's index in the source is used, so predictions can be joined back
/// to the dataset. An empty source gives a manifest with no partitions.
pub fn partition_dataset<S, F>(source: &S, size_bytes: u64, sink: F) -> Result<Manifest>
where
    S: GalaxySource + ?Sized,
    F: FnMut(PartitionFile) -> Result<()>,
{
    partition_dataset_as(source, size_bytes, FileFormat::Native, sink)
}

/// File format of the partitions [`partition_dataset_as`] writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FileFormat {
    /// Native safetensors files `00001.safetensors`, … (with `object_id`).
    #[default]
    Native,
    /// The original's `TensorDataset` `.pt` files `1.pt`, `2.pt`, … (images, magnitudes,
    /// redshift when labelled; no object ids), as its splitter named them; `torch.load`
    /// reads them.
    Torch,
}

/// The key of partition `number` (1-based) in `format`: `00001.safetensors` or `1.pt`.
pub fn partition_key_as(number: usize, format: FileFormat) -> String {
    match format {
        FileFormat::Native => partition_key(number),
        FileFormat::Torch => format!("{number}.pt"),
    }
}

/// [`partition_dataset`] writing partitions in `format`. The manifest lists the files
/// either way (its `format` stays `cai-partition`: it names the manifest's layout, and
/// each file's format is detected from its bytes).
pub fn partition_dataset_as<S, F>(
    source: &S,
    size_bytes: u64,
    format: FileFormat,
    mut sink: F,
) -> Result<Manifest>
where
    S: GalaxySource + ?Sized,
    F: FnMut(PartitionFile) -> Result<()>,
{
    let shape = source.image_shape();
    let total = source.len();
    let per = galaxies_per_partition(shape, size_bytes);
    let mut entries = Vec::new();
    let mut first = 0u64;
    while first < total {
        let count = per.min(total - first);
        let n = usize::try_from(count).map_err(|_| Error::InvalidPartition {
            reason: format!("{count} galaxies per partition do not fit in memory"),
        })?;
        let mut p = source.read_range(first, n)?;
        if p.object_id.is_none() {
            p.object_id = Some((first..first + count).map(|i| i as i64).collect());
        }
        let bytes = match format {
            FileFormat::Native => write_partition(&p)?,
            FileFormat::Torch => write_torch(&p)?,
        };
        drop(p);
        let index = entries.len() + 1;
        let key = partition_key_as(index, format);
        entries.push(ManifestEntry {
            key: key.clone(),
            galaxies: count,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            first_galaxy: first,
        });
        sink(PartitionFile {
            key,
            index,
            first_galaxy: first,
            galaxies: count,
            bytes,
        })?;
        first += count;
    }
    Ok(Manifest {
        format: FORMAT_NAME.to_string(),
        version: MANIFEST_VERSION,
        total_galaxies: total,
        image_shape: Some(shape),
        labelled: source.has_redshift(),
        tensors: Some(astromae_infos(
            shape,
            source.has_redshift(),
            format == FileFormat::Native,
        )),
        partitions: entries,
    })
}

/// Cuts a [`TensorSet`] (any model's tensors) in index order into native partitions of
/// `max(1, size_bytes / set.bytes_per_galaxy())` galaxies (the last one holds the rest),
/// handing each to `sink`, and returns the manifest, which records the tensors. An
/// AstroMAE-shaped set is written exactly as [`partition_dataset`] writes its galaxies
/// (without adding object ids it lacks).
pub fn partition_tensor_set<F>(set: &TensorSet, size_bytes: u64, mut sink: F) -> Result<Manifest>
where
    F: FnMut(PartitionFile) -> Result<()>,
{
    set.validate("the tensors being cut")?;
    let per =
        usize::try_from((size_bytes / set.bytes_per_galaxy().max(1)).max(1)).unwrap_or(usize::MAX);
    let mut entries = Vec::new();
    let mut first = 0usize;
    while first < set.n {
        let part = set.slice(first, per);
        let bytes = write_tensors(&part)?;
        let index = entries.len() + 1;
        let key = partition_key(index);
        let count = part.n as u64;
        entries.push(ManifestEntry {
            key: key.clone(),
            galaxies: count,
            bytes: bytes.len() as u64,
            sha256: sha256_hex(&bytes),
            first_galaxy: first as u64,
        });
        sink(PartitionFile {
            key,
            index,
            first_galaxy: first as u64,
            galaxies: count,
            bytes,
        })?;
        first += part.n;
    }
    let image_shape = match set.get("images").map(|t| t.shape.as_slice()) {
        Some(&[c, h, w]) if set.to_partition().is_some() => Some([c, h, w]),
        _ => None,
    };
    Ok(Manifest {
        format: FORMAT_NAME.to_string(),
        version: MANIFEST_VERSION,
        total_galaxies: set.n as u64,
        image_shape,
        labelled: set.redshift().is_some(),
        tensors: Some(set.infos()),
        partitions: entries,
    })
}

/// A [`GalaxySource`] over existing partitions, in order, as if they were one dataset:
/// what re-cutting partitions at another size reads. `fetch` returns a partition's bytes
/// by key (the caller moves bytes from wherever they are; native or `.pt`, detected), and
/// partitions are read one at a time, in the order [`partition_dataset_as`] asks for
/// them, so memory stays about two partitions.
pub struct PartitionSeq<F> {
    name: String,
    keys: Vec<String>,
    /// Index of each partition's first galaxy, plus the total at the end.
    starts: Vec<u64>,
    shape: [usize; 3],
    labelled: bool,
    object_id: bool,
    fetch: F,
    current: std::sync::Mutex<Option<(usize, std::sync::Arc<Partition>)>>,
}

impl<F> PartitionSeq<F>
where
    F: Fn(&str) -> Result<Vec<u8>>,
{
    /// Partitions `keys` (in dataset order) read through `fetch`; `name` names the whole
    /// (a folder or URL) in messages. `counts`: galaxies per partition when known (a
    /// manifest's); without them every partition is read once here to count it. The first
    /// partition fixes the image shape and the label columns; a partition that differs is
    /// an error naming its key when it is read.
    pub fn open(
        name: impl Into<String>,
        keys: Vec<String>,
        counts: Option<Vec<u64>>,
        fetch: F,
    ) -> Result<Self> {
        let name = name.into();
        let Some(first_key) = keys.first() else {
            return Err(Error::InvalidPartition {
                reason: format!("{name}: no partitions to read"),
            });
        };
        let first = read_partition(first_key, &fetch(first_key)?)?;
        let counts = match counts {
            Some(c) if c.len() == keys.len() => c,
            Some(c) => {
                return Err(Error::InvalidPartition {
                    reason: format!(
                        "{name}: {} galaxy counts for {} partitions",
                        c.len(),
                        keys.len()
                    ),
                })
            }
            None => {
                let mut c = vec![first.n as u64];
                for k in &keys[1..] {
                    c.push(read_partition(k, &fetch(k)?)?.n as u64);
                }
                c
            }
        };
        let mut starts = Vec::with_capacity(keys.len() + 1);
        let mut at = 0u64;
        for c in &counts {
            starts.push(at);
            at = at.checked_add(*c).ok_or_else(|| Error::InvalidPartition {
                reason: format!("{name}: galaxy counts overflow"),
            })?;
        }
        starts.push(at);
        Ok(Self {
            name,
            shape: first.image_shape(),
            labelled: first.redshift.is_some(),
            object_id: first.object_id.is_some(),
            current: std::sync::Mutex::new(Some((0, std::sync::Arc::new(first)))),
            keys,
            starts,
            fetch,
        })
    }

    /// Partition `i`, read (and checked against the first) unless it is the current one.
    fn part(&self, i: usize) -> Result<std::sync::Arc<Partition>> {
        if let Ok(cur) = self.current.lock() {
            if let Some((j, p)) = cur.as_ref() {
                if *j == i {
                    return Ok(p.clone());
                }
            }
        }
        let key = &self.keys[i];
        let p = read_partition(key, &(self.fetch)(key)?)?;
        let want = self.starts[i + 1] - self.starts[i];
        let differs = if p.n as u64 != want {
            Some(format!("{} galaxies, expected {want}", p.n))
        } else if p.image_shape() != self.shape {
            Some(format!(
                "images {:?}, the first partition's are {:?}",
                p.image_shape(),
                self.shape
            ))
        } else if p.redshift.is_some() != self.labelled || p.object_id.is_some() != self.object_id {
            Some("label columns differ from the first partition's".to_string())
        } else {
            None
        };
        if let Some(reason) = differs {
            return Err(Error::InvalidPartition {
                reason: format!("{key}: {reason}"),
            });
        }
        let p = std::sync::Arc::new(p);
        if let Ok(mut cur) = self.current.lock() {
            *cur = Some((i, p.clone()));
        }
        Ok(p)
    }
}

impl<F> GalaxySource for PartitionSeq<F>
where
    F: Fn(&str) -> Result<Vec<u8>>,
{
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        self.starts.last().copied().unwrap_or(0)
    }
    fn image_shape(&self) -> [usize; 3] {
        self.shape
    }
    fn has_redshift(&self) -> bool {
        self.labelled
    }
    fn has_object_id(&self) -> bool {
        self.object_id
    }
    fn read_range(&self, start: u64, count: usize) -> Result<Partition> {
        let end = start
            .checked_add(count as u64)
            .filter(|&e| e <= self.len())
            .ok_or_else(|| Error::OutOfRange {
                file: self.name.clone(),
                start,
                count: count as u64,
                len: self.len(),
            })?;
        let [c, h, w] = self.shape;
        let mut out = Partition::empty([c, h, w], self.labelled, self.object_id);
        let mut at = start;
        while at < end {
            // The partition holding galaxy `at`: the last one starting at or before it.
            let i = self.starts.partition_point(|&s| s <= at) - 1;
            let p = self.part(i)?;
            let offset = (at - self.starts[i]) as usize;
            let take = (end.min(self.starts[i + 1]) - at) as usize;
            out.extend(&p.slice(offset, take))?;
            at += take as u64;
        }
        Ok(out)
    }
}

/// Parses a partition size: a number with an optional unit, case-insensitive
/// (`25MB`, `100MB`, `1.5GB`, `512KB`, `1000000`, `64 MiB`).
///
/// Units are binary, as the original's partition sizes were: K/KB/KiB =
/// 2^10, M/MB/MiB = 2^20, G/GB/GiB = 2^30, T/TB/TiB = 2^40 bytes; none or B
/// means bytes. That is the reading under which `25MB` holds the original's
/// ≈1,280 galaxies of 20,504 bytes (25·2^20 / 20,504 = 1,278; with 10^6 it
/// would be 1,219) and `100MB` 5,114 (its "≈5,113"). Fractions are rounded down to
/// whole bytes; the size must be at least one byte.
pub fn parse_size(text: &str) -> Result<u64> {
    let bad = |reason: &str| Error::ParseSize {
        input: text.to_string(),
        reason: reason.to_string(),
    };
    let t = text.trim();
    let split = t
        .find(|ch: char| !(ch.is_ascii_digit() || ch == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(bad("unknown unit (use B, KB, MB, GB or TB)")),
    };
    if num.is_empty() {
        return Err(bad("no number"));
    }
    let bytes = if let Ok(v) = num.parse::<u64>() {
        v.checked_mul(mult).ok_or_else(|| bad("too large"))?
    } else {
        let v: f64 = num.parse().map_err(|_| bad("not a number"))?;
        let b = (v * mult as f64).floor();
        if !b.is_finite() || b >= u64::MAX as f64 {
            return Err(bad("too large"));
        }
        b as u64
    };
    if bytes == 0 {
        return Err(bad("must be at least one byte"));
    }
    Ok(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn source(n: usize, labels: bool) -> Partition {
        Partition {
            n,
            channels: 5,
            height: 2,
            width: 2,
            images: (0..n * 20).map(|i| i as f32).collect(),
            magnitudes: (0..n * 5).map(|i| i as f32 * 0.1).collect(),
            redshift: labels.then(|| (0..n).map(|i| i as f32 * 0.001).collect()),
            object_id: None,
        }
    }

    /// A manifest as written before tensors were recorded (no `tensors` field).
    const OLD_MANIFEST: &str = r#"{"format":"cai-partition","version":1,"total_galaxies":3,"image_shape":[5,32,32],"labelled":true,"partitions":[{"key":"00001.safetensors","galaxies":3,"bytes":61952,"sha256":"0000000000000000000000000000000000000000000000000000000000000001","first_galaxy":0}]}"#;

    #[test]
    fn old_manifests_load_and_new_ones_round_trip_with_tensors() {
        let old = Manifest::from_json("old.json", OLD_MANIFEST.as_bytes()).unwrap();
        assert_eq!(old.image_shape, Some([5, 32, 32]));
        assert_eq!(old.tensors, None);
        let names: Vec<String> = old
            .tensor_infos()
            .iter()
            .map(TensorInfo::describe)
            .collect();
        assert_eq!(
            names,
            [
                "images F32[N, 5, 32, 32]",
                "magnitudes F32[N, 5]",
                "redshift F32[N]",
                "object_id I64[N]"
            ]
        );
        // Written back without the absent field.
        assert!(!old.to_json().contains("\"tensors\""), "{}", old.to_json());
        // Any tensors: cut, recorded, reloaded.
        let set = crate::tensors::read_tensors(
            "x.pt",
            &write_torch(&source(5, true)).unwrap(),
            Some(&["a".into(), "b".into(), "c".into()]),
        )
        .unwrap();
        let mut files = Vec::new();
        let m = partition_tensor_set(&set, 2 * set.bytes_per_galaxy(), |f| {
            files.push(f);
            Ok(())
        })
        .unwrap();
        assert_eq!(m.partitions.len(), 3);
        assert_eq!(m.image_shape, None);
        let back = Manifest::from_json("m.json", m.to_json().as_bytes()).unwrap();
        assert_eq!(back, m);
        assert_eq!(back.tensor_infos()[0].describe(), "a F32[N, 5, 2, 2]");
        let mut whole = crate::tensors::read_tensors(&files[0].key, &files[0].bytes, None).unwrap();
        for f in &files[1..] {
            m.entry(&f.key).unwrap().verify(&f.bytes).unwrap();
            whole
                .extend(&crate::tensors::read_tensors(&f.key, &f.bytes, None).unwrap())
                .unwrap();
        }
        assert_eq!(whole, set);
        // Neither field, or a bad dtype: refused.
        let none = OLD_MANIFEST.replace(r#""image_shape":[5,32,32],"#, "");
        assert!(Manifest::from_json("n.json", none.as_bytes()).is_err());
        let bad = OLD_MANIFEST.replace(
            r#""labelled":true,"#,
            r#""labelled":true,"tensors":[{"name":"a","dtype":"Q7","shape":[]}],"#,
        );
        let e = Manifest::from_json("b.json", bad.as_bytes())
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown dtype"), "{e}");
    }

    #[test]
    fn sizes_match_the_original() {
        assert_eq!(bytes_per_galaxy([5, 32, 32]), 20_504);
        let g = |s: &str| galaxies_per_partition([5, 32, 32], parse_size(s).unwrap());
        assert_eq!(g("25MB"), 1278);
        assert_eq!(g("100MB"), 5114);
        assert_eq!(g("1KB"), 1);
    }

    #[test]
    fn parse_size_forms() {
        assert_eq!(parse_size("25MB").unwrap(), 25 << 20);
        assert_eq!(parse_size("100mb").unwrap(), 100 << 20);
        assert_eq!(parse_size("1.5GB").unwrap(), 3 << 29);
        assert_eq!(parse_size("512KB").unwrap(), 512 << 10);
        assert_eq!(parse_size("1000000").unwrap(), 1_000_000);
        assert_eq!(parse_size(" 64 MiB ").unwrap(), 64 << 20);
        assert_eq!(parse_size("7B").unwrap(), 7);
        for bad in [
            "",
            "MB",
            "0",
            "0.0001B",
            "-5MB",
            "12XB",
            "1.2.3MB",
            "99999999999TB",
        ] {
            let e = parse_size(bad).unwrap_err().to_string();
            assert!(e.contains("invalid size"), "{bad}: {e}");
        }
    }

    #[test]
    fn recutting_partitions_equals_cutting_the_dataset() {
        let src = source(23, true);
        let mut files = std::collections::BTreeMap::new();
        let m = partition_dataset(&src, 4 * 104, |f| {
            files.insert(f.key, f.bytes);
            Ok(())
        })
        .unwrap();
        let keys: Vec<String> = m.partitions.iter().map(|e| e.key.clone()).collect();
        let counts: Vec<u64> = m.partitions.iter().map(|e| e.galaxies).collect();
        let fetch = |k: &str| {
            files
                .get(k)
                .cloned()
                .ok_or_else(|| Error::InvalidPartition {
                    reason: format!("{k}: no such partition"),
                })
        };
        for counts in [Some(counts), None] {
            let seq = PartitionSeq::open("parts/", keys.clone(), counts, fetch).unwrap();
            assert_eq!(seq.len(), 23);
            assert!(seq.has_redshift() && seq.has_object_id());
            // A range across three partitions.
            let mut want = src.slice(3, 10);
            want.object_id = Some((3..13).collect());
            assert_eq!(seq.read_range(3, 10).unwrap(), want);
            let again = partition_dataset(&seq, 7 * 104, |_| Ok(())).unwrap();
            let direct = partition_dataset(&src, 7 * 104, |_| Ok(())).unwrap();
            assert_eq!(again, direct);
            let e = seq.read_range(20, 4).unwrap_err().to_string();
            assert!(e.contains("parts/"), "{e}");
        }
        // A partition holding other than the counted galaxies is named.
        let seq = PartitionSeq::open("parts/", keys.clone(), Some(vec![4; 6]), fetch).unwrap();
        let e = seq.read_range(0, 23).unwrap_err().to_string();
        assert!(
            e.contains("00006.safetensors") && e.contains("expected 4"),
            "{e}"
        );
        assert!(PartitionSeq::open("parts/", Vec::new(), None, fetch).is_err());
    }

    #[test]
    fn manifest_checks() {
        let src = source(10, true);
        let m = partition_dataset(&src, 3 * 104, |_| Ok(())).unwrap();
        assert_eq!(m.partitions.len(), 4);
        let json = m.to_json();
        assert_eq!(Manifest::from_json("m.json", json.as_bytes()).unwrap(), m);
        let mut broken = m.clone();
        broken.partitions[1].first_galaxy = 4;
        let e = Manifest::from_json("s3://b/m.json", broken.to_json().as_bytes())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("s3://b/m.json") && e.contains("first_galaxy"),
            "{e}"
        );
        let mut broken = m.clone();
        broken.total_galaxies = 11;
        assert!(Manifest::from_json("m", broken.to_json().as_bytes()).is_err());
        let mut broken = m.clone();
        broken.partitions[2].key = broken.partitions[0].key.clone();
        assert!(Manifest::from_json("m", broken.to_json().as_bytes()).is_err());
        let mut broken = m;
        broken.partitions[0].sha256 = "xyz".into();
        assert!(Manifest::from_json("m", broken.to_json().as_bytes()).is_err());
        let e = Manifest::from_json("m.json", b"{").unwrap_err().to_string();
        assert!(e.contains("m.json"), "{e}");
    }

    #[test]
    fn empty_source_gives_empty_manifest() {
        let m = partition_dataset(&source(0, false), 1000, |_| Ok(())).unwrap();
        assert!(m.partitions.is_empty());
        assert_eq!(m.total_galaxies, 0);
        assert!(!m.labelled);
    }

    #[test]
    fn sink_errors_stop_partitioning() {
        let mut calls = 0;
        let r = partition_dataset(&source(10, false), 84, |_| {
            calls += 1;
            Err(Error::InvalidPartition {
                reason: "sink full".into(),
            })
        });
        assert!(r.is_err());
        assert_eq!(calls, 1);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn partitions_cover_dataset_once_in_order(n in 0usize..200, size in 1u64..4000, labels: bool) {
            let src = source(n, labels);
            let per = galaxies_per_partition([5, 2, 2], size);
            let mut files = Vec::new();
            let m = partition_dataset(&src, size, |f| { files.push(f); Ok(()) }).unwrap();
            prop_assert_eq!(m.total_galaxies, n as u64);
            prop_assert_eq!(m.labelled, labels);
            prop_assert_eq!(files.len(), m.partitions.len());
            let mut next = 0u64;
            for (i, (f, e)) in files.iter().zip(&m.partitions).enumerate() {
                prop_assert_eq!(f.index, i + 1);
                prop_assert_eq!(&f.key, &e.key);
                prop_assert_eq!(&f.key, &partition_key(i + 1));
                prop_assert_eq!(f.first_galaxy, next);
                prop_assert_eq!(e.first_galaxy, next);
                prop_assert!(f.galaxies >= 1 && f.galaxies <= per);
                if i + 1 < files.len() { prop_assert_eq!(f.galaxies, per); }
                prop_assert_eq!(e.bytes, f.bytes.len() as u64);
                prop_assert_eq!(&e.sha256, &sha256_hex(&f.bytes));
                e.verify(&f.bytes).unwrap();
                let p = read_partition(&f.key, &f.bytes).unwrap();
                let mut want = src.slice(next as usize, f.galaxies as usize);
                want.object_id = Some((next..next + f.galaxies).map(|v| v as i64).collect());
                prop_assert_eq!(p, want);
                next += f.galaxies;
            }
            prop_assert_eq!(next, n as u64);
            prop_assert_eq!(Manifest::from_json("m", m.to_json().as_bytes()).unwrap(), m);
        }
    }
}
