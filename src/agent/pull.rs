//! The target side: check this machine, write the source's disks onto it, read them back.
//!
//! Order of work, chosen so that an interruption at any moment leaves a disk that either holds
//! the verified copy or does not boot at all:
//! 1. Register; the receiver checks the wipe permission and the machine identity.
//! 2. Check the disks here ([`target_check::plan`]); a refusal writes nothing.
//! 3. Per disk: clear the partition tables (first and last MiB), write every chunk but the
//!    first, holding back the source's last sector (where a backup GPT header lives: on a
//!    same-size disk it is at the disk's end, where firmware would find it), then the first
//!    chunk (MBR, primary GPT), then the held-back sector. Each downloaded chunk's id is checked
//!    before it is written; zero chunks are written as zeros, never trusted to discard.
//! 4. Flush, drop the kernel's cache of the disk, read the source's size back and compare every
//!    chunk id and the whole-disk BLAKE3 with the source's. A mismatch clears the tables again.
//! 5. On a larger disk, move the backup GPT to the new end ([`gpt_grow`]), the only bytes
//!    ferry changes, recorded in the job.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};
use reqwest::Method;

use super::client::{Client, Refused};
use super::identity::machine_identity;
use super::target_check::{self, TargetDisk};
use crate::disk::gpt_grow;
use crate::disk::writer::DiskWriter;
use crate::disk::{self, DiskReader, TableKind};
use crate::image::treehash::{self, chunk_id};
use crate::image::{hash_all_chunks, Manifest};
use crate::proto::*;

/// A failure with a stable code, as recorded in the job's delivery.
#[derive(Debug, thiserror::Error)]
#[error("{reason}")]
pub struct TargetFailure {
    pub code: String,
    pub reason: String,
}

fn failure(code: &str, reason: impl Into<String>) -> anyhow::Error {
    TargetFailure { code: code.into(), reason: reason.into() }.into()
}

/// The stable code of an error from [`pull`] (`internal` when it has none).
pub fn failure_code(e: &anyhow::Error) -> &str {
    e.downcast_ref::<TargetFailure>().map(|f| f.code.as_str()).unwrap_or("internal")
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
        let body = Failure { code: failure_code(e).to_string(), reason: format!("{e:#}") };
        if let Err(report) =
            client.call::<serde_json::Value>(Method::POST, &format!("/jobs/{job}/target/fail"), |r| r.json(&body)).await
        {
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
        match client.call::<TargetPlan>(Method::POST, &format!("/jobs/{job}/target/register"), |r| r.json(&req)).await {
            Ok(plan) => return Ok(plan),
            Err(e) => match e.downcast_ref::<Refused>() {
                Some(r) if r.code == "source_not_finished" && started.elapsed() < opts.wait_for_source => {
                    on(PullEvent::WaitingForSource { state: r.message.clone() });
                    tokio::time::sleep(Duration::from_secs(5)).await;
                }
                Some(r) => return Err(failure(&r.code, r.message.clone())),
                None => return Err(e),
            },
        }
    }
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
    let mapping = target_check::plan(&plan.disks, locals, opts.explicit).map_err(|r| failure(r.code, r.reason))?;
    on(PullEvent::Mapped {
        pairs: mapping.iter().map(|&(s, t)| (s, locals[t].identity.path.clone(), locals[t].identity.size)).collect(),
    });
    // Every target disk opens for writing before the first byte goes to any of them.
    let mut writers = vec![];
    for &(_, t) in &mapping {
        writers.push(Arc::new(DiskWriter::open(&targets[t]).map_err(|e| failure("disk_busy", format!("{e:#}")))?));
    }
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
            })
            .collect(),
    };
    client.call::<serde_json::Value>(Method::POST, &format!("/jobs/{job}/target/begin"), |r| r.json(&begin)).await?;
    let mut done = vec![];
    for ((&(s, t), writer), mut delivered) in mapping.iter().zip(&writers).zip(begin.disks) {
        let src = plan.disks.iter().find(|d| d.index == s).context("the plan lost a disk")?;
        match write_disk(client, job, src, writer.clone(), opts, on).await {
            Ok((blake3, written, changed)) => {
                on(PullEvent::Verified {
                    index: s,
                    path: locals[t].identity.path.clone(),
                    blake3: blake3.clone(),
                    changed: changed.clone(),
                });
                delivered.blake3 = Some(blake3);
                delivered.verified = true;
                delivered.bytes_written = written;
                delivered.changed = changed;
                done.push(delivered);
            }
            Err(e) => {
                // Half a disk must not boot: clear its tables again (the first chunk may be in).
                if let Err(clear) = writer.clear_tables() {
                    log::error!("clearing the partition tables of {} failed too: {clear}", writer.path().display());
                }
                return Err(e);
            }
        }
    }
    let body = TargetDone { disks: done.clone() };
    client.call::<Job>(Method::POST, &format!("/jobs/{job}/target/finish"), |r| r.json(&body)).await.map_err(|e| {
        match e.downcast_ref::<Refused>() {
            Some(r) => failure(&r.code, r.message.clone()),
            None => e,
        }
    })?;
    Ok(done)
}

/// Writes one source disk onto `writer`, reads it back, fixes up its GPT; returns the hash read
/// back, the bytes written and the ranges changed after verification.
async fn write_disk(
    client: &Client,
    job: &str,
    src: &SourceDisk,
    writer: Arc<DiskWriter>,
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<(String, u64, Vec<ChangedRange>)> {
    let path = writer.path().display().to_string();
    let n = src.index;
    let m: Arc<Manifest> = Arc::new(client.call(Method::GET, &format!("/jobs/{job}/disks/{n}/manifest"), |r| r).await?);
    if m.size != src.size || hex::encode(m.blake3) != src.blake3 || m.validate().is_err() {
        return Err(failure("manifest_mismatch", format!("the manifest of disk {n} does not match the job's record")));
    }
    let sector = src.identity.logical_sector_size.max(512) as u64;
    let w = writer.clone();
    tokio::task::spawn_blocking(move || w.clear_tables()).await?.with_context(|| format!("clearing {path}"))?;

    let count = m.chunks.len() as u64;
    let written = Arc::new(AtomicU64::new(0));
    let held_back = Arc::new(std::sync::Mutex::new(None::<Vec<u8>>));
    let ctx = ChunkCtx {
        client: client.clone(),
        job: job.into(),
        disk: n,
        m: m.clone(),
        writer,
        held_back: held_back.clone(),
        sector,
    };
    let mut last_report = Instant::now();
    let mut writes =
        stream::iter((1..count).map(|i| ctx.clone().fetch_and_write(i))).buffer_unordered(opts.in_flight.max(1));
    while let Some(res) = writes.next().await {
        let len = res?;
        let total = written.fetch_add(len, Ordering::Relaxed) + len;
        on(PullEvent::Writing { index: n, path: path.clone(), done: total, total: m.size });
        if last_report.elapsed() > Duration::from_secs(2) {
            last_report = Instant::now();
            report_progress(client, job, n, total).await;
        }
    }
    drop(writes);
    // The partition table goes in last, then the held-back last sector. Each step is flushed to
    // the medium before the next: the kernel writes dirty pages back in any order (low sectors
    // first, typically), so without the flush a power cut could leave the table on the disk and
    // the data behind it still in memory.
    let w = ctx.writer.clone();
    tokio::task::spawn_blocking(move || w.sync_and_drop_cache())
        .await?
        .map_err(|e| failure("write_failed", format!("{e:#}")))?;
    let len = ctx.clone().fetch_and_write(0).await?;
    let w = ctx.writer.clone();
    tokio::task::spawn_blocking(move || w.sync_and_drop_cache())
        .await?
        .map_err(|e| failure("write_failed", format!("{e:#}")))?;
    let total = written.fetch_add(len, Ordering::Relaxed) + len;
    let last = held_back.lock().unwrap_or_else(|p| p.into_inner()).take();
    let w = ctx.writer.clone();
    let size = m.size;
    tokio::task::spawn_blocking(move || -> Result<()> {
        if let Some(bytes) = last {
            w.write_at(&bytes, size - bytes.len() as u64)?;
        }
        w.sync_and_drop_cache()
    })
    .await?
    .map_err(|e| failure("write_failed", format!("{e:#}")))?;
    on(PullEvent::Writing { index: n, path: path.clone(), done: total, total: m.size });
    report_progress(client, job, n, total).await;

    let blake3 = read_back(&ctx, &path, opts, on).await?;
    let w = ctx.writer.clone();
    let m2 = m.clone();
    let changed = if m.partition_table.kind == TableKind::Gpt && m.partition_table.problems.is_empty() {
        tokio::task::spawn_blocking(move || grow_gpt(&w, &m2, sector))
            .await?
            .map_err(|e| failure("gpt_relocation_failed", format!("moving the backup GPT of {}: {e:#}", path)))?
    } else {
        vec![]
    };
    Ok((blake3, total, changed))
}

async fn report_progress(client: &Client, job: &str, index: u32, bytes: u64) {
    let body = TargetProgress { source_index: index, bytes_written: bytes };
    if let Err(e) =
        client.call::<serde_json::Value>(Method::POST, &format!("/jobs/{job}/target/progress"), |r| r.json(&body)).await
    {
        log::warn!("progress report failed: {e:#}");
    }
}

/// What every chunk task needs.
#[derive(Clone)]
struct ChunkCtx {
    client: Client,
    job: String,
    disk: u32,
    m: Arc<Manifest>,
    writer: Arc<DiskWriter>,
    /// The source's last sector, written after the first chunk.
    held_back: Arc<std::sync::Mutex<Option<Vec<u8>>>>,
    sector: u64,
}

impl ChunkCtx {
    /// Fetches chunk `i` (zeros need no fetch), checks its id, writes it. Returns its length.
    async fn fetch_and_write(self, i: u64) -> Result<u64> {
        let (offset, len) = self.m.chunk_range(i);
        let entry = &self.m.chunks[i as usize];
        let data: Vec<u8> = if entry.zero {
            vec![0u8; len as usize]
        } else {
            let path = format!("/jobs/{}/disks/{}/chunks/{i}/data", self.job, self.disk);
            let (_, body) = self.client.call_raw(Method::GET, &path, |r| r).await?;
            body.to_vec()
        };
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let m = &ctx.m;
            if data.len() as u64 != len || chunk_id(&data, offset, m.size, m.chunk_size) != m.chunks[i as usize].id {
                return Err(failure(
                    "chunk_corrupt",
                    format!("chunk {i} of disk {} arrived with other bytes than its id says", ctx.disk),
                ));
            }
            let mut data = data;
            let last_sector = m.size - ctx.sector.min(m.size);
            if offset + len == m.size && last_sector >= offset {
                let cut = (last_sector - offset) as usize;
                *ctx.held_back.lock().unwrap_or_else(|p| p.into_inner()) = Some(data[cut..].to_vec());
                data.truncate(cut);
            }
            ctx.writer.write_at(&data, offset).map_err(|e| failure("write_failed", format!("{e:#}")))?;
            Ok(len)
        })
        .await?
    }
}

/// Reads the source's size back from the target and compares every chunk id and the root.
async fn read_back(
    ctx: &ChunkCtx,
    path: &str,
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<String> {
    let m = ctx.m.clone();
    let sector = (!ctx.writer_is_block()).then_some(ctx.sector as u32);
    let reader = DiskReader::open(ctx.writer.path(), sector)?.limited_to(m.size)?;
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let threads = opts.threads;
    let mut task = tokio::task::spawn_blocking(move || {
        hash_all_chunks(Arc::new(reader), m.chunk_size, threads, |n| d2.store(n, Ordering::Relaxed))
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let entries = loop {
        tokio::select! {
            r = &mut task => break r?.map_err(|e| failure("read_failed", format!("{e:#}")))?,
            _ = tick.tick() => on(PullEvent::Verifying { index: ctx.disk, path: path.into(), done: done.load(Ordering::Relaxed), total: ctx.m.size }),
        }
    };
    on(PullEvent::Verifying { index: ctx.disk, path: path.into(), done: ctx.m.size, total: ctx.m.size });
    if let Some(i) = entries.iter().zip(&ctx.m.chunks).position(|(got, want)| got.id != want.id) {
        let (offset, len) = ctx.m.chunk_range(i as u64);
        return Err(failure(
            "readback_mismatch",
            format!("{path}: chunk {i} (bytes {offset}..{}) reads back differently from the source", offset + len),
        ));
    }
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    let root = treehash::root_from_ids(&ids, ctx.m.size, ctx.m.chunk_size)?;
    if root != ctx.m.blake3 {
        return Err(failure(
            "readback_mismatch",
            format!("{path}: the whole-disk BLAKE3 read back differs from the source's"),
        ));
    }
    Ok(hex::encode(root))
}

impl ChunkCtx {
    fn writer_is_block(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(self.writer.path()).map(|m| m.file_type().is_block_device()).unwrap_or(false)
    }
}

/// Moves the backup GPT to the end of a larger target; returns what changed.
fn grow_gpt(w: &DiskWriter, m: &Manifest, sector: u64) -> Result<Vec<ChangedRange>> {
    if w.size() <= m.size {
        return Ok(vec![]);
    }
    let mut mbr = vec![0u8; sector as usize];
    let mut header = vec![0u8; sector as usize];
    w.read_at(&mut mbr, 0)?;
    w.read_at(&mut header, sector)?;
    let (entries_lba, entries_len) = gpt_grow::entry_array(&header).map_err(anyhow::Error::msg)?;
    let mut entries = vec![0u8; entries_len as usize];
    w.read_at(&mut entries, entries_lba * sector)?;
    let patches = gpt_grow::relocate_backup(&mbr, &header, &entries, sector, w.size()).map_err(anyhow::Error::msg)?;
    let mut changed = vec![];
    for p in &patches {
        w.write_at(&p.bytes, p.offset)?;
        // The new backup must be durable before the primary header points to it.
        w.sync_and_drop_cache()?;
        changed.push(ChangedRange { offset: p.offset, length: p.bytes.len() as u64, what: p.what.into() });
    }
    Ok(changed)
}
