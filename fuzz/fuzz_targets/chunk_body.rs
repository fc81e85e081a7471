//! A chunk upload's zstd body, decompressed as the receiver does (bounded by the chunk's
//! length): never more than that many bytes, never a panic, whatever the frame claims.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&len, body)) = data.split_first() else { return };
    let expected = (len as usize + 1) * 4096;
    if let Ok(out) = zstd::bulk::decompress(body, expected) {
        assert!(out.len() <= expected);
        let _ = ferry::image::treehash::chunk_id(&out, 0, out.len() as u64, expected as u64);
    }
});
