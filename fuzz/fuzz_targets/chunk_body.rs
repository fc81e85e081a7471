//! A chunk upload's zstd body, decompressed as the receiver does (bounded by the chunk's
//! length): never more than that many bytes, never a panic, whatever the frame claims.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::chunk_body(data));
