//! Driver coverage: storage and network controllers the image has no driver for, and storage
//! controllers that show no disk. A missing storage driver must stop the migration with the PCI
//! ids, never become a silent partial migration.

use std::fs;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// A PCI function as sysfs shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PciDevice {
    /// `0000:00:04.0`
    pub address: String,
    /// `1000:0012`
    pub id: String,
    /// `0x010000`
    pub class: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub driver: Option<String>,
}

impl PciDevice {
    pub fn is_storage(&self) -> bool {
        self.class.starts_with("0x01")
    }
    pub fn is_network(&self) -> bool {
        self.class.starts_with("0x02")
    }
}

/// What the live image could and could not drive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Coverage {
    pub unbound_storage: Vec<PciDevice>,
    pub unbound_network: Vec<PciDevice>,
    /// Storage controllers with a driver but no disk under them.
    pub storage_without_disks: Vec<PciDevice>,
}

impl Coverage {
    pub fn storage_ok(&self) -> bool {
        self.unbound_storage.is_empty()
    }
}

use crate::fsx::read_trimmed as read;

/// Every PCI function under `sys/bus/pci/devices`.
pub fn pci_devices(sys: &Path) -> Vec<PciDevice> {
    let mut out = vec![];
    let Ok(rd) = fs::read_dir(sys.join("bus/pci/devices")) else { return out };
    for e in rd.flatten() {
        let p = e.path();
        let vendor = read(&p.join("vendor")).unwrap_or_default();
        let device = read(&p.join("device")).unwrap_or_default();
        let driver =
            fs::read_link(p.join("driver")).ok().and_then(|l| l.file_name().map(|n| n.to_string_lossy().into_owned()));
        out.push(PciDevice {
            address: e.file_name().to_string_lossy().into_owned(),
            id: format!("{}:{}", vendor.trim_start_matches("0x"), device.trim_start_matches("0x")),
            class: read(&p.join("class")).unwrap_or_default(),
            driver,
        });
    }
    out.sort_by(|a, b| a.address.cmp(&b.address));
    out
}

/// Checks coverage; `disk_device_paths` are the resolved `/sys/block/X/device` paths of every
/// disk found, used to see which controllers have disks.
pub fn check(sys: &Path, disk_device_paths: &[String]) -> Coverage {
    let mut c = Coverage::default();
    for d in pci_devices(sys) {
        match (d.is_storage(), d.is_network(), d.driver.is_some()) {
            (true, _, false) => c.unbound_storage.push(d),
            (_, true, false) => c.unbound_network.push(d),
            (true, _, true) => {
                let has_disk = disk_device_paths.iter().any(|p| p.contains(&format!("/{}/", d.address)));
                if !has_disk {
                    c.storage_without_disks.push(d);
                }
            }
            _ => {}
        }
    }
    c
}

/// The resolved device path of each disk in `sys/block`, for [`check`].
pub fn disk_device_paths(sys: &Path) -> Vec<String> {
    let Ok(rd) = fs::read_dir(sys.join("block")) else { return vec![] };
    rd.flatten().filter_map(|e| fs::canonicalize(e.path()).ok()).map(|p| format!("{}/", p.display())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_unbound_controllers() {
        let t = tempfile::tempdir().unwrap();
        let sys = t.path();
        let dev = |addr: &str, vendor: &str, device: &str, class: &str, driver: Option<&str>| {
            let real = sys.join("devices/pci0000:00").join(addr);
            fs::create_dir_all(&real).unwrap();
            fs::write(real.join("vendor"), format!("0x{vendor}\n")).unwrap();
            fs::write(real.join("device"), format!("0x{device}\n")).unwrap();
            fs::write(real.join("class"), format!("{class}\n")).unwrap();
            if let Some(d) = driver {
                let drv = sys.join("bus/pci/drivers").join(d);
                fs::create_dir_all(&drv).unwrap();
                std::os::unix::fs::symlink(&drv, real.join("driver")).unwrap();
            }
            fs::create_dir_all(sys.join("bus/pci/devices")).unwrap();
            std::os::unix::fs::symlink(&real, sys.join("bus/pci/devices").join(addr)).unwrap();
        };
        dev("0000:00:03.0", "1af4", "1001", "0x010000", Some("virtio-pci"));
        dev("0000:00:04.0", "1000", "0012", "0x010000", None);
        dev("0000:00:05.0", "8086", "10d3", "0x020000", None);
        dev("0000:00:06.0", "1b36", "0010", "0x010802", Some("nvme"));
        dev("0000:00:01.0", "8086", "7000", "0x060100", None);
        let disks = vec!["/sys/devices/pci0000:00/0000:00:03.0/virtio0/block/vda/".to_string()];
        let c = check(sys, &disks);
        assert_eq!(c.unbound_storage.len(), 1);
        assert_eq!(c.unbound_storage[0].id, "1000:0012");
        assert_eq!(c.unbound_network[0].id, "8086:10d3");
        assert_eq!(c.storage_without_disks.len(), 1);
        assert_eq!(c.storage_without_disks[0].driver.as_deref(), Some("nvme"));
        assert!(!c.storage_ok());
    }
}
