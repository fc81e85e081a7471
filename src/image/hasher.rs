//! The hashing pass: every chunk of a disk read once and hashed once, spread over all cores.
//!
//! Each worker takes the next chunk index, reads that chunk into a pooled buffer with `pread`,
//! checks it for zeros and computes its id, then hands it to a sink. Chunks reach the sink out
//! of order; memory is bounded by the buffer pool (a few chunks per worker).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;

use super::pool::{BufferPool, PooledBuf};
use super::treehash::{chunk_count, chunk_id, chunk_len, Digest};
use crate::disk::DiskReader;

/// One hashed chunk, with its bytes still in hand for whoever needs to send them.
pub struct HashedChunk {
    pub index: u64,
    pub offset: u64,
    pub id: Digest,
    pub zero: bool,
    pub data: PooledBuf,
}

/// Where hashed chunks go. Returning `false` stops the pass early (the receiver went away).
pub trait ChunkSink: Send + Clone + 'static {
    fn accept(&self, chunk: HashedChunk) -> bool;
}

impl ChunkSink for std::sync::mpsc::SyncSender<HashedChunk> {
    fn accept(&self, chunk: HashedChunk) -> bool {
        self.send(chunk).is_ok()
    }
}

impl ChunkSink for tokio::sync::mpsc::Sender<HashedChunk> {
    fn accept(&self, chunk: HashedChunk) -> bool {
        self.blocking_send(chunk).is_ok()
    }
}

/// True when every byte is zero. Word-wise so that it runs at memory speed.
pub fn is_zero(data: &[u8]) -> bool {
    let (head, words, tail) = {
        // SAFETY: any bit pattern is a valid u64, and align_to keeps everything in bounds.
        unsafe { data.align_to::<u64>() }
    };
    head.iter().all(|&b| b == 0)
        && tail.iter().all(|&b| b == 0)
        && words.chunks(8).all(|w| w.iter().fold(0u64, |acc, &x| acc | x) == 0)
}

/// Most hashing threads used by default: eight cores hash (about 3 GB/s each) faster than any
/// disk reads, and each thread costs a chunk buffer.
pub const MAX_DEFAULT_THREADS: usize = 8;

/// How many worker threads to hash with by default: one per core, at most
/// [`MAX_DEFAULT_THREADS`].
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).min(MAX_DEFAULT_THREADS)
}

/// Reads and hashes every chunk of `disk` with `threads` workers, handing each to `sink`.
/// Returns when every chunk was handed over, the sink refused one, or a read failed (the first
/// error is returned).
pub fn hash_chunks<S: ChunkSink>(disk: Arc<DiskReader>, chunk_size: u64, threads: usize, sink: S) -> Result<()> {
    // One buffer per worker being filled, and two waiting at the sink (which only records the
    // id and drops the buffer): memory is (threads + 2) chunks.
    hash_chunks_pooled(disk, chunk_size, threads, threads.max(1) + 2, sink)
}

/// [`hash_chunks`] with `buffers` chunk buffers in all: a sink that holds chunks for a while
/// (uploads in flight) needs that many more than two per worker, or the workers starve.
pub fn hash_chunks_pooled<S: ChunkSink>(
    disk: Arc<DiskReader>,
    chunk_size: u64,
    threads: usize,
    buffers: usize,
    sink: S,
) -> Result<()> {
    let threads = threads.max(1);
    let size = disk.size();
    let count = chunk_count(size, chunk_size);
    let pool = BufferPool::new(buffers.max(threads), chunk_size.min(size.max(1)) as usize);
    let next = AtomicU64::new(0);
    let stop = AtomicBool::new(false);
    let first_error: Mutex<Option<anyhow::Error>> = Mutex::default();

    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (disk, pool, next, stop, first_error, sink) = (&disk, &pool, &next, &stop, &first_error, sink.clone());
            scope.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let index = next.fetch_add(1, Ordering::Relaxed);
                    if index >= count {
                        break;
                    }
                    let offset = index * chunk_size;
                    let len = chunk_len(size, chunk_size, index) as usize;
                    let mut buf = pool.get(len);
                    if let Err(e) = disk.read_chunk_at(buf.as_mut_slice(), offset) {
                        stop.store(true, Ordering::Relaxed);
                        first_error.lock().unwrap_or_else(|p| p.into_inner()).get_or_insert(e);
                        break;
                    }
                    let zero = is_zero(&buf);
                    let id = if zero {
                        // Zeros at this place may have been hashed for another disk already.
                        super::zero_ids::shared().one(&buf, index, size, chunk_size)
                    } else {
                        chunk_id(&buf, offset, size, chunk_size)
                    };
                    if !sink.accept(HashedChunk { index, offset, id, zero, data: buf }) {
                        stop.store(true, Ordering::Relaxed);
                        break;
                    }
                }
            });
        }
    });
    drop(sink);
    let error = first_error.lock().unwrap_or_else(|p| p.into_inner()).take();
    match error {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_detection() {
        let mut v = vec![0u8; 4096 + 3];
        assert!(is_zero(&v));
        assert!(is_zero(&v[1..]));
        v[4096 + 2] = 1;
        assert!(!is_zero(&v));
        v[4096 + 2] = 0;
        v[17] = 0x80;
        assert!(!is_zero(&v[1..]));
        assert!(is_zero(&[]));
    }
}
