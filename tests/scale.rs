//! Scale-out on real engines, all on 127.0.0.1: chunks and manifests in a 3-node Garage cluster
//! (replication factor 3, fsync on), jobs in a throwaway PostgreSQL 15 cluster, two receivers
//! sharing one TLS identity behind haproxy in TCP mode. Sources and targets know one address.
//! Run by scripts/test (`--ignored`): Garage, PostgreSQL and haproxy come from scripts/setup.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::scaled::*;
use support::*;

const MIB: usize = 1 << 20;

/// Two receivers on the shared engines, and haproxy in front.
struct Wave {
    garage: Garage,
    pg: Postgres,
    a: Receiver,
    b: Receiver,
    proxy: Haproxy,
    /// Receiver A's S3 configuration (what `ferry export` and `store verify` read too).
    s3: PathBuf,
}

fn shared_args<'a>(s3: &'a Path, db: &'a str) -> Vec<&'a str> {
    vec!["--s3-config", s3.to_str().unwrap(), "--db", db]
}

impl Wave {
    fn start(dir: &Path) -> Self {
        let garage = Garage::start(&dir.join("garage"));
        let pg = Postgres::start(dir);
        let url = pg.url();
        let s3 = garage.ferry_config(dir, 0);
        let a = Receiver::start_with(&dir.join("a"), false, free_port(), &shared_args(&s3, &url));
        // Receiver B gets A's identity and tokens, as the docs say to copy them: one pin, one
        // admin token for the whole wave.
        let b_store = dir.join("b");
        std::fs::create_dir_all(&b_store).unwrap();
        for f in ["tls", "admin.token", "viewer.token"] {
            run("cp", &["-a", a.store.join(f).to_str().unwrap(), b_store.to_str().unwrap()]);
        }
        let s3b = garage.ferry_config(dir, 1);
        let b = Receiver::start_with(&b_store, false, free_port(), &shared_args(&s3b, &url));
        assert_eq!(a.pin(), b.pin(), "both receivers have one identity");
        let proxy = Haproxy::start(dir, &[a.port, b.port]);
        Wave { garage, pg, a, b, proxy, s3 }
    }

    /// `ferry send` through haproxy.
    fn sender(&self, job: &str, token: &str, image: &Path, extra: &[&str]) -> Child {
        Command::new(FERRY)
            .args(["send", "--server", &self.proxy.url(), "--pin", &self.a.pin().unwrap()])
            .args(["--job", job, "--token", token, "--chunk-size", "1M", "--retry-for", "180", "--json"])
            .args(extra)
            .arg(image)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }

    fn export_b3sum(&self, job: &str, dir: &Path) -> String {
        let out = dir.join(format!("{job}.img"));
        let a = self.a.store.to_str().unwrap();
        let args = ["export", "--store", a, "--s3-config", self.s3.to_str().unwrap(), "--job", job, "--disk", "0"];
        let ex = ferry(&[&args[..], &["--to", out.to_str().unwrap()]].concat());
        assert!(ex.status.success(), "export: {}", String::from_utf8_lossy(&ex.stderr));
        let sum = b3sum(&out);
        std::fs::remove_file(out).unwrap();
        sum
    }

    fn state(&self, job: &str) -> String {
        self.pg.psql(&format!("SELECT state FROM jobs WHERE id = '{job}'")).trim().to_string()
    }
}

/// `ferry_chunks_received_total` from a receiver's `/metrics`.
fn chunks_received(r: &Receiver) -> u64 {
    let text = run("curl", &["-sk", &format!("{}/metrics", r.url)]);
    let line = text.lines().find(|l| l.starts_with("ferry_chunks_received_total")).expect("the chunk counter");
    line.rsplit(' ').next().unwrap().parse::<f64>().unwrap() as u64
}

/// Eight sources through both receivers (two of them clones of one image); mid-wave one Garage
/// node and receiver B are killed with SIGKILL. No source is restarted: each `ferry send`
/// carries on through haproxy to receiver A, and every job ends Finished with its export equal
/// to its source; the clones' chunks are kept once; after the node is back, `ferry store
/// verify` finds the bucket whole.
#[test]
#[ignore = "starts Garage, PostgreSQL and haproxy; run by scripts/test"]
fn a_wave_through_two_receivers_survives_a_dead_node_and_a_dead_receiver() {
    let t = tempfile::tempdir().unwrap();
    let mut w = Wave::start(t.path());
    const SOURCES: usize = 8;
    const IMAGE: usize = 16 * MIB;
    let images: Vec<PathBuf> = (0..SOURCES)
        .map(|i| {
            let p = t.path().join(format!("src{i}.img"));
            // Sources 6 and 7 are clones of one template.
            std::fs::write(&p, pseudo_random(IMAGE, 1000 + i.min(6) as u64)).unwrap();
            p
        })
        .collect();
    let jobs: Vec<(String, String)> = (0..SOURCES).map(|i| w.a.create_job(&format!("wave-{i}"))).collect();
    let mut senders: Vec<Child> =
        jobs.iter().zip(&images).map(|((id, tok), img)| w.sender(id, tok, img, &["--bandwidth-limit", "1M"])).collect();

    // Once a quarter of the wave has arrived, a storage node and a receiver die.
    let total = (SOURCES * IMAGE) as u64;
    let received =
        || -> u64 { w.pg.psql("SELECT COALESCE(SUM(bytes_done), 0) FROM disks").trim().parse().unwrap_or(0) };
    assert!(wait_until(Duration::from_secs(120), || received() >= total / 4), "the wave never got going");
    // haproxy spread the wave: both receivers have taken chunks.
    for r in [&w.a, &w.b] {
        assert!(chunks_received(r) > 0, "receiver on port {} took no chunk", r.port);
    }
    w.garage.nodes[2].kill();
    w.b.kill();
    eprintln!("killed garage node 2 and receiver B with {} of {total} bytes done", received());

    let started = Instant::now();
    let summaries: Vec<serde_json::Value> = senders
        .iter_mut()
        .map(|c| {
            let out = std::mem::replace(c, Command::new("true").spawn().unwrap()).wait_with_output().unwrap();
            sent(&out)
        })
        .collect();
    eprintln!("the wave finished {:.1} s after the kills", started.elapsed().as_secs_f64());
    for (i, ((id, _), s)) in jobs.iter().zip(&summaries).enumerate() {
        assert_eq!(w.state(id), "Finished", "job {i}");
        let disk = &s["disks"][0];
        assert_eq!(disk["blake3"].as_str().unwrap(), b3sum(&images[i]), "source {i}");
        // An acknowledged chunk is never sent again: each chunk went out at most once.
        assert!(disk["sent_chunks"].as_u64().unwrap() <= disk["chunks"].as_u64().unwrap(), "source {i}: {s:#}");
        assert_eq!(w.export_b3sum(id, t.path()), b3sum(&images[i]), "export of source {i}");
    }
    // The clones share every chunk: 7 distinct images of 12 chunks, and a manifest per job.
    let want = 7 * (IMAGE / MIB) as u64 + SOURCES as u64;
    let mut objects = 0;
    assert!(
        wait_until(Duration::from_secs(60), || {
            objects = w.garage.object_count(0);
            objects == want
        }),
        "the bucket holds {objects} objects, not {want}"
    );

    w.garage.nodes[2].restart();
    let a = w.a.store.to_str().unwrap();
    let verify =
        ferry(&["store", "verify", "--store", a, "--s3-config", w.s3.to_str().unwrap(), "--db", &w.pg.url(), "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verify.status.code(), Some(0), "{report:#}");
    assert_eq!(report["chunks_checked"], 7 * (IMAGE / MIB) as u64);
    assert_eq!(report["manifests_checked"].as_array().unwrap().len(), SOURCES);
}

/// A target pulls a job through haproxy, from receivers that hold nothing of their own: the
/// disk comes out of the bucket, is written, read back and verified.
#[test]
#[ignore = "starts Garage, PostgreSQL and haproxy; run by scripts/test"]
fn a_target_pulls_from_the_scaled_receivers() {
    let t = tempfile::tempdir().unwrap();
    let w = Wave::start(t.path());
    let src = t.path().join("src.img");
    // 20 chunks of 1 MiB in pages of 16: the manifest goes in two pages, kept in the bucket.
    std::fs::write(&src, pseudo_random(20 * MIB, 77)).unwrap();
    let (id, token, target_token) = w.a.create_instance_job("db01", &["--target-machine", "TGT-1", "--allow-wipe"]);
    let mut send = w.sender(&id, &token, &src, &["--chunks-per-page", "16"]);
    assert!(send.wait().unwrap().success());
    assert_eq!(w.export_b3sum(&id, t.path()), b3sum(&src), "the export, its pages read from the bucket");
    let a = w.a.store.to_str().unwrap();
    let verify =
        ferry(&["store", "verify", "--store", a, "--s3-config", w.s3.to_str().unwrap(), "--job", &id, "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&verify.stdout).unwrap();
    assert_eq!(verify.status.code(), Some(0), "{report:#}");
    assert_eq!(report["chunks_checked"], 20, "{report:#}");
    let target = t.path().join("target.img");
    std::fs::File::create(&target).unwrap().set_len(24 * MIB as u64).unwrap();
    let sys = machine(t.path(), "TGT-1", None, Some("Test Machine"));
    let out = Command::new(FERRY)
        .args(["pull", "--server", &w.proxy.url(), "--pin", &w.a.pin().unwrap(), "--job", &id])
        .args(["--token", &target_token, "--json", "--retry-for", "30", "--to"])
        .arg(&target)
        .env("FERRY_SYS_ROOT", &sys)
        .output()
        .unwrap();
    assert!(out.status.success(), "pull: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(w.state(&id), "Finished");
    // The first 20 MiB of the target are the source's bytes.
    let written = read_at(&target, 0, 20 * MIB);
    assert!(written == std::fs::read(&src).unwrap(), "the target does not hold the source's bytes");
    // The receipt, from the other receiver: the target's read-back hash is the source's, and
    // its check command gives that hash from the target disk with b3sum.
    let receipt = ferry(&["job", "receipt", "--store", w.b.store.to_str().unwrap(), &id, "--json"]);
    let receipt: serde_json::Value = serde_json::from_slice(&receipt.stdout).unwrap();
    let disk = &receipt["disks"][0];
    assert_eq!(disk["blake3"].as_str().unwrap(), b3sum(&src));
    assert_eq!(disk["target_blake3"], disk["blake3"]);
    assert_eq!(receipt["target_machine"]["serial"], "TGT-1");
    let check = run("sh", &["-c", disk["check"].as_str().unwrap()]);
    assert_eq!(check.split_whitespace().next(), disk["blake3"].as_str(), "{check}");
}

/// Two receivers racing one job's transitions, as their database connections do: a source
/// finishing through one while an operator cancels through the other, on real PostgreSQL, many
/// times over. Each time exactly one wins, the job is in that state, and its history records
/// that transition and no other. Then two machines enroll at once, through the two
/// receivers, into an enrollment capped at one machine: exactly one gets a job.
#[test]
#[ignore = "starts PostgreSQL; run by scripts/test"]
fn racing_transitions_on_two_receivers_never_leave_a_job_in_two_states() {
    use ferry::server::db::{Db, Enrolled, NewJobIds};
    use ferry::wire::{CreateEnrollment, CreateJob, JobState, TargetKind};
    let t = tempfile::tempdir().unwrap();
    let pg = Postgres::start(t.path());
    let (a, b) = (Db::open_postgres(&pg.url()).unwrap(), Db::open_postgres(&pg.url()).unwrap());
    let new_job = |name: &str| CreateJob {
        name: name.into(),
        target: TargetKind::Image,
        options: Default::default(),
        client_token: None,
        target_spec: None,
    };
    let mut wins = std::collections::BTreeMap::<&str, u32>::new();
    for round in 0..60 {
        let id = format!("race{round:03}");
        a.create_job(&new_job(&id), &id, "hash", None).unwrap();
        assert!(b.transition(&id, &[JobState::Waiting], JobState::Running, None, None).unwrap());
        let barrier = std::sync::Barrier::new(2);
        let (finished, cancelled) = std::thread::scope(|s| {
            let f = s.spawn(|| {
                barrier.wait();
                a.transition(&id, &[JobState::Running], JobState::Finished, None, None).unwrap()
            });
            let c = s.spawn(|| {
                barrier.wait();
                let live = [JobState::Waiting, JobState::Running, JobState::InError];
                b.transition(&id, &live, JobState::Cancelled, None, None).unwrap()
            });
            (f.join().unwrap(), c.join().unwrap())
        });
        assert!(finished ^ cancelled, "round {round}: finish {finished}, cancel {cancelled}");
        let job = a.job(&id).unwrap().unwrap();
        let history: Vec<&str> = job.history.iter().map(|e| e.state.as_str()).collect();
        let winner = if finished { "Finished" } else { "Cancelled" };
        assert_eq!(job.state.as_str(), winner, "round {round}");
        assert_eq!(history, ["Waiting", "Running", winner], "round {round}");
        *wins.entry(winner).or_default() += 1;
    }
    eprintln!("finish against cancel, 60 races: {wins:?}");

    // A statement failing inside a transaction, on a receiver's async worker: the transaction
    // rolls back and the call is an error, never a panic of the runtime.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let c = std::sync::Arc::new(Db::open_postgres(&pg.url()).unwrap());
    let on_worker = {
        let (c, job) = (c.clone(), new_job("race000"));
        rt.spawn(async move { c.create_job(&job, "race000", "hash", None).map(|_| ()).map_err(|e| format!("{e:#}")) })
    };
    let e = rt.block_on(on_worker).expect("no panic on the worker").expect_err("a second job with one id");
    assert!(e.contains("PostgreSQL"), "{e}");
    // ...and the connection goes on working.
    let history =
        rt.block_on(rt.spawn(async move { c.job("race000").map(|j| j.unwrap().history.len()).unwrap() })).unwrap();
    assert_eq!(history, 3);

    let req = CreateEnrollment {
        name: "cap".into(),
        target: TargetKind::Image,
        options: Default::default(),
        max_jobs: Some(1),
    };
    let e = a.create_enrollment(&req, "enr1", "enrollment-hash").unwrap();
    let token_for = |id: &str| format!("token-of-{id}");
    let barrier = std::sync::Barrier::new(2);
    let enroll = |db: &Db, machine: &str, id: &str| {
        barrier.wait();
        let ids = NewJobIds { id, target_token: None };
        matches!(db.enrolled_job(&e, machine, true, &new_job(id), ids, &token_for).unwrap(), Enrolled::Job(_, true))
    };
    let got: Vec<bool> = std::thread::scope(|s| {
        let one = s.spawn(|| enroll(&a, "serial:M1", "enrolled1"));
        let two = s.spawn(|| enroll(&b, "serial:M2", "enrolled2"));
        vec![one.join().unwrap(), two.join().unwrap()]
    });
    assert_eq!(got.iter().filter(|g| **g).count(), 1, "a cap of one machine let in {got:?}");
    assert_eq!(pg.psql("SELECT COUNT(*) FROM jobs WHERE enrollment = 'enr1'").trim(), "1");
}

/// One set of migrations makes the same tables and columns on both engines, as each engine's
/// own client lists them (sqlite3, psql).
#[test]
#[ignore = "starts PostgreSQL; run by scripts/test"]
fn both_engines_get_the_same_tables_from_one_set_of_migrations() {
    let t = tempfile::tempdir().unwrap();
    let pg = Postgres::start(t.path());
    drop(ferry::server::db::Db::open_postgres(&pg.url()).unwrap());
    let sqlite = t.path().join("jobs.sqlite");
    drop(ferry::server::db::Db::open(&sqlite).unwrap());
    let tables = ["disks", "enrollments", "job_events", "job_logs", "jobs"];
    for table in tables {
        let lite =
            run("sqlite3", &[sqlite.to_str().unwrap(), &format!("SELECT name FROM pragma_table_info('{table}')")]);
        let mut lite: Vec<&str> = lite.lines().collect();
        // PostgreSQL has no implicit rowid: the insertion order is a column of that name.
        if matches!(table, "jobs" | "enrollments") {
            lite.push("rowid");
        }
        lite.sort_unstable();
        let post = pg.psql(&format!(
            "SELECT column_name FROM information_schema.columns WHERE table_name = '{table}' ORDER BY column_name"
        ));
        let post: Vec<&str> = post.lines().collect();
        assert_eq!(lite, post, "table {table}");
    }
    assert_eq!(
        pg.psql("SELECT version FROM ferry_schema").trim(),
        run("sqlite3", &[sqlite.to_str().unwrap(), "PRAGMA user_version"]).trim()
    );
}

/// `curl -sk` to a receiver: (HTTP status, body).
fn curl(url: &str, token: &str, args: &[&str]) -> (String, String) {
    let out = Command::new("curl")
        .args(["-sk", "-w", "\n%{http_code}", "-H", &format!("Authorization: Bearer {token}")])
        .args(args)
        .arg(url)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, status) = text.rsplit_once('\n').unwrap();
    (status.to_string(), body.to_string())
}

/// The same race through the receivers' HTTP API: a source's `finish` sent to receiver A while
/// the operator's `ferry job cancel` goes to receiver B, with every disk verified. Whichever
/// wins, the other is refused, and the job's history holds the winner alone.
#[test]
#[ignore = "starts Garage, PostgreSQL and haproxy; run by scripts/test"]
fn finish_on_one_receiver_racing_cancel_on_the_other() {
    let t = tempfile::tempdir().unwrap();
    let w = Wave::start(t.path());
    const SIZE: usize = 65536;
    let disk = t.path().join("disk.img");
    std::fs::write(&disk, pseudo_random(SIZE, 3)).unwrap();
    let manifest = ferry(&["hash", "--chunk-size", "64K", "--json", disk.to_str().unwrap()]);
    assert!(manifest.status.success());
    let manifest_file = t.path().join("manifest.json");
    std::fs::write(&manifest_file, &manifest.stdout).unwrap();
    let id_hex = b3sum(&disk);
    let a = format!("https://127.0.0.1:{}/api/v1/jobs", w.a.port);
    let identity = format!(
        r#"{{"path": "/dev/vda", "kind": "block", "size": {SIZE}, "logical_sector_size": 512, "physical_sector_size": 512}}"#
    );
    let mut wins = std::collections::BTreeMap::<String, u32>::new();
    for round in 0..10 {
        let (id, token) = w.a.create_job(&format!("http-race-{round}"));
        let post = |path: &str, body: &str| {
            curl(
                &format!("{a}/{id}/{path}"),
                &token,
                &["-X", "POST", "-H", "Content-Type: application/json", "--data-binary", body],
            )
        };
        let (s, b) =
            post("register", &format!(r#"{{"machine": {{"serial": "RACE-{round}"}}, "disks": [{identity}]}}"#));
        assert_eq!(s, "200", "register: {b}");
        let begin = format!(
            r#"{{"identity": {identity}, "partition_table": {{"kind": "none", "sector_size": 512, "problems": [], "partitions": []}}, "size": {SIZE}, "chunk_size": {SIZE}}}"#
        );
        assert_eq!(post("disks/0/begin", &begin).0, "204");
        let put = curl(
            &format!("{a}/{id}/disks/0/chunks/0"),
            &token,
            &[
                "-X",
                "PUT",
                "-H",
                &format!("x-ferry-chunk-id: {id_hex}"),
                "--data-binary",
                &format!("@{}", disk.display()),
            ],
        );
        // New the first time; the same bytes at the same place are held from then on.
        let want = if round == 0 { "201" } else { "200" };
        assert_eq!(put.0, want, "round {round}: chunk: {}", put.1);
        let (s, b) = post("disks/0/complete", &format!("@{}", manifest_file.display()));
        assert_eq!(s, "200", "complete: {b}");
        let finish = {
            let (url, token) = (format!("{a}/{id}/finish"), token.clone());
            std::thread::spawn(move || curl(&url, &token, &["-X", "POST"]).0)
        };
        let cancel = {
            let (b, id) = (w.b.store.to_str().unwrap().to_string(), id.clone());
            std::thread::spawn(move || ferry(&["job", "cancel", "--store", &b, &id]).status.code())
        };
        let (finished, cancelled) = (finish.join().unwrap(), cancel.join().unwrap());
        let state = w.state(&id);
        let history =
            w.pg.psql(&format!("SELECT string_agg(state, ',' ORDER BY seq) FROM job_events WHERE job_id = '{id}'"));
        match state.as_str() {
            "Finished" => {
                assert_eq!(finished, "200", "round {round}");
                assert_ne!(cancelled, Some(0), "round {round}: a Finished job is not cancelled");
            }
            "Cancelled" => {
                assert_eq!(finished, "409", "round {round}: a cancelled job does not finish");
                assert_eq!(cancelled, Some(0), "round {round}");
            }
            other => panic!("round {round}: the job is {other}"),
        }
        assert_eq!(history.trim(), format!("Waiting,Running,{state}"), "round {round}");
        *wins.entry(state).or_default() += 1;
    }
    eprintln!("finish on A against cancel on B, 10 races: {wins:?}");
}
