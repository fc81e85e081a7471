//! Reading a written disk back: every chunk id and the whole-disk BLAKE3 must be the source's,
//! with the held-back sectors counted as they will be.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::chunk::ChunkCtx;
use super::{failure, PullEvent, PullOptions};
use crate::disk::DiskReader;
use crate::image::treehash::chunk_id;
use crate::image::{hash_ids, pages, Digest};
use crate::wire::Code;

/// Reads the source's size back from the target and compares every chunk id (every page hash
/// of a paged manifest, so that no more than a page of ids is held) and the root.
pub(super) async fn read_back(
    ctx: &ChunkCtx,
    path: &str,
    head: &[u8],
    tail: Option<&(u64, Vec<u8>)>,
    opts: &PullOptions,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<String> {
    let m = ctx.m.clone();
    let overrides = held_back_ids(ctx, head, tail)?;
    let sector = (!ctx.writer_is_block()).then_some(ctx.sector as u32);
    let reader = DiskReader::open(ctx.writer.path(), sector)?.limited_to(m.size)?;
    let done = Arc::new(AtomicU64::new(0));
    let d2 = done.clone();
    let threads = opts.threads;
    let per_page = m.pages.as_ref().map_or(u64::MAX, |p| p.chunks_per_page);
    let mut task = tokio::task::spawn_blocking(move || {
        hash_ids(Arc::new(reader), m.chunk_size, threads, per_page, &overrides, |n| d2.store(n, Ordering::Relaxed))
    });
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    let ids = loop {
        tokio::select! {
            r = &mut task => break r?.map_err(|e| failure(Code::ReadFailed, format!("{e:#}")))?,
            _ = tick.tick() => on(PullEvent::Verifying { index: ctx.disk, path: path.into(), done: done.load(Ordering::Relaxed), total: ctx.m.size }),
        }
    };
    on(PullEvent::Verifying { index: ctx.disk, path: path.into(), done: ctx.m.size, total: ctx.m.size });
    let m = &ctx.m;
    let differs = match (&ids.pages, &m.pages) {
        (Some(got), Some(want)) => got.cvs.iter().zip(&want.cvs).position(|(a, b)| a != b).map(|p| {
            let chunks = pages::page_chunks(m.chunk_count(), want.chunks_per_page, p as u64);
            (m.chunk_range(chunks.start).0, m.chunk_range(chunks.end - 1), format!("page {p} (chunks {chunks:?})"))
        }),
        _ => ids.chunks.iter().zip(&m.chunks).position(|(got, want)| got.id != want.id).map(|i| {
            let (offset, len) = m.chunk_range(i as u64);
            (offset, (offset, len), format!("chunk {i}"))
        }),
    };
    if let Some((from, (last, last_len), what)) = differs {
        return Err(failure(
            Code::ReadbackMismatch,
            format!("{path}: {what} (bytes {from}..{}) reads back differently from the source", last + last_len),
        ));
    }
    if ids.root != m.blake3 {
        return Err(failure(
            Code::ReadbackMismatch,
            format!("{path}: the whole-disk BLAKE3 read back differs from the source's"),
        ));
    }
    Ok(hex::encode(ids.root))
}

/// The ids of the chunks holding held-back sectors, with those sectors as they will be: the
/// read-back pass reads what is on the disk now, without them.
fn held_back_ids(ctx: &ChunkCtx, head: &[u8], tail: Option<&(u64, Vec<u8>)>) -> Result<HashMap<u64, Digest>> {
    let mut patched = vec![0u64];
    if let Some((t, _)) = tail {
        patched.push(t / ctx.m.chunk_size);
    }
    patched.dedup();
    let mut ids = HashMap::new();
    for i in patched.into_iter().filter(|&i| i < ctx.m.chunk_count()) {
        let (offset, len) = ctx.m.chunk_range(i);
        let mut data = vec![0u8; len as usize];
        ctx.writer.read_at(&mut data, offset).map_err(|e| failure(Code::ReadFailed, format!("{e:#}")))?;
        if offset == 0 {
            data[..head.len()].copy_from_slice(head);
        }
        if let Some((t, bytes)) = tail.filter(|(t, _)| (offset..offset + len).contains(t)) {
            data[(t - offset) as usize..].copy_from_slice(bytes);
        }
        ids.insert(i, chunk_id(&data, offset, ctx.m.size, ctx.m.chunk_size));
    }
    Ok(ids)
}

impl ChunkCtx {
    fn writer_is_block(&self) -> bool {
        use std::os::unix::fs::FileTypeExt;
        std::fs::metadata(self.writer.path()).map(|m| m.file_type().is_block_device()).unwrap_or(false)
    }
}
