//! The receiver's Debian package, installed for real with dpkg on this machine (root): its unit
//! passes `systemd-analyze verify`, its sandbox scores as systemd's own analysis says, and the
//! installed `ferry serve` runs as the unit runs it (its user, its command line, its settings
//! file, its state directory) and answers. `scripts/package` builds the package first;
//! `scripts/test` runs both. Purged at the end (the `ferry` system user stays, as Debian does).

mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use support::*;

const UNIT: &str = "/usr/lib/systemd/system/ferry-serve.service";
const SETTINGS: &str = "/etc/ferry/serve.env";

fn the_package() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/debian");
    let debs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|_| panic!("no {}: run scripts/package", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "deb"))
        .collect();
    assert_eq!(debs.len(), 1, "one package expected in {}: {debs:?}", dir.display());
    debs[0].clone()
}

/// The unit's `[Service]` settings (a key given twice keeps every value).
fn unit_settings(text: &str) -> HashMap<String, Vec<String>> {
    let mut m: HashMap<String, Vec<String>> = HashMap::new();
    let mut in_service = false;
    for l in text.lines().map(str::trim) {
        if l.starts_with('[') {
            in_service = l == "[Service]";
        } else if in_service && !l.starts_with('#') {
            if let Some((k, v)) = l.split_once('=') {
                m.entry(k.to_string()).or_default().push(v.to_string());
            }
        }
    }
    m
}

/// `KEY=value` lines of an environment file, as systemd reads them.
fn env_file(text: &str) -> Vec<(String, String)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

struct Installed;

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = Command::new("dpkg").args(["--purge", "ferry"]).output();
        let _ = std::fs::remove_dir_all("/var/lib/ferry");
    }
}

fn wait_for_health(url: &str, child: &mut Child) -> String {
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the installed ferry serve exited: {status}");
        }
        let out = Command::new("curl").args(["-sk", "--max-time", "2", url]).output().unwrap();
        if out.status.success() && !out.stdout.is_empty() {
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("the installed ferry serve never answered {url}");
}

#[test]
#[ignore = "installs the .deb on this machine (root); scripts/test runs it after scripts/package"]
fn the_package_installs_and_its_unit_runs_the_receiver() {
    let deb = the_package();
    let _installed = Installed;
    run_ok(Command::new("dpkg").arg("-i").arg(&deb).env("DEBIAN_FRONTEND", "noninteractive"));
    run_ok(Command::new("getent").args(["passwd", "ferry"]));

    // The unit as systemd reads it.
    run_ok(Command::new("systemd-analyze").args(["verify", UNIT]));
    let text = run_ok(Command::new("systemd-analyze").args(["security", "--offline=true", UNIT]));
    let score: f64 = text
        .lines()
        .find_map(|l| l.split("exposure level for ferry-serve.service: ").nth(1))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level in {text}"));
    eprintln!("systemd-analyze security: exposure {score}");
    assert!(score <= 2.0, "the unit's sandbox got weaker (exposure {score}):\n{text}");
    let unit = unit_settings(&std::fs::read_to_string(UNIT).unwrap());
    let one = |k: &str| unit.get(k).and_then(|v| v.first()).map(String::as_str).unwrap_or_else(|| panic!("no {k}="));
    for (k, v) in
        [("User", "ferry"), ("NoNewPrivileges", "yes"), ("ProtectSystem", "strict"), ("StateDirectory", "ferry")]
    {
        assert_eq!(one(k), v, "{k}");
    }
    assert_eq!(one("CapabilityBoundingSet"), "CAP_NET_BIND_SERVICE");

    // Man pages, completions and the live image where the package says.
    run_ok(Command::new("man").args(["-w", "ferry-serve"]));
    run_ok(
        Command::new("bash").args(["-c", "source /usr/share/bash-completion/completions/ferry && complete -p ferry"]),
    );
    for f in ["vmlinuz", "initrd.img", "shimx64.efi", "grubx64.efi", "ferry-usb.img", "image.json", "grub/grub.cfg"] {
        assert!(Path::new("/usr/share/ferry/image").join(f).is_file(), "no {f} in /usr/share/ferry/image");
    }

    // The operator's edit of the settings: an address on loopback (tests bind nothing else).
    let port = free_port();
    let settings = std::fs::read_to_string(SETTINGS).unwrap();
    let edited = settings
        .replace("FERRY_LISTEN=0.0.0.0:8443", &format!("FERRY_LISTEN=127.0.0.1:{port}"))
        .replace("#FERRY_ADVERTISE=192.0.2.10", "FERRY_ADVERTISE=127.0.0.1");
    assert_ne!(edited, settings, "the settings file no longer has the lines an operator edits");
    std::fs::write(SETTINGS, &edited).unwrap();

    // What systemd does before ExecStart: the state directory, owned by the unit's user, mode
    // StateDirectoryMode; then the command line with exactly the settings file's environment,
    // as that user, with the unit's umask.
    let state = Path::new("/var/lib/ferry");
    std::fs::create_dir_all(state).unwrap();
    run_ok(Command::new("chown").args(["ferry:ferry"]).arg(state));
    run_ok(Command::new("chmod").arg(one("StateDirectoryMode")).arg(state));
    let env_path = one("EnvironmentFile").trim_start_matches('-');
    let exec: Vec<&str> = one("ExecStart").split_whitespace().collect();
    let mut cmd = Command::new("setpriv");
    cmd.args(["--reuid=ferry", "--regid=ferry", "--init-groups", "--"]).args(["sh", "-c"]);
    cmd.arg(format!("umask {}; exec \"$@\"", one("UMask"))).arg("sh").args(&exec);
    cmd.env_clear().env("PATH", "/usr/bin:/bin");
    for (k, v) in env_file(&std::fs::read_to_string(env_path).unwrap()) {
        cmd.env(k, v);
    }
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let health = wait_for_health(&format!("https://127.0.0.1:{port}/api/v1/health"), &mut child);
    let boot = Command::new("curl")
        .args(["-sk", "-o", "/tmp/ferry-package-vmlinuz", &format!("https://127.0.0.1:{port}/boot/vmlinuz")])
        .status()
        .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert!(health.contains("\"ok\":true"), "health: {health}");
    assert!(boot.success());
    run_ok(Command::new("cmp").args(["/tmp/ferry-package-vmlinuz", "/usr/share/ferry/image/vmlinuz"]));
    let _ = std::fs::remove_file("/tmp/ferry-package-vmlinuz");

    // The store it made is the unit user's alone.
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let ferry_uid: u32 = run_ok(Command::new("id").args(["-u", "ferry"])).trim().parse().unwrap();
    for f in ["admin.token", "viewer.token", "tls/key.pem", "jobs.sqlite"] {
        let m = std::fs::metadata(state.join(f)).unwrap_or_else(|e| panic!("{f}: {e}"));
        assert_eq!(m.uid(), ferry_uid, "{f} is not the ferry user's");
        assert_eq!(m.permissions().mode() & 0o077, 0, "{f} is readable by others: {:o}", m.permissions().mode());
    }
}
