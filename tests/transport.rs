//! The receiver and the transport end to end on loopback: real TLS, a real SQLite job store,
//! real files; results checked with cmp, b3sum and qemu-img.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const MIB: usize = 1 << 20;

/// Chunks of `size` bytes in `chunk`-byte pieces that hold any non-zero byte, and their bytes.
fn data_chunks(path: &Path, chunk: usize) -> (u64, u64) {
    let bytes = std::fs::read(path).unwrap();
    bytes.chunks(chunk).filter(|c| c.iter().any(|&b| b != 0)).fold((0, 0), |(n, b), c| (n + 1, b + c.len() as u64))
}

#[test]
fn send_then_export_equals_the_source_and_skips_zero_runs() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("src.img");
    // 200 MiB with a GPT, two data runs and zero runs between them.
    std::fs::File::create(&img).unwrap().set_len(200 * MIB as u64).unwrap();
    let st = Command::new("sgdisk")
        .args(["-n1:1M:+64M", "-t1:ef00", "-c1:esp", "-n2:0:0", "-t2:8300", "-c2:root"])
        .arg(&img)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success());
    write_at(&img, 2 * MIB as u64, &pseudo_random(30 * MIB, 1));
    write_at(&img, 120 * MIB as u64, &pseudo_random(21 * MIB + 12345, 2));
    let (data_count, data_bytes) = data_chunks(&img, 4 * MIB);

    let r = Receiver::start(&t.path().join("store"), false);
    assert!(r.url.starts_with("https://127.0.0.1:"), "{}", r.url);
    let (id, token) = r.create_job("roundtrip");
    let out = sent(&r.send(&id, &token, &[&img], &[]));
    let disk = &out["disks"][0];
    assert_eq!(disk["chunks"], 50);
    assert_eq!(disk["sent_chunks"], data_count, "only chunks holding data travel");
    assert_eq!(disk["zero_chunks"], 50 - data_count);
    assert_eq!(disk["blake3"].as_str().unwrap(), b3sum(&img));

    let job = r.job(&id);
    assert_eq!(job["state"], "Finished");
    assert_eq!(job["disks"][0]["bytes_received"], data_bytes, "the receiver counted only data chunks");
    assert_eq!(job["disks"][0]["verified"], true);
    assert_eq!(job["disks"][0]["partition_table"]["kind"], "gpt");
    let states: Vec<&str> = job["history"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Waiting", "Running", "Finished"]);

    let raw = t.path().join("out.img");
    let store = r.store.to_str().unwrap();
    let ex = ferry(&["export", "--store", store, "--job", &id, "--disk", "0", "--to", raw.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    assert!(files_equal(&img, &raw), "exported raw image differs from the source");
    assert_eq!(b3sum(&raw), b3sum(&img));
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&raw).unwrap().blocks() * 512;
    assert!(allocated < 100 * MIB as u64, "zero chunks should be holes: {allocated} bytes allocated");

    let q = t.path().join("out.qcow2");
    let ex = ferry(&[
        "export",
        "--store",
        store,
        "--job",
        &id,
        "--disk",
        "0",
        "--to",
        q.to_str().unwrap(),
        "--format",
        "qcow2",
    ]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    let cmp =
        Command::new("qemu-img").args(["compare", "-f", "raw", "-F", "qcow2"]).arg(&img).arg(&q).output().unwrap();
    assert!(cmp.status.success(), "qemu-img compare: {}", String::from_utf8_lossy(&cmp.stdout));
}

#[test]
fn resumes_after_the_receiver_is_killed_and_after_the_sender_is_killed() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("src.img");
    random_image(&img, 64 * MIB, 7);
    let store = t.path().join("store");
    let mut r = Receiver::start(&store, false);
    let (id, token) = r.create_job("resume");

    // A slow send (8 MiB/s) killed on the receiver side part-way.
    let mut sender = Command::new(FERRY)
        .args(r.send_args(&id, &token))
        .args(["--chunk-size", "1M", "--bandwidth-limit", "8M", "--retry-for", "2"])
        .arg(&img)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || r.stored_chunks() >= 8), "the transfer never started");
    r.kill();
    let status = sender.wait().unwrap();
    assert!(!status.success(), "the sender cannot finish without a receiver");
    let port = r.port;
    drop(r);
    let r = Receiver::start_on(&store, false, port);
    let before = r.stored_chunks();
    assert!(before > 0 && before < 64, "{before} chunks stored before the restart");
    let out = sent(&r.send(&id, &token, &[&img], &["--chunk-size", "1M"]));
    assert_eq!(out["disks"][0]["sent_chunks"], (64 - before) as u64, "chunks already held were sent again");
    assert_eq!(r.job(&id)["state"], "Finished");

    // The same with the sender killed part-way, on a new job of new content.
    let img2 = t.path().join("src2.img");
    random_image(&img2, 64 * MIB, 8);
    let (id2, token2) = r.create_job("resume-sender");
    let base = r.stored_chunks();
    let mut sender = Command::new(FERRY)
        .args(r.send_args(&id2, &token2))
        .args(["--chunk-size", "1M", "--bandwidth-limit", "8M"])
        .arg(&img2)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(wait_until(Duration::from_secs(30), || r.stored_chunks() >= base + 8), "the second transfer never started");
    sender.kill().unwrap();
    sender.wait().unwrap();
    let held = r.stored_chunks() - base;
    assert!(held > 0 && held < 64, "{held}");
    let out = sent(&r.send(&id2, &token2, &[&img2], &["--chunk-size", "1M"]));
    assert_eq!(out["disks"][0]["sent_chunks"], (64 - held) as u64);

    let raw = t.path().join("out2.img");
    let ex = ferry(&[
        "export",
        "--store",
        store.to_str().unwrap(),
        "--job",
        &id2,
        "--disk",
        "0",
        "--to",
        raw.to_str().unwrap(),
    ]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    assert!(files_equal(&img2, &raw));
}

#[test]
fn preseeded_and_identical_disks_send_only_what_changed() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("db.img");
    random_image(&img, 100 * MIB, 11);
    let r = Receiver::start(&t.path().join("store"), false);

    let (a, ta) = r.create_job("pre-seed");
    let first = sent(&r.send(&a, &ta, &[&img], &["--chunk-size", "1M"]));
    assert_eq!(first["disks"][0]["sent_chunks"], 100);

    // 1% of the chunks change while the service keeps running.
    write_at(&img, 17 * MIB as u64 + 5, b"changed row");
    let (b, tb) = r.create_job("cutover");
    let second = sent(&r.send(&b, &tb, &[&img], &["--chunk-size", "1M"]));
    assert_eq!(second["disks"][0]["sent_chunks"], 1, "only the changed chunk travels at cutover");
    assert_eq!(second["disks"][0]["blake3"].as_str().unwrap(), b3sum(&img));

    // A second machine cloned from the same template sends nothing new.
    let clone = t.path().join("clone.img");
    std::fs::copy(&img, &clone).unwrap();
    let (c, tc) = r.create_job("clone");
    let third = sent(&r.send(&c, &tc, &[&clone], &["--chunk-size", "1M"]));
    assert_eq!(third["disks"][0]["sent_chunks"], 0);
    assert_eq!(r.job(&c)["state"], "Finished");
}

#[test]
fn a_wrong_pin_or_plain_http_without_consent_is_refused() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("x.img");
    random_image(&img, MIB, 3);
    let r = Receiver::start(&t.path().join("store"), false);
    let (id, token) = r.create_job("pin");
    let started = std::time::Instant::now();
    let out = ferry(&[
        "send",
        "--server",
        &r.url,
        "--job",
        &id,
        "--token",
        &token,
        "--pin",
        &"0".repeat(64),
        img.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not match --pin"), "{err}");
    assert!(started.elapsed() < Duration::from_secs(20), "a pin mismatch must not be retried");
    assert_eq!(r.job(&id)["state"], "Waiting", "nothing reached the receiver");

    let out = ferry(&["send", "--server", &r.url, "--job", &id, "--token", &token, img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--pin"));

    let http = r.url.replace("https://", "http://");
    let out = ferry(&["send", "--server", &http, "--job", &id, "--token", &token, img.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--plain-http"));
}

/// Raw HTTP calls against a plain-HTTP receiver, to send what a well-behaved agent never would.
#[test]
fn bad_input_gets_clear_errors_and_changes_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("bad-input");
    let (other_id, other_token) = r.create_job("other");
    let admin = r.admin_token();
    let base = format!("{}/api/v1", r.url);
    let rt = tokio::runtime::Runtime::new().unwrap();
    ferry::tls::install_crypto_provider();
    let http = reqwest::Client::new();
    let call = |method: reqwest::Method, path: &str, token: Option<&str>, body: Vec<u8>, headers: &[(&str, &str)]| {
        let mut req = http.request(method, format!("{base}{path}")).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        rt.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            let body: serde_json::Value = resp.json().await.unwrap_or(serde_json::Value::Null);
            (status, body)
        })
    };
    use reqwest::Method;
    let json = |v: serde_json::Value| serde_json::to_vec(&v).unwrap();
    let disk = serde_json::json!({"path": "/dev/vda", "kind": "block", "size": 2097152, "logical_sector_size": 512, "physical_sector_size": 512});

    // Tokens: missing 401, wrong 403, another job's 403, admin may not pose as the agent.
    assert_eq!(call(Method::POST, &format!("/jobs/{id}/register"), None, vec![], &[]).0, 401);
    assert_eq!(call(Method::POST, &format!("/jobs/{id}/register"), Some(&"f".repeat(64)), vec![], &[]).0, 403);
    let reg = json(serde_json::json!({"machine": {}, "disks": [disk]}));
    assert_eq!(call(Method::POST, &format!("/jobs/{id}/register"), Some(&other_token), reg.clone(), &[]).0, 403);
    assert_eq!(call(Method::GET, "/jobs", Some(&token), vec![], &[]).0, 403, "an agent token cannot list jobs");
    assert_eq!(call(Method::GET, &format!("/jobs/{other_id}"), Some(&token), vec![], &[]).0, 403);

    // Malformed JSON: 400, and the job stays Waiting.
    let (s, b) = call(Method::POST, &format!("/jobs/{id}/register"), Some(&token), b"{not json".to_vec(), &[]);
    assert_eq!((s, b["code"].as_str()), (400, Some("bad_json")));
    assert_eq!(r.job(&id)["state"], "Waiting");

    assert_eq!(call(Method::POST, &format!("/jobs/{id}/register"), Some(&token), reg, &[]).0, 200);
    let begin = json(
        serde_json::json!({"identity": disk, "partition_table": {"kind": "none", "sector_size": 512, "problems": [], "partitions": []}, "size": 2097152, "chunk_size": 1048576}),
    );
    assert_eq!(call(Method::POST, &format!("/jobs/{id}/disks/0/begin"), Some(&token), begin, &[]).0, 204);

    // A chunk whose bytes do not match its id: 422, nothing stored.
    let data = pseudo_random(MIB, 5);
    let wrong_id = "ab".repeat(32);
    let (s, b) = call(
        Method::PUT,
        &format!("/jobs/{id}/disks/0/chunks/0"),
        Some(&token),
        data.clone(),
        &[("x-ferry-chunk-id", &wrong_id)],
    );
    assert_eq!((s, b["code"].as_str()), (422, Some("hash_mismatch")));
    assert_eq!(r.stored_chunks(), 0);
    assert_eq!(count_files(&r.store.join("tmp")), 0);

    // Oversized: a body larger than the chunk (413 from ferry) and larger than any chunk (413
    // from the body limit).
    let (s, _) = call(
        Method::PUT,
        &format!("/jobs/{id}/disks/0/chunks/1"),
        Some(&token),
        vec![1u8; MIB + 1],
        &[("x-ferry-chunk-id", &wrong_id)],
    );
    assert_eq!(s, 413);
    let (s, _) = call(
        Method::PUT,
        &format!("/jobs/{id}/disks/0/chunks/1"),
        Some(&token),
        vec![1u8; 66 * MIB],
        &[("x-ferry-chunk-id", &wrong_id)],
    );
    assert_eq!(s, 413);

    // Ids that try to be paths: 400.
    for bad in ["..%2F..%2Fetc", "a%00b", "UPPER", "a%2Fb", "..%5C.."] {
        let (s, _) = call(Method::POST, &format!("/jobs/{bad}/register"), Some(&token), vec![], &[]);
        assert_eq!(s, 400, "job id {bad}");
    }
    for bad in ["../../../../etc/passwd", &format!("{}/", "a".repeat(63)), &"a".repeat(63)] {
        let (s, b) = call(
            Method::PUT,
            &format!("/jobs/{id}/disks/0/chunks/0"),
            Some(&token),
            data.clone(),
            &[("x-ferry-chunk-id", bad)],
        );
        assert_eq!((s, b["code"].as_str()), (400, Some("bad_chunk_id")), "chunk id {bad}");
    }
    let (s, _) = call(
        Method::PUT,
        &format!("/jobs/{id}/disks/0/chunks/99"),
        Some(&token),
        data.clone(),
        &[("x-ferry-chunk-id", &wrong_id)],
    );
    assert_eq!(s, 400, "an index past the disk");
    assert_eq!(r.stored_chunks(), 0, "no bad request stored anything");

    // Finishing without complete disks is refused and says why.
    let (s, b) = call(Method::POST, &format!("/jobs/{id}/finish"), Some(&token), vec![], &[]);
    assert_eq!((s, b["code"].as_str()), (409, Some("disks_incomplete")));
    // The admin token is not an agent token.
    assert_eq!(call(Method::POST, &format!("/jobs/{id}/finish"), Some(&admin), vec![], &[]).0, 403);
}

#[test]
fn a_full_store_puts_the_job_in_error_and_it_finishes_after_space_is_freed() {
    let t = tempfile::tempdir().unwrap();
    let mnt = t.path().join("small");
    std::fs::create_dir(&mnt).unwrap();
    let mounted = Command::new("mount").args(["-t", "tmpfs", "-o", "size=24m", "tmpfs"]).arg(&mnt).status();
    if !matches!(mounted, Ok(s) if s.success()) {
        eprintln!("SKIPPED: cannot mount a tmpfs here (needs root)");
        return;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg("-l").arg(self.0).status();
        }
    }
    let _guard = Unmount(&mnt);
    let img = t.path().join("big.img");
    random_image(&img, 48 * MIB, 21);
    let mut r = Receiver::start(&mnt.join("store"), false);
    let (id, token) = r.create_job("full");
    let out = r.send(&id, &token, &[&img], &["--chunk-size", "1M"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("full"), "{}", String::from_utf8_lossy(&out.stderr));
    let job = r.job(&id);
    assert_eq!(job["state"], "InError");
    assert_eq!(job["error_code"], "store_full");
    // Consistent: every kept chunk is whole (1 MiB), no temp file is left behind.
    assert_eq!(count_files(&r.store.join("tmp")), 0);
    for entry in walk(&r.store.join("chunks")) {
        assert_eq!(std::fs::metadata(&entry).unwrap().len(), MIB as u64, "{}", entry.display());
    }

    // Space is freed; the operator restarts the job; the send finishes.
    let grown = Command::new("mount").args(["-o", "remount,size=200m"]).arg(&mnt).status().unwrap();
    assert!(grown.success());
    let store = r.store.to_str().unwrap().to_string();
    let restart = ferry(&["job", "restart", "--store", &store, &id]);
    assert!(restart.status.success(), "{}", String::from_utf8_lossy(&restart.stderr));
    let out = sent(&r.send(&id, &token, &[&img], &["--chunk-size", "1M"]));
    assert_eq!(out["disks"][0]["blake3"].as_str().unwrap(), b3sum(&img));
    assert_eq!(r.job(&id)["state"], "Finished");
    let raw = t.path().join("out.img");
    let ex = ferry(&["export", "--store", &store, "--job", &id, "--disk", "0", "--to", raw.to_str().unwrap()]);
    assert!(ex.status.success(), "{}", String::from_utf8_lossy(&ex.stderr));
    assert!(files_equal(&img, &raw));
    r.kill();
}

fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let Ok(rd) = std::fs::read_dir(dir) else { return vec![] };
    rd.filter_map(Result::ok).flat_map(|e| if e.path().is_dir() { walk(&e.path()) } else { vec![e.path()] }).collect()
}

#[test]
fn job_creation_with_a_client_token_is_idempotent_and_jobs_can_be_cancelled() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let store = r.store.to_str().unwrap().to_string();
    let create = || {
        let out = ferry(&[
            "job",
            "create",
            "--store",
            &store,
            "--name",
            "wave1-db01",
            "--client-token",
            "wave1/db01",
            "--json",
        ]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let (a, b) = (create(), create());
    assert_eq!(a["id"], b["id"], "the same client token must give the same job");
    // The receiver keeps only token hashes: a caller that lost the first answer gets new
    // tokens (the job has not been used yet), and the first stop working.
    let (first, token) = (a["token"].as_str().unwrap(), b["token"].as_str().unwrap());
    assert!(first.len() == 64 && token.len() == 64 && first != token, "{a}\n{b}");
    let list = ferry(&["job", "list", "--store", &store, "--json"]);
    let jobs: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    assert_eq!(jobs.as_array().unwrap().len(), 1);
    assert!(jobs[0].get("token").is_none(), "a listing carries no token: {jobs}");
    for file in ["jobs.sqlite", "jobs.sqlite-wal"] {
        let db = std::fs::read(Path::new(&store).join(file)).unwrap_or_default();
        for t in [first, token] {
            assert!(!db.windows(t.len()).any(|w| w == t.as_bytes()), "{file} holds a token in the clear");
        }
    }
    assert!(Path::new(&store).join("jobs.sqlite").exists());

    let id = a["id"].as_str().unwrap();
    let img = t.path().join("x.img");
    random_image(&img, MIB, 1);
    let out = r.send(id, first, &[&img], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not belong"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(r.job(id)["state"], "Waiting", "a refused token starts nothing");

    let out = ferry(&["job", "cancel", "--store", &store, id, "--json"]);
    assert!(out.status.success());
    assert_eq!(r.job(id)["state"], "Cancelled");
    // A cancelled job refuses its agent, with words that say so.
    let out = r.send(id, token, &[&img], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cancelled"), "{}", String::from_utf8_lossy(&out.stderr));
    // Unknown jobs and bad admin tokens get clear errors and exit 1.
    let out = ferry(&["job", "show", "--store", &store, "nosuchjob"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no job nosuchjob"));
    let out = ferry(&["job", "list", "--server", &r.url, "--pin", &r.pin().unwrap(), "--admin-token", &"0".repeat(64)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("may not read jobs"));
}

#[test]
fn a_boot_log_keeps_one_entry_per_boot_replaced_as_the_boot_goes_on() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let (id, token) = r.create_job("logs");
    let post = |query: &str, text: &str| -> String {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", "POST", "--data-binary", text])
            .args(["-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}/api/v1/jobs/{id}/log{query}", r.url))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // The live image streams its screen as it runs, then sends it once more with the verdict.
    assert_eq!(post("?boot=3f0c-aa&seq=5000", "ferry live image\nnetwork: up\n"), "204");
    assert_eq!(post("?boot=3f0c-aa&seq=9000", "ferry live image\nnetwork: up\nM I G R A T E D\n"), "204");
    // A slow request with an earlier screen, arriving last, changes nothing.
    assert_eq!(post("?boot=3f0c-aa&seq=7000", "ferry live image\n"), "204");
    // A second boot has its own entry; an older client without a boot id gets one per call.
    assert_eq!(post("?boot=77aa", "second boot\n"), "204");
    assert_eq!(post("", "no boot id\n"), "204");
    assert_eq!(post("?boot=../x", "bad\n"), "400");
    let out = ferry(&["job", "log", "--store", r.store.to_str().unwrap(), &id, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let logs: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let texts: Vec<&str> = logs.as_array().unwrap().iter().map(|l| l["text"].as_str().unwrap()).collect();
    assert_eq!(texts, ["ferry live image\nnetwork: up\nM I G R A T E D\n", "second boot\n", "no boot id\n"]);
    assert!(logs.as_array().unwrap().iter().all(|l| l["role"] == "source"));
}
