//! The live image in target role (`ferry.role=target`): this machine receives a finished job's
//! disks. The checks, the write order and the read-back are the agent's ([`crate::agent::target`]);
//! this module gives them a screen a technician can follow and words for every refusal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::console::Verdict;
use super::steps::disks::print_disk_table;
use super::verdict::{advice, Doing, Failed};
use crate::agent::target::{failure_code, pull, PullEvent, PullOptions};
use crate::agent::Client;
use crate::image::hasher;
use crate::util::{human_bytes, human_duration};
use crate::wire::Code;

/// Writes the job's disks onto `disks` (every disk but the boot medium), chosen by size and bus
/// order. The source may still be sending: the target waits for it.
pub(super) async fn run(client: &Client, job: &str, disks: &[PathBuf], started: Instant) -> Result<Verdict, Failed> {
    print_disk_table(disks, "disks of this machine (nothing is written before every check holds):");
    let opts = PullOptions {
        in_flight: 8,
        threads: hasher::default_threads(),
        // A target can boot long before the source finishes; it just waits.
        wait_for_source: Duration::from_secs(7 * 24 * 3600),
        explicit: false,
        sector_size: None,
    };
    let mut on = screen();
    match pull(client, job, disks, &opts, &mut on).await {
        Ok(done) => {
            let mut lines = vec![format!(
                "job {job}: {} disk(s) written and verified by reading them back in {}",
                done.len(),
                human_duration(started.elapsed().as_secs())
            )];
            for d in &done {
                lines.push(format!(
                    "source disk {} -> {}: blake3 {}",
                    d.source_index,
                    d.target.path,
                    d.blake3.as_deref().unwrap_or("?")
                ));
                if d.reused_chunks > 0 {
                    lines.push(format!("  ({} chunks written before the interruption were kept)", d.reused_chunks));
                }
            }
            let remove = "Remove the ferry stick (or the PXE entry): the machine starts the migrated system.";
            let unreadable: u64 = done.iter().map(|d| d.unreadable_sectors).sum();
            if unreadable > 0 {
                lines.push(format!(
                    "{unreadable} sectors the source could not read are zeros here (ferry job show {job} lists them)"
                ));
                let mut v = Verdict::migrated_with_unreadable(unreadable, lines);
                v.advice.push(remove.into());
                return Ok(v);
            }
            Ok(Verdict::migrated(lines, vec![remove.into()]))
        }
        Err(e) if failure_code(&e) == Code::AlreadyDelivered => Ok(Verdict::already_done(
            format!("job {job} was already written to this machine and verified; nothing was written now"),
            "Remove the ferry stick (or the PXE entry) and start the machine from its disks; it powers off now rather than start ferry again.",
        )),
        Err(e) => {
            let code = failure_code(&e);
            Err(Failed { lines: vec![format!("{e:#} [{code}]")], advice: vec![advice(Some(code), Doing::Target).into()] })
        }
    }
}

/// What the technician watches while the disks are written and read back.
fn screen() -> impl FnMut(PullEvent) + Send {
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut waiting_said = false;
    let t0 = Instant::now();
    move |e: PullEvent| {
        let verb = if matches!(e, PullEvent::Writing { .. }) { "written" } else { "read back" };
        match e {
            PullEvent::WaitingForSource { state } => {
                if !waiting_said || last_line.elapsed() > Duration::from_secs(60) {
                    waiting_said = true;
                    last_line = Instant::now();
                    crate::say!("waiting for the source: {state}");
                }
            }
            PullEvent::Mapped { pairs } => {
                for (s, path, size) in pairs {
                    crate::say!("source disk {s} -> {path} ({}): WILL BE OVERWRITTEN", human_bytes(size));
                }
            }
            PullEvent::Writing { index, path, done, total } | PullEvent::Verifying { index, path, done, total } => {
                if last_line.elapsed() >= Duration::from_secs(5) || done == total {
                    last_line = Instant::now();
                    let rate = done as f64 / t0.elapsed().as_secs_f64().max(0.001);
                    let eta = if rate > 0.0 { ((total - done) as f64 / rate) as u64 } else { 0 };
                    crate::say!(
                        "disk {index} {path}: {} {} of {} ({}%), ETA {}",
                        verb,
                        human_bytes(done),
                        human_bytes(total),
                        (done * 100).checked_div(total).unwrap_or(100),
                        human_duration(eta)
                    );
                }
            }
            PullEvent::Verified { index, path, blake3, changed } => {
                crate::say!("disk {index} {path}: read back equal to the source (blake3 {blake3})");
                for c in changed {
                    crate::say!("  then updated {} ({} bytes at {})", c.what, c.length, c.offset);
                }
            }
        }
    }
}
