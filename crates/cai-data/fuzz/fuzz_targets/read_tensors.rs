//! Whole files into read_tensors (NumPy `.npy` and `.npz`, safetensors of any tensors, the
//! original's `.pt`, anything): must return, never panic, hang or blow memory (a hostile
//! shape is refused, not allocated); a set it returns must validate and survive a write and
//! a read back.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(set) = cai_data::read_tensors("fuzz.npy", data, None) {
        assert!(set.validate("fuzz").is_ok(), "read_tensors returned an invalid set");
        if let Ok(bytes) = cai_data::write_tensors(&set) {
            let back = cai_data::read_tensors("again", &bytes, None);
            assert!(
                matches!(back, Ok(ref b) if b.n == set.n && b.tensors.len() == set.tensors.len()),
                "a written set did not read back"
            );
        }
    }
});
