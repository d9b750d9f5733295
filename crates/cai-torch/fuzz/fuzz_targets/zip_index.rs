//! Whole files into the zip index (end records, central directory, local headers and
//! descriptors, all checked against each other): must return, never panic or hang.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(index) = cai_torch::read_zip_index("fuzz.zip", std::io::Cursor::new(data)) {
        // What the index promises: every entry inside the file, none overlapping.
        let mut spans: Vec<(u64, u64)> = index
            .entries
            .iter()
            .map(|e| (e.header_offset, e.end()))
            .collect();
        spans.sort();
        for w in spans.windows(2) {
            assert!(w[0].1 <= w[1].0);
        }
        assert!(spans
            .last()
            .is_none_or(|s| s.1 <= index.central_directory_offset));
    }
});
