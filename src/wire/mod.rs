//! Types shared by the agent and the receiver on the wire, and the API version.
//!
//! The wire: JSON bodies for control messages, raw (optionally zstd) bodies for chunks, all under
//! [`API_PREFIX`]. Wire types never use `deny_unknown_fields`, so a newer peer can add fields.
//!
//! A source agent's conversation for one job:
//! 1. `POST /jobs/{job}/register` with the machine's identity and disks; the job becomes Running.
//! 2. Per disk `n`: `POST /jobs/{job}/disks/{n}/begin` with the disk's identity, table and size.
//! 3. While hashing: `POST /jobs/{job}/disks/{n}/missing` with batches of `(index, id)`; the
//!    receiver answers which it lacks, and the agent `PUT`s only those to
//!    `/jobs/{job}/disks/{n}/chunks/{index}` with header [`CHUNK_ID_HEADER`].
//! 4. `POST /jobs/{job}/disks/{n}/complete` with the full [`Manifest`]; the receiver checks the
//!    ids merge to the whole-disk hash and that it holds every chunk. A disk of more chunks than
//!    a page holds (65,536 by default) sends its ids first, a page at a time as they are hashed,
//!    to `PUT /jobs/{job}/disks/{n}/pages/{p}` ([`ManifestPage`]), and then a paged manifest
//!    (version 2) carrying each page's hash instead of the ids; the receiver checks it a page
//!    at a time.
//! 5. `POST /jobs/{job}/finish`: the job becomes Finished only when every disk is verified.
//!
//! A source that has an enrollment token instead of a job first calls `POST /enroll` with its
//! identity ([`EnrollRequest`]) and goes on with the job and token of the answer.
//!
//! A target agent's conversation (job target `instance`, with the job's target token), once the
//! job is Finished:
//! 1. `POST /jobs/{job}/target/register` with the target's identity and disks; the receiver
//!    checks the wipe permission and that this is the machine the job names, and answers with
//!    the source disks ([`TargetPlan`]). The agent checks its disks (count, sizes, sector sizes,
//!    not the source) and reports a refusal to `/target/fail`, or the mapping to `/target/begin`.
//! 2. Per disk: `GET /jobs/{job}/disks/{n}/manifest` (of a paged manifest, then each page in
//!    turn from `GET …/pages/{p}`, checked against its hash), then `GET …/chunks/{index}` for
//!    every chunk that is not zero; the agent checks each chunk's id before writing it.
//! 3. `POST /jobs/{job}/target/finish` with what it read back; the receiver compares it with
//!    the source's whole-disk hashes.

mod code;
pub mod routes;
mod target;
mod wave;

use serde::{Deserialize, Serialize};

pub use crate::disk::{BadRange, BadSectors, DiskIdentity, Partition, PartitionTable, TableKind};
use crate::image::manifest::hex_digest;
pub use crate::image::manifest::ManifestPage;
use crate::image::Digest;
pub use crate::image::{ChunkEntry, Manifest, MANIFEST_VERSION, PAGED_MANIFEST_VERSION};
pub use code::{Advice, Code};
pub use target::*;
pub use wave::{receipt, summarize, valid_wave, Receipt, ReceiptDisk, WaveJob, WaveSummary};

/// Every API path lives under this prefix.
pub const API_PREFIX: &str = "/api/v1";
/// The chunk id (hex) of a chunk upload.
pub const CHUNK_ID_HEADER: &str = "x-ferry-chunk-id";

/// Job states, as cloud server-migration services name them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum JobState {
    Waiting,
    Running,
    Finished,
    InError,
    Cancelled,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "Waiting",
            JobState::Running => "Running",
            JobState::Finished => "Finished",
            JobState::InError => "InError",
            JobState::Cancelled => "Cancelled",
        }
    }
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Waiting, Self::Running, Self::Finished, Self::InError, Self::Cancelled]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// What the destination of a job is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// Disk images exported from the receiver's store.
    #[default]
    Image,
    /// A target machine that boots the live image and receives the disks.
    Instance,
}

/// Options an operator sets on a job; the agent applies them.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobOptions {
    /// Compress chunks with zstd on the wire.
    #[serde(default)]
    pub compress: bool,
    /// Upper bound on upload rate in bytes per second (none when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bandwidth_limit: Option<u64>,
    /// Chunk size the agent should cut disks into (the default when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u64>,
    /// What the source does with sectors it cannot read: `fail` (the default) or `record`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub bad_sectors: BadSectors,
    /// The migration wave the job belongs to (`GET /waves`, `ferry job list --wave`); an
    /// enrollment's jobs are in the wave of the enrollment's name unless it names another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    /// Used-blocks mode: read only the blocks each partition's filesystem uses (where ferry can
    /// read its allocation safely); the rest are zeros in the copy, which is then not
    /// bit-for-bit.
    #[serde(default, skip_serializing_if = "is_default")]
    pub used_only: bool,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// `POST /jobs`: create a migration job (admin).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateJob {
    pub name: String,
    #[serde(default)]
    pub target: TargetKind,
    #[serde(default)]
    pub options: JobOptions,
    /// Repeating a create with the same client token returns the job created the first time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client_token: Option<String>,
    /// For `instance` jobs: which machine may receive the disks, and whether it may be wiped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<TargetSpec>,
}

/// `POST /enrollments` (admin): a standing policy for a migration wave. Sources that boot with
/// its token and no job (`ferry.enroll=`, `ferry send --enroll`) get a job of their own.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CreateEnrollment {
    /// The wave's name; each machine's job is named `NAME-SERIAL` (or the MAC address).
    pub name: String,
    #[serde(default)]
    pub target: TargetKind,
    #[serde(default)]
    pub options: JobOptions,
    /// At most this many machines; one more is refused (`enrollment_full`). A machine that has
    /// a job here always gets its next one (the cutover after a pre-seed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u64>,
}

/// An enrollment as the receiver keeps it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Enrollment {
    pub id: String,
    pub name: String,
    pub target: TargetKind,
    pub options: JobOptions,
    /// What sources boot with (admins only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: u64,
    /// Once revoked, the token enrolls nothing more; jobs made before keep running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_jobs: Option<u64>,
    /// The jobs this enrollment created, oldest first.
    #[serde(default)]
    pub jobs: Vec<String>,
}

/// `POST /enroll` (enrollment token): which job this machine works on.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollRequest {
    pub machine: MachineIdentity,
    /// The live image asks (the disks are at rest): once such a copy is Finished it is the
    /// migration, and the machine booting ferry again is told so instead of copied again.
    #[serde(default)]
    pub offline: bool,
}

/// The answer to an enrollment: the machine's job and its agent token.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct EnrollAnswer {
    pub job: String,
    pub name: String,
    pub token: String,
    /// False when the machine gets a job it already had: an unfinished one (a reboot, a
    /// resumed migration), or, for the live image, the offline copy that already Finished.
    pub created: bool,
    pub state: JobState,
}

/// Which of a job's tokens to replace (`POST /jobs/{job}/tokens`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct TokenRequest {
    /// The agent's (the source's) token.
    #[serde(default)]
    pub agent: bool,
    /// The target machine's token (`instance` jobs).
    #[serde(default)]
    pub target: bool,
}

/// The tokens just made: shown this once, since the receiver keeps only their hashes.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct NewTokens {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_token: Option<String>,
}

/// One state change of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct JobEvent {
    /// Seconds since the Unix epoch.
    pub at: u64,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

/// Progress and result of one disk of a job.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DiskStatus {
    pub index: u32,
    pub identity: DiskIdentity,
    pub partition_table: PartitionTable,
    pub size: u64,
    pub chunk_size: u64,
    /// Bytes the agent has read and hashed.
    pub bytes_done: u64,
    /// Chunk bytes the receiver accepted over the wire for this disk (after decompression).
    pub bytes_received: u64,
    /// Chunks the receiver accepted over the wire for this disk.
    pub chunks_received: u64,
    /// Upload rate the agent last reported, bytes per second.
    pub rate: u64,
    /// Seconds left at that rate, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Whole-disk BLAKE3 (hex), once the disk is verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    pub verified: bool,
    /// Sectors the source could not read, sent as zeros (`bad_sectors = record`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_ranges: Vec<BadRange>,
    /// Copied in used-blocks mode: what was read, and why any partition was read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_only: Option<crate::disk::used::UsedOnly>,
}

/// A job as the API shows it. The agent token is shown to admins only.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Job {
    pub id: String,
    pub name: String,
    pub target: TargetKind,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    pub options: JobOptions,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    pub created_at: u64,
    pub updated_at: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineIdentity>,
    #[serde(default)]
    pub disks: Vec<DiskStatus>,
    #[serde(default)]
    pub history: Vec<JobEvent>,
    /// The source's hardware inventory (driver coverage), as it registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<serde_json::Value>,
    /// `instance` jobs: the target the operator named and allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_spec: Option<TargetSpec>,
    /// `instance` jobs: the token the target machine boots with (admins only). It can read
    /// the job's disks, never write them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_token: Option<String>,
    /// `instance` jobs: the target side's state, once a target registered.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delivery: Option<Delivery>,
    /// The enrollment that created this job, when a source enrolled itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enrollment: Option<String>,
}

/// What identifies a machine: DMI and MAC addresses.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct MachineIdentity {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product_uuid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vendor: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub product: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hostname: Option<String>,
    #[serde(default)]
    pub macs: Vec<String>,
}

/// `POST /jobs/{job}/register` (agent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Register {
    pub machine: MachineIdentity,
    pub disks: Vec<DiskIdentity>,
    /// What the live image found: PCI controllers without a driver, controllers without disks.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<serde_json::Value>,
}

/// The answer to a registration: what the agent should do.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Registered {
    pub job: String,
    pub options: JobOptions,
}

/// `POST /jobs/{job}/disks/{n}/begin` (agent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BeginDisk {
    pub identity: DiskIdentity,
    pub partition_table: PartitionTable,
    pub size: u64,
    pub chunk_size: u64,
}

/// One chunk in a `missing` query.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ChunkRef {
    pub index: u64,
    #[serde(with = "hex_digest")]
    pub id: Digest,
}

/// `POST /jobs/{job}/disks/{n}/missing` (agent).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingQuery {
    pub chunks: Vec<ChunkRef>,
}

/// Which of the queried chunk indexes the receiver lacks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct MissingAnswer {
    pub missing: Vec<u64>,
}

/// `POST /jobs/{job}/disks/{n}/progress` (agent heartbeat).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ProgressReport {
    pub bytes_done: u64,
    pub rate: u64,
}

/// The receiver's verdict on a completed disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct DiskVerdict {
    pub verified: bool,
    pub blake3: String,
}

/// `POST /jobs/{job}/fail` (agent): the source side gave up.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failure {
    pub code: String,
    pub reason: String,
}

/// One console transcript a live image sent (`GET /jobs/{job}/log`).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct LogEntry {
    pub at: u64,
    /// `source` or `target`.
    pub role: String,
    pub text: String,
}

/// Every error body: a stable code and words for people.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ApiError {
    pub code: String,
    pub message: String,
}

/// Job and disk ids that may appear in a URL: short, lowercase letters, digits and `-`.
pub fn valid_job_id(id: &str) -> bool {
    !id.is_empty() && id.len() <= 64 && id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_ids() {
        for ok in ["j-3f9a0c", "abc", "0123456789abcdef"] {
            assert!(valid_job_id(ok), "{ok}");
        }
        for bad in ["", "../x", "a/b", "a\0b", "A", "x".repeat(65).as_str(), "a b", "é"] {
            assert!(!valid_job_id(bad), "{bad:?}");
        }
    }

    #[test]
    fn states_round_trip() {
        for s in ["Waiting", "Running", "Finished", "InError", "Cancelled"] {
            assert_eq!(JobState::parse(s).unwrap().as_str(), s);
            assert_eq!(serde_json::to_string(&JobState::parse(s).unwrap()).unwrap(), format!("\"{s}\""));
        }
        assert_eq!(JobState::parse("Done"), None);
    }
}
