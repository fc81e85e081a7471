//! Filesystems as used-blocks mode reads them: probing arbitrary volume bytes must never panic,
//! and the ranges it calls used must be sorted, disjoint and within the volume.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::filesystems(data));
