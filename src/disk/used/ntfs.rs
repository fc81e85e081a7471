//! NTFS: the clusters its `$Bitmap` marks in use, plus the boot sectors and any tail the
//! bitmap does not describe.
//!
//! Everything is read through NTFS's own metadata, starting from the boot sector: `$MFT`'s
//! first record (at the boot sector's `$MFT` cluster) maps the rest of the MFT, whose system
//! records 1 (`$MFTMirr`), 2 (`$LogFile`), 3 (`$Volume`) and 6 (`$Bitmap`) are then read.
//! A volume Windows did not leave clean (dirty flag, log records to replay as after Fast
//! Startup) is read whole: what the log would replay may point at clusters the bitmap does
//! not (yet) mark, and a copy must boot exactly as Windows would find the disk.

use super::{le16, le32, le64, ByteRange, RangeSet, Verdict, Volume};
use std::io;

const FS: &str = "ntfs";
/// Attribute types this reader looks at.
const ATTR_LIST: u32 = 0x20;
const VOLUME_INFORMATION: u32 = 0x70;
const DATA: u32 = 0x80;
const ATTR_END: u32 = 0xFFFF_FFFF;
/// Update sequence (fixup) arrays protect every 512 bytes, whatever the sector size.
const FIXUP_STRIDE: usize = 512;
/// Bytes of `$Bitmap` read at a time: its size grows with the volume (512 MiB at 16 TiB).
const CHUNK: usize = 1 << 20;
/// `$Boot` is 8 KiB (boot sector plus boot code) whatever the cluster size.
const BOOT_LEN: u64 = 8192;

/// Why this module gives up on precision: an io error, or a reason to read the volume whole.
#[derive(Debug)]
enum Fail {
    Io(io::Error),
    Whole(String),
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Self {
        Fail::Io(e)
    }
}

fn whole<T>(reason: impl Into<String>) -> Result<T, Fail> {
    Err(Fail::Whole(reason.into()))
}

/// The boot sector's geometry, checked for sanity against the volume.
#[derive(Debug, Clone)]
struct Geo {
    sector: u64,
    cluster: u64,
    /// Clusters in the filesystem (what `$Bitmap` has one bit each for).
    clusters: u64,
    /// Bytes the filesystem claims (total sectors times sector size).
    size: u64,
    record: usize,
    mft_lcn: u64,
}

/// One extent of a non-resident attribute: `len` clusters from `vcn`, at `lcn` (None: sparse).
#[derive(Debug, Clone, PartialEq, Eq)]
struct Run {
    vcn: u64,
    lcn: Option<u64>,
    len: u64,
}

/// A non-resident attribute's runs and sizes.
#[derive(Debug)]
struct NonResident {
    runs: Vec<Run>,
    /// Bytes written (the "initialized size"); what lies past it reads as zeros.
    init: u64,
}

/// Says whether `vol` holds NTFS and, if so, which byte ranges it uses.
pub fn probe(vol: &dyn Volume) -> io::Result<Verdict> {
    if vol.len() < 512 {
        return Ok(Verdict::NotMine);
    }
    let mut boot = [0u8; 512];
    vol.read_at(&mut boot, 0)?;
    if &boot[3..11] != b"NTFS    " {
        return Ok(Verdict::NotMine);
    }
    match inspect(vol, &boot) {
        Ok(ranges) => Ok(Verdict::Used { fs: FS.into(), ranges, notes: Vec::new() }),
        Err(Fail::Whole(reason)) => Ok(Verdict::whole(FS, reason)),
        Err(Fail::Io(e)) => Err(e),
    }
}

/// Reads the metadata in the order each step needs it; any doubt ends in [`Fail::Whole`].
fn inspect(vol: &dyn Volume, boot: &[u8]) -> Result<Vec<ByteRange>, Fail> {
    let geo = geometry(boot, vol.len())?;
    let rec0 = first_record(vol, &geo)?;
    let mft = data_runs(&rec0, &geo, "$MFT")?;
    // Record 0 was read from the boot sector's cluster; its own map must agree.
    if mft.runs.first().and_then(|r| r.lcn) != Some(geo.mft_lcn) {
        return whole("$MFT's data does not start at the boot sector's $MFT cluster");
    }
    let record = |n: u64| read_record(vol, &geo, &mft.runs, n);
    volume_flags(&record(3)?)?;
    let log = data_runs(&record(2)?, &geo, "$LogFile")?;
    logfile_clean(vol, &geo, &log)?;
    let rec6 = record(6)?;
    if attributes(&rec6)?.iter().any(|a| le32(a, 0) == ATTR_LIST) {
        return whole("$Bitmap has an attribute list (extension records are not read)");
    }
    let bitmap = data_runs(&rec6, &geo, "$Bitmap")?;
    let (used, covered) = bitmap_ranges(vol, &geo, &bitmap)?;
    let mirr = data_runs(&record(1)?, &geo, "$MFTMirr")?;
    // The bitmap must agree with the metadata just read, else it is not to be trusted.
    for (name, runs) in
        [("$MFT", &mft.runs), ("$MFTMirr", &mirr.runs), ("$LogFile", &log.runs), ("$Bitmap", &bitmap.runs)]
    {
        if !marked(&used, runs, geo.cluster, covered) {
            return whole(format!("$Bitmap does not mark all of {name}'s clusters in use"));
        }
    }
    let mut all = RangeSet::new();
    for r in &used {
        all.add(r.start, r.end - r.start);
    }
    all.add(0, BOOT_LEN.max(geo.cluster));
    // The backup boot sector sits right after the sectors the boot sector counts.
    all.add(geo.size, geo.sector);
    // Past the bitmap's last cluster: the partial last cluster, the backup boot sector and any
    // slack up to the partition's end. Unknown to the bitmap, so kept.
    let tail = covered * geo.cluster;
    all.add(tail, vol.len().saturating_sub(tail));
    Ok(all.finish(vol.len()))
}

/// Decodes and checks the boot sector's geometry.
fn geometry(boot: &[u8], vol_len: u64) -> Result<Geo, Fail> {
    if le16(boot, 510) != 0xAA55 {
        return whole("NTFS boot sector without the 0x55AA signature");
    }
    let sector = u64::from(le16(boot, 0x0B));
    if !sector.is_power_of_two() || !(256..=4096).contains(&sector) {
        return whole(format!("bad NTFS sector size {sector}"));
    }
    // 1..=128 sectors per cluster as is; from 0xF4 on, 2^(256 - n) sectors (clusters > 64 KiB).
    let spc = match boot[0x0D] {
        n @ 1..=128 if n.is_power_of_two() => u64::from(n),
        n @ 0xF4..=0xFF => 1u64 << (256 - u32::from(n)),
        n => return whole(format!("bad NTFS sectors-per-cluster byte {n:#x}")),
    };
    let cluster = sector * spc;
    if cluster > 2 << 20 {
        return whole(format!("NTFS cluster size {cluster} beyond 2 MiB"));
    }
    let total_sectors = le64(boot, 0x28);
    let size = match total_sectors.checked_mul(sector) {
        Some(size) if size <= vol_len => size,
        _ => return whole("NTFS claims more sectors than the volume has"),
    };
    // Positive: clusters per record; negative: a record is 2^-n bytes.
    let record = match boot[0x40] as i8 {
        n @ 1.. => u64::from(n as u8) * cluster,
        n @ -31..=-1 => 1u64 << -i32::from(n),
        n => return whole(format!("bad NTFS clusters-per-MFT-record {n}")),
    };
    if !record.is_power_of_two() || !(512..=65536).contains(&record) {
        return whole(format!("bad NTFS MFT record size {record}"));
    }
    let clusters = total_sectors / spc;
    let mft_lcn = le64(boot, 0x30);
    if mft_lcn >= clusters || (mft_lcn * cluster).saturating_add(record) > size {
        return whole("NTFS $MFT cluster lies outside the volume");
    }
    Ok(Geo { sector, cluster, clusters, size, record: record as usize, mft_lcn })
}

/// Applies the update sequence array of a multi-sector record checked to begin with `magic`:
/// the last two bytes of each 512 must equal the sequence number, and get their saved value.
fn fixup(buf: &mut [u8], magic: &[u8; 4], what: &str) -> Result<(), Fail> {
    if buf.len() < 8 || &buf[0..4] != magic {
        return whole(format!("{what}: bad magic (not {:?})", String::from_utf8_lossy(magic)));
    }
    let (ofs, count) = (usize::from(le16(buf, 4)), usize::from(le16(buf, 6)));
    if count != buf.len() / FIXUP_STRIDE + 1 || ofs % 2 != 0 || ofs + 2 * count > buf.len() {
        return whole(format!("{what}: bad update sequence array"));
    }
    let usn = [buf[ofs], buf[ofs + 1]];
    for i in 1..count {
        let end = i * FIXUP_STRIDE;
        if buf[end - 2..end] != usn {
            return whole(format!("{what}: update sequence mismatch (torn write)"));
        }
        let saved = ofs + 2 * i;
        buf.copy_within(saved..saved + 2, end - 2);
    }
    Ok(())
}

/// Checks a fixed-up MFT record's header: in use, a base record, sizes within the record.
fn check_record(rec: &[u8], n: u64) -> Result<(), Fail> {
    let used = le32(rec, 0x18) as usize;
    let attrs = usize::from(le16(rec, 0x14));
    if le16(rec, 0x16) & 1 == 0 || used > rec.len() || attrs < 0x18 || attrs >= used {
        return whole(format!("MFT record {n}: not in use or bad header"));
    }
    if le64(rec, 0x20) != 0 {
        return whole(format!("MFT record {n} is an extension record, not a base record"));
    }
    // NTFS 3.1 records (update sequence at 0x30 or later) carry their own number.
    if le16(rec, 4) >= 0x30 && u64::from(le32(rec, 0x2C)) != n {
        return whole(format!("MFT record {n} says it is record {}", le32(rec, 0x2C)));
    }
    Ok(())
}

/// Reads `$MFT`'s own record straight from the boot sector's cluster (it maps the rest).
fn first_record(vol: &dyn Volume, geo: &Geo) -> Result<Vec<u8>, Fail> {
    let mut rec = vec![0u8; geo.record];
    vol.read_at(&mut rec, geo.mft_lcn * geo.cluster)?;
    fixup(&mut rec, b"FILE", "MFT record 0")?;
    check_record(&rec, 0)?;
    Ok(rec)
}

/// Reads MFT record `n` through `$MFT`'s runs.
fn read_record(vol: &dyn Volume, geo: &Geo, mft: &[Run], n: u64) -> Result<Vec<u8>, Fail> {
    let mut rec = vec![0u8; geo.record];
    read_stream(vol, geo, mft, n * geo.record as u64, &mut rec)?;
    fixup(&mut rec, b"FILE", &format!("MFT record {n}"))?;
    check_record(&rec, n)?;
    Ok(rec)
}

/// The attributes of a fixed-up, checked record, each as its own bytes.
fn attributes(rec: &[u8]) -> Result<Vec<&[u8]>, Fail> {
    let used = le32(rec, 0x18) as usize;
    let mut off = usize::from(le16(rec, 0x14));
    let mut out = Vec::new();
    // Each step moves on by at least 16 bytes, within `used`: the loop ends.
    loop {
        if off + 4 > used {
            return whole("MFT record's attributes run past its end");
        }
        if le32(rec, off) == ATTR_END {
            return Ok(out);
        }
        let len = if off + 8 <= used { le32(rec, off + 4) as usize } else { 0 };
        if len < 16 || len % 8 != 0 || len > used - off {
            return whole("MFT record has an attribute of bad length");
        }
        out.push(&rec[off..off + len]);
        off += len;
    }
}

/// The first unnamed attribute of type `ty` in a record.
fn find_attr(rec: &[u8], ty: u32) -> Result<Option<&[u8]>, Fail> {
    Ok(attributes(rec)?.into_iter().find(|a| le32(a, 0) == ty && a[9] == 0))
}

/// A resident attribute's value.
fn resident_value(attr: &[u8]) -> Option<&[u8]> {
    if attr[8] != 0 || attr.len() < 0x18 {
        return None;
    }
    let (len, off) = (le32(attr, 0x10) as usize, usize::from(le16(attr, 0x14)));
    attr.get(off..off.checked_add(len)?)
}

/// The unnamed `$DATA` of a system file `name`: non-resident, plain (not compressed,
/// encrypted or sparse), and whole in this record (starting at VCN 0).
fn data_runs(rec: &[u8], geo: &Geo, name: &str) -> Result<NonResident, Fail> {
    let Some(attr) = find_attr(rec, DATA)? else {
        return whole(format!("{name} has no $DATA in its base record"));
    };
    if attr[8] == 0 || attr.len() < 0x40 {
        return whole(format!("{name}'s $DATA is resident or too short"));
    }
    if le16(attr, 0x0C) & (0x0001 | 0x4000 | 0x8000) != 0 {
        return whole(format!("{name}'s $DATA is compressed, encrypted or sparse"));
    }
    let (low, high) = (le64(attr, 0x10), le64(attr, 0x18));
    let mp = usize::from(le16(attr, 0x20));
    let (size, init) = (le64(attr, 0x30), le64(attr, 0x38));
    if low != 0 || mp < 0x40 || mp >= attr.len() || init > size {
        return whole(format!("{name}'s $DATA header is not one whole non-resident attribute"));
    }
    let runs =
        decode_runs(&attr[mp..], geo.clusters).ok_or_else(|| Fail::Whole(format!("{name}'s runlist is corrupt")))?;
    let end = runs.last().map_or(0, |r| r.vcn + r.len);
    if end != high.wrapping_add(1) {
        return whole(format!("{name}'s runlist does not end at its highest VCN"));
    }
    Ok(NonResident { runs, init })
}

/// Decodes mapping pairs: a header byte (low nibble: length bytes; high nibble: LCN delta
/// bytes, 0 for sparse), the length, then the signed delta from the previous run's LCN.
/// None when malformed or reaching past the volume's `clusters`.
fn decode_runs(mp: &[u8], clusters: u64) -> Option<Vec<Run>> {
    let (mut pos, mut vcn, mut lcn) = (0usize, 0u64, 0i64);
    let mut runs = Vec::new();
    loop {
        let head = *mp.get(pos)?;
        if head == 0 {
            return Some(runs);
        }
        let (nl, nd) = (usize::from(head & 0xF), usize::from(head >> 4));
        if nl == 0 || nl > 8 || nd > 8 {
            return None;
        }
        let len = le_uint(mp.get(pos + 1..pos + 1 + nl)?);
        let at = if nd == 0 {
            None
        } else {
            lcn = lcn.checked_add(le_int(mp.get(pos + 1 + nl..pos + 1 + nl + nd)?))?;
            let start = u64::try_from(lcn).ok()?;
            if start.checked_add(len)? > clusters {
                return None;
            }
            Some(start)
        };
        // System files are never sparse nor larger than the volume: bounds all arithmetic.
        if len == 0 || vcn.checked_add(len)? > clusters {
            return None;
        }
        runs.push(Run { vcn, lcn: at, len });
        vcn += len;
        pos += 1 + nl + nd;
    }
}

fn le_uint(b: &[u8]) -> u64 {
    b.iter().rev().fold(0, |v, &x| v << 8 | u64::from(x))
}

/// A little-endian two's-complement integer of 1 to 8 bytes, sign-extended.
fn le_int(b: &[u8]) -> i64 {
    let shift = 64 - 8 * b.len() as u32;
    ((le_uint(b) << shift) as i64) >> shift
}

/// Reads `buf.len()` bytes at byte `off` of a non-resident attribute through its runs.
fn read_stream(vol: &dyn Volume, geo: &Geo, runs: &[Run], off: u64, buf: &mut [u8]) -> Result<(), Fail> {
    let c = geo.cluster;
    let mut done = 0usize;
    while done < buf.len() {
        let pos = off + done as u64;
        let vcn = pos / c;
        let Some(run) = runs.iter().find(|r| vcn >= r.vcn && vcn - r.vcn < r.len) else {
            return whole("a system file's data reaches past its mapped clusters");
        };
        let Some(lcn) = run.lcn else {
            return whole("a system file's data has a sparse run");
        };
        let left = (run.vcn + run.len) * c - pos;
        let n = left.min((buf.len() - done) as u64) as usize;
        vol.read_at(&mut buf[done..done + n], (lcn + vcn - run.vcn) * c + pos % c)?;
        done += n;
    }
    Ok(())
}

/// `$Volume`'s `$VOLUME_INFORMATION` flags: 0x0001 is "dirty" (chkdsk due, writes unfinished).
fn volume_flags(rec3: &[u8]) -> Result<(), Fail> {
    let info = find_attr(rec3, VOLUME_INFORMATION)?.and_then(resident_value);
    match info {
        Some(v) if v.len() >= 12 && le16(v, 0x0A) & 0x0001 != 0 => {
            whole("the NTFS volume is marked dirty (not cleanly unmounted; chkdsk pending)")
        }
        Some(v) if v.len() >= 12 => Ok(()),
        _ => whole("$Volume has no readable $VOLUME_INFORMATION"),
    }
}

/// Whether `$LogFile` has nothing to replay, decided as ntfs-3g does: look for restart pages
/// at 0, 512, 1024, 2048, ...; a log of only empty (all 0xFF) blocks is clean (mkntfs and
/// ntfs-3g leave it so); otherwise the newest restart area must have the "clean" flag.
fn logfile_clean(vol: &dyn Volume, geo: &Geo, log: &NonResident) -> Result<(), Fail> {
    let (mut pos, mut nonempty, mut newest) = (0u64, false, None::<(u64, u16)>);
    let mut found = 0;
    // `pos` doubles: at most ~55 steps before it passes any possible size.
    while pos + 512 <= log.init && found < 2 {
        let mut head = [0u8; 512];
        read_stream(vol, geo, &log.runs, pos, &mut head)?;
        match &head[0..4] {
            [0xFF, 0xFF, 0xFF, 0xFF] if nonempty => break,
            [0xFF, 0xFF, 0xFF, 0xFF] => {}
            b"RCRD" => {
                nonempty = true;
                break;
            }
            b"RSTR" => {
                nonempty = true;
                found += 1;
                let (lsn, flags) = restart_area(vol, geo, log, pos, &head)?;
                if newest.is_none_or(|(l, _)| lsn > l) {
                    newest = Some((lsn, flags));
                }
            }
            b"CHKD" => return whole("$LogFile restart page was modified by chkdsk"),
            _ => nonempty = true,
        }
        pos = if pos == 0 { 512 } else { pos * 2 };
    }
    match newest {
        _ if !nonempty => Ok(()),
        Some((_, flags)) if flags & 0x0002 != 0 => Ok(()),
        Some(_) => whole(
            "$LogFile is not clean: Windows left log records to replay \
             (Fast Startup, hibernation or an unclean shutdown)",
        ),
        None => whole("$LogFile has no readable restart page to tell whether it is clean"),
    }
}

/// Loads the restart page at `pos` (its header in `head`): the restart area's current LSN
/// and flags.
fn restart_area(vol: &dyn Volume, geo: &Geo, log: &NonResident, pos: u64, head: &[u8]) -> Result<(u64, u16), Fail> {
    let page = u64::from(le32(head, 0x10));
    if !page.is_power_of_two() || !(512..=65536).contains(&page) || pos + page > log.init {
        return whole("$LogFile restart page has a bad page size");
    }
    let mut buf = vec![0u8; page as usize];
    read_stream(vol, geo, &log.runs, pos, &mut buf)?;
    fixup(&mut buf, b"RSTR", "$LogFile restart page")?;
    let ra = usize::from(le16(&buf, 0x18));
    if ra % 8 != 0 || ra + 0x10 > buf.len() {
        return whole("$LogFile restart area lies outside its page");
    }
    Ok((le64(&buf, ra), le16(&buf, ra + 0x0E)))
}

/// The ranges of clusters `$Bitmap` marks in use, and how many clusters it covers (the
/// volume's, unless it is short; bytes past its initialized size are not trusted).
fn bitmap_ranges(vol: &dyn Volume, geo: &Geo, bm: &NonResident) -> Result<(Vec<ByteRange>, u64), Fail> {
    let covered = geo.clusters.min(bm.init.saturating_mul(8));
    let bytes = covered.div_ceil(8);
    let mut set = RangeSet::new();
    let mut buf = vec![0u8; CHUNK.min(bytes as usize)];
    let mut at = 0u64;
    while at < bytes {
        let n = (bytes - at).min(CHUNK as u64) as usize;
        read_stream(vol, geo, &bm.runs, at, &mut buf[..n])?;
        set.add_bitmap(&buf[..n], covered - at * 8, at * 8 * geo.cluster, geo.cluster);
        at += n as u64;
    }
    Ok((set.finish(u64::MAX), covered))
}

/// Whether every cluster of `runs` below `covered` lies in `used` (sorted, merged).
fn marked(used: &[ByteRange], runs: &[Run], cluster: u64, covered: u64) -> bool {
    runs.iter().all(|r| {
        let Some(lcn) = r.lcn else { return true };
        let (start, end) = (lcn * cluster, (lcn + r.len).min(covered) * cluster);
        if start >= end {
            return true;
        }
        let i = used.partition_point(|u| u.end <= start);
        used.get(i).is_some_and(|u| u.start <= start && end <= u.end)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::used::FileVolume;
    use sha2::{Digest, Sha256};
    use std::collections::BTreeMap;
    use std::fs;
    use std::path::{Path, PathBuf};
    use std::process::{Child, Command, Stdio};
    use std::time::Duration;

    use crate::disk::used::testing::MemVolume as Mem;
    use crate::disk::used::testing::{partclone_used, total, zeroed_copy_to};

    /// xorshift64*: deterministic file sizes and contents.
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
        fn fill(&mut self, buf: &mut [u8]) {
            for c in buf.chunks_mut(8) {
                let v = self.next().to_le_bytes();
                c.copy_from_slice(&v[..c.len()]);
            }
        }
    }

    fn sh(cmd: &mut Command) -> std::process::Output {
        let out = cmd.output().unwrap_or_else(|e| panic!("{cmd:?}: {e}"));
        assert!(out.status.success(), "{cmd:?}: {}", String::from_utf8_lossy(&out.stderr));
        out
    }

    fn is_mounted(dir: &Path) -> bool {
        let info = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let dir = dir.to_string_lossy();
        info.lines().any(|l| l.split(' ').nth(4) == Some(&*dir))
    }

    /// An ntfs-3g mount of an image file, kept in the foreground so that unmounting can wait
    /// for it to finish writing; unmounted (and the process reaped) on drop, even on panic.
    struct Mount {
        dir: PathBuf,
        child: Child,
    }

    impl Mount {
        fn new(img: &Path, dir: &Path, ro: bool) -> Mount {
            fs::create_dir_all(dir).unwrap();
            let dir = dir.canonicalize().unwrap();
            let opts = if ro { "no_detach,ro" } else { "no_detach" };
            let child = Command::new("ntfs-3g")
                .args(["-o", opts])
                .arg(img)
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("ntfs-3g");
            let mut m = Mount { dir, child };
            for _ in 0..400 {
                if is_mounted(&m.dir) {
                    return m;
                }
                if let Ok(Some(st)) = m.child.try_wait() {
                    panic!("ntfs-3g {img:?} exited: {st}");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            panic!("ntfs-3g {img:?} did not mount");
        }
    }

    impl Drop for Mount {
        fn drop(&mut self) {
            let ok = Command::new("umount").arg(&self.dir).status().is_ok_and(|s| s.success());
            if !ok {
                let _ = self.child.kill();
                let _ = Command::new("umount").arg("-l").arg(&self.dir).status();
            }
            for _ in 0..600 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }

    fn mkfs(img: &Path, mib: u64, cluster: Option<u32>) {
        fs::File::create(img).unwrap().set_len(mib << 20).unwrap();
        let mut cmd = Command::new("mkfs.ntfs");
        cmd.args(["-F", "-f", "-Q"]);
        if let Some(c) = cluster {
            cmd.args(["-c", &c.to_string()]);
        }
        sh(cmd.arg(img));
    }

    /// Writes files of many sizes (resident, small, multi-MiB), deletes a third, writes more
    /// into the holes; returns the survivors' SHA-256 by path.
    fn populate(dir: &Path, seed: u64, budget: u64) -> BTreeMap<String, Vec<u8>> {
        let mut rng = Rng(seed);
        let mut files = BTreeMap::new();
        let mut spent = 0;
        let write = |rng: &mut Rng, name: String, files: &mut BTreeMap<_, _>| {
            let size = match rng.below(4) {
                0 => rng.below(900),
                1 => rng.below(64 << 10),
                2 => rng.below(512 << 10),
                _ => rng.below(4 << 20),
            } as usize;
            let mut data = vec![0u8; size];
            rng.fill(&mut data);
            fs::write(dir.join(&name), &data).unwrap();
            files.insert(name, Sha256::digest(&data).to_vec());
            size as u64
        };
        for d in 0..4 {
            fs::create_dir_all(dir.join(format!("d{d}"))).unwrap();
        }
        for i in 0.. {
            spent += write(&mut rng, format!("d{}/f{i}", i % 4), &mut files);
            if spent > budget {
                break;
            }
        }
        let names: Vec<String> = files.keys().cloned().collect();
        for name in names.iter().step_by(3) {
            fs::remove_file(dir.join(name)).unwrap();
            files.remove(name);
        }
        for i in 0..20 {
            write(&mut rng, format!("d{}/g{i}", i % 4), &mut files);
        }
        files
    }

    /// SHA-256 of every regular file under `root`, by path relative to it.
    fn hash_tree(root: &Path, dir: &Path, out: &mut BTreeMap<String, Vec<u8>>) {
        for e in fs::read_dir(dir).unwrap() {
            let e = e.unwrap();
            let path = e.path();
            if e.file_type().unwrap().is_dir() {
                hash_tree(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.insert(rel, Sha256::digest(fs::read(&path).unwrap()).to_vec());
            }
        }
    }

    fn used(img: &Path) -> Vec<ByteRange> {
        match probe(&FileVolume::open(img).unwrap()).unwrap() {
            Verdict::Used { fs, ranges, .. } if fs == "ntfs" => ranges,
            v => panic!("{img:?}: {v:?}"),
        }
    }

    /// Tests 1 and 2: a filled, partly emptied volume against partclone, then a copy with
    /// only our ranges kept must check clean and hold the same files.
    fn real_volume(mib: u64, cluster: Option<u32>, seed: u64) {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        mkfs(&img, mib, cluster);
        let files = {
            let m = Mount::new(&img, &tmp.path().join("mnt"), false);
            populate(&m.dir, seed, (mib << 20) / 2)
        };
        let ours = used(&img);
        let theirs = partclone_used("ntfs", &img);
        for r in &theirs {
            let i = ours.partition_point(|o| o.end <= r.start);
            assert!(ours.get(i).is_some_and(|o| o.start <= r.start && r.end <= o.end), "{r:x?}");
        }
        let (o, t) = (total(&ours), total(&theirs));
        let c = u64::from(cluster.unwrap_or(4096));
        eprintln!("ntfs {mib} MiB cluster {c}: partclone {t} bytes, ours {o} bytes (+{})", o - t);
        assert!(o <= t + 2 * c + (64 << 10), "ours {o} vs partclone {t}");

        let copy = tmp.path().join("copy");
        zeroed_copy_to(&img, &ours, &copy);
        sh(Command::new("ntfsfix").arg("-n").arg(&copy));
        let m = Mount::new(&copy, &tmp.path().join("copy-mnt"), true);
        let mut seen = BTreeMap::new();
        hash_tree(&m.dir, &m.dir, &mut seen);
        assert_eq!(seen, files);
    }

    #[test]
    fn real_volume_4k_clusters() {
        real_volume(200, None, 1);
    }

    #[test]
    fn real_volume_8k_clusters() {
        real_volume(200, Some(8192), 2);
    }

    #[test]
    fn real_volume_512_byte_clusters() {
        // MFT records (1 KiB) span two clusters: records are read across runs.
        real_volume(64, Some(512), 3);
    }

    #[test]
    fn real_volume_64k_clusters() {
        real_volume(128, Some(65536), 4);
    }

    /// A fresh (never mounted) small volume, in memory.
    fn fresh(mib: u64) -> Mem {
        let tmp = tempfile::tempdir().unwrap();
        let img = tmp.path().join("img");
        mkfs(&img, mib, None);
        Mem(fs::read(&img).unwrap())
    }

    /// The geometry and the runs of `$DATA` of MFT record `n`, by this module's own parser.
    fn system_file(vol: &Mem, n: u64) -> (Geo, Vec<Run>) {
        let geo = geometry(&vol.0[..512], vol.len()).unwrap();
        let mft = data_runs(&first_record(vol, &geo).unwrap(), &geo, "$MFT").unwrap().runs;
        let rec = read_record(vol, &geo, &mft, n).unwrap();
        (geo.clone(), data_runs(&rec, &geo, "x").unwrap_or(NonResident { runs: mft, init: 0 }).runs)
    }

    /// Where byte `pos` of a stream mapped by `runs` lies on the volume.
    fn on_disk(geo: &Geo, runs: &[Run], pos: u64) -> usize {
        let vcn = pos / geo.cluster;
        let r = runs.iter().find(|r| vcn >= r.vcn && vcn - r.vcn < r.len).unwrap();
        ((r.lcn.unwrap() + vcn - r.vcn) * geo.cluster + pos % geo.cluster) as usize
    }

    /// Where byte `off` of MFT record `n` lies (asserting it is not a fixup-protected byte).
    fn record_byte(vol: &Mem, n: u64, off: usize) -> usize {
        assert!(off % FIXUP_STRIDE < FIXUP_STRIDE - 2);
        let (geo, mft) = system_file(vol, 0);
        on_disk(&geo, &mft, n * geo.record as u64 + off as u64)
    }

    fn whole_reason(vol: &Mem) -> String {
        match probe(vol).unwrap() {
            Verdict::Whole { fs, reason } if fs == "ntfs" => reason,
            v => panic!("expected Whole, got {v:?}"),
        }
    }

    fn is_used(vol: &Mem) -> bool {
        matches!(probe(vol).unwrap(), Verdict::Used { .. })
    }

    #[test]
    fn dirty_volume_is_read_whole() {
        let mut vol = fresh(16);
        assert!(is_used(&vol), "mkntfs leaves the log empty and the volume clean");
        // ntfs-3g never sets the dirty flag (not even when killed mid-write): set it by hand.
        let (geo, mft) = system_file(&vol, 0);
        let mut rec = vec![0u8; geo.record];
        read_stream(&vol, &geo, &mft, 3 * geo.record as u64, &mut rec).unwrap();
        fixup(&mut rec, b"FILE", "test").unwrap();
        let attr = find_attr(&rec, VOLUME_INFORMATION).unwrap().unwrap();
        let off = attr.as_ptr() as usize - rec.as_ptr() as usize + usize::from(le16(attr, 0x14));
        let at = record_byte(&vol, 3, off + 0x0A);
        vol.0[at] |= 1;
        assert!(whole_reason(&vol).contains("dirty"));
    }

    /// A 4 KiB `$LogFile` restart page with the update sequence applied as on disk.
    fn restart_page(magic: &[u8; 4], flags: u16, lsn: u64) -> Vec<u8> {
        let mut p = vec![0u8; 4096];
        p[0..4].copy_from_slice(magic);
        p[4..6].copy_from_slice(&0x1Eu16.to_le_bytes());
        p[6..8].copy_from_slice(&9u16.to_le_bytes());
        p[0x10..0x14].copy_from_slice(&4096u32.to_le_bytes());
        p[0x14..0x18].copy_from_slice(&4096u32.to_le_bytes());
        p[0x18..0x1A].copy_from_slice(&0x30u16.to_le_bytes());
        p[0x1A] = 1;
        p[0x1C] = 1;
        p[0x30..0x38].copy_from_slice(&lsn.to_le_bytes());
        p[0x3E..0x40].copy_from_slice(&flags.to_le_bytes());
        p[0x1E..0x20].copy_from_slice(&7u16.to_le_bytes());
        for i in 1..9 {
            p.copy_within(i * 512 - 2..i * 512, 0x1E + 2 * i);
            p[i * 512 - 2..i * 512].copy_from_slice(&7u16.to_le_bytes());
        }
        p
    }

    #[test]
    fn logfile_restart_area_decides() {
        let base = fresh(16);
        let (geo, log) = system_file(&base, 2);
        let with = |pages: &[(u64, Vec<u8>)]| {
            let mut vol = Mem(base.0.clone());
            for (pos, page) in pages {
                for (i, b) in page.iter().enumerate() {
                    vol.0[on_disk(&geo, &log, pos + i as u64)] = *b;
                }
            }
            vol
        };
        assert!(is_used(&with(&[(0, restart_page(b"RSTR", 2, 5))])));
        let r = whole_reason(&with(&[(0, restart_page(b"RSTR", 0, 5))]));
        assert!(r.contains("$LogFile is not clean"), "{r}");
        // The newer of the two restart areas counts.
        let two = |a, b| with(&[(0, restart_page(b"RSTR", a, 5)), (4096, restart_page(b"RSTR", b, 9))]);
        assert!(is_used(&two(0, 2)));
        assert!(whole_reason(&two(2, 0)).contains("not clean"));
        assert!(whole_reason(&with(&[(0, restart_page(b"CHKD", 2, 5))])).contains("chkdsk"));
        assert!(whole_reason(&with(&[(0, restart_page(b"XXXX", 2, 5))])).contains("no readable"));
        let mut torn = restart_page(b"RSTR", 2, 5);
        torn[1022] ^= 1;
        assert!(whole_reason(&with(&[(0, torn)])).contains("update sequence"));
    }

    #[test]
    fn bitmap_attribute_list_is_read_whole() {
        let mut vol = fresh(16);
        let (geo, _) = system_file(&vol, 0);
        let mut rec = vec![0u8; geo.record];
        let (_, mft) = system_file(&vol, 0);
        read_stream(&vol, &geo, &mft, 6 * geo.record as u64, &mut rec).unwrap();
        // Turn its first attribute ($STANDARD_INFORMATION) into an $ATTRIBUTE_LIST.
        let at = record_byte(&vol, 6, usize::from(le16(&rec, 0x14)));
        vol.0[at] = 0x20;
        assert!(whole_reason(&vol).contains("attribute list"));
    }

    #[test]
    fn bitmap_must_mark_the_logfile() {
        let mut vol = fresh(16);
        let (geo, log) = system_file(&vol, 2);
        let (_, bitmap) = system_file(&vol, 6);
        let lcn = log[0].lcn.unwrap();
        vol.0[on_disk(&geo, &bitmap, lcn / 8)] &= !(1 << (lcn % 8));
        assert!(whole_reason(&vol).contains("$LogFile"));
    }

    #[test]
    fn not_ntfs_and_truncated() {
        assert_eq!(probe(&Mem(vec![0; 100])).unwrap(), Verdict::NotMine);
        assert_eq!(probe(&Mem(vec![0; 1 << 20])).unwrap(), Verdict::NotMine);
        let vol = fresh(16);
        let len = vol.0.len();
        for n in [512, 4096, 65536, 1 << 20, len / 2, len - 4096, len - 513] {
            let r = whole_reason(&Mem(vol.0[..n].to_vec()));
            assert!(r.contains("more sectors"), "{n}: {r}");
        }
        // The volume without its backup boot sector still probes (the sectors the boot sector counts).
        assert!(is_used(&Mem(vol.0[..len - 512].to_vec())));
    }

    #[test]
    fn runlists_decode() {
        // 0x18 clusters at 0x5634; 0x10 at 0x5634 - 0x20; a sparse 4; then the end.
        let mp = [0x21, 0x18, 0x34, 0x56, 0x11, 0x10, 0xE0, 0x01, 0x04, 0x00];
        let runs = decode_runs(&mp, 1 << 20).unwrap();
        let want = [(0, Some(0x5634), 0x18), (0x18, Some(0x5614), 0x10), (0x28, None, 4)];
        let want: Vec<Run> = want.iter().map(|&(vcn, lcn, len)| Run { vcn, lcn, len }).collect();
        assert_eq!(runs, want);
        assert_eq!(decode_runs(&mp, 0x5640), None, "past the volume");
        assert_eq!(decode_runs(&mp[..9], 1 << 20), None, "no terminator");
        assert_eq!(decode_runs(&[0x11, 0x01, 0x80, 0x00], 1 << 20), None, "negative LCN");
    }

    #[test]
    fn garbage_and_corruption_do_not_panic() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        // Random data behind a valid-looking boot sector.
        for i in 0..300 {
            let mut buf = vec![0u8; 256 << 10];
            rng.fill(&mut buf);
            buf[3..11].copy_from_slice(b"NTFS    ");
            buf[510..512].copy_from_slice(&[0x55, 0xAA]);
            if i % 2 == 0 {
                buf[0x0B..0x0E].copy_from_slice(&[0, 2, 1]);
                buf[0x28..0x30].copy_from_slice(&511u64.to_le_bytes());
                buf[0x30..0x38].copy_from_slice(&rng.below(40).to_le_bytes());
                buf[0x40] = [0xF6, 0xF7, 1, 2][i % 4];
            }
            let _ = probe(&Mem(buf));
        }
        // Random bytes changed in a real volume's metadata.
        let mut vol = fresh(16);
        let (geo, mft) = system_file(&vol, 0);
        let (_, log) = system_file(&vol, 2);
        let (_, bitmap) = system_file(&vol, 6);
        let mut hot: Vec<usize> = (0..512).collect();
        hot.extend((0..8 * geo.record as u64).map(|p| on_disk(&geo, &mft, p)));
        hot.extend((0..8192).map(|p| on_disk(&geo, &log, p)));
        hot.extend((0..64).map(|p| on_disk(&geo, &bitmap, p)));
        for _ in 0..3000 {
            let picks: Vec<usize> = (0..1 + rng.below(4)).map(|_| hot[rng.below(hot.len() as u64) as usize]).collect();
            let saved: Vec<u8> = picks.iter().map(|&p| vol.0[p]).collect();
            for &p in &picks {
                vol.0[p] = if rng.below(2) == 0 { rng.next() as u8 } else { vol.0[p] ^ 1 << rng.below(8) };
            }
            let _ = probe(&vol);
            for (&p, &b) in picks.iter().zip(&saved).rev() {
                vol.0[p] = b;
            }
        }
        assert!(is_used(&vol));
    }
}
