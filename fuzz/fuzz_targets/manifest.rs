//! Manifests as a source sends them: parsing, validation, and the whole-disk hash recomputed
//! from the ids. Validation must never panic, and a manifest it accepts must recompute to the
//! root it states.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(m) = serde_json::from_slice::<ferry::image::Manifest>(data) else { return };
    if m.validate().is_ok() {
        assert_eq!(m.recompute_root().expect("a valid manifest has a root"), m.blake3);
        for i in 0..m.chunks.len().min(64) as u64 {
            let (offset, len) = m.chunk_range(i);
            assert!(offset + len <= m.size);
        }
    }
});
