//! The target side on loopback: `ferry pull` writes a finished job's disks onto image files,
//! reads them back, grows the GPT like `sgdisk -e`, and refuses (writing nothing) when any
//! precondition fails. Two machines are played on one host by giving each its own sysfs root
//! with a DMI serial (`FERRY_SYS_ROOT`); everything else is real: TLS, SQLite, sgdisk, b3sum.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use support::*;

const MIB: u64 = 1 << 20;

/// The DMI product name of every machine played here.
const PRODUCT: Option<&str> = Some("Test Machine");

/// A GPT disk of `size` bytes with an ESP and a root partition holding data and zero runs.
fn gpt_source(path: &Path, size: u64, seed: u64) {
    std::fs::File::create(path).unwrap().set_len(size).unwrap();
    sgdisk(path, &["-n1:1M:+8M", "-t1:ef00", "-c1:esp", "-n2:0:0", "-t2:8300", "-c2:root"]);
    write_at(path, MIB, &pseudo_random(3 * MIB as usize, seed));
    write_at(path, size / 2, &pseudo_random(5 * MIB as usize + 777, seed + 1));
}

/// A file of `size` bytes full of a non-zero pattern: an old disk whose bytes must all go.
fn used_disk(path: &Path, size: u64) {
    std::fs::write(path, vec![0xa5u8; size as usize]).unwrap();
}

struct Instance {
    r: Receiver,
    id: String,
    token: String,
    target_token: String,
}

/// A receiver with a Finished `instance` job holding `sources`, sent from machine SRC-1.
fn finished_job(dir: &Path, sources: &[&Path], spec: &[&str]) -> Instance {
    finished_job_sent_with(dir, sources, spec, &[])
}

/// [`finished_job`], sent with `send_args` added to `ferry send`.
fn finished_job_sent_with(dir: &Path, sources: &[&Path], spec: &[&str], send_args: &[&str]) -> Instance {
    let r = Receiver::start(&dir.join("store"), false);
    let store = r.store.to_str().unwrap().to_string();
    let mut args = vec!["job", "create", "--store", &store, "--name", "db01", "--target", "instance", "--json"];
    args.extend_from_slice(spec);
    let out = ferry(&args);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (id, token) = (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string());
    let target_token = v["target_token"].as_str().expect("instance jobs have a target token").to_string();
    assert_ne!(target_token, token);
    let mut cmd = Command::new(FERRY);
    cmd.args(r.send_args(&id, &token))
        .arg("--json")
        .args(send_args)
        .args(sources)
        .env("FERRY_SYS_ROOT", machine(dir, "SRC-1", None, PRODUCT));
    sent(&cmd.output().unwrap());
    Instance { r, id, token, target_token }
}

/// `ferry pull --json` of job `id` as the machine whose sysfs root is `sys`.
fn pull(r: &Receiver, id: &str, target_token: &str, sys: &Path, to: &[&Path], extra: &[&str]) -> Output {
    let mut cmd = Command::new(FERRY);
    cmd.args(["pull", "--server", &r.url, "--job", id, "--token", target_token])
        .args(["--pin", &r.pin().unwrap(), "--json", "--retry-for", "5"])
        .args(extra)
        .arg("--to")
        .args(to)
        .env("FERRY_SYS_ROOT", sys);
    cmd.output().unwrap()
}

impl Instance {
    fn pull(&self, sys: &Path, to: &[&Path], extra: &[&str]) -> Output {
        pull(&self.r, &self.id, &self.target_token, sys, to, extra)
    }
    fn delivery(&self) -> serde_json::Value {
        self.r.job(&self.id)["delivery"].clone()
    }
    fn set_target(&self, spec: &[&str]) {
        let mut args = vec!["job", "target", "--store", self.r.store.to_str().unwrap(), &self.id];
        args.extend_from_slice(spec);
        let out = ferry(&args);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    }
}

fn pulled(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "pull failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The refusal code of a failed pull, from its JSON.
fn refused(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(1), "pull should fail: {}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    v["code"].as_str().unwrap().to_string()
}

#[test]
fn pull_writes_reads_back_and_grows_the_gpt_like_sgdisk() {
    let t = tempfile::tempdir().unwrap();
    let (src0, src1) = (t.path().join("src0.img"), t.path().join("src1.img"));
    gpt_source(&src0, 64 * MIB, 1);
    std::fs::File::create(&src1).unwrap().set_len(32 * MIB).unwrap();
    let st = Command::new("sfdisk")
        .arg("-q")
        .arg(&src1)
        .stdin(Stdio::piped())
        .spawn()
        .and_then(|mut c| {
            use std::io::Write;
            c.stdin.take().unwrap().write_all(b"label: dos\n,16M,83\n,,83\n")?;
            c.wait()
        })
        .unwrap();
    assert!(st.success());
    write_at(&src1, 20 * MIB, &pseudo_random(2 * MIB as usize, 9));

    let job = finished_job(t.path(), &[&src0, &src1], &["--target-machine", "TGT-1", "--allow-wipe"]);
    // Targets: a larger disk whose first 64 MiB held old data, and a same-size used disk.
    let (big, same) = (t.path().join("big.img"), t.path().join("same.img"));
    used_disk(&big, 64 * MIB);
    std::fs::OpenOptions::new().write(true).open(&big).unwrap().set_len(128 * MIB).unwrap();
    used_disk(&same, 32 * MIB);

    let out = pulled(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&big, &same], &[]));
    assert_eq!(out["state"], "Finished");
    assert_eq!(out["disks"][0]["blake3"].as_str().unwrap(), b3sum(&src0));
    assert_eq!(out["disks"][1]["blake3"].as_str().unwrap(), b3sum(&src1));

    // The same-size disk is the source, bit for bit (zeros were written over the old pattern).
    assert!(files_equal(&same, &src1), "the same-size target differs from the source");
    // The larger disk is exactly what sgdisk -e makes of the source on a 128 MiB disk.
    let expected = t.path().join("expected.img");
    std::fs::copy(&src0, &expected).unwrap();
    std::fs::OpenOptions::new().write(true).open(&expected).unwrap().set_len(128 * MIB).unwrap();
    sgdisk(&expected, &["-e"]);
    assert!(files_equal(&big, &expected), "the grown target differs from sgdisk -e's result");
    assert!(sgdisk(&big, &["-v"]).contains("No problems found"), "{}", sgdisk(&big, &["-v"]));
    // Within the source's size, only the protective MBR and the primary header changed.
    let (a, b) = (std::fs::read(&src0).unwrap(), std::fs::read(&big).unwrap());
    let differing: std::collections::BTreeSet<usize> =
        a.iter().zip(&b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i / 512).collect();
    assert_eq!(differing.into_iter().collect::<Vec<_>>(), [0, 1]);

    let d = job.delivery();
    assert_eq!(d["state"], "Finished");
    assert_eq!(d["machine"]["serial"], "TGT-1");
    let whats: Vec<&str> =
        d["disks"][0]["changed"].as_array().unwrap().iter().map(|c| c["what"].as_str().unwrap()).collect();
    assert_eq!(whats, ["backup GPT entries", "backup GPT header", "primary GPT header", "protective MBR size"]);
    assert_eq!(d["disks"][1]["changed"].as_array().unwrap().len(), 0, "an MBR disk of the same size is not touched");
    assert_eq!(d["disks"][0]["bytes_written"], 64 * MIB);
    let states: Vec<&str> = d["history"].as_array().unwrap().iter().map(|e| e["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["Waiting", "Running", "Finished"]);

    // The read-only viewer token reaches neither the target calls nor the disks' bytes.
    let viewer = std::fs::read_to_string(job.r.store.join("viewer.token")).unwrap();
    for (method, path) in [
        ("POST", "target/register"),
        ("POST", "target/fail"),
        ("GET", "disks/0/manifest"),
        ("GET", "disks/0/chunks/0/data"),
    ] {
        let out = Command::new("curl")
            .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-X", method])
            .args(if method == "POST" { &["-d", "{}"][..] } else { &[][..] })
            .args(["-H", &format!("Authorization: Bearer {}", viewer.trim())])
            .arg(format!("{}/api/v1/jobs/{}/{path}", job.r.url, job.id))
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "403", "viewer token on {method} {path}");
    }

    // A second pull writes nothing: the job is delivered.
    let before = b3sum(&same);
    assert_eq!(
        refused(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&big, &same], &[])),
        "already_delivered"
    );
    assert_eq!(b3sum(&same), before);
    // Restarting the job (the source sends again) starts the target side over.
    let out = ferry(&["job", "restart", "--store", job.r.store.to_str().unwrap(), &job.id]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(job.delivery().is_null(), "a restarted job keeps no delivery of the old copy");
    assert_eq!(
        refused(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&big, &same], &[])),
        "source_not_finished"
    );
    assert_eq!(b3sum(&same), before);
    // The source token cannot read disks back.
    let out = Command::new(FERRY)
        .args(["pull", "--server", &job.r.url, "--job", &job.id, "--token", &job.token, "--pin", &job.r.pin().unwrap()])
        .arg("--to")
        .arg(&same)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("forbidden"), "{}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn a_disk_sent_in_pages_is_pulled_a_page_at_a_time_and_read_back_whole() {
    let t = tempfile::tempdir().unwrap();
    // 16 MiB in 64 KiB chunks, 16 ids a page: 16 pages, the GPT's backup header in the last.
    let src = t.path().join("src.img");
    gpt_source(&src, 16 * MIB, 5);
    let paging = ["--chunk-size", "65536", "--chunks-per-page", "16"];
    let job = finished_job_sent_with(t.path(), &[&src], &["--target-machine", "TGT-1", "--allow-wipe"], &paging);
    let head: serde_json::Value =
        serde_json::from_slice(&std::fs::read(job.r.store.join("manifests").join(&job.id).join("0.json")).unwrap())
            .unwrap();
    assert_eq!(head["pages"]["cvs"].as_array().unwrap().len(), 16, "the disk went in pages");
    let target = t.path().join("target.img");
    used_disk(&target, 16 * MIB);
    let out = pulled(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&target], &[]));
    assert_eq!(out["disks"][0]["blake3"].as_str().unwrap(), b3sum(&src));
    assert!(files_equal(&target, &src), "the target differs from the source");
    assert_eq!(job.delivery()["state"], "Finished", "{}", job.delivery());
    assert!(sgdisk(&target, &["-v"]).contains("No problems found"));
}

#[test]
fn every_refusal_leaves_the_target_unchanged() {
    let t = tempfile::tempdir().unwrap();
    let (src0, src1) = (t.path().join("src0.img"), t.path().join("src1.img"));
    gpt_source(&src0, 32 * MIB, 3);
    gpt_source(&src1, 16 * MIB, 4);
    let job = finished_job(t.path(), &[&src0, &src1], &["--target-machine", "TGT-1"]);
    let (t0, t1, small) = (t.path().join("t0.img"), t.path().join("t1.img"), t.path().join("small.img"));
    used_disk(&t0, 32 * MIB);
    used_disk(&t1, 16 * MIB);
    used_disk(&small, 8 * MIB);
    let clone = t.path().join("clone.img");
    std::fs::copy(&src0, &clone).unwrap();
    let hashes = |files: &[&Path]| files.iter().map(|f| b3sum(f)).collect::<Vec<_>>();
    let all = [&*t0, &*t1, &*small, &*clone, &*src0, &*src1];
    let before = hashes(&all);
    let tgt = machine(t.path(), "TGT-1", None, PRODUCT);

    assert_eq!(refused(&job.pull(&tgt, &[&t0, &t1], &[])), "wipe_not_allowed");
    assert_eq!(job.delivery()["error_code"], "wipe_not_allowed");
    job.set_target(&["--target-machine", "TGT-1", "--allow-wipe"]);
    // (what, machine, targets, extra args, code)
    type Case<'a> = (&'a str, PathBuf, Vec<&'a Path>, Vec<&'a str>, &'a str);
    let cases: Vec<Case> = vec![
        ("another machine", machine(t.path(), "OTHER-9", None, PRODUCT), vec![&t0, &t1], vec![], "wrong_target"),
        ("fewer disks", tgt.clone(), vec![&t0], vec![], "too_few_disks"),
        ("a smaller disk", tgt.clone(), vec![&t0, &small], vec![], "disk_too_small"),
        ("4K sectors", tgt.clone(), vec![&t0, &t1], vec!["--sector-size", "4096"], "sector_size_mismatch"),
        ("a disk of the source", tgt.clone(), vec![&clone, &t1], vec![], "target_is_source"),
    ];
    for (what, sys, to, extra, code) in &cases {
        assert_eq!(refused(&job.pull(sys, to, extra)), *code, "{what}");
        assert_eq!(job.delivery()["error_code"], *code, "{what}: recorded in the job");
        assert_eq!(hashes(&all), before, "{what}: a refusal changed a disk");
    }
    // The source machine itself, even when the operator names it as the target.
    job.set_target(&["--target-machine", "SRC-1", "--allow-wipe"]);
    assert_eq!(refused(&job.pull(&machine(t.path(), "SRC-1", None, PRODUCT), &[&t0, &t1], &[])), "target_is_source");
    assert_eq!(hashes(&all), before);

    // A job whose source has not finished: the target waits, then gives up without writing. The
    // machine checks come first: without the wipe permission it is told that at once.
    let (waiting, _, waiting_token) = job.r.create_instance_job("x", &["--target-machine", "TGT-1"]);
    assert_eq!(refused(&pull(&job.r, &waiting, &waiting_token, &tgt, &[&t0, &t1], &[])), "wipe_not_allowed");
    let (waiting, _, waiting_token) = job.r.create_instance_job("y", &["--target-machine", "TGT-1", "--allow-wipe"]);
    assert_eq!(refused(&pull(&job.r, &waiting, &waiting_token, &tgt, &[&t0, &t1], &[])), "source_not_finished");
    assert_eq!(hashes(&all), before);

    // After all that, the right machine gets the disks.
    job.set_target(&["--target-machine", "TGT-1", "--allow-wipe"]);
    pulled(&job.pull(&tgt, &[&t0, &t1], &[]));
    assert!(files_equal(&t0, &src0) && files_equal(&t1, &src1));
    assert_eq!(job.delivery()["state"], "Finished");
}

#[test]
fn a_killed_pull_leaves_no_table_and_the_next_one_finishes() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_source(&src, 256 * MIB, 5);
    write_at(&src, 100 * MIB, &pseudo_random(100 * MIB as usize, 6));
    let job = finished_job(t.path(), &[&src], &["--target-machine", "TGT-1", "--allow-wipe"]);
    let target = t.path().join("target.img");
    used_disk(&target, 256 * MIB);
    let tgt = machine(t.path(), "TGT-1", None, PRODUCT);

    let mut child = Command::new(FERRY)
        .args(["pull", "--server", &job.r.url, "--job", &job.id, "--token", &job.target_token])
        .args(["--pin", &job.r.pin().unwrap(), "--in-flight", "2", "--to"])
        .arg(&target)
        .env("FERRY_SYS_ROOT", &tgt)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    // Kill it as soon as two whole data chunks landed (chunks 25 and 26, 100-108 MiB: their
    // last bytes are the source's), long before the last one.
    let file = std::fs::File::open(&target).unwrap();
    let source = std::fs::File::open(&src).unwrap();
    let landed = wait_until(Duration::from_secs(60), || {
        use std::os::unix::fs::FileExt;
        [104 * MIB - 16, 108 * MIB - 16].iter().all(|&at| {
            let (mut b, mut want) = ([0u8; 16], [0u8; 16]);
            file.read_exact_at(&mut b, at).unwrap();
            source.read_exact_at(&mut want, at).unwrap();
            b == want
        })
    });
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(landed, "the pull never wrote a data chunk");
    assert!(!status.success(), "the pull finished before it could be killed; the test proves nothing");

    // Half a disk: no partition table anywhere a firmware would look.
    let inspect = ferry(&["inspect", "--json", target.to_str().unwrap()]);
    let v: serde_json::Value = serde_json::from_slice(&inspect.stdout).unwrap();
    assert_eq!(v["disks"][0]["partition_table"]["kind"], "none", "{v}");
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes[..1024].iter().all(|&b| b == 0), "LBA 0-1 (MBR, GPT header) are written last");
    assert!(bytes[bytes.len() - 512..].iter().all(|&b| b == 0), "so is the backup GPT header");

    // The next pull keeps what the killed one wrote (each chunk found on the disk with its id)
    // and pulls only the rest over the network.
    let served = |r: &Receiver| -> u64 {
        let out = Command::new("curl").args(["-sk", &format!("{}/metrics", r.url)]).output().unwrap();
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = text.lines().find(|l| l.starts_with("ferry_chunk_bytes_served_total ")).expect("served metric");
        line.rsplit(' ').next().unwrap().parse().unwrap()
    };
    let before = served(&job.r);
    let out = pulled(&job.pull(&tgt, &[&target], &[]));
    assert!(files_equal(&target, &src));
    let reused = out["disks"][0]["reused_chunks"].as_u64().unwrap();
    // 64 chunks of 4 MiB; 27 hold data (chunk 0 with the GPT, chunks 25-49, chunk 63 with the
    // backup GPT), 108 MiB in all. Only data chunks are kept (zeros are always written), chunk
    // 0 never (its table was cleared), and the killed pull had written chunks 25 and 26 whole.
    assert!((2..27).contains(&reused), "reused {reused} chunks: {out}");
    let pulled_bytes = served(&job.r) - before;
    assert_eq!(pulled_bytes, (27 - reused) * 4 * MIB, "every chunk not kept is pulled, once");
    assert_eq!(job.delivery()["state"], "Finished");
    assert_eq!(job.delivery()["disks"][0]["reused_chunks"].as_u64(), Some(reused));
}

#[test]
fn a_corrupt_stored_chunk_is_never_written_and_clears_the_table() {
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_source(&src, 32 * MIB, 7);
    let job = finished_job(t.path(), &[&src], &["--target-machine", "TGT-1", "--allow-wipe"]);
    // Flip a byte in every stored chunk: the receiver's disk went bad after verification.
    let mut originals = vec![];
    for dir in std::fs::read_dir(job.r.store.join("chunks")).unwrap() {
        for f in std::fs::read_dir(dir.unwrap().path()).unwrap() {
            let p = f.unwrap().path();
            let mut bytes = std::fs::read(&p).unwrap();
            originals.push((p.clone(), bytes.clone()));
            bytes[100] ^= 0xff;
            std::fs::write(&p, bytes).unwrap();
        }
    }
    assert!(!originals.is_empty());
    let target = t.path().join("target.img");
    used_disk(&target, 32 * MIB);
    assert_eq!(refused(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&target], &[])), "chunk_corrupt");
    let d = job.delivery();
    assert_eq!((d["state"].as_str(), d["error_code"].as_str()), (Some("InError"), Some("chunk_corrupt")));
    let bytes = std::fs::read(&target).unwrap();
    assert!(bytes[..MIB as usize].iter().all(|&b| b == 0), "the table area must be cleared");
    assert!(bytes[bytes.len() - MIB as usize..].iter().all(|&b| b == 0), "the backup area must be cleared");

    // The store is repaired; the disk meanwhile carries the source's GPT (as after a power cut
    // between the tables and the report). The same machine rewriting its own delivery is not
    // mistaken for the source; another job's fresh target with that disk would be.
    for (p, bytes) in &originals {
        std::fs::write(p, bytes).unwrap();
    }
    std::fs::copy(&src, &target).unwrap();
    pulled(&job.pull(&machine(t.path(), "TGT-1", None, PRODUCT), &[&target], &[]));
    assert!(files_equal(&target, &src));
    assert_eq!(job.delivery()["state"], "Finished");
}
