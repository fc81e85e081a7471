//! A receiver's store made by the release before this one (tests/fixtures/previous-release,
//! made by its make.sh with that release's binary): this release opens it as it is, shows its
//! jobs, exports the finished one bit for bit, and resumes the interrupted one, sending only
//! the chunks it lacked; the old enrollment still enrolls.

mod support;

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

fn fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/previous-release")
}

/// A copy of the old store (the test changes it).
fn old_store(dir: &Path) -> PathBuf {
    let store = dir.join("store");
    run_ok(Command::new("cp").arg("-a").arg(fixture().join("store")).arg(&store));
    store
}

#[test]
fn a_store_of_the_previous_release_opens_exports_and_resumes() {
    let t = tempfile::tempdir().unwrap();
    let store = old_store(t.path());
    let jobs: serde_json::Value = serde_json::from_slice(&std::fs::read(fixture().join("jobs.json")).unwrap()).unwrap();
    let id = |which: &str| jobs[which]["id"].as_str().unwrap().to_string();
    // As the old release left it: open to every local user.
    let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    std::fs::set_permissions(&store, std::fs::Permissions::from_mode(0o755)).unwrap();
    for f in walk_files(&store) {
        std::fs::set_permissions(f, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let r = Receiver::start(&store, false);
    assert_eq!((mode(&store), mode(&store.join("jobs.sqlite"))), (0o700, 0o600));
    for f in walk_files(&store) {
        assert_eq!(mode(&f), 0o600, "{}", f.display());
    }
    assert_eq!(mode(&store.join("chunks")), 0o700);

    // Every job of the old database decodes, in its state.
    let list = ferry_json(&["job", "list", "--store", store.to_str().unwrap(), "--json"]);
    let state = |job: &str| {
        list.as_array().unwrap().iter().find(|j| j["id"] == job).unwrap_or_else(|| panic!("no {job} in {list}"))
            ["state"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(state(&id("finished")), "Finished");
    assert_eq!(state(&id("interrupted")), "Running");
    assert_eq!(state(&id("instance")), "Waiting");
    let instance = r.job(&id("instance"));
    assert_eq!(instance["target_spec"]["machine"][0], "TGT-OLD", "{instance:#}");

    // The finished disk comes out as it went in.
    assert_eq!(export_b3sum(&r, &id("finished"), 0, t.path()), b3sum(&fixture().join("disk.img")));

    // The interrupted one resumes: what the old receiver kept is not sent again.
    let stored_before = r.stored_chunks();
    let disk2 = fixture().join("disk2.img");
    let out = sent(&r.send(&id("interrupted"), jobs["interrupted"]["token"].as_str().unwrap(), &[&disk2], &[]));
    let d = &out["disks"][0];
    let data_chunks = d["chunks"].as_u64().unwrap() - d["zero_chunks"].as_u64().unwrap();
    let sent_now = d["sent_chunks"].as_u64().unwrap();
    assert!(sent_now < data_chunks, "nothing of the old partial copy was kept: sent {sent_now} of {data_chunks}");
    assert_eq!(r.stored_chunks() as u64, stored_before as u64 + sent_now);
    // What this release writes is its user's alone.
    let newest =
        walk_files(&store.join("chunks")).into_iter().max_by_key(|p| std::fs::metadata(p).unwrap().modified().unwrap());
    assert_eq!(mode(&newest.unwrap()), 0o600);
    assert_eq!(r.job(&id("interrupted"))["state"], "Finished");
    assert_eq!(export_b3sum(&r, &id("interrupted"), 0, t.path()), b3sum(&disk2));

    // The old enrollment is still there, as it was.
    let e = ferry_json(&["job", "enroll", "list", "--store", store.to_str().unwrap(), "--json"]);
    assert_eq!(e[0]["id"], jobs["enrollment"]["id"], "{e}");

    // The old database kept its tokens in plaintext; now the files hold none of them, and
    // each still works: the instance job's target token reads its job.
    let old_tokens = ["finished", "interrupted", "instance", "enrollment"]
        .iter()
        .flat_map(|w| [&jobs[w]["token"], &jobs[w]["target_token"]])
        .filter_map(|v| v.as_str())
        .collect::<Vec<_>>();
    assert_eq!(old_tokens.len(), 5);
    assert!(std::fs::read(fixture().join("store/jobs.sqlite"))
        .unwrap()
        .windows(64)
        .any(|w| w == old_tokens[0].as_bytes()));
    for file in ["jobs.sqlite", "jobs.sqlite-wal"] {
        let bytes = std::fs::read(store.join(file)).unwrap_or_default();
        for token in &old_tokens {
            assert!(!bytes.windows(token.len()).any(|w| w == token.as_bytes()), "{file} still holds {token}");
        }
    }
    let url = format!("{}/api/v1/jobs/{}", r.url, id("instance"));
    let target = jobs["instance"]["target_token"].as_str().unwrap();
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {target}"), &url])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "200");
}

/// Every file under `dir`.
fn walk_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(walk_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}
