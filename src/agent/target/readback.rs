//! Reading a written disk back: every chunk id and the whole-disk BLAKE3 must be the source's,
//! with the held-back sectors counted as they will be.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;

use super::chunk::ChunkCtx;
use super::{failure, PullEvent, PullOptions};
use crate::disk::DiskReader;
use crate::image::hash_all_chunks;
use crate::image::treehash::{self, chunk_id};
use crate::wire::Code;

/// Reads the source's size back from the target and compares every chunk id and the root.
pub(super) async fn read_back(
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
            r = &mut task => break r?.map_err(|e| failure(Code::ReadFailed, format!("{e:#}")))?,
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
        ctx.writer.read_at(&mut data, offset).map_err(|e| failure(Code::ReadFailed, format!("{e:#}")))?;
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
            Code::ReadbackMismatch,
            format!("{path}: chunk {i} (bytes {offset}..{}) reads back differently from the source", offset + len),
        ));
    }
    let ids: Vec<_> = entries.iter().map(|e| e.id).collect();
    let root = treehash::root_from_ids(&ids, ctx.m.size, ctx.m.chunk_size)?;
    if root != ctx.m.blake3 {
        return Err(failure(
            Code::ReadbackMismatch,
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
