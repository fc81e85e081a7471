//! PID 1 of the live image: a small supervisor that never exits.
//!
//! It mounts the kernel filesystems, makes the console its stdio, turns Ctrl-Alt-Del into a
//! signal it ignores, starts the worker (this same binary with `FERRY_WORKER=1`) before any
//! thread exists, reaps every child, and applies the on-finish policy when the worker ends. If
//! init exited the kernel would panic, so nothing here returns: errors become a FAILED verdict,
//! and a panic parks the machine on its message (the kernel's `panic=` reboots only on a kernel
//! panic, which this avoids).

use std::ffi::CString;
use std::fs;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::Duration;

use nix::mount::{mount, MsFlags};
use nix::sys::reboot::{reboot, set_cad_enabled, RebootMode};
use nix::sys::signal::{signal, SigHandler, Signal};
use nix::sys::wait::{waitpid, WaitStatus};
use nix::unistd::Pid;

use super::cmdline::{LiveConfig, OnFinish};
use super::console::{render_verdict, Verdict, VERDICT_PATH};

/// The environment variable that makes the binary the worker.
pub const WORKER_ENV: &str = "FERRY_WORKER";

struct Mount {
    source: &'static str,
    target: &'static str,
    fstype: &'static str,
    flags: MsFlags,
    data: Option<&'static str>,
}

/// The kernel filesystems the live image needs, in order.
const MOUNTS: &[Mount] = &[
    Mount {
        source: "proc",
        target: "/proc",
        fstype: "proc",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC).union(MsFlags::MS_NODEV),
        data: None,
    },
    Mount {
        source: "sysfs",
        target: "/sys",
        fstype: "sysfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NOEXEC).union(MsFlags::MS_NODEV),
        data: None,
    },
    Mount {
        source: "devtmpfs",
        target: "/dev",
        fstype: "devtmpfs",
        flags: MsFlags::MS_NOSUID,
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/run",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: Some("mode=0755"),
    },
    Mount {
        source: "tmpfs",
        target: "/tmp",
        fstype: "tmpfs",
        flags: MsFlags::MS_NOSUID.union(MsFlags::MS_NODEV),
        data: None,
    },
];

fn mount_all() {
    for m in MOUNTS {
        let _ = fs::create_dir_all(m.target);
        if let Err(e) = mount(Some(m.source), m.target, Some(m.fstype), m.flags, m.data) {
            // EBUSY: already mounted (the kernel mounts devtmpfs itself with DEVTMPFS_MOUNT).
            if e != nix::errno::Errno::EBUSY {
                crate::say!("ferry: mounting {} failed: {e}", m.target);
            }
        }
    }
}

/// Makes /dev/console fds 0, 1 and 2 (the kernel leaves them closed when the initramfs had no
/// console node).
fn console_stdio() {
    if let Ok(c) = fs::OpenOptions::new().read(true).write(true).open("/dev/console") {
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors; `c` stays open for the call.
            unsafe {
                libc::dup2(c.as_raw_fd(), fd);
            }
        }
    }
}

/// Runs as PID 1. Never returns.
pub fn supervise() -> ! {
    std::panic::set_hook(Box::new(|info| {
        crate::say!("\nferry: internal error in the supervisor: {info}\nThe machine stays here; power it off by hand.");
        loop {
            std::thread::sleep(Duration::from_secs(3600));
        }
    }));
    mount_all();
    console_stdio();
    super::kmsg::init(false);
    // Ctrl-Alt-Del now sends SIGINT to init instead of rebooting mid-copy; ignore it, and
    // SIGTERM/SIGHUP too.
    let _ = set_cad_enabled(false);
    for s in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP, Signal::SIGPIPE] {
        // SAFETY: installing SIG_IGN runs no handler code.
        let _ = unsafe { signal(s, SigHandler::SigIgn) };
    }
    let _ = fs::create_dir_all("/run/ferry");
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let cfg = LiveConfig::from_cmdline(&cmdline);

    let worker = spawn_worker();
    let status = match worker {
        Ok(pid) => reap_until(pid),
        Err(e) => Err(format!("could not start the ferry worker: {e}")),
    };
    let verdict = match fs::read(VERDICT_PATH).ok().and_then(|b| serde_json::from_slice::<Verdict>(&b).ok()) {
        Some(v) => v,
        None => {
            let why = match status {
                Ok(s) => format!("the ferry worker ended without a verdict ({s:?})"),
                Err(e) => e,
            };
            let v = Verdict {
                ok: false,
                headline: "FAILED".into(),
                lines: vec![why],
                advice: vec!["Nothing was reported as migrated. Photograph this screen for the operator and reboot to try again.".into()],
                on_finish: None,
                countdown: None,
            };
            crate::init::console::say(&render_verdict(&v));
            v
        }
    };
    log::info!("verdict: {} ({})", verdict.headline, verdict.lines.first().cloned().unwrap_or_default());
    finish(verdict.on_finish.unwrap_or(cfg.on_finish), verdict.countdown.unwrap_or(cfg.countdown), verdict.ok)
}

fn spawn_worker() -> std::io::Result<Pid> {
    let exe = CString::new("/proc/self/exe").expect("no NUL");
    // SAFETY: the supervisor is single-threaded here (no runtime, no threads started), so fork
    // is sound; the child only calls async-signal-safe execve or _exit.
    match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            let env = [
                CString::new(format!("{WORKER_ENV}=1")).expect("no NUL"),
                CString::new("PATH=/bin:/sbin").expect("no NUL"),
            ];
            let _ = nix::unistd::execve(&exe, &[CString::new("ferry").expect("no NUL")], &env);
            // SAFETY: _exit is async-signal-safe and ends the child without running destructors.
            unsafe { libc::_exit(127) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => Ok(child),
        Err(e) => Err(std::io::Error::from(e)),
    }
}

/// Reaps every child (orphans included) until the worker has exited.
fn reap_until(worker: Pid) -> Result<WaitStatus, String> {
    loop {
        match waitpid(None, None) {
            Ok(s @ WaitStatus::Exited(pid, _)) | Ok(s @ WaitStatus::Signaled(pid, _, _)) if pid == worker => {
                return Ok(s)
            }
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => {}
            Err(e) => return Err(format!("waiting for the worker: {e}")),
        }
    }
}

/// Applies the on-finish policy after a countdown. Never returns.
fn finish(action: OnFinish, countdown: u64, ok: bool) -> ! {
    let what = match action {
        OnFinish::Reboot => "Rebooting",
        OnFinish::Poweroff => "Powering off",
        OnFinish::Wait => "Waiting",
    };
    if action != OnFinish::Wait && countdown > 0 {
        for left in (1..=countdown).rev() {
            if left == countdown || left <= 3 || left % 10 == 0 {
                crate::say!("{what} in {left} s ...");
            }
            std::thread::sleep(Duration::from_secs(1));
        }
    }
    nix::unistd::sync();
    match action {
        OnFinish::Reboot | OnFinish::Poweroff => {
            crate::say!("{what} now ({}).", if ok { "migration verified" } else { "migration FAILED" });
            let mode = if action == OnFinish::Reboot { RebootMode::RB_AUTOBOOT } else { RebootMode::RB_POWER_OFF };
            let Err(e) = reboot(mode);
            crate::say!("ferry: {what} failed: {e}; staying here");
        }
        OnFinish::Wait => crate::say!("Waiting here (ferry.on_finish=wait). Power off the machine when you are done."),
    }
    loop {
        // Keep reaping so nothing lingers as a zombie; sleep when there is nothing to reap.
        if waitpid(None, None).is_err() {
            std::thread::sleep(Duration::from_secs(60));
        }
    }
}

/// Whether this process should act as the live image's init: PID 1 started as `/init` (the
/// kernel also passes unknown bare command-line words as arguments) or with no arguments.
/// `ferry serve ...` as a container's PID 1 stays a normal command.
pub fn is_init() -> bool {
    let mut args = std::env::args_os();
    let argv0 = args.next();
    std::process::id() == 1 && (argv0.as_deref() == Some(std::ffi::OsStr::new("/init")) || args.next().is_none())
}

/// Whether this process is the worker the supervisor started.
pub fn is_worker() -> bool {
    std::env::var_os(WORKER_ENV).is_some() && Path::new("/run/ferry").exists()
}
