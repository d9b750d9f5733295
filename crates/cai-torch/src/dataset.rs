//! `torch.utils.data.TensorDataset` files: the original's partitions.

use std::io::{Cursor, Write};

use zip::write::SimpleFileOptions;
use zip::{CompressionMethod, ZipWriter};

use crate::container::TorchZip;
use crate::pickle::{self, HeapObj, Value};
use crate::{Error, ReadOptions, TorchTensor};

const TENSOR_DATASET: &str = "torch.utils.data.dataset.TensorDataset";

pub(crate) fn read(
    file: &str,
    bytes: &[u8],
    opts: &ReadOptions,
) -> Result<Vec<TorchTensor>, Error> {
    let mut zip = TorchZip::open(file, bytes, &opts.limits)?;
    let pkl = zip.read_pickle()?;
    let loaded = pickle::load(file, &pkl, opts)?;
    let heap = &loaded.heap;
    let unexpected = |found: String| Error::UnexpectedContent {
        file: file.to_string(),
        expected: "a TensorDataset",
        found,
    };
    let obj = match &loaded.root {
        Value::Ref(id) => match heap.get(*id) {
            Some(HeapObj::Object(o)) if o.class.path == TENSOR_DATASET => o,
            _ => return Err(unexpected(loaded.root.kind(heap))),
        },
        other => return Err(unexpected(other.kind(heap))),
    };
    let state = match &obj.state {
        Value::Ref(s) => match heap.get(*s) {
            Some(HeapObj::Dict(d)) => d,
            _ => return Err(unexpected("a TensorDataset with a non-dict state".into())),
        },
        other => {
            return Err(unexpected(format!(
                "a TensorDataset whose state is {}",
                other.kind(heap)
            )))
        }
    };
    let items: &[Value] = match state.get("tensors") {
        Some(Value::Tuple(t)) => &t.items,
        Some(Value::Ref(l)) => match heap.get(*l) {
            Some(HeapObj::List(l)) => l,
            _ => return Err(unexpected("`tensors` that is not a tuple".into())),
        },
        Some(other) => {
            return Err(unexpected(format!(
                "`tensors` that is {}",
                other.kind(heap)
            )))
        }
        None => return Err(unexpected("a TensorDataset without `tensors`".into())),
    };
    let mut produced = 0u64;
    let mut out = Vec::with_capacity(items.len());
    for (i, v) in items.iter().enumerate() {
        let name = format!("tensors[{i}]");
        let Value::Tensor(meta) = v else {
            return Err(unexpected(format!("{name} is {}", v.kind(heap))));
        };
        out.push(zip.materialise(&name, meta, &mut produced)?);
    }
    Ok(out)
}

/// A minimal protocol-2 pickle writer for the shapes `torch.save` produces.
struct PickleWriter {
    out: Vec<u8>,
}

impl PickleWriter {
    fn op(&mut self, b: &[u8]) {
        self.out.extend_from_slice(b);
    }

    fn global(&mut self, module: &str, name: &str) {
        self.out.push(b'c');
        self.out.extend_from_slice(module.as_bytes());
        self.out.push(b'\n');
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(b'\n');
    }

    fn str(&mut self, s: &str) {
        self.out.push(b'X');
        self.out.extend_from_slice(&(s.len() as u32).to_le_bytes());
        self.out.extend_from_slice(s.as_bytes());
    }

    fn int(&mut self, v: u64) {
        if v < 256 {
            self.op(&[b'K', v as u8]);
        } else if v < (1 << 31) {
            self.out.push(b'J');
            self.out.extend_from_slice(&(v as u32).to_le_bytes());
        } else {
            // LONG1, 8 bytes two's complement (sizes are below 2^63, so the sign bit is 0).
            self.op(&[0x8a, 8]);
            self.out.extend_from_slice(&v.to_le_bytes());
        }
    }

    fn int_tuple(&mut self, vs: &[u64]) {
        self.out.push(b'(');
        for &v in vs {
            self.int(v);
        }
        self.out.push(b't');
    }
}

/// Row-major strides of `shape`, in elements.
fn contiguous_strides(shape: &[usize]) -> Vec<u64> {
    let mut strides = vec![0u64; shape.len()];
    let mut acc = 1u64;
    for (s, &d) in strides.iter_mut().zip(shape).rev() {
        *s = acc;
        acc = acc.saturating_mul(d as u64);
    }
    strides
}

/// The `data.pkl` of a TensorDataset whose i-th tensor lives in storage `i`.
fn dataset_pickle(tensors: &[TorchTensor]) -> Vec<u8> {
    let mut p = PickleWriter { out: Vec::new() };
    p.op(&[0x80, 2]);
    p.global("torch.utils.data.dataset", "TensorDataset");
    p.op(b")\x81}"); // EMPTY_TUPLE NEWOBJ EMPTY_DICT
    p.str("tensors");
    p.op(b"(");
    for (i, t) in tensors.iter().enumerate() {
        p.global("torch._utils", "_rebuild_tensor_v2");
        p.op(b"((");
        p.str("storage");
        p.global("torch", t.dtype.storage_name());
        p.str(&i.to_string());
        p.str("cpu");
        p.int(t.numel() as u64);
        p.op(b"tQ"); // TUPLE BINPERSID
        p.int(0);
        let shape: Vec<u64> = t.shape.iter().map(|&d| d as u64).collect();
        p.int_tuple(&shape);
        p.int_tuple(&contiguous_strides(&t.shape));
        p.op(&[0x89]); // requires_grad = False
        p.global("collections", "OrderedDict");
        p.op(b")R"); // OrderedDict()
        p.op(b"tR"); // args tuple, REDUCE
    }
    p.op(b"tsb."); // tensors tuple, SETITEM, BUILD, STOP
    p.out
}

pub(crate) fn write(tensors: &[TorchTensor]) -> Result<Vec<u8>, Error> {
    for (i, t) in tensors.iter().enumerate() {
        t.check(&format!("tensors[{i}]"))?;
    }
    let archive = "archive";
    let total: usize = tensors.iter().map(|t| t.data.len()).sum();
    let mut zip = ZipWriter::new(Cursor::new(Vec::with_capacity(total + 4096)));
    let base = SimpleFileOptions::default()
        .compression_method(CompressionMethod::Stored)
        .last_modified_time(zip::DateTime::default());
    let data_opts = base.with_alignment(64);
    let mut entry = |name: String, bytes: &[u8], large: bool| -> Result<(), Error> {
        let opts = if large {
            data_opts.large_file(bytes.len() as u64 >= u32::MAX as u64)
        } else {
            base
        };
        zip.start_file(name, opts).map_err(Error::Write)?;
        zip.write_all(bytes)
            .map_err(|e| Error::Write(zip::result::ZipError::Io(e)))
    };
    entry(
        format!("{archive}/data.pkl"),
        &dataset_pickle(tensors),
        false,
    )?;
    entry(format!("{archive}/byteorder"), b"little", false)?;
    for (i, t) in tensors.iter().enumerate() {
        entry(format!("{archive}/data/{i}"), &t.data, true)?;
    }
    entry(format!("{archive}/version"), b"3\n", false)?;
    let cursor = zip.finish().map_err(Error::Write)?;
    Ok(cursor.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strides() {
        assert_eq!(contiguous_strides(&[2, 5, 32, 32]), vec![5120, 1024, 32, 1]);
        assert_eq!(contiguous_strides(&[]), Vec::<u64>::new());
    }

    #[test]
    fn big_ints_round_trip_through_the_reader() {
        let mut p = PickleWriter { out: vec![0x80, 2] };
        p.int_tuple(&[0, 255, 256, (1 << 31) - 1, 1 << 31, 1 << 40]);
        p.op(b".");
        let l = pickle::load("t", &p.out, &ReadOptions::default()).unwrap();
        let Value::Tuple(t) = l.root else { panic!() };
        let got: Vec<i64> = t.items.iter().map(|v| v.as_int().unwrap()).collect();
        assert_eq!(got, vec![0, 255, 256, (1 << 31) - 1, 1 << 31, 1 << 40]);
    }
}
