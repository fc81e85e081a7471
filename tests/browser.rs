//! The dashboard in headless Chromium (tests/browser/dashboard.mjs, driven by playwright-core)
//! against a real receiver on loopback and a real `ferry send`. Screenshots are kept in
//! `target/browser-artifacts/` to look at.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[test]
fn dashboard_follows_a_real_send_to_finished() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let script = root.join("tests/browser/dashboard.mjs");
    assert!(
        root.join("tests/browser/node_modules/playwright-core").exists(),
        "playwright-core is missing: scripts/setup runs npm ci in tests/browser"
    );
    let chromium = ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("Chromium is missing: scripts/setup installs Debian's chromium");

    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(128 << 20).unwrap();
    let st = Command::new("sgdisk").args(["-n1:1M:0", "-t1:8300", "-c1:data"]).arg(&img).output().unwrap();
    assert!(st.status.success());
    // 96 MiB of data at 8 MiB/s: about ten seconds of Running for the page to show (the agent
    // hashes up to about ten chunks ahead of its uploads and reports every two seconds).
    write_at(&img, 2 << 20, &pseudo_random(96 << 20, 11));

    let r = Receiver::start(&t.path().join("store"), false);
    let artifacts = root.join("target/browser-artifacts");
    let _ = std::fs::remove_dir_all(&artifacts);
    std::fs::create_dir_all(&artifacts).unwrap();
    let out = Command::new("node")
        .arg(&script)
        .env("FERRY_URL", &r.url)
        .env("FERRY_PIN", r.pin().unwrap())
        .env("FERRY_ADMIN_TOKEN", r.admin_token())
        .env("FERRY_VIEWER_TOKEN", std::fs::read_to_string(r.store.join("viewer.token")).unwrap().trim())
        .env("FERRY_BIN", FERRY)
        .env("FERRY_IMAGE", &img)
        .env("FERRY_IMAGE_B3", b3sum(&img))
        .env("CHROMIUM", chromium)
        .env("ARTIFACTS", &artifacts)
        .output()
        .expect("node runs");
    eprintln!("{}", String::from_utf8_lossy(&out.stdout));
    assert!(out.status.success(), "browser test failed:\n{}", String::from_utf8_lossy(&out.stderr));
    for shot in [
        "01-wrong-token-refused",
        "02-job-created",
        "03-progress-running",
        "04-finished",
        "05-job-page",
        "06-cancel-restart",
        "07-enrollment",
        "08-viewer",
        "09-wave",
        "10-used-blocks",
    ] {
        let p = artifacts.join(format!("{shot}.png"));
        assert!(std::fs::metadata(&p).map(|m| m.len() > 1000).unwrap_or(false), "no screenshot {}", p.display());
    }
    // The job the page created really is Finished, by the CLI's account too.
    let jobs: serde_json::Value =
        serde_json::from_slice(&ferry(&["job", "list", "--store", r.store.to_str().unwrap(), "--json"]).stdout)
            .unwrap();
    assert_eq!(jobs[0]["name"], "browser-db01");
    assert_eq!(jobs[0]["state"], "Finished");
    assert_eq!(jobs[1]["name"], "browser-spare");
    let states: Vec<&str> =
        jobs[1]["history"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Waiting", "Cancelled", "Waiting"], "the page's buttons cancelled and restarted it");
    assert_eq!(
        (jobs[2]["name"].as_str(), jobs[2]["state"].as_str()),
        (Some("browser-wave-BROWSER-SRV"), Some("Finished"))
    );
    // The enrollment the page made and revoked, by the CLI's account.
    let list: serde_json::Value = serde_json::from_slice(
        &ferry(&["job", "enroll", "list", "--store", r.store.to_str().unwrap(), "--json"]).stdout,
    )
    .unwrap();
    assert_eq!(list[0]["name"], "browser-wave");
    assert!(list[0]["revoked_at"].as_u64().is_some(), "the page's button revoked it: {list}");
    assert_eq!(list[0]["jobs"][0], jobs[2]["id"]);
}
