//! The target side (`ferry pull`, the live image's target role): check this machine, write the source's disks onto it, read them back.
//!
//! Order of work, chosen so that an interruption at any moment leaves the machine either with
//! every disk a verified copy or with no disk that boots:
//! 1. Register; the receiver checks the wipe permission and the machine identity.
//! 2. Check the disks here ([`check::plan`]); a refusal writes nothing.
//! 3. Per disk, its body: clear the partition tables (first and last MiB), then every chunk
//!    (several in flight, each id checked before it is written; zero chunks written as zeros,
//!    never trusted to discard) except the sectors that make a disk bootable, which stay in
//!    memory: LBA 0-1 (MBR, primary GPT header) and the source's last sector (a backup GPT
//!    header: firmware looks for one at the end of the disk). Flush, drop the kernel's cache,
//!    read the source's size back and compare every chunk id and the whole-disk BLAKE3 with the
//!    source's, counting the held-back sectors as they will be.
//! 4. Only when every disk's body is verified: per disk, the held-back sectors, each flushed to
//!    the medium before the next (the kernel writes dirty pages back in any order) and read back.
//! 5. On a larger disk, move the backup GPT to the new end (`disk::gpt_grow`), the only bytes ferry
//!    changes, recorded in the job. Any failure clears the tables of every disk touched.

//!
//! Rooms: `check` (the target's own preconditions), `body` (one disk's body, written and read
//! back: `chunk` per chunk, `readback`), `tables` (the held-back sectors, the GPT relocation).

mod body;
pub mod check;
mod chunk;
mod readback;
mod tables;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::client::{Client, Refused};
use crate::disk::rescue::sector_count;
use crate::disk::writer::DiskWriter;
use crate::disk::{self, DiskReader};
use crate::machine::machine_identity;
use crate::wire::routes::call;
use crate::wire::*;
use check::TargetDisk;

/// A failure with a stable code, as recorded in the job's delivery.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct TargetFailure {
    pub code: Code,
    pub reason: String,
}

fn failure(code: Code, reason: impl Into<String>) -> anyhow::Error {
    TargetFailure { code, reason: reason.into() }.into()
}

/// The receiver's refusal as the target's failure (its code when it is one of ours).
fn refused(r: &Refused) -> anyhow::Error {
    failure(r.code.unwrap_or(Code::Internal), r.message.clone())
}

/// The stable code of an error from [`pull`] (`internal` when it has none).
pub fn failure_code(e: &anyhow::Error) -> Code {
    e.downcast_ref::<TargetFailure>().map(|f| f.code).unwrap_or(Code::Internal)
}

#[derive(Clone, Debug)]
pub struct PullOptions {
    /// Chunk downloads (and writes) in flight at once.
    pub in_flight: usize,
    /// Threads reading the disks back.
    pub threads: usize,
    /// How long to wait for the source side to finish before giving up.
    pub wait_for_source: Duration,
    /// The target disks are listed in source order (`--to`), not to be mapped by size.
    pub explicit: bool,
    /// Logical sector size of image-file targets (block devices report their own).
    pub sector_size: Option<u32>,
}

/// What the target is doing, for screens and progress bars.
#[derive(Clone, Debug)]
pub enum PullEvent {
    WaitingForSource { state: String },
    Mapped { pairs: Vec<(u32, String, u64)> },
    Writing { index: u32, path: String, done: u64, total: u64 },
    Verifying { index: u32, path: String, done: u64, total: u64 },
    Verified { index: u32, path: String, blake3: String, changed: Vec<ChangedRange> },
}

/// Pulls the job's disks onto `targets` and reports the delivery Finished. Any failure after
/// registration is reported to the receiver with its code before it is returned.
pub async fn pull(
    client: &Client,
    job: &str,
    targets: &[PathBuf],
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<Vec<DeliveredDisk>> {
    let locals = inspect_targets(targets, opts.sector_size)?;
    let plan = register(client, job, &locals, opts, on).await?;
    let result = write_all(client, job, &plan, targets, &locals, opts, on).await;
    if let Err(e) = &result {
        let body = Failure { code: failure_code(e).as_str().to_string(), reason: format!("{e:#}") };
        if let Err(report) = client.call::<call::TargetFail>(&[job], &body).await {
            log::warn!("could not report the failure to the receiver: {report:#}");
        }
    }
    result
}

fn inspect_targets(targets: &[PathBuf], sector_size: Option<u32>) -> Result<Vec<TargetDisk>> {
    targets
        .iter()
        .map(|p| {
            let reader = DiskReader::open(p, sector_size)?;
            // A blank or damaged disk has no GUID; that is no reason to stop.
            let guid = disk::read_partition_table(&reader).ok().and_then(|t| t.disk_guid);
            Ok(TargetDisk { identity: disk::identify(&reader), gpt_disk_guid: guid })
        })
        .collect()
}

async fn register(
    client: &Client,
    job: &str,
    locals: &[TargetDisk],
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<TargetPlan> {
    let req =
        TargetRegister { machine: machine_identity(), disks: locals.iter().map(|d| d.identity.clone()).collect() };
    let started = Instant::now();
    loop {
        match client.call::<call::TargetRegister>(&[job], &req).await {
            Ok(plan) => return Ok(plan),
            Err(e) => match e.downcast_ref::<Refused>() {
                Some(r) if r.is(Code::SourceNotFinished) && started.elapsed() < opts.wait_for_source => {
                    on(PullEvent::WaitingForSource { state: r.message.clone() });
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Some(r) => return Err(refused(r)),
                None => return Err(e),
            },
        }
    }
}

/// Opens every mapped target disk for writing, before the first byte goes to any of them.
fn open_writers(mapping: &check::Mapping, targets: &[PathBuf]) -> Result<Vec<Arc<DiskWriter>>> {
    mapping
        .iter()
        .map(|&(_, t)| {
            DiskWriter::open(&targets[t]).map(Arc::new).map_err(|e| failure(Code::DiskBusy, format!("{e:#}")))
        })
        .collect()
}

async fn write_all(
    client: &Client,
    job: &str,
    plan: &TargetPlan,
    targets: &[PathBuf],
    locals: &[TargetDisk],
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<Vec<DeliveredDisk>> {
    let mapping = check::plan(&plan.disks, locals, opts.explicit, &plan.named_disks, plan.rewriting)
        .map_err(|r| failure(r.code, r.reason))?;
    on(PullEvent::Mapped {
        pairs: mapping.iter().map(|&(s, t)| (s, locals[t].identity.path.clone(), locals[t].identity.size)).collect(),
    });
    let writers = open_writers(&mapping, targets)?;
    let begin = TargetBegin {
        disks: mapping
            .iter()
            .map(|&(s, t)| DeliveredDisk {
                source_index: s,
                target: locals[t].identity.clone(),
                bytes_written: 0,
                blake3: None,
                verified: false,
                changed: vec![],
                reused_chunks: 0,
                unreadable_sectors: plan
                    .disks
                    .iter()
                    .find(|d| d.index == s)
                    .map(|d| sector_count(&d.bad_ranges, d.identity.logical_sector_size))
                    .unwrap_or(0),
            })
            .collect(),
    };
    client.call::<call::TargetBegin>(&[job], &begin).await?;
    // Every disk's body first (written and read back), then every disk's partition tables:
    // until the last disk is verified, none of them boots, so a machine never starts with some
    // of its disks missing.
    let result = async {
        let mut bodies = vec![];
        for (&(s, _), writer) in mapping.iter().zip(&writers) {
            let src = plan.disks.iter().find(|d| d.index == s).context("the plan lost a disk")?;
            bodies.push(body::write_body(client, job, src, writer.clone(), plan.rewriting, opts, on).await?);
        }
        let done = tables::finish_disks(&bodies, begin.disks, on).await?;
        let body = TargetDone { disks: done.clone() };
        client.call::<call::TargetFinish>(&[job], &body).await.map_err(|e| match e.downcast_ref::<Refused>() {
            Some(r) => refused(r),
            None => e,
        })?;
        Ok(done)
    }
    .await;
    if result.is_err() {
        // Half a migration must not boot: every disk touched loses its tables again.
        for w in &writers {
            if let Err(clear) = w.clear_tables() {
                log::error!("clearing the partition tables of {} failed too: {clear}", w.path().display());
            }
        }
    }
    result
}
