//! One chunk of a disk being written: kept when the disk holds it already (a resumed write),
//! else fetched (zeros need no fetch), checked against its id, and written but for the
//! held-back sectors, which it hands over.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::failure;
use crate::agent::client::Client;
use crate::disk::writer::DiskWriter;
use crate::image::treehash::chunk_id;
use crate::image::{ChunkEntry, Manifest};
use crate::wire::routes::{call, Call};
use crate::wire::Code;

/// What every chunk task needs.
#[derive(Clone)]
pub(super) struct ChunkCtx {
    pub client: Client,
    pub job: String,
    pub disk: u32,
    pub m: Arc<Manifest>,
    /// The chunks being written, from index `first`: every chunk of an inline manifest, one
    /// page of a paged one.
    pub page: Arc<Vec<ChunkEntry>>,
    pub first: u64,
    pub writer: Arc<DiskWriter>,
    pub held: Arc<Mutex<Held>>,
    /// Bytes `[0, head_len)` and `[tail_at, size)` are held back from the body.
    pub head_len: u64,
    pub tail_at: Option<u64>,
    pub sector: u64,
    /// Look for the chunk on the disk before pulling it (see `write_body`); turned off once
    /// the chunks are well past the last one found (the earlier attempt stopped there).
    pub resume: Arc<AtomicBool>,
    pub highest_kept: Arc<AtomicU64>,
    pub reused: Arc<AtomicU64>,
}

impl ChunkCtx {
    /// Fetches chunk `i` (zeros need no fetch), checks its id, writes it but for the held-back
    /// ranges, which it keeps. Returns its length.
    pub async fn fetch_and_write(self, i: u64) -> Result<u64> {
        let (offset, len) = self.m.chunk_range(i);
        let entry = self.entry(i).clone();
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
            let args = [self.job.as_str(), &self.disk.to_string(), &i.to_string()];
            let (_, body) = self.client.call_raw(&call::ChunkData::ROUTE, &args, "", |r| r).await?;
            body.to_vec()
        };
        let ctx = self.clone();
        tokio::task::spawn_blocking(move || -> Result<u64> {
            let m = &ctx.m;
            // (Bytes kept from the disk were checked as they were read.)
            if !keep && (data.len() as u64 != len || chunk_id(&data, offset, m.size, m.chunk_size) != ctx.entry(i).id) {
                return Err(failure(
                    Code::ChunkCorrupt,
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
                ctx.writer.write_at(slice, from).map_err(|e| failure(Code::WriteFailed, format!("{e:#}")))?;
            }
            Ok(len)
        })
        .await?
    }
}

/// How many chunks past the last one found on the disk a resuming target keeps looking.
const RESUME_LOOKAHEAD: u64 = 64;

impl ChunkCtx {
    /// Chunk `i`'s entry (it must be in the page being written).
    fn entry(&self, i: u64) -> &ChunkEntry {
        &self.page[(i - self.first) as usize]
    }

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
            Ok((chunk_id(&buf, offset, m.size, m.chunk_size) == ctx.entry(i).id).then_some(buf))
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

/// The held-back bytes of a disk being written.
#[derive(Default)]
pub(super) struct Held {
    pub head: Vec<u8>,
    /// Offset and bytes.
    pub tail: Option<(u64, Vec<u8>)>,
}
