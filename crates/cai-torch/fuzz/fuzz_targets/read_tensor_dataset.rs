//! Whole files into read_tensor_dataset: must return, never panic, hang or blow memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cai_torch::read_tensor_dataset("fuzz.pt", data);
});
