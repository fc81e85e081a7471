//! Manifests as a source sends them: parsing, validation, and the whole-disk hash recomputed
//! from the ids. Validation must never panic, and a manifest it accepts must recompute to the
//! root it states.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::manifest(data));
