//! How a wave's summary and a job's receipt read on the terminal: `ferry job list --wave`,
//! `ferry job receipt`.

use crate::util::{human_bytes, human_duration, printable, utc_time};
use crate::wire::{Receipt, WaveSummary};

macro_rules! show {
    ($($a:tt)*) => { println!("{}", printable(&format!($($a)*))) };
}

/// `ferry job list --wave NAME`.
pub fn print_wave(w: &WaveSummary) {
    let states: Vec<String> = w.by_state.iter().map(|(s, n)| format!("{n} {s}")).collect();
    show!("wave {}: {} machines: {}", w.wave, w.machines, states.join(", "));
    let eta = match w.eta_seconds {
        Some(s) => format!(", about {} to go", human_duration(s)),
        None => String::new(),
    };
    show!(
        "{} of {} read, {} to go, {}/s now{eta}",
        human_bytes(w.bytes_done),
        human_bytes(w.bytes_total),
        human_bytes(w.bytes_to_go),
        human_bytes(w.rate)
    );
    show!("{:<14} {:<10} {:<24} {:>22} {:>12}  PROBLEM", "ID", "STATE", "NAME", "PROGRESS", "RATE");
    for j in &w.jobs {
        let problem = match (&j.error_code, &j.error_reason) {
            (Some(c), Some(r)) => format!("{c}: {r}"),
            (Some(c), None) => c.clone(),
            _ => String::new(),
        };
        show!(
            "{:<14} {:<10} {:<24} {:>22} {:>12}  {problem}",
            j.id,
            j.state.as_str(),
            j.name,
            format!("{} / {}", human_bytes(j.bytes_done), human_bytes(j.bytes_total)),
            format!("{}/s", human_bytes(j.rate))
        );
    }
}

/// `ferry job receipt ID`.
pub fn print_receipt(r: &Receipt) {
    show!("receipt for job {} ({}), {}", r.job, r.name, r.state.as_str());
    if let Some(w) = &r.wave {
        show!("wave:      {w}");
    }
    // A machine by what identifies it: serial, DMI UUID, host name.
    let who = |m: &crate::wire::MachineIdentity| {
        [&m.serial, &m.product_uuid, &m.hostname].into_iter().flatten().cloned().collect::<Vec<_>>().join(", ")
    };
    if let Some(m) = &r.machine {
        show!("source:    {}", who(m));
    }
    if let Some(m) = &r.target_machine {
        show!("target:    {}", who(m));
    }
    show!("created:   {}", utc_time(r.created_at));
    if let Some(t) = r.started_at {
        show!("started:   {}", utc_time(t));
    }
    if let Some(t) = r.finished_at {
        show!("finished:  {}", utc_time(t));
    }
    for d in &r.disks {
        show!(
            "disk {}: {} ({}), BLAKE3 {}{}",
            d.index,
            d.source,
            human_bytes(d.size),
            d.blake3.as_deref().unwrap_or("(not verified)"),
            if d.unreadable.is_empty() { "" } else { " WITH UNREADABLE SECTORS (sent as zeros)" }
        );
        if let Some(u) = &d.used_only {
            show!("  {} (BLAKE3 of the zero-filled copy)", u.summary(d.size));
        }
        if let (Some(t), Some(h)) = (&d.target_disk, &d.target_blake3) {
            let same = if d.blake3.as_deref() == Some(h.as_str()) { "the same" } else { "DIFFERENT" };
            show!("  written to {t}, read back: {h} ({same})");
        }
        show!("  check: {}", d.check);
    }
}
