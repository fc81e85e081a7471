//! Finding the disks of this machine in sysfs (there is no udev in the live image).

use std::fs;
use std::path::{Path, PathBuf};

/// A whole disk as sysfs describes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SysDisk {
    /// Kernel name, e.g. `sda`, `nvme0n1`, `vda`.
    pub name: String,
    pub size: u64,
    pub logical_sector_size: u32,
    pub physical_sector_size: u32,
    pub removable: bool,
    pub read_only: bool,
    pub model: Option<String>,
    pub vendor: Option<String>,
    pub serial: Option<String>,
    pub wwn: Option<String>,
    /// `major:minor` of the disk.
    pub dev: Option<String>,
    /// Kernel names of its partitions, e.g. `sda1`, `nvme0n1p2`.
    pub partitions: Vec<String>,
}

/// Devices that are not disks of this machine: loop, RAM and optical devices, and the
/// assemblies (device mapper, md) built on top of real disks.
fn is_excluded(name: &str) -> bool {
    ["loop", "ram", "zram", "sr", "dm-", "md", "fd", "nbd"].iter().any(|p| name.starts_with(p))
}

use crate::fsx::read_trimmed;

fn read_u64(path: &Path) -> Option<u64> {
    read_trimmed(path)?.parse().ok()
}

/// Every disk under `sys_block` (normally `/sys/block`), sorted by name; devices of size 0
/// (empty card readers, absent media) are skipped.
pub fn enumerate(sys_block: &Path) -> std::io::Result<Vec<SysDisk>> {
    let mut disks = vec![];
    for entry in fs::read_dir(sys_block)? {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_excluded(&name) {
            continue;
        }
        if let Some(d) = describe(&entry.path(), &name) {
            disks.push(d);
        }
    }
    disks.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(disks)
}

/// One disk from its sysfs directory; `None` when it has no media.
pub fn describe(dir: &Path, name: &str) -> Option<SysDisk> {
    // sysfs `size` is always in 512-byte units, whatever the sector size.
    let size = read_u64(&dir.join("size"))? * 512;
    if size == 0 {
        return None;
    }
    let first = |rels: &[&str]| rels.iter().find_map(|r| read_trimmed(&dir.join(r)));
    let logical = read_u64(&dir.join("queue/logical_block_size")).unwrap_or(512) as u32;
    let physical = read_u64(&dir.join("queue/physical_block_size")).unwrap_or(u64::from(logical)) as u32;
    let mut partitions: Vec<String> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.path().join("partition").exists())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    partitions.sort_by_key(|p| (p.len(), p.clone()));
    Some(SysDisk {
        name: name.to_string(),
        size,
        logical_sector_size: logical,
        physical_sector_size: physical.max(logical),
        removable: read_u64(&dir.join("removable")) == Some(1),
        read_only: read_u64(&dir.join("ro")) == Some(1),
        model: first(&["device/model"]),
        vendor: first(&["device/vendor"]),
        serial: first(&["device/serial", "serial", "device/vpd_serial"]),
        wwn: first(&["wwid", "device/wwid"]).map(|w| w.trim_start_matches("naa.").to_string()),
        dev: read_trimmed(&dir.join("dev")),
        partitions,
    })
}

/// `/sys/block/<name>` for the disk behind `/dev/<name>`.
pub fn sys_dir_for(dev_path: &Path) -> Option<PathBuf> {
    let name = dev_path.file_name()?.to_str()?;
    let dir = Path::new("/sys/block").join(name);
    dir.exists().then_some(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn write(root: &Path, rel: &str, content: &str) {
        let p = root.join(rel);
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, content).unwrap();
    }

    /// A captured-shape sysfs tree: an NVMe disk with two partitions, a 4Kn virtio disk, a
    /// loop device, an empty card reader and a device-mapper volume.
    #[test]
    fn enumerates_a_fixture_tree() {
        let tmp = tempfile::tempdir().unwrap();
        let r = tmp.path();
        write(r, "nvme0n1/size", "2097152\n");
        write(r, "nvme0n1/queue/logical_block_size", "512\n");
        write(r, "nvme0n1/queue/physical_block_size", "512\n");
        write(r, "nvme0n1/removable", "0\n");
        write(r, "nvme0n1/ro", "0\n");
        write(r, "nvme0n1/device/model", "QEMU NVMe Ctrl                          \n");
        write(r, "nvme0n1/device/serial", "SRC-NVME-1      \n");
        write(r, "nvme0n1/wwid", "eui.0000000000000001\n");
        write(r, "nvme0n1/dev", "259:0\n");
        write(r, "nvme0n1/nvme0n1p1/partition", "1\n");
        write(r, "nvme0n1/nvme0n1p10/partition", "10\n");
        write(r, "nvme0n1/nvme0n1p2/partition", "2\n");
        write(r, "vdb/size", "409600\n");
        write(r, "vdb/queue/logical_block_size", "4096\n");
        write(r, "vdb/queue/physical_block_size", "4096\n");
        write(r, "vdb/serial", "vdb-serial\n");
        write(r, "vdb/ro", "1\n");
        write(r, "loop0/size", "2048\n");
        write(r, "sdc/size", "0\n");
        write(r, "dm-0/size", "4096\n");

        let disks = enumerate(r).unwrap();
        let names: Vec<&str> = disks.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["nvme0n1", "vdb"]);
        let n = &disks[0];
        assert_eq!(n.size, 2097152 * 512);
        assert_eq!(n.model.as_deref(), Some("QEMU NVMe Ctrl"));
        assert_eq!(n.serial.as_deref(), Some("SRC-NVME-1"));
        assert_eq!(n.wwn.as_deref(), Some("eui.0000000000000001"));
        assert_eq!(n.dev.as_deref(), Some("259:0"));
        assert_eq!(n.partitions, ["nvme0n1p1", "nvme0n1p2", "nvme0n1p10"]);
        assert!(!n.read_only);
        let v = &disks[1];
        assert_eq!((v.logical_sector_size, v.physical_sector_size), (4096, 4096));
        assert_eq!(v.size, 409600 * 512);
        assert_eq!(v.serial.as_deref(), Some("vdb-serial"));
        assert!(v.read_only);
    }
}
