//! Step 1, drivers: the modules every machine needs first, then coldplug by modalias until no
//! module, disk or link appears for a while; then which controllers lack a driver.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::init::coverage::Coverage;
use crate::init::modules::{Loader, ModuleIndex, UeventListener};

pub fn load_drivers() -> Loader {
    let release = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    let dir = Path::new("/lib/modules").join(&release);
    let index = ModuleIndex::load(&dir).unwrap_or_else(|e| {
        log::warn!("no module index in {}: {e}", dir.display());
        ModuleIndex::default()
    });
    let mut loader = Loader::new(index);
    // Listen before coldplug so nothing announced in between is missed.
    let uevents = UeventListener::open().map_err(|e| log::warn!("uevent socket: {e}")).ok();
    for m in fs::read_to_string("/etc/ferry/modules-load").unwrap_or_default().lines() {
        let m = m.trim();
        if !m.is_empty() && !m.starts_with('#') {
            loader.load(m);
        }
    }
    // Settle: repeat until no module loads, no disk and no link appears for a while.
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut quiet_rounds = 0;
    let mut seen = snapshot();
    while Instant::now() < deadline && quiet_rounds < 3 {
        let mut loaded = loader.coldplug(Path::new("/sys/devices"));
        if let Some(u) = &uevents {
            loaded += loader.load_for_aliases(&u.drain_modaliases());
        }
        std::thread::sleep(Duration::from_millis(300));
        let now = snapshot();
        if loaded == 0 && now == seen {
            quiet_rounds += 1;
        } else {
            quiet_rounds = 0;
        }
        seen = now;
    }
    loader
}

/// Disks and links present now.
fn snapshot() -> (Vec<String>, Vec<String>) {
    let names = |d: &str| -> Vec<String> {
        let mut v: Vec<String> = fs::read_dir(d)
            .map(|rd| rd.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default();
        v.sort();
        v
    };
    (names("/sys/block"), names("/sys/class/net"))
}

pub fn report_coverage(c: &Coverage) {
    for d in &c.unbound_storage {
        crate::say!("DRIVER MISSING: storage controller {} class {} at {}", d.id, d.class, d.address);
    }
    for d in &c.unbound_network {
        crate::say!("driver missing: network controller {} class {} at {}", d.id, d.class, d.address);
    }
    for d in &c.storage_without_disks {
        crate::say!("note: storage controller {} ({}) shows no disk", d.id, d.driver.as_deref().unwrap_or("?"));
    }
}
