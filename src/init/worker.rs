//! The live image's work, in a child of PID 1: a short sequence of named steps (`steps::*`),
//! then the role (`source`, `target`), ending in a verdict on screen and at the receiver.

use std::fs;
use std::path::Path;
use std::time::{Duration, Instant};

use super::cmdline::{LiveConfig, Role};
use super::console::{render_verdict, Verdict, VERDICT_PATH};
use super::coverage;
use super::report::{report_failure, stream_transcript, upload_transcript};
use super::steps::{config, disks, drivers, enroll, network};
use super::verdict::Failed;
use crate::agent::{Client, Endpoint};
use crate::wire::Code;

/// Runs the worker; returns the process exit code after writing the verdict.
pub fn run() -> i32 {
    let cmdline = fs::read_to_string("/proc/cmdline").unwrap_or_default();
    let debug = crate::boot::split_words(&cmdline)
        .iter()
        .any(|w| w == crate::boot::keys::DEBUG || *w == format!("{}=1", crate::boot::keys::DEBUG));
    super::kmsg::init(debug);
    std::panic::set_hook(Box::new(|info| {
        write_verdict(&Verdict::failed(Failed::new(
            format!("ferry hit an internal error: {info}"),
            "Nothing was reported as migrated. Photograph this screen for the operator.",
        )));
    }));
    let mut cfg = LiveConfig::from_cmdline(&cmdline);
    crate::say!("\nferry {} live image", env!("CARGO_PKG_VERSION"));
    let verdict = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt.block_on(work(&mut cfg, &cmdline)),
        Err(e) => Err(Failed::new(format!("cannot start: {e}"), "Reboot and try again.")),
    };
    let mut v = verdict.unwrap_or_else(Verdict::failed);
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

fn write_verdict(v: &Verdict) {
    crate::init::console::say(&render_verdict(v));
    let _ = fs::create_dir_all("/run/ferry");
    if let Ok(b) = serde_json::to_vec(v) {
        let _ = fs::write(VERDICT_PATH, b);
    }
}

async fn work(cfg: &mut LiveConfig, cmdline: &str) -> Result<Verdict, Failed> {
    let started = Instant::now();
    let mut loader = drivers::load_drivers();
    crate::say!("drivers: {} modules loaded", loader.loaded.len());
    crate::say!("{}", super::firmware::Firmware::read(&mut loader).line());
    let all_disks = disks::lock_all()?;
    let boot_disk = disks::find_boot_medium(&all_disks);
    if let Some((disk, _)) = &boot_disk {
        crate::say!("boot medium: /dev/{disk} (not migrated)");
    }
    let toml = boot_disk.as_ref().and_then(|(_, part)| disks::read_ferry_toml(part));
    config::settle(cfg, cmdline, toml)?;
    let machine = crate::machine::machine_identity();
    crate::say!(
        "machine: {} {} serial {} uuid {}",
        machine.vendor.as_deref().unwrap_or("?"),
        machine.product.as_deref().unwrap_or("?"),
        machine.serial.as_deref().unwrap_or("?"),
        machine.product_uuid.as_deref().unwrap_or("?")
    );
    let paths = disks::chosen(&all_disks, boot_disk.as_ref().map(|(d, _)| d.as_str()), cfg);
    let cov = coverage::check(Path::new("/sys"), &coverage::disk_device_paths(Path::new("/sys")));
    drivers::report_coverage(&cov);
    network::bring_up(cfg).await?;
    if let (None, Some(enrollment)) = (&cfg.job, cfg.enroll.clone()) {
        if let Some(done) = enroll::enroll(cfg, endpoint(cfg, &enrollment), &machine).await? {
            return Ok(done);
        }
    }
    let client = Client::new(&endpoint(cfg, cfg.token.as_deref().unwrap_or_default()))
        .map_err(|e| Failed::new(format!("{e:#}"), "Fix ferry.server / ferry.pin and boot again."))?;
    let job = cfg.job.clone().unwrap_or_default();
    stream_transcript(&client, &job);
    if !cov.storage_ok() {
        let ids: Vec<String> =
            cov.unbound_storage.iter().map(|d| format!("{} (class {}) at {}", d.id, d.class, d.address)).collect();
        let reason = format!("no driver in this image for storage controller {}", ids.join(", "));
        return Err(refuse(&client, &job, cfg.role, Code::MissingDriver, reason).await);
    }
    if paths.is_empty() {
        let reason = "no disk found (other than the boot medium)".to_string();
        return Err(refuse(&client, &job, cfg.role, Code::NoDisks, reason).await);
    }
    if cfg.role == Role::Target {
        return super::target::run(&client, &job, &paths, started).await;
    }
    // The source disks, already read-only since the first step.
    disks::print_disk_table(&paths, "disks to migrate (read-only at the kernel level):");
    let inventory = serde_json::json!({ "coverage": cov, "pci": coverage::pci_devices(Path::new("/sys")) });
    super::source::run(&client, cfg, &job, &paths, inventory, &machine, started).await
}

fn endpoint(cfg: &LiveConfig, token: &str) -> Endpoint {
    Endpoint {
        server: cfg.server.clone().unwrap_or_default(),
        token: token.to_string(),
        pin: cfg.pin.clone(),
        plain_http: cfg.plain_http,
        retry_for: Duration::from_secs(cfg.retry),
    }
}

/// This machine cannot go on: the receiver records why, the technician reads what to do.
async fn refuse(client: &Client, job: &str, role: Role, code: Code, reason: String) -> Failed {
    report_failure(client, job, role, code, &reason).await;
    Failed::new(reason, super::verdict::advice(Some(code), role.into()))
}
