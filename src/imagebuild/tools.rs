//! Running the host tools the build needs, and installing the Debian packages that hold them.

use std::ffi::OsStr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{bail, Context, Result};

/// The systemd-boot UEFI stub a unified kernel image is built on.
pub const EFI_STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";

fn in_path(cmd: &str) -> bool {
    if cmd.contains('/') {
        return Path::new(cmd).is_file();
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    // depmod and friends live in /sbin, which a non-root PATH may lack.
    std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].iter().map(Into::into)).any(|d| d.join(cmd).is_file())
}

/// The full path of a tool, looking in /usr/sbin and /sbin too.
pub fn resolve(cmd: &str) -> String {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for d in std::env::split_paths(&path).chain(["/usr/sbin", "/sbin"].iter().map(Into::into)) {
        let p = d.join(cmd);
        if p.is_file() {
            return p.to_string_lossy().into_owned();
        }
    }
    cmd.to_string()
}

static UPDATED: AtomicBool = AtomicBool::new(false);

/// `apt-get update`, at most once per build.
pub fn apt_update() -> Result<()> {
    if UPDATED.swap(true, Ordering::SeqCst) {
        return Ok(());
    }
    log::info!("running apt-get update");
    run(Command::new("apt-get").args(["update", "-qq"]))
}

/// Installs Debian packages with apt-get (root only), updating the package lists once if the
/// first attempt fails.
pub fn apt_install(pkgs: &[&str]) -> Result<()> {
    if pkgs.is_empty() {
        return Ok(());
    }
    if !nix::unistd::geteuid().is_root() {
        bail!("missing host packages: {} (install them with: sudo apt-get install {})", pkgs.join(" "), pkgs.join(" "));
    }
    log::info!("installing {} with apt-get", pkgs.join(" "));
    let install = || {
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(pkgs)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(Stdio::null())
            .status()
    };
    if install().map(|s| s.success()).unwrap_or(false) {
        return Ok(());
    }
    apt_update()?;
    let st = install().context("running apt-get install")?;
    if !st.success() {
        bail!("apt-get install {} failed ({st})", pkgs.join(" "));
    }
    Ok(())
}

/// Makes sure each (command, package) pair's command exists, installing missing packages.
pub fn ensure(need: &[(&str, &str)]) -> Result<()> {
    let mut pkgs: Vec<&str> = need.iter().filter(|(c, _)| !in_path(c)).map(|(_, p)| *p).collect();
    pkgs.sort();
    pkgs.dedup();
    apt_install(&pkgs)?;
    for (c, p) in need {
        if !in_path(c) {
            bail!("{c} is still missing after installing {p}");
        }
    }
    Ok(())
}

fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs a command; a failure carries the command line and its stderr.
pub fn run(cmd: &mut Command) -> Result<()> {
    output(cmd).map(|_| ())
}

/// Runs a command and returns its stdout.
pub fn output(cmd: &mut Command) -> Result<String> {
    let what = describe(cmd);
    log::debug!("running {what}");
    let out = cmd.stdin(Stdio::null()).output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A `Command` for a tool found by [`resolve`].
pub fn cmd<S: AsRef<OsStr>>(tool: S) -> Command {
    Command::new(resolve(&tool.as_ref().to_string_lossy()))
}
