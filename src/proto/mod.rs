//! Types shared by the agent and the receiver on the wire, and the API version.

/// Every API path lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";

pub use crate::disk::{DiskIdentity, Partition, PartitionTable, TableKind};
pub use crate::image::{ChunkEntry, Manifest, MANIFEST_VERSION};
