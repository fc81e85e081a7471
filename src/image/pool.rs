//! A fixed pool of chunk buffers: memory stays bounded by the pool size whatever the disk size,
//! and buffers are reused instead of being faulted in afresh for every chunk.
//!
//! Each buffer's usable bytes start on a page boundary: the kernel copies file data into a
//! page-aligned buffer several times faster than into one at malloc's 16-byte alignment (measured:
//! 4 MiB `pread`s from the page cache at 5.6 GB/s aligned against 1.6 GB/s at offset 16).

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

/// Alignment of the first usable byte of every buffer.
const ALIGN: usize = 4096;

/// A pool of `count` buffers of `capacity` bytes each.
#[derive(Clone)]
pub struct BufferPool {
    give: SyncSender<Vec<u8>>,
    take: Arc<Mutex<Receiver<Vec<u8>>>>,
}

impl BufferPool {
    pub fn new(count: usize, capacity: usize) -> Self {
        let (give, take) = sync_channel(count);
        for _ in 0..count {
            give.send(vec![0u8; capacity + ALIGN]).expect("the pool holds exactly `count` buffers");
        }
        Self { give, take: Arc::new(Mutex::new(take)) }
    }

    /// Waits for a free buffer and lends it with length `len`.
    pub fn get(&self, len: usize) -> PooledBuf {
        let mut buf = {
            let rx = self.take.lock().unwrap_or_else(|e| e.into_inner());
            // The pool keeps a sender itself, so the channel never disconnects.
            rx.recv().expect("the pool keeps its own sender")
        };
        if buf.len() < len + ALIGN {
            buf.resize(len + ALIGN, 0);
        }
        // The first page boundary inside the buffer (the Vec's heap block never moves while lent).
        let start = match buf.as_ptr().align_offset(ALIGN) {
            o if o < ALIGN => o,
            _ => 0,
        };
        PooledBuf { buf, start, len, home: self.give.clone() }
    }
}

/// A buffer lent by a [`BufferPool`]; it goes back to the pool when dropped.
pub struct PooledBuf {
    buf: Vec<u8>,
    /// Where the usable bytes begin: the first page boundary in `buf`.
    start: usize,
    len: usize,
    home: SyncSender<Vec<u8>>,
}

impl PooledBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        // The pool's channel has room for every buffer it made, so this never blocks; if the
        // pool is gone the buffer is simply freed.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_page_aligned_and_sized() {
        let pool = BufferPool::new(2, 10_000);
        for len in [0, 1, 4096, 10_000, 20_000] {
            let mut b = pool.get(len);
            assert_eq!(b.len(), len);
            assert_eq!(b.as_mut_slice().as_ptr() as usize % ALIGN, 0, "len {len}");
            b.as_mut_slice().fill(7);
            assert!(b.iter().all(|&x| x == 7));
        }
    }
}
