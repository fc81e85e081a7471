//! A wave as the operator reads it (`ferry job list --wave`), and a job's receipt as an auditor
//! checks it: the hash it states is what `b3sum` computes from the migrated disk.

mod support;

use std::process::Command;

use support::*;

const MIB: usize = 1 << 20;

fn create(r: &Receiver, name: &str, extra: &[&str]) -> (String, String) {
    let store = r.store.to_str().unwrap();
    let out = ferry(&[&["job", "create", "--store", store, "--name", name, "--json"][..], extra].concat());
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
}

#[test]
fn a_wave_summary_counts_its_machines_and_lists_failures_first() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let store = r.store.to_str().unwrap();
    let img = t.path().join("a.img");
    std::fs::write(&img, pseudo_random(3 * MIB, 1)).unwrap();
    let (a, a_token) = create(&r, "a", &["--wave", "w1"]);
    let (b, _) = create(&r, "b", &["--wave", "w1"]);
    let (c, _) = create(&r, "c", &["--wave", "w1"]);
    create(&r, "elsewhere", &["--wave", "w2"]);
    create(&r, "no-wave", &[]);
    sent(&r.send(&a, &a_token, &[&img], &[]));
    assert!(ferry(&["job", "cancel", "--store", store, &c]).status.success());

    let out = ferry(&["job", "list", "--store", store, "--wave", "w1", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let w: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(w["machines"], 3);
    assert_eq!(w["by_state"], serde_json::json!({"Finished": 1, "Waiting": 1, "Cancelled": 1}));
    assert_eq!(w["bytes_total"], 3 * MIB as u64);
    assert_eq!((w["bytes_done"].as_u64(), w["bytes_to_go"].as_u64()), (Some(3 * MIB as u64), Some(0)));
    let order: Vec<&str> = w["jobs"].as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(order, [c.as_str(), b.as_str(), a.as_str()], "failures first, then Waiting, then Finished");

    let text = ferry(&["job", "list", "--store", store, "--wave", "w1"]);
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains("wave w1: 3 machines: 1 Cancelled, 1 Finished, 1 Waiting"), "{text}");
    assert!(text.contains("3.0 MiB of 3.0 MiB read, 0 B to go"), "{text}");

    let none = ferry(&["job", "list", "--store", store, "--wave", "nosuch"]);
    assert_eq!(none.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&none.stderr).contains("no job is in wave \"nosuch\""));
    let bad = ferry(&["job", "create", "--store", store, "--name", "x", "--wave", "bad wave"]);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad_name"), "{}", String::from_utf8_lossy(&bad.stderr));
}

#[test]
fn a_receipt_states_what_b3sum_finds_on_the_migrated_disk() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let store = r.store.to_str().unwrap();
    let img = t.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(10 * MIB as u64).unwrap();
    write_at(&img, MIB as u64, &pseudo_random(4 * MIB, 9));
    let (id, token) = create(&r, "db01", &["--wave", "cutover"]);
    sent(&r.send(&id, &token, &[&img], &[]));

    let out = ferry(&["job", "receipt", "--store", store, &id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let receipt: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((receipt["job"].as_str(), receipt["wave"].as_str()), (Some(id.as_str()), Some("cutover")));
    assert_eq!(receipt["state"], "Finished");
    assert!(receipt["started_at"].as_u64().unwrap() <= receipt["finished_at"].as_u64().unwrap());
    let disk = &receipt["disks"][0];
    assert_eq!(disk["blake3"].as_str().unwrap(), b3sum(&img), "the receipt's hash is the source's, by b3sum");
    assert_eq!(disk["size"], 10 * MIB as u64);

    // The auditor runs the receipt's own check in the store's directory: export, then b3sum.
    let check = disk["check"].as_str().unwrap();
    assert!(check.contains("b3sum"), "{check}");
    let out = Command::new("sh")
        .args(["-c", &check.replace("ferry export", &format!("{FERRY} export --store {store}"))])
        .current_dir(t.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{check}: {}", String::from_utf8_lossy(&out.stderr));
    let printed = String::from_utf8_lossy(&out.stdout);
    // The export says what it wrote; b3sum's line comes last.
    let b3sum_line = printed.lines().last().unwrap_or_default();
    assert_eq!(b3sum_line.split_whitespace().next(), disk["blake3"].as_str(), "{printed}");

    let text = String::from_utf8_lossy(&ferry(&["job", "receipt", "--store", store, &id]).stdout).into_owned();
    assert!(text.contains(&format!("disk 0: {} (10.0 MiB), BLAKE3 {}", img.display(), b3sum(&img))), "{text}");
    assert!(text.contains("check: ferry export"), "{text}");
}
