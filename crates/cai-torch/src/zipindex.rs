//! A zip reader for what `torch.save` writes, which never guesses where anything is.
//!
//! General zip readers (the `zip` crate, `rc-zip`) accept archives with bytes prepended
//! (self-extracting executables) and so search for the central directory near where the end
//! record says it is. That search is a guess, and it misplaces the directory of some files
//! torch writes (`zip` 9.8 fails every `torch.save` output whose name stem is 21 characters
//! long). Nothing is ever prepended to a torch file, so this reader takes the end records
//! at their word and checks them instead:
//!
//! - the end of central directory record (EOCD) ends the file (its comment, if any, runs
//!   exactly to the last byte);
//! - when a zip64 end locator sits right before it (torch always writes one), the zip64
//!   end record it points to must end exactly at the locator, and the EOCD's 16/32-bit
//!   fields must equal its 64-bit ones or be the all-ones "see zip64" value;
//! - the central directory must end exactly where the end records start and hold exactly
//!   the declared number of headers; zip64 extra fields supply sizes and offsets ≥ 4 GiB;
//! - each entry's local header must carry the same name and method, its data (and data
//!   descriptor, which torch writes after every entry) must lie before the central
//!   directory, no two entries may overlap, and a data descriptor must agree with the
//!   central directory.
//!
//! Reads are positional ([`Source`]), so indexing a 5 GB file reads its end records,
//! central directory, local headers and descriptors only. Stored and deflated entries are
//! read; encryption and other methods are refused. Every failure is a [`ZipProblem`].

use std::io::{Read, Seek, SeekFrom};

use crate::error::ZipProblem;
use crate::{Error, Limits};

const EOCD_SIG: u32 = 0x0605_4b50;
const ZIP64_EOCD_SIG: u32 = 0x0606_4b50;
const ZIP64_LOCATOR_SIG: u32 = 0x0706_4b50;
const CENTRAL_SIG: u32 = 0x0201_4b50;
const LOCAL_SIG: u32 = 0x0403_4b50;
const DESCRIPTOR_SIG: u32 = 0x0807_4b50;
const EOCD_LEN: u64 = 22;
const ZIP64_EOCD_LEN: u64 = 56;
const ZIP64_LOCATOR_LEN: u64 = 20;
const CENTRAL_LEN: usize = 46;
const LOCAL_LEN: usize = 30;
const ZIP64_EXTRA_ID: u16 = 0x0001;

/// Compression of a zip entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ZipMethod {
    /// Stored as is (method 0): every entry `torch.save` writes.
    Stored,
    /// Deflate (method 8): files some tools re-zipped.
    Deflated,
}

/// One entry of a zip, as its central directory header and local header give it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipEntry {
    /// The entry's name (UTF-8).
    pub name: String,
    /// Its compression.
    pub method: ZipMethod,
    /// CRC-32 of the uncompressed data, from the central directory.
    pub crc32: u32,
    /// Bytes of (compressed) data in the file.
    pub compressed_size: u64,
    /// Bytes once uncompressed.
    pub size: u64,
    /// Offset of its local header.
    pub header_offset: u64,
    /// Offset of its first data byte (after the local header, its name and extra fields,
    /// such as torch's `FB` alignment padding).
    pub data_offset: u64,
    /// Length of the data descriptor after the data (0 if there is none).
    pub descriptor_len: u64,
}

impl ZipEntry {
    /// One past the entry's last byte (data descriptor included).
    pub fn end(&self) -> u64 {
        self.data_offset
            .saturating_add(self.compressed_size)
            .saturating_add(self.descriptor_len)
    }
}

/// Where everything is in a zip: the entries in central-directory order and the end
/// records' facts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZipIndex {
    /// Entries, in central-directory order.
    pub entries: Vec<ZipEntry>,
    /// Offset of the central directory.
    pub central_directory_offset: u64,
    /// Length of the central directory in bytes.
    pub central_directory_size: u64,
    /// True if the file has zip64 end records (torch always writes them).
    pub zip64: bool,
    /// Length of the file.
    pub file_len: u64,
}

impl ZipIndex {
    /// The entry named `name`, if any.
    pub fn entry(&self, name: &str) -> Option<&ZipEntry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// Positional reads from the file being indexed.
pub(crate) trait Source {
    /// Length of the file.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; the range is within `len()` (callers check).
    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()>;
}

impl Source for &[u8] {
    fn len(&self) -> u64 {
        <[u8]>::len(self) as u64
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        let src = usize::try_from(offset)
            .ok()
            .and_then(|s| Some(s..s.checked_add(buf.len())?))
            .and_then(|r| self.get(r));
        match src {
            Some(s) => {
                buf.copy_from_slice(s);
                Ok(())
            }
            None => Err(std::io::ErrorKind::UnexpectedEof.into()),
        }
    }
}

/// A [`Source`] over any `Read + Seek` (a file: only the ranges asked for are read).
pub(crate) struct SeekSource<R> {
    inner: R,
    len: u64,
}

impl<R: Read + Seek> SeekSource<R> {
    pub(crate) fn new(mut inner: R) -> std::io::Result<Self> {
        let len = inner.seek(SeekFrom::End(0))?;
        Ok(SeekSource { inner, len })
    }
}

impl<R: Read + Seek> Source for SeekSource<R> {
    fn len(&self) -> u64 {
        self.len
    }

    fn read_at(&mut self, offset: u64, buf: &mut [u8]) -> std::io::Result<()> {
        self.inner.seek(SeekFrom::Start(offset))?;
        self.inner.read_exact(buf)
    }
}

/// Little-endian fields read in order from a record.
struct Fields<'a> {
    b: &'a [u8],
    at: usize,
}

impl Fields<'_> {
    fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut a = [0u8; N];
        // Callers size their buffers for the fixed part they walk, so this never runs out;
        // a short slice yields zeros rather than a panic.
        if let Some(s) = self.b.get(self.at..self.at + N) {
            a.copy_from_slice(s);
        }
        self.at += N;
        a
    }
    fn u16(&mut self) -> u16 {
        u16::from_le_bytes(self.bytes())
    }
    fn u32(&mut self) -> u32 {
        u32::from_le_bytes(self.bytes())
    }
    fn u64(&mut self) -> u64 {
        u64::from_le_bytes(self.bytes())
    }
}

fn fields(b: &[u8]) -> Fields<'_> {
    Fields { b, at: 0 }
}

/// The index builder: the file's name, its source and limits.
struct Indexer<'a, S> {
    file: &'a str,
    src: S,
    len: u64,
    limits: &'a Limits,
}

type R<T> = Result<T, Error>;

impl<S: Source> Indexer<'_, S> {
    fn fail(&self, problem: ZipProblem) -> Error {
        Error::Zip {
            file: self.file.to_string(),
            problem,
        }
    }

    fn bad(&self, record: impl Into<String>, offset: u64, reason: impl Into<String>) -> Error {
        self.fail(ZipProblem::BadRecord {
            record: record.into(),
            offset,
            reason: reason.into(),
        })
    }

    /// Reads `n` bytes at `offset`, which must lie within the file.
    fn read(&mut self, what: &str, offset: u64, n: u64) -> R<Vec<u8>> {
        let end = offset.checked_add(n).filter(|&e| e <= self.len);
        let Some(end) = end else {
            return Err(self.fail(ZipProblem::OutOfRange {
                what: what.to_string(),
                start: offset,
                end: offset.saturating_add(n),
                len: self.len,
            }));
        };
        let n = usize::try_from(n).map_err(|_| {
            self.fail(ZipProblem::OutOfRange {
                what: what.to_string(),
                start: offset,
                end,
                len: self.len,
            })
        })?;
        let mut buf = vec![0u8; n];
        self.src
            .read_at(offset, &mut buf)
            .map_err(|source| Error::Zip {
                file: self.file.to_string(),
                problem: ZipProblem::Io {
                    offset,
                    len: n as u64,
                    source,
                },
            })?;
        Ok(buf)
    }

    fn run(&mut self) -> R<ZipIndex> {
        if self.len < EOCD_LEN {
            return Err(self.fail(ZipProblem::TooShort { len: self.len }));
        }
        let (eocd_pos, eocd) = self.find_eocd()?;
        let mut f = fields(&eocd[4..]);
        let disk = f.u16();
        let cd_disk = f.u16();
        let entries_disk16 = f.u16();
        let entries16 = f.u16();
        let cd_size32 = f.u32();
        let cd_offset32 = f.u32();
        let wants_zip64 = entries16 == 0xffff
            || entries_disk16 == 0xffff
            || cd_size32 == u32::MAX
            || cd_offset32 == u32::MAX;
        let locator_pos = eocd_pos.checked_sub(ZIP64_LOCATOR_LEN);
        let has_locator = match locator_pos {
            Some(p) => {
                let sig = self.read("zip64 end locator", p, 4)?;
                fields(&sig).u32() == ZIP64_LOCATOR_SIG
            }
            None => false,
        };
        let (entries, cd_size, cd_offset, end_start) = match locator_pos {
            Some(locator_pos) if has_locator => {
                let z = self.zip64_end(locator_pos)?;
                let check = |name: &str, small: u64, big: u64, all_ones: u64| {
                    if small == big || small == all_ones {
                        Ok(())
                    } else {
                        Err(ZipProblem::Inconsistent(format!(
                            "the end record says {name} {small}, the zip64 end record {big}"
                        )))
                    }
                };
                let checks = [
                    check("entries", entries16.into(), z.entries, 0xffff),
                    check(
                        "entries on this disk",
                        entries_disk16.into(),
                        z.entries,
                        0xffff,
                    ),
                    check(
                        "central directory size",
                        cd_size32.into(),
                        z.cd_size,
                        u32::MAX.into(),
                    ),
                    check(
                        "central directory offset",
                        cd_offset32.into(),
                        z.cd_offset,
                        u32::MAX.into(),
                    ),
                ];
                for c in checks {
                    c.map_err(|p| self.fail(p))?;
                }
                if (disk != 0 && disk != 0xffff) || (cd_disk != 0 && cd_disk != 0xffff) {
                    return Err(self.fail(ZipProblem::MultiDisk));
                }
                (z.entries, z.cd_size, z.cd_offset, z.offset)
            }
            _ => {
                if wants_zip64 {
                    return Err(self.bad(
                        "end of central directory record",
                        eocd_pos,
                        "holds the all-ones \"see zip64\" value, but no zip64 end locator \
                         precedes it",
                    ));
                }
                if disk != 0 || cd_disk != 0 {
                    return Err(self.fail(ZipProblem::MultiDisk));
                }
                if entries_disk16 != entries16 {
                    return Err(self.fail(ZipProblem::Inconsistent(format!(
                        "the end record says {entries_disk16} entries on this disk and \
                         {entries16} in all"
                    ))));
                }
                (
                    u64::from(entries16),
                    u64::from(cd_size32),
                    u64::from(cd_offset32),
                    eocd_pos,
                )
            }
        };
        let cd_end = cd_offset.checked_add(cd_size);
        if cd_end != Some(end_start) {
            let what = if cd_end.is_some_and(|e| e < end_start) {
                "ends before"
            } else {
                "runs into"
            };
            return Err(self.fail(ZipProblem::Inconsistent(format!(
                "the central directory at {cd_offset} of {cd_size} bytes {what} the end \
                 records, which start at {end_start}"
            ))));
        }
        let max = self.limits.max_zip_entries as u64;
        if entries > max {
            return Err(Error::Limit {
                file: self.file.to_string(),
                what: "zip entries",
                got: entries,
                limit: max,
            });
        }
        if cd_size > self.limits.max_central_directory_bytes {
            return Err(Error::Limit {
                file: self.file.to_string(),
                what: "zip central directory size (bytes)",
                got: cd_size,
                limit: self.limits.max_central_directory_bytes,
            });
        }
        if entries.saturating_mul(CENTRAL_LEN as u64) > cd_size {
            return Err(self.fail(ZipProblem::Inconsistent(format!(
                "{entries} entries cannot fit in a central directory of {cd_size} bytes"
            ))));
        }
        let cd = self.read("central directory", cd_offset, cd_size)?;
        let mut out = Vec::with_capacity(entries as usize);
        let mut at = 0usize;
        for i in 0..entries {
            let (entry, next) = self.central_header(&cd, at, cd_offset, i)?;
            out.push(entry);
            at = next;
        }
        if at != cd.len() {
            return Err(self.fail(ZipProblem::Inconsistent(format!(
                "the central directory holds {} bytes after its {entries} declared headers",
                cd.len() - at
            ))));
        }
        // Local headers in file order, each checked to start after the previous entry's
        // end before it is read, so all the reads together stay within the file's length.
        let mut order: Vec<usize> = (0..out.len()).collect();
        order.sort_by_key(|&i| out[i].header_offset);
        let mut prev: Option<usize> = None;
        for &i in &order {
            if let Some(p) = prev {
                let (a, b) = (&out[p], &out[i]);
                if a.end() > b.header_offset {
                    return Err(self.fail(ZipProblem::Overlap {
                        first: a.name.clone(),
                        first_span: (a.header_offset, a.end()),
                        second: b.name.clone(),
                        second_start: b.header_offset,
                    }));
                }
            }
            self.local_header(&mut out[i], cd_offset)?;
            prev = Some(i);
        }
        Ok(ZipIndex {
            entries: out,
            central_directory_offset: cd_offset,
            central_directory_size: cd_size,
            zip64: has_locator,
            file_len: self.len,
        })
    }

    /// The EOCD: the last signature whose record and comment end exactly at the file's end.
    fn find_eocd(&mut self) -> R<(u64, Vec<u8>)> {
        // Without a comment (torch writes none) the record is the last 22 bytes.
        let last = self.read(
            "end of central directory record",
            self.len - EOCD_LEN,
            EOCD_LEN,
        )?;
        if fields(&last).u32() == EOCD_SIG && last[20..] == [0, 0] {
            return Ok((self.len - EOCD_LEN, last));
        }
        let tail_len = self.len.min(EOCD_LEN + 0xffff);
        let tail_start = self.len - tail_len;
        let tail = self.read("end of the file", tail_start, tail_len)?;
        let mut pos = tail.len() - EOCD_LEN as usize;
        loop {
            let rec = &tail[pos..pos + EOCD_LEN as usize];
            let mut f = fields(rec);
            if f.u32() == EOCD_SIG {
                let comment = u16::from_le_bytes([rec[20], rec[21]]) as usize;
                if pos + EOCD_LEN as usize + comment == tail.len() {
                    return Ok((tail_start + pos as u64, rec.to_vec()));
                }
            }
            if pos == 0 {
                return Err(self.fail(ZipProblem::NoEndRecord { searched: tail_len }));
            }
            pos -= 1;
        }
    }

    fn zip64_end(&mut self, locator_pos: u64) -> R<Zip64End> {
        let loc = self.read("zip64 end locator", locator_pos, ZIP64_LOCATOR_LEN)?;
        let mut f = fields(&loc[4..]);
        let disk = f.u32();
        let offset = f.u64();
        let disks = f.u32();
        if disk != 0 || disks > 1 {
            return Err(self.fail(ZipProblem::MultiDisk));
        }
        let record = "zip64 end of central directory record";
        let fits = offset
            .checked_add(ZIP64_EOCD_LEN)
            .is_some_and(|e| e <= locator_pos);
        if !fits {
            return Err(self.bad(
                "zip64 end locator",
                locator_pos,
                format!(
                    "points to {offset}, where a {ZIP64_EOCD_LEN}-byte zip64 end record \
                     would not end before the locator"
                ),
            ));
        }
        let z = self.read(record, offset, ZIP64_EOCD_LEN)?;
        let mut f = fields(&z);
        if f.u32() != ZIP64_EOCD_SIG {
            return Err(self.bad(record, offset, "has no zip64 end signature"));
        }
        let size = f.u64();
        if offset.checked_add(12).and_then(|o| o.checked_add(size)) != Some(locator_pos) {
            return Err(self.bad(
                record,
                offset,
                format!(
                    "declares {size} bytes after its first 12, which does not end at the \
                     locator ({locator_pos})"
                ),
            ));
        }
        let _made_by = f.u16();
        let _needed = f.u16();
        let disk = f.u32();
        let cd_disk = f.u32();
        let entries_disk = f.u64();
        let entries = f.u64();
        let cd_size = f.u64();
        let cd_offset = f.u64();
        if disk != 0 || cd_disk != 0 {
            return Err(self.fail(ZipProblem::MultiDisk));
        }
        if entries_disk != entries {
            return Err(self.fail(ZipProblem::Inconsistent(format!(
                "the zip64 end record says {entries_disk} entries on this disk and {entries} \
                 in all"
            ))));
        }
        Ok(Zip64End {
            offset,
            entries,
            cd_size,
            cd_offset,
        })
    }

    /// Parses central header `i` at `at` in `cd`; returns it and the next header's position.
    fn central_header(&self, cd: &[u8], at: usize, cd_offset: u64, i: u64) -> R<(ZipEntry, usize)> {
        let abs = cd_offset.saturating_add(at as u64);
        let record = format!("central directory header {i}");
        let Some(fixed) = cd.get(at..at + CENTRAL_LEN) else {
            return Err(self.bad(record, abs, "runs past the end of the central directory"));
        };
        let mut f = fields(fixed);
        if f.u32() != CENTRAL_SIG {
            return Err(self.bad(record, abs, "has no central directory header signature"));
        }
        let _made_by = f.u16();
        let _needed = f.u16();
        let flags = f.u16();
        let method = f.u16();
        let _time = f.u16();
        let _date = f.u16();
        let crc32 = f.u32();
        let csize32 = f.u32();
        let usize32 = f.u32();
        let name_len = usize::from(f.u16());
        let extra_len = usize::from(f.u16());
        let comment_len = usize::from(f.u16());
        let disk16 = f.u16();
        let _internal = f.u16();
        let _external = f.u32();
        let offset32 = f.u32();
        let name_end = at + CENTRAL_LEN + name_len;
        let extra_end = name_end + extra_len;
        let next = extra_end + comment_len;
        if next > cd.len() {
            return Err(self.bad(
                record,
                abs,
                format!(
                    "with its name, extra fields and comment ({} bytes) runs past the end \
                     of the central directory",
                    next - at
                ),
            ));
        }
        let name = std::str::from_utf8(&cd[at + CENTRAL_LEN..name_end])
            .map_err(|_| self.bad(record.clone(), abs, "has a name that is not UTF-8"))?
            .to_string();
        let record = format!("central directory header of `{name}`");
        let mut size = u64::from(usize32);
        let mut compressed_size = u64::from(csize32);
        let mut header_offset = u64::from(offset32);
        let mut disk = u32::from(disk16);
        let needs = [
            usize32 == u32::MAX,
            csize32 == u32::MAX,
            offset32 == u32::MAX,
            disk16 == 0xffff,
        ];
        if needs.iter().any(|&n| n) {
            let Some(z) = find_extra(&cd[name_end..extra_end], ZIP64_EXTRA_ID) else {
                return Err(self.bad(
                    record,
                    abs,
                    "holds an all-ones size or offset but no zip64 extra field",
                ));
            };
            let want = needs[..3].iter().filter(|&&n| n).count() * 8 + usize::from(needs[3]) * 4;
            if z.len() < want {
                return Err(self.bad(
                    record,
                    abs,
                    format!(
                        "has a zip64 extra field of {} bytes, {want} needed",
                        z.len()
                    ),
                ));
            }
            let mut f = fields(z);
            if needs[0] {
                size = f.u64();
            }
            if needs[1] {
                compressed_size = f.u64();
            }
            if needs[2] {
                header_offset = f.u64();
            }
            if needs[3] {
                disk = f.u32();
            }
        }
        if disk != 0 {
            return Err(self.fail(ZipProblem::MultiDisk));
        }
        if flags & 1 != 0 {
            return Err(self.fail(ZipProblem::Encrypted { entry: name }));
        }
        let method = match method {
            0 => ZipMethod::Stored,
            8 => ZipMethod::Deflated,
            m => {
                return Err(self.fail(ZipProblem::UnsupportedMethod {
                    entry: name,
                    method: m,
                }))
            }
        };
        if method == ZipMethod::Stored && compressed_size != size {
            return Err(self.bad(
                record,
                abs,
                format!("a stored entry of {compressed_size} bytes declares {size} uncompressed"),
            ));
        }
        if header_offset >= cd_offset {
            return Err(self.bad(
                record,
                abs,
                format!(
                    "puts the local header at {header_offset}, not before the central \
                     directory ({cd_offset})"
                ),
            ));
        }
        let entry = ZipEntry {
            name,
            method,
            crc32,
            compressed_size,
            size,
            header_offset,
            data_offset: 0,
            // Stashed here until the local header is read: 1 if a descriptor follows.
            descriptor_len: u64::from(flags & 8 != 0),
        };
        Ok((entry, next))
    }

    /// Reads `e`'s local header (and data descriptor) and fills in where its data is.
    fn local_header(&mut self, e: &mut ZipEntry, cd_offset: u64) -> R<()> {
        let record = format!("local header of `{}`", e.name);
        let at = e.header_offset;
        let room = cd_offset - at;
        if room < LOCAL_LEN as u64 {
            return Err(self.bad(record, at, "runs into the central directory"));
        }
        let fixed = self.read(&record, at, LOCAL_LEN as u64)?;
        let mut f = fields(&fixed);
        if f.u32() != LOCAL_SIG {
            return Err(self.bad(record, at, "has no local header signature"));
        }
        let _needed = f.u16();
        let flags = f.u16();
        let method = f.u16();
        let _time = f.u16();
        let _date = f.u16();
        let crc32 = f.u32();
        let csize32 = f.u32();
        let usize32 = f.u32();
        let name_len = u64::from(f.u16());
        let extra_len = u64::from(f.u16());
        if name_len != e.name.len() as u64 {
            return Err(self.bad(
                record,
                at,
                format!(
                    "has a name of {name_len} bytes, the central directory's has {}",
                    e.name.len()
                ),
            ));
        }
        let var_len = name_len + extra_len;
        if room < LOCAL_LEN as u64 + var_len {
            return Err(self.bad(
                record,
                at,
                "with its name and extra fields runs into the central directory",
            ));
        }
        let var = self.read(&record, at + LOCAL_LEN as u64, var_len)?;
        let (name, extra) = var.split_at(name_len as usize);
        if name != e.name.as_bytes() {
            return Err(self.bad(
                record,
                at,
                format!(
                    "names `{}`, the central directory `{}`",
                    String::from_utf8_lossy(name),
                    e.name
                ),
            ));
        }
        let cd_method = match e.method {
            ZipMethod::Stored => 0,
            ZipMethod::Deflated => 8,
        };
        if method != cd_method {
            return Err(self.bad(
                record,
                at,
                format!("says method {method}, the central directory {cd_method}"),
            ));
        }
        let has_descriptor = e.descriptor_len == 1;
        if (flags & 8 != 0) != has_descriptor {
            return Err(self.bad(
                record,
                at,
                "and the central directory disagree on whether a data descriptor follows",
            ));
        }
        let zip64_extra = find_extra(extra, ZIP64_EXTRA_ID);
        if !has_descriptor {
            // Sizes live here; all-ones means the zip64 extra field has them (usize first).
            let mut lf = zip64_extra.map(fields);
            let mut big = |v: u32| -> Option<u64> {
                if v == u32::MAX {
                    lf.as_mut()
                        .filter(|f| f.at + 8 <= f.b.len())
                        .map(Fields::u64)
                } else {
                    Some(u64::from(v))
                }
            };
            let (usize_l, csize_l) = (big(usize32), big(csize32));
            if crc32 != e.crc32 || usize_l != Some(e.size) || csize_l != Some(e.compressed_size) {
                return Err(self.bad(
                    record,
                    at,
                    format!(
                        "says CRC {crc32:08x}, {} bytes ({} compressed); the central \
                         directory says CRC {:08x}, {} bytes ({} compressed)",
                        usize_l.map_or("?".into(), |v| v.to_string()),
                        csize_l.map_or("?".into(), |v| v.to_string()),
                        e.crc32,
                        e.size,
                        e.compressed_size
                    ),
                ));
            }
        }
        e.data_offset = at + LOCAL_LEN as u64 + var_len;
        let data_end = e.data_offset.checked_add(e.compressed_size);
        let Some(data_end) = data_end.filter(|&d| d <= cd_offset) else {
            return Err(self.fail(ZipProblem::OutOfRange {
                what: format!("data of `{}`", e.name),
                start: e.data_offset,
                end: e.data_offset.saturating_add(e.compressed_size),
                len: cd_offset,
            }));
        };
        e.descriptor_len = 0;
        if has_descriptor {
            e.descriptor_len = self.descriptor(e, data_end, cd_offset, zip64_extra.is_some())?;
        }
        Ok(())
    }

    /// Checks the data descriptor at `at` against the central directory; returns its length.
    fn descriptor(&mut self, e: &ZipEntry, at: u64, cd_offset: u64, wide: bool) -> R<u64> {
        let record = format!("data descriptor of `{}`", e.name);
        let avail = (cd_offset - at).min(24);
        let d = self.read(&record, at, avail)?;
        let mut f = fields(&d);
        let mut len = if wide { 20 } else { 12 };
        if d.len() >= 4 && f.u32() == DESCRIPTOR_SIG {
            len += 4;
        } else {
            f = fields(&d);
        }
        if (d.len() as u64) < len {
            return Err(self.bad(record, at, "runs into the central directory"));
        }
        let crc32 = f.u32();
        let (csize, size) = if wide {
            (f.u64(), f.u64())
        } else {
            (u64::from(f.u32()), u64::from(f.u32()))
        };
        if crc32 != e.crc32 || csize != e.compressed_size || size != e.size {
            return Err(self.bad(
                record,
                at,
                format!(
                    "says CRC {crc32:08x}, {size} bytes ({csize} compressed); the central \
                     directory says CRC {:08x}, {} bytes ({} compressed)",
                    e.crc32, e.size, e.compressed_size
                ),
            ));
        }
        Ok(len)
    }
}

struct Zip64End {
    offset: u64,
    entries: u64,
    cd_size: u64,
    cd_offset: u64,
}

/// The data of the first extra field with `id`, if the extra area holds one.
fn find_extra(mut extra: &[u8], id: u16) -> Option<&[u8]> {
    while extra.len() >= 4 {
        let mut f = fields(extra);
        let this = f.u16();
        let len = usize::from(f.u16());
        let data = extra.get(4..4 + len)?;
        if this == id {
            return Some(data);
        }
        extra = &extra[4 + len..];
    }
    None
}

/// Indexes the zip in `src`.
pub(crate) fn index<S: Source>(file: &str, src: S, limits: &Limits) -> Result<ZipIndex, Error> {
    let len = src.len();
    Indexer {
        file,
        src,
        len,
        limits,
    }
    .run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extra_fields_are_walked_and_bounded() {
        let extra = [
            b'F', b'B', 2, 0, b'Z', b'Z', 1, 0, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8,
        ];
        assert_eq!(find_extra(&extra, 1), Some(&extra[10..18]));
        assert_eq!(find_extra(&extra, 0x4246), Some(&extra[4..6]));
        assert_eq!(find_extra(&extra, 7), None);
        // A field claiming more bytes than there are ends the walk.
        assert_eq!(find_extra(&[1, 0, 9, 0, 1], 1), None);
    }

    #[test]
    fn slices_refuse_reads_past_their_end() {
        let mut s: &[u8] = b"abcdef";
        let mut buf = [0u8; 3];
        s.read_at(3, &mut buf).unwrap();
        assert_eq!(&buf, b"def");
        assert!(s.read_at(4, &mut buf).is_err());
        assert!(s.read_at(u64::MAX, &mut buf).is_err());
    }
}
