//! The live image's work, in a child of PID 1: drivers, disks, network, then the migration.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::mount::{mount, umount, MsFlags};

use super::cmdline::{LiveConfig, Role};
use super::console::{render_verdict, Verdict, VERDICT_PATH};
use super::coverage::{self, Coverage};
use super::modules::{Loader, ModuleIndex, UeventListener};
use super::net;
use crate::agent::send::{send, SendOptions, SendProgress};
use crate::agent::{Client, Endpoint, Refused};
use crate::disk::{self, sysfs, DiskReader, TableKind};
use crate::image::hasher;
use crate::util::{human_bytes, human_duration};

/// A failure with the words the technician needs.
pub(super) struct Failed {
    pub lines: Vec<String>,
    pub advice: Vec<String>,
}

impl Failed {
    pub fn new(line: impl Into<String>, advice: impl Into<String>) -> Self {
        Self { lines: vec![line.into()], advice: vec![advice.into()] }
    }
}

/// Runs the worker; returns the process exit code after writing the verdict.
pub fn run() -> i32 {
    let cmdline_text = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    super::kmsg::init(cmdline_text.split_whitespace().any(|w| w == "ferry.debug" || w == "ferry.debug=1"));
    std::panic::set_hook(Box::new(|info| {
        let v = Verdict {
            ok: false,
            headline: "FAILED".into(),
            lines: vec![format!("ferry hit an internal error: {info}")],
            advice: vec!["Nothing was reported as migrated. Photograph this screen for the operator.".into()],
            on_finish: None,
            countdown: None,
        };
        write_verdict(&v);
    }));
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let mut cfg = LiveConfig::from_cmdline(&cmdline);
    crate::say!("\nferry {} live image", env!("CARGO_PKG_VERSION"));
    let verdict = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(work(&mut cfg, &cmdline)),
        Err(e) => Err(Failed::new(format!("cannot start: {e}"), "Reboot and try again.")),
    };
    let mut v = match verdict {
        Ok(v) => v,
        Err(f) => Verdict {
            ok: false,
            headline: "FAILED".into(),
            lines: f.lines,
            advice: f.advice,
            on_finish: None,
            countdown: None,
        },
    };
    // The line a technician matches against the job list or dashboard.
    let m = crate::machine::machine_identity();
    v.lines.insert(
        0,
        format!(
            "job {} ({}) on machine serial {} uuid {}",
            cfg.job.as_deref().unwrap_or("none"),
            match cfg.role {
                Role::Source => "source",
                Role::Target => "target",
            },
            m.serial.as_deref().unwrap_or("none"),
            m.product_uuid.as_deref().unwrap_or("none")
        ),
    );
    // A role may choose (a target that was already written powers off rather than reboot into
    // the stick again and again); otherwise the configured action.
    v.on_finish = v.on_finish.or(Some(cfg.on_finish));
    v.countdown = Some(cfg.countdown);
    write_verdict(&v);
    upload_transcript(&cfg);
    if v.ok {
        0
    } else {
        1
    }
}

/// Sends the console transcript, verdict included, to the receiver: the operator sees what the
/// technician saw. Best effort and brief: the verdict is already on the screen.
fn upload_transcript(cfg: &LiveConfig) {
    let (Some(server), Some(job), Some(token)) = (&cfg.server, &cfg.job, &cfg.token) else { return };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let ep = Endpoint {
        server: server.clone(),
        token: token.clone(),
        pin: cfg.pin.clone(),
        plain_http: cfg.plain_http,
        retry_for: Duration::from_secs(5),
    };
    let Ok(client) = Client::new(&ep) else { return };
    let text = crate::init::console::transcript();
    let path = log_path(job, true).unwrap_or_else(|| format!("/jobs/{job}/log"));
    let call = client.call::<serde_json::Value>(reqwest::Method::POST, &path, |r| r.body(text.clone()));
    if let Err(e) = rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), call).await }) {
        log::warn!("sending the boot log: {e}");
    }
}

/// Where this boot's console transcript goes: one entry per boot on the receiver (the kernel's
/// boot id), replaced by later ones (`seq`: milliseconds since boot; the verdict's is the
/// highest), so the operator follows the screen while it runs and keeps it when the machine
/// dies mid-way. None without a boot id (then only the verdict's transcript is sent).
fn log_path(job: &str, last: bool) -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    if !crate::wire::valid_job_id(boot) {
        return None;
    }
    let seq = if last {
        i64::MAX as u64
    } else {
        let uptime = fs::read_to_string("/proc/uptime").ok()?;
        let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        (secs * 1000.0) as u64
    };
    Some(format!("/jobs/{job}/log?boot={boot}&seq={seq}"))
}

/// Sends the transcript every 5 s (the progress lines' pace) while it changes; ends with the
/// worker's runtime.
fn stream_transcript(client: &Client, job: &str) {
    if log_path(job, false).is_none() {
        return;
    }
    let (client, job) = (client.clone(), job.to_string());
    tokio::spawn(async move {
        let mut sent = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let text = crate::init::console::transcript();
            let Some(path) = log_path(&job, false) else { return };
            if text == sent {
                continue;
            }
            let call = client.call::<serde_json::Value>(reqwest::Method::POST, &path, |r| r.body(text.clone()));
            if let Ok(Ok(_)) = tokio::time::timeout(Duration::from_secs(10), call).await {
                sent = text;
            }
        }
    });
}

fn write_verdict(v: &Verdict) {
    crate::init::console::say(&render_verdict(v));
    let _ = fs::create_dir_all("/run/ferry");
    if let Ok(b) = serde_json::to_vec(v) {
        let _ = fs::write(VERDICT_PATH, b);
    }
}

async fn work(cfg: &mut LiveConfig, cmdline: &str) -> Result<Verdict, Failed> {
    let started = Instant::now();
    // 1. Drivers.
    let mut loader = load_drivers();
    crate::say!("drivers: {} modules loaded", loader.loaded.len());
    crate::say!("{}", super::firmware::Firmware::read(&mut loader).line());

    // 2. Every disk read-only at the kernel level before anything reads a byte of it (the boot
    // stick too: ferry only ever mounts it read-only).
    let all_disks = sysfs::enumerate(Path::new("/sys/block")).unwrap_or_default();
    for d in &all_disks {
        let p = Path::new("/dev").join(&d.name);
        disk::lock::lock_read_only(&p).map_err(|e| {
            Failed::new(
                format!("could not set {} read-only: {e:#}", p.display()),
                "Reboot and try again; report this to the operator if it repeats. Nothing was read.",
            )
        })?;
    }

    // 3. The boot stick (never a source disk) and its ferry.toml.
    let boot_disk = find_boot_medium(&all_disks);
    if let Some((disk, part)) = &boot_disk {
        crate::say!("boot medium: /dev/{disk} (not migrated)");
        if let Some(text) = read_ferry_toml(part) {
            if let Err(e) = cfg.merge_toml(&text, cmdline) {
                cfg.errors.push(e);
            }
        }
    }
    for k in &cfg.unknown {
        crate::say!("warning: unknown kernel command line key {k} (ignored)");
    }
    if !cfg.errors.is_empty() {
        return Err(Failed {
            lines: cfg.errors.clone(),
            advice: vec!["Fix the boot entry's kernel command line (or ferry.toml on the stick) and boot again.".into()],
        });
    }
    let missing = cfg.missing_keys();
    if !missing.is_empty() {
        return Err(Failed::new(
            format!("the configuration lacks {}", missing.join(", ")),
            "Add them to the kernel command line (the receiver prints a ready line) or to ferry.toml on the stick.",
        ));
    }

    crate::say!(
        "job {} ({}), receiver {}",
        cfg.job.as_deref().unwrap_or(if cfg.enroll.is_some() { "to be given by the enrollment" } else { "?" }),
        match cfg.role {
            Role::Source => "source: this machine's disks are copied, never written",
            Role::Target => "target: this machine receives the job's disks",
        },
        cfg.server.as_deref().unwrap_or("?")
    );
    // 4. Machine identity and disks.
    let machine = crate::machine::machine_identity();
    crate::say!(
        "machine: {} {} serial {} uuid {}",
        machine.vendor.as_deref().unwrap_or("?"),
        machine.product.as_deref().unwrap_or("?"),
        machine.serial.as_deref().unwrap_or("?"),
        machine.product_uuid.as_deref().unwrap_or("?")
    );
    let sources: Vec<sysfs::SysDisk> = all_disks
        .iter()
        .filter(|d| boot_disk.as_ref().is_none_or(|(b, _)| b != &d.name))
        .filter(|d| cfg.disks.is_empty() || cfg.disks.contains(&d.name))
        // A target never overwrites a removable disk (a second stick, a card reader) unless
        // ferry.disks names it.
        .filter(|d| cfg.role == Role::Source || !d.removable || cfg.disks.contains(&d.name))
        .cloned()
        .collect();
    let cov = coverage::check(Path::new("/sys"), &coverage::disk_device_paths(Path::new("/sys")));
    report_coverage(&cov);

    if !kernel_rng_ready() {
        crate::say!("waiting for the kernel's random number generator (needed for TLS) ...");
    }
    // 5. Network (needed to report even a failure).
    crate::say!("network: {} ...", if matches!(cfg.ip, super::cmdline::IpConfig::Dhcp) { "DHCP" } else { "static" });
    let configured = net::bring_up(&cfg.ip, cfg.bootif.as_deref(), Duration::from_secs(45)).await.map_err(|e| {
        Failed::new(
            format!("no network: {e:#}"),
            "Check the cable and the switch port (VLAN), then reboot from the stick. The disks were not touched.",
        )
    })?;
    crate::say!(
        "network: {} {}/{} via {} ({})",
        configured.link,
        configured.address,
        configured.prefix,
        configured.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
        configured.how
    );
    let endpoint = |token: &str| Endpoint {
        server: cfg.server.clone().unwrap_or_default(),
        token: token.to_string(),
        pin: cfg.pin.clone(),
        plain_http: cfg.plain_http,
        retry_for: Duration::from_secs(cfg.retry),
    };
    if let (None, Some(enrollment)) = (&cfg.job, &cfg.enroll) {
        let answer = crate::agent::enroll::enroll(&endpoint(enrollment), &machine, true).await.map_err(|e| {
            let advice = match e.downcast_ref::<Refused>().map(|r| (r.status, r.code.as_str())) {
                Some((_, "enrollment_revoked")) => {
                    "The operator closed this enrollment: ask them for a job (ferry.job and ferry.token)."
                }
                Some((_, "no_identity")) => {
                    "This machine cannot enroll: ask the operator for a job (ferry.job and ferry.token)."
                }
                Some((_, "enrollment_full")) => {
                    "The wave has all its machines: check this is one of them, then ask the operator (a job, or a larger enrollment)."
                }
                Some((401 | 403, _)) => {
                    "The receiver does not accept this enrollment token: check ferry.enroll with the operator."
                }
                _ => "Check that the receiver is running and reachable, then reboot from the stick.",
            };
            Failed::new(format!("{e:#}"), advice)
        })?;
        crate::say!(
            "enrolled: job {} ({}){}",
            answer.job,
            answer.name,
            match (answer.created, answer.state) {
                (true, _) => "",
                (false, crate::wire::JobState::Finished) => ", already Finished",
                (false, _) => ", this machine's job from before",
            }
        );
        cfg.job = Some(answer.job.clone());
        cfg.token = Some(answer.token);
        if answer.state == crate::wire::JobState::Finished {
            return Ok(already_migrated(&answer.job));
        }
    }
    let client = Client::new(&endpoint(cfg.token.as_deref().unwrap_or_default()))
        .map_err(|e| Failed::new(format!("{e:#}"), "Fix ferry.server / ferry.pin and boot again."))?;
    let job = cfg.job.clone().unwrap_or_default();
    stream_transcript(&client, &job);

    if !cov.storage_ok() {
        let ids: Vec<String> =
            cov.unbound_storage.iter().map(|d| format!("{} (class {}) at {}", d.id, d.class, d.address)).collect();
        let reason = format!("no driver in this image for storage controller {}", ids.join(", "));
        report_failure(&client, &job, cfg.role, "missing_driver", &reason).await;
        return Err(Failed::new(
            reason,
            "Do not migrate this machine with this image: give the PCI ids to the operator so a driver can be added.",
        ));
    }
    if sources.is_empty() {
        let reason = "no disk found (other than the boot medium)".to_string();
        report_failure(&client, &job, cfg.role, "no_disks", &reason).await;
        return Err(Failed::new(reason, "Check the disks are attached and visible in the firmware setup."));
    }

    let paths: Vec<PathBuf> = sources.iter().map(|d| Path::new("/dev").join(&d.name)).collect();
    if cfg.role == Role::Target {
        return super::target::run(&client, &job, &paths, started).await;
    }
    // The source disks, already read-only since step 2.
    print_disk_table(&paths, "disks to migrate (read-only at the kernel level):");

    // 6. The migration.
    let inventory = serde_json::json!({ "coverage": cov, "pci": coverage::pci_devices(Path::new("/sys")) });
    let opts = SendOptions { threads: hasher::default_threads(), inventory: Some(inventory), ..Default::default() };
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut finished_disks = std::collections::BTreeSet::new();
    let t0 = Instant::now();
    let mut on_progress = move |p: &SendProgress| {
        let done = p.bytes_done == p.size;
        if (last_line.elapsed() >= Duration::from_secs(5) && !done) || (done && finished_disks.insert(p.index)) {
            last_line = Instant::now();
            let rate = p.bytes_done as f64 / t0.elapsed().as_secs_f64().max(0.001);
            let eta = if rate > 0.0 { ((p.size - p.bytes_done) as f64 / rate) as u64 } else { 0 };
            crate::say!(
                "disk {} {}: {} of {} ({}%), {}/s, ETA {}, sent {}",
                p.index,
                p.path.trim_start_matches("/dev/"),
                human_bytes(p.bytes_done),
                human_bytes(p.size),
                (p.bytes_done * 100).checked_div(p.size).unwrap_or(100),
                human_bytes(rate as u64),
                human_duration(eta),
                human_bytes(p.sent_bytes)
            );
        }
    };
    match send(&client, &job, &paths, &opts, &mut on_progress).await {
        Ok(summaries) => {
            let mut lines = vec![format!(
                "job {job}: {} disk(s) copied and verified in {}",
                summaries.len(),
                human_duration(started.elapsed().as_secs())
            )];
            for s in &summaries {
                lines.push(format!("disk {} {} {}: blake3 {}", s.index, s.path, human_bytes(s.size), s.blake3));
            }
            Ok(Verdict {
                ok: true,
                headline: "MIGRATED".into(),
                lines,
                advice: vec![],
                on_finish: None,
                countdown: None,
            })
        }
        Err(e) if e.downcast_ref::<Refused>().is_some_and(|r| r.code == "job_finished") => {
            // Finished by this machine before (booted into ferry again), or by another machine
            // whose job this one was given by mistake: only the first is "migrated".
            let finished: Option<crate::wire::Job> =
                client.call(reqwest::Method::GET, &format!("/jobs/{job}"), |r| r).await.ok();
            let by = finished.and_then(|j| j.machine);
            match by {
                Some(m) if crate::machine::same_machine(&m, &machine) => Ok(already_migrated(&job)),
                other => Err(Failed::new(
                    format!(
                        "job {job} is already Finished, copied from another machine (serial {}); this machine was NOT migrated",
                        other.and_then(|m| m.serial).unwrap_or_else(|| "unknown".into())
                    ),
                    "Check ferry.job and ferry.token with the operator: they belong to another machine.",
                )),
            }
        }
        Err(e) => {
            let advice = advice_for(&e, cfg);
            Err(Failed { lines: vec![format!("{e:#}")], advice: vec![advice] })
        }
    }
}

/// The verdict for a source whose job is already Finished: booted into ferry again (the stick
/// left in, the PXE entry still set), it sends nothing and powers off rather than loop.
fn already_migrated(job: &str) -> Verdict {
    Verdict {
        ok: true,
        headline: "MIGRATED".into(),
        lines: vec![format!("already migrated: job {job} is Finished; nothing sent now")],
        advice: vec![
            "Remove the ferry stick (or the PXE entry). It powers off now rather than start ferry again; to copy it once more, the operator restarts the job."
                .into(),
        ],
        on_finish: Some(super::cmdline::OnFinish::Poweroff),
        countdown: None,
    }
}

fn advice_for(e: &anyhow::Error, cfg: &LiveConfig) -> String {
    if let Some(r) = e.downcast_ref::<Refused>() {
        return match (r.status, r.code.as_str()) {
            (401 | 403, _) => "The receiver does not accept this job token: check ferry.job and ferry.token with the operator.".into(),
            (404, _) => "The receiver has no such job: check ferry.job with the operator.".into(),
            (_, "job_cancelled") => "The operator cancelled this job. Ask before migrating this machine.".into(),
            (_, "job_in_error") | (_, "store_full") => "The job needs the operator: ask them to fix it and restart the job, then reboot from the stick. Chunks already sent are kept.".into(),
            _ => "Give this screen to the operator.".into(),
        };
    }
    let text = format!("{e:#}");
    if text.contains("I/O error reading") || text.contains("the disk ended at byte") {
        return "A source disk could not be read (failing disk or cable). Give this screen to the operator; do not retry blindly.".into();
    }
    format!(
        "Check that the receiver at {} is running and reachable, then reboot from the stick: chunks already sent are never sent again.",
        cfg.server.as_deref().unwrap_or("?")
    )
}

async fn report_failure(client: &Client, job: &str, role: Role, code: &str, reason: &str) {
    let f = crate::wire::Failure { code: code.into(), reason: reason.into() };
    let path = match role {
        Role::Source => format!("/jobs/{job}/fail"),
        Role::Target => format!("/jobs/{job}/target/fail"),
    };
    let call = client.call::<serde_json::Value>(reqwest::Method::POST, &path, |r| r.json(&f));
    let _ = tokio::time::timeout(Duration::from_secs(20), call).await;
}

fn load_drivers() -> Loader {
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

/// The disk holding a GPT partition named `ferry-boot`, and that partition's device.
fn find_boot_medium(disks: &[sysfs::SysDisk]) -> Option<(String, PathBuf)> {
    for d in disks {
        let path = Path::new("/dev").join(&d.name);
        let Ok(reader) = DiskReader::open(&path, None) else { continue };
        let Ok(table) = disk::read_partition_table(&reader) else { continue };
        if table.kind != TableKind::Gpt {
            continue;
        }
        if let Some(p) = table.partitions.iter().find(|p| p.name.as_deref() == Some("ferry-boot")) {
            let part = d
                .partitions
                .iter()
                .find(|name| {
                    fs::read_to_string(Path::new("/sys/block").join(&d.name).join(name).join("partition"))
                        .map(|s| s.trim() == p.number.to_string())
                        .unwrap_or(false)
                })
                .map(|name| Path::new("/dev").join(name))
                .unwrap_or_else(|| Path::new("/dev").join(format!("{}{}", d.name, p.number)));
            return Some((d.name.clone(), part));
        }
    }
    None
}

/// Reads `ferry.toml` from the boot stick's FAT partition, mounted read-only for a moment.
fn read_ferry_toml(part: &Path) -> Option<String> {
    let mnt = Path::new("/run/ferry/boot");
    fs::create_dir_all(mnt).ok()?;
    if let Err(e) = mount(Some(part), mnt, Some("vfat"), MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC, None::<&str>) {
        log::warn!("mounting the boot medium {}: {e}", part.display());
        return None;
    }
    let text = fs::read_to_string(mnt.join("ferry.toml")).ok();
    let _ = umount(mnt);
    text
}

fn report_coverage(c: &Coverage) {
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

pub(super) fn print_disk_table(paths: &[PathBuf], title: &str) {
    let reports: Vec<_> =
        paths.iter().filter_map(|p| disk::inspect_path(p, None).map_err(|e| log::warn!("{e:#}")).ok()).collect();
    crate::say!("\n{title}");
    crate::init::console::say(&crate::cli::render_disks(&reports));
}

/// Whether getrandom() would answer now; on machines without a hardware RNG the kernel may
/// need a while after boot, and TLS waits for it.
fn kernel_rng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: b is a valid 1-byte buffer; GRND_NONBLOCK makes the call return at once.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) };
    n == 1
}
