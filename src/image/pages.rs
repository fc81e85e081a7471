//! Manifests in pages: a large disk's chunk ids go to the receiver, and are kept there, a page
//! at a time, so that neither end ever holds every id of a disk.
//!
//! A page is `chunks_per_page` consecutive chunk ids (a power of two) starting at a multiple of
//! it. Its bytes start at a multiple of `chunks_per_page × chunk_size`, itself a power of two, so
//! every page is a subtree of the disk's BLAKE3 tree; the last, short one too, because the tree
//! splits a run at the largest power of two below its length, which is never smaller than a
//! page while the run is longer than one. The ids of a page therefore merge to that subtree's
//! chaining value (its CV), and the page CVs merge up the same tree to the whole-disk hash: a
//! paged manifest's head is checked like an inline manifest whose chunks are pages.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use super::treehash::{self, Digest, TreeError};

/// Ids per page when the agent is not told otherwise: a page of JSON is about 6 MB.
pub const DEFAULT_CHUNKS_PER_PAGE: u64 = 1 << 16;
/// Small pages are for tests: a few MiB of disk then make several pages.
pub const MIN_CHUNKS_PER_PAGE: u64 = 1 << 4;
/// The most ids in one page, which bounds what either end holds of a disk's ids.
pub const MAX_CHUNKS_PER_PAGE: u64 = DEFAULT_CHUNKS_PER_PAGE;

/// What a paged manifest carries in place of its chunk ids: the CV of each page, in order.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pages {
    /// Chunk ids per page (a power of two); the last page may hold fewer.
    pub chunks_per_page: u64,
    /// Each page's subtree CV (hex).
    #[serde(with = "hex_digests")]
    pub cvs: Vec<Digest>,
}

/// Checks that `n` is a power of two within the supported range.
pub fn validate_chunks_per_page(n: u64) -> Result<(), String> {
    if !n.is_power_of_two() || !(MIN_CHUNKS_PER_PAGE..=MAX_CHUNKS_PER_PAGE).contains(&n) {
        return Err(format!(
            "{n} chunks per page must be a power of two between {MIN_CHUNKS_PER_PAGE} and {MAX_CHUNKS_PER_PAGE}"
        ));
    }
    Ok(())
}

/// Whether a disk of `chunks` chunks is sent with a paged manifest: only when it does not fit
/// one page (a disk of one page is sent the way every receiver reads).
pub fn is_paged(chunks: u64, chunks_per_page: u64) -> bool {
    chunks > chunks_per_page
}

/// How many pages `chunks` chunk ids make.
pub fn page_count(chunks: u64, chunks_per_page: u64) -> u64 {
    chunks.div_ceil(chunks_per_page)
}

/// The chunk indices page `page` holds.
pub fn page_chunks(chunks: u64, chunks_per_page: u64, page: u64) -> Range<u64> {
    // Saturating: a page number from a URL may be anything.
    let start = page.saturating_mul(chunks_per_page);
    start.min(chunks)..start.saturating_add(chunks_per_page).min(chunks)
}

/// The CV of the page whose first chunk is `first`, from its ids.
pub fn page_cv(ids: &[Digest], first: u64, size: u64, chunk_size: u64) -> Digest {
    let start = first * chunk_size;
    let len = (ids.len() as u64 * chunk_size).min(size.saturating_sub(start));
    treehash::subtree_cv(ids, len, chunk_size)
}

/// The whole-disk hash from the page CVs of a disk of more than one page.
pub fn root_from_page_cvs(cvs: &[Digest], size: u64, chunk_size: u64, per_page: u64) -> Result<Digest, TreeError> {
    // Each page is one "chunk" of `per_page × chunk_size` bytes; with two pages or more, the
    // root is an inner node, never a page itself.
    treehash::root_from_ids(cvs, size, chunk_size * per_page)
}

/// Lists of 32-byte digests as lowercase hex strings in JSON.
mod hex_digests {
    use serde::{de::Error, Deserialize, Deserializer, Serialize, Serializer};

    use super::Digest;

    pub fn serialize<S: Serializer>(ds: &[Digest], s: S) -> Result<S::Ok, S::Error> {
        ds.iter().map(hex::encode).collect::<Vec<_>>().serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Digest>, D::Error> {
        let v = Vec::<String>::deserialize(d)?;
        v.iter()
            .map(|s| {
                let mut out = [0u8; 32];
                hex::decode_to_slice(s, &mut out).map_err(|e| D::Error::custom(format!("bad page hash {s:?}: {e}")))?;
                Ok(out)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::treehash::{chunk_count, chunk_id, root_from_ids, MIN_CHUNK_SIZE};

    fn ids(size: u64, chunk_size: u64) -> Vec<Digest> {
        // Made-up data per chunk: what matters here is how ids merge, not what they hash.
        (0..chunk_count(size, chunk_size))
            .map(|i| {
                let len = treehash::chunk_len(size, chunk_size, i) as usize;
                chunk_id(&vec![(i % 251) as u8 + 1; len], i * chunk_size, size, chunk_size)
            })
            .collect()
    }

    #[test]
    fn page_cvs_merge_to_the_root_of_all_ids_for_every_kind_of_last_page() {
        let c = MIN_CHUNK_SIZE;
        let per = MIN_CHUNKS_PER_PAGE;
        // Whole pages; a short last page; a last page of one chunk; a short last chunk.
        for size in [2 * per * c, 3 * per * c + 5 * c, 2 * per * c + c, 2 * per * c + c / 3, 7 * per * c - 1] {
            let all = ids(size, c);
            let count = all.len() as u64;
            let cvs: Vec<Digest> = (0..page_count(count, per))
                .map(|p| {
                    let r = page_chunks(count, per, p);
                    page_cv(&all[r.start as usize..r.end as usize], r.start, size, c)
                })
                .collect();
            assert_eq!(
                root_from_page_cvs(&cvs, size, c, per).unwrap(),
                root_from_ids(&all, size, c).unwrap(),
                "{size}"
            );
        }
    }

    #[test]
    fn the_true_blake3_of_a_disk_comes_out_of_its_page_cvs() {
        let c = MIN_CHUNK_SIZE;
        let data: Vec<u8> = (0..(MIN_CHUNKS_PER_PAGE * 2 + 3) * c + 100).map(|i| (i * 7 % 253) as u8).collect();
        let size = data.len() as u64;
        let all: Vec<Digest> =
            data.chunks(c as usize).enumerate().map(|(i, d)| chunk_id(d, i as u64 * c, size, c)).collect();
        let per = MIN_CHUNKS_PER_PAGE;
        let cvs: Vec<Digest> = (0..3)
            .map(|p| {
                let r = page_chunks(all.len() as u64, per, p);
                page_cv(&all[r.start as usize..r.end as usize], r.start, size, c)
            })
            .collect();
        assert_eq!(root_from_page_cvs(&cvs, size, c, per).unwrap(), *blake3::hash(&data).as_bytes());
    }

    #[test]
    fn page_sizes_outside_the_range_are_refused() {
        assert!(validate_chunks_per_page(1 << 16).is_ok());
        assert!(validate_chunks_per_page(16).is_ok());
        assert!(validate_chunks_per_page(8).is_err());
        assert!(validate_chunks_per_page(1 << 17).is_err());
        assert!(validate_chunks_per_page(100).is_err());
        assert_eq!(page_chunks(40, 16, 2), 32..40);
        assert_eq!(page_chunks(40, 16, 3), 40..40);
        assert_eq!(page_count(40, 16), 3);
        assert!(!is_paged(16, 16) && is_paged(17, 16));
    }
}
