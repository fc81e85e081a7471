//! How a job reads on the terminal: `ferry job show`, the `ferry job list` table.

use crate::util::{human_bytes, human_duration};

/// Prints a line whose parts may come from machines (names, DMI, disks, reasons): control
/// characters never reach the terminal raw.
macro_rules! show {
    ($($a:tt)*) => { println!("{}", crate::util::printable(&format!($($a)*))) };
}
use crate::wire::{Job, TargetKind};

/// Sectors the source could not read, over every disk of the job.
fn unreadable_sectors(j: &Job) -> u64 {
    j.disks.iter().map(|d| crate::disk::rescue::sector_count(&d.bad_ranges, d.identity.logical_sector_size)).sum()
}

/// The `ferry job list` table.
pub fn print_list(jobs: &[Job]) {
    if jobs.is_empty() {
        show!("No jobs.");
        return;
    }
    show!("{:<14} {:<10} {:<24} {:>6} {:>22}  TARGET", "ID", "STATE", "NAME", "DISKS", "PROGRESS");
    for j in jobs {
        let (done, total) = j.disks.iter().fold((0, 0), |(d, t), x| (d + x.bytes_done, t + x.size));
        let target = match (&j.target, &j.delivery) {
            (TargetKind::Image, _) => "images".to_string(),
            (TargetKind::Instance, None) => "instance (not registered)".to_string(),
            (TargetKind::Instance, Some(d)) => format!("instance {}", d.state.as_str()),
        };
        let unreadable = match unreadable_sectors(j) {
            0 => String::new(),
            n => format!("  WITH {n} UNREADABLE SECTORS"),
        };
        show!(
            "{:<14} {:<10} {:<24} {:>6} {:>22}  {}{unreadable}",
            j.id,
            j.state.as_str(),
            j.name,
            j.disks.len(),
            format!("{} / {}", human_bytes(done), human_bytes(total)),
            target
        );
    }
}

/// A line per disk, and its unreadable sectors when the source recorded any.
fn print_disks(disks: &[crate::wire::DiskStatus]) {
    for d in disks {
        let eta = d.eta_seconds.map(|s| format!(", ETA {}", human_duration(s))).unwrap_or_default();
        show!(
            "disk {}: {} {} - {} of {} hashed, {} received{}{}",
            d.index,
            d.identity.path,
            format!("{:?}", d.partition_table.kind).to_lowercase(),
            human_bytes(d.bytes_done),
            human_bytes(d.size),
            human_bytes(d.bytes_received),
            eta,
            match &d.blake3 {
                Some(h) if d.verified => format!(", verified blake3 {h}"),
                _ => String::new(),
            }
        );
        if let Some(u) = &d.used_only {
            show!("  {}", u.summary(d.size));
            for line in u.details() {
                show!("    {line}");
            }
        }
        if !d.bad_ranges.is_empty() {
            let ss = d.identity.logical_sector_size;
            show!(
                "  {} UNREADABLE SECTORS on the source, zeros in this copy:",
                crate::disk::rescue::sector_count(&d.bad_ranges, ss)
            );
            for r in &d.bad_ranges {
                show!("    {}", r.describe(ss));
            }
        }
    }
}

pub fn print_job(j: &Job) {
    let bad = unreadable_sectors(j);
    let with_bad = if bad > 0 { format!(" WITH {bad} UNREADABLE SECTORS") } else { String::new() };
    show!("job {} ({}), target {:?}: {}{with_bad}", j.id, j.name, j.target, j.state.as_str());
    if let (Some(code), Some(reason)) = (&j.error_code, &j.error_reason) {
        show!("error: {reason} [{code}]");
    }
    if let Some(m) = &j.machine {
        let what = [m.vendor.as_deref(), m.product.as_deref(), m.serial.as_deref(), m.product_uuid.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        show!("machine: {what} macs {}", m.macs.join(","));
    }
    if let Some(e) = &j.enrollment {
        show!("enrolled itself with enrollment {e}");
    }
    print_disks(&j.disks);
    print_history(&j.history);
    if let Some(spec) = &j.target_spec {
        let names: Vec<&str> = spec.machine.iter().chain(&spec.disks).map(String::as_str).collect();
        show!(
            "target: {}; wipe {}",
            if names.is_empty() { "not named".to_string() } else { names.join(", ") },
            if spec.allow_wipe { "allowed" } else { "NOT allowed" }
        );
    }
    if let Some(d) = &j.delivery {
        show!("delivery: {}", d.state.as_str());
        if let (Some(code), Some(reason)) = (&d.error_code, &d.error_reason) {
            show!("error: {reason} [{code}]");
        }
        if let Some(m) = &d.machine {
            show!(
                "target machine: {} serial {} uuid {}",
                m.product.as_deref().unwrap_or("?"),
                m.serial.as_deref().unwrap_or("none"),
                m.product_uuid.as_deref().unwrap_or("none")
            );
        }
        for x in &d.disks {
            show!(
                "source disk {} -> {} ({}): {} written{}",
                x.source_index,
                x.target.path,
                human_bytes(x.target.size),
                human_bytes(x.bytes_written),
                match &x.blake3 {
                    Some(h) if x.verified => format!(", read back blake3 {h}"),
                    _ => String::new(),
                }
            );
            for c in &x.changed {
                show!("  changed after verifying: {} bytes at {} ({})", c.length, c.offset, c.what);
            }
        }
        print_history(&d.history);
    }
}

fn print_history(history: &[crate::wire::JobEvent]) {
    for e in history {
        show!(
            "  {} {}{}",
            crate::util::utc_time(e.at),
            e.state.as_str(),
            e.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
}
