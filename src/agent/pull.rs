//! The target side: check this machine, write the source's disks onto it, read them back.
//!
//! Order of work, chosen so that an interruption at any moment leaves the machine either with
//! every disk a verified copy or with no disk that boots:
//! 1. Register; the receiver checks the wipe permission and the machine identity.
//! 2. Check the disks here ([`target_check::plan`]); a refusal writes nothing.
//! 3. Per disk, its body: clear the partition tables (first and last MiB), then every chunk
//!    (several in flight, each id checked before it is written; zero chunks written as zeros,
//!    never trusted to discard) except the sectors that make a disk bootable, which stay in
//!    memory: LBA 0-1 (MBR, primary GPT header) and the source's last sector (a backup GPT
//!    header: firmware looks for one at the end of the disk). Flush, drop the kernel's cache,
//!    read the source's size back and compare every chunk id and the whole-disk BLAKE3 with the
//!    source's, counting the held-back sectors as they will be.
//! 4. Only when every disk's body is verified: per disk, the held-back sectors, each flushed to
//!    the medium before the next (the kernel writes dirty pages back in any order) and read back.
//! 5. On a larger disk, move the backup GPT to the new end ([`gpt_grow`]), the only bytes ferry
//!    changes, recorded in the job. Any failure clears the tables of every disk touched.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};
use reqwest::Method;

use super::client::{Client, Refused};
use super::target_check::{self, TargetDisk};
use crate::disk::gpt_grow;
use crate::disk::writer::DiskWriter;
use crate::disk::{self, DiskReader, TableKind};
use crate::image::treehash::{self, chunk_id};
use crate::image::{hash_all_chunks, Manifest};
use crate::machine::machine_identity;
use crate::wire::*;

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
    let mapping = target_check::plan(&plan.disks, locals, opts.explicit, &plan.named_disks, plan.rewriting)
        .map_err(|r| failure(r.code, r.reason))?;
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
                reused_chunks: 0,
            })
            .collect(),
    };
    client.call::<serde_json::Value>(Method::POST, &format!("/jobs/{job}/target/begin"), |r| r.json(&begin)).await?;
    // Every disk's body first (written and read back), then every disk's partition tables:
    // until the last disk is verified, none of them boots, so a machine never starts with some
    // of its disks missing.
    let mut bodies = vec![];
    let mut result: Result<()> = Ok(());
    for (&(s, _), writer) in mapping.iter().zip(&writers) {
        let src = plan.disks.iter().find(|d| d.index == s).context("the plan lost a disk")?;
        match write_body(client, job, src, writer.clone(), plan.rewriting, opts, on).await {
            Ok(b) => bodies.push(b),
            Err(e) => {
                result = Err(e);
                break;
            }
        }
    }
    let mut done = vec![];
    if result.is_ok() {
        result = async {
            for (b, mut delivered) in bodies.iter().zip(begin.disks) {
                let w = b.writer.clone();
                let (head, tail, gpt) = (b.head.clone(), b.tail.clone(), b.gpt);
                tokio::task::spawn_blocking(move || write_tables(&w, &head, tail.as_ref(), gpt)).await??;
                let (w, m, sector) = (b.writer.clone(), b.m.clone(), b.sector);
                let changed = if b.gpt && b.m.partition_table.problems.is_empty() {
                    tokio::task::spawn_blocking(move || grow_gpt(&w, &m, sector)).await?.map_err(|e| {
                        failure("gpt_relocation_failed", format!("moving the backup GPT of {}: {e:#}", b.path))
                    })?
                } else {
                    vec![]
                };
                on(PullEvent::Verified {
                    index: delivered.source_index,
                    path: b.path.clone(),
                    blake3: b.blake3.clone(),
                    changed: changed.clone(),
                });
                delivered.blake3 = Some(b.blake3.clone());
                delivered.verified = true;
                delivered.bytes_written = b.written;
                delivered.changed = changed;
                delivered.reused_chunks = b.reused;
                done.push(delivered);
            }
            let body = TargetDone { disks: done.clone() };
            client.call::<Job>(Method::POST, &format!("/jobs/{job}/target/finish"), |r| r.json(&body)).await.map_err(
                |e| match e.downcast_ref::<Refused>() {
                    Some(r) => failure(&r.code, r.message.clone()),
                    None => e,
                },
            )?;
            Ok(())
        }
        .await;
    }
    if let Err(e) = result {
        // Half a migration must not boot: every disk touched loses its tables again.
        for w in &writers {
            if let Err(clear) = w.clear_tables() {
                log::error!("clearing the partition tables of {} failed too: {clear}", w.path().display());
            }
        }
        return Err(e);
    }
    Ok(done)
}

/// A disk whose body is written and verified, with the sectors that make it bootable still in
/// memory.
struct Body {
    writer: Arc<DiskWriter>,
    path: String,
    m: Arc<Manifest>,
    sector: u64,
    gpt: bool,
    /// LBA 0 and 1: the MBR (or protective MBR) and the primary GPT header.
    head: Vec<u8>,
    /// The source's last sector (offset, bytes): a backup GPT header, which firmware finds at
    /// the end of a same-size disk.
    tail: Option<(u64, Vec<u8>)>,
    blake3: String,
    written: u64,
    reused: u64,
}

/// The byte ranges held back from the body: LBA 0-1 and the source's last sector.
fn held_ranges(size: u64, sector: u64) -> (u64, Option<u64>) {
    let head = size.min(2 * sector);
    let tail = (size >= head + sector).then(|| size - sector);
    (head, tail)
}

/// Writes one source disk onto `writer` but for its table sectors, and reads it back: every
/// chunk id and the whole-disk BLAKE3 must be the source's, with the held-back sectors in.
/// `resume`: this machine's earlier attempt may have written chunks already; each chunk on the
/// disk whose bytes hash to the source's id is kept instead of pulled again.
async fn write_body(
    client: &Client,
    job: &str,
    src: &SourceDisk,
    writer: Arc<DiskWriter>,
    resume: bool,
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<Body> {
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
    let (head_len, tail_at) = held_ranges(m.size, sector);
    let held = Arc::new(std::sync::Mutex::new(Held { head: vec![], tail: None }));
    let ctx = ChunkCtx {
        client: client.clone(),
        job: job.into(),
        disk: n,
        m: m.clone(),
        writer: writer.clone(),
        held: held.clone(),
        head_len,
        tail_at,
        sector,
        resume: Arc::new(std::sync::atomic::AtomicBool::new(resume)),
        highest_kept: Arc::new(AtomicU64::new(0)),
        reused: Arc::new(AtomicU64::new(0)),
    };
    let mut last_report = Instant::now();
    let mut writes =
        stream::iter((0..count).map(|i| ctx.clone().fetch_and_write(i))).buffer_unordered(opts.in_flight.max(1));
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
    let w = writer.clone();
    tokio::task::spawn_blocking(move || w.sync_and_drop_cache())
        .await?
        .map_err(|e| failure("write_failed", format!("{e:#}")))?;
    let total = written.load(Ordering::Relaxed);
    report_progress(client, job, n, total).await;
    let reused = ctx.reused.load(Ordering::Relaxed);
    if reused > 0 {
        log::info!("{path}: {reused} of {count} chunks were already on the disk from an earlier attempt: kept");
    }
    let Held { head, tail } = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let blake3 = read_back(&ctx, &path, &head, tail.as_ref(), opts, on).await?;
    Ok(Body {
        writer,
        path,
        m: m.clone(),
        sector,
        gpt: m.partition_table.kind == TableKind::Gpt,
        head,
        tail,
        blake3,
        written: total,
        reused,
    })
}

/// Writes the held-back sectors, each step flushed to the medium before the next, and reads
/// them back. A GPT disk gets its primary (head) before the backup header (tail): a same-size
/// disk with only a backup header would boot from it. Other disks get the tail first, so the
/// table (head) is the very last byte written.
fn write_tables(w: &DiskWriter, head: &[u8], tail: Option<&(u64, Vec<u8>)>, gpt: bool) -> Result<()> {
    let mut steps: Vec<(u64, &[u8])> = vec![(0, head)];
    if let Some((at, bytes)) = tail {
        if gpt {
            steps.push((*at, bytes));
        } else {
            steps.insert(0, (*at, bytes));
        }
    }
    for (at, bytes) in &steps {
        w.write_at(bytes, *at)
            .and_then(|()| w.sync_and_drop_cache())
            .map_err(|e| failure("write_failed", format!("{e:#}")))?;
    }
    for (at, bytes) in &steps {
        let mut back = vec![0u8; bytes.len()];
        w.read_at(&mut back, *at).map_err(|e| failure("read_failed", format!("{e:#}")))?;
        if back != *bytes {
            return Err(failure(
                "readback_mismatch",
                format!("{}: the partition table sectors at byte {at} read back differently", w.path().display()),
            ));
        }
    }
    Ok(())
}

async fn report_progress(client: &Client, job: &str, index: u32, bytes: u64) {
    let body = TargetProgress { source_index: index, bytes_written: bytes };
    if let Err(e) =
        client.call::<serde_json::Value>(Method::POST, &format!("/jobs/{job}/target/progress"), |r| r.json(&body)).await
    {
        log::warn!("progress report failed: {e:#}");
    }
}

/// The held-back bytes of a disk being written.
#[derive(Default)]
struct Held {
    head: Vec<u8>,
    /// Offset and bytes.
    tail: Option<(u64, Vec<u8>)>,
}

/// What every chunk task needs.
#[derive(Clone)]
struct ChunkCtx {
    client: Client,
    job: String,
    disk: u32,
    m: Arc<Manifest>,
    writer: Arc<DiskWriter>,
    held: Arc<std::sync::Mutex<Held>>,
    /// Bytes `[0, head_len)` and `[tail_at, size)` are held back from the body.
    head_len: u64,
    tail_at: Option<u64>,
    sector: u64,
    /// Look for the chunk on the disk before pulling it (see `write_body`); turned off once
    /// the chunks are well past the last one found (the earlier attempt stopped there).
    resume: Arc<std::sync::atomic::AtomicBool>,
    highest_kept: Arc<AtomicU64>,
    reused: Arc<AtomicU64>,
}

impl ChunkCtx {
    /// Fetches chunk `i` (zeros need no fetch), checks its id, writes it but for the held-back
    /// ranges, which it keeps. Returns its length.
    async fn fetch_and_write(self, i: u64) -> Result<u64> {
        let (offset, len) = self.m.chunk_range(i);
        let entry = &self.m.chunks[i as usize];
        // The disk may hold the chunk already (an interrupted attempt): its bytes, when they
        // hash to the chunk's id, are the source's, and need neither the network nor a write.
        // Not zero chunks: a disk may read zeros where nothing was ever written (a new or
        // discarded SSD) and other bytes later; zeros are always written.
        let on_disk = if self.resume.load(Ordering::Relaxed) && !entry.zero {
            let found = self.already_on_disk(i).await;
            match &found {
                Some(_) => {
                    self.highest_kept.fetch_max(i, Ordering::Relaxed);
                }
                // The earlier attempt wrote in order, a few chunks in flight: far past the last
                // chunk found, nothing more is there to find.
                None if i > self.highest_kept.load(Ordering::Relaxed) + RESUME_LOOKAHEAD => {
                    self.resume.store(false, Ordering::Relaxed);
                }
                None => {}
            }
            found
        } else {
            None
        };
        let keep = on_disk.is_some();
        let data: Vec<u8> = if let Some(bytes) = on_disk {
            self.reused.fetch_add(1, Ordering::Relaxed);
            bytes
        } else if entry.zero {
            vec![0u8; len as usize]
        } else {
            let path = format!("/jobs/{}/disks/{}/chunks/{i}/data", self.job, self.disk);
            let (_, body) = self.client.call_raw(Method::GET, &path, |r| r).await?;
            body.to_vec()
        };
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let m = &ctx.m;
            // (Bytes kept from the disk were checked as they were read.)
            if !keep
                && (data.len() as u64 != len
                    || chunk_id(&data, offset, m.size, m.chunk_size) != m.chunks[i as usize].id)
            {
                return Err(failure(
                    "chunk_corrupt",
                    format!("chunk {i} of disk {} arrived with other bytes than its id says", ctx.disk),
                ));
            }
            let end = offset + len;
            let mut from = offset;
            let mut to = end;
            if offset < ctx.head_len {
                let cut = ctx.head_len.min(end);
                ctx.held.lock().unwrap_or_else(|p| p.into_inner()).head = data[..(cut - offset) as usize].to_vec();
                from = cut;
            }
            if let Some(t) = ctx.tail_at.filter(|&t| t < end && t >= offset) {
                let bytes = data[(t - offset) as usize..].to_vec();
                ctx.held.lock().unwrap_or_else(|p| p.into_inner()).tail = Some((t, bytes));
                to = t.max(from);
            }
            if from < to && !keep {
                let slice = &data[(from - offset) as usize..(to - offset) as usize];
                ctx.writer.write_at(slice, from).map_err(|e| failure("write_failed", format!("{e:#}")))?;
            }
            Ok(len)
        })
        .await?
    }
}

/// How many chunks past the last one found on the disk a resuming target keeps looking.
const RESUME_LOOKAHEAD: u64 = 64;

impl ChunkCtx {
    /// Chunk `i` as the disk holds it, if those bytes are the source's (their id matches). A
    /// sector that cannot be read is simply written again (a drive remaps it on write); the
    /// read-back afterwards checks everything.
    async fn already_on_disk(&self, i: u64) -> Option<Vec<u8>> {
        let (offset, len) = self.m.chunk_range(i);
        let ctx = self.clone();
        let found = tokio::task::spawn_blocking(move || -> Result<Option<Vec<u8>>> {
            let mut buf = vec![0u8; len as usize];
            ctx.writer.read_at(&mut buf, offset)?;
            let m = &ctx.m;
            Ok((chunk_id(&buf, offset, m.size, m.chunk_size) == m.chunks[i as usize].id).then_some(buf))
        })
        .await;
        match found {
            Ok(Ok(found)) => found,
            Ok(Err(e)) => {
                log::warn!("chunk {i} could not be read to check it, writing it again: {e:#}");
                None
            }
            Err(e) => {
                log::warn!("chunk {i} check failed, writing it again: {e}");
                None
            }
        }
    }
}

/// Reads the source's size back from the target and compares every chunk id and the root.
async fn read_back(
    ctx: &ChunkCtx,
    path: &str,
    head: &[u8],
    tail: Option<&(u64, Vec<u8>)>,
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
    // The chunks holding held-back sectors: what was read, with those sectors as they will be.
    let mut entries = entries;
    let mut patched = vec![0u64];
    if let Some((t, _)) = tail {
        patched.push(t / ctx.m.chunk_size);
    }
    patched.dedup();
    for i in patched {
        let (offset, len) = ctx.m.chunk_range(i);
        let mut data = vec![0u8; len as usize];
        ctx.writer.read_at(&mut data, offset).map_err(|e| failure("read_failed", format!("{e:#}")))?;
        if offset == 0 {
            data[..head.len()].copy_from_slice(head);
        }
        if let Some((t, bytes)) = tail.filter(|(t, _)| (offset..offset + len).contains(t)) {
            data[(t - offset) as usize..].copy_from_slice(bytes);
        }
        entries[i as usize].id = chunk_id(&data, offset, ctx.m.size, ctx.m.chunk_size);
    }
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
