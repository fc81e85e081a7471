//! `ferry pull`: the target agent from a running host (VM targets, tests).

use std::collections::HashMap;
use std::time::Duration;

use anyhow::Result;

use super::progress::Progress;
use crate::agent::target::{failure_code, pull, PullEvent, PullOptions};
use crate::agent::Client;
use crate::cmdline::PullArgs;
use crate::image::hasher;
use crate::util::human_bytes;

pub fn run(a: PullArgs) -> Result<i32> {
    let client = Client::new(&a.agent.endpoint(&a.token))?;
    let opts = PullOptions {
        in_flight: a.in_flight,
        threads: a.threads.unwrap_or_else(hasher::default_threads),
        wait_for_source: Duration::from_secs(a.wait),
        explicit: true,
        sector_size: a.sector_size,
    };
    let mut bars: HashMap<(u32, &'static str), Progress> = HashMap::new();
    let mut on = |e: PullEvent| {
        let phase = if matches!(e, PullEvent::Writing { .. }) { "writing" } else { "verifying" };
        match e {
            PullEvent::WaitingForSource { state } => eprintln!("waiting: {state}"),
            PullEvent::Mapped { pairs } => {
                for (s, path, size) in pairs {
                    eprintln!("source disk {s} -> {path} ({})", human_bytes(size));
                }
            }
            PullEvent::Writing { index, path, done, total } | PullEvent::Verifying { index, path, done, total } => {
                let bar = bars
                    .entry((index, phase))
                    .or_insert_with(|| Progress::new(&format!("{phase} disk {index} {path}"), total));
                bar.set(done);
                if done >= total {
                    bar.finish();
                }
            }
            PullEvent::Verified { .. } => {}
        }
    };
    let result = super::runtime()?.block_on(pull(&client, &a.job, &a.to, &opts, &mut on));
    match result {
        Ok(disks) => {
            if a.json {
                let out = serde_json::json!({ "job": a.job, "state": "Finished", "disks": disks });
                println!("{}", serde_json::to_string_pretty(&out)?);
            } else {
                for d in &disks {
                    println!(
                        "source disk {} -> {}: read back blake3 {} (equal to the source's)",
                        d.source_index,
                        d.target.path,
                        d.blake3.as_deref().unwrap_or("?")
                    );
                    if d.reused_chunks > 0 {
                        println!(
                            "  {} chunks an interrupted pull had written were kept (found with their ids)",
                            d.reused_chunks
                        );
                    }
                    for c in &d.changed {
                        println!("  then changed {} bytes at {} ({})", c.length, c.offset, c.what);
                    }
                }
                let unreadable: u64 = disks.iter().map(|d| d.unreadable_sectors).sum();
                if unreadable > 0 {
                    println!(
                        "MIGRATED WITH {unreadable} UNREADABLE SECTORS: job {} written and verified; the sectors the source could not read are zeros (ferry job show {} lists them)",
                        a.job, a.job
                    );
                } else {
                    println!("MIGRATED: job {} written to this machine and verified by reading it back", a.job);
                }
            }
            Ok(0)
        }
        Err(e) => {
            let code = failure_code(&e).to_string();
            if a.json {
                let out =
                    serde_json::json!({ "job": a.job, "state": "InError", "code": code, "reason": format!("{e:#}") });
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            eprintln!("ferry: FAILED [{code}]: {e:#}");
            Ok(super::EXIT_FAILED)
        }
    }
}
