//! Chunk stores: where the receiver keeps verified chunks, keyed by chunk id.
//!
//! A chunk id is the chunk's BLAKE3 chaining value at its offset, so identical bytes at the same
//! offset of any disk are kept once: resumed transfers, pre-seeded disks and clones of one
//! template share their chunks. Callers verify a chunk's bytes against its id *before* `put`;
//! a store only keeps bytes and never makes a partial chunk visible.

pub mod export;
mod local;

pub use local::LocalStore;

use std::io;

use crate::image::Digest;

/// A place to keep chunks. Implementations must make `put` atomic: after a crash at any moment
/// a chunk is either absent or complete.
pub trait ChunkStore: Send + Sync + 'static {
    /// Whether the chunk is held.
    fn contains(&self, id: &Digest) -> io::Result<bool>;
    /// Keeps `data` under `id`; returns false when it was already held (nothing written).
    fn put(&self, id: &Digest, data: &[u8]) -> io::Result<bool>;
    /// The bytes kept under `id`.
    fn get(&self, id: &Digest) -> io::Result<Vec<u8>>;
    /// Makes every `put` so far durable. The receiver calls it before it reports a disk
    /// verified, so a power cut can never leave a verified disk with a missing chunk.
    fn sync(&self) -> io::Result<()>;
}
