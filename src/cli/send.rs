//! `ferry send`: the source agent from a running system or the live image.

use std::collections::HashMap;

use anyhow::Result;

use super::progress::Progress;
use crate::agent::enroll::enroll;
use crate::agent::send::{send, SendOptions};
use crate::agent::Client;
use crate::cmdline::SendArgs;
use crate::disk::rescue::sector_count;
use crate::image::hasher;
use crate::util::human_bytes;

pub fn run(a: SendArgs) -> Result<i32> {
    let rt = super::runtime()?;
    let (job, token) = match (&a.enroll, &a.job, &a.token) {
        (Some(enrollment), _, _) => {
            let machine = crate::machine::machine_identity();
            if machine.product_uuid.is_none() && machine.serial.is_none() {
                eprintln!(
                    "warning: no DMI product UUID or serial readable (run as root?): the receiver tells this machine by its MAC address, which the live image may not match"
                );
            }
            let e = rt.block_on(enroll(&a.agent.endpoint(enrollment), &machine, false))?;
            eprintln!(
                "enrolled: {} job {} ({})",
                if e.created { "new" } else { "this machine's unfinished" },
                e.job,
                e.name
            );
            (e.job, e.token)
        }
        (None, Some(job), Some(token)) => (job.clone(), token.clone()),
        // clap requires --job and --token unless --enroll is given.
        _ => anyhow::bail!("give --job and --token, or --enroll"),
    };
    let client = Client::new(&a.agent.endpoint(&token))?;
    let opts = SendOptions {
        threads: a.threads.unwrap_or_else(hasher::default_threads),
        in_flight: a.in_flight,
        compress: a.compress.then_some(true),
        bandwidth_limit: a.bandwidth_limit,
        chunk_size: a.chunk_size,
        bad_sectors: a.bad_sectors,
        used_only: a.used_only.then_some(true),
        inventory: None,
        chunks_per_page: a.chunks_per_page,
    };
    let mut bars: HashMap<u32, Progress> = HashMap::new();
    let mut on_progress = |p: &crate::agent::send::SendProgress| {
        let bar = bars.entry(p.index).or_insert_with(|| Progress::new(&format!("disk {} {}", p.index, p.path), p.size));
        bar.set(p.bytes_done);
        if p.bytes_done >= p.size {
            bar.finish();
        }
    };
    let summaries = rt.block_on(send(&client, &job, &a.disks, &opts, &mut on_progress))?;
    if a.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&serde_json::json!({ "job": job, "state": "Finished", "disks": summaries }))?
        );
    } else {
        print_summaries(&job, &summaries);
    }
    Ok(0)
}

/// What each disk came to, and the verdict in words.
fn print_summaries(job: &str, summaries: &[crate::agent::send::DiskSummary]) {
    for s in summaries {
        println!(
            "disk {} {}: {} verified, blake3 {} ({} of {} chunks sent, {} on the wire, {} zero)",
            s.index,
            s.path,
            human_bytes(s.size),
            s.blake3,
            s.sent_chunks,
            s.chunks,
            human_bytes(s.sent_bytes),
            s.zero_chunks
        );
        print_bad_ranges(s);
        if let Some(u) = &s.used_only {
            println!("  {}", u.summary(s.size));
            for line in u.details() {
                println!("    {line}");
            }
        }
    }
    let bad: u64 = summaries.iter().map(|s| sector_count(&s.bad_ranges, s.sector_size)).sum();
    if bad > 0 {
        println!("MIGRATED WITH {bad} UNREADABLE SECTORS: job {job} is Finished; those sectors are zeros in the copy");
    } else if summaries.iter().any(|s| s.used_only.is_some()) {
        println!(
            "MIGRATED (USED BLOCKS ONLY): job {job} is Finished; every disk's whole-disk BLAKE3 of the zero-filled copy matches on both ends"
        );
    } else {
        println!("MIGRATED: job {} is Finished; every disk's whole-disk BLAKE3 matches on both ends", job);
    }
}

/// Each unreadable range of a disk, a line each (the first 20, then how many more).
fn print_bad_ranges(s: &crate::agent::send::DiskSummary) {
    const SHOWN: usize = 20;
    for r in s.bad_ranges.iter().take(SHOWN) {
        println!("  unreadable: {}", r.describe(s.sector_size));
    }
    if s.bad_ranges.len() > SHOWN {
        println!("  ... and {} more unreadable ranges (ferry job show lists them all)", s.bad_ranges.len() - SHOWN);
    }
}
