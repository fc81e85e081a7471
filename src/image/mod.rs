//! Disk images as chunks: the BLAKE3 tree, zero detection, the hashing pass and the manifest.

pub mod hasher;
pub mod manifest;
pub mod pages;
pub mod pool;
pub mod spool;
pub mod treehash;
pub mod zero_ids;

use std::sync::Arc;

use anyhow::{Context, Result};

pub use manifest::{ChunkEntry, Manifest, MANIFEST_VERSION, PAGED_MANIFEST_VERSION};
pub use treehash::{Digest, DEFAULT_CHUNK_SIZE};

use crate::disk::{self, DiskReader};

/// The ids of `disk` from one parallel hashing pass, kept as a manifest with `per_page` ids per
/// page keeps them (every id for a disk of one page, else only the page hashes), with the ids
/// in `overrides` standing for what the pass reads at those indexes. `progress` is called with
/// the bytes hashed so far.
pub fn hash_ids(
    disk: Arc<DiskReader>,
    chunk_size: u64,
    threads: usize,
    per_page: u64,
    overrides: &std::collections::HashMap<u64, Digest>,
    mut progress: impl FnMut(u64),
) -> Result<spool::Ids> {
    treehash::validate_chunk_size(chunk_size).map_err(anyhow::Error::msg)?;
    let mut spool = spool::IdSpool::new(disk.size(), chunk_size, per_page);
    let (tx, rx) = std::sync::mpsc::sync_channel(threads.max(1));
    let worker_disk = disk.clone();
    let worker = std::thread::spawn(move || hasher::hash_chunks(worker_disk, chunk_size, threads, tx));
    let mut done = 0u64;
    for chunk in rx {
        done += chunk.data.len() as u64;
        let id = overrides.get(&chunk.index).copied().unwrap_or(chunk.id);
        spool.record(chunk.index, ChunkEntry { id, zero: chunk.zero })?;
        progress(done);
    }
    worker.join().map_err(|_| anyhow::anyhow!("a hashing thread panicked"))??;
    spool.finish(&disk.path().display().to_string())
}

/// The full manifest of an opened disk: identity, partition table, chunk ids and whole-disk hash.
pub fn build_manifest(
    disk: Arc<DiskReader>,
    chunk_size: u64,
    threads: usize,
    progress: impl FnMut(u64),
) -> Result<Manifest> {
    let path = disk.path().display().to_string();
    let partition_table =
        disk::read_partition_table(&disk).with_context(|| format!("reading the partition table of {path}"))?;
    let identity = disk::identify(&disk);
    let size = disk.size();
    // Every id inline: this is the manifest `ferry hash` prints.
    let ids = hash_ids(disk.clone(), chunk_size, threads, u64::MAX, &Default::default(), progress)?;
    let (chunks, blake3) = (ids.chunks, ids.root);
    let bad_ranges = disk::rescue::in_partitions(disk.bad_ranges(), &partition_table);
    Ok(Manifest {
        version: MANIFEST_VERSION,
        identity,
        partition_table,
        size,
        chunk_size,
        blake3,
        chunks,
        bad_ranges,
        used_only: None,
        pages: None,
    })
}
