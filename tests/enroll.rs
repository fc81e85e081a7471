//! Enrollment on loopback: one enrollment token for a wave, each machine gets a job of its own
//! (named after its DMI serial), the same unfinished job again after a reboot, and a new job once
//! its job Finished, which then sends only what changed (but the live image is told that its own
//! finished copy is done). Machines are played by sysfs roots with
//! their own DMI identity (`FERRY_SYS_ROOT`); TLS, SQLite and the CLI are the real ones.

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::*;

const MIB: usize = 1 << 20;

fn enroll_create(r: &Receiver, args: &[&str]) -> Output {
    let mut a = vec!["job", "enroll", "create", "--store", r.store.to_str().unwrap()];
    a.extend_from_slice(args);
    ferry(&a)
}

/// `ferry send --enroll TOKEN` as the machine whose sysfs root is `sys`.
fn send_enrolled(r: &Receiver, token: &str, sys: &Path, image: &Path) -> Output {
    Command::new(FERRY)
        .args([
            "send",
            "--server",
            &r.url,
            "--pin",
            &r.pin().unwrap(),
            "--enroll",
            token,
            "--json",
            "--chunk-size",
            "1M",
        ])
        .arg(image)
        .env("FERRY_SYS_ROOT", sys)
        .env_remove("FERRY_TOKEN")
        .output()
        .unwrap()
}

/// `POST /api/v1/PATH` with a bearer token and a JSON body; returns (status, answer).
fn post(r: &Receiver, path: &str, token: &str, body: &str) -> (u16, serde_json::Value) {
    let out = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", "-X", "POST", "-H", "Content-Type: application/json"])
        .args(["-H", &format!("Authorization: Bearer {token}"), "-d", body])
        .arg(format!("{}/api/v1/{path}", r.url))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let (body, code) = text.rsplit_once('\n').unwrap();
    (code.parse().unwrap(), serde_json::from_str(body).unwrap_or(serde_json::Value::Null))
}

#[test]
fn each_machine_gets_its_own_job_the_same_one_until_it_ends_then_a_new_one() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let out = enroll_create(&r, &["--name", "wave-7", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let e: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (eid, token) = (e["id"].as_str().unwrap().to_string(), e["token"].as_str().unwrap().to_string());
    assert_eq!(token.len(), 64);
    assert_eq!(e["target"], "image");

    let (img_a, img_b) = (t.path().join("a.img"), t.path().join("b.img"));
    random_image(&img_a, 12 * MIB, 71);
    random_image(&img_b, 8 * MIB, 72);
    let (sys_a, sys_b) = (machine(t.path(), "SRV-A", None, None), machine(t.path(), "SRV-B", None, None));

    // Machine A enrolls and migrates.
    let out = send_enrolled(&r, &token, &sys_a, &img_a);
    let first = sent(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("enrolled: new job"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let job_a = first["job"].as_str().unwrap().to_string();
    let j = r.job(&job_a);
    assert_eq!((j["name"].as_str(), j["state"].as_str()), (Some("wave-7-SRV-A"), Some("Finished")));
    assert_eq!(j["enrollment"], eid.as_str());
    assert_eq!(j["machine"]["serial"], "SRV-A");
    assert_eq!(first["disks"][0]["blake3"].as_str().unwrap(), b3sum(&img_a));
    assert_eq!(first["disks"][0]["sent_chunks"], 12);

    // Machine B gets a job of its own.
    let second = sent(&send_enrolled(&r, &token, &sys_b, &img_b));
    let job_b = second["job"].as_str().unwrap().to_string();
    assert_ne!(job_b, job_a);
    assert_eq!(r.job(&job_b)["name"], "wave-7-SRV-B");
    assert_eq!(r.job(&job_b)["state"], "Finished");

    // A again (the cutover after a pre-seed): its job ended, so a new one, and only the one
    // changed chunk travels.
    write_at(&img_a, 5 * MIB as u64 + 3, b"changed after the pre-seed");
    let third = sent(&send_enrolled(&r, &token, &sys_a, &img_a));
    let job_a2 = third["job"].as_str().unwrap().to_string();
    assert!(job_a2 != job_a && job_a2 != job_b);
    assert_eq!(third["disks"][0]["sent_chunks"], 1);
    assert_eq!(third["disks"][0]["blake3"].as_str().unwrap(), b3sum(&img_a));

    // While a machine's job has not ended, enrolling again gives the same job back (a reboot,
    // a power cut), with the same token.
    let c = r#"{"machine": {"serial": "SRV-C", "macs": ["52:54:00:00:00:0c"]}}"#;
    let (status, first_c) = post(&r, "enroll", &token, c);
    assert_eq!(status, 201, "{first_c}");
    assert_eq!((first_c["name"].as_str(), first_c["created"].as_bool()), (Some("wave-7-SRV-C"), Some(true)));
    let (status, again_c) = post(&r, "enroll", &token, c);
    assert_eq!(status, 200, "{again_c}");
    assert_eq!(
        (&again_c["job"], &again_c["token"], again_c["created"].as_bool()),
        (&first_c["job"], &first_c["token"], Some(false))
    );
    assert_eq!(r.job(first_c["job"].as_str().unwrap())["state"], "Waiting");
    // The same machine seen by its product UUID is another key than by its serial.
    let d = r#"{"machine": {"product_uuid": "4c4c4544-0042-3510-8052-b4c04f333732", "serial": "SRV-C"}}"#;
    let (status, by_uuid) = post(&r, "enroll", &token, d);
    assert_eq!(status, 201);
    assert_ne!(by_uuid["job"], first_c["job"]);

    // The live image (offline: disks at rest) enrolls, and its copy finishes: booted into ferry
    // again, it is told the machine is migrated (the same Finished job), not copied again. A
    // pre-seed from the running system (online) would get a new job.
    let e_off = r#"{"machine": {"serial": "SRV-E"}, "offline": true}"#;
    let (status, live) = post(&r, "enroll", &token, e_off);
    assert_eq!((status, live["state"].as_str()), (201, Some("Waiting")), "{live}");
    let (job_e, token_e) = (live["job"].as_str().unwrap(), live["token"].as_str().unwrap());
    let img_e = t.path().join("e.img");
    random_image(&img_e, 3 * MIB, 73);
    sent(&r.send(job_e, token_e, &[&img_e], &[]));
    let (status, again) = post(&r, "enroll", &token, e_off);
    assert_eq!(status, 200, "{again}");
    assert_eq!(
        (again["job"].as_str(), again["state"].as_str(), again["created"].as_bool()),
        (Some(job_e), Some("Finished"), Some(false))
    );
    let (status, online) = post(&r, "enroll", &token, r#"{"machine": {"serial": "SRV-E"}}"#);
    assert_eq!((status, online["state"].as_str()), (201, Some("Waiting")), "{online}");
    assert_ne!(online["job"].as_str(), Some(job_e));
    // Begun by the live image, then finished by a running system (an online pass took it over):
    // that copy is not the offline migration, so the live image gets a new job at cutover.
    let f_off = r#"{"machine": {"serial": "SRV-F"}, "offline": true}"#;
    let (_, live_f) = post(&r, "enroll", &token, f_off);
    let (status, online_f) = post(&r, "enroll", &token, r#"{"machine": {"serial": "SRV-F"}}"#);
    assert_eq!((status, &online_f["job"]), (200, &live_f["job"]), "{online_f}");
    sent(&r.send(online_f["job"].as_str().unwrap(), online_f["token"].as_str().unwrap(), &[&img_e], &[]));
    let (status, cutover_f) = post(&r, "enroll", &token, f_off);
    assert_eq!(
        (status, cutover_f["created"].as_bool(), cutover_f["state"].as_str()),
        (201, Some(true), Some("Waiting"))
    );
    assert_ne!(cutover_f["job"], live_f["job"]);

    // A job the operator cancelled stays cancelled: the machine is given it back, not a new one.
    let cancel = ferry(&["job", "cancel", "--store", r.store.to_str().unwrap(), online["job"].as_str().unwrap()]);
    assert!(cancel.status.success());
    let (status, cancelled) = post(&r, "enroll", &token, r#"{"machine": {"serial": "SRV-E"}}"#);
    assert_eq!((status, &cancelled["job"], cancelled["state"].as_str()), (200, &online["job"], Some("Cancelled")));

    // The enrollment lists its jobs, oldest first; a viewer sees no token.
    let list = ferry(&["job", "enroll", "list", "--store", r.store.to_str().unwrap(), "--json"]);
    assert!(list.status.success());
    let list: serde_json::Value = serde_json::from_slice(&list.stdout).unwrap();
    let jobs: Vec<&str> = list[0]["jobs"].as_array().unwrap().iter().map(|j| j.as_str().unwrap()).collect();
    assert_eq!(jobs[..3], [job_a.as_str(), job_b.as_str(), job_a2.as_str()]);
    assert_eq!(jobs.len(), 9);
    let viewer = std::fs::read_to_string(r.store.join("viewer.token")).unwrap();
    let out = Command::new("curl")
        .args(["-sk", "-H", &format!("Authorization: Bearer {}", viewer.trim())])
        .arg(format!("{}/api/v1/enrollments", r.url))
        .output()
        .unwrap();
    let seen: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(seen[0]["id"], eid.as_str());
    assert!(seen[0].get("token").is_none(), "a viewer must not see enrollment tokens: {seen}");
}

#[test]
fn refusals_enroll_nothing() {
    let t = tempfile::tempdir().unwrap();
    let r = Receiver::start(&t.path().join("store"), false);
    let out = enroll_create(&r, &["--name", "wave-9"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    // The text output gives the boot line for sources, with this receiver's URL and pin.
    let token = text.lines().find_map(|l| l.strip_prefix("token: ")).unwrap().to_string();
    let boot_line = format!("ferry.server={} ferry.pin={} ferry.enroll={token}", r.url, r.pin().unwrap());
    assert!(text.contains(&boot_line), "{text}");
    let eid = text.lines().find_map(|l| l.strip_prefix("id:    ")).unwrap().to_string();
    let jobs_before = r.job_count();

    let m = r#"{"machine": {"serial": "SRV-X"}}"#;
    // Not an enrollment token: the admin's, a job's, the viewer's, or garbage; or none.
    let (job, job_token) = r.create_job("plain job");
    let viewer = std::fs::read_to_string(r.store.join("viewer.token")).unwrap().trim().to_string();
    for bad in [r.admin_token(), job_token, viewer, "0".repeat(64)] {
        let (status, body) = post(&r, "enroll", &bad, m);
        assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")), "{body}");
    }
    let out = Command::new("curl")
        .args(["-sk", "-X", "POST", "-d", m])
        .arg(format!("{}/api/v1/enroll", r.url))
        .output()
        .unwrap();
    let body: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(body["code"], "no_token");
    // The enrollment token is good for nothing else: no job, enrollment or identity to read.
    for path in ["jobs", "enrollments", &format!("jobs/{job}"), &format!("jobs/{job}/log"), "whoami"] {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("{}/api/v1/{path}", r.url))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "GET {path} with an enrollment token");
    }
    // A machine with nothing that tells it apart (firmware placeholders only).
    let (status, body) = post(
        &r,
        "enroll",
        &token,
        r#"{"machine": {"serial": "To Be Filled By O.E.M.", "macs": ["00:00:00:00:00:00"]}}"#,
    );
    assert_eq!((status, body["code"].as_str()), (400, Some("no_identity")), "{body}");
    let (status, body) = post(&r, "enroll", &token, "{not json");
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_json")), "{body}");
    // Only the admin creates or revokes enrollments.
    let (status, _) = post(&r, "enrollments", &token, r#"{"name": "sneaky"}"#);
    assert_eq!(status, 403);
    let (status, body) = post(&r, "enrollments", &r.admin_token(), r#"{"name": "  "}"#);
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_name")));
    assert_eq!(r.job_count(), jobs_before + 1, "only the plain job was created");

    // A capped wave: its one machine keeps getting its job; a second machine is refused.
    let capped = enroll_create(&r, &["--name", "wave-cap", "--max-jobs", "1", "--json"]);
    assert!(capped.status.success(), "{}", String::from_utf8_lossy(&capped.stderr));
    let capped: serde_json::Value = serde_json::from_slice(&capped.stdout).unwrap();
    let cap_token = capped["token"].as_str().unwrap();
    assert_eq!(capped["max_jobs"], 1);
    let (status, first) = post(&r, "enroll", cap_token, r#"{"machine": {"serial": "CAP-1"}}"#);
    assert_eq!(status, 201, "{first}");
    let (status, again) = post(&r, "enroll", cap_token, r#"{"machine": {"serial": "CAP-1"}}"#);
    assert_eq!((status, &again["job"]), (200, &first["job"]));
    let (status, body) = post(&r, "enroll", cap_token, r#"{"machine": {"serial": "CAP-2"}}"#);
    assert_eq!((status, body["code"].as_str()), (409, Some("enrollment_full")), "{body}");
    let (status, body) = post(&r, "enrollments", &r.admin_token(), r#"{"name": "w", "max_jobs": 0}"#);
    assert_eq!((status, body["code"].as_str()), (400, Some("bad_max_jobs")));
    assert_eq!(enroll_create(&r, &["--name", "w", "--max-jobs", "0"]).status.code(), Some(2));
    // The cap counts machines: CAP-1's cutover after its pre-seed gets a new job.
    let img = t.path().join("cap.img");
    random_image(&img, 2 * MIB, 6);
    sent(&r.send(first["job"].as_str().unwrap(), first["token"].as_str().unwrap(), &[&img], &[]));
    let (status, cutover) = post(&r, "enroll", cap_token, r#"{"machine": {"serial": "CAP-1"}, "offline": true}"#);
    assert_eq!((status, cutover["created"].as_bool()), (201, Some(true)), "{cutover}");
    let (status, body) = post(&r, "enroll", cap_token, r#"{"machine": {"serial": "CAP-2"}, "offline": true}"#);
    assert_eq!((status, body["code"].as_str()), (409, Some("enrollment_full")), "{body}");
    assert_eq!(r.job_count(), jobs_before + 3, "the plain job and CAP-1's two");

    // Revoked: the token enrolls nothing more, and the source is told so.
    let out = ferry(&["job", "enroll", "revoke", "--store", r.store.to_str().unwrap(), &eid]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let img = t.path().join("x.img");
    random_image(&img, 2 * MIB, 7);
    let out = send_enrolled(&r, &token, &machine(t.path(), "SRV-X", None, None), &img);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("enrollment_revoked") && err.contains("ask the operator for a job"), "{err}");
    assert_eq!(r.job_count(), jobs_before + 3);
    let (status, body) = post(&r, "enrollments/nope/revoke", &r.admin_token(), "");
    assert_eq!((status, body["code"].as_str()), (404, Some("no_such_enrollment")));
    assert_eq!(r.job(&job)["state"], "Waiting");

    // send needs a job and its token, or an enrollment token: not both, not neither.
    let usage = ferry(&["send", "--server", &r.url, "--job", "abc", "--token", "x", "--enroll", &token, "x.img"]);
    assert_eq!(usage.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&usage.stderr).contains("cannot be used with"),
        "{}",
        String::from_utf8_lossy(&usage.stderr)
    );
    let usage =
        Command::new(FERRY).args(["send", "--server", &r.url, "x.img"]).env_remove("FERRY_TOKEN").output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
}
