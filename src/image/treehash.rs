//! The BLAKE3 tree over a whole disk, cut at fixed power-of-two chunks.
//!
//! A chunk's id is the chaining value (CV) that the BLAKE3 tree of the whole disk already holds
//! for the subtree covering that chunk. One hashing pass over the disk therefore yields every
//! chunk id, and merging the ids up the tree yields the standard BLAKE3 hash of the whole disk:
//! the value `b3sum` prints for the same bytes. Nothing is hashed twice.
//!
//! A disk of at most one chunk has no inner node: its single id is the root hash itself.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, HasherExt, Mode};

/// A 32-byte chunk id or whole-disk hash.
pub type Digest = [u8; 32];

/// Smallest and largest chunk sizes accepted (both powers of two).
pub const MIN_CHUNK_SIZE: u64 = 64 * 1024;
pub const MAX_CHUNK_SIZE: u64 = 64 * 1024 * 1024;
pub const DEFAULT_CHUNK_SIZE: u64 = 4 * 1024 * 1024;

/// The most chunks a disk is cut into by default: 4 MiB chunks up to 4 TiB, then larger ones
/// (16 TiB: 16 MiB, 64 TiB: 64 MiB), so that a large disk does not become millions of files in
/// the store and millions of requests. Memory does not depend on it: a disk of more than one
/// page of ids has a paged manifest (`image::pages`). Past 64 TiB the largest chunk size is kept
/// and the count grows (a 100 TiB disk: 1.6 million chunks, 25 pages).
pub const DEFAULT_MAX_CHUNKS: u64 = 1 << 20;

/// The chunk size a disk of `size` bytes is cut into when neither the job nor the agent says.
pub fn default_chunk_size(size: u64) -> u64 {
    size.div_ceil(DEFAULT_MAX_CHUNKS).next_power_of_two().clamp(DEFAULT_CHUNK_SIZE, MAX_CHUNK_SIZE)
}

/// Checks that `chunk_size` is a power of two within the supported range.
pub fn validate_chunk_size(chunk_size: u64) -> Result<(), String> {
    if !chunk_size.is_power_of_two() || !(MIN_CHUNK_SIZE..=MAX_CHUNK_SIZE).contains(&chunk_size) {
        return Err(format!(
            "chunk size {chunk_size} must be a power of two between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE} bytes"
        ));
    }
    Ok(())
}

/// Number of chunks of a disk of `size` bytes (the last one may be short).
pub fn chunk_count(size: u64, chunk_size: u64) -> u64 {
    size.div_ceil(chunk_size)
}

/// Length of chunk `index` of a disk of `size` bytes.
pub fn chunk_len(size: u64, chunk_size: u64, index: u64) -> u64 {
    let start = index * chunk_size;
    chunk_size.min(size.saturating_sub(start))
}

/// The id of the chunk holding `data` at byte `offset` of a disk of `disk_size` bytes.
///
/// `offset` must be a multiple of `chunk_size`, and `data` must be the whole chunk.
pub fn chunk_id(data: &[u8], offset: u64, disk_size: u64, chunk_size: u64) -> Digest {
    debug_assert_eq!(offset % chunk_size, 0);
    id_at(data, offset, disk_size <= chunk_size)
}

/// The id of `data` at byte `offset`: the root hash when it is the whole disk, else its
/// chaining value.
pub fn id_at(data: &[u8], offset: u64, whole_disk: bool) -> Digest {
    if whole_disk {
        // A single-chunk disk: the root hash is the only node there is.
        return *blake3::hash(data).as_bytes();
    }
    let mut hasher = blake3::Hasher::new();
    hasher.set_input_offset(offset);
    hasher.update(data);
    hasher.finalize_non_root()
}

/// Why a list of ids cannot be the tree of a disk.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum TreeError {
    #[error("a disk of {size} bytes in chunks of {chunk_size} has {expected} chunks, but {got} ids were given")]
    WrongCount { size: u64, chunk_size: u64, expected: u64, got: u64 },
}

/// Recomputes the whole-disk BLAKE3 from the chunk ids alone.
pub fn root_from_ids(ids: &[Digest], size: u64, chunk_size: u64) -> Result<Digest, TreeError> {
    let expected = chunk_count(size, chunk_size);
    if ids.len() as u64 != expected {
        return Err(TreeError::WrongCount { size, chunk_size, expected, got: ids.len() as u64 });
    }
    if size <= chunk_size {
        return Ok(match ids.first() {
            Some(id) => *id,
            None => *blake3::hash(&[]).as_bytes(),
        });
    }
    let (left, right) = split(ids, size, chunk_size);
    let left_cv = subtree_cv(left.0, left.1, chunk_size);
    let right_cv = subtree_cv(right.0, right.1, chunk_size);
    Ok(*merge_subtrees_root(&left_cv, &right_cv, Mode::Hash).as_bytes())
}

/// Splits a run of ids covering `len` bytes where the BLAKE3 tree splits it. The left side is
/// always a power of two no smaller than `chunk_size`, so the split falls on a chunk boundary.
/// A run of chunk ids and the bytes it covers.
type Span<'a> = (&'a [Digest], u64);

fn split(ids: &[Digest], len: u64, chunk_size: u64) -> (Span<'_>, Span<'_>) {
    let left_len = left_subtree_len(len);
    let left_chunks = (left_len / chunk_size) as usize;
    let (l, r) = ids.split_at(left_chunks);
    ((l, left_len), (r, len - left_len))
}

/// The chaining value of the subtree made of `ids`, covering `len` bytes (never the root).
pub fn subtree_cv(ids: &[Digest], len: u64, chunk_size: u64) -> Digest {
    if len <= chunk_size {
        return ids[0];
    }
    let (left, right) = split(ids, len, chunk_size);
    let left_cv = subtree_cv(left.0, left.1, chunk_size);
    let right_cv = subtree_cv(right.0, right.1, chunk_size);
    merge_subtrees_non_root(&left_cv, &right_cv, Mode::Hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_chunk_size_grows_with_the_disk() {
        const TIB: u64 = 1 << 40;
        assert_eq!(default_chunk_size(0), DEFAULT_CHUNK_SIZE);
        assert_eq!(default_chunk_size(1 << 30), DEFAULT_CHUNK_SIZE);
        assert_eq!(default_chunk_size(4 * TIB), DEFAULT_CHUNK_SIZE);
        assert_eq!(default_chunk_size(4 * TIB + 1), 8 << 20);
        assert_eq!(default_chunk_size(20 * TIB), 32 << 20);
        assert_eq!(default_chunk_size(64 * TIB), MAX_CHUNK_SIZE);
        assert_eq!(default_chunk_size(100 * TIB), MAX_CHUNK_SIZE);
        for size in [TIB, 7 * TIB, 33 * TIB, 64 * TIB] {
            assert!(chunk_count(size, default_chunk_size(size)) <= DEFAULT_MAX_CHUNKS, "{size}");
        }
    }

    fn ids_of(data: &[u8], chunk_size: u64) -> Vec<Digest> {
        data.chunks(chunk_size as usize)
            .enumerate()
            .map(|(i, c)| chunk_id(c, i as u64 * chunk_size, data.len() as u64, chunk_size))
            .collect()
    }

    fn pattern(len: usize) -> Vec<u8> {
        // A non-repeating pattern so every chunk differs.
        (0..len).map(|i| (i as u32).wrapping_mul(2654435761).rotate_left(7) as u8).collect()
    }

    #[test]
    fn root_matches_plain_blake3_on_many_lengths() {
        let s = MIN_CHUNK_SIZE;
        let lengths = [
            0,
            1,
            1023,
            1024,
            s - 1,
            s,
            s + 1,
            2 * s,
            2 * s + 1,
            3 * s + 17,
            4 * s,
            5 * s - 511,
            7 * s + 1024,
            8 * s,
            9 * s + 3,
            16 * s + 1,
        ];
        for len in lengths {
            let data = pattern(len as usize);
            let ids = ids_of(&data, s);
            let root = root_from_ids(&ids, len, s).unwrap();
            assert_eq!(root, *blake3::hash(&data).as_bytes(), "length {len}");
        }
    }

    #[test]
    fn single_chunk_id_is_the_root_hash() {
        let data = pattern(1000);
        let id = chunk_id(&data, 0, 1000, MIN_CHUNK_SIZE);
        assert_eq!(id, *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn ids_depend_on_offset() {
        let data = vec![7u8; MIN_CHUNK_SIZE as usize];
        let size = 4 * MIN_CHUNK_SIZE;
        assert_ne!(chunk_id(&data, 0, size, MIN_CHUNK_SIZE), chunk_id(&data, MIN_CHUNK_SIZE, size, MIN_CHUNK_SIZE));
    }

    #[test]
    fn wrong_id_count_is_an_error() {
        let err = root_from_ids(&[[0; 32]], 3 * MIN_CHUNK_SIZE, MIN_CHUNK_SIZE).unwrap_err();
        assert_eq!(
            err,
            TreeError::WrongCount { size: 3 * MIN_CHUNK_SIZE, chunk_size: MIN_CHUNK_SIZE, expected: 3, got: 1 }
        );
    }

    #[test]
    fn a_changed_id_changes_the_root() {
        let data = pattern(3 * MIN_CHUNK_SIZE as usize);
        let mut ids = ids_of(&data, MIN_CHUNK_SIZE);
        let before = root_from_ids(&ids, data.len() as u64, MIN_CHUNK_SIZE).unwrap();
        ids[1][0] ^= 1;
        assert_ne!(before, root_from_ids(&ids, data.len() as u64, MIN_CHUNK_SIZE).unwrap());
    }

    #[test]
    fn chunk_size_validation() {
        assert!(validate_chunk_size(4 << 20).is_ok());
        assert!(validate_chunk_size(64 << 10).is_ok());
        assert!(validate_chunk_size(32 << 10).is_err());
        assert!(validate_chunk_size(3 << 20).is_err());
        assert!(validate_chunk_size(128 << 20).is_err());
    }

    #[test]
    fn chunk_lengths() {
        assert_eq!(chunk_count(0, 1024 * 64), 0);
        assert_eq!(chunk_count(1, 1024 * 64), 1);
        assert_eq!(chunk_count(65537, 65536), 2);
        assert_eq!(chunk_len(65537, 65536, 1), 1);
        assert_eq!(chunk_len(65537, 65536, 0), 65536);
    }
}
