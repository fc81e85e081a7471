//! The UEFI boot stick: a unified kernel image (systemd-boot's stub + kernel + initramfs +
//! command line, joined with objcopy) on a FAT32 EFI system partition named `ferry-boot`, in a
//! GPT disk image, with a `.bmap` for fast, verified writing.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};

use super::tools::{self, cmd, EFI_STUB};

/// The GPT partition name init looks for to tell the boot stick from the disks to migrate.
pub const PARTITION_NAME: &str = "ferry-boot";
/// The FAT volume label.
pub const LABEL: &str = "FERRY";
const MIB: u64 = 1 << 20;

/// A PE section header's placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeSection {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
}

/// What objcopy needs to know about the stub to place new sections after the last one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeLayout {
    pub image_base: u64,
    pub section_alignment: u32,
    pub sections: Vec<PeSection>,
}

fn le16(b: &[u8], at: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(b.get(at..at + 2).context("truncated PE file")?.try_into()?))
}
fn le32(b: &[u8], at: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(b.get(at..at + 4).context("truncated PE file")?.try_into()?))
}
fn le64(b: &[u8], at: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(b.get(at..at + 8).context("truncated PE file")?.try_into()?))
}

/// Reads the section table of a PE32+ image (the same numbers `objdump -h` prints).
pub fn pe_layout(b: &[u8]) -> Result<PeLayout> {
    ensure!(b.starts_with(b"MZ"), "not a PE file (no MZ header)");
    let pe = le32(b, 0x3c)? as usize;
    ensure!(b.get(pe..pe + 4) == Some(b"PE\0\0"), "not a PE file (no PE signature)");
    let nsections = le16(b, pe + 6)? as usize;
    let opt_size = le16(b, pe + 20)? as usize;
    let opt = pe + 24;
    ensure!(le16(b, opt)? == 0x20b, "not a PE32+ (64-bit) image");
    let image_base = le64(b, opt + 24)?;
    let section_alignment = le32(b, opt + 32)?;
    ensure!(section_alignment.is_power_of_two(), "bad PE section alignment {section_alignment:#x}");
    let table = opt + opt_size;
    let mut sections = vec![];
    for i in 0..nsections {
        let s = table + i * 40;
        let raw = b.get(s..s + 8).context("truncated PE section table")?;
        let name = String::from_utf8_lossy(raw).trim_end_matches('\0').to_string();
        sections.push(PeSection { name, virtual_size: le32(b, s + 8)?, virtual_address: le32(b, s + 12)? });
    }
    Ok(PeLayout { image_base, section_alignment, sections })
}

/// Sets a PE image's COFF time stamp (objcopy writes the current time there, which would make
/// every build differ) and recomputes the optional header's checksum, as objcopy computed it.
pub fn pe_set_timestamp(b: &mut [u8], secs: u32) -> Result<()> {
    pe_layout(b)?;
    let pe = le32(b, 0x3c)? as usize;
    b[pe + 8..pe + 12].copy_from_slice(&secs.to_le_bytes());
    let ck = pe + 24 + 64;
    b[ck..ck + 4].copy_from_slice(&[0; 4]);
    let sum = pe_checksum(b, ck);
    b[ck..ck + 4].copy_from_slice(&sum.to_le_bytes());
    Ok(())
}

/// The PE checksum: 16-bit one's-complement-style sum of the file (the checksum field itself,
/// at `skip`, counted as zero) plus the file length.
fn pe_checksum(b: &[u8], skip: usize) -> u32 {
    let mut sum: u64 = 0;
    for (i, w) in b.chunks(2).enumerate() {
        if i * 2 == skip || i * 2 == skip + 2 {
            continue;
        }
        sum += u64::from(w[0]) | (u64::from(*w.get(1).unwrap_or(&0)) << 8);
        sum = (sum & 0xffff) + (sum >> 16);
    }
    ((sum & 0xffff) + b.len() as u64) as u32
}

fn align_up(n: u64, a: u64) -> u64 {
    n.div_ceil(a) * a
}

/// Virtual addresses (image base included, as objcopy's `--change-section-vma` wants them)
/// for new sections of the given sizes, placed in order after the stub's last section, each
/// aligned to the stub's section alignment (and at least a 4 KiB page), as ukify does.
pub fn place_sections(layout: &PeLayout, sizes: &[u64]) -> Vec<u64> {
    let align = u64::from(layout.section_alignment).max(4096);
    let mut next =
        layout.sections.iter().map(|s| u64::from(s.virtual_address) + u64::from(s.virtual_size)).max().unwrap_or(0);
    let mut out = vec![];
    for size in sizes {
        next = align_up(next, align);
        out.push(layout.image_base + next);
        next += size;
    }
    out
}

/// Builds a unified kernel image: stub + `.osrel`, `.cmdline`, `.linux`, `.initrd`, with the
/// PE time stamp set to `mtime`.
pub fn build_uki(
    vmlinuz: &Path,
    initrd: &Path,
    cmdline: &str,
    osrel: &str,
    work: &Path,
    out: &Path,
    mtime: u32,
) -> Result<()> {
    let stub = fs::read(EFI_STUB).with_context(|| format!("reading the UEFI stub {EFI_STUB}"))?;
    let layout = pe_layout(&stub).with_context(|| format!("reading {EFI_STUB}"))?;
    for s in [".osrel", ".cmdline", ".linux", ".initrd"] {
        ensure!(!layout.sections.iter().any(|x| x.name == s), "the stub already has a {s} section");
    }
    let osrel_f = work.join("osrel");
    let cmdline_f = work.join("cmdline");
    fs::write(&osrel_f, osrel)?;
    fs::write(&cmdline_f, cmdline)?;
    let parts: [(&str, &Path); 4] =
        [(".osrel", &osrel_f), (".cmdline", &cmdline_f), (".linux", vmlinuz), (".initrd", initrd)];
    let mut sizes = vec![];
    for (_, p) in &parts {
        sizes.push(fs::metadata(p).with_context(|| format!("reading {}", p.display()))?.len());
    }
    let vmas = place_sections(&layout, &sizes);
    let mut c = cmd("objcopy");
    for ((name, path), vma) in parts.iter().zip(&vmas) {
        c.arg("--add-section").arg(format!("{name}={}", path.display()));
        c.arg("--change-section-vma").arg(format!("{name}={vma:#x}"));
    }
    c.arg(EFI_STUB).arg(out);
    tools::run(&mut c)?;
    // Check the result the way firmware will see it.
    let mut uki = fs::read(out)?;
    pe_set_timestamp(&mut uki, mtime)?;
    fs::write(out, &uki)?;
    let got = pe_layout(&uki).context("objcopy wrote an unreadable PE image")?;
    for ((name, _), (vma, size)) in parts.iter().zip(vmas.iter().zip(&sizes)) {
        let s = got.sections.iter().find(|s| s.name == *name).with_context(|| format!("objcopy lost {name}"))?;
        ensure!(
            got.image_base + u64::from(s.virtual_address) == *vma && u64::from(s.virtual_size) >= *size,
            "objcopy placed {name} at {:#x} (+{:#x}), expected {vma:#x} (+{size:#x})",
            s.virtual_address,
            s.virtual_size
        );
    }
    Ok(())
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

/// The host files to put on the stick, as `EFI/BOOT/BOOTX64.EFI` and `ferry.toml`.
pub struct StickFiles<'a> {
    pub uki: &'a Path,
    pub ferry_toml: &'a Path,
}

/// Makes the GPT disk image with one FAT32 EFI system partition holding the UKI and
/// ferry.toml; returns the image size. `seed` makes GUIDs and the volume id reproducible.
pub fn build_disk(files: &StickFiles, work: &Path, out: &Path, seed: &[u8], mtime: i64) -> Result<u64> {
    let payload = fs::metadata(files.uki)?.len() + fs::metadata(files.ferry_toml)?.len();
    // Room for the files plus 8 MiB (FAT, directories, an edited ferry.toml, a bigger kernel
    // copied on later), at least what FAT32 needs (65525 clusters of 512 bytes, plus FATs).
    let part = align_up(payload + 8 * MIB, MIB).max(40 * MIB);
    let start_lba = 2048u64; // 1 MiB
    let part_sectors = part / 512;
    let disk = start_lba * 512 + part + MIB; // 1 MiB after: the backup GPT
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
    // mtools: keep the stubbed source times, and skip its geometry sanity check on files.
    let mtools = |tool: &str| {
        let mut c = cmd(tool);
        c.env("MTOOLS_SKIP_CHECK", "1").env("SOURCE_DATE_EPOCH", mtime.to_string()).arg("-i").arg(&fat);
        c
    };
    tools::run(mtools("mmd").args(["::/EFI", "::/EFI/BOOT"]))?;
    let staged_uki = work.join("BOOTX64.EFI");
    if staged_uki != files.uki {
        fs::copy(files.uki, &staged_uki)?;
    }
    let staged_toml = work.join("ferry.toml");
    if staged_toml != files.ferry_toml {
        fs::copy(files.ferry_toml, &staged_toml)?;
    }
    set_mtime(&staged_uki, mtime)?;
    set_mtime(&staged_toml, mtime)?;
    tools::run(mtools("mcopy").arg("-m").arg(&staged_uki).arg("::/EFI/BOOT/BOOTX64.EFI"))?;
    tools::run(mtools("mcopy").arg("-m").arg(&staged_toml).arg("::/ferry.toml"))?;

    let tmp = out.with_extension("img.tmp");
    let _ = fs::remove_file(&tmp);
    File::create(&tmp)?.set_len(disk)?;
    tools::run(
        cmd("sgdisk")
            .arg("--clear")
            .arg(format!("--disk-guid={}", guid_from(&[seed, b"disk"].concat())))
            .arg(format!("--new=1:{start_lba}:{}", start_lba + part_sectors - 1))
            .arg("--typecode=1:EF00")
            .arg(format!("--change-name=1:{PARTITION_NAME}"))
            .arg(format!("--partition-guid=1:{}", guid_from(&[seed, b"part"].concat())))
            .arg(&tmp),
    )?;
    copy_sparse(&fat, &tmp, start_lba * 512)?;
    fs::rename(&tmp, out)?;
    let _ = fs::remove_file(&fat);
    Ok(disk)
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

/// Checks a built image with sgdisk: one partition, EF00, named `ferry-boot`.
pub fn verify_disk(img: &Path) -> Result<()> {
    let info = tools::output(cmd("sgdisk").arg("--info=1").arg(img))?;
    if !info.contains("C12A7328-F81F-11D2-BA4B-00A0C93EC93B") || !info.contains(&format!("'{PARTITION_NAME}'")) {
        bail!("{} does not hold an EFI system partition named {PARTITION_NAME}:\n{info}", img.display());
    }
    tools::run(cmd("sgdisk").arg("--verify").arg(img))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn places_sections_after_the_last_one() {
        let layout = PeLayout {
            image_base: 0,
            section_alignment: 0x200,
            sections: vec![
                PeSection { name: ".text".into(), virtual_address: 0x4000, virtual_size: 0xbff0 },
                PeSection { name: ".sdmagic".into(), virtual_address: 0x19100, virtual_size: 0x34 },
            ],
        };
        let v = place_sections(&layout, &[100, 5, 0x7d_0000, 10]);
        assert_eq!(v, [0x1a000, 0x1b000, 0x1c000, 0x7ec000]);
        let based = PeLayout { image_base: 0x1_0000_0000, section_alignment: 0x10000, ..layout };
        assert_eq!(place_sections(&based, &[1])[0], 0x1_0002_0000);
    }

    #[test]
    fn reads_the_stub_if_present() {
        let Ok(b) = fs::read(EFI_STUB) else {
            eprintln!("skipping: {EFI_STUB} is not installed (apt-get install systemd-boot-efi)");
            return;
        };
        let l = pe_layout(&b).unwrap();
        assert!(l.sections.iter().any(|s| s.name == ".text"));
        assert!(l.section_alignment >= 0x200);
    }

    #[test]
    fn checksum_matches_objcopys() {
        let Ok(stub) = fs::read(EFI_STUB) else {
            eprintln!("skipping: {EFI_STUB} is not installed (apt-get install systemd-boot-efi)");
            return;
        };
        // The stub as shipped carries a valid checksum; recomputing it must give the same.
        let pe = le32(&stub, 0x3c).unwrap() as usize;
        let ck = pe + 24 + 64;
        let want = le32(&stub, ck).unwrap();
        let mut b = stub.clone();
        let ts = le32(&stub, pe + 8).unwrap();
        pe_set_timestamp(&mut b, ts).unwrap();
        assert_eq!(le32(&b, ck).unwrap(), want);
        assert_eq!(b, stub);
        pe_set_timestamp(&mut b, 12345).unwrap();
        assert_eq!(le32(&b, pe + 8).unwrap(), 12345);
    }

    #[test]
    fn rejects_non_pe() {
        assert!(pe_layout(b"\x7fELF....").is_err());
        assert!(pe_layout(b"MZ").is_err());
    }

    #[test]
    fn guids_are_stable_and_well_formed() {
        let g = guid_from(b"x");
        assert_eq!(g, guid_from(b"x"));
        assert_ne!(g, guid_from(b"y"));
        assert_eq!(g.len(), 36);
        assert_eq!(&g[14..15], "4");
    }
}
