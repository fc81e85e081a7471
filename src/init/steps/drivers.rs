//! Step 1, drivers: the modules every machine needs first, then coldplug by modalias until no
//! module, disk or link appears for a while; then which controllers lack a driver.

use std::collections::BTreeSet;
use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::init::coverage::Coverage;
use crate::init::modules::{collect_modaliases, Loader, ModuleIndex, UeventListener};

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
    // The modules every machine needs go in one batch with those of the devices already there
    // (loaded in parallel); the devices those drivers find are handled as they are announced.
    let always: Vec<String> = fs::read_to_string("/etc/ferry/modules-load")
        .unwrap_or_default()
        .lines()
        .map(str::trim)
        .filter(|m| !m.is_empty() && !m.starts_with('#'))
        .map(String::from)
        .collect();
    match &uevents {
        Some(u) => settle_on_events(&mut loader, u, &always),
        None => settle_by_polling(&mut loader, &always),
    }
    loader
}

/// Loads `always` while /sys/devices is walked for the devices there now (a walk costs most
/// of a second under emulation), then those devices' drivers. Each batch loads in parallel.
fn coldplug_with(loader: &mut Loader, always: &[String]) -> usize {
    std::thread::scope(|scope| {
        let walk = scope.spawn(|| {
            let mut present = BTreeSet::new();
            collect_modaliases(Path::new("/sys/devices"), &mut present, 0);
            present
        });
        let loaded = loader.load_all(always);
        let present = walk.join().unwrap_or_default();
        loaded + loader.load_for_aliases(&present)
    })
}

/// The longest a machine's drivers may take to settle.
const SETTLE_AT_MOST: Duration = Duration::from_secs(30);
/// Settled: no uevent (a module's device, a disk, a link) for this long.
const QUIET: Duration = Duration::from_millis(500);

/// Settle by the kernel's own announcements: every device a loaded driver finds, every disk and
/// link, arrives as a uevent, so the wait ends [`QUIET`] after the last one rather than after
/// rounds of fixed sleeps and walks of /sys (which cost seconds under emulation).
fn settle_on_events(loader: &mut Loader, uevents: &UeventListener, always: &[String]) {
    let deadline = Instant::now() + SETTLE_AT_MOST;
    let mut seen = snapshot();
    let mut loaded = coldplug_with(loader, always);
    while Instant::now() < deadline {
        let heard = uevents.wait(QUIET);
        loaded += loader.load_for_aliases(&uevents.drain_modaliases());
        let now = snapshot();
        if !heard && loaded == 0 && now == seen {
            // Quiet. One last walk for a device announced before anyone listened.
            if loader.coldplug(Path::new("/sys/devices")) == 0 {
                return;
            }
        }
        seen = now;
        loaded = 0;
    }
}

/// Settle without a uevent socket: repeat until no module loads, no disk and no link appears
/// for three rounds.
fn settle_by_polling(loader: &mut Loader, always: &[String]) {
    let deadline = Instant::now() + SETTLE_AT_MOST;
    let mut quiet_rounds = 0;
    let mut seen = snapshot();
    let mut loaded = coldplug_with(loader, always);
    while Instant::now() < deadline && quiet_rounds < 3 {
        std::thread::sleep(Duration::from_millis(300));
        let now = snapshot();
        if loaded == 0 && now == seen {
            quiet_rounds += 1;
        } else {
            quiet_rounds = 0;
        }
        seen = now;
        loaded = loader.coldplug(Path::new("/sys/devices"));
    }
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
