//! A bad network between a source and its receiver: two network namespaces made by the test,
//! joined by `tests/netem/impair.py` (netem's delay, loss and reordering in user space: this
//! machine's kernel has no sch_netem module), and a 30 s cut of the link mid-transfer. One
//! `ferry send` must finish the job by itself, nobody restarting it; the export must equal the
//! source. Run by scripts/test (`--ignored`): about a minute, as root.

mod support;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use support::*;

const MIB: usize = 1 << 20;
const SOURCE_ADDR: &str = "10.203.0.1";
const RECEIVER_ADDR: &str = "10.203.0.2";
const CUT: Duration = Duration::from_secs(30);

/// The two namespaces and the link between them; all gone when dropped.
struct BadLink {
    source_ns: String,
    receiver_ns: String,
    impair: Child,
}

impl BadLink {
    fn new(seed: u64) -> Self {
        let id = std::process::id();
        let (source_ns, receiver_ns) = (format!("ferry-src-{id}"), format!("ferry-rcv-{id}"));
        for ns in [&source_ns, &receiver_ns] {
            // A namespace of an earlier run of this pid that died before its cleanup goes first.
            let _ = Command::new("ip").args(["netns", "del", ns]).stderr(Stdio::null()).status();
            run_ok(Command::new("ip").args(["netns", "add", ns]));
        }
        let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/netem/impair.py");
        let mut impair = Command::new("python3")
            .arg(script)
            .args([&source_ns, SOURCE_ADDR, &receiver_ns, RECEIVER_ADDR])
            .args(["--delay-ms", "100", "--loss", "2", "--reorder", "10", "--seed", &seed.to_string()])
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(impair.stdout.take().unwrap()).lines();
        assert_eq!(lines.next().unwrap().unwrap(), "impair: ready");
        std::thread::spawn(move || {
            for l in lines.map_while(Result::ok) {
                eprintln!("{l}");
            }
        });
        BadLink { source_ns, receiver_ns, impair }
    }

    fn signal(&self, sig: &str) {
        run_ok(Command::new("kill").args([sig, &self.impair.id().to_string()]));
    }

    /// `ferry ARGS` inside `ns`.
    fn ferry_in(&self, ns: &str, args: &[&str]) -> Output {
        Command::new("ip").args(["netns", "exec", ns, FERRY]).args(args).stdin(Stdio::null()).output().unwrap()
    }
}

impl Drop for BadLink {
    fn drop(&mut self) {
        self.signal("-TERM");
        let _ = self.impair.wait();
        for ns in [&self.source_ns, &self.receiver_ns] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// A child killed when dropped (a failed assertion must not leave a send retrying).
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// The child's output once it exits, or after killing it at `limit`.
fn wait_at_most(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = child.kill();
    child.wait_with_output().unwrap()
}

fn json(out: &Output) -> serde_json::Value {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
#[ignore = "a minute over an impaired link between two network namespaces; scripts/test runs it"]
fn a_send_over_a_lossy_slow_reordering_link_cut_for_30s_finishes_by_itself() {
    let seed = std::env::var("FERRY_FAULT_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(7u64);
    eprintln!("network seed {seed} (FERRY_FAULT_SEED={seed} repeats its losses)");
    let link = BadLink::new(seed);
    let t = tempfile::tempdir().unwrap();
    let store = t.path().join("store");
    let listen = format!("{RECEIVER_ADDR}:8443");
    let wrapper = ["ip", "netns", "exec", link.receiver_ns.as_str()];
    let r = Receiver::start_at(&store, false, &listen, &["--advertise", RECEIVER_ADDR], &wrapper, &[]);
    let store_arg = store.to_str().unwrap();
    let created =
        json(&link.ferry_in(&link.receiver_ns, &["job", "create", "--store", store_arg, "--name", "far", "--json"]));
    let (job, token) = (created["id"].as_str().unwrap(), created["token"].as_str().unwrap());
    let image = t.path().join("src.img");
    random_image(&image, 32 * MIB, seed);

    let started = Instant::now();
    let pin = r.pin().unwrap();
    let url = format!("https://{listen}");
    let send = Command::new("ip")
        .args(["netns", "exec", &link.source_ns, FERRY, "send", "--server", &url, "--pin", &pin])
        .args(["--job", job, "--token", token, "--chunk-size", "1M", "--json"])
        .arg(&image)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Cut the link once a third of the disk has arrived, for 30 s.
    let received = || {
        let j = json(&link.ferry_in(&link.receiver_ns, &["job", "show", "--store", store_arg, job, "--json"]));
        j["disks"].get(0).and_then(|d| d["bytes_received"].as_u64()).unwrap_or(0)
    };
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut send = KillOnDrop(Some(send));
    while received() < (32 * MIB / 3) as u64 {
        assert!(Instant::now() < deadline, "a third of the disk did not arrive in 120 s");
        assert!(send.0.as_mut().unwrap().try_wait().unwrap().is_none(), "the send ended before the cut");
        std::thread::sleep(Duration::from_millis(200));
    }
    let before_cut = started.elapsed();
    link.signal("-USR1");
    let at_cut = received();
    eprintln!("link cut at {before_cut:.1?} with {at_cut} bytes received");
    std::thread::sleep(CUT);
    let during_cut = received();
    link.signal("-USR2");
    eprintln!("link back after {CUT:?}");

    // Until it ends: one send, never started again; killed if it has not ended in 5 minutes.
    let out = wait_at_most(send.0.take().unwrap(), Duration::from_secs(300));
    let took = started.elapsed();
    assert!(out.status.success(), "the send did not finish by itself:\n{}", String::from_utf8_lossy(&out.stderr));
    let j = json(&link.ferry_in(&link.receiver_ns, &["job", "show", "--store", store_arg, job, "--json"]));
    assert_eq!(j["state"], "Finished", "{j:#}");
    // Nothing crosses a cut link: at most the chunks already whole at the receiver (8 in flight)
    // are counted after it.
    assert!(during_cut - at_cut <= 8 * MIB as u64, "{} bytes arrived during the cut", during_cut - at_cut);
    assert_eq!(export_b3sum(&r, job, 0, t.path()), b3sum(&image));
    let moving = took - CUT;
    eprintln!(
        "32 MiB over 100 ms delay, 2% loss, 10% reordered, cut 30 s: finished in {took:.1?}; {:.2} MiB/s while the link was up ({:.2} MiB/s before the cut)",
        32.0 / moving.as_secs_f64(),
        (32 * MIB / 3) as f64 / MIB as f64 / before_cut.as_secs_f64()
    );
}
