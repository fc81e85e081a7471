//! The engines a scaled-out wave runs on, started for a test on 127.0.0.1: a 3-node Garage
//! cluster (replication factor 3, fsync on), a throwaway PostgreSQL 15 cluster, and haproxy
//! in TCP mode in front of several receivers. Each is stopped (SIGKILL) when dropped.
//! `scripts/setup` installs PostgreSQL and haproxy from Debian and builds Garage once
//! (`FERRY_GARAGE` or /var/cache/ferry/garage-2.5.0/bin/garage).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::cmd::run;
use super::data::wait_until;
use super::receiver::free_port;

/// The Garage binary the tests use.
pub fn garage_binary() -> PathBuf {
    std::env::var_os("FERRY_GARAGE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/ferry/garage-2.5.0/bin/garage"))
}

pub const BUCKET: &str = "ferry-chunks";

/// One Garage node.
pub struct GarageNode {
    pub config: PathBuf,
    pub s3_port: u16,
    child: Option<Child>,
}

impl GarageNode {
    fn start(&mut self) {
        let log = std::fs::File::create(self.config.with_extension("log")).unwrap();
        let child = Command::new(garage_binary())
            .args(["-c", self.config.to_str().unwrap(), "server"])
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start garage (scripts/setup builds it)");
        self.child = Some(child);
    }

    /// kill -9.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill();
        self.start();
    }

    /// `garage -c NODE ARGS...`, its stdout (asserted to succeed).
    pub fn cli(&self, args: &[&str]) -> String {
        let mut a = vec!["-c", self.config.to_str().unwrap()];
        a.extend_from_slice(args);
        run(garage_binary().to_str().unwrap(), &a)
    }

    fn try_cli(&self, args: &[&str]) -> Option<String> {
        let out = Command::new(garage_binary()).arg("-c").arg(&self.config).args(args).output().ok()?;
        out.status.success().then(|| String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Drop for GarageNode {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A 3-node Garage cluster with one bucket and one key that may read and write it.
pub struct Garage {
    pub nodes: Vec<GarageNode>,
    pub key_id: String,
    pub secret: String,
}

impl Garage {
    pub fn start(dir: &Path) -> Self {
        let secret: String = (0..32).map(|i| format!("{:02x}", (i * 37 + 11) as u8)).collect();
        let mut nodes = vec![];
        for n in 0..3 {
            let (s3, rpc, admin) = (free_port(), free_port(), free_port());
            let root = dir.join(format!("n{n}"));
            std::fs::create_dir_all(&root).unwrap();
            let config = root.join("garage.toml");
            std::fs::write(
                &config,
                format!(
                    "metadata_dir = \"{root}/meta\"\ndata_dir = \"{root}/data\"\ndb_engine = \"sqlite\"\n\
                     replication_factor = 3\nconsistency_mode = \"consistent\"\ncompression_level = \"none\"\n\
                     rpc_bind_addr = \"127.0.0.1:{rpc}\"\nrpc_public_addr = \"127.0.0.1:{rpc}\"\n\
                     rpc_secret = \"{secret}\"\ndata_fsync = true\nmetadata_fsync = true\n\
                     [s3_api]\ns3_region = \"garage\"\napi_bind_addr = \"127.0.0.1:{s3}\"\n\
                     root_domain = \".s3.garage.localhost\"\n[admin]\napi_bind_addr = \"127.0.0.1:{admin}\"\n",
                    root = root.display()
                ),
            )
            .unwrap();
            let mut node = GarageNode { config, s3_port: s3, child: None };
            node.start();
            nodes.push(node);
        }
        let ids: Vec<String> = nodes
            .iter()
            .map(|n| {
                let mut id = None;
                wait_until(Duration::from_secs(30), || {
                    id = n.try_cli(&["node", "id", "-q"]);
                    id.is_some()
                });
                id.expect("garage node id").trim().to_string()
            })
            .collect();
        for id in &ids[1..] {
            wait_until(Duration::from_secs(30), || nodes[0].try_cli(&["node", "connect", id]).is_some());
        }
        for id in &ids {
            let short = &id[..16];
            nodes[0].cli(&["layout", "assign", "-z", "dc1", "-c", "1G", short]);
        }
        nodes[0].cli(&["layout", "apply", "--version", "1"]);
        wait_until(Duration::from_secs(60), || nodes[0].try_cli(&["bucket", "create", BUCKET]).is_some());
        let key = nodes[0].cli(&["key", "create", "ferry-receiver"]);
        let field = |name: &str| {
            key.lines()
                .find(|l| l.trim_start().to_lowercase().starts_with(&name.to_lowercase()))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
                .unwrap_or_else(|| panic!("no {name} in garage's key create output:\n{key}"))
        };
        let (key_id, secret) = (field("Key ID"), field("Secret key"));
        nodes[0].cli(&["bucket", "allow", "--read", "--write", "--owner", BUCKET, "--key", "ferry-receiver"]);
        Garage { nodes, key_id, secret }
    }

    /// An S3 configuration file for ferry naming node `n`'s S3 endpoint, the secret in its own
    /// file beside it.
    pub fn ferry_config(&self, dir: &Path, n: usize) -> PathBuf {
        let secret_file = dir.join(format!("s3-secret-{n}"));
        std::fs::write(&secret_file, format!("{}\n", self.secret)).unwrap();
        let path = dir.join(format!("s3-{n}.toml"));
        std::fs::write(
            &path,
            format!(
                "endpoint = \"http://127.0.0.1:{}\"\nregion = \"garage\"\nbucket = \"{BUCKET}\"\nprefix = \"wave\"\n\
                 access_key_id = \"{}\"\nsecret_access_key_file = \"{}\"\n",
                self.nodes[n].s3_port,
                self.key_id,
                secret_file.display()
            ),
        )
        .unwrap();
        path
    }

    /// The number of objects in the bucket, as Garage itself counts them (`bucket info`).
    pub fn object_count(&self, node: usize) -> u64 {
        let info = self.nodes[node].cli(&["bucket", "info", BUCKET]);
        info.lines()
            .find(|l| l.trim_start().to_lowercase().starts_with("objects"))
            .and_then(|l| l.split_once(':'))
            .and_then(|(_, v)| v.split_whitespace().next()?.parse().ok())
            .unwrap_or_else(|| panic!("no object count in garage's bucket info:\n{info}"))
    }
}

/// A throwaway PostgreSQL 15 cluster (trust authentication on 127.0.0.1, fsync off: it is
/// thrown away) with a database `ferry` owned by user `ferry`.
pub struct Postgres {
    pub dir: PathBuf,
    pub port: u16,
}

const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

impl Postgres {
    pub fn start(dir: &Path) -> Self {
        // initdb refuses root: the cluster belongs to the postgres user, in a directory it can
        // reach.
        let dir = dir.join("pg");
        std::fs::create_dir_all(&dir).unwrap();
        let mut parent = Some(dir.as_path());
        while let Some(p) = parent {
            if p.starts_with(std::env::temp_dir()) && p != std::env::temp_dir() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            }
            parent = p.parent();
        }
        run("chown", &["postgres:", dir.to_str().unwrap()]);
        let port = free_port();
        let as_pg = |args: &[&str]| {
            let mut a = vec!["-u", "postgres", "--"];
            a.extend_from_slice(args);
            run("runuser", &a);
        };
        let data = dir.join("data");
        let d = data.to_str().unwrap();
        as_pg(&[
            &format!("{PG_BIN}/initdb"),
            "-D",
            d,
            "-U",
            "ferry",
            "--auth=trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "-N",
        ]);
        let opts = format!(
            "-c listen_addresses=127.0.0.1 -p {port} -k {} -c fsync=off -c synchronous_commit=off",
            dir.display()
        );
        let log = dir.join("server.log");
        as_pg(&[&format!("{PG_BIN}/pg_ctl"), "-D", d, "-l", log.to_str().unwrap(), "-w", "-o", &opts, "start"]);
        as_pg(&[&format!("{PG_BIN}/createdb"), "-h", "127.0.0.1", "-p", &port.to_string(), "-U", "ferry", "ferry"]);
        Postgres { dir, port }
    }

    pub fn url(&self) -> String {
        format!("postgres://ferry@127.0.0.1:{}/ferry", self.port)
    }

    /// `psql -tA -c SQL`: its output.
    pub fn psql(&self, sql: &str) -> String {
        run("psql", &["-h", "127.0.0.1", "-p", &self.port.to_string(), "-U", "ferry", "-d", "ferry", "-tA", "-c", sql])
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        let data = self.dir.join("data");
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--", &format!("{PG_BIN}/pg_ctl"), "-D", data.to_str().unwrap()])
            .args(["-m", "immediate", "-w", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// haproxy in TCP mode: one address in front of receivers on `backends` (TLS passes through,
/// so the pin is every receiver's), least connections first, a dead receiver skipped by its
/// health check (`GET /api/v1/health` over TLS) and a refused connection sent to another.
pub struct Haproxy {
    pub port: u16,
    child: Child,
}

impl Haproxy {
    pub fn start(dir: &Path, backends: &[u16]) -> Self {
        let port = free_port();
        let mut cfg = format!(
            "global\n  maxconn 2000\ndefaults\n  mode tcp\n  timeout connect 2s\n  timeout client 300s\n  \
             timeout server 300s\n  retries 2\n  option redispatch\nfrontend ferry\n  bind 127.0.0.1:{port}\n  \
             default_backend receivers\nbackend receivers\n  balance leastconn\n  option httpchk\n  \
             http-check send meth GET uri /api/v1/health\n"
        );
        for (i, b) in backends.iter().enumerate() {
            cfg += &format!("  server r{i} 127.0.0.1:{b} check check-ssl verify none inter 500ms fall 2 rise 1\n");
        }
        let path = dir.join("haproxy.cfg");
        std::fs::write(&path, cfg).unwrap();
        run("haproxy", &["-c", "-q", "-f", path.to_str().unwrap()]);
        let child = Command::new("haproxy")
            .args(["-db", "-f", path.to_str().unwrap()])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start haproxy");
        wait_until(Duration::from_secs(10), || std::net::TcpStream::connect(("127.0.0.1", port)).is_ok());
        Haproxy { port, child }
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
