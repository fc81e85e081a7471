//! exFAT: the clusters the allocation bitmap marks in use.
//!
//! The bitmap is the authority on exFAT, not the FAT: a contiguous file need not have a FAT
//! chain at all. It is found through the root directory's allocation-bitmap entry (0x81).
//! Everything before the cluster heap (main and backup boot regions, the FAT and the alignment
//! gaps around it, as partclone does) is read, and so is everything past the heap. A dirty
//! volume, TexFAT (two FATs, two bitmaps), a bad boot checksum or a layout that does not add up
//! make the volume read whole.

use std::io;

use super::{le16, le32, le64, read_vec, RangeSet, Verdict, Volume};

const FS: &str = "exfat";

/// The main boot region (boot sector, 8 extended boot sectors, OEM parameters, reserved,
/// checksum) and its backup: 12 sectors each.
const BOOT_REGION_SECTORS: u64 = 12;
/// FAT entries above this are bad (0xFFFFFFF7) or end-of-chain (0xFFFFFFFF).
const MAX_CLUSTERS: u64 = 0xFFFF_FFF5;
/// The spec caps a directory at 256 MiB: a root chain longer than that loops.
const MAX_DIR_BYTES: u64 = 256 << 20;
/// Directory and bitmap bytes read at once (a cluster can be 32 MiB).
const CHUNK: u64 = 1 << 20;

const FLAG_ACTIVE_FAT: u16 = 0x1;
const FLAG_DIRTY: u16 = 0x2;
const FLAG_MEDIA_FAILURE: u16 = 0x4;

const ENTRY_END: u8 = 0x00;
const ENTRY_BITMAP: u8 = 0x81;
const ENTRY_UPCASE: u8 = 0x82;

/// The main boot sector's fields, in bytes where they are sizes.
#[derive(Debug)]
struct Boot {
    sector: u64,
    cluster: u64,
    fat_at: u64,
    fat_bytes: u64,
    heap_at: u64,
    clusters: u64,
    root: u64,
    flags: u16,
    fats: u8,
    revision: u16,
}

impl Boot {
    /// Parses the main boot sector: `None` when it is not exFAT's, an error when it is but
    /// does not describe a volume this reader may skip parts of.
    fn parse(b: &[u8], vol_len: u64) -> Option<Result<Self, String>> {
        if b.len() < 512 || &b[3..11] != b"EXFAT   " || b[510..512] != [0x55, 0xAA] {
            return None;
        }
        // exFAT zeroes FAT's BPB (bytes 11..64) so that FAT drivers refuse the volume.
        if b[11..64].iter().any(|&x| x != 0) {
            return Some(Err("the boot sector's must-be-zero bytes are not zero".into()));
        }
        let (sector_shift, cluster_shift) = (u32::from(b[108]), u32::from(b[109]));
        if !(9..=12).contains(&sector_shift) || sector_shift + cluster_shift > 25 {
            return Some(Err(format!("sector shift {sector_shift} / cluster shift {cluster_shift} are out of range")));
        }
        let sector = 1u64 << sector_shift;
        Some(Self::layout(b, sector, sector << cluster_shift, vol_len))
    }

    /// The regions' bounds, checked against each other and the volume.
    fn layout(b: &[u8], sector: u64, cluster: u64, vol_len: u64) -> Result<Self, String> {
        // Volume length is 64 bits of sectors: it can overflow bytes.
        let volume_bytes = le64(b, 72).checked_mul(sector).ok_or("the volume length overflows")?;
        let boot = Self {
            sector,
            cluster,
            fat_at: u64::from(le32(b, 80)) * sector,
            fat_bytes: u64::from(le32(b, 84)) * sector,
            heap_at: u64::from(le32(b, 88)) * sector,
            clusters: u64::from(le32(b, 92)),
            root: u64::from(le32(b, 96)),
            flags: le16(b, 106),
            fats: b[110],
            revision: le16(b, 104),
        };
        if volume_bytes > vol_len {
            return Err(format!(
                "the filesystem ({volume_bytes} bytes) is larger than its partition ({vol_len} bytes)"
            ));
        }
        let sane = boot.fat_at >= 2 * BOOT_REGION_SECTORS * sector
            && boot.fat_at + u64::from(boot.fats) * boot.fat_bytes <= boot.heap_at
            && boot.clusters > 0
            && boot.clusters <= MAX_CLUSTERS
            && boot.heap_end() <= volume_bytes
            && boot.fat_bytes >= (boot.clusters + 2) * 4
            && (2..boot.clusters + 2).contains(&boot.root);
        if !sane {
            return Err("the boot sector's regions do not fit together or in the volume".into());
        }
        Ok(boot)
    }

    fn heap_end(&self) -> u64 {
        self.heap_at + self.clusters * self.cluster
    }

    fn cluster_at(&self, c: u64) -> u64 {
        self.heap_at + (c - 2) * self.cluster
    }

    fn is_cluster(&self, c: u64) -> bool {
        (2..self.clusters + 2).contains(&c)
    }

    /// Why the bitmap cannot be trusted to say what is free, if it cannot.
    fn unsafe_to_skip(&self) -> Option<String> {
        if self.revision >> 8 != 1 {
            return Some(format!("exFAT revision {}.{} is unknown", self.revision >> 8, self.revision & 0xFF));
        }
        if self.flags & FLAG_DIRTY != 0 {
            return Some("the volume is marked dirty (not cleanly unmounted)".into());
        }
        match self.fats {
            1 if self.flags & FLAG_ACTIVE_FAT == 0 => None,
            1 => Some("the active FAT is the second, but there is only one".into()),
            2 => Some("it has two FATs and bitmaps (TexFAT), which this reader does not follow".into()),
            n => Some(format!("{n} FATs")),
        }
    }
}

/// Reads exFAT's allocation from `vol`.
pub fn probe(vol: &dyn Volume) -> io::Result<Verdict> {
    if vol.len() < 512 {
        return Ok(Verdict::NotMine);
    }
    let first = read_vec(vol, 0, 512)?;
    let boot = match Boot::parse(&first, vol.len()) {
        None => return Ok(Verdict::NotMine),
        Some(Err(why)) => return Ok(Verdict::whole(FS, why)),
        Some(Ok(boot)) => boot,
    };
    if let Some(why) = boot.unsafe_to_skip() {
        return Ok(Verdict::whole(FS, why));
    }
    if !checksum_ok(vol, &boot)? {
        return Ok(Verdict::whole(FS, "the main boot region's checksum does not match"));
    }
    let mut used = RangeSet::new();
    // Boot regions, FAT, and the alignment gaps between them: small, and partclone reads them.
    used.add(0, boot.heap_at);
    let meta = match read_root(vol, &boot, &mut used)? {
        Ok(meta) => meta,
        Err(why) => return Ok(Verdict::whole(FS, why)),
    };
    if let Err(why) = add_bitmap(vol, &boot, meta.bitmap, &mut used)? {
        return Ok(Verdict::whole(FS, why));
    }
    // The up-case table is marked in the bitmap too; added in case a writer forgot it.
    if let Some((at, len)) = meta.upcase {
        used.add(at, len);
    }
    // Past the heap: no cluster's, so not the bitmap's to say; read it.
    let end = boot.heap_end();
    used.add(end, vol.len() - end);
    let mut notes = vec![format!("{} clusters of {} bytes", boot.clusters, boot.cluster)];
    if boot.flags & FLAG_MEDIA_FAILURE != 0 {
        notes.push("the volume records media failures (bad clusters)".into());
    }
    Ok(Verdict::Used { fs: FS.into(), ranges: used.finish(vol.len()), notes })
}

/// Whether sector 11 holds the checksum of sectors 0..11, which skips VolumeFlags and
/// PercentInUse (bytes 106, 107, 112): a torn or foreign boot region fails it.
fn checksum_ok(vol: &dyn Volume, boot: &Boot) -> io::Result<bool> {
    let region = read_vec(vol, 0, (BOOT_REGION_SECTORS * boot.sector) as usize)?;
    let (summed, stored) = region.split_at((11 * boot.sector) as usize);
    let mut sum = 0u32;
    for (i, &byte) in summed.iter().enumerate() {
        if !matches!(i, 106 | 107 | 112) {
            sum = sum.rotate_right(1).wrapping_add(u32::from(byte));
        }
    }
    Ok(stored.chunks_exact(4).all(|c| le32(c, 0) == sum))
}

/// What the root directory says about the volume's own metadata.
struct Meta {
    /// The allocation bitmap's first cluster and length in bytes.
    bitmap: (u64, u64),
    /// The up-case table's byte range, when it lies within the heap.
    upcase: Option<(u64, u64)>,
}

/// Walks the root directory's FAT chain, adding its clusters, and finds the bitmap entry.
/// `Ok(Err(why))` says why the volume must be read whole.
fn read_root(vol: &dyn Volume, boot: &Boot, used: &mut RangeSet) -> io::Result<Result<Meta, String>> {
    let max_steps = boot.clusters.min(MAX_DIR_BYTES / boot.cluster + 1);
    let (mut bitmap, mut upcase) = (None, None);
    let mut c = boot.root;
    for _ in 0..max_steps {
        if !boot.is_cluster(c) {
            return Ok(Err(format!("the root directory's chain leaves the cluster heap (cluster {c:#x})")));
        }
        used.add(boot.cluster_at(c), boot.cluster);
        let mut off = 0;
        while off < boot.cluster {
            let len = CHUNK.min(boot.cluster - off);
            let dir = read_vec(vol, boot.cluster_at(c) + off, len as usize)?;
            for e in dir.chunks_exact(32) {
                match e[0] {
                    ENTRY_END => return Ok(finish_root(boot, bitmap, upcase)),
                    // Bit 0 of the flags: the second bitmap, which only TexFAT has.
                    ENTRY_BITMAP if e[1] & 1 == 0 && bitmap.is_none() => {
                        bitmap = Some((u64::from(le32(e, 20)), le64(e, 24)));
                    }
                    ENTRY_UPCASE if upcase.is_none() => upcase = Some((u64::from(le32(e, 20)), le64(e, 24))),
                    _ => {}
                }
            }
            off += len;
        }
        let next = u64::from(read_vec(vol, boot.fat_at + 4 * c, 4).map(|b| le32(&b, 0))?);
        if next == 0xFFFF_FFFF {
            return Ok(finish_root(boot, bitmap, upcase));
        }
        c = next;
    }
    Ok(Err("the root directory's chain is longer than any directory can be (a loop?)".into()))
}

fn finish_root(boot: &Boot, bitmap: Option<(u64, u64)>, upcase: Option<(u64, u64)>) -> Result<Meta, String> {
    let bitmap = bitmap.ok_or("the root directory has no allocation bitmap entry")?;
    // Contiguous by its length, as Linux reads it; a table that does not fit is just ignored.
    let upcase = upcase
        .filter(|&(c, len)| boot.is_cluster(c) && len <= boot.heap_end() - boot.cluster_at(c))
        .map(|(c, len)| (boot.cluster_at(c), len));
    Ok(Meta { bitmap, upcase })
}

/// Adds the clusters the bitmap marks, and the bitmap's own. Linux reads the bitmap as one
/// contiguous run, the spec through its FAT chain: the chain must agree (or be absent).
fn add_bitmap(
    vol: &dyn Volume,
    boot: &Boot,
    (first, len): (u64, u64),
    used: &mut RangeSet,
) -> io::Result<Result<(), String>> {
    let need = boot.clusters.div_ceil(8);
    if len < need {
        return Ok(Err(format!("the allocation bitmap ({len} bytes) is shorter than {} clusters need", boot.clusters)));
    }
    // The spec sizes it exactly; a length spanning more clusters is not one this reader knows.
    let count = need.div_ceil(boot.cluster);
    if len.div_ceil(boot.cluster) != count {
        return Ok(Err(format!("the allocation bitmap's length ({len} bytes) does not match the cluster count")));
    }
    if !boot.is_cluster(first) || first + count > boot.clusters + 2 {
        return Ok(Err("the allocation bitmap lies outside the cluster heap".into()));
    }
    let chain = read_vec(vol, boot.fat_at + 4 * first, (4 * count) as usize)?;
    for k in 0..count {
        let next = le32(&chain, (4 * k) as usize);
        let expected = if k + 1 == count { 0xFFFF_FFFF } else { (first + k + 1) as u32 };
        if next != 0 && next != expected {
            return Ok(Err("the allocation bitmap is fragmented".into()));
        }
    }
    let at = boot.cluster_at(first);
    used.add(at, count * boot.cluster);
    let mut done = 0;
    while done < need {
        let len = CHUNK.min(need - done);
        let bits = read_vec(vol, at + done, len as usize)?;
        let from = done * 8;
        used.add_bitmap(&bits, boot.clusters - from, boot.cluster_at(2 + from), boot.cluster);
        done += len;
    }
    Ok(Ok(()))
}

#[cfg(test)]
mod tests {
    //! Real volumes made by exfatprogs, written through exfat-fuse on a loop device (this
    //! kernel may lack an exfat driver), checked against partclone.exfat.
    use super::*;
    use crate::disk::used::FileVolume;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::os::unix::fs::FileExt;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Output};

    fn ok(cmd: &str, args: &[&str]) -> Output {
        let out = Command::new(cmd)
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{cmd}: {e} (needs exfatprogs, exfat-fuse, partclone, e2fsprogs, ntfs-3g)"));
        let (o, e) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        assert!(out.status.success(), "{cmd} {args:?}: {o}{e}");
        out
    }

    fn s(p: &Path) -> &str {
        p.to_str().expect("utf-8 temp path")
    }

    /// An image attached to a loop device, detached on drop, also when a test fails.
    struct Loop(String);

    impl Loop {
        fn new(img: &Path, sector: &str) -> Self {
            let out = ok("losetup", &["--find", "--show", "--sector-size", sector, s(img)]);
            Self(String::from_utf8_lossy(&out.stdout).trim().to_string())
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.0).status();
        }
    }

    /// An image mounted through a loop device; unmounted (then detached) on drop.
    struct Mounted {
        dir: PathBuf,
        _dev: Loop,
    }

    impl Mounted {
        fn new(img: &Path, dir: &Path, read_only: bool) -> Self {
            std::fs::create_dir_all(dir).unwrap();
            let dev = Loop::new(img, "512");
            // On a block device exfat-fuse mounts as fuseblk: umount waits for it to finish.
            ok("mount.exfat-fuse", &["-o", if read_only { "ro" } else { "rw" }, &dev.0, s(dir)]);
            Self { dir: dir.to_path_buf(), _dev: dev }
        }
    }

    impl Drop for Mounted {
        fn drop(&mut self) {
            let done = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
            if !done {
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
        }
    }

    /// Deterministic bytes (xorshift64): no rand dependency, and failures reproduce.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
        }
    }

    use crate::disk::used::testing::MemVolume as Mem;
    use crate::disk::used::testing::{partclone_used, total, zeroed_copy_to};

    fn probe_file(img: &Path) -> Verdict {
        probe(&FileVolume::open(img).expect("open image")).expect("probe reads")
    }

    fn mkfs(img: &Path, len: u64, extra: &[&str]) {
        std::fs::File::create(img).unwrap().set_len(len).unwrap();
        let mut args = extra.to_vec();
        args.push(s(img));
        ok("mkfs.exfat", &args);
    }

    /// Writes big and small files in directories, deletes some, then writes a file that
    /// lands in the holes.
    fn fill(root: &Path, rng: &mut Rng) {
        let dirs = ["a", "a/b", "c", "d/e/f"];
        for d in dirs {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        for (i, mib) in [3usize, 7, 12].into_iter().enumerate() {
            std::fs::write(root.join(format!("big{i}.bin")), rng.bytes(mib << 20)).unwrap();
        }
        for i in 0..300 {
            let len = (rng.next() % 50_000) as usize;
            std::fs::write(root.join(dirs[i % 4]).join(format!("f{i}.dat")), rng.bytes(len)).unwrap();
        }
        for i in (0..300).step_by(3) {
            std::fs::remove_file(root.join(dirs[i % 4]).join(format!("f{i}.dat"))).unwrap();
        }
        std::fs::remove_file(root.join("big1.bin")).unwrap();
        std::fs::write(root.join("c/late.bin"), rng.bytes(9 << 20)).unwrap();
    }

    /// SHA-256 of every file under `root`, by path.
    fn hashes(root: &Path) -> BTreeMap<String, String> {
        let mut map = BTreeMap::new();
        let mut todo = vec![root.to_path_buf()];
        while let Some(d) = todo.pop() {
            for e in std::fs::read_dir(d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    todo.push(p);
                } else {
                    let key = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                    let digest = Sha256::digest(std::fs::read(&p).unwrap());
                    map.insert(key, digest.iter().map(|b| format!("{b:02x}")).collect());
                }
            }
        }
        map
    }

    fn patch(img: &Path, at: u64, f: impl FnOnce(&mut u8)) {
        let file = std::fs::OpenOptions::new().read(true).write(true).open(img).unwrap();
        let mut b = [0u8];
        file.read_exact_at(&mut b, at).unwrap();
        f(&mut b[0]);
        file.write_all_at(&b, at).unwrap();
    }

    /// Set bits in the allocation bitmap, read independently of `probe`'s range building.
    fn bitmap_count(img: &Path) -> (u64, Boot) {
        let vol = FileVolume::open(img).unwrap();
        let boot = Boot::parse(&read_vec(&vol, 0, 512).unwrap(), vol.len()).unwrap().unwrap();
        let meta = read_root(&vol, &boot, &mut RangeSet::new()).unwrap().unwrap();
        let bits = read_vec(&vol, boot.cluster_at(meta.bitmap.0), boot.clusters.div_ceil(8) as usize).unwrap();
        let set = (0..boot.clusters).filter(|&i| bits[(i / 8) as usize] >> (i % 8) & 1 == 1).count();
        (set as u64, boot)
    }

    #[test]
    fn real_volume_matches_partclone_copies_and_says_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("exfat.img");
        mkfs(&img, 128 << 20, &["-L", "DATA"]);
        let want = {
            let m = Mounted::new(&img, &dir.path().join("mnt"), false);
            fill(&m.dir, &mut Rng(0x2545_F491_4F6C_DD1D));
            hashes(&m.dir)
        };
        assert!(want.len() > 150, "{} files", want.len());
        ok("fsck.exfat", &["-n", s(&img)]);
        let ours = match probe_file(&img) {
            Verdict::Used { fs, ranges, .. } if fs == FS => ranges,
            other => panic!("{other:?}"),
        };
        let (set, boot) = bitmap_count(&img);
        let len = std::fs::metadata(&img).unwrap().len();
        let expected = boot.heap_at + set * boot.cluster + len - boot.heap_end();
        assert_eq!(total(&ours), expected, "ours against the bitmap's count");
        let theirs = partclone_used("exfat", &img);
        for r in &theirs {
            assert!(ours.iter().any(|o| o.start <= r.start && r.end <= o.end), "partclone's {r:?} is not in ours");
        }
        let (o, t) = (total(&ours), total(&theirs));
        eprintln!("exfat: partclone {t} bytes used, ours {o} (+{}), bitmap-derived {expected}", o - t);
        assert!(o <= t + 64 * 1024, "ours {o} is too far above partclone's {t}");

        let copy = dir.path().join("copy.img");
        zeroed_copy_to(&img, &ours, &copy);
        ok("fsck.exfat", &["-n", s(&copy)]);
        let got = {
            let m = Mounted::new(&copy, &dir.path().join("back"), true);
            hashes(&m.dir)
        };
        assert_eq!(got, want);

        // VolumeFlags is left out of the boot checksum: setting VolumeDirty alone is valid.
        let dirty = dir.path().join("dirty.img");
        std::fs::copy(&img, &dirty).unwrap();
        patch(&dirty, 106, |b| *b |= FLAG_DIRTY as u8);
        let v = probe_file(&dirty);
        assert!(matches!(&v, Verdict::Whole { reason, .. } if reason.contains("dirty")), "{v:?}");
        std::fs::copy(&img, &dirty).unwrap();
        patch(&dirty, 110, |b| *b = 2);
        let v = probe_file(&dirty);
        assert!(matches!(&v, Verdict::Whole { reason, .. } if reason.contains("TexFAT")), "{v:?}");
        std::fs::copy(&img, &dirty).unwrap();
        patch(&dirty, 512 + 100, |b| *b ^= 0x55);
        let v = probe_file(&dirty);
        assert!(matches!(&v, Verdict::Whole { reason, .. } if reason.contains("checksum")), "{v:?}");
    }

    #[test]
    fn large_clusters_and_4k_sectors() {
        // 4 KiB sectors (a 4Kn disk), 128 KiB clusters, the bitmap packed next to the FAT.
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("big.img");
        std::fs::File::create(&img).unwrap().set_len(256 << 20).unwrap();
        {
            let dev = Loop::new(&img, "4096");
            ok("mkfs.exfat", &["-c", "128K", "--pack-bitmap", &dev.0]);
        }
        {
            let m = Mounted::new(&img, &dir.path().join("mnt"), false);
            std::fs::write(m.dir.join("x.bin"), Rng(3).bytes(5 << 20)).unwrap();
        }
        let ours = match probe_file(&img) {
            Verdict::Used { ranges, .. } => ranges,
            other => panic!("{other:?}"),
        };
        let (set, boot) = bitmap_count(&img);
        assert_eq!((boot.sector, boot.cluster), (4096, 128 << 10));
        assert_eq!(total(&ours), boot.heap_at + set * boot.cluster + (256 << 20) - boot.heap_end());
        let copy = dir.path().join("copy.img");
        zeroed_copy_to(&img, &ours, &copy);
        ok("fsck.exfat", &["-n", s(&copy)]);
    }

    #[test]
    fn other_filesystems_are_not_mine() {
        let dir = tempfile::tempdir().unwrap();
        let ext4 = dir.path().join("ext4.img");
        ok("mkfs.ext4", &["-q", "-F", s(&ext4), "8M"]);
        let ntfs = dir.path().join("ntfs.img");
        std::fs::File::create(&ntfs).unwrap().set_len(16 << 20).unwrap();
        ok("mkntfs", &["-F", "-q", "-Q", s(&ntfs)]);
        let vfat = dir.path().join("vfat.img");
        ok("mkfs.vfat", &["-C", s(&vfat), "16384"]);
        for img in [ext4, ntfs, vfat] {
            assert_eq!(probe_file(&img), Verdict::NotMine, "{img:?}");
        }
    }

    #[test]
    fn garbage_and_truncation_do_not_panic() {
        for len in [0, 1, 511, 512, 4096, 1 << 20] {
            assert_eq!(probe(&Mem(vec![0; len])).unwrap(), Verdict::NotMine);
        }
        let mut rng = Rng(11);
        for _ in 0..200 {
            let _ = probe(&Mem(rng.bytes(4096)));
        }
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("t.img");
        mkfs(&img, 8 << 20, &[]);
        let full = std::fs::read(&img).unwrap();
        for len in [512, 4096, 12 * 512, 100_000, full.len() / 2, full.len() - 1] {
            let v = probe(&Mem(full[..len].to_vec())).unwrap();
            assert!(matches!(&v, Verdict::Whole { reason, .. } if reason.contains("larger")), "{len}: {v:?}");
        }
        mutate(full, &mut rng);
    }

    /// Writes the boot checksum back, so that mutations reach past the checksum test.
    fn reseal(image: &mut [u8]) {
        let mut sum = 0u32;
        for (i, &byte) in image[..11 * 512].iter().enumerate() {
            if !matches!(i, 106 | 107 | 112) {
                sum = sum.rotate_right(1).wrapping_add(u32::from(byte));
            }
        }
        for at in (11 * 512..12 * 512).step_by(4) {
            image[at..at + 4].copy_from_slice(&sum.to_le_bytes());
        }
    }

    /// Random bytes over the boot sector's fields, the FAT and the root directory; any verdict
    /// but no panic, and ranges within the volume.
    fn mutate(mut image: Vec<u8>, rng: &mut Rng) {
        let boot = Boot::parse(&image[..512], image.len() as u64).unwrap().unwrap();
        let (fat, root) = (boot.fat_at as usize, boot.cluster_at(boot.root) as usize);
        let pristine = image.clone();
        for round in 0..1500 {
            for _ in 0..1 + round % 3 {
                let at = match rng.next() % 4 {
                    0 => 64 + (rng.next() % 48) as usize,
                    1 => fat + (rng.next() % 64) as usize,
                    _ => root + (rng.next() % 256) as usize,
                };
                image[at] = rng.next() as u8;
            }
            reseal(&mut image);
            let mem = Mem(image);
            if let Ok(Verdict::Used { ranges, .. }) = probe(&mem) {
                assert!(ranges.iter().all(|r| r.start < r.end && r.end <= mem.len()));
            }
            image = mem.0;
            if round % 8 == 7 {
                image.copy_from_slice(&pristine);
            }
        }
    }
}
