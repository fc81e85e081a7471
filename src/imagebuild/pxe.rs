//! The PXE files: the iPXE script, and for UEFI the signed chain (shim, network GRUB and its
//! menu, the MOK manager) with iPXE for BIOS and non-Secure-Boot clients.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::Result;

use super::bootloaders;
use crate::boot::files as names;
use crate::boot::grub;
use crate::fsx::{copy_atomic, write_atomic};

/// The iPXE script. Paths are relative, so iPXE resolves them against the script's own URL:
/// the same script works from TFTP and from `ferry serve` (http://HOST:PORT/boot/boot.ipxe).
pub fn ipxe_script(cmdline: &str, kernel_version: &str) -> String {
    format!(
        "#!ipxe\n\
         # ferry live image (kernel {kernel_version}, ferry {}). vmlinuz and initrd.img are\n\
         # fetched relative to this script's URL: keep the three files together.\n\
         kernel vmlinuz initrd=initrd.img {cmdline}\n\
         initrd initrd.img\n\
         boot\n",
        env!("CARGO_PKG_VERSION")
    )
}

/// The PXE files beside kernel and initramfs: the signed chain for UEFI (shim as the DHCP boot
/// file, the network GRUB under the name shim loads, the MOK manager) with a GRUB menu carrying
/// `--cmdline` (`ferry serve --tftp-listen` serves its own instead, with the receiver's URL and
/// pin), and iPXE for the rest.
pub fn write_pxe_files(
    out: &Path,
    bl: &bootloaders::BootLoaders,
    cmdline: &str,
    kernel_version: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    for (name, src) in [
        (names::SHIM, &bl.shim),
        (names::GRUB_NET, &bl.grub_net_efi),
        (names::MOK_MANAGER, &bl.mok_manager),
        (names::IPXE_BIOS, &bl.ipxe_bios),
        (names::IPXE_EFI, &bl.ipxe_efi),
    ] {
        let dst = out.join(name);
        copy_atomic(src, &dst)?;
        written.push(dst);
    }
    let comment = format!(
        "PXE boot under UEFI (shim, then this network GRUB), kernel {kernel_version}, ferry {}.\n\
         Kernel and initramfs come from the TFTP root. `ferry serve --tftp-listen` serves its\n\
         own menu here, with the receiver's URL and pin.",
        env!("CARGO_PKG_VERSION")
    );
    let menu = grub::Menu {
        kernel: &format!("/{}", names::KERNEL),
        initrd: &format!("/{}", names::INITRD),
        entries: vec![grub::Entry { title: "ferry live image".into(), args: cmdline.to_string() }],
        timeout: 0,
        netboot: true,
        comment: &comment,
    };
    let cfg = out.join(names::GRUB_NET_CFG);
    fs::create_dir_all(cfg.parent().expect("grub/"))?;
    write_atomic(&cfg, grub::render(&menu).as_bytes())?;
    written.push(cfg);
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::super::ferry_toml::full_cmdline;
    use super::*;
    #[test]
    fn ipxe_uses_relative_paths() {
        let s = ipxe_script(&full_cmdline(&["ferry.job=7".into()]), "6.1.0-x");
        let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('#') || l.starts_with("#!")).collect();
        assert_eq!(
            lines,
            [
                "#!ipxe",
                "kernel vmlinuz initrd=initrd.img console=ttyS0 console=tty0 panic=30 printk.devkmsg=on ip=dhcp ferry.job=7",
                "initrd initrd.img",
                "boot"
            ]
        );
    }
}
