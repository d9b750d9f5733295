//! Whole files into read_partition (native safetensors, the original's `.pt`, anything):
//! must return, never panic, hang or blow memory; a partition it returns must validate.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = cai_data::read_partition("fuzz.bin", data) {
        assert!(p.validate().is_ok(), "read_partition returned an invalid partition");
        // What was read can be written back and read again identically.
        if let Ok(bytes) = cai_data::write_partition(&p) {
            let q = cai_data::read_partition("again", &bytes);
            assert!(
                matches!(q, Ok(ref q) if q.n == p.n && q.image_shape() == p.image_shape()),
                "a written partition did not read back"
            );
        }
    }
});
