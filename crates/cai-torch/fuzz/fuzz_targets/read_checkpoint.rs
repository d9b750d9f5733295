//! Whole files into read_checkpoint: must return, never panic, hang or blow memory.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cai_torch::read_checkpoint("fuzz.pt", data);
    let _ = cai_torch::is_torch_zip(data);
});
