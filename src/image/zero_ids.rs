//! The ids of all-zero chunks, remembered.
//!
//! A chunk's id depends on its offset (BLAKE3 counts its 1 KiB leaves), so the id of a zero
//! chunk has to be hashed at each place: about a second of one core per 4.6 GB of empty disk
//! here. A receiver checks every chunk a manifest calls zero, so without memory it hashes the
//! empty space of every disk of a wave again. The id of zeros at chunk index `i` of chunk size
//! `c` is the same on every disk (but the last, short chunk and a disk of one chunk), so each is
//! hashed once per process and looked up afterwards.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use rayon::prelude::*;

use super::treehash::{chunk_id, id_at, Digest};

/// The most ids remembered, over every chunk size: 64 MiB. Enough for every chunk of a 4 TiB
/// disk in 4 MiB chunks and of a 64 TiB disk in 64 MiB chunks, twice over; past it ids are
/// hashed and not kept.
const MOST_REMEMBERED: usize = 2 << 20;
/// The most ids remembered one at a time (about 64 MiB with the map's own room): all the zero
/// chunks of a 4 TiB disk in 4 MiB chunks.
const MOST_ONE_BY_ONE: usize = 1 << 20;

/// Remembered ids, per chunk size: index `i` holds the id of a whole chunk of zeros at
/// `i * chunk_size`, on a disk larger than one chunk.
#[derive(Default)]
pub struct ZeroIds {
    by_chunk_size: Mutex<HashMap<u64, Arc<Vec<Digest>>>>,
    /// Ids asked for one at a time (a sender's zero chunks), by chunk size and index; kept only
    /// while [`ZeroIds::remember_for_later_disks`] says another disk follows.
    one_by_one: Mutex<HashMap<(u64, u64), Digest>>,
    keep_one_by_one: AtomicBool,
    /// Held while a list is extended: a second verification of the same disk (an agent that
    /// asked again) waits for the first one's ids rather than hashing them alongside.
    extending: Mutex<()>,
}

/// The process's remembered ids.
pub fn shared() -> &'static ZeroIds {
    static SHARED: OnceLock<ZeroIds> = OnceLock::new();
    SHARED.get_or_init(ZeroIds::default)
}

impl ZeroIds {
    /// The ids of whole zero chunks at indices `0..count` of `chunk_size`, hashing (on every
    /// core) only those not yet known. `None` when that many would pass [`MOST_REMEMBERED`].
    pub fn first(&self, chunk_size: u64, count: usize) -> Option<Arc<Vec<Digest>>> {
        let known = self.known(chunk_size);
        if known.len() >= count {
            return Some(known);
        }
        let _one_at_a_time = self.extending.lock().unwrap_or_else(|p| p.into_inner());
        let known = self.known(chunk_size);
        if known.len() >= count {
            return Some(known);
        }
        if self.remembered() - known.len() + count > MOST_REMEMBERED {
            return None;
        }
        let zeros = vec![0u8; chunk_size as usize];
        let more: Vec<Digest> =
            (known.len()..count).into_par_iter().map(|i| id_at(&zeros, i as u64 * chunk_size, false)).collect();
        let mut all = Vec::with_capacity(count);
        all.extend_from_slice(&known);
        all.extend(more);
        let all = Arc::new(all);
        let mut map = self.by_chunk_size.lock().unwrap_or_else(|p| p.into_inner());
        // Another caller may have hashed more meanwhile: keep the longer list.
        let kept = map.entry(chunk_size).or_default();
        if kept.len() < all.len() {
            *kept = all.clone();
        }
        Some(all)
    }

    /// Whether ids asked for one at a time are kept: a source with several disks (a storage
    /// server's dozen empty drives) then hashes the zeros at each place once. A source with one
    /// disk would only grow with its empty space (tens of MiB for a large disk) for nothing.
    pub fn remember_for_later_disks(&self, keep: bool) {
        self.keep_one_by_one.store(keep, Ordering::Relaxed);
        if !keep {
            self.one_by_one.lock().unwrap_or_else(|p| p.into_inner()).clear();
        }
    }

    /// The id of chunk `index` of a disk of `disk_size`, `zeros` being its bytes (all zero). A
    /// whole chunk of a disk larger than one chunk is remembered, or hashed (and remembered, when
    /// asked to and while there is room); a short last chunk or a disk of one chunk is hashed.
    pub fn one(&self, zeros: &[u8], index: u64, disk_size: u64, chunk_size: u64) -> Digest {
        if zeros.len() as u64 != chunk_size || disk_size <= chunk_size {
            return chunk_id(zeros, index * chunk_size, disk_size, chunk_size);
        }
        if let Some(id) = self.known(chunk_size).get(index as usize) {
            return *id;
        }
        let key = (chunk_size, index);
        if let Some(id) = self.one_by_one.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
            return *id;
        }
        let id = id_at(zeros, index * chunk_size, false);
        if self.keep_one_by_one.load(Ordering::Relaxed) {
            let mut map = self.one_by_one.lock().unwrap_or_else(|p| p.into_inner());
            if map.len() < MOST_ONE_BY_ONE {
                map.insert(key, id);
            }
        }
        id
    }

    fn known(&self, chunk_size: u64) -> Arc<Vec<Digest>> {
        let map = self.by_chunk_size.lock().unwrap_or_else(|p| p.into_inner());
        map.get(&chunk_size).cloned().unwrap_or_default()
    }

    /// How many ids are remembered, over every chunk size.
    pub fn remembered(&self) -> usize {
        let map = self.by_chunk_size.lock().unwrap_or_else(|p| p.into_inner());
        map.values().map(|v| v.len()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remembered_ids_are_the_ids_of_zeros_at_each_place() {
        let ids = ZeroIds::default();
        let chunk = 64 * 1024u64;
        let disk = 10 * chunk;
        let zeros = vec![0u8; chunk as usize];
        let got = ids.first(chunk, 3).unwrap();
        assert_eq!(got.len(), 3);
        // Extending keeps what was known and hashes only the rest.
        let more = ids.first(chunk, 8).unwrap();
        assert_eq!(&more[..3], &got[..]);
        for (i, id) in more.iter().enumerate() {
            assert_eq!(*id, chunk_id(&zeros, i as u64 * chunk, disk, chunk), "index {i}");
        }
        assert_ne!(more[0], more[1], "a zero chunk's id depends on where it is");
        assert_eq!(ids.remembered(), 8);
        // A shorter request is answered from memory.
        assert_eq!(ids.first(chunk, 2).unwrap().len(), 8);
        // Another chunk size has ids of its own.
        let other = ids.first(2 * chunk, 1).unwrap();
        assert_eq!(other[0], chunk_id(&vec![0u8; 2 * chunk as usize], 0, disk, 2 * chunk));
        assert_eq!(ids.remembered(), 9);
    }

    #[test]
    fn one_at_a_time_gives_the_same_ids() {
        let ids = ZeroIds::default();
        let chunk = 64 * 1024u64;
        let zeros = vec![0u8; chunk as usize];
        let disk = 10 * chunk;
        let all = ZeroIds::default().first(chunk, 6).unwrap();
        assert_eq!(ids.one(&zeros, 5, disk, chunk), all[5]);
        assert!(ids.one_by_one.lock().unwrap().is_empty(), "kept only when another disk follows");
        ids.remember_for_later_disks(true);
        assert_eq!(ids.one(&zeros, 5, disk, chunk), all[5]);
        assert_eq!(ids.one_by_one.lock().unwrap().len(), 1);
        assert_eq!(ids.one(&zeros, 5, disk, chunk), all[5], "remembered");
        ids.first(chunk, 3).unwrap();
        assert_eq!(ids.one(&zeros, 2, disk, chunk), all[2], "from the table");
    }

    #[test]
    fn past_the_limit_nothing_is_hashed_or_kept() {
        let ids = ZeroIds::default();
        assert!(ids.first(64 * 1024, MOST_REMEMBERED + 1).is_none());
        assert_eq!(ids.remembered(), 0);
    }
}
