//! Legacy BIOS boot for the stick: GRUB i386-pc in a BIOS boot partition (GPT type EF02) and
//! GRUB's boot sector in the protective MBR, reading the same `/EFI/debian/grub.cfg` on the EFI
//! system partition as UEFI GRUB does. This does on an image file what `grub-bios-setup` does
//! on a device, byte for byte the same for the same inputs (no loop device, no root needed).

use std::fs::OpenOptions;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};

use super::bootloaders::BootLoaders;
use super::tools::{self, cmd};

const SECTOR: usize = 512;
/// GRUB's modules the core image carries: enough to read a GPT disk's FAT partition, run the
/// menu, and load Linux. (Nothing is loaded from the stick later.)
const CORE_MODULES: &[&str] = &[
    "biosdisk",
    "part_gpt",
    "fat",
    "normal",
    "linux",
    "echo",
    "test",
    "serial",
    "terminal",
    "configfile",
    "search",
    "minicmd",
];
/// Where the core image finds its menu: the boot disk's first GPT partition (the ESP).
const CORE_PREFIX: &str = "(,gpt1)/EFI/debian";

// Offsets in GRUB 2.06's i386-pc images (grub-core/boot/i386/pc/{boot,diskboot}.S).
/// boot.img: the code that fits before the MBR's disk signature.
const MBR_CODE_END: usize = 0x1b8;
/// boot.img: the LBA of the core image's first sector (u64).
const KERNEL_SECTOR: usize = 0x5c;
/// boot.img: the BIOS drive to boot from; 0xff means the drive the BIOS booted (DL).
const BOOT_DRIVE: usize = 0x64;
/// boot.img: a two-byte jump over the check for BIOSes that pass a wrong drive number;
/// grub-bios-setup turns it into two NOPs for hard disks (a USB stick boots as one).
const DRIVE_CHECK: usize = 0x66;
/// diskboot.img (the core image's first sector): its one block list, read backwards from the
/// sector's end: start LBA (u64), sector count (u16), load segment (u16).
const BLOCKLIST: usize = 0x1f4;
/// The segment diskboot loads the rest of the core image to (GRUB_BOOT_MACHINE_KERNEL_SEG+0x20).
const CORE_LOAD_SEGMENT: u16 = 0x820;

/// Builds GRUB's core image for legacy BIOS with `grub-mkimage` (deterministic: the same
/// modules give the same bytes).
pub fn core_image(bl: &BootLoaders, work: &Path) -> Result<Vec<u8>> {
    let out = work.join("core.img");
    tools::run(
        cmd(&bl.grub_mkimage)
            .args(["-O", "i386-pc", "-d"])
            .arg(&bl.grub_pc_dir)
            .arg("-o")
            .arg(&out)
            .args(["-p", CORE_PREFIX])
            .args(CORE_MODULES),
    )?;
    std::fs::read(&out).with_context(|| format!("reading {}", out.display()))
}

/// Writes `core` into the BIOS boot partition at `part_lba` (`part_sectors` long) and GRUB's
/// boot sector into the MBR of the disk image `img`, keeping the MBR's disk signature and
/// partition entries (the GPT's protective entry).
pub fn install(img: &Path, boot_img: &[u8], core: &[u8], part_lba: u64, part_sectors: u64) -> Result<()> {
    ensure!(boot_img.len() == SECTOR, "GRUB's boot.img is {} bytes, not one sector", boot_img.len());
    ensure!(core.len() > SECTOR, "GRUB's core image is too small ({} bytes)", core.len());
    let sectors = core.len().div_ceil(SECTOR) as u64;
    ensure!(
        sectors <= part_sectors,
        "GRUB's core image ({sectors} sectors) does not fit the BIOS boot partition ({part_sectors} sectors)"
    );
    let mut core = core.to_vec();
    core.resize(sectors as usize * SECTOR, 0);
    // diskboot loads the other sectors of the core image, which follow it on the disk.
    core[BLOCKLIST..BLOCKLIST + 8].copy_from_slice(&(part_lba + 1).to_le_bytes());
    core[BLOCKLIST + 8..BLOCKLIST + 10].copy_from_slice(&u16::try_from(sectors - 1)?.to_le_bytes());
    core[BLOCKLIST + 10..BLOCKLIST + 12].copy_from_slice(&CORE_LOAD_SEGMENT.to_le_bytes());

    let mut f =
        OpenOptions::new().read(true).write(true).open(img).with_context(|| format!("opening {}", img.display()))?;
    let mut mbr = [0u8; SECTOR];
    f.read_exact(&mut mbr)?;
    ensure!(mbr[510..] == [0x55, 0xaa], "{} has no MBR to put GRUB's boot sector in", img.display());
    mbr[..MBR_CODE_END].copy_from_slice(&boot_img[..MBR_CODE_END]);
    mbr[KERNEL_SECTOR..KERNEL_SECTOR + 8].copy_from_slice(&part_lba.to_le_bytes());
    mbr[BOOT_DRIVE] = 0xff;
    mbr[DRIVE_CHECK..DRIVE_CHECK + 2].copy_from_slice(&[0x90, 0x90]);
    f.seek(SeekFrom::Start(part_lba * SECTOR as u64))?;
    f.write_all(&core)?;
    f.seek(SeekFrom::Start(0))?;
    f.write_all(&mbr)?;
    f.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn installs_boot_sector_and_core_keeping_the_partition_table() {
        let t = tempfile::tempdir().unwrap();
        let img = t.path().join("disk.img");
        let mut disk = vec![0u8; 64 * SECTOR];
        // A protective MBR: signature, one 0xEE entry, 55 AA.
        disk[0x1b8..0x1bc].copy_from_slice(&[1, 2, 3, 4]);
        disk[0x1be + 4] = 0xee;
        disk[510] = 0x55;
        disk[511] = 0xaa;
        std::fs::write(&img, &disk).unwrap();
        let boot: Vec<u8> = (0..SECTOR).map(|i| (i % 251) as u8).collect();
        let core: Vec<u8> = (0..3 * SECTOR + 10).map(|i| (i % 13 + 1) as u8).collect();
        install(&img, &boot, &core, 40, 8).unwrap();
        let got = std::fs::read(&img).unwrap();
        // MBR: boot code, then the fields grub-bios-setup sets; the table untouched.
        assert_eq!(&got[..KERNEL_SECTOR], &boot[..KERNEL_SECTOR]);
        assert_eq!(&got[KERNEL_SECTOR..KERNEL_SECTOR + 8], &40u64.to_le_bytes());
        assert_eq!((got[BOOT_DRIVE], &got[DRIVE_CHECK..DRIVE_CHECK + 2]), (0xff, &[0x90u8, 0x90][..]));
        assert_eq!(&got[DRIVE_CHECK + 2..MBR_CODE_END], &boot[DRIVE_CHECK + 2..MBR_CODE_END]);
        assert_eq!(&got[0x1b8..SECTOR], &disk[0x1b8..SECTOR]);
        // Core: four sectors at LBA 40, the block list naming the three after the first.
        let c = &got[40 * SECTOR..44 * SECTOR];
        assert_eq!(&c[..BLOCKLIST], &core[..BLOCKLIST]);
        assert_eq!(&c[BLOCKLIST..BLOCKLIST + 8], &41u64.to_le_bytes());
        assert_eq!(&c[BLOCKLIST + 8..BLOCKLIST + 12], &[3, 0, 0x20, 0x08]);
        assert_eq!(&c[SECTOR..3 * SECTOR + 10], &core[SECTOR..]);
        assert!(c[3 * SECTOR + 10..].iter().all(|b| *b == 0));
        assert!(got[44 * SECTOR..].iter().all(|b| *b == 0), "nothing past the core image");
        // Too small a partition, or no MBR: refused.
        assert!(install(&img, &boot, &core, 40, 3).unwrap_err().to_string().contains("does not fit"));
        std::fs::write(&img, vec![0u8; 64 * SECTOR]).unwrap();
        assert!(install(&img, &boot, &core, 40, 8).is_err());
    }
}
