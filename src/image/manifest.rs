//! The manifest of a disk: what it is, how it is cut, every chunk id and the whole-disk hash.
//!
//! This is the type the agent sends to the receiver, so it is versioned: a receiver refuses a
//! manifest whose `version` it does not know. Unknown fields are ignored for forward
//! compatibility (no `deny_unknown_fields` on wire types).

use serde::{Deserialize, Serialize};

use super::treehash::{self, Digest};
use crate::disk::used::UsedOnly;
use crate::disk::{BadRange, DiskIdentity, PartitionTable};

/// The manifest format this build writes and reads.
pub const MANIFEST_VERSION: u32 = 1;

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
    /// Always [`MANIFEST_VERSION`] when written by this build.
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
    /// One entry per chunk, in disk order.
    pub chunks: Vec<ChunkEntry>,
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
    #[error("manifest version {0} is not supported (this build reads version {MANIFEST_VERSION})")]
    Version(u32),
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
        if self.version != MANIFEST_VERSION {
            return Err(ManifestError::Version(self.version));
        }
        treehash::validate_chunk_size(self.chunk_size).map_err(ManifestError::ChunkSize)?;
        if self.recompute_root()? != self.blake3 {
            return Err(ManifestError::RootMismatch);
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

    /// The whole-disk hash recomputed from the chunk ids alone.
    pub fn recompute_root(&self) -> Result<Digest, treehash::TreeError> {
        let ids: Vec<Digest> = self.chunks.iter().map(|c| c.id).collect();
        treehash::root_from_ids(&ids, self.size, self.chunk_size)
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
