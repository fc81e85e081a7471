//! `ferry store verify` on a real receiver's store: clean after real sends, and each kind of
//! damage found and named (a chunk file's bytes changed on disk, a chunk file gone, a manifest
//! changed), with exit 1; `--job` checks one job only. And the `bad_sectors` job option, whose
//! ranges such a store keeps (a disk with real bad sectors is in `vm_faults.rs`).

mod support;

use std::path::{Path, PathBuf};

use support::*;

const MIB: usize = 1 << 20;

fn verify(store: &Path, extra: &[&str]) -> (i32, serde_json::Value) {
    let mut args = vec!["store", "verify", "--store", store.to_str().unwrap(), "--json"];
    args.extend(extra);
    let out = ferry(&args);
    let report = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
    });
    (out.status.code().unwrap(), report)
}

fn chunk_files(store: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for fan in std::fs::read_dir(store.join("chunks")).unwrap() {
        for f in std::fs::read_dir(fan.unwrap().path()).unwrap() {
            out.push(f.unwrap().path());
        }
    }
    out.sort();
    out
}

fn problems(report: &serde_json::Value) -> Vec<String> {
    report["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

#[test]
fn a_store_is_verified_from_its_own_bytes_and_damage_is_named() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let r = Receiver::start(&store, true);
    // Two jobs, 1 MiB chunks: one 6 MiB disk with a zero chunk, one 3 MiB disk.
    let a_img = t.path().join("a.img");
    random_image(&a_img, 6 * MIB, 1);
    write_at(&a_img, 2 << 20, &vec![0u8; MIB]);
    let b_img = t.path().join("b.img");
    random_image(&b_img, 3 * MIB, 2);
    let (a, a_token) = r.create_job("verify-a");
    sent(&r.send(&a, &a_token, &[&a_img], &["--chunk-size", "1M"]));
    let (b, b_token) = r.create_job("verify-b");
    sent(&r.send(&b, &b_token, &[&b_img], &["--chunk-size", "1M"]));

    // Clean: every chunk file hashed again (5 + 3), both manifests checked.
    let files = chunk_files(&store);
    assert_eq!(files.len(), 8, "{files:?}");
    let (code, report) = verify(&store, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["chunks_checked"], 8);
    assert_eq!(report["bytes_checked"], 8 * MIB as u64);
    let mut want = vec![format!("{a}/0"), format!("{b}/0")];
    want.sort(); // in job id order
    assert_eq!(report["manifests_checked"], serde_json::json!(want));
    let text = ferry(&["store", "verify", "--store", store.to_str().unwrap()]);
    assert!(
        String::from_utf8_lossy(&text.stdout)
            .contains("8 chunks (8.0 MiB) hashed again at their place, 2 manifests checked: nothing wrong"),
        "{}",
        String::from_utf8_lossy(&text.stdout)
    );

    // One byte of one of job A's chunk files changed on the store's disk: named, exit 1.
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("manifests").join(&a).join("0.json")).unwrap()).unwrap();
    let id = manifest["chunks"][3]["id"].as_str().unwrap().to_string();
    let damaged = store.join("chunks").join(&id[..2]).join(format!("{id}.{}", 3 * MIB));
    let mut bytes = std::fs::read(&damaged).unwrap();
    bytes[12345] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    let (code, report) = verify(&store, &[]);
    assert_eq!(code, 1);
    assert_eq!(
        problems(&report),
        vec![format!(
            "{}: its bytes do not hash to its id at offset {} (damaged on the store's disk)",
            damaged.display(),
            3 * MIB
        )]
    );
    // --job B does not look at A's chunks.
    let (code, report) = verify(&store, &["--job", &b]);
    assert_eq!((code, report["chunks_checked"].as_u64()), (0, Some(3)), "{report:#}");
    // ...and --job A does.
    let (code, _) = verify(&store, &["--job", &a]);
    assert_eq!(code, 1);
    bytes[12345] ^= 1;
    std::fs::write(&damaged, &bytes).unwrap();
    assert_eq!(verify(&store, &[]).0, 0, "the byte put back");

    // B's manifest swapped for A's, which the store holds whole: only the job database knows.
    let b_path = store.join("manifests").join(&b).join("0.json");
    let b_text = std::fs::read(&b_path).unwrap();
    std::fs::copy(store.join("manifests").join(&a).join("0.json"), &b_path).unwrap();
    let (code, report) = verify(&store, &["--job", &b]);
    assert_eq!(code, 1);
    let job_b = r.job(&b);
    assert_eq!(
        problems(&report),
        vec![format!(
            "manifest {b}/0: whole-disk hash {} but the job says {}",
            manifest["blake3"].as_str().unwrap(),
            job_b["disks"][0]["blake3"].as_str().unwrap()
        )]
    );
    std::fs::write(&b_path, &b_text).unwrap();

    // A chunk file of B gone: B's manifest names it missing.
    let b_manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(store.join("manifests").join(&b).join("0.json")).unwrap()).unwrap();
    let b_id = b_manifest["chunks"][1]["id"].as_str().unwrap().to_string();
    std::fs::remove_file(store.join("chunks").join(&b_id[..2]).join(format!("{b_id}.{MIB}"))).unwrap();
    let (code, report) = verify(&store, &["--job", &b]);
    assert_eq!(code, 1);
    assert_eq!(problems(&report), vec![format!("manifest {b}/0: chunk 1 (id {b_id}) is missing from the store")]);

    // A manifest whose whole-disk hash was changed no longer merges.
    let mut changed = b_manifest.clone();
    changed["blake3"] = serde_json::json!("00".repeat(32));
    std::fs::write(store.join("manifests").join(&b).join("0.json"), serde_json::to_vec(&changed).unwrap()).unwrap();
    let (_, report) = verify(&store, &["--job", &b]);
    assert_eq!(
        problems(&report),
        vec![
            format!("manifest {b}/0: the chunk ids do not merge to the whole-disk hash the manifest states"),
            format!(
                "manifest {b}/0: whole-disk hash {} but the job says {}",
                "00".repeat(32),
                b_manifest["blake3"].as_str().unwrap()
            ),
        ]
    );

    // Usage: a job the store has no manifests for is an error, not a clean report.
    let out = ferry(&["store", "verify", "--store", store.to_str().unwrap(), "--job", "nosuchjob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("job nosuchjob has no verified disk"));
}

/// The `bad_sectors` job option: set at create, shown with the job, refused when misspelt; a
/// clean disk sent under `record` is a plain MIGRATED with no ranges anywhere.
#[test]
fn the_bad_sectors_option_is_kept_with_the_job_and_a_clean_disk_records_nothing() {
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let r = Receiver::start(&store, true);
    let s = store.to_str().unwrap();
    let out = ferry(&["job", "create", "--store", s, "--name", "rec", "--bad-sectors", "record", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    assert_eq!(r.job(id)["options"]["bad_sectors"], "record");
    let (plain, _) = r.create_job("plain");
    assert!(r.job(&plain)["options"].get("bad_sectors").is_none(), "fail is the default and not spelt out");
    let misspelt = ferry(&["job", "create", "--store", s, "--name", "x", "--bad-sectors", "skip"]);
    assert_eq!(misspelt.status.code(), Some(2));

    let img = t.path().join("clean.img");
    random_image(&img, 3 * MIB, 9);
    let out = r.send(id, token, &[&img], &[]);
    let summary = sent(&out);
    assert!(summary["disks"][0].get("bad_ranges").is_none(), "{summary:#}");
    let j = r.job(id);
    assert_eq!(j["state"], "Finished");
    assert!(j["disks"][0].get("bad_ranges").is_none(), "{j:#}");
    let shown = String::from_utf8_lossy(&ferry(&["job", "show", "--store", s, id]).stdout).to_string();
    assert!(shown.contains(": Finished") && !shown.contains("UNREADABLE"), "{shown}");
    assert_eq!(export_b3sum(&r, id, 0, t.path()), b3sum(&img));
}
