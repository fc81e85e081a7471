//! XFS: the bytes in use are everything except the free extents that each allocation group's
//! free-space-by-block B+tree (the "bnobt") records.
//!
//! The btrees on disk are trusted only when nothing else may hold newer allocations, so the
//! volume is read whole when: the log needs recovery (allocations made since the last
//! checkpoint are only in the log), the log is external (it cannot be checked from here),
//! there is a realtime subvolume (its space is tracked by a bitmap this reader does not read),
//! a feature bit is unknown, or any structure fails its magic, checksum or bounds checks.

use super::{be16, be32, be64, read_vec, ByteRange, RangeSet, Verdict, Volume};
use std::collections::HashSet;
use std::io;

const FS: &str = "xfs";

/// v5 incompatible features known to leave the free-space btrees as read here: file types in
/// directories, sparse inode chunks, metadata UUID, big timestamps, 64-bit extent counters,
/// exchange-range, parent pointers. Anything else (metadata directories, zoned realtime,
/// future bits) is read whole.
const KNOWN_INCOMPAT: u32 = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;
/// The superblock says the filesystem must be repaired before use.
const INCOMPAT_NEEDSREPAIR: u32 = 0x10;
/// Read-only-compatible features: free inode btree, reverse mapping, reflink (shared blocks are
/// still allocated in the bnobt), inode btree counters.
const KNOWN_RO_COMPAT: u32 = 0x01 | 0x02 | 0x04 | 0x08;
/// Log-incompatible features (extended attribute and exchange-mapping log items): they only
/// matter to log recovery, which a clean log does not need.
const KNOWN_LOG_INCOMPAT: u32 = 0x01 | 0x02;

/// The deepest free-space btree XFS builds (its own limit is far below this for 2^31 blocks).
const MAX_LEVELS: u32 = 10;
/// A btree sibling pointer to no block.
const NULL_AGBLOCK: u32 = u32::MAX;

/// Log basic block: every 512 bytes of the log start with its cycle number.
const BB: u64 = 512;
const LOG_MAGIC: u32 = 0xFEED_BABE;
/// An operation header flag: this transaction is the unmount record.
const XLOG_UNMOUNT_TRANS: u8 = 0x20;
/// The payload of an unmount record, in the writer's byte order (so both are accepted).
const XLOG_UNMOUNT_TYPE: u16 = 0x556e;
/// Bytes of log record header that one header block's cycle table covers.
const XLOG_HEADER_CYCLE_SIZE: u64 = 32 * 1024;
/// How many basic blocks either side of the log head must carry the expected cycle: the
/// kernel may have up to 8 in-core logs of up to 256 KiB in flight, and a write it never
/// finished leaves blocks of the wrong cycle within that distance of the head.
const LOG_WINDOW_BBS: u64 = 8 * 256 * 1024 / BB;
/// How far back from the head to look for the last record's header: its header blocks and
/// at most 256 KiB of data (more for a stripe-aligned log, which is then read whole).
const LOG_MAX_RECORD_BBS: u64 = 1024;

/// Why probing stopped early: a read failed, or the volume must be read whole.
enum Stop {
    Io(io::Error),
    Whole(String),
}

impl From<io::Error> for Stop {
    fn from(e: io::Error) -> Self {
        Stop::Io(e)
    }
}

type R<T> = Result<T, Stop>;
/// Free extents of one AG: (first block, block count), in AG blocks.
type Extents = Vec<(u64, u64)>;

fn whole<T>(reason: impl Into<String>) -> R<T> {
    Err(Stop::Whole(reason.into()))
}

/// What the superblock says, checked for consistency so later arithmetic cannot overflow.
struct Sb {
    /// Block size in bytes.
    bs: u64,
    /// Sector size in bytes: the AG headers are one sector each.
    sect: u64,
    dblocks: u64,
    agblocks: u64,
    agcount: u64,
    v5: bool,
    uuid: [u8; 16],
    /// The internal log: first block (linear, not the AG-encoded form) and length in blocks.
    log_start: u64,
    log_blocks: u64,
}

impl Sb {
    /// Blocks in allocation group `agno`: the last one is cut short by `dblocks`.
    fn ag_len(&self, agno: u64) -> u64 {
        (self.dblocks - agno * self.agblocks).min(self.agblocks)
    }
}

/// Says whether `vol` holds XFS and, if so, which byte ranges it uses.
pub fn probe(vol: &dyn Volume) -> io::Result<Verdict> {
    if vol.len() < 4 || read_vec(vol, 0, 4)? != b"XFSB" {
        return Ok(Verdict::NotMine);
    }
    match used(vol) {
        Ok((ranges, notes)) => Ok(Verdict::Used { fs: FS.into(), ranges, notes }),
        Err(Stop::Whole(reason)) => Ok(Verdict::whole(FS, reason)),
        Err(Stop::Io(e)) => Err(e),
    }
}

/// The used ranges: all of each AG but its free extents, plus anything past the filesystem's
/// end (kept, as nothing says it is unused).
fn used(vol: &dyn Volume) -> R<(Vec<ByteRange>, Vec<String>)> {
    let sb = superblock(vol)?;
    check_log(vol, &sb)?;
    let mut set = RangeSet::new();
    let mut free_blocks = 0u64;
    for agno in 0..sb.agcount {
        let free = ag_free(vol, &sb, agno)?;
        let base = agno * sb.agblocks;
        let mut at = 0u64;
        for &(start, count) in &free {
            set.add((base + at) * sb.bs, (start - at) * sb.bs);
            at = start + count;
            free_blocks += count;
        }
        set.add((base + at) * sb.bs, (sb.ag_len(agno) - at) * sb.bs);
    }
    let fs_end = sb.dblocks * sb.bs;
    set.add(fs_end, vol.len() - fs_end);
    let notes = vec![format!(
        "xfs v{}, {} allocation groups, log clean, {} of {} bytes free",
        if sb.v5 { 5 } else { 4 },
        sb.agcount,
        free_blocks * sb.bs,
        fs_end
    )];
    Ok((set.finish(vol.len()), notes))
}

/// Reads and checks the primary superblock; refuses what this reader cannot vouch for.
fn superblock(vol: &dyn Volume) -> R<Sb> {
    if vol.len() < 512 {
        return whole("superblock truncated");
    }
    let b = read_vec(vol, 0, 512)?;
    let version = be16(&b, 100) & 0xf;
    if version != 4 && version != 5 {
        return whole(format!("unknown superblock version {version}"));
    }
    let (bs, sect) = (u64::from(be32(&b, 4)), u64::from(be16(&b, 102)));
    // The logs must match the sizes, which must be powers of two in XFS's limits.
    let pow2_in = |v: u64, log: u8, lo: u64, hi: u64| {
        v.is_power_of_two() && (lo..=hi).contains(&v) && v.trailing_zeros() == u32::from(log)
    };
    if !pow2_in(bs, b[120], 512, 65536) || !pow2_in(sect, b[121], 512, 32768) || sect > bs {
        return whole(format!("bad block size {bs} or sector size {sect}"));
    }
    let (agblocks, agcount) = (u64::from(be32(&b, 84)), u64::from(be32(&b, 88)));
    let (dblocks, agblklog) = (be64(&b, 8), u32::from(b[124]));
    // agblklog is the AG size rounded up to a power of two: it encodes block numbers.
    let ag_ok = (64..1 << 31).contains(&agblocks)
        && agblklog == 64 - (agblocks - 1).leading_zeros()
        && agcount >= 1
        && dblocks > (agcount - 1) * agblocks
        && dblocks <= agcount * agblocks;
    if !ag_ok {
        return whole(format!("bad geometry: {agcount} AGs of {agblocks}, {dblocks} blocks"));
    }
    if dblocks.checked_mul(bs).is_none_or(|end| end > vol.len()) {
        return whole(format!("filesystem ({dblocks} blocks) larger than its volume"));
    }
    if b[126] != 0 {
        return whole("mkfs did not finish (sb_inprogress set)");
    }
    if be64(&b, 16) != 0 {
        return whole("realtime subvolume present (its allocations are not read)");
    }
    let v5 = version == 5;
    if v5 {
        check_v5(vol, &b, sect)?;
    }
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&b[32..48]);
    let (log_start, log_blocks) = log_extent(&b, agblocks, agcount, dblocks, agblklog)?;
    Ok(Sb { bs, sect, dblocks, agblocks, agcount, v5, uuid, log_start, log_blocks })
}

/// v5 superblock: checksum (over the whole sector) and feature bits.
fn check_v5(vol: &dyn Volume, b: &[u8], sect: u64) -> R<()> {
    let sector = read_vec(vol, 0, sect as usize)?;
    if !crc_ok(&sector, 224) {
        return whole("superblock checksum mismatch");
    }
    let incompat = be32(b, 216);
    if incompat & INCOMPAT_NEEDSREPAIR != 0 {
        return whole("superblock says the filesystem needs repair");
    }
    if incompat & !KNOWN_INCOMPAT != 0 {
        return whole(format!("unknown incompat features {:#x}", incompat & !KNOWN_INCOMPAT));
    }
    let ro = be32(b, 212);
    if ro & !KNOWN_RO_COMPAT != 0 {
        return whole(format!("unknown ro-compat features {:#x}", ro & !KNOWN_RO_COMPAT));
    }
    let log = be32(b, 220);
    if log & !KNOWN_LOG_INCOMPAT != 0 {
        return whole(format!("unknown log-incompat features {:#x}", log & !KNOWN_LOG_INCOMPAT));
    }
    Ok(())
}

/// The internal log's linear first block and length. sb_logstart is a filesystem block number
/// in XFS's (AG << agblklog | block in AG) form; 0 means an external log.
fn log_extent(b: &[u8], agblocks: u64, agcount: u64, dblocks: u64, agblklog: u32) -> R<(u64, u64)> {
    let (start, len) = (be64(b, 48), u64::from(be32(b, 96)));
    if start == 0 {
        return whole("external log (cannot check that it is clean)");
    }
    let (agno, agbno) = (start >> agblklog, start & ((1 << agblklog) - 1));
    let linear = agno.saturating_mul(agblocks).saturating_add(agbno);
    // The log lies inside one AG and inside the filesystem.
    if agno >= agcount || len == 0 || agbno + len > agblocks || linear + len > dblocks {
        return whole(format!("internal log out of bounds (start {start}, {len} blocks)"));
    }
    Ok((linear, len))
}

/// The internal log, read in 512-byte basic blocks.
struct Log<'a> {
    vol: &'a dyn Volume,
    start: u64,
    bbs: u64,
}

impl Log<'_> {
    fn read(&self, bb: u64, n: u64) -> io::Result<Vec<u8>> {
        read_vec(self.vol, self.start + bb * BB, (n * BB) as usize)
    }

    /// The cycle a basic block was written in: a record header keeps its magic number
    /// first and its cycle second; every other block starts with the cycle.
    fn cycle_in(buf: &[u8]) -> u32 {
        if be32(buf, 0) == LOG_MAGIC {
            be32(buf, 4)
        } else {
            be32(buf, 0)
        }
    }

    fn cycle(&self, bb: u64) -> io::Result<u32> {
        Ok(Self::cycle_in(&self.read(bb, 1)?))
    }

    /// Whether all blocks `from..to` (no wrapping) are of `cycle`.
    fn all_of(&self, from: u64, to: u64, cycle: u32) -> io::Result<bool> {
        let mut bb = from;
        while bb < to {
            let n = (to - bb).min(256);
            let buf = self.read(bb, n)?;
            if buf.chunks(BB as usize).any(|c| Self::cycle_in(c) != cycle) {
                return Ok(false);
            }
            bb += n;
        }
        Ok(true)
    }
}

/// Refuses a log that needs recovery. Finds the head as the kernel does (where the cycle
/// number drops), checks no unfinished writes lie near it, and requires the record that
/// ends exactly at the head to be an unmount record.
fn check_log(vol: &dyn Volume, sb: &Sb) -> R<()> {
    let log = Log { vol, start: sb.log_start * sb.bs, bbs: sb.log_blocks * sb.bs / BB };
    let n = log.bbs;
    let (first, last) = (log.cycle(0)?, log.cycle(n - 1)?);
    let head = if first == last {
        n // the last pass ended exactly at the log's end
    } else if first == last.wrapping_add(1) {
        // Blocks 0..head are of cycle `first`, head..n of `last`: binary search the change.
        let (mut lo, mut hi) = (0, n - 1);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if log.cycle(mid)? == last {
                hi = mid;
            } else {
                lo = mid;
            }
        }
        hi
    } else {
        return whole(format!("log cycles {first} and {last} at its ends do not fit"));
    };
    let before = log.all_of(head.saturating_sub(LOG_WINDOW_BBS), head, first)?;
    let after = log.all_of(head, n.min(head + LOG_WINDOW_BBS), last)?;
    if !before || !after {
        return whole("log has unfinished writes near its head: it needs recovery");
    }
    last_record_unmounts(&log, head % n, first, last, &sb.uuid)
}

/// Finds the header of the record ending at `head` and checks it is an unmount record.
fn last_record_unmounts(log: &Log, head: u64, first: u32, last: u32, uuid: &[u8]) -> R<()> {
    let n = log.bbs;
    for back in 1..=LOG_MAX_RECORD_BBS.min(n) {
        let pos = (head + n - back) % n;
        let h = log.read(pos, 1)?;
        if be32(&h, 0) != LOG_MAGIC {
            continue;
        }
        // Blocks before the head were written in cycle `first`; a header found past the
        // head is from the previous pass (a record wrapping the log's end).
        let cycle = if pos < head || head == 0 { first } else { last };
        let (version, len, size) = (be32(&h, 8), u64::from(be32(&h, 12)), be32(&h, 320));
        let hblks = if version == 2 && u64::from(size) > XLOG_HEADER_CYCLE_SIZE {
            u64::from(size).div_ceil(XLOG_HEADER_CYCLE_SIZE)
        } else {
            1
        };
        let ok = be32(&h, 4) == cycle
            && be64(&h, 16) == (u64::from(cycle) << 32 | pos)
            && (version == 1 || version == 2)
            && (h[304..320] == *uuid || h[304..320] == [0; 16])
            && (hblks + len.div_ceil(BB)) == back;
        if !ok {
            return whole("log head is not right after a valid record header: log needs recovery");
        }
        let op = log.read((pos + hblks) % n, 1)?;
        let magic = be16(&op, 12);
        let unmount_magic = magic == XLOG_UNMOUNT_TYPE || magic == XLOG_UNMOUNT_TYPE.swap_bytes();
        if op[9] & XLOG_UNMOUNT_TRANS == 0 || !unmount_magic {
            return whole("last log record is not an unmount record: log needs recovery");
        }
        return Ok(());
    }
    whole("no log record header found before the log head")
}

/// The free extents of allocation group `agno` as (first block, count) in AG blocks, sorted,
/// disjoint, clear of the AG headers, the log and the btree's own blocks, and summing to
/// the AGF's free block count.
fn ag_free(vol: &dyn Volume, sb: &Sb, agno: u64) -> R<Extents> {
    let ag_len = sb.ag_len(agno);
    let agf = read_vec(vol, agno * sb.agblocks * sb.bs + sb.sect, sb.sect as usize)?;
    let bad = |what: &str| whole::<Extents>(format!("AG {agno}: AGF {what}"));
    if &agf[0..4] != b"XAGF" || be32(&agf, 4) != 1 {
        return bad("magic or version wrong");
    }
    if u64::from(be32(&agf, 8)) != agno || u64::from(be32(&agf, 12)) != ag_len {
        return bad("sequence number or length wrong");
    }
    if sb.v5 && !crc_ok(&agf, 216) {
        return bad("checksum mismatch");
    }
    let (root, levels) = (be32(&agf, 16), be32(&agf, 28));
    if levels == 0 || levels > MAX_LEVELS {
        return bad("free-space btree depth out of range");
    }
    let (free, nodes) = walk_bnobt(vol, sb, agno, root, levels)?;
    let sum: u64 = free.iter().map(|&(_, c)| c).sum();
    if sum != u64::from(be32(&agf, 52)) {
        return bad("free block count differs from the free-space btree's");
    }
    // The AG headers (four sectors) and the log are never free; nor are the tree's blocks.
    let headers = (4 * sb.sect).div_ceil(sb.bs);
    let base = agno * sb.agblocks;
    let log = sb.log_start.saturating_sub(base)..(sb.log_start + sb.log_blocks).saturating_sub(base);
    let is_free = |b: u64| {
        let i = free.partition_point(|&(s, _)| s <= b);
        i > 0 && b < free[i - 1].0 + free[i - 1].1
    };
    let clash = free.first().is_some_and(|&(s, _)| s < headers)
        || nodes.iter().any(|&b| is_free(b))
        || free.iter().any(|&(s, c)| s < log.end && log.start < s + c);
    if clash {
        return bad("free-space btree lists metadata or the log as free");
    }
    Ok(free)
}

/// Walks the bnobt level by level from the root: each level's blocks in key order, linked
/// by sibling pointers, each block seen once (so loops end). Returns the leaf records in
/// order and the blocks the tree occupies.
fn walk_bnobt(vol: &dyn Volume, sb: &Sb, agno: u64, root: u32, levels: u32) -> R<(Extents, Vec<u64>)> {
    let ag_len = sb.ag_len(agno);
    let hdr = if sb.v5 { 56 } else { 16 };
    let (leaf_max, node_max) = ((sb.bs as usize - hdr) / 8, (sb.bs as usize - hdr) / 12);
    let mut seen = HashSet::new();
    let mut level_blocks = vec![root];
    let mut free: Extents = Vec::new();
    for level in (0..levels).rev() {
        let mut next = Vec::new();
        let mut left = NULL_AGBLOCK;
        for (i, &agbno) in level_blocks.iter().enumerate() {
            let b = u64::from(agbno);
            if b == 0 || b >= ag_len || !seen.insert(b) {
                return whole(format!("AG {agno}: free-space btree points at block {b} twice or out of the AG"));
            }
            let blk = btree_block(vol, sb, agno, b, level)?;
            let (nrecs, lsib, rsib) = (be16(&blk, 6) as usize, be32(&blk, 8), be32(&blk, 12));
            let last = i + 1 == level_blocks.len();
            let sib_ok = lsib == left && (rsib == NULL_AGBLOCK) == last && (last || rsib == level_blocks[i + 1]);
            let max = if level == 0 { leaf_max } else { node_max };
            if !sib_ok || nrecs > max || (nrecs == 0 && levels > 1) {
                return whole(format!("AG {agno}: free-space btree block {b} inconsistent"));
            }
            left = agbno;
            for r in 0..nrecs {
                if level > 0 {
                    next.push(be32(&blk, hdr + node_max * 8 + r * 4));
                    continue;
                }
                let (s, c) = (u64::from(be32(&blk, hdr + r * 8)), u64::from(be32(&blk, hdr + r * 8 + 4)));
                let after_prev = free.last().is_none_or(|&(ps, pc)| s >= ps + pc);
                if c == 0 || s + c > ag_len || !after_prev {
                    return whole(format!("AG {agno}: bad free extent {s}+{c}"));
                }
                free.push((s, c));
            }
        }
        level_blocks = next;
    }
    Ok((free, seen.into_iter().collect()))
}

/// Reads one bnobt block and checks its header: magic, level, and on v5 its checksum, its
/// own address and its owner (the AG).
fn btree_block(vol: &dyn Volume, sb: &Sb, agno: u64, agbno: u64, level: u32) -> R<Vec<u8>> {
    let at = (agno * sb.agblocks + agbno) * sb.bs;
    let blk = read_vec(vol, at, sb.bs as usize)?;
    let magic: &[u8] = if sb.v5 { b"AB3B" } else { b"ABTB" };
    let mut ok = &blk[0..4] == magic && u32::from(be16(&blk, 4)) == level;
    if sb.v5 {
        ok = ok && be64(&blk, 16) == at / BB && u64::from(be32(&blk, 48)) == agno && crc_ok(&blk, 52);
    }
    if !ok {
        return whole(format!("AG {agno}: free-space btree block {agbno} fails its checks"));
    }
    Ok(blk)
}

/// CRC-32C (Castagnoli), the checksum of XFS v5 metadata.
fn crc32c(crc: u32, data: &[u8]) -> u32 {
    const TABLE: [u32; 256] = {
        let mut t = [0u32; 256];
        let mut i = 0;
        while i < 256 {
            let mut c = i as u32;
            let mut k = 0;
            while k < 8 {
                c = if c & 1 != 0 { (c >> 1) ^ 0x82F6_3B78 } else { c >> 1 };
                k += 1;
            }
            t[i] = c;
            i += 1;
        }
        t
    };
    data.iter().fold(crc, |c, &b| TABLE[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8))
}

/// Whether the XFS checksum at `off` in `buf` is right: CRC-32C of the whole buffer with the
/// checksum field taken as zeros, stored little-endian (the one little-endian field).
fn crc_ok(buf: &[u8], off: usize) -> bool {
    if buf.len() < off + 4 {
        return false;
    }
    let c = crc32c(!0, &buf[..off]);
    let c = crc32c(c, &[0; 4]);
    let c = !crc32c(c, &buf[off + 4..]);
    c.to_le_bytes() == buf[off..off + 4]
}

#[cfg(test)]
mod tests {
    use super::super::{FileVolume, Slice};
    use super::*;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::Command;

    /// Runs a command, failing the test with its output when it fails; returns its stdout.
    fn run(cmd: &str, args: &[&str]) -> String {
        let out = Command::new(cmd).args(args).output().unwrap_or_else(|e| panic!("{cmd}: {e}"));
        let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
        assert!(out.status.success(), "{cmd} {args:?}: {}{}", text(&out.stdout), text(&out.stderr));
        text(&out.stdout)
    }

    /// The tests make, mount and repair real filesystems: root, loop devices, xfsprogs and
    /// partclone are needed.
    fn can_run() -> bool {
        let has = |t: &str| {
            let probe = format!("command -v {t}");
            Command::new("sh").args(["-c", &probe]).output().is_ok_and(|o| o.status.success())
        };
        let ok = run("id", &["-u"]).trim() == "0"
            && ["mkfs.xfs", "xfs_repair", "xfs_io", "xfs_db", "partclone.xfs"].iter().all(|t| has(t));
        if !ok {
            eprintln!("skipped: needs root, xfsprogs and partclone");
        }
        ok
    }

    /// A loop mount, unmounted (which also frees the loop device) when dropped, even when
    /// the test fails while it is mounted.
    struct Mount(PathBuf);

    impl Mount {
        fn new(img: &Path, dir: &Path, opts: &str) -> Self {
            fs::create_dir_all(dir).unwrap();
            let opts = format!("loop,{opts}");
            run("mount", &["-o", &opts, img.to_str().unwrap(), dir.to_str().unwrap()]);
            Mount(dir.to_path_buf())
        }
    }

    impl Mount {
        /// Unmounts, retrying while busy: a child another test thread forks may briefly hold
        /// (until its exec) a file this test had open. Lazily detaches as a last resort.
        fn unmount(&self) -> bool {
            for _ in 0..100 {
                let st = Command::new("umount").arg(&self.0).stderr(std::process::Stdio::null()).status();
                if st.is_ok_and(|s| s.success()) || !is_mounted(&self.0) {
                    return true;
                }
                std::thread::sleep(std::time::Duration::from_millis(100));
            }
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
            false
        }

        /// Unmounts now, failing the test if it cannot.
        fn done(self) {
            assert!(self.unmount(), "cannot unmount {}", self.0.display());
        }
    }

    fn is_mounted(dir: &Path) -> bool {
        let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        let dir = dir.to_str().unwrap();
        mounts.lines().any(|l| l.split_whitespace().nth(1) == Some(dir))
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            self.unmount();
        }
    }

    /// xorshift64*: reproducible file contents and sizes without another dependency.
    struct Rng(u64);

    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn below(&mut self, n: u64) -> u64 {
            self.next() % n
        }
        fn bytes(&mut self, n: usize) -> Vec<u8> {
            (0..n.div_ceil(8)).flat_map(|_| self.next().to_le_bytes()).take(n).collect()
        }
    }

    /// Makes a 300 MiB image file with a fresh XFS of four AGs; false if mkfs.xfs refuses.
    fn try_mkfs(img: &Path, extra: &[&str]) -> bool {
        fs::File::create(img).unwrap().set_len(300 << 20).unwrap();
        let mut cmd = Command::new("mkfs.xfs");
        cmd.args(["-q", "-f", "-d", "agcount=4"]).args(extra).arg(img);
        cmd.status().is_ok_and(|s| s.success())
    }

    fn mkfs(img: &Path, extra: &[&str]) {
        assert!(try_mkfs(img, extra), "mkfs.xfs {extra:?} failed");
    }

    /// Files of random data: a few large, some medium, and many small ones in one directory
    /// (one AG) with every other one deleted after they reached the disk, so that AG's free
    /// space is fragmented enough for a two-level free-space btree. Returns the bytes kept.
    fn fill(dir: &Path, rng: &mut Rng) -> u64 {
        let mut kept = 0;
        let write = |path: PathBuf, len: u64, rng: &mut Rng| {
            fs::write(path, rng.bytes(len as usize)).unwrap();
            len
        };
        for d in ["big", "medium", "small"] {
            fs::create_dir(dir.join(d)).unwrap();
        }
        for i in 0..4 {
            let len = (2 << 20) + rng.below(10 << 20);
            kept += write(dir.join(format!("big/{i}")), len, rng);
        }
        for i in 0..30 {
            let len = 1 + rng.below(1 << 20);
            kept += write(dir.join(format!("medium/{i}")), len, rng);
        }
        let small: Vec<u64> =
            (0..2400).map(|i| write(dir.join(format!("small/{i}")), 1 + rng.below(8192), rng)).collect();
        run("sync", &["-f", dir.to_str().unwrap()]);
        fs::remove_file(dir.join("big/0")).unwrap();
        for (i, len) in small.iter().enumerate() {
            if i % 2 == 1 {
                fs::remove_file(dir.join(format!("small/{i}"))).unwrap();
            } else {
                kept += len;
            }
        }
        kept - fs::metadata(dir.join("big/0")).map_or(0, |m| m.len())
    }

    /// SHA-256 of every file under `root`, by path relative to it.
    fn hashes(root: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        let mut dirs = vec![root.to_path_buf()];
        while let Some(d) = dirs.pop() {
            for e in fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    dirs.push(p);
                } else {
                    let h = Sha256::digest(fs::read(&p).unwrap()).to_vec();
                    out.insert(p.strip_prefix(root).unwrap().to_path_buf(), h);
                }
            }
        }
        out
    }

    /// Whether each of `inner` lies within one of `outer` (sorted and merged).
    fn covered(outer: &[ByteRange], inner: &[ByteRange]) -> Result<(), ByteRange> {
        for r in inner.iter().filter(|r| !r.is_empty()) {
            let i = outer.partition_point(|o| o.start <= r.start);
            if i == 0 || outer[i - 1].end < r.end {
                return Err(r.clone());
            }
        }
        Ok(())
    }

    fn probe_file(img: &Path) -> Verdict {
        probe(&FileVolume::open(img).unwrap()).unwrap()
    }

    fn used_ranges(v: Verdict) -> Vec<ByteRange> {
        match v {
            Verdict::Used { ranges, .. } => ranges,
            other => panic!("expected Used, got {other:?}"),
        }
    }

    /// Our ranges hold everything partclone reads and little more; returns (ours, theirs).
    fn compare_with_partclone(img: &Path, ours: &[ByteRange]) -> (u64, u64) {
        let theirs = partclone_used("xfs", img);
        if let Err(r) = covered(ours, &theirs) {
            panic!("partclone reads {r:?}, which we would skip");
        }
        let (o, t) = (total(ours), total(&theirs));
        eprintln!("used bytes: ours {o}, partclone {t}, difference {}", o as i64 - t as i64);
        // AGFL blocks (reserved for btree growth, not in the bnobt) are all we should add.
        assert!(o <= t + (1 << 20), "ours {o} is much more than partclone's {t}");
        (o, t)
    }

    #[test]
    fn used_ranges_match_partclone_and_keep_every_file() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("v5.img");
        mkfs(&img, &[]);
        let m = Mount::new(&img, &tmp.path().join("mnt"), "rw");
        let kept = fill(&m.0, &mut Rng(0x5eed_1234_abcd));
        let df = run("df", &["-B1", "--output=used", m.0.to_str().unwrap()]);
        let df_used: u64 = df.lines().nth(1).unwrap().trim().parse().unwrap();
        let before = hashes(&m.0);
        m.done();
        // The fragmented AG must have made the walk go through internal nodes.
        let vol = FileVolume::open(&img).unwrap();
        let Ok(sb) = superblock(&vol) else { panic!("superblock refused") };
        let agf_levels = |ag: u64| be32(&read_vec(&vol, ag * sb.agblocks * sb.bs + sb.sect, 64).unwrap(), 28);
        assert!((0..4).any(|ag| agf_levels(ag) >= 2), "no multi-level free-space btree");
        let ranges = used_ranges(probe_file(&img));
        let (ours, _) = compare_with_partclone(&img, &ranges);
        eprintln!("file data kept {kept}, df used {df_used}");
        assert!(ours >= kept && ours >= df_used);

        let copy = tmp.path().join("copy.img");
        zeroed_copy_to(&img, &ranges, &copy);
        run("xfs_repair", &["-n", "-f", copy.to_str().unwrap()]);
        let m = Mount::new(&copy, &tmp.path().join("copy"), "ro,nouuid");
        assert_eq!(hashes(&m.0), before);
    }

    #[test]
    fn dirty_log_is_read_whole_until_recovered() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("dirty.img");
        let mnt = tmp.path().join("mnt");
        mkfs(&img, &[]);
        let m = Mount::new(&img, &mnt, "rw");
        fs::write(m.0.join("file"), Rng(7).bytes(3 << 20)).unwrap();
        run("xfs_io", &["-x", "-c", "shutdown -f", m.0.to_str().unwrap()]);
        m.done();
        assert_log_dirty(probe_file(&img));
        Mount::new(&img, &mnt, "rw").done(); // recovers the log, then unmounts cleanly
        used_ranges(probe_file(&img));
        // A copy taken while mounted (as of a live server) has a log that is not clean.
        let m = Mount::new(&img, &mnt, "rw");
        fs::write(m.0.join("more"), Rng(8).bytes(1 << 20)).unwrap();
        run("sync", &["-f", m.0.to_str().unwrap()]);
        let snap = tmp.path().join("snapshot.img");
        fs::copy(&img, &snap).unwrap();
        assert_log_dirty(probe_file(&snap));
        // So does one of a frozen filesystem: freezing covers the log but writes no unmount
        // record, and telling a covered log from a dirty one is left to recovery.
        run("xfs_freeze", &["-f", m.0.to_str().unwrap()]);
        let copied = fs::copy(&img, &snap);
        run("xfs_freeze", &["-u", m.0.to_str().unwrap()]);
        copied.unwrap();
        assert_log_dirty(probe_file(&snap));
    }

    fn assert_log_dirty(v: Verdict) {
        match v {
            Verdict::Whole { fs, reason } => {
                eprintln!("dirty log: {reason}");
                assert!(fs == "xfs" && reason.contains("log"), "{reason}")
            }
            other => panic!("dirty log read as {other:?}"),
        }
    }

    /// Enough metadata changes to wrap the 64 MiB log (each round logs 2000 inodes), so its
    /// head is found by the cycle search rather than at the start of a first pass.
    #[test]
    fn wrapped_clean_log_is_read() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("wrap.img");
        mkfs(&img, &[]);
        let m = Mount::new(&img, &tmp.path().join("mnt"), "rw");
        {
            let files: Vec<PathBuf> = (0..2000).map(|i| m.0.join(i.to_string())).collect();
            files.iter().for_each(|f| fs::write(f, b"").unwrap());
            for round in 0..160 {
                for f in &files {
                    let mode = 0o600 | ((round % 2) * 0o044);
                    fs::set_permissions(f, std::os::unix::fs::PermissionsExt::from_mode(mode)).unwrap();
                }
                run("sync", &["-f", m.0.to_str().unwrap()]);
            }
        }
        m.done();
        let vol = FileVolume::open(&img).unwrap();
        let Ok(sb) = superblock(&vol) else { panic!("superblock refused") };
        let log = Log { vol: &vol, start: sb.log_start * sb.bs, bbs: sb.log_blocks * sb.bs / BB };
        assert!(log.cycle(0).unwrap() >= 2, "the log did not wrap");
        used_ranges(probe(&vol).unwrap());
    }

    /// A v4 filesystem (no CRCs, short btree headers), filled through a mkfs prototype file
    /// because recent kernels no longer mount v4.
    #[test]
    fn v4_filesystem() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let (img, src) = (tmp.path().join("v4.img"), tmp.path().join("src"));
        fs::create_dir(&src).unwrap();
        let mut proto = String::from("/dev/null\n0 0\nd--755 0 0\n");
        let mut rng = Rng(44);
        for i in 0..200 {
            let f = src.join(i.to_string());
            let len = 1 + rng.below(if i % 20 == 0 { 4 << 20 } else { 20000 });
            fs::write(&f, rng.bytes(len as usize)).unwrap();
            proto += &format!("f{i} ---644 0 0 {}\n", f.display());
        }
        let proto_file = tmp.path().join("proto");
        fs::write(&proto_file, proto + "$\n").unwrap();
        if !try_mkfs(&img, &["-m", "crc=0", "-p", proto_file.to_str().unwrap()]) {
            eprintln!("skipped: mkfs.xfs no longer makes v4 filesystems");
            return;
        }
        let ranges = used_ranges(probe_file(&img));
        compare_with_partclone(&img, &ranges);
        let copy = tmp.path().join("copy.img");
        zeroed_copy_to(&img, &ranges, &copy);
        run("xfs_repair", &["-n", "-f", copy.to_str().unwrap()]);
    }

    /// Block and sector sizes other than the defaults, on fresh filesystems (never mounted,
    /// so their log is mkfs's own unmount record).
    #[test]
    fn other_geometries_match_partclone() {
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let geometries: [&[&str]; 4] =
            [&["-b", "size=1024"], &["-s", "size=4096"], &["-b", "size=65536"], &["-m", "crc=0", "-b", "size=512"]];
        for extra in geometries {
            let img = tmp.path().join("geometry.img");
            if !try_mkfs(&img, extra) {
                continue; // e.g. v4 no longer made
            }
            let ranges = used_ranges(probe_file(&img));
            compare_with_partclone(&img, &ranges);
            let copy = tmp.path().join("copy.img");
            zeroed_copy_to(&img, &ranges, &copy);
            run("xfs_repair", &["-n", "-f", copy.to_str().unwrap()]);
        }
    }

    use crate::disk::used::testing::MemVolume as Mem;
    use crate::disk::used::testing::{partclone_used, total, zeroed_copy_to};

    /// Another volume with some bytes replaced.
    struct Patched<'a> {
        inner: &'a dyn Volume,
        patches: Vec<(u64, Vec<u8>)>,
    }

    impl Volume for Patched<'_> {
        fn len(&self) -> u64 {
            self.inner.len()
        }
        fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
            self.inner.read_at(buf, offset)?;
            let end = offset + buf.len() as u64;
            for (at, bytes) in &self.patches {
                for (i, &b) in bytes.iter().enumerate() {
                    let p = at + i as u64;
                    if (offset..end).contains(&p) {
                        buf[(p - offset) as usize] = b;
                    }
                }
            }
            Ok(())
        }
    }

    fn is_used(v: &io::Result<Verdict>) -> bool {
        matches!(v, Ok(Verdict::Used { .. }))
    }

    #[test]
    fn garbage_and_truncation_never_panic() {
        let mut rng = Rng(99);
        assert_eq!(probe(&Mem(vec![])).unwrap(), Verdict::NotMine);
        assert_eq!(probe(&Mem(b"EXT4".repeat(300))).unwrap(), Verdict::NotMine);
        for len in [4, 100, 511, 512, 4096, 65536] {
            for _ in 0..50 {
                let mut b = rng.bytes(len);
                b[..4].copy_from_slice(b"XFSB");
                assert!(!is_used(&probe(&Mem(b))));
            }
        }
        if !can_run() {
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        for (name, extra) in [("v5.img", &[][..]), ("v4.img", &["-m", "crc=0"][..])] {
            let img = tmp.path().join(name);
            if !try_mkfs(&img, extra) {
                continue; // no v4 any more
            }
            let vol = FileVolume::open(&img).unwrap();
            used_ranges(probe(&vol).unwrap());
            for len in [0, 4, 512, 4096, 1 << 20, vol.len / 2, vol.len - 1] {
                assert!(!is_used(&probe(&Slice { inner: &vol, start: 0, len })));
            }
            damaged(&vol, &mut rng);
            crafted_trees(&vol);
            refused_superblocks(&vol);
        }
    }

    /// Random bytes changed in the structures probe reads: it may say anything but panic.
    fn damaged(vol: &FileVolume, rng: &mut Rng) {
        let sb = match superblock(vol) {
            Ok(sb) => sb,
            Err(_) => panic!("fresh superblock refused"),
        };
        let ag_bytes = sb.agblocks * sb.bs;
        for _ in 0..400 {
            let ag = rng.below(sb.agcount) * ag_bytes;
            let at = match rng.below(4) {
                0 => rng.below(512),
                1 => ag + sb.sect + rng.below(sb.sect),
                2 => ag + rng.below(8 * sb.bs),
                _ => sb.log_start * sb.bs + rng.below(16 * BB),
            };
            let mut patches = Vec::new();
            for i in 0..1 + rng.below(4) {
                let (off, len) = (i * rng.below(64), 1 + rng.below(4));
                patches.push((at + off, rng.bytes(len as usize)));
            }
            let _ = probe(&Patched { inner: vol, patches });
        }
    }

    /// Hand-made two-level free-space btrees in AG 0 (on v4, which has no checksums to fix):
    /// a node pointing at the leaf twice, and a node pointing at itself, are refused.
    fn crafted_trees(vol: &FileVolume) {
        let Ok(sb) = superblock(vol) else { panic!("fresh superblock refused") };
        if sb.v5 {
            return;
        }
        let agf = read_vec(vol, sb.sect, 64).unwrap();
        let leaf = be32(&agf, 16);
        let Ok(free) = ag_free(vol, &sb, 0) else { panic!("fresh AG refused") };
        let node = free[0].0 as u32;
        let node_max = (sb.bs as usize - 16) / 12;
        for ptrs in [vec![leaf, leaf], vec![node], vec![leaf]] {
            let mut blk = vec![0u8; 16 + node_max * 12];
            blk[..4].copy_from_slice(b"ABTB");
            blk[4..8].copy_from_slice(&[0, 1, 0, ptrs.len() as u8]);
            blk[8..16].fill(0xff);
            for (i, p) in ptrs.iter().enumerate() {
                blk[16 + i * 8..16 + i * 8 + 4].copy_from_slice(&(i as u32).to_be_bytes());
                let at = 16 + node_max * 8 + i * 4;
                blk[at..at + 4].copy_from_slice(&p.to_be_bytes());
            }
            let patches = vec![
                (sb.sect + 16, node.to_be_bytes().to_vec()),
                (sb.sect + 28, 2u32.to_be_bytes().to_vec()),
                (u64::from(node) * sb.bs, blk),
            ];
            let v = probe(&Patched { inner: vol, patches }).unwrap();
            assert!(matches!(v, Verdict::Whole { .. }), "{ptrs:?}: {v:?}");
        }
    }

    /// Superblocks this reader must not trust, each changed in place with its checksum made
    /// right again (on v5), are read whole for the stated reason.
    fn refused_superblocks(vol: &FileVolume) {
        let Ok(sb) = superblock(vol) else { panic!("fresh superblock refused") };
        let cases: [(usize, &[u8], &str); 6] = [
            (16, &[0, 0, 0, 0, 0, 0, 0, 1], "realtime"),
            (48, &[0; 8], "external log"),
            (126, &[1], "mkfs did not finish"),
            (8, &[0xff; 8], "bad geometry"),
            (216, &[0x80, 0, 0, 0], if sb.v5 { "unknown incompat" } else { "" }),
            (216, &[0, 0, 0, 0x10], if sb.v5 { "needs repair" } else { "" }),
        ];
        for (at, bytes, why) in cases.into_iter().filter(|c| !c.2.is_empty()) {
            let mut sector = read_vec(vol, 0, sb.sect as usize).unwrap();
            sector[at..at + bytes.len()].copy_from_slice(bytes);
            if sb.v5 {
                let c = !crc32c(crc32c(crc32c(!0, &sector[..224]), &[0; 4]), &sector[228..]);
                sector[224..228].copy_from_slice(&c.to_le_bytes());
            }
            match probe(&Patched { inner: vol, patches: vec![(0, sector)] }).unwrap() {
                Verdict::Whole { reason, .. } => assert!(reason.contains(why), "{why}: {reason}"),
                other => panic!("{why}: {other:?}"),
            }
        }
    }
}
