//! Chunk stores: where the receiver keeps verified chunks, keyed by chunk id and place.
//!
//! A chunk id is the chunk's BLAKE3 chaining value at its offset, so identical bytes at the same
//! offset of any disk are kept once: resumed transfers, pre-seeded disks and clones of one
//! template share their chunks. An id says nothing about where it belongs, though: the tree's
//! merges take any ids, so a manifest listing a stored id at another index still merges to a
//! root. A chunk is therefore kept under its id *and* the place it was verified at, and is
//! present only there. Callers verify a chunk's bytes against its id at its place *before*
//! `put`; a store only keeps bytes and never makes a partial chunk visible.

pub mod export;
mod local;
pub mod verify;

pub use local::LocalStore;

use std::io;

use crate::image::treehash::{self, chunk_count, chunk_len};
use crate::image::Digest;

/// Where on a disk a chunk is: the only place its id holds. The id is the chaining value of
/// `len` bytes at byte `offset`, finalized as the root when the chunk is the whole disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub offset: u64,
    pub len: u64,
    pub whole_disk: bool,
}

impl Place {
    /// Chunk `index` of a disk of `disk_size` bytes cut in `chunk_size` chunks.
    pub fn of(disk_size: u64, chunk_size: u64, index: u64) -> Self {
        Self {
            offset: index * chunk_size,
            len: chunk_len(disk_size, chunk_size, index),
            whole_disk: chunk_count(disk_size, chunk_size) == 1,
        }
    }

    /// The id `data` has at this place.
    pub fn id_of(&self, data: &[u8]) -> Digest {
        treehash::id_at(data, self.offset, self.whole_disk)
    }
}

/// A place to keep chunks. Implementations must make `put` atomic: after a crash at any moment
/// a chunk is either absent or complete.
pub trait ChunkStore: Send + Sync + 'static {
    /// Whether the chunk is held at this place.
    fn contains(&self, id: &Digest, at: Place) -> io::Result<bool>;
    /// Keeps `data`, verified to be `id` at `at`; returns false when it was already held there
    /// (nothing written).
    fn put(&self, id: &Digest, at: Place, data: &[u8]) -> io::Result<bool>;
    /// The bytes kept under `id` at `at` (NotFound when they are not held there).
    fn get(&self, id: &Digest, at: Place) -> io::Result<Vec<u8>>;
    /// Makes every `put` so far durable. The receiver calls it before it reports a disk
    /// verified, so a power cut can never leave a verified disk with a missing chunk.
    fn sync(&self) -> io::Result<()>;
}
