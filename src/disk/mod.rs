//! Block devices and disk images: discovery, identity, ioctls, the read-only guard and
//! partition tables.

pub mod gpt_grow;
pub mod ioctl;
pub mod lock;
mod mbr_guard;
pub mod partitions;
pub mod report;
pub mod rescue;
pub mod source;
pub mod sysfs;
pub mod types;
pub mod used;
pub mod writer;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

pub use partitions::{read_partition_table, Partition, PartitionTable, TableKind};
pub use report::render;
pub use rescue::{BadRange, BadSectors};
pub use source::DiskReader;

/// What identifies a disk: where it was found, what the hardware says it is, and its geometry.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskIdentity {
    /// Device node or image file path.
    pub path: String,
    /// `block` for a block device, `file` for an image file.
    pub kind: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub model: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub vendor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub serial: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub wwn: Option<String>,
    #[serde(default)]
    pub removable: bool,
    #[serde(default)]
    pub read_only: bool,
}

/// A disk with its partition table: one row of `ferry inspect`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskReport {
    #[serde(flatten)]
    pub identity: DiskIdentity,
    pub partition_table: PartitionTable,
}

/// The identity of an opened disk, enriched from sysfs for block devices.
pub fn identify(reader: &DiskReader) -> DiskIdentity {
    let mut id = DiskIdentity {
        path: reader.path().display().to_string(),
        kind: if reader.is_block_device() { "block" } else { "file" }.into(),
        size: reader.size(),
        logical_sector_size: reader.logical_sector_size(),
        physical_sector_size: reader.physical_sector_size(),
        ..Default::default()
    };
    if reader.is_block_device() {
        if let Ok(f) = std::fs::File::open(reader.path()) {
            id.read_only = ioctl::is_read_only(&f).unwrap_or(false);
        }
        let canonical = std::fs::canonicalize(reader.path()).unwrap_or_else(|_| reader.path().to_path_buf());
        if let Some(dir) = sysfs::sys_dir_for(&canonical) {
            let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
            if let Some(s) = sysfs::describe(&dir, &name) {
                id.model = s.model;
                id.vendor = s.vendor;
                id.serial = s.serial;
                id.wwn = s.wwn;
                id.removable = s.removable;
                id.read_only |= s.read_only;
            }
        }
    }
    id
}

/// Opens `path` and reads its identity and partition table.
pub fn inspect_path(path: &Path, sector_size: Option<u32>) -> Result<DiskReport> {
    let reader = DiskReader::open(path, sector_size)?;
    let partition_table =
        read_partition_table(&reader).with_context(|| format!("reading the partition table of {}", path.display()))?;
    Ok(DiskReport { identity: identify(&reader), partition_table })
}

/// `/dev/NAME` of every disk of this machine, from /sys/block.
pub fn machine_disks() -> Result<Vec<PathBuf>> {
    let disks = sysfs::enumerate(Path::new("/sys/block")).context("listing /sys/block")?;
    Ok(disks.into_iter().map(|d| Path::new("/dev").join(d.name)).collect())
}
