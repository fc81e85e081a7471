//! The files of a built live image (`ferry image build --out DIR`) and `DIR/image.json`, the
//! record of what they are, which the receiver reads to serve them.

use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

/// The kernel, as Debian signed it.
pub const KERNEL: &str = "vmlinuz";
/// ferry's initramfs (unsigned: Secure Boot never checks it).
pub const INITRD: &str = "initrd.img";
/// The iPXE script for direct iPXE boots.
pub const IPXE_SCRIPT: &str = "boot.ipxe";
/// iPXE for legacy-BIOS PXE clients (Debian's `ipxe` package).
pub const IPXE_BIOS: &str = "undionly.kpxe";
/// iPXE for UEFI PXE clients without Secure Boot (iPXE is not signed by Microsoft).
pub const IPXE_EFI: &str = "snponly.efi";
/// Microsoft-signed shim: the DHCP boot file for UEFI PXE clients, Secure Boot on or off.
pub const SHIM: &str = "shimx64.efi";
/// Debian-signed network GRUB (grubnetx64), under the name shim loads from its own directory.
pub const GRUB_NET: &str = "grubx64.efi";
/// shim's MOK manager, which shim starts when asked to (shipped so shim never fails to find it).
pub const MOK_MANAGER: &str = "mmx64.efi";
/// The network GRUB's configuration: `$prefix/grub.cfg` with its prefix `/grub`.
pub const GRUB_NET_CFG: &str = "grub/grub.cfg";
/// The USB stick image (UEFI and legacy BIOS) and its block map.
pub const USB: &str = "ferry-usb.img";
pub const USB_BMAP: &str = "ferry-usb.img.bmap";
/// Where the kernel and initramfs are on the stick's FAT partition.
pub const STICK_KERNEL: &str = "ferry/vmlinuz";
pub const STICK_INITRD: &str = "ferry/initrd.img";
/// The stick image with the configuration on the kernel command line, for UEFI HTTP Boot
/// (made by the receiver from `ferry-usb.img`, not a file in the directory).
pub const HTTP_BOOT_IMAGE: &str = "ferry-http.img";
/// The receiver's iPXE menu (made by the receiver).
pub const IPXE_MENU: &str = "menu.ipxe";
/// This record.
pub const IMAGE_JSON: &str = "image.json";

/// The boot files a receiver serves from a built image, over HTTP and TFTP, and their types.
/// Nothing else under the directory is served.
pub const SERVED: &[(&str, &str)] = &[
    (IPXE_SCRIPT, "text/plain; charset=utf-8"),
    (KERNEL, "application/octet-stream"),
    (INITRD, "application/octet-stream"),
    (IPXE_BIOS, "application/octet-stream"),
    (IPXE_EFI, "application/efi"),
    (SHIM, "application/efi"),
    (GRUB_NET, "application/efi"),
    (MOK_MANAGER, "application/efi"),
    (GRUB_NET_CFG, "text/plain; charset=utf-8"),
    (USB, "application/octet-stream"),
    (USB_BMAP, "application/xml"),
];

/// A Debian package the image is made of.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Package {
    pub name: String,
    pub version: String,
}

/// Where the stick's GRUB menu lies inside the stick image: a fixed-size file in one piece,
/// which the receiver replaces to serve the image for UEFI HTTP Boot with the configuration on
/// the kernel command line (Linux cannot see the firmware's RAM disk, so no ferry.toml there).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct GrubCfgPlace {
    pub offset: u64,
    pub len: u64,
}

/// `image.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageInfo {
    pub ferry_version: String,
    pub kernel_version: String,
    /// The Debian packages the boot chain came from (kernel, shim, GRUB, iPXE).
    pub packages: Vec<Package>,
    /// The stick's GRUB menu in `ferry-usb.img` (absent when built with --no-usb).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub usb_grub_cfg: Option<GrubCfgPlace>,
}

impl ImageInfo {
    pub fn read(dir: &Path) -> Result<Self> {
        let p = dir.join(IMAGE_JSON);
        let text = std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?;
        serde_json::from_slice(&text).with_context(|| format!("{} is not an image description", p.display()))
    }
}
