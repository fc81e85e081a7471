//! The boot stick, for UEFI (Secure Boot on or off) and legacy BIOS alike: a GPT disk image
//! whose FAT32 EFI system partition, named `ferry-boot`, holds Debian's signed boot chain (shim,
//! GRUB, kernel), ferry's initramfs, GRUB's menu and an editable `ferry.toml`, and whose BIOS
//! boot partition holds GRUB for BIOS; with a `.bmap` for fast, verified writing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::tools::{self, cmd};
use crate::boot::files::GrubCfgPlace;

/// The GPT partition name init looks for to tell the boot stick from the disks to migrate.
pub const PARTITION_NAME: &str = "ferry-boot";
/// The FAT volume label.
pub const LABEL: &str = "FERRY";
const MIB: u64 = 1 << 20;

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// A GUID string derived from a seed (so a rebuild of the same inputs gives the same GUIDs).
pub fn guid_from(seed: &[u8]) -> String {
    let h = blake3::hash(seed);
    let mut b: [u8; 16] = h.as_bytes()[..16].try_into().unwrap();
    b[6] = (b[6] & 0x0f) | 0x40; // version 4 layout
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let x = hex::encode_upper(b);
    format!("{}-{}-{}-{}-{}", &x[0..8], &x[8..12], &x[12..16], &x[16..20], &x[20..32])
}

/// Sets a file's access and modification time (FAT keeps them; fixed times keep images stable).
fn set_mtime(p: &Path, secs: i64) -> Result<()> {
    use nix::sys::time::TimeVal;
    let t = TimeVal::new(secs, 0);
    nix::sys::stat::utimes(p, &t, &t).with_context(|| format!("setting the time of {}", p.display()))?;
    Ok(())
}

/// What goes on the stick: files for the FAT partition (path there, host file) and GRUB for
/// legacy BIOS.
pub struct StickContents<'a> {
    pub files: Vec<(&'a str, PathBuf)>,
    /// GRUB's menu, stored as `MENU_PATH`; its bytes must be unique in the FAT (they are found
    /// there again for the HTTP Boot record).
    pub menu: &'a [u8],
    /// GRUB i386-pc's boot sector (`boot.img`) and core image.
    pub bios_boot_sector: &'a [u8],
    pub bios_core: &'a [u8],
}

/// Where UEFI GRUB (prefix `/EFI/debian`) and the BIOS core image read the menu.
pub const MENU_PATH: &str = "EFI/debian/grub.cfg";
/// The BIOS boot partition's name and size.
const BIOS_PARTITION_NAME: &str = "ferry-bios-boot";
const BIOS_PARTITION_SECTORS: u64 = 2048;

/// The stick image that was made.
#[derive(Debug, Clone, Copy)]
pub struct Stick {
    pub bytes: u64,
    pub menu: GrubCfgPlace,
}

/// Makes the GPT disk image: partition 1 the FAT32 EFI system partition named `ferry-boot`
/// (shim, GRUB, kernel, initramfs, menu, ferry.toml), partition 2 a 1 MiB BIOS boot partition
/// holding GRUB's core image, GRUB's boot sector in the protective MBR. `seed` makes the GUIDs
/// and the volume id reproducible.
pub fn build_disk(c: &StickContents, work: &Path, out: &Path, seed: &[u8], mtime: i64) -> Result<Stick> {
    let mut payload = c.menu.len() as u64;
    for (_, host) in &c.files {
        payload += fs::metadata(host).with_context(|| format!("reading {}", host.display()))?.len();
    }
    // Room for the files plus 8 MiB (FAT, directories, an edited ferry.toml, a bigger kernel
    // copied on later), at least what FAT32 needs (65525 clusters of 512 bytes, plus FATs).
    let part = align_up(payload + 8 * MIB, MIB).max(40 * MIB);
    let start_lba = 2048u64; // 1 MiB
    let part_sectors = part / 512;
    let bios_lba = start_lba + part_sectors;
    // 1 MiB after the BIOS boot partition: the backup GPT.
    let disk = (bios_lba + BIOS_PARTITION_SECTORS) * 512 + MIB;
    let fat = work.join("esp.fat");
    let _ = fs::remove_file(&fat);
    File::create(&fat)?.set_len(part)?;
    let volid = hex::encode(&blake3::hash(&[seed, b"volid"].concat()).as_bytes()[..4]);
    tools::run(
        cmd("mkfs.vfat")
            // --invariant fixes the label entry's time; -i after it still sets the volume id.
            .args(["--invariant", "-F", "32", "-S", "512", "-s", "1", "--mbr=n", "-n", LABEL, "-i", &volid])
            .arg("-h")
            .arg(start_lba.to_string())
            .arg(&fat),
    )?;
    let menu_file = work.join("grub.cfg");
    fs::write(&menu_file, c.menu)?;
    let mut files: Vec<(&str, &Path)> = c.files.iter().map(|(at, host)| (*at, host.as_path())).collect();
    files.push((MENU_PATH, &menu_file));
    fill_fat(&fat, &files, work, mtime)?;
    let menu_at = find_once(&fat, c.menu)?;

    let tmp = out.with_extension("img.tmp");
    let _ = fs::remove_file(&tmp);
    File::create(&tmp)?.set_len(disk)?;
    tools::run(
        cmd("sgdisk")
            .arg("--clear")
            .arg(format!("--disk-guid={}", guid_from(&[seed, b"disk"].concat())))
            .arg(format!("--new=1:{start_lba}:{}", bios_lba - 1))
            .arg("--typecode=1:EF00")
            .arg(format!("--change-name=1:{PARTITION_NAME}"))
            .arg(format!("--partition-guid=1:{}", guid_from(&[seed, b"part"].concat())))
            .arg(format!("--new=2:{bios_lba}:{}", bios_lba + BIOS_PARTITION_SECTORS - 1))
            .arg("--typecode=2:EF02")
            .arg(format!("--change-name=2:{BIOS_PARTITION_NAME}"))
            .arg(format!("--partition-guid=2:{}", guid_from(&[seed, b"bios"].concat())))
            .arg(&tmp),
    )?;
    copy_sparse(&fat, &tmp, start_lba * 512)?;
    super::bios::install(&tmp, c.bios_boot_sector, c.bios_core, bios_lba, BIOS_PARTITION_SECTORS)?;
    fs::rename(&tmp, out)?;
    let _ = fs::remove_file(&fat);
    Ok(Stick { bytes: disk, menu: GrubCfgPlace { offset: start_lba * 512 + menu_at, len: c.menu.len() as u64 } })
}

/// Copies files into the FAT image with mtools, creating their directories, every time stamp
/// `mtime`.
fn fill_fat(fat: &Path, files: &[(&str, &Path)], work: &Path, mtime: i64) -> Result<()> {
    // mtools: keep the stubbed source times, and skip its geometry sanity check on files.
    let mtools = |tool: &str| {
        let mut c = cmd(tool);
        c.env("MTOOLS_SKIP_CHECK", "1").env("SOURCE_DATE_EPOCH", mtime.to_string()).arg("-i").arg(fat);
        c
    };
    let mut dirs: Vec<String> = vec![];
    for (at, _) in files {
        let mut d = Path::new(at).parent();
        while let Some(p) = d.filter(|p| !p.as_os_str().is_empty()) {
            dirs.push(format!("::/{}", p.display()));
            d = p.parent();
        }
    }
    dirs.sort();
    dirs.dedup();
    if !dirs.is_empty() {
        tools::run(mtools("mmd").args(&dirs))?;
    }
    let stage = work.join("stage");
    for (at, host) in files {
        // A staged copy carries the fixed time (mcopy -m keeps the source's).
        let _ = fs::remove_dir_all(&stage);
        fs::create_dir_all(&stage)?;
        let staged = stage.join(Path::new(at).file_name().context("a file name")?);
        fs::copy(host, &staged).with_context(|| format!("copying {}", host.display()))?;
        set_mtime(&staged, mtime)?;
        tools::run(mtools("mcopy").arg("-m").arg(&staged).arg(format!("::/{at}")))?;
    }
    let _ = fs::remove_dir_all(&stage);
    Ok(())
}

/// The offset of the one place `needle` is in `file`; an error if it is not there in one piece
/// or is there twice.
fn find_once(file: &Path, needle: &[u8]) -> Result<u64> {
    let hay = fs::read(file)?;
    let hits: Vec<usize> =
        hay.windows(needle.len()).enumerate().filter(|(_, w)| *w == needle).map(|(i, _)| i).take(2).collect();
    match hits[..] {
        [at] => Ok(at as u64),
        [] => bail!("the GRUB menu is not in one piece in {} (a fragmented FAT?)", file.display()),
        _ => bail!("the GRUB menu's bytes are in {} twice", file.display()),
    }
}

/// Copies `src` into `dst` at `offset`, leaving all-zero blocks as holes.
fn copy_sparse(src: &Path, dst: &Path, offset: u64) -> Result<()> {
    let mut r = File::open(src)?;
    let mut w = OpenOptions::new().write(true).open(dst)?;
    let mut buf = vec![0u8; 64 * 1024];
    let mut pos = offset;
    loop {
        let mut n = 0;
        while n < buf.len() {
            let k = r.read(&mut buf[n..])?;
            if k == 0 {
                break;
            }
            n += k;
        }
        if n == 0 {
            break;
        }
        if buf[..n].iter().any(|b| *b != 0) {
            w.seek(SeekFrom::Start(pos))?;
            w.write_all(&buf[..n])?;
        }
        pos += n as u64;
    }
    w.sync_all()?;
    Ok(())
}

/// `bmaptool create`: the block map that lets `bmaptool copy` skip holes and verify.
pub fn bmap(img: &Path) -> Result<PathBuf> {
    let out = PathBuf::from(format!("{}.bmap", img.display()));
    tools::run(cmd("bmaptool").arg("create").arg("-o").arg(&out).arg(img))?;
    Ok(out)
}

/// Checks a built image with sgdisk: the ESP named `ferry-boot`, the BIOS boot partition, a
/// valid table.
pub fn verify_disk(img: &Path) -> Result<()> {
    let esp = tools::output(cmd("sgdisk").arg("--info=1").arg(img))?;
    if !esp.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") || !esp.contains(&format!("'{PARTITION_NAME}'")) {
        bail!("{} does not hold an EFI system partition named {PARTITION_NAME}:\n{esp}", img.display());
    }
    let bios = tools::output(cmd("sgdisk").arg("--info=2").arg(img))?;
    ensure!(
        bios.contains("21686148-6449-6E6F-744E-656564454649"),
        "{} has no BIOS boot partition:\n{bios}",
        img.display()
    );
    tools::run(cmd("sgdisk").arg("--verify").arg(img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guids_are_stable_and_well_formed() {
        let g = guid_from(b"x");
        assert_eq!(g, guid_from(b"x"));
        assert_ne!(g, guid_from(b"y"));
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
    }
}
