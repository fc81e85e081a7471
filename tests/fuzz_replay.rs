//! Every committed fuzz input (`fuzz/seeds`, `fuzz/corpus`, `fuzz/regressions`) through the
//! fuzz targets' own checks (`fuzz/src/lib.rs`), in an ordinary `cargo test`: a regression
//! input that crashed once fails here if the bug returns, and CI needs no nightly toolchain or
//! instrumented build for it. Fuzzing itself is `scripts/fuzz`.

#[path = "../fuzz/src/lib.rs"]
mod checks;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};

/// A fuzz target's check: panics on a crash input.
type Check = fn(&[u8]);

const TARGETS: &[(&str, Check)] = &[
    ("partition_tables", checks::partition_tables),
    ("manifest", checks::manifest),
    ("api_bodies", checks::api_bodies),
    ("live_config", checks::live_config),
    ("chunk_body", checks::chunk_body),
    ("target_plan", checks::target_plan),
    ("filesystems", checks::filesystems),
];

fn inputs(target: &str) -> Vec<PathBuf> {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz");
    let mut out = vec![];
    for kind in ["seeds", "corpus", "regressions"] {
        let Ok(dir) = std::fs::read_dir(fuzz.join(kind).join(target)) else { continue };
        out.extend(dir.map(|e| e.unwrap().path()).filter(|p| p.is_file()));
    }
    out.sort();
    out
}

/// Panics seen by the hook, caught or not: libFuzzer counts a panic that ferry catches itself
/// (`catch_unwind` around a crate) as a crash, and so does this test.
static PANICS: AtomicUsize = AtomicUsize::new(0);

#[test]
fn every_committed_fuzz_input_passes_its_targets_checks() {
    let default_hook = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        default_hook(info);
    }));
    for (target, check) in TARGETS {
        let files = inputs(target);
        assert!(!files.is_empty(), "fuzz target {target} has no committed inputs");
        for f in &files {
            let data = std::fs::read(f).unwrap();
            let before = PANICS.load(Ordering::SeqCst);
            let result = std::panic::catch_unwind(|| check(&data));
            let panicked = PANICS.load(Ordering::SeqCst) - before;
            assert!(result.is_ok() && panicked == 0, "fuzz target {target} panics on {}", f.display());
        }
        eprintln!("{target}: {} inputs", files.len());
    }
}
