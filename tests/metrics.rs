//! `GET /metrics` read with the Prometheus project's own text-format parser (Debian's
//! python3-prometheus-client): it parses, and its counters move with a real transfer.

mod support;

use std::collections::HashMap;
use std::process::{Command, Stdio};

use support::*;

/// Every sample of the receiver's `/metrics`, keyed `name{label="value",...}` (labels sorted).
fn scrape(r: &Receiver) -> HashMap<String, f64> {
    let out = Command::new("curl").args(["-sSf", &format!("{}/metrics", r.url)]).output().unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    let parser = r#"
import json, sys
from prometheus_client.parser import text_string_to_metric_families
out = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
        out[f"{s.name}{{{labels}}}"] = s.value
print(json.dumps(out))
"#;
    let mut py = Command::new("/usr/bin/python3")
        .args(["-c", parser])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python3 with prometheus_client (scripts/setup installs python3-prometheus-client)");
    use std::io::Write;
    py.stdin.take().unwrap().write_all(&out.stdout).unwrap();
    let parsed = py.wait_with_output().unwrap();
    assert!(
        parsed.status.success(),
        "the Prometheus parser rejected /metrics: {}",
        String::from_utf8_lossy(&parsed.stderr)
    );
    serde_json::from_slice(&parsed.stdout).unwrap()
}

fn get(m: &HashMap<String, f64>, key: &str) -> f64 {
    m.get(key).copied().unwrap_or(0.0)
}

#[test]
fn metrics_parse_and_move_with_a_transfer() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), true);
    let before = scrape(&r);
    assert_eq!(get(&before, "ferry_chunk_bytes_received_total{}"), 0.0);
    assert_eq!(get(&before, "ferry_jobs{state=\"Finished\"}"), 0.0);

    let img = t.path().join("disk.img");
    std::fs::File::create(&img).unwrap().set_len(24 << 20).unwrap();
    write_at(&img, 0, &pseudo_random(6 << 20, 3)); // chunks 0 and 1 hold data
    let (id, token) = r.create_job("metrics");
    let (_, _) = r.create_job("left-waiting");
    sent(&r.send(&id, &token, &[&img], &[]));
    let after = scrape(&r);

    assert_eq!(get(&after, "ferry_chunk_bytes_received_total{}"), (8 << 20) as f64, "two 4 MiB data chunks");
    assert_eq!(get(&after, "ferry_chunks_received_total{}"), 2.0);
    assert_eq!(get(&after, "ferry_chunks_stored_total{}"), 2.0);
    assert_eq!(get(&after, "ferry_jobs{state=\"Finished\"}"), 1.0);
    assert_eq!(get(&after, "ferry_jobs{state=\"Waiting\"}"), 1.0);
    let chunk_route = "route=\"/api/v1/jobs/{job}/disks/{disk}/chunks/{index}\"";
    assert_eq!(get(&after, &format!("ferry_http_requests_total{{method=\"PUT\",{chunk_route},status=\"201\"}}")), 2.0);
    assert_eq!(get(&after, &format!("ferry_http_request_duration_seconds_count{{{chunk_route}}}")), 2.0);
    assert!(get(&after, &format!("ferry_http_request_duration_seconds_sum{{{chunk_route}}}")) > 0.0);

    // Which receiver this is, and what keeps its chunks and jobs.
    let info = format!("ferry_receiver_info{{chunks=\"local\",jobs=\"sqlite\",receiver=\"{}\"}}", r.url);
    assert_eq!(get(&after, &info), 1.0, "{info}");

    // A second send of the same disk to a new job in a wave: nothing new is stored, and the
    // wave's gauges count it.
    let out =
        ferry(&["job", "create", "--store", r.store.to_str().unwrap(), "--name", "again", "--wave", "w1", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id2, token2) = (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string());
    sent(&r.send(&id2, &token2, &[&img], &[]));
    let again = scrape(&r);
    assert_eq!(get(&again, "ferry_chunks_stored_total{}"), 2.0);
    assert_eq!(get(&again, "ferry_jobs{state=\"Finished\"}"), 2.0);
    assert_eq!(get(&again, "ferry_wave_machines{state=\"Finished\",wave=\"w1\"}"), 1.0);
    assert_eq!(get(&again, "ferry_wave_bytes_to_go{wave=\"w1\"}"), 0.0);
    assert!(again.contains_key("ferry_wave_rate_bytes{wave=\"w1\"}"));

    // A refused upload is counted by its reason (the job is Finished: nothing more is taken).
    let put = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "-X",
            "PUT",
            "-H",
            &format!("Authorization: Bearer {token}"),
        ])
        .args(["--data-binary", "x", &format!("{}/api/v1/jobs/{id}/disks/0/chunks/0", r.url)])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&put.stdout), "409");
    assert_eq!(get(&scrape(&r), "ferry_chunk_rejects_total{reason=\"job_finished\"}"), 1.0);
}
