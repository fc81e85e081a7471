//! ext2/3/4: the blocks each group's block bitmap marks in use.
//!
//! A group whose bitmap was never written (`BLOCK_UNINIT`) holds nothing but metadata; which
//! metadata is worked out as the kernel does (`ext4_init_block_bitmap`): the superblock and
//! descriptor backups the group carries, and any group's bitmaps or inode table placed in it
//! (with `flex_bg` they are packed into a few groups). Anything this reader is unsure of makes
//! the volume read whole.

use std::io;

use super::{le16, le32, read_vec, RangeSet, Verdict, Volume};

const MAGIC: u16 = 0xEF53;
const SUPERBLOCK_AT: u64 = 1024;

const STATE_VALID: u16 = 0x1;
const STATE_ERRORS: u16 = 0x2;

const COMPAT_SPARSE_SUPER2: u32 = 0x200;
const INCOMPAT_RECOVER: u32 = 0x4;
const INCOMPAT_JOURNAL_DEV: u32 = 0x8;
const INCOMPAT_META_BG: u32 = 0x10;
const INCOMPAT_64BIT: u32 = 0x80;
/// Every incompat feature whose meaning for block allocation this reader knows: filetype,
/// recover, journal_dev, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, dirdata, csum_seed,
/// largedir, inline_data, encrypt, casefold. Another bit could move blocks where this reader
/// does not look.
const INCOMPAT_KNOWN: u32 = 0x2
    | 0x4
    | 0x8
    | 0x10
    | 0x40
    | 0x80
    | 0x100
    | 0x200
    | 0x400
    | 0x1000
    | 0x2000
    | 0x4000
    | 0x8000
    | 0x10000
    | 0x20000;
const RO_COMPAT_SPARSE_SUPER: u32 = 0x1;
const RO_COMPAT_HAS_SNAPSHOT: u32 = 0x80;
const RO_COMPAT_BIGALLOC: u32 = 0x200;

const BG_BLOCK_UNINIT: u16 = 0x2;

/// The superblock fields this reader uses.
#[derive(Debug)]
struct Super {
    blocks: u64,
    first_data_block: u64,
    block_size: u64,
    blocks_per_group: u64,
    inodes_per_group: u64,
    inode_size: u64,
    state: u16,
    compat: u32,
    incompat: u32,
    ro_compat: u32,
    reserved_gdt: u64,
    desc_size: u64,
    first_meta_bg: u64,
    backup_bgs: [u32; 2],
    label: &'static str,
}

impl Super {
    fn parse(b: &[u8]) -> Option<Self> {
        if le16(b, 56) != MAGIC {
            return None;
        }
        let incompat = le32(b, 96);
        let is64 = incompat & INCOMPAT_64BIT != 0;
        let hi = if is64 { u64::from(le32(b, 336)) << 32 } else { 0 };
        let desc_size = if is64 { u64::from(le16(b, 254)).max(32) } else { 32 };
        let compat = le32(b, 92);
        let ro_compat = le32(b, 100);
        // ext2 and ext3 are the same format with fewer features; say which, as blkid would.
        let label = if incompat & !(0x2 | 0x4 | 0x8 | 0x10) != 0 || ro_compat & !0x7 != 0 {
            "ext4"
        } else if compat & 0x4 != 0 {
            "ext3"
        } else {
            "ext2"
        };
        Some(Self {
            blocks: u64::from(le32(b, 4)) | hi,
            first_data_block: u64::from(le32(b, 20)),
            block_size: 1024u64.checked_shl(le32(b, 24)).unwrap_or(0),
            blocks_per_group: u64::from(le32(b, 32)),
            inodes_per_group: u64::from(le32(b, 40)),
            inode_size: if le32(b, 76) == 0 { 128 } else { u64::from(le16(b, 88)) },
            state: le16(b, 58),
            compat,
            incompat,
            ro_compat,
            reserved_gdt: u64::from(le16(b, 206)),
            desc_size,
            first_meta_bg: u64::from(le32(b, 260)),
            backup_bgs: [le32(b, 588), le32(b, 592)],
            label,
        })
    }

    /// Why this filesystem must be read whole, if it must.
    fn unsafe_to_skip(&self) -> Option<String> {
        if self.incompat & INCOMPAT_RECOVER != 0 {
            return Some("its journal needs recovery (not cleanly unmounted)".into());
        }
        if self.state & STATE_VALID == 0 {
            return Some("it was not cleanly unmounted".into());
        }
        if self.state & STATE_ERRORS != 0 {
            return Some("it is marked as having errors (run e2fsck on the source first)".into());
        }
        if self.incompat & INCOMPAT_JOURNAL_DEV != 0 {
            return Some("it is an external journal device".into());
        }
        if self.incompat & !INCOMPAT_KNOWN != 0 {
            return Some(format!("it has incompat features this reader does not know ({:#x})", self.incompat));
        }
        if self.ro_compat & RO_COMPAT_BIGALLOC != 0 {
            return Some("bigalloc (cluster bitmaps) is not read by this version".into());
        }
        if self.ro_compat & RO_COMPAT_HAS_SNAPSHOT != 0 {
            return Some("it carries snapshots".into());
        }
        let sane = (1024..=65536).contains(&self.block_size)
            && self.blocks_per_group > 0
            && self.blocks_per_group <= self.block_size * 8
            && self.blocks > self.first_data_block
            && self.first_data_block <= 1
            && (32..=1024).contains(&self.desc_size)
            // 64-bit descriptors are at least 64 bytes (the kernel refuses smaller ones).
            && (self.incompat & INCOMPAT_64BIT == 0 || self.desc_size >= 64)
            && self.desc_size.is_power_of_two()
            && self.desc_size <= self.block_size
            && self.inode_size >= 128;
        (!sane).then(|| "its superblock does not describe a sane filesystem".into())
    }

    fn groups(&self) -> u64 {
        (self.blocks - self.first_data_block).div_ceil(self.blocks_per_group)
    }

    fn group_first_block(&self, g: u64) -> u64 {
        self.first_data_block + g * self.blocks_per_group
    }

    fn blocks_in_group(&self, g: u64) -> u64 {
        (self.blocks - self.group_first_block(g)).min(self.blocks_per_group)
    }

    fn descs_per_block(&self) -> u64 {
        self.block_size / self.desc_size
    }

    fn meta_bg(&self) -> bool {
        self.incompat & INCOMPAT_META_BG != 0
    }

    /// Whether group `g` carries a superblock backup (and the descriptors with it).
    fn has_super(&self, g: u64) -> bool {
        if g == 0 {
            return true;
        }
        if self.compat & COMPAT_SPARSE_SUPER2 != 0 {
            return self.backup_bgs.iter().any(|&b| u64::from(b) == g);
        }
        if g <= 1 || self.ro_compat & RO_COMPAT_SPARSE_SUPER == 0 {
            return true;
        }
        if g % 2 == 0 {
            return false;
        }
        [3u64, 5, 7].iter().any(|&base| is_power_of(g, base))
    }

    /// The block holding group `g`'s descriptor (the primary copy).
    fn desc_block(&self, g: u64) -> u64 {
        let per = self.descs_per_block();
        let meta_group = g / per;
        if !self.meta_bg() || meta_group < self.first_meta_bg {
            return self.first_data_block + 1 + meta_group;
        }
        // meta_bg: a meta group's descriptors sit in its first group, after any superblock.
        let first = meta_group * per;
        self.group_first_block(first) + u64::from(self.has_super(first))
    }

    /// How many blocks at the start of group `g` hold the superblock and descriptor copies
    /// (the kernel's `ext4_num_base_meta_clusters`).
    fn base_meta_blocks(&self, g: u64) -> u64 {
        let sup = u64::from(self.has_super(g));
        let per = self.descs_per_block();
        if !self.meta_bg() || g / per < self.first_meta_bg {
            if sup == 0 {
                return 0;
            }
            let gdt = if self.meta_bg() { self.first_meta_bg } else { self.groups().div_ceil(per) };
            return sup + gdt + self.reserved_gdt;
        }
        let in_meta = g % per;
        sup + u64::from(in_meta == 0 || in_meta == 1 || in_meta == per - 1)
    }
}

fn is_power_of(mut n: u64, base: u64) -> bool {
    while n > 1 && n % base == 0 {
        n /= base;
    }
    n == 1
}

/// One group descriptor's fields this reader uses.
#[derive(Debug, Clone, Copy)]
struct Group {
    block_bitmap: u64,
    inode_bitmap: u64,
    inode_table: u64,
    free_blocks: u64,
    flags: u16,
}

fn parse_group(d: &[u8], is64: bool) -> Group {
    let hi32 = |at: usize| if is64 { u64::from(le32(d, at)) << 32 } else { 0 };
    let hi16 = |at: usize| if is64 { u64::from(le16(d, at)) << 16 } else { 0 };
    Group {
        block_bitmap: u64::from(le32(d, 0)) | hi32(32),
        inode_bitmap: u64::from(le32(d, 4)) | hi32(36),
        inode_table: u64::from(le32(d, 8)) | hi32(40),
        free_blocks: u64::from(le16(d, 12)) | hi16(44),
        flags: le16(d, 18),
    }
}

/// Reads ext2/3/4's allocation from `vol`.
pub fn probe(vol: &dyn Volume) -> io::Result<Verdict> {
    if vol.len() < SUPERBLOCK_AT + 1024 {
        return Ok(Verdict::NotMine);
    }
    let sb = read_vec(vol, SUPERBLOCK_AT, 1024)?;
    let Some(sup) = Super::parse(&sb) else { return Ok(Verdict::NotMine) };
    if let Some(why) = sup.unsafe_to_skip() {
        return Ok(Verdict::whole(sup.label, why));
    }
    if sup.blocks.saturating_mul(sup.block_size) > vol.len() {
        return Ok(Verdict::whole(sup.label, "the filesystem is larger than its partition"));
    }
    let groups = read_groups(vol, &sup)?;
    let mut used = RangeSet::new();
    // The boot block and the primary superblock, whatever the block size.
    used.add(0, SUPERBLOCK_AT + 1024);
    if let Err(why) = add_group_blocks(vol, &sup, &groups, &mut used) {
        return Ok(Verdict::whole(sup.label, why));
    }
    // Past the filesystem's last block: not the filesystem's to say; read it.
    let fs_end = sup.blocks * sup.block_size;
    used.add(fs_end, vol.len() - fs_end);
    Ok(Verdict::Used { fs: sup.label.into(), ranges: used.finish(vol.len()), notes: vec![] })
}

fn read_groups(vol: &dyn Volume, sup: &Super) -> io::Result<Vec<Group>> {
    let per = sup.descs_per_block();
    let is64 = sup.incompat & INCOMPAT_64BIT != 0;
    let count = sup.groups();
    let mut groups = Vec::with_capacity(count as usize);
    let mut block = vec![];
    let mut loaded = u64::MAX;
    for g in 0..count {
        let at = sup.desc_block(g);
        if at != loaded {
            block = read_vec(vol, at * sup.block_size, sup.block_size as usize)?;
            loaded = at;
        }
        let off = ((g % per) * sup.desc_size) as usize;
        groups.push(parse_group(&block[off..off + sup.desc_size as usize], is64));
    }
    Ok(groups)
}

/// Adds every group's used blocks; an error says why the volume must be read whole instead.
fn add_group_blocks(vol: &dyn Volume, sup: &Super, groups: &[Group], used: &mut RangeSet) -> Result<(), String> {
    let bs = sup.block_size;
    let table_blocks = (sup.inodes_per_group * sup.inode_size).div_ceil(bs);
    for (g, d) in groups.iter().enumerate() {
        let g = g as u64;
        let metadata = [(d.block_bitmap, 1), (d.inode_bitmap, 1), (d.inode_table, table_blocks)];
        if metadata.iter().any(|&(at, n)| at < sup.first_data_block || at.saturating_add(n) > sup.blocks) {
            return Err(format!("group {g}'s descriptor points outside the filesystem"));
        }
        for (at, n) in metadata {
            // Already marked in initialised bitmaps; added for groups that have none.
            used.add(at * bs, n * bs);
        }
        let first = sup.group_first_block(g);
        let count = sup.blocks_in_group(g);
        if d.flags & BG_BLOCK_UNINIT != 0 {
            used.add(first * bs, sup.base_meta_blocks(g).min(count) * bs);
            continue;
        }
        let bitmap = read_vec(vol, d.block_bitmap * bs, bs as usize).map_err(|e| format!("group {g}'s bitmap: {e}"))?;
        let set = count_set(&bitmap, count);
        // The descriptor's free count and the bitmap agree on a cleanly unmounted filesystem;
        // when they do not, something is off and skipping would be a guess.
        if count - set != d.free_blocks {
            return Err(format!(
                "group {g}'s block bitmap shows {} free blocks, its descriptor {}",
                count - set,
                d.free_blocks
            ));
        }
        used.add_bitmap(&bitmap, count, first * bs, bs);
    }
    Ok(())
}

fn count_set(bitmap: &[u8], bits: u64) -> u64 {
    let whole = (bits / 8) as usize;
    let mut n: u64 = bitmap[..whole].iter().map(|b| u64::from(b.count_ones())).sum();
    for i in whole as u64 * 8..bits {
        n += u64::from(bitmap[(i / 8) as usize] >> (i % 8) & 1);
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sparse(compat: u32, ro_compat: u32, backup_bgs: [u32; 2]) -> Super {
        let mut b = vec![0u8; 1024];
        b[56..58].copy_from_slice(&MAGIC.to_le_bytes());
        b[92..96].copy_from_slice(&compat.to_le_bytes());
        b[100..104].copy_from_slice(&ro_compat.to_le_bytes());
        b[588..592].copy_from_slice(&backup_bgs[0].to_le_bytes());
        b[592..596].copy_from_slice(&backup_bgs[1].to_le_bytes());
        Super::parse(&b).expect("the magic is set")
    }

    #[test]
    fn backup_groups_follow_sparse_super() {
        let s = sparse(0, RO_COMPAT_SPARSE_SUPER, [0, 0]);
        let with: Vec<u64> = (0..400).filter(|&g| s.has_super(g)).collect();
        assert_eq!(with, [0, 1, 3, 5, 7, 9, 25, 27, 49, 81, 125, 243, 343]);
        let every = sparse(0, 0, [0, 0]);
        assert!((0..50).all(|g| every.has_super(g)));
        let two = sparse(COMPAT_SPARSE_SUPER2, RO_COMPAT_SPARSE_SUPER, [1, 77]);
        let with: Vec<u64> = (0..400).filter(|&g| two.has_super(g)).collect();
        assert_eq!(with, [0, 1, 77]);
    }

    #[test]
    fn bits_are_counted_up_to_the_group_end() {
        assert_eq!(count_set(&[0xff, 0x01], 9), 9);
        assert_eq!(count_set(&[0xff, 0xff], 10), 10);
        assert_eq!(count_set(&[0x00, 0xfe], 9), 0);
    }

    mod real {
        use super::super::probe;
        use crate::disk::used::testing::{assert_covers, partclone_used, run, total, zeroed_copy};
        use crate::disk::used::{FileVolume, Verdict};

        /// Makes an ext filesystem with `mkfs_args`, writes files with debugfs (no mount
        /// needed), deletes every third, and returns the image and the names kept.
        fn filled(dir: &std::path::Path, mkfs_args: &[&str], mib: u64) -> (std::path::PathBuf, Vec<String>) {
            let image = dir.join("fs.img");
            std::fs::File::create(&image).unwrap().set_len(mib << 20).unwrap();
            let img = image.to_string_lossy().into_owned();
            let mut args = vec!["-q", "-F"];
            args.extend_from_slice(mkfs_args);
            args.push(&img);
            run("mkfs.ext4", &args);
            let mut script = String::from("mkdir d\n");
            let mut kept = vec![];
            for i in 0..24u64 {
                let len = (i * 37 % 11 + 1) * 300_000 + i * 4099;
                let data: Vec<u8> = (0..len).map(|b| (b.wrapping_mul(31) ^ (i * 7 + (b >> 12))) as u8).collect();
                let host = dir.join(format!("f{i}"));
                std::fs::write(&host, data).unwrap();
                script += &format!("write {} d/f{i}\n", host.display());
            }
            for i in (0..24).step_by(3) {
                script += &format!("rm d/f{i}\n");
            }
            kept.extend((0..24).filter(|i| i % 3 != 0).map(|i| format!("f{i}")));
            std::fs::write(dir.join("script"), script).unwrap();
            run("debugfs", &["-w", "-f", &dir.join("script").to_string_lossy(), &img]);
            (image, kept)
        }

        fn check(mkfs_args: &[&str], mib: u64) {
            let dir = tempfile::tempdir().unwrap();
            let (image, kept) = filled(dir.path(), mkfs_args, mib);
            let verdict = probe(&FileVolume::open(&image).unwrap()).unwrap();
            let Verdict::Used { ranges, .. } = verdict else { panic!("{mkfs_args:?}: {verdict:?}") };
            let reference = partclone_used("ext4", &image);
            assert_covers(&ranges, &reference);
            let (ours, theirs) = (total(&ranges), total(&reference));
            // Ours adds only the boot block when partclone leaves it out (1 KiB blocks).
            assert!(ours <= theirs + 2048, "{mkfs_args:?}: ours {ours}, partclone's {theirs}");
            assert!(ours < (mib << 20) / 2, "{mkfs_args:?}: {ours} bytes used of {mib} MiB");
            let copy = zeroed_copy(&image, &ranges);
            let copy_s = copy.to_string_lossy().into_owned();
            run("e2fsck", &["-fn", &copy_s]);
            for name in kept {
                let out = dir.path().join(format!("out-{name}"));
                run("debugfs", &["-R", &format!("dump d/{name} {}", out.display()), &copy_s]);
                let want = std::fs::read(dir.path().join(&name)).unwrap();
                assert!(std::fs::read(&out).unwrap() == want, "{mkfs_args:?}: {name} differs in the copy");
            }
        }

        #[test]
        fn ext4_defaults_flex_bg_64bit_uninit_groups() {
            check(&[], 256);
        }

        #[test]
        fn ext4_one_kib_blocks_and_meta_bg() {
            check(&["-b", "1024", "-O", "meta_bg,^resize_inode"], 96);
        }

        #[test]
        fn ext4_sparse_super2_without_flex_bg() {
            check(&["-O", "sparse_super2,^flex_bg"], 160);
        }

        #[test]
        fn ext2_and_ext3() {
            check(&["-t", "ext2"], 160);
            check(&["-t", "ext3"], 160);
        }

        #[test]
        fn needing_recovery_or_unclean_is_read_whole() {
            let dir = tempfile::tempdir().unwrap();
            let (image, _) = filled(dir.path(), &[], 64);
            let img = image.to_string_lossy().into_owned();
            run("debugfs", &["-w", "-R", "feature needs_recovery", &img]);
            match probe(&FileVolume::open(&image).unwrap()).unwrap() {
                Verdict::Whole { reason, .. } => assert!(reason.contains("recovery"), "{reason}"),
                v => panic!("{v:?}"),
            }
            run("debugfs", &["-w", "-R", "feature -needs_recovery", &img]);
            run("debugfs", &["-w", "-R", "ssv state 0", &img]);
            match probe(&FileVolume::open(&image).unwrap()).unwrap() {
                Verdict::Whole { reason, .. } => assert!(reason.contains("cleanly"), "{reason}"),
                v => panic!("{v:?}"),
            }
        }

        #[test]
        fn garbage_never_panics() {
            let dir = tempfile::tempdir().unwrap();
            let (image, _) = filled(dir.path(), &[], 32);
            let good = std::fs::read(&image).unwrap();
            for seed in 0..64u64 {
                let mut bytes = good.clone();
                // Scribble over the superblock and the first descriptors.
                for k in 0..32u64 {
                    let at = 1024 + (seed * 7919 + k * 104_729) % 8192;
                    bytes[at as usize] ^= (seed + k) as u8 | 1;
                }
                let path = dir.path().join("bad.img");
                std::fs::write(&path, &bytes).unwrap();
                let _ = probe(&FileVolume::open(&path).unwrap());
            }
            let path = dir.path().join("short.img");
            std::fs::write(&path, &good[..5000]).unwrap();
            let _ = probe(&FileVolume::open(&path).unwrap());
        }
    }
}
