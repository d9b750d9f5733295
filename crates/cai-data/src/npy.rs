//! NumPy `.npy` arrays and `.npz` archives, read from bytes without trusting them.
//!
//! An `.npy` file is the magic `\x93NUMPY`, a version (1.0, 2.0 or 3.0), a header length
//! (u16 for 1.0, u32 after) and a header that is a Python dict literal
//! `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }`, then the data. The header
//! is parsed here by a small strict parser (three keys, string, bool and tuple-of-integer
//! values: nothing is evaluated), because the crates that read `.npy` parse it with a
//! general Python-literal grammar and pull in a parser generator and a stack-growing C
//! shim. Checks before anything is allocated: the header length is bounded
//! ([`MAX_NPY_HEADER`]), the shape's byte size may not overflow and must equal the bytes
//! that follow, so a hostile shape is refused, never allocated. Fortran-ordered arrays are
//! transposed to row-major; big-endian ones are swapped when decoded.
//!
//! An `.npz` is a zip of `.npy` members (`np.savez`, stored; `np.savez_compressed`,
//! deflated), read with the `zip` crate: each member's declared size is checked against
//! the archive (a deflated member may not claim more than deflate can expand to) and its
//! read is capped at that size.

use std::borrow::Cow;
use std::io::Read;

use crate::error::{Error, Result};
use crate::tensors::{NamedTensor, RawNamed, StoredDtype, TensorSet, TensorValues};

/// The first bytes of every `.npy` file.
pub const NPY_MAGIC: &[u8] = b"\x93NUMPY";
/// Largest `.npy` header accepted, in bytes (NumPy itself refuses headers over 10,000
/// bytes unless told otherwise).
pub const MAX_NPY_HEADER: usize = 65_536;
/// Most members an `.npz` may hold.
pub const MAX_NPZ_MEMBERS: usize = 4096;

fn bad(file: &str, reason: impl Into<String>) -> Error {
    Error::BadNpy {
        file: file.to_string(),
        reason: reason.into(),
    }
}

/// Parses one `.npy` file (`bytes` whole) into a tensor called `name`; errors name `file`.
pub fn parse_npy<'a>(file: &str, name: &str, bytes: &'a [u8]) -> Result<RawNamed<'a>> {
    if !bytes.starts_with(NPY_MAGIC) {
        return Err(bad(file, "no `\\x93NUMPY` magic: not an .npy array"));
    }
    let (major, minor) = match bytes.get(6..8) {
        Some(&[a, b]) => (a, b),
        _ => return Err(bad(file, "truncated before the version")),
    };
    let (len, start) = match major {
        1 => (
            bytes
                .get(8..10)
                .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))),
            10,
        ),
        2 | 3 => (
            bytes
                .get(8..12)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize),
            12,
        ),
        _ => {
            return Err(bad(
                file,
                format!("format version {major}.{minor} is not 1.0, 2.0 or 3.0"),
            ))
        }
    };
    let Some(len) = len else {
        return Err(bad(file, "truncated before the header length"));
    };
    if len > MAX_NPY_HEADER {
        return Err(bad(
            file,
            format!("header of {len} bytes is larger than the limit of {MAX_NPY_HEADER}"),
        ));
    }
    let Some(header) = bytes.get(start..start + len) else {
        return Err(bad(
            file,
            format!(
                "truncated header: {len} bytes declared, {} present",
                bytes.len().saturating_sub(start)
            ),
        ));
    };
    let header =
        std::str::from_utf8(header).map_err(|_| bad(file, "the header is not UTF-8 text"))?;
    let h = Header::parse(header).map_err(|e| bad(file, format!("header {header:?}: {e}")))?;
    let (dtype, big_endian) = parse_descr(&h.descr)
        .ok_or_else(|| bad(file, format!("dtype {:?} is not a plain number or bool type (structured and object arrays are not read)", h.descr)))?;
    let data = &bytes[start + len..];
    let want = h
        .shape
        .iter()
        .try_fold(dtype.size() as u64, |a, &d| a.checked_mul(d as u64));
    if want != Some(data.len() as u64) {
        return Err(bad(
            file,
            format!(
                "shape {:?} of {} needs {} data bytes, the file has {}",
                h.shape,
                h.descr,
                want.map_or_else(|| "more than 2^64".into(), |w| w.to_string()),
                data.len()
            ),
        ));
    }
    let data = if h.fortran_order && h.shape.len() > 1 {
        Cow::Owned(fortran_to_c(data, &h.shape, dtype.size()))
    } else {
        Cow::Borrowed(data)
    };
    Ok(RawNamed {
        name: name.to_string(),
        dtype,
        big_endian,
        shape: h.shape,
        data,
    })
}

/// Parses an `.npz` archive: one tensor per `.npy` member, named after it (without
/// `.npy`), in the archive's order.
pub fn parse_npz(file: &str, bytes: &[u8]) -> Result<Vec<RawNamed<'static>>> {
    let mut zip = zip::ZipArchive::new(std::io::Cursor::new(bytes))
        .map_err(|e| bad(file, format!("not a readable .npz (zip) archive: {e}")))?;
    if zip.len() > MAX_NPZ_MEMBERS {
        return Err(bad(
            file,
            format!(
                "{} members, more than the limit of {MAX_NPZ_MEMBERS}",
                zip.len()
            ),
        ));
    }
    let mut out = Vec::with_capacity(zip.len());
    for i in 0..zip.len() {
        let mut member = zip
            .by_index(i)
            .map_err(|e| bad(file, format!("member {i}: {e}")))?;
        let entry = member
            .name()
            .map_err(|e| bad(file, format!("member {i}: {e}")))?
            .to_string();
        let Some(name) = entry.strip_suffix(".npy") else {
            return Err(bad(file, format!("member `{entry}` is not an .npy array")));
        };
        let size = member.size();
        let packed = member.compressed_size();
        let stored = member.compression() == zip::CompressionMethod::Stored;
        if (stored && size != packed)
            || size > packed.saturating_mul(1100).saturating_add(1024)
            || size > bytes.len() as u64 * 1100
        {
            return Err(bad(
                file,
                format!("member `{entry}` claims {size} bytes from {packed} in the archive"),
            ));
        }
        let mut data = Vec::with_capacity(usize::try_from(size).unwrap_or(0).min(1 << 30));
        (&mut member)
            .take(size.saturating_add(1))
            .read_to_end(&mut data)
            .map_err(|e| bad(file, format!("member `{entry}`: {e}")))?;
        if data.len() as u64 != size {
            return Err(bad(
                file,
                format!(
                    "member `{entry}` holds {} bytes, the archive declares {size}",
                    data.len()
                ),
            ));
        }
        let member_file = format!("{file}:{entry}");
        let t = parse_npy(&member_file, name, &data)?;
        out.push(RawNamed {
            name: t.name,
            dtype: t.dtype,
            big_endian: t.big_endian,
            shape: t.shape,
            data: Cow::Owned(t.data.into_owned()),
        });
    }
    if out.is_empty() {
        return Err(bad(file, "the archive holds no arrays"));
    }
    Ok(out)
}

/// Writes `n` galaxies of `tensor` as an `.npy` file (version 1.0, C order, `<f4` for
/// float values, `<i8` for integer ones, the header padded to 64 bytes as NumPy pads it).
pub fn write_npy(tensor: &NamedTensor, n: usize) -> Vec<u8> {
    let descr = match tensor.values {
        TensorValues::F32(_) => "<f4",
        TensorValues::I64(_) => "<i8",
    };
    let shape: Vec<usize> = std::iter::once(n)
        .chain(tensor.shape.iter().copied())
        .collect();
    let mut out = npy_header(descr, false, &shape);
    tensor.values.append_le(&mut out);
    out
}

/// The magic, version 1.0, length and header of an `.npy` file, padded with spaces and a
/// newline to a multiple of 64 bytes.
fn npy_header(descr: &str, fortran: bool, shape: &[usize]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(|d| d.to_string()).collect();
    let tuple = match dims.as_slice() {
        [one] => format!("({one},)"),
        _ => format!("({})", dims.join(", ")),
    };
    let order = if fortran { "True" } else { "False" };
    let mut h = format!("{{'descr': '{descr}', 'fortran_order': {order}, 'shape': {tuple}, }}");
    while !(NPY_MAGIC.len() + 4 + h.len() + 1).is_multiple_of(64) {
        h.push(' ');
    }
    h.push('\n');
    let mut out = NPY_MAGIC.to_vec();
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(h.len() as u16).to_le_bytes());
    out.extend_from_slice(h.as_bytes());
    out
}

/// Writes a set as an `.npz` archive (as `np.savez`: one stored `<name>.npy` member per
/// tensor, in order), e.g. to export tensors for NumPy.
pub fn write_npz(set: &TensorSet) -> Result<Vec<u8>> {
    use std::io::Write;
    set.validate("the .npz being written")?;
    let err = |e: String| Error::Writer {
        path: "the .npz being written".into(),
        reason: e,
    };
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let opts = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(false);
    for t in &set.tensors {
        zip.start_file(format!("{}.npy", t.name), opts)
            .map_err(|e| err(e.to_string()))?;
        zip.write_all(&write_npy(t, set.n))
            .map_err(|e| err(e.to_string()))?;
    }
    Ok(zip.finish().map_err(|e| err(e.to_string()))?.into_inner())
}

/// The three keys of an `.npy` header.
#[derive(Debug, PartialEq)]
struct Header {
    descr: String,
    fortran_order: bool,
    shape: Vec<usize>,
}

impl Header {
    /// `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 5), }` (any key order,
    /// either quote, optional trailing commas, the header's padding spaces and newline).
    fn parse(text: &str) -> std::result::Result<Header, String> {
        let mut p = Lexer {
            s: text.trim_end().as_bytes(),
            at: 0,
        };
        p.expect(b'{')?;
        let (mut descr, mut fortran, mut shape) = (None, None, None);
        loop {
            p.skip_ws();
            if p.eat(b'}') {
                break;
            }
            let key = p.string()?;
            p.expect(b':')?;
            match key.as_str() {
                "descr" => descr = Some(p.string()?),
                "fortran_order" => fortran = Some(p.boolean()?),
                "shape" => shape = Some(p.tuple()?),
                other => return Err(format!("unknown key {other:?}")),
            }
            p.skip_ws();
            if !p.eat(b',') {
                p.expect(b'}')?;
                break;
            }
        }
        p.skip_ws();
        if p.at != p.s.len() {
            return Err("text after the closing brace".into());
        }
        Ok(Header {
            descr: descr.ok_or("no 'descr'")?,
            fortran_order: fortran.ok_or("no 'fortran_order'")?,
            shape: shape.ok_or("no 'shape'")?,
        })
    }
}

/// A cursor over the header's bytes.
struct Lexer<'a> {
    s: &'a [u8],
    at: usize,
}

impl Lexer<'_> {
    fn skip_ws(&mut self) {
        while self.s.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
    }

    fn eat(&mut self, c: u8) -> bool {
        self.skip_ws();
        if self.s.get(self.at) == Some(&c) {
            self.at += 1;
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: u8) -> std::result::Result<(), String> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(format!("expected `{}` at byte {}", c as char, self.at))
        }
    }

    fn string(&mut self) -> std::result::Result<String, String> {
        self.skip_ws();
        let Some(&q) = self.s.get(self.at).filter(|&&q| q == b'\'' || q == b'"') else {
            return Err(format!("expected a string at byte {}", self.at));
        };
        let start = self.at + 1;
        let len = self.s[start..]
            .iter()
            .position(|&c| c == q || c == b'\\')
            .ok_or("unterminated string")?;
        if self.s[start + len] == b'\\' {
            return Err("escapes in strings are not read".into());
        }
        self.at = start + len + 1;
        Ok(String::from_utf8_lossy(&self.s[start..start + len]).into_owned())
    }

    fn boolean(&mut self) -> std::result::Result<bool, String> {
        self.skip_ws();
        for (word, v) in [(&b"True"[..], true), (&b"False"[..], false)] {
            if self.s[self.at..].starts_with(word) {
                self.at += word.len();
                return Ok(v);
            }
        }
        Err(format!("expected True or False at byte {}", self.at))
    }

    fn tuple(&mut self) -> std::result::Result<Vec<usize>, String> {
        self.expect(b'(')?;
        let mut dims = Vec::new();
        loop {
            if self.eat(b')') {
                return Ok(dims);
            }
            self.skip_ws();
            let start = self.at;
            while self.s.get(self.at).is_some_and(u8::is_ascii_digit) {
                self.at += 1;
            }
            let digits = std::str::from_utf8(&self.s[start..self.at]).unwrap_or("");
            // A trailing `L` is what Python 2 wrote for long integers.
            self.eat(b'L');
            let d: usize = digits
                .parse()
                .map_err(|_| format!("expected a dimension at byte {start}"))?;
            if dims.len() >= 32 {
                return Err("more than 32 dimensions".into());
            }
            dims.push(d);
            if !self.eat(b',') {
                self.expect(b')')?;
                return Ok(dims);
            }
        }
    }
}

/// `<f4`, `>i8`, `|u1`, `|b1`, `=f8`…: the element type and whether it is big-endian.
fn parse_descr(descr: &str) -> Option<(StoredDtype, bool)> {
    let (order, kind) = descr.split_at_checked(1)?;
    let big = match order {
        "<" | "|" | "=" => false,
        ">" => true,
        _ => return None,
    };
    use StoredDtype::*;
    let dtype = match kind {
        "b1" => Bool,
        "u1" => U8,
        "i1" => I8,
        "u2" => U16,
        "i2" => I16,
        "f2" => F16,
        "u4" => U32,
        "i4" => I32,
        "f4" => F32,
        "u8" => U64,
        "i8" => I64,
        "f8" => F64,
        _ => return None,
    };
    Some((dtype, big && dtype.size() > 1))
}

/// Column-major (Fortran) data of `shape` as row-major, element by element.
fn fortran_to_c(data: &[u8], shape: &[usize], size: usize) -> Vec<u8> {
    let numel: usize = shape.iter().product();
    let mut out = vec![0u8; data.len()];
    // Fortran strides, in elements: the first axis varies fastest.
    let mut strides = vec![1usize; shape.len()];
    for k in 1..shape.len() {
        strides[k] = strides[k - 1] * shape[k - 1];
    }
    let mut idx = vec![0usize; shape.len()];
    for dst in 0..numel {
        let src: usize = idx.iter().zip(&strides).map(|(i, s)| i * s).sum();
        out[dst * size..(dst + 1) * size].copy_from_slice(&data[src * size..(src + 1) * size]);
        // Next row-major index: the last axis varies fastest.
        for k in (0..shape.len()).rev() {
            idx[k] += 1;
            if idx[k] < shape[k] {
                break;
            }
            idx[k] = 0;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tensors::{read_tensors, TensorValues};

    /// An `.npy` file as NumPy writes it (version 1.0, header padded to 64 bytes).
    pub(crate) fn npy(descr: &str, fortran: bool, shape: &[usize], data: &[u8]) -> Vec<u8> {
        let mut out = npy_header(descr, fortran, shape);
        out.extend_from_slice(data);
        out
    }

    fn f32s(v: &[f32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    /// An `.npz` of `members` (name without `.npy`, file bytes), deflated or stored.
    pub(crate) fn npz(members: &[(&str, Vec<u8>)], deflate: bool) -> Vec<u8> {
        use std::io::Write;
        let mut w = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
        let method = if deflate {
            zip::CompressionMethod::Deflated
        } else {
            zip::CompressionMethod::Stored
        };
        let opts = zip::write::SimpleFileOptions::default().compression_method(method);
        for (name, bytes) in members {
            w.start_file(format!("{name}.npy"), opts).unwrap();
            w.write_all(bytes).unwrap();
        }
        w.finish().unwrap().into_inner()
    }

    #[test]
    fn reads_npy_named_after_the_stem_with_dtypes_and_orders() {
        let v: Vec<f32> = (0..6).map(|i| i as f32 * 0.5).collect();
        let set =
            read_tensors("dir/flux.npy", &npy("<f4", false, &[3, 2], &f32s(&v)), None).unwrap();
        assert_eq!(set.n, 3);
        assert_eq!(set.tensors[0].name, "flux");
        assert_eq!(set.tensors[0].shape, [2]);
        assert_eq!(set.tensors[0].values, TensorValues::F32(v.clone()));
        // Fortran order: the same array stored column-major.
        let col: Vec<f32> = [0, 2, 4, 1, 3, 5].iter().map(|&i| v[i]).collect();
        let set = read_tensors("f.npy", &npy("<f4", true, &[3, 2], &f32s(&col)), None).unwrap();
        assert_eq!(set.tensors[0].values, TensorValues::F32(v.clone()));
        // Big-endian f8 and i2, u1 and bool.
        let be: Vec<u8> = [1.5f64, -2.0]
            .iter()
            .flat_map(|x| x.to_be_bytes())
            .collect();
        let set = read_tensors("b.npy", &npy(">f8", false, &[2], &be), None).unwrap();
        assert_eq!(set.tensors[0].values, TensorValues::F32(vec![1.5, -2.0]));
        assert_eq!(set.tensors[0].dtype, StoredDtype::F64);
        let set =
            read_tensors("i.npy", &npy(">i2", false, &[2], &[0xff, 0xfe, 0, 7]), None).unwrap();
        assert_eq!(set.tensors[0].values, TensorValues::I64(vec![-2, 7]));
        let set = read_tensors("m.npy", &npy("|b1", false, &[2, 1], &[1, 0]), None).unwrap();
        assert_eq!(set.tensors[0].values, TensorValues::I64(vec![1, 0]));
        let names = ["x".to_string()];
        let set = read_tensors("m.npy", &npy("|u1", false, &[2], &[9, 8]), Some(&names)).unwrap();
        assert_eq!(set.names(), ["x"]);
    }

    #[test]
    fn hostile_npy_files_are_refused_naming_the_file() {
        let err = |bytes: &[u8]| read_tensors("h.npy", bytes, None).unwrap_err().to_string();
        let good = npy("<f4", false, &[2, 2], &f32s(&[1.0, 2.0, 3.0, 4.0]));
        // Every truncation is an error, never a panic.
        for cut in 0..good.len() {
            let _ = read_tensors("h.npy", &good[..cut], None);
        }
        let e = err(&good[..good.len() - 1]);
        assert!(
            e.contains("h.npy") && e.contains("needs 16 data bytes"),
            "{e}"
        );
        // A shape of 2^60 galaxies is refused from the header, not allocated.
        let e = err(&npy("<f4", false, &[1 << 60, 1 << 10], &[0; 16]));
        assert!(e.contains("more than 2^64") || e.contains("needs"), "{e}");
        let e = err(&npy("<f4", false, &[usize::MAX / 2, 3], &[]));
        assert!(e.contains("h.npy"), "{e}");
        let e = err(&npy("<c8", false, &[1], &[0; 8]));
        assert!(e.contains("dtype \"<c8\""), "{e}");
        let e = err(&npy("<f4", false, &[], &[0; 4]));
        assert!(e.contains("scalar"), "{e}");
        let mut huge = good.clone();
        huge[6] = 2;
        huge.splice(8..10, 0x7fff_ffffu32.to_le_bytes());
        let e = err(&huge);
        assert!(e.contains("larger than the limit"), "{e}");
        let mut v9 = good.clone();
        v9[6] = 9;
        assert!(err(&v9).contains("version 9.0"));
        for header in [
            "{'descr': '<f4', 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': Maybe, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1}",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (-2,), }",
            "{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2,), }",
            "{'descr': '<f4', 'fortran_order': False, 'shape': (2,), } junk",
        ] {
            let mut f = NPY_MAGIC.to_vec();
            f.extend_from_slice(&[1, 0]);
            f.extend_from_slice(&(header.len() as u16).to_le_bytes());
            f.extend_from_slice(header.as_bytes());
            f.extend_from_slice(&[0; 8]);
            let e = err(&f);
            assert!(e.contains("h.npy") && e.contains("header"), "{header}: {e}");
        }
    }

    #[test]
    fn reads_npz_members_by_name_and_checks_their_galaxies() {
        let a = npy(
            "<f4",
            false,
            &[2, 3],
            &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
        );
        let b = npy(
            "<i8",
            false,
            &[2],
            &[7i64, 8]
                .iter()
                .flat_map(|x| x.to_le_bytes())
                .collect::<Vec<_>>(),
        );
        for deflate in [false, true] {
            let set = read_tensors(
                "d.npz",
                &npz(&[("flux", a.clone()), ("ids", b.clone())], deflate),
                None,
            )
            .unwrap();
            assert_eq!(set.n, 2);
            assert_eq!(set.names(), ["flux", "ids"]);
            assert_eq!(
                set.get("ids").unwrap().values,
                TensorValues::I64(vec![7, 8])
            );
        }
        let three = npy("<f4", false, &[3], &f32s(&[1.0, 2.0, 3.0]));
        let e = read_tensors(
            "d.npz",
            &npz(&[("flux", a.clone()), ("z", three)], false),
            None,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("d.npz") && e.contains("`z` has 3 galaxies") && e.contains("`flux` has 2"),
            "{e}"
        );
        let e = read_tensors("d.npz", &npz(&[("bad", b"not npy".to_vec())], false), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("d.npz:bad.npy"), "{e}");
        // A damaged archive: every truncation is an error.
        let good = npz(&[("flux", a)], true);
        for cut in 0..good.len() {
            assert!(read_tensors("d.npz", &good[..cut], None).is_err());
        }
    }

    #[test]
    fn written_npy_and_npz_read_back() {
        let set = read_tensors(
            "m.npz",
            &npz(
                &[
                    (
                        "a",
                        npy(
                            "<f4",
                            false,
                            &[2, 3],
                            &f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0]),
                        ),
                    ),
                    ("b", npy("<i8", false, &[2], &[7u8; 16])),
                ],
                false,
            ),
            None,
        )
        .unwrap();
        let back = read_tensors("w.npz", &write_npz(&set).unwrap(), None).unwrap();
        assert_eq!(back, set);
        let one = write_npy(&set.tensors[0], set.n);
        assert_eq!(one.len() % 64, 24); // 64-byte header, then 6 f32
        assert_eq!(
            read_tensors("a.npy", &one, None).unwrap().tensors[0],
            set.tensors[0]
        );
    }

    #[test]
    fn header_parser_accepts_what_numpy_writes() {
        let h =
            Header::parse("{'descr': '<f8', 'fortran_order': False, 'shape': (10L, 3), }    \n")
                .unwrap();
        assert_eq!(h.shape, [10, 3]);
        let h = Header::parse("{\"shape\":(),\"descr\":\"|u1\",\"fortran_order\":True}").unwrap();
        assert_eq!((h.shape.len(), h.fortran_order), (0, true));
    }
}
