//! The boot chain, as Debian signs and ships it: Microsoft-signed shim, Debian-signed GRUB (disk
//! and network builds), GRUB for legacy BIOS with `grub-mkimage`, and iPXE. Fetched as packages
//! into the cache and unpacked there; ferry signs nothing itself.

use std::path::{Path, PathBuf};

use anyhow::{ensure, Result};

use super::packages;
use crate::boot::files::Package;

/// The packages, and why each is needed.
const PACKAGES: &[(&str, &str)] = &[
    ("shim-signed", "shim, signed by Microsoft's UEFI CA"),
    ("shim-helpers-amd64-signed", "shim's MOK manager"),
    ("grub-efi-amd64-signed", "GRUB for UEFI, signed by Debian"),
    ("grub-pc-bin", "GRUB's modules and boot sector for legacy BIOS"),
    ("grub-common", "grub-mkimage"),
    ("ipxe", "iPXE for BIOS and non-Secure-Boot UEFI PXE clients"),
];

/// The files of the boot chain, in the cache.
#[derive(Debug, Clone)]
pub struct BootLoaders {
    /// `shimx64.efi.signed`: the first stage under UEFI.
    pub shim: PathBuf,
    /// `mmx64.efi.signed`. (Never `fbx64.efi`: on removable media it writes boot entries into
    /// the machine's NVRAM and reboots.)
    pub mok_manager: PathBuf,
    /// `grubx64.efi.signed`: reads `/EFI/debian/grub.cfg` on the disk it was loaded from.
    pub grub_efi: PathBuf,
    /// `grubnetx64.efi.signed`: reads `/grub/grub.cfg` over TFTP.
    pub grub_net_efi: PathBuf,
    /// `usr/lib/grub/i386-pc`: modules and `boot.img`.
    pub grub_pc_dir: PathBuf,
    pub grub_mkimage: PathBuf,
    pub ipxe_bios: PathBuf,
    pub ipxe_efi: PathBuf,
    /// What they came from, for `image.json`.
    pub packages: Vec<Package>,
}

/// Fetches (once) and unpacks the boot chain's packages into `cache`.
pub fn prepare(cache: &Path) -> Result<BootLoaders> {
    let mut roots = vec![];
    let mut used = vec![];
    for (pkg, why) in PACKAGES {
        log::info!("boot chain: {pkg} ({why})");
        let deb = packages::fetch(pkg, cache)?;
        if let Some((name, version)) = packages::name_and_version(&deb) {
            used.push(Package { name, version });
        }
        roots.push(packages::unpack(&deb, cache, |_| Ok(()))?);
    }
    let [shim, helpers, grub_efi, grub_pc, grub_common, ipxe] = &roots[..] else {
        unreachable!("one tree per package")
    };
    let found = BootLoaders {
        shim: shim.join("usr/lib/shim/shimx64.efi.signed"),
        mok_manager: helpers.join("usr/lib/shim/mmx64.efi.signed"),
        grub_efi: grub_efi.join("usr/lib/grub/x86_64-efi-signed/grubx64.efi.signed"),
        grub_net_efi: grub_efi.join("usr/lib/grub/x86_64-efi-signed/grubnetx64.efi.signed"),
        grub_pc_dir: grub_pc.join("usr/lib/grub/i386-pc"),
        grub_mkimage: grub_common.join("usr/bin/grub-mkimage"),
        ipxe_bios: ipxe.join("usr/lib/ipxe/undionly.kpxe"),
        // ipxe.efi is a link to /boot; snponly.efi uses the firmware's own network driver.
        ipxe_efi: ipxe.join("usr/lib/ipxe/snponly.efi"),
        packages: used,
    };
    for p in [
        &found.shim,
        &found.mok_manager,
        &found.grub_efi,
        &found.grub_net_efi,
        &found.grub_pc_dir.join("boot.img"),
        &found.grub_mkimage,
        &found.ipxe_bios,
        &found.ipxe_efi,
    ] {
        ensure!(p.is_file(), "{} is missing from its package (a changed Debian package layout?)", p.display());
    }
    Ok(found)
}
