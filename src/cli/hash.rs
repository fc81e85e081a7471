//! `ferry hash`: a disk's manifest and whole-disk BLAKE3.

use std::sync::Arc;

use anyhow::Result;

use super::progress::Progress;
use crate::cmdline::HashArgs;
use crate::disk::{lock, DiskReader};
use crate::image::{self, hasher};
use crate::util::human_bytes;

pub fn run(args: HashArgs) -> Result<i32> {
    if args.lock {
        lock::lock_read_only(&args.path)?;
    }
    let disk = Arc::new(DiskReader::open(&args.path, args.sector_size)?);
    let threads = args.threads.unwrap_or_else(hasher::default_threads);
    let mut progress = Progress::new(&args.path.display().to_string(), disk.size());
    let chunk_size = args.chunk_size.unwrap_or_else(|| image::treehash::default_chunk_size(disk.size()));
    let manifest = image::build_manifest(disk, chunk_size, threads, |done| progress.set(done))?;
    progress.finish();
    if args.json {
        println!("{}", serde_json::to_string_pretty(&manifest)?);
        return Ok(0);
    }
    let zero = manifest.chunks.iter().filter(|c| c.zero).count();
    let t = &manifest.partition_table;
    println!("disk:        {} ({}, {} bytes)", manifest.identity.path, human_bytes(manifest.size), manifest.size);
    println!(
        "table:       {} ({} partitions{})",
        format!("{:?}", t.kind).to_lowercase(),
        t.partitions.len(),
        if t.problems.is_empty() { String::new() } else { format!(", {} problems", t.problems.len()) }
    );
    println!(
        "chunks:      {} of {} ({} all zero, {} of data)",
        manifest.chunks.len(),
        human_bytes(manifest.chunk_size),
        zero,
        human_bytes(manifest.data_bytes())
    );
    println!("blake3:      {}", hex::encode(manifest.blake3));
    Ok(0)
}
