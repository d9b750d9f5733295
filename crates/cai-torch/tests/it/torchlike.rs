//! A zip writer that lays files out byte for byte as PyTorch's `PyTorchStreamWriter`
//! (caffe2/serialize/inline_container.cc, through miniz) does, checked against real
//! `torch.save` output in `zips::writer_reproduces_real_torch_files_byte_for_byte`:
//!
//! - entries named `<stem>/<record>`, in the order `torch.save` writes them;
//! - each local header has version 0, flags `0x0808` (UTF-8, data descriptor follows),
//!   zero CRC and sizes, a zip64 extra field when the size or the header's offset is
//!   ≥ 4 GiB, then an `FB` extra field of `Z`s padding the data to a 64-byte boundary;
//! - a data descriptor (signature, CRC, sizes; 64-bit sizes when the local header has a
//!   zip64 field) after the data;
//! - central headers with the real CRC and sizes (all-ones plus a zip64 field at ≥ 4 GiB);
//! - a zip64 end record and locator, always, then the end record.
//!
//! Two switches make the variants other writers produce: no zip64 end records, and no
//! data descriptors (CRC and sizes in the local header instead).

use std::io::{Seek, SeekFrom, Write};

const U32_MAX: u64 = u32::MAX as u64;

/// How to lay the zip out; `Default` is exactly torch's.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    /// Write the zip64 end record and locator (torch always does).
    pub zip64_end: bool,
    /// Write data descriptors after the data (torch always does).
    pub descriptors: bool,
}

impl Default for Layout {
    fn default() -> Self {
        Layout {
            zip64_end: true,
            descriptors: true,
        }
    }
}

pub struct TorchLike<W: Write + Seek> {
    out: W,
    pos: u64,
    stem: String,
    layout: Layout,
    central: Vec<u8>,
    count: u64,
}

impl<W: Write + Seek> TorchLike<W> {
    pub fn new(out: W, stem: &str, layout: Layout) -> Self {
        TorchLike {
            out,
            pos: 0,
            stem: stem.to_string(),
            layout,
            central: Vec::new(),
            count: 0,
        }
    }

    fn put(&mut self, b: &[u8]) {
        self.out.write_all(b).unwrap();
        self.pos += b.len() as u64;
    }

    /// Writes `<stem>/<name>` holding `data`; returns where the data starts.
    pub fn record(&mut self, name: &str, data: &[u8]) -> u64 {
        let crc = crc32fast::hash(data);
        self.entry(name, data.len() as u64, crc, Some(data))
    }

    /// Writes `<stem>/<name>` holding `len` zero bytes without writing them (a hole in a
    /// sparse file); `crc` is their CRC-32.
    pub fn zeros(&mut self, name: &str, len: u64, crc: u32) {
        self.entry(name, len, crc, None);
    }

    fn entry(&mut self, name: &str, size: u64, crc: u32, data: Option<&[u8]>) -> u64 {
        let full = format!("{}/{name}", self.stem);
        let offset = self.pos;
        // inline_container.cc getPadding(): where the data would start, then the padding.
        let mut start = offset + 30 + full.len() as u64 + 4;
        if size >= U32_MAX || offset >= U32_MAX {
            start += 4;
            if size >= U32_MAX {
                start += 16;
            }
            if offset >= U32_MAX {
                start += 8;
            }
        }
        let padding = (64 - start % 64) % 64;
        let mut zip64 = Vec::new();
        if size >= U32_MAX || offset >= U32_MAX {
            let mut fields = Vec::new();
            if size >= U32_MAX {
                fields.extend(size.to_le_bytes());
                fields.extend(size.to_le_bytes());
            }
            if offset >= U32_MAX {
                fields.extend(offset.to_le_bytes());
            }
            zip64.extend(1u16.to_le_bytes());
            zip64.extend((fields.len() as u16).to_le_bytes());
            zip64.extend(fields);
        }
        let mut extra = zip64.clone();
        extra.extend(b"FB");
        extra.extend((padding as u16).to_le_bytes());
        extra.extend(std::iter::repeat_n(b'Z', padding as usize));
        let d = self.layout.descriptors;
        let flags: u16 = if d { 0x0808 } else { 0x0800 };
        let mut h = Vec::new();
        h.extend(0x0403_4b50u32.to_le_bytes());
        h.extend(0u16.to_le_bytes()); // version needed (stored)
        h.extend(flags.to_le_bytes());
        h.extend([0u8; 6]); // method, time, date
        let small = |v: u64| v.min(U32_MAX) as u32;
        if d {
            h.extend([0u8; 12]);
        } else {
            h.extend(crc.to_le_bytes());
            h.extend(small(size).to_le_bytes());
            h.extend(small(size).to_le_bytes());
        }
        h.extend((full.len() as u16).to_le_bytes());
        h.extend((extra.len() as u16).to_le_bytes());
        h.extend(full.as_bytes());
        h.extend(&extra);
        self.put(&h);
        assert_eq!(self.pos % 64, 0, "data of {full} not aligned");
        let data_offset = self.pos;
        match data {
            Some(b) => self.put(b),
            None => {
                self.out.seek(SeekFrom::Current(size as i64)).unwrap();
                self.pos += size;
            }
        }
        if d {
            let mut dd = Vec::new();
            dd.extend(0x0807_4b50u32.to_le_bytes());
            dd.extend(crc.to_le_bytes());
            if zip64.is_empty() {
                dd.extend((size as u32).to_le_bytes());
                dd.extend((size as u32).to_le_bytes());
            } else {
                dd.extend(size.to_le_bytes());
                dd.extend(size.to_le_bytes());
            }
            self.put(&dd);
        }
        self.central_entry(&full, flags, crc, size, offset, &zip64);
        data_offset
    }

    fn central_entry(
        &mut self,
        full: &str,
        flags: u16,
        crc: u32,
        size: u64,
        offset: u64,
        zip64: &[u8],
    ) {
        let small = |v: u64| v.min(U32_MAX) as u32;
        let c = &mut self.central;
        c.extend(0x0201_4b50u32.to_le_bytes());
        c.extend([0u8; 4]); // made by, needed
        c.extend(flags.to_le_bytes());
        c.extend([0u8; 6]);
        c.extend(crc.to_le_bytes());
        c.extend(small(size).to_le_bytes());
        c.extend(small(size).to_le_bytes());
        c.extend((full.len() as u16).to_le_bytes());
        c.extend((zip64.len() as u16).to_le_bytes());
        c.extend([0u8; 4]); // comment length, disk
        c.extend([0u8; 6]); // internal, external attributes
        c.extend(small(offset).to_le_bytes());
        c.extend(full.as_bytes());
        c.extend(zip64);
        self.count += 1;
    }

    /// Adds a central directory entry (no descriptor, sizes < 4 GiB) for a stored entry
    /// whose local header is at `offset`, wherever that is (hostile files).
    pub fn extra_central(&mut self, full: &str, crc: u32, size: u64, offset: u64) {
        self.central_entry(full, 0x0800, crc, size, offset, &[]);
    }

    /// Writes the central directory and end records; returns the sink.
    pub fn finish(mut self) -> W {
        let cd_offset = self.pos;
        let central = std::mem::take(&mut self.central);
        self.put(&central);
        let cd_size = central.len() as u64;
        let n = self.count;
        if self.layout.zip64_end {
            let z64 = self.pos;
            let mut r = Vec::new();
            r.extend(0x0606_4b50u32.to_le_bytes());
            r.extend(44u64.to_le_bytes());
            r.extend(0x031eu16.to_le_bytes());
            r.extend(0x002du16.to_le_bytes());
            r.extend([0u8; 8]);
            r.extend(n.to_le_bytes());
            r.extend(n.to_le_bytes());
            r.extend(cd_size.to_le_bytes());
            r.extend(cd_offset.to_le_bytes());
            r.extend(0x0706_4b50u32.to_le_bytes());
            r.extend(0u32.to_le_bytes());
            r.extend(z64.to_le_bytes());
            r.extend(1u32.to_le_bytes());
            self.put(&r);
        }
        let mut e = Vec::new();
        e.extend(0x0605_4b50u32.to_le_bytes());
        e.extend([0u8; 4]);
        e.extend((n.min(0xffff) as u16).to_le_bytes());
        e.extend((n.min(0xffff) as u16).to_le_bytes());
        e.extend((cd_size.min(U32_MAX) as u32).to_le_bytes());
        e.extend((cd_offset.min(U32_MAX) as u32).to_le_bytes());
        e.extend(0u16.to_le_bytes());
        self.put(&e);
        self.out.flush().unwrap();
        self.out
    }
}

/// `torch.save({"w": tensor})` as torch 2.x lays it out, `w` a 1-d f32 tensor in storage 0.
pub fn torch_save_w(stem: &str, w: &[f32], layout: Layout) -> Vec<u8> {
    let mut p = crate::util::P::new();
    let mut t = crate::util::T::f32("0", &[w.len() as u64]);
    t.param = false;
    p.raw(b"}").mark().str("w").tensor(&t).raw(b"u");
    let pkl = p.stop();
    let data: Vec<u8> = w.iter().flat_map(|v| v.to_le_bytes()).collect();
    let mut z = TorchLike::new(std::io::Cursor::new(Vec::new()), stem, layout);
    z.record("data.pkl", &pkl);
    z.record(".format_version", b"1");
    z.record(".storage_alignment", b"64");
    z.record("byteorder", b"little");
    z.record("data/0", &data);
    z.record("version", b"3\n");
    z.record(
        ".data/serialization_id",
        b"1234567890123456789001234567890123456789",
    );
    z.finish().into_inner()
}
