//! What a machine, a peer or a careless command line can hand the receiver and its operator
//! (findings L2–L6 of the security review of 8b9e99a, and the MBR past 2 TiB): each test drives a
//! real `ferry serve` or the ferry binary and checks what came out.

mod support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::Method;
use serde_json::{json, Value};
use support::*;

/// Raw API calls to a plain-HTTP receiver.
struct Api {
    rt: tokio::runtime::Runtime,
    http: reqwest::Client,
    base: String,
}

impl Api {
    fn new(r: &Receiver) -> Self {
        assert!(r.url.starts_with("http://"), "these calls talk plain HTTP: {}", r.url);
        ferry::tls::install_crypto_provider();
        Api { rt: tokio::runtime::Runtime::new().unwrap(), http: reqwest::Client::new(), base: r.url.clone() }
    }

    fn request(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> reqwest::RequestBuilder {
        let mut req = self.http.request(method, format!("{}{path}", self.base)).body(body);
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        req
    }

    /// The status and raw body of one call.
    fn call(&self, method: Method, path: &str, token: Option<&str>, body: Vec<u8>) -> (u16, Vec<u8>) {
        let req = self.request(method, path, token, body);
        self.rt.block_on(async {
            let resp = req.send().await.unwrap();
            let status = resp.status().as_u16();
            (status, resp.bytes().await.unwrap().to_vec())
        })
    }

    /// A call with a JSON body; its status (asserted to be `want`) and its body.
    fn post_json(&self, path: &str, token: &str, body: &Value, want: u16) -> Vec<u8> {
        let (status, answer) = self.call(Method::POST, path, Some(token), serde_json::to_vec(body).unwrap());
        assert_eq!(status, want, "POST {path}: {}", String::from_utf8_lossy(&answer));
        answer
    }
}

fn disk_identity(path: &str, size: u64) -> Value {
    json!({"path": path, "kind": "block", "size": size, "logical_sector_size": 512, "physical_sector_size": 512})
}

/// Registers a job's source with one disk of `size` bytes and begins that disk.
fn register_and_begin(api: &Api, id: &str, token: &str, machine: Value, disk: Value, chunk_size: u64) {
    let size = disk["size"].as_u64().unwrap();
    api.post_json(&format!("/api/v1/jobs/{id}/register"), token, &json!({"machine": machine, "disks": [disk]}), 200);
    let begin = json!({
        "identity": disk,
        "partition_table": {"kind": "none", "sector_size": 512, "problems": [], "partitions": []},
        "size": size,
        "chunk_size": chunk_size,
    });
    api.post_json(&format!("/api/v1/jobs/{id}/disks/0/begin"), token, &begin, 204);
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn a_target_failing_over_and_over_keeps_a_bounded_history_with_its_first_and_newest_failures() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, _token, target_token) = r.create_instance_job("bounded", &["--target-machine", "TGT-1"]);
    let api = Api::new(&r);
    let reason = |i: usize| {
        let head = format!("attempt {i}: ");
        format!("{head}{}", "x".repeat(2000 - head.len()))
    };
    // No target/register first: a target that fails before registering is recorded too.
    for i in 0..300 {
        let body = json!({"code": "write_failed", "reason": reason(i)});
        api.post_json(&format!("/api/v1/jobs/{id}/target/fail"), &target_token, &body, 204);
    }
    let (status, raw) = api.call(Method::GET, &format!("/api/v1/jobs/{id}"), Some(&r.admin_token()), vec![]);
    assert_eq!(status, 200, "{}", text(&raw));
    // 8b9e99a: 620,857 bytes after 300 failures, and growing with every one.
    assert!(raw.len() < 200_000, "GET /jobs/{id} is {} bytes after 300 target failures", raw.len());
    let job: Value = serde_json::from_slice(&raw).unwrap();
    let delivery = &job["delivery"];
    assert_eq!(delivery["state"], "InError", "{delivery:#}");
    assert_eq!(delivery["error_code"], "write_failed");
    assert_eq!(delivery["error_reason"].as_str().unwrap(), reason(299));
    let history = delivery["history"].as_array().unwrap();
    assert_eq!(history.len(), 50, "the first event and the newest 49");
    let reasons: Vec<&str> = history.iter().map(|e| e["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons[0], reason(0), "the first failure is kept");
    let newest: Vec<String> = (251..300).map(reason).collect();
    assert_eq!(reasons[1..], newest, "then the newest 49, in order");
    assert!(history.iter().all(|e| e["state"] == "InError" && e["code"] == "write_failed"));
}

#[test]
fn control_characters_from_machines_never_reach_the_operators_terminal() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("escapes");
    let api = Api::new(&r);
    let machine = json!({
        "vendor": "\u{1b}]0;PWNED\u{7}Dell Inc.",
        "product": "\u{1b}[2J\u{1b}[31mPowerEdge R640",
        "serial": "CZ\u{1b}[0m123\u{9b}1m",
    });
    register_and_begin(&api, &id, &token, machine, disk_identity("/dev/vda\u{1b}[5m", 65536), 65536);
    let log = "booting\n\u{1b}]0;TITLE\u{7}\u{1b}[2J\u{1b}[31mFAKE: job verified\n";
    let (status, body) = api.call(Method::POST, &format!("/api/v1/jobs/{id}/log"), Some(&token), log.into());
    assert_eq!(status, 204, "{}", text(&body));

    let store = s(&r.store);
    let raw = |what: &str, out: &std::process::Output| {
        assert!(out.status.success(), "ferry job {what}: {}", text(&out.stderr));
        let stdout = &out.stdout;
        let bad: Vec<usize> =
            stdout.iter().enumerate().filter(|(_, &b)| b == 0x1b || b == 0x07).map(|(i, _)| i).collect();
        assert!(bad.is_empty(), "ferry job {what} printed ESC or BEL at bytes {bad:?}: {:?}", text(stdout));
        let shown = text(stdout);
        assert!(!shown.contains('\u{9b}'), "ferry job {what} printed a C1 CSI: {shown:?}");
        shown
    };
    let shown = raw("log", &ferry(&["job", "log", &id, "--store", store]));
    assert!(shown.contains("FAKE: job verified"), "{shown:?}");
    assert!(shown.contains("booting"), "{shown:?}");
    let shown = raw("show", &ferry(&["job", "show", &id, "--store", store]));
    for readable in ["Dell Inc.", "PowerEdge R640", "CZ", "123", "/dev/vda"] {
        assert!(shown.contains(readable), "{readable:?} missing from {shown:?}");
    }
    // The machine's words are kept as sent: only the terminal is spared.
    assert_eq!(r.job(&id)["machine"]["vendor"], "\u{1b}]0;PWNED\u{7}Dell Inc.");
}

#[test]
fn an_admin_command_sends_its_token_over_plain_http_only_with_plain_http() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, _) = r.create_job("listed");
    let store = s(&r.store);

    let out = ferry(&["job", "list", "--store", store, "--server", &r.url, "--json"]);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "job list over {} without --plain-http succeeded: {}", r.url, text(&out.stdout));
    assert!(stderr.contains("--plain-http"), "{stderr}");
    assert!(out.stdout.is_empty(), "{}", text(&out.stdout));

    let jobs = ferry_json(&["job", "list", "--store", store, "--server", &r.url, "--plain-http", "--json"]);
    let ids: Vec<&str> = jobs.as_array().unwrap().iter().map(|j| j["id"].as_str().unwrap()).collect();
    assert_eq!(ids, [id.as_str()]);
}

#[test]
fn export_leaves_a_running_receivers_temp_files_alone() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("src.img");
    random_image(&img, 3 << 20, 7);
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("export-while-serving");
    let out = sent(&r.send(&id, &token, &[&img], &["--chunk-size", "1M"]));
    assert_eq!(out["disks"][0]["sent_chunks"], 3);
    assert_eq!(r.job(&id)["state"], "Finished");

    let in_flight = r.store.join("tmp/upload-in-flight");
    std::fs::write(&in_flight, b"half a chunk the receiver is writing").unwrap();
    let raw = t.path().join("out.img");
    let ex = ferry(&["export", "--store", s(&r.store), "--job", &id, "--disk", "0", "--to", s(&raw)]);
    assert!(ex.status.success(), "export: {}", text(&ex.stderr));
    assert!(files_equal(&img, &raw), "the export differs from the source");
    assert!(in_flight.exists(), "ferry export deleted the receiver's temp file");
    assert_eq!(std::fs::read(&in_flight).unwrap(), b"half a chunk the receiver is writing");
}

#[test]
fn racing_uploads_of_one_chunk_store_it_once_and_count_its_bytes_once() {
    const SIZE: usize = 65536;
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let (id, token) = r.create_job("race");
    let api = Api::new(&r);
    register_and_begin(&api, &id, &token, json!({}), disk_identity("/dev/vda", SIZE as u64), SIZE as u64);

    let data = pseudo_random(SIZE, 11);
    // A disk of one chunk: its id is the plain BLAKE3 of its bytes.
    let chunk_id = blake3::hash(&data).to_hex().to_string();
    let path = format!("/api/v1/jobs/{id}/disks/0/chunks/0");
    let requests: Vec<_> = (0..8)
        .map(|_| api.request(Method::PUT, &path, Some(&token), data.clone()).header("x-ferry-chunk-id", &chunk_id))
        .collect();
    let mut statuses: Vec<u16> = api.rt.block_on(async {
        let running: Vec<_> = requests.into_iter().map(|req| tokio::spawn(req.send())).collect();
        let mut statuses = vec![];
        for h in running {
            statuses.push(h.await.unwrap().unwrap().status().as_u16());
        }
        statuses
    });
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 200, 200, 200, 200, 201], "one upload stores the chunk, the others find it");

    // The received counters are written in batches, at least once a second.
    let counted = || r.job(&id)["disks"][0]["chunks_received"] != 0;
    assert!(wait_until(std::time::Duration::from_secs(5), counted), "the chunk was never counted");
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let job = r.job(&id);
    let disk = &job["disks"][0];
    // 8b9e99a: 524288 (eight times the disk).
    assert_eq!(disk["bytes_received"], SIZE, "{disk:#}");
    assert_eq!(disk["chunks_received"], 1, "{disk:#}");
    assert_eq!(r.stored_chunks(), 1);
    assert_eq!(count_files(&r.store.join("tmp")), 0);

    let (status, metrics) = api.call(Method::GET, "/metrics", None, vec![]);
    assert_eq!(status, 200);
    let metrics = text(&metrics);
    let stored = metrics
        .lines()
        .find_map(|l| l.strip_prefix("ferry_chunks_stored_total "))
        .unwrap_or_else(|| panic!("no ferry_chunks_stored_total in /metrics"));
    assert_eq!(stored.trim(), "1", "chunks stored, by the metrics");
}

/// A listener that answers every request with `status_line`, `headers` and `body`; counts the
/// connections it accepted.
fn answering_server(status_line: &'static str, headers: String, body: &'static str) -> (u16, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let accepted = Arc::new(AtomicUsize::new(0));
    let count = accepted.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { continue };
            count.fetch_add(1, Ordering::SeqCst);
            let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
            // Read the request head (and the body it announces), then answer and close.
            let mut req = vec![];
            let mut buf = [0u8; 4096];
            let head_end = loop {
                if let Some(p) = req.windows(4).position(|w| w == b"\r\n\r\n") {
                    break Some(p + 4);
                }
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break None,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            };
            if let Some(end) = head_end {
                let head = String::from_utf8_lossy(&req[..end]).to_ascii_lowercase();
                let length: usize = head
                    .lines()
                    .find_map(|l| l.strip_prefix("content-length:"))
                    .and_then(|v| v.trim().parse().ok())
                    .unwrap_or(0);
                let mut have = req.len() - end;
                while have < length {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => have += n,
                    }
                }
            }
            let answer = format!(
                "{status_line}\r\n{headers}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = conn.write_all(answer.as_bytes());
        }
    });
    (port, accepted)
}

#[test]
fn the_agent_follows_no_redirect_so_its_token_stays_with_the_receiver() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("src.img");
    random_image(&img, 1 << 20, 3);
    // Where a redirect would lead: it refuses at once, so a client that follows ends quickly too.
    let (other, other_accepted) =
        answering_server("HTTP/1.1 403 Forbidden", String::new(), r#"{"code":"forbidden","message":"elsewhere"}"#);
    let location = format!("Location: http://127.0.0.1:{other}/api/v1/jobs/j1/register\r\n");
    let (port, redirector_accepted) = answering_server("HTTP/1.1 307 Temporary Redirect", location, "");

    let token = "ab".repeat(32);
    let started = Instant::now();
    let mut child = Command::new(FERRY)
        .args(["send", "--server", &format!("http://127.0.0.1:{port}"), "--plain-http", "--retry-for", "5"])
        .args(["--job", "j1", "--token", &token, "--json"])
        .arg(&img)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ended = wait_until(Duration::from_secs(30), || child.try_wait().unwrap().is_some());
    if !ended {
        let _ = child.kill();
    }
    let out = child.wait_with_output().unwrap();
    let stderr = text(&out.stderr);
    assert!(ended, "ferry send was still running after {:?}: {stderr}", started.elapsed());
    assert!(!out.status.success(), "ferry send succeeded against a redirect: {}", text(&out.stdout));
    assert!(redirector_accepted.load(Ordering::SeqCst) >= 1, "ferry send never reached the server");
    assert_eq!(other_accepted.load(Ordering::SeqCst), 0, "the agent followed the redirect: {stderr}");
    assert!(stderr.contains("307"), "the error names the redirect: {stderr}");
}

/// `sfdisk` writes a DOS label with one partition of `size` (sfdisk's notation) on `img`.
fn one_partition_mbr(img: &Path, size: &str) {
    run_with_input("sfdisk", &["--quiet", s(img)], &format!("label: dos\n,{size}\n"));
}

#[test]
fn an_mbr_on_a_disk_past_2_tib_names_the_tail_no_partition_can_reach() {
    const GIB: u64 = 1 << 30;
    const REACH: u64 = (1 << 32) * 512;
    let t = tempfile::tempdir().unwrap();
    let big = t.path().join("3t.img");
    make_file(&big, 3 << 40);
    one_partition_mbr(&big, "1G");
    let disk = inspect(&big, &[]);
    assert_eq!(disk["size"].as_u64().unwrap(), 3 << 40);
    let table = &disk["partition_table"];
    assert_eq!(table["kind"], "mbr", "{table:#}");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), 1, "{table:#}");
    assert_eq!(parts[0]["size"].as_u64().unwrap(), GIB);
    let p = problems(table);
    let tail: Vec<&String> =
        p.iter().filter(|m| m.contains(&REACH.to_string()) && m.contains(&(3u64 << 40).to_string())).collect();
    assert_eq!(tail.len(), 1, "one problem names the disk size and the MBR's reach of {REACH} bytes: {p:?}");

    let small = t.path().join("1g.img");
    make_file(&small, GIB);
    one_partition_mbr(&small, "512M");
    let table = &inspect(&small, &[])["partition_table"];
    assert_eq!(table["kind"], "mbr");
    assert_eq!(problems(table), Vec::<String>::new(), "{table:#}");
}
