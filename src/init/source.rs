//! The live image in source role: this machine's disks, read-only since the first step, sent
//! to the receiver with a progress line per disk, and a verdict in words.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::cmdline::LiveConfig;
use super::console::Verdict;
use super::steps::enroll::already_migrated;
use super::verdict::{advice_for_refusal, Doing, Failed};
use crate::agent::client::refused_with;
use crate::agent::send::{send, SendOptions, SendProgress};
use crate::agent::Client;
use crate::disk::rescue::sector_count;
use crate::disk::source::ReadFailure;
use crate::image::hasher;
use crate::util::{human_bytes, human_duration};
use crate::wire::routes::call;
use crate::wire::{Code, MachineIdentity};

/// What the technician watches: a line per disk every 5 s, and one when a disk is done.
fn progress_lines() -> impl FnMut(&SendProgress) + Send {
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut finished_disks = std::collections::BTreeSet::new();
    let t0 = Instant::now();
    move |p: &SendProgress| {
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
    }
}

/// Sends `paths`; the verdict.
pub async fn run(
    client: &Client,
    cfg: &LiveConfig,
    job: &str,
    paths: &[PathBuf],
    inventory: serde_json::Value,
    machine: &MachineIdentity,
    started: Instant,
) -> Result<Verdict, Failed> {
    let opts = SendOptions {
        threads: hasher::default_threads(),
        inventory: Some(inventory),
        bad_sectors: cfg.bad_sectors,
        used_only: cfg.used_only,
        ..Default::default()
    };
    let mut on_progress = progress_lines();
    match send(client, job, paths, &opts, &mut on_progress).await {
        Ok(summaries) => {
            let mut lines = vec![format!(
                "job {job}: {} disk(s) copied and verified in {}",
                summaries.len(),
                human_duration(started.elapsed().as_secs())
            )];
            for s in &summaries {
                lines.push(format!("disk {} {} {}: blake3 {}", s.index, s.path, human_bytes(s.size), s.blake3));
                if let Some(u) = &s.used_only {
                    lines.push(format!("  {}", u.summary(s.size)));
                    lines.extend(u.details().into_iter().map(|l| format!("    {l}")));
                }
            }
            let used_only = summaries.iter().any(|s| s.used_only.is_some());
            let unreadable: u64 = summaries.iter().map(|s| sector_count(&s.bad_ranges, s.sector_size)).sum();
            let mut verdict = if unreadable == 0 {
                Verdict::migrated(lines, vec![])
            } else {
                lines.extend(unreadable_lines(&summaries, job));
                Verdict::migrated_with_unreadable(unreadable, lines)
            };
            if used_only {
                // Never mistaken for a bit-for-bit copy: free space is zeros in this one.
                verdict.headline += " (USED BLOCKS ONLY)";
            }
            Ok(verdict)
        }
        Err(e) if refused_with(&e, Code::JobFinished) => finished_before(client, job, machine).await,
        Err(e) => Err(Failed { lines: vec![format!("{e:#}")], advice: vec![advice_for(&e, cfg)] }),
    }
}

/// The unreadable ranges for the verdict, a line each, at most [`UNREADABLE_SHOWN`] of them.
fn unreadable_lines(summaries: &[crate::agent::send::DiskSummary], job: &str) -> Vec<String> {
    let all: Vec<String> = summaries
        .iter()
        .flat_map(|s| {
            s.bad_ranges.iter().map(move |r| format!("disk {} unreadable: {}", s.index, r.describe(s.sector_size)))
        })
        .collect();
    let mut lines: Vec<String> = all.iter().take(UNREADABLE_SHOWN).cloned().collect();
    if all.len() > UNREADABLE_SHOWN {
        lines.push(format!("... and {} more ranges: ferry job show {job}", all.len() - UNREADABLE_SHOWN));
    }
    lines
}

/// Unreadable ranges listed on the verdict screen (it must fit a 25-line console).
const UNREADABLE_SHOWN: usize = 8;

/// The job was Finished already: by this machine before (booted into ferry again), or by
/// another machine whose job this one was given by mistake. Only the first is "migrated".
async fn finished_before(client: &Client, job: &str, machine: &MachineIdentity) -> Result<Verdict, Failed> {
    let by = client.call::<call::ShowJob>(&[job], &()).await.ok().and_then(|j| j.machine);
    match by {
        Some(m) if crate::machine::same_machine(&m, machine) => Ok(already_migrated(job)),
        other => Err(Failed::new(
            format!(
                "job {job} is already Finished, copied from another machine (serial {}); this machine was NOT migrated",
                other.and_then(|m| m.serial).unwrap_or_else(|| "unknown".into())
            ),
            "Check ferry.job and ferry.token with the operator: they belong to another machine.",
        )),
    }
}

/// What to do about a failed send: the receiver's refusal by its code, a disk that could not
/// be read, or else the network.
fn advice_for(e: &anyhow::Error, cfg: &LiveConfig) -> String {
    if let Some(words) = advice_for_refusal(e, Doing::Source) {
        return words.into();
    }
    if ReadFailure::in_chain(e) {
        return "A source disk could not be read (failing disk or cable). Give this screen to the operator; do not retry blindly.".into();
    }
    format!(
        "Check that the receiver at {} is running and reachable, then reboot from the stick: chunks already sent are never sent again.",
        cfg.server.as_deref().unwrap_or("?")
    )
}
