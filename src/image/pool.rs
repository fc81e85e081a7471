//! A fixed pool of chunk buffers: memory stays bounded by the pool size whatever the disk size,
//! and buffers are reused instead of being faulted in afresh for every chunk.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::{Arc, Mutex};

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
            give.send(vec![0u8; capacity]).expect("the pool holds exactly `count` buffers");
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
        if buf.len() < len {
            buf.resize(len, 0);
        }
        PooledBuf { buf, len, home: self.give.clone() }
    }
}

/// A buffer lent by a [`BufferPool`]; it goes back to the pool when dropped.
pub struct PooledBuf {
    buf: Vec<u8>,
    len: usize,
    home: SyncSender<Vec<u8>>,
}

impl PooledBuf {
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
    }
}

impl AsRef<[u8]> for PooledBuf {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl std::ops::Deref for PooledBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

impl Drop for PooledBuf {
    fn drop(&mut self) {
        // The pool's channel has room for every buffer it made, so this never blocks; if the
        // pool is gone the buffer is simply freed.
        let _ = self.home.try_send(std::mem::take(&mut self.buf));
    }
}
