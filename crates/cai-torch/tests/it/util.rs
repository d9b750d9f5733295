//! Test-only builders: a tiny pickle writer, module trees as torch pickles them, and zips.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

/// A pickle being written opcode by opcode.
#[derive(Default, Clone)]
pub struct P {
    pub out: Vec<u8>,
    next_memo: u32,
}

impl P {
    pub fn new() -> P {
        let mut p = P::default();
        p.raw(&[0x80, 2]);
        p
    }
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        self.out.extend_from_slice(b);
        self
    }
    pub fn global(&mut self, module: &str, name: &str) -> &mut Self {
        self.raw(b"c")
            .raw(module.as_bytes())
            .raw(b"\n")
            .raw(name.as_bytes())
            .raw(b"\n")
    }
    pub fn str(&mut self, s: &str) -> &mut Self {
        self.raw(b"X")
            .raw(&(s.len() as u32).to_le_bytes())
            .raw(s.as_bytes())
    }
    pub fn int(&mut self, v: i64) -> &mut Self {
        if (0..256).contains(&v) {
            self.raw(&[b'K', v as u8])
        } else if i32::try_from(v).is_ok() {
            self.raw(b"J").raw(&(v as i32).to_le_bytes())
        } else {
            self.raw(&[0x8a, 8]).raw(&v.to_le_bytes())
        }
    }
    pub fn mark(&mut self) -> &mut Self {
        self.raw(b"(")
    }
    pub fn tuple(&mut self) -> &mut Self {
        self.raw(b"t")
    }
    pub fn ints(&mut self, vs: &[i64]) -> &mut Self {
        self.mark();
        for &v in vs {
            self.int(v);
        }
        self.tuple()
    }
    pub fn ordered_dict(&mut self) -> &mut Self {
        self.global("collections", "OrderedDict").raw(b")R")
    }
    /// BINPUT with the next memo index; returns the index.
    pub fn put(&mut self) -> u32 {
        let i = self.next_memo;
        self.next_memo += 1;
        if i < 256 {
            self.raw(&[b'q', i as u8]);
        } else {
            self.raw(b"r").raw(&i.to_le_bytes());
        }
        i
    }
    pub fn get(&mut self, i: u32) -> &mut Self {
        if i < 256 {
            self.raw(&[b'h', i as u8])
        } else {
            self.raw(b"j").raw(&i.to_le_bytes())
        }
    }
    pub fn stop(&mut self) -> Vec<u8> {
        self.raw(b".");
        self.out.clone()
    }

    /// `_rebuild_tensor_v2(('storage', torch.<st>, key, loc, numel), offset, shape, stride,
    /// False, OrderedDict())`, optionally wrapped in `_rebuild_parameter`.
    pub fn tensor(&mut self, t: &T) -> &mut Self {
        if t.param {
            self.global("torch._utils", "_rebuild_parameter").mark();
        }
        self.global("torch._utils", "_rebuild_tensor_v2")
            .mark()
            .mark();
        let (module, name) = match t.storage.split_once('.') {
            Some((sub, name)) => (format!("torch.{sub}"), name),
            None => ("torch".to_string(), t.storage),
        };
        self.str("storage")
            .global(&module, name)
            .str(&t.key)
            .str(&t.location)
            .int(t.numel as i64)
            .tuple()
            .raw(b"Q");
        self.int(t.offset as i64)
            .ints(&to_i64(&t.shape))
            .ints(&to_i64(&t.stride));
        self.raw(&[0x89]).ordered_dict().tuple().raw(b"R");
        if t.param {
            self.raw(&[0x88]).ordered_dict().tuple().raw(b"R");
        }
        self
    }

    /// A pickled `nn.Module` the way torch 2.x pickles one (NEWOBJ + __dict__ BUILD).
    pub fn module(&mut self, m: &M) -> u32 {
        let (module, name) = m.class.rsplit_once('.').expect("class path");
        self.global(module, name).raw(b")\x81");
        let me = self.put();
        self.raw(b"}").mark();
        self.str("training").raw(&[0x88]);
        for (k, v) in &m.attrs {
            self.str(k).int(*v);
        }
        self.str("_parameters").ordered_dict().mark();
        for (k, t) in &m.params {
            self.str(k);
            match t {
                Some(t) => self.tensor(t),
                None => self.raw(b"N"),
            };
        }
        self.raw(b"u");
        self.str("_buffers").raw(b"}").mark();
        for (k, t) in &m.buffers {
            self.str(k).tensor(t);
        }
        self.raw(b"u");
        self.str("_non_persistent_buffers_set")
            .global("builtins", "set")
            .raw(b"]")
            .mark();
        for k in &m.non_persistent {
            self.str(k);
        }
        self.raw(b"e\x85R");
        self.str("_modules").raw(b"}").mark();
        for (k, c) in &m.children {
            self.str(k);
            match c {
                Child::M(c) => {
                    self.module(c);
                }
                Child::Memo(i) => {
                    self.get(*i);
                }
                Child::None => {
                    self.raw(b"N");
                }
            }
        }
        self.raw(b"u");
        self.raw(b"ub");
        me
    }
}

fn to_i64(v: &[u64]) -> Vec<i64> {
    v.iter().map(|&x| x as i64).collect()
}

/// A tensor as pickled: a view of storage `key`.
#[derive(Clone, Debug)]
pub struct T {
    pub storage: &'static str,
    pub key: String,
    pub location: String,
    pub numel: u64,
    pub offset: u64,
    pub shape: Vec<u64>,
    pub stride: Vec<u64>,
    pub param: bool,
}

impl T {
    /// A contiguous f32 parameter filling storage `key`.
    pub fn f32(key: &str, shape: &[u64]) -> T {
        let numel = shape.iter().fold(1u64, |a, &d| a.wrapping_mul(d));
        let mut stride = vec![0; shape.len()];
        let mut acc = 1u64;
        for (s, d) in stride.iter_mut().zip(shape).rev() {
            *s = acc;
            acc = acc.wrapping_mul(*d);
        }
        T {
            storage: "FloatStorage",
            key: key.to_string(),
            location: "cpu".to_string(),
            numel,
            offset: 0,
            shape: shape.to_vec(),
            stride,
            param: true,
        }
    }
}

/// A module to pickle.
#[derive(Clone, Debug)]
pub struct M {
    pub class: &'static str,
    pub attrs: Vec<(String, i64)>,
    pub params: Vec<(String, Option<T>)>,
    pub buffers: Vec<(String, T)>,
    pub non_persistent: Vec<String>,
    pub children: Vec<(String, Child)>,
}

#[derive(Clone, Debug)]
pub enum Child {
    M(M),
    Memo(u32),
    None,
}

impl M {
    pub fn new(class: &'static str) -> M {
        M {
            class,
            attrs: vec![],
            params: vec![],
            buffers: vec![],
            non_persistent: vec![],
            children: vec![],
        }
    }
    pub fn param(mut self, name: &str, t: T) -> M {
        self.params.push((name.to_string(), Some(t)));
        self
    }
    pub fn child(mut self, name: &str, c: M) -> M {
        self.children.push((name.to_string(), Child::M(c)));
        self
    }
}

/// f32 storage bytes: element i of storage `key` is `key * 1000 + i`.
pub fn f32_storage(key: u32, numel: usize) -> Vec<u8> {
    (0..numel)
        .flat_map(|i| (key as f32 * 1000.0 + i as f32).to_le_bytes())
        .collect()
}

/// A zip with the given (name, bytes) entries, stored, in order.
pub fn zip_of(entries: &[(&str, &[u8])]) -> Vec<u8> {
    zip_with(entries, CompressionMethod::Stored)
}

/// A zip with the given entries and compression method, in order.
pub fn zip_with(entries: &[(&str, &[u8])], method: CompressionMethod) -> Vec<u8> {
    let mut z = ZipWriter::new(Cursor::new(Vec::new()));
    let opts = SimpleFileOptions::default()
        .compression_method(method)
        .last_modified_time(zip::DateTime::default());
    for (name, bytes) in entries {
        z.start_file(*name, opts).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap().into_inner()
}

/// A torch.save-style archive `archive/…` with data.pkl, byteorder, storages and version.
pub fn torch_zip(pkl: &[u8], storages: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let names: Vec<String> = storages
        .iter()
        .map(|(k, _)| format!("archive/data/{k}"))
        .collect();
    let mut entries: Vec<(&str, &[u8])> =
        vec![("archive/data.pkl", pkl), ("archive/byteorder", b"little")];
    for (n, (_, b)) in names.iter().zip(storages) {
        entries.push((n, b));
    }
    entries.push(("archive/version", b"3\n"));
    zip_of(&entries)
}

/// Reads both ways; the test only cares that nothing panics.
pub fn read_any(bytes: &[u8]) {
    let _ = cai_torch::read_checkpoint("x.pt", bytes);
    let _ = cai_torch::read_tensor_dataset("x.pt", bytes);
    let _ = cai_torch::is_torch_zip(bytes);
}
