//! The input is a pickle; it is wrapped in a valid torch zip (with two small storages) so
//! the fuzzer explores the pickle VM instead of fighting zip CRCs. Both readers run.
#![no_main]

use std::io::{Cursor, Write};

use libfuzzer_sys::fuzz_target;
use zip::write::SimpleFileOptions;

fn wrap(pkl: &[u8]) -> Option<Vec<u8>> {
    let mut z = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let o = SimpleFileOptions::default().compression_method(zip::CompressionMethod::Stored);
    let entries: [(&str, &[u8]); 5] = [
        ("archive/data.pkl", pkl),
        ("archive/byteorder", b"little"),
        ("archive/data/0", &[0u8; 64]),
        ("archive/data/1", &[1u8; 24]),
        ("archive/version", b"3\n"),
    ];
    for (name, bytes) in entries {
        z.start_file(name, o).ok()?;
        z.write_all(bytes).ok()?;
    }
    Some(z.finish().ok()?.into_inner())
}

fuzz_target!(|pkl: &[u8]| {
    if let Some(bytes) = wrap(pkl) {
        let _ = cai_torch::read_checkpoint("fuzz.pt", &bytes);
        let _ = cai_torch::read_tensor_dataset("fuzz.pt", &bytes);
    }
});
