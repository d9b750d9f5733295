//! The hostile corpus: small files under `tests/hostile/`, each a named error, never a panic.
//!
//! The files are made by [`corpus`] below. `hostile_corpus_matches_generator` checks the
//! committed files are exactly what it makes; run it with `CAI_REGENERATE_HOSTILE=1` to
//! rewrite them after changing the generator. `EXPECTED` lists, per file, the error
//! variant the reader must return.

use std::path::PathBuf;

use cai_torch::{read_checkpoint, read_tensor_dataset, Error};

use crate::util::{f32_storage, torch_zip, zip_of, M, P, T};

// The crate's directory when run: `cargo test` sets CARGO_MANIFEST_DIR for the test process, and a test
// binary reused from another checkout through a shared target dir would otherwise look in that
// checkout (the compile-time value is the fallback for binaries run outside cargo).
fn manifest_dir() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
}

fn dir() -> PathBuf {
    manifest_dir().join("tests/hostile")
}

/// A pickle calling `module.name('ls')` with GLOBAL + REDUCE.
fn call(module: &str, name: &str) -> Vec<u8> {
    let mut p = P::new();
    p.global(module, name).mark().str("ls").tuple().raw(b"R");
    p.stop()
}

fn one_linear(t: T) -> Vec<u8> {
    let mut p = P::new();
    p.module(&M::new("torch.nn.modules.linear.Linear").param("weight", t));
    p.stop()
}

fn valid_checkpoint() -> Vec<u8> {
    torch_zip(
        &one_linear(T::f32("0", &[4, 4])),
        &[("0", f32_storage(0, 16))],
    )
}

/// (file name, bytes, expected error variant).
pub fn corpus() -> Vec<(&'static str, Vec<u8>, &'static str)> {
    let mut c: Vec<(&'static str, Vec<u8>, &'static str)> = Vec::new();
    let pk = |pkl: Vec<u8>| torch_zip(&pkl, &[]);

    // Forbidden globals, by GLOBAL, STACK_GLOBAL, nested in a module, and in a persistent id.
    c.push((
        "forbidden_posix_system.pt",
        pk(call("posix", "system")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_os_system.pt",
        pk(call("os", "system")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_nt_system.pt",
        pk(call("nt", "system")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_builtins_eval.pt",
        pk(call("builtins", "eval")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_builtin_exec_py2.pt",
        pk(call("__builtin__", "exec")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_subprocess_popen.pt",
        pk(call("subprocess", "Popen")),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_torch_load.pt",
        pk(call("torch", "load")),
        "ForbiddenGlobal",
    ));
    let mut p = P::new();
    p.raw(&[0x8c, 8])
        .raw(b"builtins")
        .raw(&[0x8c, 7])
        .raw(b"getattr")
        .raw(&[0x93]);
    c.push((
        "forbidden_stack_global_getattr.pt",
        pk(p.stop()),
        "ForbiddenGlobal",
    ));
    let mut p = P::new();
    p.global("torch.nn.modules.linear", "Linear")
        .raw(b")\x81}")
        .str("evil");
    p.global("posix", "system").raw(b"sb");
    c.push((
        "forbidden_in_module_state.pt",
        pk(p.stop()),
        "ForbiddenGlobal",
    ));
    let mut p = P::new();
    p.global("torch._utils", "_rebuild_tensor_v2").mark().mark();
    p.str("storage")
        .global("posix", "system")
        .str("0")
        .str("cpu")
        .int(1)
        .tuple();
    c.push((
        "forbidden_in_persistent_id.pt",
        pk(p.stop()),
        "ForbiddenGlobal",
    ));
    c.push((
        "forbidden_unlisted_model_class.pt",
        pk(call("__main__", "Net")),
        "ForbiddenGlobal",
    ));

    // Opcodes out of place and malformed pickles.
    c.push((
        "stop_with_empty_stack.pt",
        pk(b"\x80\x02.".to_vec()),
        "Pickle",
    ));
    c.push((
        "build_on_int.pt",
        pk(b"\x80\x02K\x01}b.".to_vec()),
        "Pickle",
    ));
    c.push((
        "setitem_on_list.pt",
        pk(b"\x80\x02]K\x01K\x02s.".to_vec()),
        "Pickle",
    ));
    c.push((
        "append_on_dict.pt",
        pk(b"\x80\x02}K\x01a.".to_vec()),
        "Pickle",
    ));
    c.push((
        "reduce_on_string.pt",
        pk(b"\x80\x02X\x01\x00\x00\x00a)R.".to_vec()),
        "Pickle",
    ));
    c.push((
        "call_opaque_function.pt",
        pk(call("torch.nn.functional", "gelu")),
        "Pickle",
    ));
    c.push((
        "call_storage_type.pt",
        pk(call("torch", "FloatStorage")),
        "Pickle",
    ));
    c.push((
        "tuple_without_mark.pt",
        pk(b"\x80\x02Nt.".to_vec()),
        "Pickle",
    ));
    c.push((
        "memo_get_missing.pt",
        pk(b"\x80\x02h\x07.".to_vec()),
        "Pickle",
    ));
    c.push(("no_stop.pt", pk(b"\x80\x02N".to_vec()), "Pickle"));
    c.push(("protocol_9.pt", pk(b"\x80\x09N.".to_vec()), "Pickle"));
    c.push((
        "huge_declared_string.pt",
        pk(b"\x80\x02X\xff\xff\xff\xffabc.".to_vec()),
        "Pickle",
    ));
    c.push((
        "huge_declared_bytes8.pt",
        pk(b"\x80\x04\x8e\xff\xff\xff\xff\xff\xff\xff\x7fabc.".to_vec()),
        "Pickle",
    ));
    c.push((
        "long4_too_big.pt",
        pk(b"\x80\x02\x8b\x00\x00\x00\x10abc.".to_vec()),
        "Pickle",
    ));
    c.push((
        "invalid_utf8.pt",
        pk(b"\x80\x02X\x02\x00\x00\x00\xff\xfe.".to_vec()),
        "Pickle",
    ));
    c.push((
        "opcode_inst.pt",
        pk(b"\x80\x02iposix\nsystem\n.".to_vec()),
        "UnsupportedOpcode",
    ));
    c.push((
        "opcode_ext1.pt",
        pk(b"\x80\x02\x82\x01.".to_vec()),
        "UnsupportedOpcode",
    ));
    c.push((
        "opcode_unknown.pt",
        pk(b"\x80\x02\xff.".to_vec()),
        "UnsupportedOpcode",
    ));
    c.push((
        "opcode_persid_text.pt",
        pk(b"\x80\x02P0\n.".to_vec()),
        "UnsupportedOpcode",
    ));
    let mut p = P::new();
    p.global("torch._utils", "_rebuild_tensor_v2").mark().mark();
    p.str("storage")
        .global("collections", "OrderedDict")
        .str("0")
        .str("cpu")
        .int(1);
    p.tuple().raw(b"Q");
    c.push(("persistent_id_not_a_storage.pt", pk(p.stop()), "Pickle"));
    let mut t = T::f32("0", &[2, 2]);
    t.stride = vec![1];
    c.push((
        "rank_mismatch.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 4))]),
        "Pickle",
    ));
    // Tuples nested deeper than the limit, with a constant stack (via the memo).
    let mut p = P::new();
    p.raw(b")q\x00");
    for _ in 0..300 {
        p.raw(b"h\x00\x85q\x000");
    }
    p.raw(b"h\x00");
    c.push(("deep_tuple_nesting.pt", pk(p.stop()), "Limit"));
    // Modules nested deeper than the limit.
    let mut m = M::new("torch.nn.modules.container.Sequential");
    for _ in 0..300 {
        m = M::new("torch.nn.modules.container.Sequential").child("0", m);
    }
    let mut p = P::new();
    p.module(&m);
    c.push(("deep_module_nesting.pt", pk(p.stop()), "Limit"));
    // A module that contains itself.
    let mut m = M::new("torch.nn.modules.container.Sequential");
    m.children
        .push(("self".into(), crate::util::Child::Memo(0)));
    let mut p = P::new();
    p.module(&m);
    c.push(("module_cycle.pt", pk(p.stop()), "UnexpectedContent"));
    c.push((
        "top_level_list.pt",
        pk(b"\x80\x02]K\x01a.".to_vec()),
        "UnexpectedContent",
    ));
    c.push((
        "state_dict_entry_not_tensor.pt",
        pk(b"\x80\x02}X\x01\x00\x00\x00wK\x01s.".to_vec()),
        "NoModelInCheckpoint",
    ));

    // Tensors that do not fit their storages, absurd shapes.
    c.push((
        "storage_too_short.pt",
        torch_zip(
            &one_linear(T::f32("0", &[4, 4])),
            &[("0", f32_storage(0, 8))],
        ),
        "StorageTooShort",
    ));
    let mut t = T::f32("0", &[4, 4]);
    t.numel = 8;
    c.push((
        "storage_numel_too_small.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 16))]),
        "StorageTooShort",
    ));
    let mut t = T::f32("0", &[2, 2]);
    t.offset = 14;
    t.numel = 16;
    c.push((
        "offset_past_storage.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 16))]),
        "StorageTooShort",
    ));
    let mut t = T::f32("0", &[1_000_000, 1_000_000]);
    t.numel = 16;
    c.push((
        "absurd_shape_1e12.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 16))]),
        "AbsurdShape",
    ));
    let mut t = T::f32("0", &[1 << 40, 1 << 40]);
    t.numel = 16;
    t.stride = vec![1, 1];
    c.push((
        "shape_overflow.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 16))]),
        "AbsurdShape",
    ));
    let mut t = T::f32("0", &[2, 2]);
    t.stride = vec![1 << 62, 1 << 62];
    c.push((
        "stride_overflow.pt",
        torch_zip(&one_linear(t), &[("0", f32_storage(0, 16))]),
        "AbsurdShape",
    ));
    c.push((
        "missing_storage.pt",
        torch_zip(&one_linear(T::f32("0", &[4, 4])), &[]),
        "MissingStorage",
    ));

    // Zip-level damage and layout.
    let good = valid_checkpoint();
    c.push((
        "truncated_zip_half.pt",
        good[..good.len() / 2].to_vec(),
        "Zip",
    ));
    c.push((
        "truncated_zip_tail.pt",
        good[..good.len() - 10].to_vec(),
        "Zip",
    ));
    let mut bad = good.clone();
    let at = find(&bad, &f32_storage(0, 16)).expect("storage bytes in zip") + 5;
    bad[at] ^= 0x40;
    c.push(("bad_crc.pt", bad, "CorruptEntry"));
    let pkl = one_linear(T::f32("0", &[4, 4]));
    let s = f32_storage(0, 16);
    c.push((
        "path_traversal.pt",
        zip_of(&[
            ("archive/data.pkl", &pkl),
            ("archive/../../../tmp/evil", b"x"),
            ("archive/data/0", &s),
        ]),
        "UnsafeEntryName",
    ));
    c.push((
        "absolute_path.pt",
        zip_of(&[("archive/data.pkl", &pkl), ("/etc/cron.d/evil", b"x")]),
        "UnsafeEntryName",
    ));
    c.push((
        "backslash_path.pt",
        zip_of(&[("archive/data.pkl", &pkl), ("archive\\..\\evil", b"x")]),
        "UnsafeEntryName",
    ));
    c.push((
        "two_top_folders.pt",
        zip_of(&[("archive/data.pkl", &pkl), ("other/data/0", &s)]),
        "Layout",
    ));
    c.push((
        "unknown_byteorder.pt",
        zip_of(&[("archive/data.pkl", &pkl), ("archive/byteorder", b"middle")]),
        "UnknownByteorder",
    ));
    c.push((
        "bad_version.pt",
        zip_of(&[("archive/data.pkl", &pkl), ("archive/version", b"banana\n")]),
        "Layout",
    ));
    c.push((
        "missing_data_pkl.pt",
        zip_of(&[("archive/data/0", &s), ("archive/version", b"3\n")]),
        "MissingEntry",
    ));
    c.push(("empty_zip.pt", zip_of(&[]), "Layout"));
    zip_structure(&mut c);
    c.push((
        "not_a_zip.pt",
        b"hello, this is not a zip file".to_vec(),
        "Layout",
    ));
    c.push((
        "legacy_torch_format.pt",
        b"\x80\x02\x8a\x0al\xfc\x9cF\xf9 j\xa8P\x19.".to_vec(),
        "Layout",
    ));

    // TensorDataset reader.
    let ds = |pkl: Vec<u8>| torch_zip(&pkl, &[("0", f32_storage(0, 4))]);
    let mut p = P::new();
    p.global("torch.utils.data.dataset", "TensorDataset")
        .raw(b")\x81}")
        .str("tensors");
    p.mark().int(1).tuple().raw(b"sb");
    c.push(("ds_non_tensor_item.pt", ds(p.stop()), "UnexpectedContent"));
    let mut p = P::new();
    p.global("torch.utils.data.dataset", "TensorDataset")
        .raw(b")\x81}b");
    c.push(("ds_without_tensors.pt", ds(p.stop()), "UnexpectedContent"));
    let mut p = P::new();
    let mut t = T::f32("0", &[4, 4]);
    t.param = false;
    p.global("torch.utils.data.dataset", "TensorDataset")
        .raw(b")\x81}")
        .str("tensors");
    p.mark().tensor(&t).tuple().raw(b"sb");
    c.push(("ds_storage_too_short.pt", ds(p.stop()), "StorageTooShort"));
    c
}

fn put(b: &mut [u8], at: usize, v: &[u8]) {
    b[at..at + v.len()].copy_from_slice(v);
}

/// Zips in torch's layout (tests/it/torchlike.rs) with their end records, central
/// directory or local headers made to lie. Each is a `Zip` error naming what is wrong.
fn zip_structure(c: &mut Vec<(&'static str, Vec<u8>, &'static str)>) {
    use crate::torchlike::{torch_save_w, Layout, TorchLike};
    let w = [1.0f32, 2.0, 3.0, 4.0];
    let good = torch_save_w("astromae_finetuned_v2", &w, Layout::default());
    let plain = torch_save_w(
        "astromae_finetuned_v2",
        &w,
        Layout {
            zip64_end: false,
            descriptors: true,
        },
    );
    let n = good.len();
    let index = cai_torch::read_zip_index("g", std::io::Cursor::new(&good)).unwrap();
    let cd = index.central_directory_offset as usize;
    // The zip64 end record sits 98 bytes before the end, its locator 42, the end record 22.
    let mut b = good.clone();
    put(&mut b, n - 42 + 8, &u64::MAX.to_le_bytes());
    c.push(("zip64_locator_out_of_range.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, n - 42 + 8, &((n - 99) as u64).to_le_bytes());
    c.push(("zip64_locator_misplaced.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, n - 22 + 10, &6u16.to_le_bytes());
    c.push(("end_record_count_disagrees.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, n - 98 + 32, &8u64.to_le_bytes());
    put(&mut b, n - 98 + 24, &8u64.to_le_bytes());
    put(&mut b, n - 22 + 8, &8u16.to_le_bytes());
    put(&mut b, n - 22 + 10, &8u16.to_le_bytes());
    c.push(("more_entries_than_headers.pt", b, "Zip"));
    let mut b = plain.clone();
    let m = b.len();
    put(&mut b, m - 22 + 16, &((m + 100) as u32).to_le_bytes());
    c.push(("central_directory_past_end.pt", b, "Zip"));
    let mut b = plain.clone();
    let size = u32::from_le_bytes(b[m - 22 + 12..m - 22 + 16].try_into().unwrap());
    put(&mut b, m - 22 + 12, &(size - 1).to_le_bytes());
    c.push(("central_directory_short_of_end.pt", b, "Zip"));
    let mut b = plain.clone();
    put(&mut b, m - 22 + 16, &u32::MAX.to_le_bytes());
    c.push(("zip64_value_without_locator.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, cd + 8, &0x0809u16.to_le_bytes());
    c.push(("encrypted_entry.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, cd + 10, &12u16.to_le_bytes());
    c.push(("unsupported_method_bzip2.pt", b, "Zip"));
    let mut b = good.clone();
    let pkl = index.entry("astromae_finetuned_v2/data.pkl").unwrap();
    b[pkl.header_offset as usize + 30] ^= 0x20;
    c.push(("local_name_differs.pt", b, "Zip"));
    let mut b = good.clone();
    let d0 = index.entry("astromae_finetuned_v2/data/0").unwrap();
    b[(d0.data_offset + d0.size + 4) as usize] ^= 1;
    c.push(("descriptor_crc_differs.pt", b, "Zip"));
    let mut b = good.clone();
    put(&mut b, cd + 42, &((n + 5) as u32).to_le_bytes());
    c.push(("local_header_after_directory.pt", b, "Zip"));
    // A second entry whose local header hides inside the first one's data.
    let mut hidden = Vec::new();
    hidden.extend(0x0403_4b50u32.to_le_bytes());
    hidden.extend([0u8; 2]);
    hidden.extend(0x0800u16.to_le_bytes());
    hidden.extend([0u8; 6]);
    let inner = b"evil";
    hidden.extend(crc32fast::hash(inner).to_le_bytes());
    hidden.extend(4u32.to_le_bytes());
    hidden.extend(4u32.to_le_bytes());
    hidden.extend(8u16.to_le_bytes());
    hidden.extend(0u16.to_le_bytes());
    hidden.extend(b"m/hidden");
    hidden.extend(inner);
    let mut z = TorchLike::new(std::io::Cursor::new(Vec::new()), "m", Layout::default());
    let pkl = one_linear(T::f32("0", &[4, 4]));
    z.record("data.pkl", &pkl);
    let at = z.record("data/0", &[&hidden[..], &[0u8; 64][..]].concat());
    z.extra_central("m/hidden", crc32fast::hash(inner), 4, at);
    c.push(("overlapping_entries.pt", z.finish().into_inner(), "Zip"));
    c.push(("too_short.pt", b"PK\x03\x04PK\x05\x06".to_vec(), "Zip"));
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn variant(e: &Error) -> String {
    let d = format!("{e:?}");
    d.split([' ', '{', '('])
        .next()
        .unwrap_or_default()
        .to_string()
}

fn read(name: &str, bytes: &[u8]) -> Result<(), Error> {
    if name.starts_with("ds_") {
        read_tensor_dataset(name, bytes).map(|_| ())
    } else {
        read_checkpoint(name, bytes).map(|_| ())
    }
}

#[test]
fn hostile_corpus_matches_generator() {
    let corpus = corpus();
    let expected: String = corpus
        .iter()
        .map(|(n, _, v)| format!("{n} {v}\n"))
        .collect();
    if std::env::var_os("CAI_REGENERATE_HOSTILE").is_some() {
        std::fs::create_dir_all(dir()).unwrap();
        for entry in std::fs::read_dir(dir()).unwrap() {
            std::fs::remove_file(entry.unwrap().path()).unwrap();
        }
        for (n, b, _) in &corpus {
            std::fs::write(dir().join(n), b).unwrap();
        }
        std::fs::write(dir().join("EXPECTED"), &expected).unwrap();
    }
    assert_eq!(
        std::fs::read_to_string(dir().join("EXPECTED")).unwrap(),
        expected,
        "tests/hostile is stale: rerun with CAI_REGENERATE_HOSTILE=1"
    );
    for (n, b, _) in &corpus {
        assert_eq!(&std::fs::read(dir().join(n)).unwrap(), b, "{n} is stale");
    }
}

#[test]
fn every_hostile_file_is_a_named_error() {
    let listing = std::fs::read_to_string(dir().join("EXPECTED")).unwrap();
    let mut checked = 0;
    for line in listing.lines() {
        let (name, want) = line.split_once(' ').unwrap();
        let bytes = std::fs::read(dir().join(name)).unwrap();
        let got = read(name, &bytes);
        let err = match got {
            Err(e) => e,
            Ok(()) => panic!("{name}: read succeeded, expected {want}"),
        };
        assert_eq!(variant(&err), want, "{name}: {err}");
        let msg = err.to_string();
        assert!(
            msg.starts_with(name),
            "{name}: message does not name the file: {msg}"
        );
        // Both readers refuse every file, whatever it is.
        assert!(read_checkpoint(name, &bytes).is_err(), "{name}");
        assert!(read_tensor_dataset(name, &bytes).is_err(), "{name}");
        checked += 1;
    }
    assert!(checked >= 50, "only {checked} hostile files");
}

#[test]
fn forbidden_globals_are_named_with_their_offset() {
    for (module, name) in [
        ("posix", "system"),
        ("builtins", "eval"),
        ("os", "system"),
        ("subprocess", "Popen"),
    ] {
        let bytes = torch_zip(&call(module, name), &[]);
        match read_checkpoint("evil.pt", &bytes) {
            Err(Error::ForbiddenGlobal {
                file,
                global,
                offset,
            }) => {
                assert_eq!(file, "evil.pt");
                assert_eq!(global, format!("{module}.{name}"));
                assert_eq!(offset, 2);
            }
            other => panic!("{module}.{name}: {other:?}"),
        }
    }
}

#[test]
fn bad_crc_is_reported_as_a_checksum_failure() {
    let mut bad = valid_checkpoint();
    let at = find(&bad, &f32_storage(0, 16)).unwrap() + 5;
    bad[at] ^= 0x40;
    let err = read_checkpoint("crc.pt", &bad).unwrap_err();
    assert!(err.to_string().contains("checksum"), "{err}");
    assert!(err.to_string().contains("archive/data/0"), "{err}");
}

#[test]
fn every_truncation_of_a_valid_file_is_an_error() {
    let good = valid_checkpoint();
    for n in 0..good.len() {
        assert!(read_checkpoint("t.pt", &good[..n]).is_err(), "prefix {n}");
    }
    assert!(read_checkpoint("t.pt", &good).is_ok());
}

#[test]
fn every_truncation_of_a_valid_pickle_is_an_error() {
    let pkl = one_linear(T::f32("0", &[4, 4]));
    for n in 0..pkl.len() {
        let bytes = torch_zip(&pkl[..n], &[("0", f32_storage(0, 16))]);
        assert!(read_checkpoint("t.pt", &bytes).is_err(), "prefix {n}");
    }
}

#[test]
fn limits_stop_stack_memo_container_and_byte_bombs() {
    use cai_torch::{read_checkpoint_with, Limits, ReadOptions};
    let opts = |l: Limits| ReadOptions {
        limits: l,
        ..Default::default()
    };
    let small = Limits {
        max_stack: 100,
        max_memo: 10,
        max_container_len: 10,
        max_objects: 10,
        max_ops: 1000,
        ..Default::default()
    };
    let cases: Vec<(Vec<u8>, &str)> = vec![
        ([b'N'; 200].to_vec(), "pickle stack depth"),
        ([b'('; 200].to_vec(), "pickle stack depth"),
        (
            (0..20u8).flat_map(|i| [b'q', i]).collect::<Vec<u8>>(),
            "memo entries",
        ),
        ([&b"]("[..], &[b'N'; 20], b"e"].concat(), "container length"),
        ([b']'; 20].to_vec(), "objects created"),
        (b"N0".repeat(600), "pickle opcodes executed"),
    ];
    for (body, what) in cases {
        let pkl = [&[0x80, 2, b'N'][..], &body, b"."].concat();
        let bytes = torch_zip(&pkl, &[]);
        match read_checkpoint_with("l.pt", &bytes, &opts(small.clone())) {
            Err(Error::Limit { what: w, .. }) => assert_eq!(w, what),
            other => panic!("{what}: {other:?}"),
        }
    }
    // Total tensor bytes: 64 bytes allowed, the checkpoint holds 64, two copies exceed it.
    let tight = Limits {
        max_total_tensor_bytes: 64,
        ..Default::default()
    };
    assert!(read_checkpoint_with("ok.pt", &valid_checkpoint(), &opts(tight.clone())).is_ok());
    let mut p = P::new();
    let m = M::new("torch.nn.modules.linear.Linear")
        .param("weight", T::f32("0", &[4, 4]))
        .param("bias", T::f32("0", &[4, 4]));
    p.module(&m);
    let bytes = torch_zip(&p.stop(), &[("0", f32_storage(0, 16))]);
    assert!(matches!(
        read_checkpoint_with("two.pt", &bytes, &opts(tight)),
        Err(Error::Limit { .. })
    ));
    // A pickle over the size limit is refused before it is run.
    let tiny = Limits {
        max_pickle_bytes: 8,
        ..Default::default()
    };
    assert!(matches!(
        read_checkpoint_with("big.pt", &valid_checkpoint(), &opts(tiny)),
        Err(Error::Limit { .. })
    ));
    // A model class of one's own is allowed only when asked for.
    let bytes = torch_zip(&call("__main__", "Net"), &[]);
    let extra = ReadOptions {
        extra_classes: vec!["__main__.Net".into()],
        ..Default::default()
    };
    assert!(matches!(
        read_checkpoint_with("own.pt", &bytes, &extra),
        Err(Error::UnexpectedContent { .. })
    ));
}
