//! The manifest of a disk: what it is, how it is cut, every chunk id and the whole-disk hash.
//!
//! This is the type the agent sends to the receiver, so it is versioned: a receiver refuses a
//! manifest whose `version` it does not know. Unknown fields are ignored for forward
//! compatibility (no `deny_unknown_fields` on wire types).

use serde::{Deserialize, Serialize};

use super::pages::{self, Pages};
use super::treehash::chunk_count;
use super::treehash::{self, Digest};
use crate::disk::used::UsedOnly;
use crate::disk::{BadRange, DiskIdentity, PartitionTable};

/// The manifest format with every chunk id inline: what this build writes for a disk of one
/// page, and what every receiver reads.
pub const MANIFEST_VERSION: u32 = 1;
/// The paged format: the manifest carries page hashes, the ids go in pages of their own
/// (`image::pages`). Written for disks of more than one page.
pub const PAGED_MANIFEST_VERSION: u32 = 2;

/// One chunk of a disk: its id and whether every byte of it is zero.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkEntry {
    /// BLAKE3 chaining value of the chunk at its offset (hex); the root hash for a one-chunk disk.
    #[serde(with = "hex_digest")]
    pub id: Digest,
    /// An all-zero chunk is never sent or stored; its id is still recorded.
    #[serde(default)]
    pub zero: bool,
}

/// Everything known about one disk after a hashing pass.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// [`MANIFEST_VERSION`], or [`PAGED_MANIFEST_VERSION`] with `pages`.
    pub version: u32,
    /// Model, serial, WWN, sector sizes as the source saw them.
    pub identity: DiskIdentity,
    /// The partition table as read, with any damage found.
    pub partition_table: PartitionTable,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes (a power of two).
    pub chunk_size: u64,
    /// Standard BLAKE3 of the whole disk, hex: equal to `b3sum` of the same bytes.
    #[serde(with = "hex_digest")]
    pub blake3: Digest,
    /// One entry per chunk, in disk order. Empty in a paged manifest's head, whose ids are in
    /// its pages; filled when the pages are read back.
    pub chunks: Vec<ChunkEntry>,
    /// A paged manifest: its page size and page hashes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pages: Option<Pages>,
    /// Sectors the source could not read (`bad_sectors = record`): zeros in this copy, in order.
    /// The whole-disk hash is that of the disk with them zeroed.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_ranges: Vec<BadRange>,
    /// Present when the disk was copied in used-blocks mode: the ranges no filesystem uses are
    /// zeros in this copy, and the whole-disk hash is that of the zero-filled disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_only: Option<UsedOnly>,
}

/// What is wrong with a manifest received from elsewhere.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ManifestError {
    #[error("manifest version {0} is not supported (this build reads versions {MANIFEST_VERSION} and {PAGED_MANIFEST_VERSION})")]
    Version(u32),
    #[error("paged manifest: {0}")]
    Pages(String),
    #[error("{0}")]
    ChunkSize(String),
    #[error(transparent)]
    Tree(#[from] treehash::TreeError),
    #[error("the chunk ids do not merge to the whole-disk hash the manifest states")]
    RootMismatch,
    #[error("the unreadable ranges are out of order, overlap, or reach past the disk's end")]
    BadRanges,
    #[error("the used-blocks summary says more bytes were read than the disk holds")]
    UsedOnly,
}

impl Manifest {
    /// Checks the version, the chunk size, the id count, and that the ids merge up the BLAKE3
    /// tree to the stated whole-disk hash. Needs no disk data.
    pub fn validate(&self) -> Result<(), ManifestError> {
        treehash::validate_chunk_size(self.chunk_size).map_err(ManifestError::ChunkSize)?;
        match (self.version, &self.pages) {
            (MANIFEST_VERSION, None) => {
                if self.recompute_root()? != self.blake3 {
                    return Err(ManifestError::RootMismatch);
                }
            }
            (PAGED_MANIFEST_VERSION, Some(p)) => validate_head(self, p).map_err(ManifestError::Pages)?,
            (PAGED_MANIFEST_VERSION, None) => return Err(ManifestError::Pages("no page hashes".into())),
            (v, _) => return Err(ManifestError::Version(v)),
        }
        let mut end = 0;
        for r in &self.bad_ranges {
            if r.length == 0 || r.offset < end || r.offset.checked_add(r.length).is_none_or(|e| e > self.size) {
                return Err(ManifestError::BadRanges);
            }
            end = r.end();
        }
        if self.used_only.as_ref().is_some_and(|u| u.read_bytes > self.size) {
            return Err(ManifestError::UsedOnly);
        }
        Ok(())
    }

    /// The whole-disk hash recomputed from the chunk ids alone (from the page hashes of a
    /// paged manifest's head).
    pub fn recompute_root(&self) -> Result<Digest, treehash::TreeError> {
        if let (Some(p), true) = (&self.pages, self.chunks.is_empty()) {
            return pages::root_from_page_cvs(&p.cvs, self.size, self.chunk_size, p.chunks_per_page);
        }
        let ids: Vec<Digest> = self.chunks.iter().map(|c| c.id).collect();
        treehash::root_from_ids(&ids, self.size, self.chunk_size)
    }

    /// How many chunks the disk is cut into (whether or not their ids are here).
    pub fn chunk_count(&self) -> u64 {
        treehash::chunk_count(self.size, self.chunk_size)
    }

    /// How many pages a paged manifest has (0 for an inline one).
    pub fn page_count(&self) -> u64 {
        self.pages.as_ref().map_or(0, |p| pages::page_count(self.chunk_count(), p.chunks_per_page))
    }

    /// Byte offset and length of chunk `index`.
    pub fn chunk_range(&self, index: u64) -> (u64, u64) {
        (index * self.chunk_size, treehash::chunk_len(self.size, self.chunk_size, index))
    }

    /// Bytes in chunks that are not all zero: what a first transfer has to move.
    pub fn data_bytes(&self) -> u64 {
        (0..self.chunks.len() as u64).filter(|&i| !self.chunks[i as usize].zero).map(|i| self.chunk_range(i).1).sum()
    }
}

/// One page of a disk's chunk ids, as the agent uploads it and the store keeps it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ManifestPage {
    /// Which page (0-based).
    pub page: u64,
    pub chunks_per_page: u64,
    /// The page's chunks, in disk order.
    pub chunks: Vec<ChunkEntry>,
}

/// Page `page` of the paged manifest `m`, from its stored or uploaded JSON: it must be that
/// page, of the manifest's page size, with the right number of chunks, and merge to the CV the
/// manifest states for it.
pub fn check_page(m: &Manifest, page: u64, body: &[u8]) -> Result<Vec<ChunkEntry>, String> {
    let p: ManifestPage = serde_json::from_slice(body).map_err(|e| format!("page {page} cannot be read: {e}"))?;
    check_page_entries(m, page, p)
}

/// [`check_page`] for a page already parsed (a target gets it from the receiver).
pub fn check_page_entries(m: &Manifest, page: u64, p: ManifestPage) -> Result<Vec<ChunkEntry>, String> {
    let paged = m.pages.as_ref().ok_or("the manifest is not paged")?;
    let range = pages::page_chunks(m.chunk_count(), paged.chunks_per_page, page);
    if p.page != page || p.chunks_per_page != paged.chunks_per_page || p.chunks.len() as u64 != range.end - range.start
    {
        return Err(format!(
            "page {page} is not that page of this manifest (it says page {} of {} chunks per page, with {} chunks)",
            p.page,
            p.chunks_per_page,
            p.chunks.len()
        ));
    }
    let ids: Vec<Digest> = p.chunks.iter().map(|c| c.id).collect();
    let want = paged.cvs.get(page as usize).ok_or_else(|| format!("the manifest has no page {page}"))?;
    if pages::page_cv(&ids, range.start, m.size, m.chunk_size) != *want {
        return Err(format!("page {page}'s chunk ids do not merge to the page's hash in the manifest"));
    }
    Ok(p.chunks)
}

/// Checks a paged manifest's head: page size, page count, and that the page CVs merge to the
/// whole-disk hash. With its chunks filled in (assembled from its pages), each page's ids must
/// merge to its CV.
fn validate_head(m: &Manifest, paged: &Pages) -> Result<(), String> {
    pages::validate_chunks_per_page(paged.chunks_per_page)?;
    let count = chunk_count(m.size, m.chunk_size);
    if !pages::is_paged(count, paged.chunks_per_page) {
        return Err(format!("a disk of {count} chunks fits one page of {} and is not paged", paged.chunks_per_page));
    }
    let want = pages::page_count(count, paged.chunks_per_page);
    if paged.cvs.len() as u64 != want {
        return Err(format!("{count} chunks make {want} pages, but the manifest lists {}", paged.cvs.len()));
    }
    let root = pages::root_from_page_cvs(&paged.cvs, m.size, m.chunk_size, paged.chunks_per_page)
        .map_err(|e| e.to_string())?;
    if root != m.blake3 {
        return Err("the page hashes do not merge to the whole-disk hash the manifest states".into());
    }
    if m.chunks.is_empty() {
        return Ok(());
    }
    if m.chunks.len() as u64 != count {
        return Err(format!("{count} chunks expected, {} listed", m.chunks.len()));
    }
    for (page, cv) in paged.cvs.iter().enumerate() {
        let range = pages::page_chunks(count, paged.chunks_per_page, page as u64);
        let ids: Vec<Digest> = m.chunks[range.start as usize..range.end as usize].iter().map(|c| c.id).collect();
        if pages::page_cv(&ids, range.start, m.size, m.chunk_size) != *cv {
            return Err(format!("page {page}'s chunk ids do not merge to the page's hash in the manifest"));
        }
    }
    Ok(())
}

/// Lowercase hex for 32-byte digests in JSON.
pub mod hex_digest {
    use super::Digest;
    use serde::{de::Error, Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Digest, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(d))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Digest, D::Error> {
        let s = String::deserialize(d)?;
        parse(&s).map_err(D::Error::custom)
    }

    /// Parses exactly 64 lowercase or uppercase hex digits.
    pub fn parse(s: &str) -> Result<Digest, String> {
        let mut out = [0u8; 32];
        if s.len() != 64 {
            return Err(format!("a digest is 64 hex digits, got {} characters", s.len()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|e| format!("bad hex digest: {e}"))?;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_digest_parse_rejects_bad_input() {
        assert!(hex_digest::parse(&"ab".repeat(32)).is_ok());
        assert!(hex_digest::parse("ab").is_err());
        assert!(hex_digest::parse(&"zz".repeat(32)).is_err());
        assert!(hex_digest::parse(&format!("../{}", "a".repeat(61))).is_err());
    }
}
