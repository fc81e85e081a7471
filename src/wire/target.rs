//! The target side's wire types: what the operator names and allows, what a target machine
//! reports and plans, and the delivery the receiver keeps of it.

use serde::{Deserialize, Serialize};

use super::*;

/// The target machine an `instance` job may write to, as the operator named it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TargetSpec {
    /// DMI product UUIDs or serial numbers, any of which names the target machine.
    #[serde(default)]
    pub machine: Vec<String>,
    /// Disk serials or WWNs; when given, every one must be present on the target.
    #[serde(default)]
    pub disks: Vec<String>,
    /// The operator's explicit permission to overwrite the target's disks. Without it a
    /// target writes nothing.
    #[serde(default)]
    pub allow_wipe: bool,
}

impl TargetSpec {
    /// Whether the spec names the target at all (by machine or by disks).
    pub fn names_a_target(&self) -> bool {
        !self.machine.is_empty() || !self.disks.is_empty()
    }
}

/// A byte range of a target disk that ferry changed after writing the source's bytes (the
/// relocated backup GPT), so that anyone can tell the copy from the original.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangedRange {
    pub offset: u64,
    pub length: u64,
    pub what: String,
}

/// One target disk of a delivery: which source disk it receives and how far it got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeliveredDisk {
    pub source_index: u32,
    pub target: DiskIdentity,
    #[serde(default)]
    pub bytes_written: u64,
    /// BLAKE3 of the first source-size bytes read back from the target, once verified.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    #[serde(default)]
    pub verified: bool,
    #[serde(default)]
    pub changed: Vec<ChangedRange>,
    /// Chunks an interrupted attempt of this machine had already written: found on the disk
    /// with their ids (read and hashed), and not pulled or written again.
    #[serde(default)]
    pub reused_chunks: u64,
    /// Sectors the source could not read, written as the zeros the source sent for them.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable_sectors: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// The target side of an `instance` job: its own state and history, apart from the source's.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delivery {
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineIdentity>,
    /// The target's disks as it registered them.
    #[serde(default)]
    pub target_disks: Vec<DiskIdentity>,
    /// Source disk → target disk, in source order, once writing began.
    #[serde(default)]
    pub disks: Vec<DeliveredDisk>,
    #[serde(default)]
    pub history: Vec<JobEvent>,
}

/// `POST /jobs/{job}/target/register` (target agent): who is asking to receive the disks.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetRegister {
    pub machine: MachineIdentity,
    pub disks: Vec<DiskIdentity>,
}

/// One source disk as a target needs to know it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct SourceDisk {
    pub index: u32,
    pub identity: DiskIdentity,
    pub partition_table: PartitionTable,
    pub size: u64,
    pub chunk_size: u64,
    pub blake3: String,
    /// Sectors the source could not read: zeros in what the target writes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub bad_ranges: Vec<BadRange>,
}

/// The answer to a target's registration: what it is to write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetPlan {
    pub job: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_machine: Option<MachineIdentity>,
    pub disks: Vec<SourceDisk>,
    /// Disk serials or WWNs the job names: when given, only those disks may be written.
    #[serde(default)]
    pub named_disks: Vec<String>,
    /// This machine already began writing this delivery (an interrupted or failed attempt):
    /// its disks may carry the source's GPT disk GUID because ferry put it there.
    #[serde(default)]
    pub rewriting: bool,
}

/// `POST /jobs/{job}/target/begin`: the mapping the target is about to write.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetBegin {
    pub disks: Vec<DeliveredDisk>,
}

/// `POST /jobs/{job}/target/progress`: bytes written per source disk index.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetProgress {
    pub source_index: u32,
    pub bytes_written: u64,
}

/// `POST /jobs/{job}/target/finish`: what the target read back from each disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TargetDone {
    pub disks: Vec<DeliveredDisk>,
}
