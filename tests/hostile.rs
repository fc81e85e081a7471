//! A receiver on a network that carries hostile clients (`../shared/reviews/security.md`, H1,
//! H2, M1, L1): bodies are not read before their token is accepted, bodies in flight are bounded
//! as a whole, idle and half-sent connections cannot keep a real agent out (even with few file
//! descriptors), a wave of slow boot downloads keeps memory flat, and a manifest of stored ids in
//! another order is not "verified". Every test here failed on the reviewed release (8b9e99a).
//!
//! Memory is asserted only as bounds with wide margins against what the unbounded code needed
//! (hundreds of MiB): a functional limit, not a benchmark.

mod support;

use std::io::Write;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use support::*;

const MIB: u64 = 1 << 20;

/// curl's HTTP status and the bytes it managed to upload.
fn curl_upload(args: &[&str]) -> (String, u64) {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code} %{size_upload}", "--max-time", "60"])
        .args(args)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let (code, sent) = text.split_once(' ').unwrap_or_else(|| panic!("curl printed {text:?}"));
    (code.to_string(), sent.parse::<f64>().unwrap() as u64)
}

/// An HTTP/2 connection to the receiver's API (TLS with its pin, ALPN h2), ready for a request.
async fn h2_connect(r: &Receiver) -> h2::client::SendRequest<bytes::Bytes> {
    ferry::tls::install_crypto_provider();
    let (mut cfg, _) = ferry::tls::pinned_client_config(&r.pin().unwrap()).unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", r.port)).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(cfg)).connect(name, tcp).await.unwrap();
    let (client, conn) = h2::client::handshake(tls).await.unwrap();
    tokio::spawn(conn);
    client.ready().await.unwrap()
}

/// Uploads a body of `len` zero bytes over HTTP/2 (as far as the receiver lets it): the status,
/// and how many bytes it took. HTTP/2 flow control means the receiver lets through only what
/// it asks for (its window), so "not read" shows as a few MiB at most.
fn h2_upload(r: &Receiver, method: &str, path: &str, auth: Option<&str>, len: u64) -> (u16, u64) {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::Arc;
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let mut client = h2_connect(r).await;
        let mut req = axum::http::Request::builder()
            .method(method)
            .uri(format!("https://127.0.0.1:{}{path}", r.port))
            .header("content-length", len)
            .header("content-type", "application/json");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let (response, mut body) = client.send_request(req.body(()).unwrap(), false).unwrap();
        let sent = Arc::new(AtomicU64::new(0));
        let counter = sent.clone();
        let sender = tokio::spawn(async move {
            let zeros = bytes::Bytes::from(vec![0u8; 1 << 20]);
            while counter.load(Ordering::Relaxed) < len {
                body.reserve_capacity(zeros.len());
                let Some(Ok(n)) = std::future::poll_fn(|cx| body.poll_capacity(cx)).await else { break };
                if body.send_data(zeros.slice(..n), false).is_err() {
                    break;
                }
                counter.fetch_add(n as u64, Ordering::Relaxed);
            }
        });
        let status = response.await.map(|r| r.status().as_u16()).unwrap_or(0);
        // Whatever the sender still manages in a second after the answer counts too.
        let _ = tokio::time::timeout(Duration::from_secs(1), sender).await;
        (status, sent.load(Ordering::Relaxed))
    })
}

#[test]
fn a_body_sent_without_an_accepted_token_is_not_read() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let (id, _token) = r.create_job("victim");
    let body = t.path().join("body");
    std::fs::File::create(&body).unwrap().set_len(200 * MIB).unwrap();
    let body = body.to_str().unwrap();
    let api = format!("{}/api/v1", r.url);
    let wrong = format!("Authorization: Bearer {}", "f".repeat(64));
    let before = r.peak_memory();
    let cases: &[(&str, String, Option<&str>, &str)] = &[
        ("POST", format!("{api}/jobs/nosuchjob/disks/0/complete"), None, "401"),
        ("PUT", format!("{api}/jobs/{id}/disks/0/chunks/0"), Some(&wrong), "403"),
        ("POST", format!("{api}/jobs/{id}/disks/0/complete"), Some(&wrong), "403"),
        ("POST", format!("{api}/jobs"), Some(&wrong), "403"),
    ];
    for (method, url, header, want) in cases {
        let mut args = vec!["--http1.1", "-X", method, "-T", body, url.as_str()];
        if let Some(h) = header {
            args.extend(["-H", h]);
        }
        let (code, sent) = curl_upload(&args);
        assert_eq!(&code, want, "{method} {url} HTTP/1.1");
        // Whatever the kernel's socket buffers took, not the 200 MiB.
        assert!(sent < 32 * MIB, "{method} {url} HTTP/1.1: the receiver took {sent} bytes before refusing");
        // HTTP/2 (curl 7.88 drops an answer that comes before the upload ends; h2 does not).
        let path = url.strip_prefix(&r.url).unwrap();
        let (code, sent) =
            h2_upload(&r, method, path, header.map(|h| h.trim_start_matches("Authorization: ")), 200 * MIB);
        assert_eq!(code.to_string(), *want, "{method} {url} HTTP/2");
        assert!(sent < 32 * MIB, "{method} {url} HTTP/2: the receiver took {sent} bytes before refusing");
    }
    let grew = r.peak_memory().saturating_sub(before);
    assert!(grew < 64 * MIB, "refusing 200 MiB bodies grew the receiver by {} MiB", grew / MIB);
    // And it still works.
    let img = t.path().join("disk.img");
    random_image(&img, MIB as usize, 3);
    let (id, token) = r.create_job("after");
    sent(&r.send(&id, &token, &[&img], &[]));
}

/// Registers `id` with one disk of `size` bytes in `chunk_size` chunks, over the raw API.
/// A plain-HTTP receiver with `env` set.
fn plain_receiver_with(dir: &Path, env: &[(&str, &str)]) -> Receiver {
    Receiver::start_custom(&dir.join("store"), true, free_port(), &[], &[], env)
}

/// A raw HTTP/1.1 chunk upload of `len` bytes whose headers are sent and body never is.
fn chunk_upload_without_body(r: &Receiver, job: &str, token: &str, index: u64, len: u64) -> TcpStream {
    let mut c = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
    write!(
        c,
        "PUT /api/v1/jobs/{job}/disks/0/chunks/{index} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\nx-ferry-chunk-id: {}\r\nContent-Length: {len}\r\n\r\n",
        "ab".repeat(32),
    )
    .unwrap();
    c
}

fn register_and_begin(api: &str, id: &str, token: &str, size: u64, chunk_size: u64) {
    let disk = serde_json::json!({"path": "/dev/vda", "kind": "block", "size": size,
        "logical_sector_size": 512, "physical_sector_size": 512});
    let post = |path: &str, body: serde_json::Value| {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
            .args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
            .arg(format!("{api}/jobs/{id}/{path}"))
            .output()
            .unwrap();
        String::from_utf8_lossy(&out.stdout).to_string()
    };
    assert_eq!(post("register", serde_json::json!({"machine": {}, "disks": [disk]})), "200");
    let begin = serde_json::json!({"identity": disk, "size": size, "chunk_size": chunk_size,
        "partition_table": {"kind": "none", "sector_size": 512, "problems": [], "partitions": []}});
    assert_eq!(post("disks/0/begin", begin), "204");
}

#[test]
fn large_bodies_in_flight_are_bounded_as_a_whole() {
    let t = tempfile::tempdir().unwrap();
    // A budget of one largest chunk at a time.
    let r = plain_receiver_with(t.path(), &[("FERRY_BODY_BUDGET_MIB", "65")]);
    let (id, token) = r.create_job("big-chunks");
    let (chunk, n) = (64 * MIB, 8u64);
    let api = format!("{}/api/v1", r.url);
    register_and_begin(&api, &id, &token, n * chunk, chunk);
    let dir = t.path().to_owned();
    let before = r.peak_memory();
    // Eight parallel uploads of a 64 MiB chunk each, all valid.
    let uploads: Vec<_> = (0..n)
        .map(|i| {
            let data = vec![i as u8 + 1; chunk as usize];
            let cid = hex::encode(ferry::image::treehash::chunk_id(&data, i * chunk, n * chunk, chunk));
            let file = dir.join(format!("chunk{i}"));
            std::fs::write(&file, &data).unwrap();
            let url = format!("{api}/jobs/{id}/disks/0/chunks/{i}");
            let auth = format!("Authorization: Bearer {token}");
            std::thread::spawn(move || {
                let id_header = format!("x-ferry-chunk-id: {cid}");
                curl_upload(&["-X", "PUT", "-T", file.to_str().unwrap(), "-H", &auth, "-H", &id_header, &url])
            })
        })
        .collect();
    for (i, u) in uploads.into_iter().enumerate() {
        let (code, sent) = u.join().unwrap();
        assert_eq!((code.as_str(), sent), ("201", chunk), "chunk {i}");
    }
    assert_eq!(r.stored_chunks(), n as usize);
    let grew = r.peak_memory().saturating_sub(before);
    // Unbounded, eight bodies of 64 MiB were held at once (512 MiB and more).
    assert!(grew < 300 * MIB, "eight parallel 64 MiB uploads grew the receiver by {} MiB", grew / MIB);
}

#[test]
fn an_http2_connection_carries_at_most_32_streams() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let streams = rt.block_on(async {
        let mut client = h2_connect(&r).await;
        let req = axum::http::Request::get(format!("https://127.0.0.1:{}/api/v1/health", r.port)).body(()).unwrap();
        let (response, _) = client.send_request(req, true).unwrap();
        assert_eq!(response.await.unwrap().status(), 200);
        // The receiver's SETTINGS arrived with its first answer at the latest.
        client.current_max_send_streams()
    });
    assert_eq!(streams, 32);
}

/// A receiver (run through `wrapper`) serving boot files from `DIR/boot` (an initrd of
/// `initrd_mib`) on a plain-HTTP boot listener of its own; the receiver and that port.
fn receiver_with_boot_files(dir: &Path, initrd_mib: u64, wrapper: &[&str]) -> (Receiver, u16) {
    let boot = dir.join("boot");
    boot_dir(&boot, initrd_mib);
    let boot_port = free_port();
    let listen = format!("127.0.0.1:{boot_port}");
    let args = ["--boot-dir", boot.to_str().unwrap(), "--boot-listen", &listen];
    (Receiver::start_custom(&dir.join("store"), false, free_port(), &args, wrapper, &[]), boot_port)
}

/// A small boot directory: what is served, not what boots, is tested here.
fn boot_dir(dir: &Path, initrd_mib: u64) {
    std::fs::create_dir_all(dir).unwrap();
    random_image(&dir.join("vmlinuz"), MIB as usize, 1);
    random_image(&dir.join("initrd.img"), (initrd_mib * MIB) as usize, 2);
    std::fs::write(dir.join("boot.ipxe"), "#!ipxe\nkernel vmlinuz\n").unwrap();
}

fn http_code(url: &str) -> String {
    let out = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "10", url])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).to_string()
}

#[test]
fn idle_and_half_sent_connections_do_not_keep_a_real_agent_out() {
    let t = tempfile::tempdir().unwrap();
    let (r, boot_port) = receiver_with_boot_files(t.path(), 1, &["prlimit", "--nofile=256:256", "--"]);
    // Far more connections than the receiver has descriptors for: TCP that never says hello,
    // TLS-less half headers on the API port, and half-sent requests on the boot listener.
    let api = ("127.0.0.1", r.port);
    let mut held = vec![];
    for i in 0..300 {
        let mut c = TcpStream::connect(api).unwrap();
        if i % 3 == 0 {
            let _ = c.write_all(b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03");
        }
        held.push(c);
    }
    for _ in 0..60 {
        let mut c = TcpStream::connect(("127.0.0.1", boot_port)).unwrap();
        c.write_all(b"GET /boot/initrd.img HTTP/1.1\r\nHost: x\r\n").unwrap();
        held.push(c);
    }
    std::thread::sleep(Duration::from_millis(500));

    assert_eq!(http_code(&format!("{}/api/v1/health", r.url)), "200");
    assert_eq!(http_code(&format!("http://127.0.0.1:{boot_port}/boot/vmlinuz")), "200");
    let img = t.path().join("disk.img");
    random_image(&img, 8 * MIB as usize, 4);
    let (id, token) = r.create_job("real-agent");
    let out = sent(&r.send(&id, &token, &[&img], &[]));
    assert_eq!(out["disks"][0]["verified"], true, "{out}");
    assert_eq!(export_b3sum(&r, &id, 0, t.path()), b3sum(&img));
    drop(held);
}

#[test]
fn a_wave_of_slow_boot_downloads_keeps_memory_flat() {
    let t = tempfile::tempdir().unwrap();
    let (r, boot_port) = receiver_with_boot_files(t.path(), 48, &[]);
    let boot = t.path().join("boot");
    let url = format!("http://127.0.0.1:{boot_port}/boot/initrd.img");
    let before = r.peak_memory();
    let mut slow: Vec<_> = (0..50)
        .map(|_| {
            Command::new("curl")
                .args(["-s", "-o", "/dev/null", "--limit-rate", "100k", &url])
                .stdout(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    std::thread::sleep(Duration::from_secs(4));
    // While they crawl, a whole download arrives intact.
    let got = t.path().join("initrd.img");
    run_ok(Command::new("curl").args(["-sf", "-o", got.to_str().unwrap(), &url]));
    assert!(files_equal(&got, &boot.join("initrd.img")));
    let grew = r.peak_memory().saturating_sub(before);
    for c in &mut slow {
        let _ = c.kill();
        let _ = c.wait();
    }
    // Read whole per request, 51 downloads of 48 MiB held 2.4 GiB.
    assert!(grew < 64 * MIB, "51 downloads of a 48 MiB initrd grew the receiver by {} MiB", grew / MIB);
}

#[test]
fn a_manifest_of_stored_chunks_in_another_order_is_not_verified() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let store = r.store.to_str().unwrap().to_string();
    // Job A sends a disk of four different 64 KiB chunks.
    let img = t.path().join("a.img");
    random_image(&img, 4 << 16, 9);
    let create = |name: &str| {
        let v = ferry_json(&["job", "create", "--store", &store, "--name", name, "--chunk-size", "64K", "--json"]);
        (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    };
    let (a, a_token) = create("a");
    sent(&r.send(&a, &a_token, &[&img], &[]));
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(r.store.join("manifests").join(&a).join("0.json")).unwrap()).unwrap();

    // Job C claims A's chunks with 0 and 1 swapped, and the root those ids merge to.
    let (c, c_token) = create("c");
    let api = format!("{}/api/v1", r.url);
    register_and_begin(&api, &c, &c_token, 4 << 16, 1 << 16);
    let mut swapped = manifest.clone();
    swapped["chunks"].as_array_mut().unwrap().swap(0, 1);
    let ids: Vec<[u8; 32]> = swapped["chunks"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| hex::decode(e["id"].as_str().unwrap()).unwrap().try_into().unwrap())
        .collect();
    let root = ferry::image::treehash::root_from_ids(&ids, 4 << 16, 1 << 16).unwrap();
    swapped["blake3"] = hex::encode(root).into();
    let call = |path: &str, body: &serde_json::Value| {
        let out = Command::new("curl")
            .args(["-sk", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {c_token}")])
            .args(["-H", "Content-Type: application/json", "--data-binary", &body.to_string()])
            .arg(format!("{api}/jobs/{c}/{path}"))
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap();
        (code.to_string(), serde_json::from_str::<serde_json::Value>(body).unwrap_or_default())
    };
    // The store holds those ids, but not at those indexes.
    let query: Vec<_> =
        ids.iter().enumerate().map(|(i, id)| serde_json::json!({"index": i, "id": hex::encode(id)})).collect();
    let (code, missing) = call("disks/0/missing", &serde_json::json!({ "chunks": query }));
    assert_eq!((code.as_str(), &missing["missing"]), ("200", &serde_json::json!([0, 1])), "{missing}");
    let (code, answer) = call("disks/0/complete", &swapped);
    assert_eq!((code.as_str(), answer["code"].as_str()), ("422", Some("chunk_missing")), "{answer}");
    assert_eq!(r.job(&c)["state"], "InError");
    // A's own copy is untouched and exports as it came.
    assert_eq!(export_b3sum(&r, &a, 0, t.path()), b3sum(&img));
}

/// Ends the client threads of [`hold_requests_open`] when dropped, also when a test fails.
struct StopOnDrop(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Raw HTTP/1.1 connections that each send `head` and then hold on, re-sending it whenever the
/// receiver answers or closes (a client that keeps requests in flight for as long as it can).
fn hold_requests_open(port: u16, head: String, conns: usize) -> StopOnDrop {
    use std::io::Read;
    use std::sync::atomic::{AtomicBool, Ordering};
    let stop = std::sync::Arc::new(AtomicBool::new(false));
    for _ in 0..conns {
        let (stop, head) = (stop.clone(), head.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)) else {
                    std::thread::sleep(Duration::from_millis(50));
                    continue;
                };
                let _ = c.set_read_timeout(Some(Duration::from_secs(1)));
                if c.write_all(head.as_bytes()).is_err() {
                    continue;
                }
                let mut buf = [0u8; 4096];
                while !stop.load(Ordering::Relaxed) {
                    match c.read(&mut buf) {
                        Ok(0) => break,
                        Ok(_) => {
                            if c.write_all(head.as_bytes()).is_err() {
                                break;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(_) => break,
                    }
                }
            }
        });
    }
    StopOnDrop(stop)
}

#[test]
fn refused_requests_held_open_do_not_keep_a_real_agent_out() {
    let t = tempfile::tempdir().unwrap();
    // 256 descriptors: 16 API connections.
    let r = Receiver::start_custom(
        &t.path().join("store"),
        true,
        free_port(),
        &[],
        &["prlimit", "--nofile=256:256", "--"],
        &[],
    );
    // Sixty clients without a token, each keeping a refused request waiting for its 1-byte body.
    let head = "POST /api/v1/jobs/nosuchjob/register HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n".to_string();
    let stop = hold_requests_open(r.port, head, 60);
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(http_code(&format!("{}/api/v1/health", r.url)), "200");
    let img = t.path().join("disk.img");
    random_image(&img, 8 * MIB as usize, 5);
    let (id, token) = r.create_job("real-agent");
    sent(&r.send(&id, &token, &[&img], &[]));
    assert_eq!(export_b3sum(&r, &id, 0, t.path()), b3sum(&img));
    drop(stop);
}

#[test]
fn one_token_holding_uploads_open_does_not_stall_another_job() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    // Job A's token opens twelve 64 MiB chunk uploads and sends none of their bytes: more than
    // the whole body budget (128 MiB), were it let take it.
    let (a, a_token) = r.create_job("holder");
    let api = format!("{}/api/v1", r.url);
    register_and_begin(&api, &a, &a_token, 16 * 64 * MIB, 64 * MIB);
    let mut held = vec![];
    for i in 0..12 {
        held.push(chunk_upload_without_body(&r, &a, &a_token, i, 64 * MIB));
    }
    // And a body with no length at all is refused at once.
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-X", "PUT", "-H", "Transfer-Encoding: chunked"])
        .args([
            "-H",
            &format!("Authorization: Bearer {a_token}"),
            "-H",
            &format!("x-ferry-chunk-id: {}", "ab".repeat(32)),
        ])
        .args(["--data-binary", "x", &format!("{api}/jobs/{a}/disks/0/chunks/0")])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "411");
    std::thread::sleep(Duration::from_secs(1));
    // Job B sends its disk meanwhile, whole, without waiting for A's silent bodies to be ended
    // (30 s): A may hold only a quarter of the budget.
    let img = t.path().join("b.img");
    random_image(&img, 16 * MIB as usize, 6);
    let (b, b_token) = r.create_job("other");
    let started = std::time::Instant::now();
    sent(&r.send(&b, &b_token, &[&img], &[]));
    assert!(started.elapsed() < Duration::from_secs(20), "job B waited {:?} for job A", started.elapsed());
    assert_eq!(export_b3sum(&r, &b, 0, t.path()), b3sum(&img));
    drop(held);
}

#[test]
fn a_body_that_goes_silent_is_ended_and_its_share_given_back() {
    let t = tempfile::tempdir().unwrap();
    // 64 MiB in all, so a job may hold 16 MiB: four 4 MiB uploads. A body may be silent 2 s.
    let r = plain_receiver_with(t.path(), &[("FERRY_BODY_BUDGET_MIB", "64"), ("FERRY_BODY_STALL_SECS", "2")]);
    let (id, token) = r.create_job("silent");
    let api = format!("{}/api/v1", r.url);
    register_and_begin(&api, &id, &token, 8 * MIB, 4 * MIB);
    // Four uploads take the job's whole share and then send nothing.
    let mut silent = vec![];
    for i in 0..4 {
        silent.push(chunk_upload_without_body(&r, &id, &token, i % 2, 4 * MIB));
    }
    std::thread::sleep(Duration::from_millis(300));
    // The same job's real agent waits for its share only until the silent bodies are ended.
    let img = t.path().join("disk.img");
    random_image(&img, 8 * MIB as usize, 11);
    let send = Command::new("timeout")
        .arg("60")
        .arg(FERRY)
        .args(r.send_args(&id, &token))
        .arg("--json")
        .arg(&img)
        .output()
        .unwrap();
    sent(&send);
    assert_eq!(export_b3sum(&r, &id, 0, t.path()), b3sum(&img));
    // Each silent upload got an answer or was closed; none is still held open.
    for mut c in silent {
        use std::io::Read;
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 64];
        let n = c.read(&mut buf).unwrap_or(0);
        assert!(n == 0 || buf.starts_with(b"HTTP/1.1 4"), "{:?}", String::from_utf8_lossy(&buf[..n]));
    }
}

#[test]
fn a_request_head_over_64_kib_is_refused_and_the_receiver_stays_up() {
    let t = tempfile::tempdir().unwrap();
    let r = plain_receiver_with(t.path(), &[]);
    let ask = |header_bytes: usize| -> String {
        let mut c = TcpStream::connect(("127.0.0.1", r.port)).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let head = format!(
            "GET /api/v1/health HTTP/1.1\r\nHost: x\r\nConnection: close\r\nX-Pad: {}\r\n\r\n",
            "a".repeat(header_bytes)
        );
        // The receiver may answer and close before the whole head is written.
        let _ = c.write_all(head.as_bytes());
        let mut answer = String::new();
        let _ = std::io::Read::read_to_string(&mut c, &mut answer);
        answer.lines().next().unwrap_or_default().to_string()
    };
    assert!(ask(32 * 1024).starts_with("HTTP/1.1 200"), "a 32 KiB head is within bounds");
    assert!(ask(100 * 1024).starts_with("HTTP/1.1 431"), "a 100 KiB head is refused");
    assert_eq!(http_code(&format!("{}/api/v1/health", r.url)), "200");
}
