//! Logging from the live image: records go to /dev/kmsg (so they land in the kernel log with
//! everything else) and to the console.

use std::fs::OpenOptions;
use std::io::Write;
use std::sync::Mutex;

struct KmsgLogger {
    kmsg: Option<Mutex<std::fs::File>>,
    level: log::LevelFilter,
}

impl log::Log for KmsgLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= self.level
    }

    fn log(&self, r: &log::Record) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let prio = match r.level() {
            log::Level::Error => 3,
            log::Level::Warn => 4,
            log::Level::Info => 6,
            _ => 7,
        };
        let mut msg = format!("{}", r.args());
        // The kernel truncates long kmsg records; keep whole characters.
        while msg.len() > 900 {
            msg.pop();
        }
        if let Some(k) = &self.kmsg {
            // One write per record: /dev/kmsg turns every write into its own log line.
            let line = format!("<{prio}>ferry[{}]: {msg}\n", std::process::id());
            let mut k = k.lock().unwrap_or_else(|p| p.into_inner());
            let _ = k.write_all(line.as_bytes());
        }
        if r.level() <= log::Level::Warn {
            crate::init::console::say(&format!("ferry: {}: {msg}\n", r.level().as_str().to_lowercase()));
        } else if self.level == log::LevelFilter::Debug {
            // With ferry.debug, seconds since the kernel started, as the kernel's own lines
            // have: where a boot spends its time is read off the console.
            let level = r.level().as_str().to_lowercase();
            crate::init::console::say(&format!("ferry: [{:8.3}] {level}: {msg}\n", uptime()));
        }
    }

    fn flush(&self) {}
}

/// Seconds since the kernel started (`/proc/uptime`), 0 when it cannot be read.
fn uptime() -> f64 {
    std::fs::read_to_string("/proc/uptime").ok().and_then(|s| s.split_whitespace().next()?.parse().ok()).unwrap_or(0.0)
}

/// Installs the logger (once per process).
pub fn init(verbose: bool) {
    let _ = std::fs::write("/proc/sys/kernel/printk_devkmsg", "on\n");
    let kmsg = OpenOptions::new().write(true).open("/dev/kmsg").ok().map(Mutex::new);
    let level = if verbose { log::LevelFilter::Debug } else { log::LevelFilter::Info };
    if log::set_boxed_logger(Box::new(KmsgLogger { kmsg, level })).is_ok() {
        log::set_max_level(level);
    }
}
