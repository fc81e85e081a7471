//! The read-only guard: the kernel's own read-only flag on a source disk and its partitions.
//!
//! In the live image nothing else runs, so every source disk gets BLKROSET before anything
//! reads it. On a running host ferry refuses to touch the flag of a disk that has anything
//! mounted: flipping it under a mounted filesystem would break the running system.

use std::fs::{self, File};
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{ioctl, sysfs};

/// Sets the kernel read-only flag on `disk` and every partition of it, and checks that the
/// kernel reports them read-only afterwards. Returns the devices locked.
pub fn lock_read_only(disk: &Path) -> Result<Vec<PathBuf>> {
    let meta = fs::metadata(disk).with_context(|| format!("opening {}", disk.display()))?;
    if !meta.file_type().is_block_device() {
        bail!("--lock sets the kernel's read-only flag, which only block devices have; {} is not one", disk.display());
    }
    let mut devices = vec![disk.to_path_buf()];
    let mut dev_numbers = vec![dev_string(meta.rdev())];
    if let Some(dir) = sysfs::sys_dir_for(disk) {
        if let Some(d) = sysfs::describe(&dir, &dir.file_name().unwrap_or_default().to_string_lossy()) {
            for part in d.partitions {
                if let Ok(dev) = fs::read_to_string(dir.join(&part).join("dev")) {
                    dev_numbers.push(dev.trim().to_string());
                }
                let p = Path::new("/dev").join(&part);
                if p.exists() {
                    devices.push(p);
                }
            }
        }
    }
    let mounted = mounted_devices()?;
    if let Some(m) = dev_numbers.iter().find(|d| mounted.contains(d)) {
        bail!(
            "{} (or one of its partitions, device {m}) is mounted: ferry does not set the read-only flag under a running system; unmount it, or run without --lock",
            disk.display()
        );
    }
    for dev in &devices {
        let f = File::open(dev).with_context(|| format!("opening {}", dev.display()))?;
        ioctl::set_read_only(&f, true).with_context(|| format!("setting {} read-only (BLKROSET)", dev.display()))?;
        if !ioctl::is_read_only(&f).with_context(|| format!("reading the read-only flag of {}", dev.display()))? {
            bail!("the kernel still reports {} writable after BLKROSET", dev.display());
        }
        log::info!("{} is read-only at the kernel level", dev.display());
    }
    Ok(devices)
}

fn dev_string(rdev: u64) -> String {
    format!("{}:{}", nix::sys::stat::major(rdev), nix::sys::stat::minor(rdev))
}

/// `major:minor` of every mounted block device, from /proc/self/mountinfo (field 3).
fn mounted_devices() -> Result<Vec<String>> {
    let text = match fs::read_to_string("/proc/self/mountinfo") {
        Ok(t) => t,
        // No /proc (early live image before mounts): nothing can be mounted from a disk yet.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(e).context("reading /proc/self/mountinfo"),
    };
    Ok(text.lines().filter_map(|l| l.split_whitespace().nth(2)).map(str::to_string).collect())
}
