//! One source disk's body on a target disk: every chunk written but the sectors that make a
//! disk bootable (held in memory), then the whole disk read back and checked.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use futures_util::stream::{self, StreamExt};

use super::chunk::{ChunkCtx, Held};
use super::{failure, readback, PullEvent, PullOptions};
use crate::agent::client::Client;
use crate::disk::writer::DiskWriter;
use crate::disk::TableKind;
use crate::image::{ChunkEntry, Manifest};
use crate::wire::routes::call;
use crate::wire::*;

/// A disk whose body is written and verified, with the sectors that make it bootable still in
/// memory.
pub(super) struct Body {
    pub writer: Arc<DiskWriter>,
    pub path: String,
    pub m: Arc<Manifest>,
    pub sector: u64,
    pub gpt: bool,
    /// LBA 0 and 1: the MBR (or protective MBR) and the primary GPT header.
    pub head: Vec<u8>,
    /// The source's last sector (offset, bytes): a backup GPT header, which firmware finds at
    /// the end of a same-size disk.
    pub tail: Option<(u64, Vec<u8>)>,
    pub blake3: String,
    pub written: u64,
    pub reused: u64,
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
pub(super) async fn write_body(
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
    let m: Arc<Manifest> = Arc::new(client.call::<call::Manifest>(&[job, &n.to_string()], &()).await?);
    if m.size != src.size || hex::encode(m.blake3) != src.blake3 || m.validate().is_err() {
        return Err(failure(
            Code::ManifestMismatch,
            format!("the manifest of disk {n} does not match the job's record"),
        ));
    }
    let sector = src.identity.logical_sector_size.max(512) as u64;
    let w = writer.clone();
    tokio::task::spawn_blocking(move || w.clear_tables()).await?.with_context(|| format!("clearing {path}"))?;

    let count = m.chunk_count();
    let written = Arc::new(AtomicU64::new(0));
    let (head_len, tail_at) = held_ranges(m.size, sector);
    let held = Arc::new(Mutex::new(Held { head: vec![], tail: None }));
    let ctx = ChunkCtx {
        client: client.clone(),
        job: job.into(),
        disk: n,
        m: m.clone(),
        page: Arc::new(vec![]),
        first: 0,
        writer: writer.clone(),
        held: held.clone(),
        head_len,
        tail_at,
        sector,
        resume: Arc::new(AtomicBool::new(resume)),
        highest_kept: Arc::new(AtomicU64::new(0)),
        reused: Arc::new(AtomicU64::new(0)),
    };
    write_chunks(client, job, &ctx, &written, &path, opts, on).await?;
    let w = writer.clone();
    tokio::task::spawn_blocking(move || w.sync_and_drop_cache())
        .await?
        .map_err(|e| failure(Code::WriteFailed, format!("{e:#}")))?;
    let total = written.load(Ordering::Relaxed);
    report_progress(client, job, n, total).await;
    let reused = ctx.reused.load(Ordering::Relaxed);
    if reused > 0 {
        log::info!("{path}: {reused} of {count} chunks were already on the disk from an earlier attempt: kept");
    }
    let Held { head, tail } = std::mem::take(&mut *held.lock().unwrap_or_else(|p| p.into_inner()));
    let blake3 = readback::read_back(&ctx, &path, &head, tail.as_ref(), opts, on).await?;
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

/// Writes every chunk of `ctx`'s disk, a page of ids at a time (a paged manifest's ids come
/// from the receiver page by page: this agent never holds all of them).
async fn write_chunks(
    client: &Client,
    job: &str,
    ctx: &ChunkCtx,
    written: &AtomicU64,
    path: &str,
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<()> {
    let (m, n) = (&ctx.m, ctx.disk);
    let mut last_report = Instant::now();
    let pages = m.pages.as_ref().map_or(1, |_| m.page_count());
    for p in 0..pages {
        let (first, page) = page_of(client, job, m, n, p).await?;
        let ctx = ChunkCtx { first, page: Arc::new(page), ..ctx.clone() };
        let indexes = first..(first + ctx.page.len() as u64);
        let mut writes =
            stream::iter(indexes.map(|i| ctx.clone().fetch_and_write(i))).buffer_unordered(opts.in_flight.max(1));
        while let Some(res) = writes.next().await {
            let len = res?;
            let total = written.fetch_add(len, Ordering::Relaxed) + len;
            on(PullEvent::Writing { index: n, path: path.to_string(), done: total, total: m.size });
            if last_report.elapsed() > Duration::from_secs(2) {
                last_report = Instant::now();
                report_progress(client, job, n, total).await;
            }
        }
    }
    Ok(())
}

/// Page `p` of disk `n`'s manifest and the index of its first chunk: an inline manifest's
/// chunks are its one page; a paged manifest's pages come from the receiver, each checked
/// against the page hash the manifest holds.
async fn page_of(client: &Client, job: &str, m: &Manifest, n: u32, p: u64) -> Result<(u64, Vec<ChunkEntry>)> {
    let Some(pages) = &m.pages else { return Ok((0, m.chunks.clone())) };
    let page = client.call::<call::GetPage>(&[job, &n.to_string(), &p.to_string()], &()).await?;
    let chunks = crate::image::manifest::check_page_entries(m, p, page)
        .map_err(|e| failure(Code::ManifestMismatch, format!("disk {n}: {e}")))?;
    Ok((p * pages.chunks_per_page, chunks))
}

async fn report_progress(client: &Client, job: &str, index: u32, bytes: u64) {
    let body = TargetProgress { source_index: index, bytes_written: bytes };
    if let Err(e) = client.call::<call::TargetProgress>(&[job], &body).await {
        log::warn!("progress report failed: {e:#}");
    }
}
