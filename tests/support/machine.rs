//! A machine played on this host: a sysfs root of its own with a DMI identity, which ferry reads
//! when `FERRY_SYS_ROOT` points at it.

use std::path::{Path, PathBuf};

/// A sysfs root under `dir` whose DMI says this machine has `serial` and, when given, that
/// product UUID and product name.
pub fn machine(dir: &Path, serial: &str, uuid: Option<&str>, product_name: Option<&str>) -> PathBuf {
    let root = dir.join(format!("sys-{serial}"));
    let dmi = root.join("class/dmi/id");
    std::fs::create_dir_all(&dmi).unwrap();
    std::fs::write(dmi.join("product_serial"), serial).unwrap();
    if let Some(u) = uuid {
        std::fs::write(dmi.join("product_uuid"), u).unwrap();
    }
    if let Some(name) = product_name {
        std::fs::write(dmi.join("product_name"), name).unwrap();
    }
    root
}
