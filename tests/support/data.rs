//! Bytes and files with known content, and reading them back.

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::cmd::run;

/// A path as `&str` (every path in these tests is UTF-8).
pub fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// Creates (or resizes) a sparse file of `size` bytes.
pub fn make_file(path: &Path, size: u64) {
    OpenOptions::new().create(true).truncate(false).write(true).open(path).unwrap().set_len(size).unwrap();
}

/// Writes `data` at `offset` without changing anything else.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    OpenOptions::new().write(true).open(path).unwrap().write_all_at(data, offset).unwrap();
}

/// `len` bytes of `path` from `offset`.
pub fn read_at(path: &Path, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0u8; len];
    std::fs::File::open(path).unwrap().read_exact_at(&mut buf, offset).unwrap();
    buf
}

/// Deterministic incompressible bytes that look random (xorshift64*), different for each seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545_F491_4F6C_DD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A file of `size` bytes of random data.
pub fn random_image(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, pseudo_random(size, seed)).unwrap();
}

/// The hash `b3sum` (the BLAKE3 team's CLI) prints for a file or device: asserts that b3sum
/// succeeded and printed 64 hex digits.
pub fn b3sum(path: &Path) -> String {
    let out = run("b3sum", &["--no-names", s(path)]);
    let h = out.trim().to_string();
    assert!(h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()), "b3sum printed {out:?}");
    h
}

/// Whether two files hold the same bytes (`cmp -s`).
pub fn files_equal(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
}

/// Files below `dir`, counted recursively (0 when `dir` does not exist).
pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
