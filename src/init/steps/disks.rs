//! Step 2, disks: every disk read-only at the kernel level before anything reads a byte of it
//! (the boot stick too: ferry only ever mounts it read-only); the boot stick found and left
//! out; the disks this role works on chosen.

use std::fs;
use std::path::{Path, PathBuf};

use nix::mount::{mount, umount, MsFlags};

use crate::disk::{self, sysfs, DiskReader, TableKind};
use crate::init::cmdline::{LiveConfig, Role};
use crate::init::verdict::Failed;

/// Every disk of the machine, each set read-only first.
pub fn lock_all() -> Result<Vec<sysfs::SysDisk>, Failed> {
    let all_disks = sysfs::enumerate(Path::new("/sys/block")).unwrap_or_default();
    for d in &all_disks {
        let p = Path::new("/dev").join(&d.name);
        disk::lock::lock_read_only(&p).map_err(|e| {
            Failed::new(
                format!("could not set {} read-only: {e:#}", p.display()),
                "Reboot and try again; report this to the operator if it repeats. Nothing was read.",
            )
        })?;
    }
    Ok(all_disks)
}

/// The disks to migrate (or, as a target, to write): every disk but the boot stick, only the
/// ones `ferry.disks` names when it names some; never a removable disk as a target unless
/// `ferry.disks` names it (a second stick, a card reader).
pub fn chosen(all: &[sysfs::SysDisk], boot_disk: Option<&str>, cfg: &LiveConfig) -> Vec<PathBuf> {
    all.iter()
        .filter(|d| boot_disk != Some(d.name.as_str()))
        .filter(|d| cfg.disks.is_empty() || cfg.disks.contains(&d.name))
        .filter(|d| cfg.role == Role::Source || !d.removable || cfg.disks.contains(&d.name))
        .map(|d| Path::new("/dev").join(&d.name))
        .collect()
}

/// The disk holding a GPT partition named `ferry-boot`, and that partition's device.
pub fn find_boot_medium(disks: &[sysfs::SysDisk]) -> Option<(String, PathBuf)> {
    for d in disks {
        let path = Path::new("/dev").join(&d.name);
        let Ok(reader) = DiskReader::open(&path, None) else { continue };
        let Ok(table) = disk::read_partition_table(&reader) else { continue };
        if table.kind != TableKind::Gpt {
            continue;
        }
        if let Some(p) = table.partitions.iter().find(|p| p.name.as_deref() == Some("ferry-boot")) {
            let part = d
                .partitions
                .iter()
                .find(|name| {
                    fs::read_to_string(Path::new("/sys/block").join(&d.name).join(name).join("partition"))
                        .map(|s| s.trim() == p.number.to_string())
                        .unwrap_or(false)
                })
                .map(|name| Path::new("/dev").join(name))
                .unwrap_or_else(|| Path::new("/dev").join(format!("{}{}", d.name, p.number)));
            return Some((d.name.clone(), part));
        }
    }
    None
}

/// Reads `ferry.toml` from the boot stick's FAT partition, mounted read-only for a moment.
pub fn read_ferry_toml(part: &Path) -> Option<String> {
    let mnt = Path::new("/run/ferry/boot");
    fs::create_dir_all(mnt).ok()?;
    if let Err(e) = mount(Some(part), mnt, Some("vfat"), MsFlags::MS_RDONLY | MsFlags::MS_NOEXEC, None::<&str>) {
        log::warn!("mounting the boot medium {}: {e}", part.display());
        return None;
    }
    let text = fs::read_to_string(mnt.join("ferry.toml")).ok();
    let _ = umount(mnt);
    text
}

pub fn print_disk_table(paths: &[PathBuf], title: &str) {
    let reports: Vec<_> =
        paths.iter().filter_map(|p| disk::inspect_path(p, None).map_err(|e| log::warn!("{e:#}")).ok()).collect();
    crate::say!("\n{title}");
    crate::init::console::say(&disk::render(&reports));
}
