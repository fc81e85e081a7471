//! The sectors that make a disk bootable, written last (each flushed before the next) and read
//! back; and on a larger disk the backup GPT moved to its end, the only bytes ferry changes.

use anyhow::Result;

use super::body::Body;
use super::{failure, PullEvent};
use crate::disk::gpt_grow;
use crate::disk::writer::DiskWriter;
use crate::image::Manifest;
use crate::wire::{ChangedRange, Code, DeliveredDisk};

/// Per disk, once every body is verified: its held-back sectors, then on a larger disk the
/// GPT relocation; what each delivered disk became.
pub(super) async fn finish_disks(
    bodies: &[Body],
    begun: Vec<DeliveredDisk>,
    on: &mut (dyn FnMut(PullEvent) + Send),
) -> Result<Vec<DeliveredDisk>> {
    let mut done = vec![];
    for (b, mut delivered) in bodies.iter().zip(begun) {
        let w = b.writer.clone();
        let (head, tail, gpt) = (b.head.clone(), b.tail.clone(), b.gpt);
        tokio::task::spawn_blocking(move || write_tables(&w, &head, tail.as_ref(), gpt)).await??;
        let (w, m, sector) = (b.writer.clone(), b.m.clone(), b.sector);
        let changed = if b.gpt && b.m.partition_table.problems.is_empty() {
            tokio::task::spawn_blocking(move || grow_gpt(&w, &m, sector)).await?.map_err(|e| {
                failure(Code::GptRelocationFailed, format!("moving the backup GPT of {}: {e:#}", b.path))
            })?
        } else {
            vec![]
        };
        on(PullEvent::Verified {
            index: delivered.source_index,
            path: b.path.clone(),
            blake3: b.blake3.clone(),
            changed: changed.clone(),
        });
        delivered.blake3 = Some(b.blake3.clone());
        delivered.verified = true;
        delivered.bytes_written = b.written;
        delivered.changed = changed;
        delivered.reused_chunks = b.reused;
        done.push(delivered);
    }
    Ok(done)
}

/// Writes the held-back sectors, each step flushed to the medium before the next, and reads
/// them back. A GPT disk gets its primary (head) before the backup header (tail): a same-size
/// disk with only a backup header would boot from it. Other disks get the tail first, so the
/// table (head) is the very last byte written.
fn write_tables(w: &DiskWriter, head: &[u8], tail: Option<&(u64, Vec<u8>)>, gpt: bool) -> Result<()> {
    let mut steps: Vec<(u64, &[u8])> = vec![(0, head)];
    if let Some((at, bytes)) = tail {
        if gpt {
            steps.push((*at, bytes));
        } else {
            steps.insert(0, (*at, bytes));
        }
    }
    for (at, bytes) in &steps {
        w.write_at(bytes, *at)
            .and_then(|()| w.sync_and_drop_cache())
            .map_err(|e| failure(Code::WriteFailed, format!("{e:#}")))?;
    }
    for (at, bytes) in &steps {
        let mut back = vec![0u8; bytes.len()];
        w.read_at(&mut back, *at).map_err(|e| failure(Code::ReadFailed, format!("{e:#}")))?;
        if back != *bytes {
            return Err(failure(
                Code::ReadbackMismatch,
                format!("{}: the partition table sectors at byte {at} read back differently", w.path().display()),
            ));
        }
    }
    Ok(())
}

/// Moves the backup GPT to the end of a larger target; returns what changed.
fn grow_gpt(w: &DiskWriter, m: &Manifest, sector: u64) -> Result<Vec<ChangedRange>> {
    if w.size() <= m.size {
        return Ok(vec![]);
    }
    let mut mbr = vec![0u8; sector as usize];
    let mut header = vec![0u8; sector as usize];
    w.read_at(&mut mbr, 0)?;
    w.read_at(&mut header, sector)?;
    let (entries_lba, entries_len) = gpt_grow::entry_array(&header).map_err(anyhow::Error::msg)?;
    let mut entries = vec![0u8; entries_len as usize];
    w.read_at(&mut entries, entries_lba * sector)?;
    let patches = gpt_grow::relocate_backup(&mbr, &header, &entries, sector, w.size()).map_err(anyhow::Error::msg)?;
    let mut changed = vec![];
    for p in &patches {
        w.write_at(&p.bytes, p.offset)?;
        // The new backup must be durable before the primary header points to it.
        w.sync_and_drop_cache()?;
        changed.push(ChangedRange { offset: p.offset, length: p.bytes.len() as u64, what: p.what.into() });
    }
    Ok(changed)
}
