//! Test support for the transport tests: a real `ferry serve` on 127.0.0.1, the `ferry` CLI,
//! and disk images with known content.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const FERRY: &str = env!("CARGO_BIN_EXE_ferry");

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
        let mut cmd = Command::new(FERRY);
        cmd.args(["serve", "--store"]).arg(store).args(["--listen", &format!("127.0.0.1:{port}")]).args(extra);
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

pub fn count_files(dir: &Path) -> usize {
    let Ok(rd) = std::fs::read_dir(dir) else { return 0 };
    rd.filter_map(Result::ok).map(|e| if e.path().is_dir() { count_files(&e.path()) } else { 1 }).sum()
}

pub fn ferry(args: &[&str]) -> Output {
    Command::new(FERRY).args(args).output().unwrap()
}

/// Parses `ferry send --json` output and checks it exited 0.
pub fn sent(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "send failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Deterministic incompressible bytes (xorshift64*), different for every seed.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        out.extend_from_slice(&x.wrapping_mul(0x2545F4914F6CDD1D).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Writes `data` at `offset` into `path`.
pub fn write_at(path: &Path, offset: u64, data: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.write_all_at(data, offset).unwrap();
}

/// A file of `size` bytes of random data.
pub fn random_image(path: &Path, size: usize, seed: u64) {
    std::fs::write(path, pseudo_random(size, seed)).unwrap();
}

/// `b3sum` of a file (the BLAKE3 team's CLI).
pub fn b3sum(path: &Path) -> String {
    let out = Command::new("b3sum").arg("--no-names").arg(path).output().expect("b3sum is installed by scripts/setup");
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap().trim().to_string()
}

pub fn files_equal(a: &Path, b: &Path) -> bool {
    Command::new("cmp").arg("-s").arg(a).arg(b).status().unwrap().success()
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
