//! Which bytes of a partition its filesystem uses (used-blocks mode).
//!
//! Each filesystem module reads its own allocation map, read-only, from a [`Volume`] and says
//! which byte ranges hold anything: data, metadata, journal, boot code. Everything else is
//! zeros in the migrated image. When in doubt a module says [`Verdict::Whole`] with the reason:
//! a copy too large costs time, a copy missing a used block loses data.

use std::io;
use std::ops::Range;

mod exfat;
mod ext;
mod fat;
mod lvm;
mod ntfs;
pub mod plan;
mod swap;
mod xfs;

pub use plan::{plan, PartitionUse, ReadAs, UsedOnly, UsedPlan};

/// A byte range within a volume.
pub type ByteRange = Range<u64>;

/// A readable stretch of a disk: a partition, or a logical volume's extents.
pub trait Volume {
    /// Size in bytes.
    fn len(&self) -> u64;
    /// Fills `buf` from `offset`; an error when any of it lies past [`Volume::len`].
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What one filesystem module made of a volume.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Not this module's filesystem: the next one is asked.
    NotMine,
    /// The filesystem `fs`, using only `ranges` (sorted, disjoint, within the volume; every
    /// metadata structure included). `notes` say anything worth telling (per logical volume,
    /// say).
    Used { fs: String, ranges: Vec<ByteRange>, notes: Vec<String> },
    /// The filesystem `fs` (or `unknown`), to be read whole, and why.
    Whole { fs: String, reason: String },
}

impl Verdict {
    /// The filesystem's name (`""` for `NotMine`).
    pub fn fs(&self) -> &str {
        match self {
            Verdict::NotMine => "",
            Verdict::Used { fs, .. } | Verdict::Whole { fs, .. } => fs,
        }
    }

    pub fn whole(fs: &str, reason: impl Into<String>) -> Self {
        Verdict::Whole { fs: fs.to_string(), reason: reason.into() }
    }
}

/// One filesystem reader: `NotMine` when the volume is not its filesystem; an error when the
/// volume could not be read (it is then read whole).
type Probe = fn(&dyn Volume) -> io::Result<Verdict>;

/// Every filesystem this build reads the allocation of, by name.
const PROBES: &[(&str, Probe)] = &[
    ("ext", ext::probe),
    ("xfs", xfs::probe),
    ("ntfs", ntfs::probe),
    ("vfat", fat::probe),
    ("exfat", exfat::probe),
    ("swap", swap::probe),
    ("LVM2", lvm_probe),
];

/// An LVM2 physical volume: each logical volume's contents are probed like a partition.
fn lvm_probe(vol: &dyn Volume) -> io::Result<Verdict> {
    lvm::probe(vol, &probe)
}

/// Signatures of things that are recognised but never skipped into.
const OPAQUE: &[(&str, u64, &[u8], &str)] =
    &[("LUKS", 0, b"LUKS\xba\xbe", "it is encrypted (LUKS): its free space cannot be told from its data")];

/// What the filesystem on `vol` uses. Every reader is asked, so that a volume two of them claim
/// (a stale signature left by an earlier filesystem) is read whole rather than trusted to one.
pub fn probe(vol: &dyn Volume) -> Verdict {
    let mut found = vec![];
    for (name, probe) in PROBES {
        match probe(vol) {
            Ok(Verdict::NotMine) => {}
            Ok(v) => found.push(v),
            Err(e) => found.push(Verdict::whole(name, format!("its allocation could not be read: {e}"))),
        }
    }
    for (fs, at, magic, why) in OPAQUE {
        let mut buf = vec![0u8; magic.len()];
        if vol.read_at(&mut buf, *at).is_ok() && buf == *magic {
            found.push(Verdict::whole(fs, *why));
        }
    }
    match found.len() {
        0 => Verdict::whole("unknown", "no filesystem whose allocation ferry reads"),
        1 => found.pop().expect("one verdict"),
        _ => {
            let names: Vec<&str> = found.iter().map(Verdict::fs).collect();
            Verdict::whole("ambiguous", format!("it carries the signatures of {}", names.join(" and ")))
        }
    }
}

/// Builds a sorted, merged list of ranges from ranges pushed in any order.
#[derive(Debug, Default, Clone)]
pub struct RangeSet {
    ranges: Vec<ByteRange>,
}

impl RangeSet {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds `start..start+len` (nothing when `len` is 0).
    pub fn add(&mut self, start: u64, len: u64) {
        if len > 0 {
            self.ranges.push(start..start.saturating_add(len));
        }
    }

    /// Adds one range per run of set bits in `bitmap` (bit `i` is byte `i % 8`'s bit `i / 8`,
    /// least significant first, as ext4, NTFS, exFAT and XFS-free bitmaps store them): bit `i`
    /// covers `base + i * unit .. + unit`. Only the first `bits` bits are looked at.
    pub fn add_bitmap(&mut self, bitmap: &[u8], bits: u64, base: u64, unit: u64) {
        let bits = bits.min(bitmap.len() as u64 * 8);
        let mut i = 0u64;
        while i < bits {
            let byte = bitmap[(i / 8) as usize];
            if byte == 0 && i % 8 == 0 && i + 8 <= bits {
                i += 8;
                continue;
            }
            if byte & (1 << (i % 8)) == 0 {
                i += 1;
                continue;
            }
            let start = i;
            while i < bits && bitmap[(i / 8) as usize] & (1 << (i % 8)) != 0 {
                i += 1;
            }
            self.add(base + start * unit, (i - start) * unit);
        }
    }

    /// The ranges sorted and merged (touching ranges become one), clipped to `0..limit`.
    pub fn finish(mut self, limit: u64) -> Vec<ByteRange> {
        self.ranges.sort_by_key(|r| r.start);
        let mut out: Vec<ByteRange> = Vec::with_capacity(self.ranges.len());
        for r in self.ranges {
            let r = r.start.min(limit)..r.end.min(limit);
            if r.is_empty() {
                continue;
            }
            match out.last_mut() {
                Some(last) if r.start <= last.end => last.end = last.end.max(r.end),
                _ => out.push(r),
            }
        }
        out
    }
}

/// A stretch of another volume: a partition of a disk, or a part of a logical volume.
pub struct Slice<'a> {
    pub inner: &'a dyn Volume,
    pub start: u64,
    pub len: u64,
}

impl Volume for Slice<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.inner.read_at(buf, self.start + offset)
    }
}

/// The error for a read that reaches past a volume's end.
pub fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!("{len} bytes at offset {offset} reach past the volume's end ({size} bytes)"),
    )
}

/// Reads `len` bytes at `offset` into a new buffer.
pub fn read_vec(vol: &dyn Volume, offset: u64, len: usize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len];
    vol.read_at(&mut buf, offset)?;
    Ok(buf)
}

/// Little-endian fields out of an on-disk structure.
pub fn le16(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}
pub fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
/// Big-endian fields (XFS).
pub fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}
pub fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
pub fn be64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A volume over a file (tests; ferry's own is over its disk reader).
pub struct FileVolume {
    pub file: std::fs::File,
    pub len: u64,
}

impl FileVolume {
    pub fn open(path: &std::path::Path) -> io::Result<Self> {
        let file = std::fs::File::open(path)?;
        let len = file.metadata()?.len();
        Ok(Self { file, len })
    }
}

impl Volume for FileVolume {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        use std::os::unix::fs::FileExt;
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(past_end(offset, buf.len(), self.len));
        }
        self.file.read_exact_at(buf, offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_runs_become_ranges() {
        let mut s = RangeSet::new();
        // bits 0,1 set; 9..=15 set; 16 set
        s.add_bitmap(&[0b0000_0011, 0b1111_1110, 0b0000_0001], 24, 1000, 10);
        assert_eq!(s.finish(u64::MAX), vec![1000..1020, 1090..1170]);
    }

    #[test]
    fn ranges_merge_and_clip() {
        let mut s = RangeSet::new();
        s.add(50, 10);
        s.add(0, 10);
        s.add(10, 5);
        s.add(55, 100);
        assert_eq!(s.finish(100), vec![0..15, 50..100]);
    }
}

/// What the filesystem readers' tests share: real filesystems made by their own tools, and
/// partclone's map of the same filesystem as the reference.
#[cfg(test)]
pub mod testing {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use super::{ByteRange, Volume};

    /// A volume held in memory: mutated and truncated images without touching the disk.
    pub struct MemVolume(pub Vec<u8>);

    impl Volume for MemVolume {
        fn len(&self) -> u64 {
            self.0.len() as u64
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
            let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len());
            let end = end.ok_or_else(|| super::past_end(offset, buf.len(), self.len()))?;
            buf.copy_from_slice(&self.0[offset as usize..end as usize]);
            Ok(())
        }
    }

    /// Runs `cmd args`, panicking with its output when it fails.
    pub fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd} cannot run: {e}"));
        assert!(
            out.status.success(),
            "{cmd} {args:?}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The ranges `partclone.<fs> -D` (Debian's partclone, the reference) says are used.
    pub fn partclone_used(fs: &str, image: &Path) -> Vec<ByteRange> {
        let (domain, log) = (image.with_extension("domain"), image.with_extension("partclone-log"));
        // partclone will not overwrite a domain log; its own log goes beside the image, not to
        // /var/log.
        let _ = std::fs::remove_file(&domain);
        let (i, d, l) = (image.to_string_lossy(), domain.to_string_lossy(), log.to_string_lossy());
        run(&format!("partclone.{fs}"), &["-q", "-D", "-s", &i, "-o", &d, "-L", &l]);
        let text = std::fs::read_to_string(&domain).expect("partclone wrote its domain log");
        let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).expect("hex in the domain log");
        let mut used = vec![];
        // Lines are "pos size status"; the "current_pos" line has two fields and is skipped.
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() == 3 && f[2] == "+" {
                let (pos, size) = (hex(f[0]), hex(f[1]));
                used.push(pos..pos + size);
            }
        }
        used
    }

    /// Asserts that every byte partclone reads, `ours` reads too.
    pub fn assert_covers(ours: &[ByteRange], reference: &[ByteRange]) {
        for r in reference {
            let i = ours.partition_point(|o| o.end <= r.start);
            assert!(
                ours.get(i).is_some_and(|o| o.start <= r.start && o.end >= r.end),
                "partclone reads {r:?}, which this reader skips (near {:?})",
                ours.get(i)
            );
        }
    }

    pub fn total(ranges: &[ByteRange]) -> u64 {
        ranges.iter().map(|r| r.end - r.start).sum()
    }

    /// A copy of `image` with every byte outside `used` zeroed: what used-blocks mode delivers.
    pub fn zeroed_copy(image: &Path, used: &[ByteRange]) -> PathBuf {
        let copy = image.with_extension("zeroed");
        zeroed_copy_to(image, used, &copy);
        copy
    }

    /// [`zeroed_copy`] to `to`: exactly the bytes of `used` copied, zeros elsewhere.
    pub fn zeroed_copy_to(image: &Path, used: &[ByteRange], to: &Path) {
        use std::os::unix::fs::FileExt;
        let src = std::fs::File::open(image).expect("opening the image");
        let dst = std::fs::File::create(to).expect("creating the copy");
        dst.set_len(src.metadata().unwrap().len()).unwrap();
        let mut buf = vec![0u8; 1 << 20];
        for r in used {
            let mut at = r.start;
            while at < r.end {
                let n = (r.end - at).min(buf.len() as u64) as usize;
                src.read_exact_at(&mut buf[..n], at).expect("reading the image");
                dst.write_all_at(&buf[..n], at).expect("writing the copy");
                at += n as u64;
            }
        }
    }
}
