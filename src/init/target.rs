//! The live image in target role (`ferry.role=target`): this machine receives a finished job's
//! disks. The checks, the write order and the read-back are the agent's ([`crate::agent::pull`]);
//! this module gives them a screen a technician can follow and words for every refusal.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use super::console::Verdict;
use super::worker::{print_disk_table, Failed};
use crate::agent::pull::{failure_code, pull, PullEvent, PullOptions};
use crate::agent::Client;
use crate::image::hasher;
use crate::util::{human_bytes, human_duration};

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
    let mut last_line = Instant::now() - Duration::from_secs(60);
    let mut waiting_said = false;
    let t0 = Instant::now();
    let mut on = move |e: PullEvent| {
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
    };
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
            Ok(Verdict {
                ok: true,
                headline: "MIGRATED".into(),
                lines,
                advice: vec![
                    "Remove the ferry stick (or the PXE entry): the machine starts the migrated system.".into()
                ],
                on_finish: None,
                countdown: None,
            })
        }
        Err(e) if failure_code(&e) == "already_delivered" => Ok(Verdict {
            ok: true,
            headline: "MIGRATED".into(),
            lines: vec![format!("job {job} was already written to this machine and verified; nothing was written now")],
            advice: vec![
                "Remove the ferry stick (or the PXE entry) and start the machine from its disks; it powers off now rather than start ferry again."
                    .into(),
            ],
            on_finish: Some(super::cmdline::OnFinish::Poweroff),
            countdown: None,
        }),
        Err(e) => {
            let code = failure_code(&e).to_string();
            Err(Failed { lines: vec![format!("{e:#} [{code}]")], advice: vec![advice(&code).into()] })
        }
    }
}

/// What the technician does about each refusal or failure.
fn advice(code: &str) -> &'static str {
    match code {
        "wipe_not_allowed" => {
            "Nothing was written. The operator must allow wiping this machine: give them the serial and UUID shown above (ferry job target JOB --target-machine SERIAL --allow-wipe), then reboot from the stick."
        }
        "wrong_target" => "Nothing was written: this is not the machine the job names. Check the server's label against the job.",
        "target_is_source" => "Nothing was written: this machine or one of its disks is the source of the migration.",
        "too_few_disks" | "disk_too_small" | "sector_size_mismatch" | "disk_not_named" => {
            "Nothing was written: this machine's disks cannot hold the source's. Give this screen to the operator."
        }
        "source_not_finished" => "The source has not finished sending. Reboot from the stick once it has.",
        "disk_busy" => "Nothing was written: a disk is in use. Reboot from the stick and try again.",
        "target_busy" => "Nothing was written: another machine is writing this job's disks right now. Check the job with the operator.",
        "readback_mismatch" | "write_failed" | "read_failed" | "chunk_corrupt" | "manifest_mismatch" => {
            "The disks were left without a partition table, so they do not start half-written. Reboot from the stick to try again; if it repeats, a disk or the receiver's store may be failing."
        }
        _ => "Give this screen to the operator; reboot from the stick to try again (a half-written disk does not start).",
    }
}
