//! Every zip PyTorch writes opens: all stem lengths, with and without zip64 end records
//! and data descriptors, real `torch.save` files (tests/torch_files, made by
//! scripts/parity/make_torch_zip_fixtures.py), and a sparse file over 4 GiB indexed from
//! its records alone.

use std::io::{Cursor, Read, Seek, SeekFrom};
use std::path::PathBuf;

use cai_torch::{is_torch_zip, read_checkpoint, read_zip_index, Error, ZipProblem};

use crate::torchlike::{torch_save_w, Layout, TorchLike};

fn torch_files() -> PathBuf {
    std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from)
        .join("tests/torch_files")
}

const W: [f32; 4] = [0.0, 1.0, 2.0, 3.0];

fn layouts() -> [Layout; 4] {
    [
        Layout::default(),
        Layout {
            zip64_end: false,
            descriptors: true,
        },
        Layout {
            zip64_end: true,
            descriptors: false,
        },
        Layout {
            zip64_end: false,
            descriptors: false,
        },
    ]
}

#[test]
fn every_stem_length_1_to_64_opens_in_every_layout() {
    for n in 1..=64 {
        let stem: String = "astromae_finetuned_v2_".chars().cycle().take(n).collect();
        for layout in layouts() {
            let bytes = torch_save_w(&stem, &W, layout);
            let what = format!("stem of {n}, {layout:?}");
            assert!(is_torch_zip(&bytes), "{what}");
            let c = read_checkpoint(&format!("{stem}.pt"), &bytes)
                .unwrap_or_else(|e| panic!("{what}: {e}"));
            assert_eq!(c.get("w").unwrap().to_f32().unwrap(), W, "{what}");
            let index = read_zip_index("x.pt", Cursor::new(&bytes)).unwrap();
            assert_eq!(index.zip64, layout.zip64_end, "{what}");
            assert_eq!(index.entries.len(), 7, "{what}");
            for e in &index.entries {
                assert_eq!(e.data_offset % 64, 0, "{what}: {}", e.name);
                assert_eq!(e.descriptor_len, if layout.descriptors { 16 } else { 0 });
            }
        }
    }
}

/// Real torch.save outputs (torch 2.15) with stems of 1, 2, 15–27, 40 and 64 characters.
#[test]
fn real_torch_files_of_every_stem_length_open() {
    let mut seen = 0;
    for dir in std::fs::read_dir(torch_files()).unwrap() {
        let dir = dir.unwrap().path();
        if !dir
            .file_name()
            .unwrap()
            .to_string_lossy()
            .starts_with("stem_")
        {
            continue;
        }
        for f in std::fs::read_dir(&dir).unwrap() {
            let f = f.unwrap().path();
            let name = f.file_name().unwrap().to_string_lossy().to_string();
            let bytes = std::fs::read(&f).unwrap();
            let c = read_checkpoint(&name, &bytes).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(c.get("w").unwrap().to_f32().unwrap(), W, "{name}");
            let index = read_zip_index(&name, Cursor::new(&bytes)).unwrap();
            assert!(index.zip64, "{name}");
            seen += 1;
        }
    }
    assert_eq!(seen, 17);
}

/// The writer above is torch's layout: rewriting a real file's records with it gives
/// the same bytes.
#[test]
fn writer_reproduces_real_torch_files_byte_for_byte() {
    for n in [1usize, 15, 21, 27, 64] {
        let dir = torch_files().join(format!("stem_{n:02}"));
        let f = std::fs::read_dir(&dir)
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path();
        let stem = f.file_stem().unwrap().to_string_lossy().to_string();
        let real = std::fs::read(&f).unwrap();
        let index = read_zip_index(&stem, Cursor::new(&real)).unwrap();
        let mut z = TorchLike::new(Cursor::new(Vec::new()), &stem, Layout::default());
        for e in &index.entries {
            let data = &real[e.data_offset as usize..(e.data_offset + e.size) as usize];
            let rel = e.name.strip_prefix(&format!("{stem}/")).unwrap();
            z.record(rel, data);
        }
        assert!(z.finish().into_inner() == real, "stem of {n}");
    }
}

#[test]
fn a_descriptor_that_disagrees_with_the_central_directory_is_refused() {
    let mut bytes = torch_save_w("m", &W, Layout::default());
    let index = read_zip_index("m.pt", Cursor::new(&bytes)).unwrap();
    let e = index.entry("m/data/0").unwrap();
    let at = (e.data_offset + e.size + 4) as usize; // the descriptor's CRC
    bytes[at] ^= 1;
    match read_checkpoint("m.pt", &bytes) {
        Err(Error::Zip {
            file,
            problem: ZipProblem::BadRecord { record, .. },
        }) => {
            assert_eq!(file, "m.pt");
            assert!(record.contains("data descriptor of `m/data/0`"), "{record}");
        }
        other => panic!("{other:?}"),
    }
}

/// Counts the bytes read through it.
struct Counting<R> {
    inner: R,
    read: u64,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        Ok(n)
    }
}

impl<R: Seek> Seek for Counting<R> {
    fn seek(&mut self, pos: SeekFrom) -> std::io::Result<u64> {
        self.inner.seek(pos)
    }
}

/// CRC-32 of `n` zero bytes, without hashing them all.
fn zeros_crc(n: u64) -> u32 {
    let chunk = 1u64 << 20;
    let mut one = crc32fast::Hasher::new();
    one.update(&vec![0u8; chunk as usize]);
    let mut h = crc32fast::Hasher::new();
    for _ in 0..n / chunk {
        h.combine(&one);
    }
    let mut rest = crc32fast::Hasher::new();
    rest.update(&vec![0u8; (n % chunk) as usize]);
    h.combine(&rest);
    h.finalize()
}

/// A 4.3 GB torch-layout file (a sparse file: its 4 GiB storage is a hole, so it takes a
/// few KB of disk). Indexing it reads only its records: end records, central directory,
/// local headers and descriptors, under 4 KiB.
#[test]
fn a_sparse_file_over_4_gib_is_indexed_from_its_records_alone() {
    let path = std::env::temp_dir().join(format!("cai-torch-4gib-{}.pt", std::process::id()));
    let big = (4u64 << 30) + 100;
    let file = std::fs::File::create(&path).unwrap();
    let mut z = TorchLike::new(file, "big_checkpoint", Layout::default());
    z.record("data.pkl", b"\x80\x02}.");
    z.record("byteorder", b"little");
    z.zeros("data/0", big, zeros_crc(big));
    z.record("version", b"3\n");
    let file = z.finish();
    drop(file);
    let len = std::fs::metadata(&path).unwrap().len();
    assert!(len > big, "{len}");
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        let on_disk = std::fs::metadata(&path).unwrap().blocks() * 512;
        assert!(
            on_disk < 1 << 20,
            "the file is not sparse: {on_disk} bytes on disk"
        );
    }
    let mut r = Counting {
        inner: std::fs::File::open(&path).unwrap(),
        read: 0,
    };
    let index = read_zip_index("big_checkpoint.pt", &mut r).unwrap();
    std::fs::remove_file(&path).unwrap();
    assert!(r.read < 4 << 10, "read {} bytes", r.read);
    assert!(index.zip64);
    let data = index.entry("big_checkpoint/data/0").unwrap();
    assert_eq!((data.size, data.compressed_size), (big, big));
    assert_eq!(data.descriptor_len, 24, "64-bit sizes in the descriptor");
    let version = index.entry("big_checkpoint/version").unwrap();
    assert!(version.header_offset > 1 << 32, "{}", version.header_offset);
    assert_eq!(version.data_offset % 64, 0);
    assert!(index.central_directory_offset > 1 << 32);
}
