//! The per-disk "received" counters, added up in memory and written in batches: one database
//! write per chunk would put the job database on every chunk's path (a PostgreSQL round trip
//! each, shared by every receiver of a wave). A batch is written once 64 chunks are pending or
//! a second has passed, and before a disk is declared verified. The counters say what arrived;
//! the proof that a disk is whole is the store and its manifest, so a receiver killed between
//! two batches loses at most a second of counting, never a chunk.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::db::Db;

/// How many pending chunks make a batch.
const BATCH_CHUNKS: u64 = 64;
/// How old a batch may grow.
pub const BATCH_AGE: Duration = Duration::from_secs(1);

/// Bytes and chunks received per (job, disk), not yet written.
pub type Batch = HashMap<(String, u32), (u64, u64)>;

pub struct Received {
    pending: Mutex<(Batch, u64, Instant)>,
}

impl Default for Received {
    fn default() -> Self {
        Self { pending: Mutex::new((Batch::new(), 0, Instant::now())) }
    }
}

impl Received {
    fn lock(&self) -> std::sync::MutexGuard<'_, (Batch, u64, Instant)> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Counts a new chunk; gives back the batch when it is due.
    pub fn add(&self, job: &str, disk: u32, bytes: u64) -> Option<Batch> {
        let mut p = self.lock();
        let e = p.0.entry((job.to_string(), disk)).or_default();
        e.0 += bytes;
        e.1 += 1;
        p.1 += 1;
        (p.1 >= BATCH_CHUNKS || p.2.elapsed() >= BATCH_AGE).then(|| take(&mut p))
    }

    /// Everything pending.
    pub fn take_all(&self) -> Batch {
        take(&mut self.lock())
    }
}

fn take(p: &mut (Batch, u64, Instant)) -> Batch {
    p.1 = 0;
    p.2 = Instant::now();
    std::mem::take(&mut p.0)
}

/// Writes a batch; what could not be written is logged (the counters are informational).
pub fn write(db: &Db, batch: Batch) {
    for ((job, disk), (bytes, chunks)) in batch {
        if let Err(e) = db.add_received(&job, disk, bytes, chunks) {
            log::warn!("job {job} disk {disk}: counting {chunks} received chunks failed: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_batch_is_due_after_64_chunks_and_holds_their_sums() {
        let r = Received::default();
        for i in 0..63 {
            assert!(r.add(if i % 2 == 0 { "a" } else { "b" }, 0, 10).is_none());
        }
        let batch = r.add("a", 1, 5).expect("the 64th chunk makes a batch");
        assert_eq!(batch[&("a".to_string(), 0)], (320, 32));
        assert_eq!(batch[&("b".to_string(), 0)], (310, 31));
        assert_eq!(batch[&("a".to_string(), 1)], (5, 1));
        assert!(r.take_all().is_empty());
    }
}
