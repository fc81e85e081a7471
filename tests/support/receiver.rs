//! A real `ferry serve` on 127.0.0.1 and what the tests ask of it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use super::cmd::{ferry, FERRY};
use super::data::{b3sum, count_files};

/// A receiver process on loopback; killed (SIGKILL) when dropped.
pub struct Receiver {
    pub child: Child,
    pub store: PathBuf,
    pub url: String,
    pub port: u16,
    pub plain: bool,
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

impl Receiver {
    pub fn start(store: &Path, plain: bool) -> Self {
        Self::start_on(store, plain, free_port())
    }

    pub fn start_on(store: &Path, plain: bool, port: u16) -> Self {
        Self::start_with(store, plain, port, &[])
    }

    pub fn start_with(store: &Path, plain: bool, port: u16, extra: &[&str]) -> Self {
        Self::start_custom(store, plain, port, extra, &[], &[])
    }

    /// `ferry serve` run through `wrapper` (e.g. `prlimit --nofile=256:256 --`, which execs it:
    /// the child's pid is the receiver's), with `env` set.
    pub fn start_custom(
        store: &Path,
        plain: bool,
        port: u16,
        extra: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        Self::start_at(store, plain, &format!("127.0.0.1:{port}"), extra, wrapper, env)
    }

    /// [`Receiver::start_custom`] listening on `listen` (`ADDR:PORT`), e.g. inside a network
    /// namespace made by the test (with `wrapper` `ip netns exec NS`).
    pub fn start_at(
        store: &Path,
        plain: bool,
        listen: &str,
        extra: &[&str],
        wrapper: &[&str],
        env: &[(&str, &str)],
    ) -> Self {
        let port = listen.rsplit(':').next().and_then(|p| p.parse().ok()).expect("ADDR:PORT");
        let mut cmd = match wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(FERRY);
                c
            }
            None => Command::new(FERRY),
        };
        cmd.envs(env.iter().copied());
        cmd.args(["serve", "--store"]).arg(store).args(["--listen", listen]).args(extra);
        if plain {
            cmd.arg("--plain-http");
        }
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start ferry serve");
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        // The boot listeners announce themselves first; then the receiver says where it listens.
        let first = lines
            .by_ref()
            .map_while(Result::ok)
            .find(|l| l.contains("listening on"))
            .expect("ferry serve ended without saying where it listens");
        let url = first.rsplit(' ').next().unwrap().to_string();
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines.by_ref() {});
        Receiver { child, store: store.to_owned(), url, port, plain }
    }

    pub fn pin(&self) -> Option<String> {
        let info: serde_json::Value =
            serde_json::from_slice(&std::fs::read(self.store.join("receiver.json")).unwrap()).unwrap();
        info["pin"].as_str().map(str::to_string)
    }

    pub fn admin_token(&self) -> String {
        std::fs::read_to_string(self.store.join("admin.token")).unwrap().trim().to_string()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// `ferry job create`; returns (id, token).
    pub fn create_job(&self, name: &str) -> (String, String) {
        let out = ferry(&["job", "create", "--store", self.store.to_str().unwrap(), "--name", name, "--json"]);
        assert!(out.status.success(), "job create failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (v["id"].as_str().unwrap().to_string(), v["token"].as_str().unwrap().to_string())
    }

    /// `ferry job create --target instance` with `spec` flags; returns (id, token, target token).
    pub fn create_instance_job(&self, name: &str, spec: &[&str]) -> (String, String, String) {
        let store = self.store.to_str().unwrap();
        let mut args = vec!["job", "create", "--store", store, "--name", name, "--target", "instance", "--json"];
        args.extend_from_slice(spec);
        let out = ferry(&args);
        assert!(out.status.success(), "job create failed: {}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let field = |k: &str| v[k].as_str().unwrap_or_else(|| panic!("no {k} in {v}")).to_string();
        (field("id"), field("token"), field("target_token"))
    }

    pub fn job(&self, id: &str) -> serde_json::Value {
        let out = ferry(&["job", "show", "--store", self.store.to_str().unwrap(), id, "--json"]);
        assert!(out.status.success(), "job show failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// How many jobs the receiver has (`ferry job list`).
    pub fn job_count(&self) -> usize {
        let out = ferry(&["job", "list", "--store", self.store.to_str().unwrap(), "--json"]);
        assert!(out.status.success(), "job list failed: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<Vec<serde_json::Value>>(&out.stdout).unwrap().len()
    }

    /// The arguments of `ferry send` for this receiver and job.
    pub fn send_args(&self, id: &str, token: &str) -> Vec<String> {
        let mut a: Vec<String> =
            ["send", "--server", &self.url, "--job", id, "--token", token].iter().map(|s| s.to_string()).collect();
        match self.pin() {
            Some(p) if !self.plain => a.extend(["--pin".to_string(), p]),
            _ => a.push("--plain-http".into()),
        }
        a
    }

    pub fn send(&self, id: &str, token: &str, images: &[&Path], extra: &[&str]) -> Output {
        let mut cmd = Command::new(FERRY);
        cmd.args(self.send_args(id, token)).args(extra).arg("--json").args(images);
        cmd.output().unwrap()
    }

    /// The receiver's peak resident memory so far (VmHWM), in bytes.
    pub fn peak_memory(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let kib = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).expect("VmHWM in /proc/PID/status");
        kib.trim().trim_end_matches("kB").trim().parse::<u64>().unwrap() * 1024
    }

    /// Chunk files in the store.
    pub fn stored_chunks(&self) -> usize {
        count_files(&self.store.join("chunks"))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Parses `ferry send --json` output and checks it exited 0.
pub fn sent(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "send failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// `ferry export` of disk `disk` of job `job` into `dir`: the b3sum of the exported image
/// (removed again).
pub fn export_b3sum(r: &Receiver, job: &str, disk: u64, dir: &Path) -> String {
    let out = dir.join(format!("export-{job}-{disk}.img"));
    let ex = ferry(&[
        "export",
        "--store",
        r.store.to_str().unwrap(),
        "--job",
        job,
        "--disk",
        &disk.to_string(),
        "--to",
        out.to_str().unwrap(),
    ]);
    assert!(ex.status.success(), "export: {}", String::from_utf8_lossy(&ex.stderr));
    let sum = b3sum(&out);
    let _ = std::fs::remove_file(out);
    sum
}
