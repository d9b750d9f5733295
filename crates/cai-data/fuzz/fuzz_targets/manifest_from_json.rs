//! Bytes into Manifest::from_json: must return, never panic; an accepted manifest must
//! survive its own JSON round trip.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = cai_data::Manifest::from_json("fuzz.json", data) {
        let again = cai_data::Manifest::from_json("again", m.to_json().as_bytes());
        assert!(matches!(again, Ok(ref a) if *a == m), "round trip changed the manifest");
    }
});
