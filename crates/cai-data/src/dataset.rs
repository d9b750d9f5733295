//! Streaming access to big native files (whole datasets of up to millions of
//! galaxies): [`DatasetReader`] reads galaxy ranges with positioned reads and
//! [`DatasetWriter`] writes them in chunks, so memory is bounded by the chunk.
//!
//! The [`GalaxySource`] trait is what the partitioner reads from; it is
//! implemented by [`DatasetReader`] (a file) and by [`Partition`] (memory,
//! e.g. a dataset decoded from another format).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::native::{decode_floats, decode_ints, header_len, Layout, Partition, Span};

/// Bytes converted per I/O call when streaming (bounds the scratch memory).
const IO_CHUNK: usize = 1 << 20;

/// A source of galaxies that can be read by index range.
pub trait GalaxySource {
    /// A name for messages (a path or key).
    fn name(&self) -> &str;
    /// Number of galaxies.
    fn len(&self) -> u64;
    /// True if there are no galaxies.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// `[channels, height, width]` of every image.
    fn image_shape(&self) -> [usize; 3];
    /// Whether redshift labels are present.
    fn has_redshift(&self) -> bool;
    /// Whether object identifiers are present.
    fn has_object_id(&self) -> bool;
    /// Galaxies `start..start + count`; an error if the range is outside.
    fn read_range(&self, start: u64, count: usize) -> Result<Partition>;
}

impl GalaxySource for Partition {
    fn name(&self) -> &str {
        "<memory>"
    }
    fn len(&self) -> u64 {
        self.n as u64
    }
    fn image_shape(&self) -> [usize; 3] {
        Partition::image_shape(self)
    }
    fn has_redshift(&self) -> bool {
        self.redshift.is_some()
    }
    fn has_object_id(&self) -> bool {
        self.object_id.is_some()
    }
    fn read_range(&self, start: u64, count: usize) -> Result<Partition> {
        check_range("<memory>", start, count, self.n as u64)?;
        Ok(self.slice(start as usize, count))
    }
}

fn check_range(file: &str, start: u64, count: usize, len: u64) -> Result<()> {
    match start.checked_add(count as u64) {
        Some(end) if end <= len => Ok(()),
        _ => Err(Error::OutOfRange {
            file: file.to_string(),
            start,
            count: count as u64,
            len,
        }),
    }
}

/// A native dataset file opened for random access by galaxy range.
///
/// Opening parses only the header; [`DatasetReader::read_range`] reads just
/// the bytes of the galaxies asked for. `DatasetReader` is `Sync`: reads
/// from several threads are serialised on one file handle.
#[derive(Debug)]
pub struct DatasetReader {
    path: PathBuf,
    name: String,
    file: Mutex<File>,
    layout: Layout,
    file_len: u64,
}

impl DatasetReader {
    /// Opens `path` and checks its header against the file length.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let name = path.display().to_string();
        let mut file = File::open(&path).map_err(|e| Error::io("open", &path, e))?;
        let file_len = file
            .metadata()
            .map_err(|e| Error::io("stat", &path, e))?
            .len();
        let mut first8 = [0u8; 8];
        let got = read_up_to(&mut file, &mut first8).map_err(|e| Error::io("read", &path, e))?;
        let hlen = header_len(&name, first8.get(..got).filter(|b| b.len() == 8), file_len)?;
        let mut json = vec![0u8; hlen as usize];
        file.read_exact(&mut json)
            .map_err(|e| Error::io("read header of", &path, e))?;
        let layout = Layout::parse(&name, &json, file_len)?;
        Ok(DatasetReader {
            path,
            name,
            file: Mutex::new(file),
            layout,
            file_len,
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Number of galaxies.
    pub fn len(&self) -> u64 {
        self.layout.n as u64
    }

    /// True if the dataset holds no galaxies.
    pub fn is_empty(&self) -> bool {
        self.layout.n == 0
    }

    /// `[channels, height, width]` of every image.
    pub fn image_shape(&self) -> [usize; 3] {
        [self.layout.c, self.layout.h, self.layout.w]
    }

    /// Whether the file has a `redshift` tensor.
    pub fn has_redshift(&self) -> bool {
        self.layout.redshift.is_some()
    }

    /// Whether the file has an `object_id` tensor.
    pub fn has_object_id(&self) -> bool {
        self.layout.object_id.is_some()
    }

    /// The file length in bytes.
    pub fn file_len(&self) -> u64 {
        self.file_len
    }

    /// Reads galaxies `start..start + count` (memory proportional to `count`).
    pub fn read_range(&self, start: u64, count: usize) -> Result<Partition> {
        check_range(&self.name, start, count, self.len())?;
        let l = &self.layout;
        let mut file = self.file.lock().map_err(|_| Error::Io {
            op: "read",
            path: self.path.clone(),
            source: std::io::Error::other("file handle poisoned by a panic in another thread"),
        })?;
        let mut buf = Vec::new();
        let image_elems = (l.c * l.h * l.w) as u64;
        let mut p = Partition::empty(
            self.image_shape(),
            l.redshift.is_some(),
            l.object_id.is_some(),
        );
        p.n = count;
        let mut read = |span: &Span, per: u64, out: &mut dyn FnMut(&[u8])| -> Result<()> {
            let es = span.dtype.size() as u64;
            let from = span.start + start * per * es;
            let to = from + count as u64 * per * es;
            read_span(&mut file, &self.path, from, to, &mut buf, out)
        };
        let (di, dm) = (l.images.dtype, l.magnitudes.dtype);
        p.images.reserve(count * image_elems as usize);
        read(&l.images, image_elems, &mut |b| {
            decode_floats(di, b, &mut p.images)
        })?;
        read(&l.magnitudes, l.c as u64, &mut |b| {
            decode_floats(dm, b, &mut p.magnitudes)
        })?;
        if let (Some(s), Some(z)) = (&l.redshift, &mut p.redshift) {
            read(s, 1, &mut |b| decode_floats(s.dtype, b, z))?;
        }
        if let (Some(s), Some(id)) = (&l.object_id, &mut p.object_id) {
            read(s, 1, &mut |b| decode_ints(s.dtype, b, id))?;
        }
        Ok(p)
    }
}

impl GalaxySource for DatasetReader {
    fn name(&self) -> &str {
        &self.name
    }
    fn len(&self) -> u64 {
        DatasetReader::len(self)
    }
    fn image_shape(&self) -> [usize; 3] {
        DatasetReader::image_shape(self)
    }
    fn has_redshift(&self) -> bool {
        DatasetReader::has_redshift(self)
    }
    fn has_object_id(&self) -> bool {
        DatasetReader::has_object_id(self)
    }
    fn read_range(&self, start: u64, count: usize) -> Result<Partition> {
        DatasetReader::read_range(self, start, count)
    }
}

/// Reads as many bytes as available up to `buf.len()`.
fn read_up_to(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(k) => got += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

/// Reads bytes `from..to` in pieces of at most [`IO_CHUNK`] (a multiple of 8,
/// so elements never straddle pieces) and hands each piece to `out`.
fn read_span(
    file: &mut File,
    path: &Path,
    from: u64,
    to: u64,
    buf: &mut Vec<u8>,
    out: &mut dyn FnMut(&[u8]),
) -> Result<()> {
    file.seek(SeekFrom::Start(from))
        .map_err(|e| Error::io("seek", path, e))?;
    let mut pos = from;
    while pos < to {
        let k = ((to - pos) as usize).min(IO_CHUNK);
        buf.resize(k, 0);
        file.read_exact(buf)
            .map_err(|e| Error::io("read", path, e))?;
        out(buf);
        pos += k as u64;
    }
    Ok(())
}

/// The shape of a dataset to be written by [`DatasetWriter`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DatasetSpec {
    /// Number of galaxies (known up front).
    pub galaxies: u64,
    /// `[channels, height, width]`; channels must be 5.
    pub image_shape: [usize; 3],
    /// Whether a `redshift` tensor is written.
    pub redshift: bool,
    /// Whether an `object_id` tensor is written.
    pub object_id: bool,
}

/// Writes a native dataset file of a known number of galaxies, chunk by
/// chunk, without holding more than one chunk in memory.
///
/// The header is written first (the file is pre-sized), then each chunk's
/// images, magnitudes, redshifts and ids go to their regions with seeks. The
/// bytes are identical to [`crate::write_partition`] of the whole dataset.
/// Data goes to `<path>.partial`, renamed to `path` by
/// [`DatasetWriter::finish`]; dropping the writer unfinished removes the
/// partial file.
#[derive(Debug)]
pub struct DatasetWriter {
    path: PathBuf,
    partial: PathBuf,
    file: Option<File>,
    layout: Layout,
    spec: DatasetSpec,
    written: u64,
    buf: Vec<u8>,
}

impl DatasetWriter {
    /// Creates `<path>.partial` and writes the header for `spec`.
    pub fn create(path: impl AsRef<Path>, spec: DatasetSpec) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let layout = Layout::for_write(
            spec.galaxies,
            spec.image_shape,
            spec.redshift,
            spec.object_id,
        )
        .map_err(|e| Error::Writer {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        let mut partial = path.clone().into_os_string();
        partial.push(".partial");
        let partial = PathBuf::from(partial);
        let mut file = File::create(&partial).map_err(|e| Error::io("create", &partial, e))?;
        let mut w = DatasetWriter {
            path,
            partial: partial.clone(),
            file: None,
            layout,
            spec,
            written: 0,
            buf: Vec::new(),
        };
        // From here on, Drop removes the partial file on error.
        file.set_len(w.layout.file_len())
            .map_err(|e| Error::io("resize", &partial, e))?;
        file.write_all(&w.layout.header_bytes())
            .map_err(|e| Error::io("write", &partial, e))?;
        w.file = Some(file);
        Ok(w)
    }

    /// The final path (where the file appears after [`DatasetWriter::finish`]).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Galaxies written so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The spec this writer was created with.
    pub fn spec(&self) -> &DatasetSpec {
        &self.spec
    }

    /// Appends the galaxies of `chunk` after those already written.
    ///
    /// The chunk must match the spec's image shape and label columns, and
    /// must not overflow the announced number of galaxies.
    pub fn write_chunk(&mut self, chunk: &Partition) -> Result<()> {
        let bad = |reason: String| Error::Writer {
            path: self.path.clone(),
            reason,
        };
        chunk.validate().map_err(|e| bad(e.to_string()))?;
        if chunk.image_shape() != self.spec.image_shape {
            return Err(bad(format!(
                "chunk images {:?} differ from the dataset's {:?}",
                chunk.image_shape(),
                self.spec.image_shape
            )));
        }
        if chunk.redshift.is_some() != self.spec.redshift
            || chunk.object_id.is_some() != self.spec.object_id
        {
            return Err(bad(format!(
                "chunk label columns (redshift: {}, object_id: {}) differ from the dataset's (redshift: {}, object_id: {})",
                chunk.redshift.is_some(),
                chunk.object_id.is_some(),
                self.spec.redshift,
                self.spec.object_id
            )));
        }
        let end = self.written + chunk.n as u64;
        if end > self.spec.galaxies {
            return Err(bad(format!(
                "chunk of {} galaxies after {} overflows the announced {}",
                chunk.n, self.written, self.spec.galaxies
            )));
        }
        let Some(file) = self.file.as_mut() else {
            return Err(bad("writer already failed or finished".into()));
        };
        let start = self.written;
        let l = &self.layout;
        let il = chunk.image_len() as u64;
        let partial = &self.partial;
        let buf = &mut self.buf;
        let r = (|| {
            write_f32(
                file,
                partial,
                l.images.start + start * il * 4,
                &chunk.images,
                buf,
            )?;
            write_f32(
                file,
                partial,
                l.magnitudes.start + start * 4 * l.c as u64,
                &chunk.magnitudes,
                buf,
            )?;
            if let (Some(s), Some(z)) = (&l.redshift, &chunk.redshift) {
                write_f32(file, partial, s.start + start * 4, z, buf)?;
            }
            if let (Some(s), Some(id)) = (&l.object_id, &chunk.object_id) {
                write_le(file, partial, s.start + start * 8, id, buf, |v, b| {
                    b.extend_from_slice(&v.to_le_bytes())
                })?;
            }
            Ok(())
        })();
        if r.is_err() {
            // A failed write leaves the file in an unknown state.
            self.file = None;
        }
        r?;
        self.written = end;
        Ok(())
    }

    /// Checks that every announced galaxy was written, syncs the file and
    /// renames `<path>.partial` to `path`.
    pub fn finish(mut self) -> Result<PathBuf> {
        if self.written != self.spec.galaxies {
            return Err(Error::Writer {
                path: self.path.clone(),
                reason: format!(
                    "finished after {} of {} galaxies",
                    self.written, self.spec.galaxies
                ),
            });
        }
        let Some(file) = self.file.take() else {
            return Err(Error::Writer {
                path: self.path.clone(),
                reason: "an earlier write failed".into(),
            });
        };
        file.sync_all()
            .map_err(|e| Error::io("sync", &self.partial, e))?;
        drop(file);
        std::fs::rename(&self.partial, &self.path)
            .map_err(|e| Error::io("rename", &self.partial, e))?;
        // Renamed: nothing for Drop to remove.
        self.partial = PathBuf::new();
        Ok(self.path.clone())
    }
}

impl Drop for DatasetWriter {
    fn drop(&mut self) {
        self.file = None;
        if !self.partial.as_os_str().is_empty() {
            let _ = std::fs::remove_file(&self.partial);
        }
    }
}

fn write_f32(file: &mut File, path: &Path, at: u64, v: &[f32], buf: &mut Vec<u8>) -> Result<()> {
    write_le(file, path, at, v, buf, |x, b| {
        b.extend_from_slice(&x.to_le_bytes())
    })
}

/// Writes `values` little-endian at byte `at`, converting through `buf` in
/// pieces of at most [`IO_CHUNK`] bytes.
fn write_le<T: Copy>(
    file: &mut File,
    path: &Path,
    at: u64,
    values: &[T],
    buf: &mut Vec<u8>,
    put: impl Fn(T, &mut Vec<u8>),
) -> Result<()> {
    file.seek(SeekFrom::Start(at))
        .map_err(|e| Error::io("seek", path, e))?;
    let per = (IO_CHUNK / std::mem::size_of::<T>().max(1)).max(1);
    for piece in values.chunks(per) {
        buf.clear();
        for &v in piece {
            put(v, buf);
        }
        file.write_all(buf)
            .map_err(|e| Error::io("write", path, e))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::native::{read_partition, write_partition};

    fn sample(n: usize, start: usize) -> Partition {
        Partition {
            n,
            channels: 5,
            height: 3,
            width: 2,
            images: (0..n * 30).map(|i| (start * 30 + i) as f32).collect(),
            magnitudes: (0..n * 5).map(|i| (start * 5 + i) as f32 + 0.25).collect(),
            redshift: Some((0..n).map(|i| (start + i) as f32 / 10.0).collect()),
            object_id: Some((0..n).map(|i| (start + i) as i64).collect()),
        }
    }

    fn spec(n: u64) -> DatasetSpec {
        DatasetSpec {
            galaxies: n,
            image_shape: [5, 3, 2],
            redshift: true,
            object_id: true,
        }
    }

    #[test]
    fn writer_matches_write_partition_and_reader_reads_ranges() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let mut w = DatasetWriter::create(&path, spec(10)).unwrap();
        assert!(dir.path().join("d.safetensors.partial").exists());
        for (s, c) in [(0, 3), (3, 0), (3, 4), (7, 3)] {
            w.write_chunk(&sample(c, s)).unwrap();
        }
        w.finish().unwrap();
        assert!(!dir.path().join("d.safetensors.partial").exists());
        let bytes = std::fs::read(&path).unwrap();
        let whole = sample(10, 0);
        assert_eq!(bytes, write_partition(&whole).unwrap());
        assert_eq!(read_partition("d", &bytes).unwrap(), whole);

        let r = DatasetReader::open(&path).unwrap();
        assert_eq!(r.len(), 10);
        assert_eq!(r.image_shape(), [5, 3, 2]);
        assert!(r.has_redshift() && r.has_object_id());
        for (s, c) in [(0, 10), (2, 5), (9, 1), (10, 0), (4, 0)] {
            assert_eq!(r.read_range(s, c).unwrap(), whole.slice(s as usize, c));
        }
        let e = r.read_range(8, 3).unwrap_err().to_string();
        assert!(e.contains("outside") && e.contains("d.safetensors"), "{e}");
    }

    #[test]
    fn drop_without_finish_removes_partial_and_short_finish_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        {
            let mut w = DatasetWriter::create(&path, spec(4)).unwrap();
            w.write_chunk(&sample(2, 0)).unwrap();
        }
        assert!(!dir.path().join("d.safetensors.partial").exists());
        assert!(!path.exists());
        let mut w = DatasetWriter::create(&path, spec(4)).unwrap();
        w.write_chunk(&sample(2, 0)).unwrap();
        assert!(w.write_chunk(&sample(3, 2)).is_err());
        let e = w.finish().unwrap_err().to_string();
        assert!(e.contains("2 of 4"), "{e}");
        assert!(!dir.path().join("d.safetensors.partial").exists());
        assert!(!path.exists());
    }

    #[test]
    fn writer_rejects_mismatched_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("d.safetensors");
        let mut w = DatasetWriter::create(&path, spec(4)).unwrap();
        let mut c = sample(1, 0);
        c.redshift = None;
        assert!(w.write_chunk(&c).is_err());
        let mut c = sample(1, 0);
        c.height = 2;
        c.images.truncate(20);
        assert!(w.write_chunk(&c).is_err());
    }

    #[test]
    fn reader_reports_truncated_and_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.safetensors");
        let bytes = write_partition(&sample(3, 0)).unwrap();
        std::fs::write(&path, &bytes[..bytes.len() - 10]).unwrap();
        let e = DatasetReader::open(&path).unwrap_err().to_string();
        assert!(
            e.contains("t.safetensors") && e.contains("truncated"),
            "{e}"
        );
        std::fs::write(&path, &bytes[..3]).unwrap();
        let e = DatasetReader::open(&path).unwrap_err().to_string();
        assert!(e.contains("truncated"), "{e}");
        let e = DatasetReader::open(dir.path().join("nope"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("open") && e.contains("nope"), "{e}");
    }

    #[test]
    fn memory_source_checks_ranges() {
        let p = sample(3, 0);
        assert_eq!(GalaxySource::read_range(&p, 1, 2).unwrap(), p.slice(1, 2));
        assert!(GalaxySource::read_range(&p, 2, 2).is_err());
    }
}
