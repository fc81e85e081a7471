//! The checks behind each fuzz target, as plain functions of the input bytes: libFuzzer calls
//! them from `fuzz_targets/` (`scripts/fuzz`), and `tests/fuzz_replay.rs` in the main crate runs
//! every committed corpus and regression input through them in `cargo test` (no nightly, no
//! instrumented build). A function panics exactly when the fuzzer should report a crash.

use arbitrary::{Arbitrary, Unstructured};
use ferry::agent::target::check::{plan, TargetDisk};
use ferry::disk::{DiskIdentity, PartitionTable, TableKind};
use ferry::wire::*;
use std::io::Write;

/// Partition tables from arbitrary disk bytes: GPT (primary, backup, both damaged), MBR with
/// EBR chains (including chains that loop), any sector size. Reading must never panic, loop
/// forever or read outside the disk; whatever it reports must be within the disk.
pub fn partition_tables(data: &[u8]) {
    let Some((&mode, disk)) = data.split_first() else { return };
    let sector = if mode & 1 == 0 { 512 } else { 4096 };
    // Small disks with the input at the start (the tables) and, with bit 1, also at the end
    // (where a backup GPT lives).
    let size = (disk.len() as u64).max(34 * sector).next_multiple_of(sector) * if mode & 2 == 0 { 1 } else { 2 };
    let mut f = tempfile::tempfile_in("/dev/shm").or_else(|_| tempfile::tempfile()).unwrap();
    f.set_len(size).unwrap();
    f.write_all(disk).unwrap();
    if mode & 2 != 0 {
        use std::os::unix::fs::FileExt;
        f.write_all_at(disk, size - disk.len() as u64).unwrap();
    }
    let path = format!("/proc/self/fd/{}", std::os::fd::AsRawFd::as_raw_fd(&f));
    let Ok(reader) = ferry::disk::DiskReader::open(std::path::Path::new(&path), Some(sector as u32)) else { return };
    if let Ok(t) = ferry::disk::read_partition_table(&reader) {
        for p in &t.partitions {
            assert!(p.start.checked_add(p.size).is_some(), "a partition that overflows: {p:?}");
        }
    }
}

/// Manifests as a source sends them: parsing, validation, and the whole-disk hash recomputed
/// from the ids. Validation must never panic, and a manifest it accepts must recompute to the
/// root it states.
pub fn manifest(data: &[u8]) {
    let Ok(m) = serde_json::from_slice::<ferry::image::Manifest>(data) else { return };
    if m.validate().is_ok() {
        assert_eq!(m.recompute_root().expect("a valid manifest has a root"), m.blake3);
        for i in 0..m.chunks.len().min(64) as u64 {
            let (offset, len) = m.chunk_range(i);
            assert!(offset + len <= m.size);
        }
    }
}

fn decode<T: serde::de::DeserializeOwned>(data: &[u8]) -> Option<T> {
    serde_json::from_slice(data).ok()
}

/// Every JSON body the receiver's API takes, as a hostile client may send it: decoding must
/// never panic, and what decodes must survive the checks the receiver runs on it.
pub fn api_bodies(data: &[u8]) {
    let _ = decode::<CreateJob>(data);
    let _ = decode::<CreateEnrollment>(data);
    if let Some(r) = decode::<EnrollRequest>(data) {
        let _ = ferry::machine::same_machine(&r.machine, &r.machine);
    }
    let _ = decode::<Register>(data);
    let _ = decode::<BeginDisk>(data);
    let _ = decode::<MissingQuery>(data);
    let _ = decode::<ProgressReport>(data);
    let _ = decode::<Failure>(data).map(|f| Code::parse(&f.code));
    let _ = decode::<TargetRegister>(data);
    let _ = decode::<TargetBegin>(data);
    let _ = decode::<TargetProgress>(data);
    let _ = decode::<TargetDone>(data);
    if let Some(spec) = decode::<TargetSpec>(data) {
        let _ = spec.names_a_target();
    }
}

/// The live image's configuration: a kernel command line (the whole line, everyone's
/// parameters) and a `ferry.toml` from a stick anyone may have edited. Parsing never panics.
pub fn live_config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    // The first line is the command line, the rest the file.
    let (line, toml) = text.split_once('\n').unwrap_or((&text, ""));
    let mut cfg = ferry::init::cmdline::LiveConfig::from_cmdline(line);
    let _ = cfg.merge_toml(toml, line);
    let _ = cfg.missing_keys();
}

/// A chunk upload's zstd body, decompressed as the receiver does (bounded by the chunk's
/// length): never more than that many bytes, never a panic, whatever the frame claims.
pub fn chunk_body(data: &[u8]) {
    let Some((&len, body)) = data.split_first() else { return };
    let expected = (len as usize + 1) * 4096;
    if let Ok(out) = zstd::bulk::decompress(body, expected) {
        assert!(out.len() <= expected);
        let _ = ferry::image::treehash::chunk_id(&out, 0, out.len() as u64, expected as u64);
    }
}

#[derive(Arbitrary, Debug)]
struct Disk {
    size: u16,
    big_sectors: bool,
    serial: Option<u8>,
    wwn: Option<u8>,
    guid: Option<u8>,
}

fn identity(d: &Disk, i: usize) -> DiskIdentity {
    DiskIdentity {
        path: format!("/dev/d{i}"),
        kind: "block".into(),
        size: u64::from(d.size) << 20,
        logical_sector_size: if d.big_sectors { 4096 } else { 512 },
        physical_sector_size: 4096,
        serial: d.serial.map(|s| format!("SN-{s}")),
        wwn: d.wwn.map(|w| format!("0x50{w:02x}")),
        ..Default::default()
    }
}

/// The target's plan from arbitrary disk reports (its own disks and the source's): never a
/// panic, and a plan it makes maps every source disk once, onto distinct target disks that are
/// large enough, with the same sector size, never a source disk.
pub fn target_plan(data: &[u8]) {
    let mut u = Unstructured::new(data);
    let (Ok(src), Ok(tgt), Ok(explicit), Ok(rewriting), Ok(named)) = (
        Vec::<Disk>::arbitrary(&mut u),
        Vec::<Disk>::arbitrary(&mut u),
        bool::arbitrary(&mut u),
        bool::arbitrary(&mut u),
        Vec::<u8>::arbitrary(&mut u),
    ) else {
        return;
    };
    let sources: Vec<SourceDisk> = src
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, d)| {
            let id = identity(d, i);
            let mut table = PartitionTable::empty(TableKind::Gpt, id.logical_sector_size);
            table.disk_guid = d.guid.map(|g| format!("GUID-{g}"));
            SourceDisk {
                index: i as u32,
                size: id.size,
                identity: id,
                partition_table: table,
                chunk_size: 1 << 22,
                blake3: String::new(),
                bad_ranges: vec![],
            }
        })
        .collect();
    let targets: Vec<TargetDisk> = tgt
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, d)| TargetDisk { identity: identity(d, 100 + i), gpt_disk_guid: d.guid.map(|g| format!("GUID-{g}")) })
        .collect();
    let named: Vec<String> = named.iter().take(4).map(|n| format!("SN-{n}")).collect();
    if let Ok(mapping) = plan(&sources, &targets, explicit, &named, rewriting) {
        assert_eq!(mapping.len(), sources.len());
        let mut used = std::collections::HashSet::new();
        for (s, t) in &mapping {
            assert!(used.insert(*t), "target disk {t} used twice");
            let (s, t) = (&sources[*s as usize], &targets[*t]);
            assert!(t.identity.size >= s.size);
            assert_eq!(t.identity.logical_sector_size, s.identity.logical_sector_size);
        }
    }
}

/// A volume of the input's bytes followed by zeros up to its length.
struct BytesVolume<'a> {
    data: &'a [u8],
    len: u64,
}

impl ferry::disk::used::Volume for BytesVolume<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        let end = offset.checked_add(buf.len() as u64).filter(|&e| e <= self.len);
        if end.is_none() {
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "past the volume's end"));
        }
        buf.fill(0);
        if let Some(have) = self.data.get(offset.min(self.data.len() as u64) as usize..) {
            let n = have.len().min(buf.len());
            buf[..n].copy_from_slice(&have[..n]);
        }
        Ok(())
    }
}

/// Filesystems as used-blocks mode reads them (ext2/3/4, XFS, NTFS, FAT, exFAT, swap, LVM2):
/// the first byte k makes the volume 2^(k % 16) times the rest's length (a truncated large
/// filesystem keeps its size; the missing bytes read as zeros). Probing must never panic, and
/// what it says is used must be sorted, disjoint and within the volume.
pub fn filesystems(data: &[u8]) {
    let Some((&k, bytes)) = data.split_first() else { return };
    let len = (bytes.len() as u64).max(1) << (k % 16);
    let vol = BytesVolume { data: bytes, len };
    if let ferry::disk::used::Verdict::Used { ranges, .. } = ferry::disk::used::probe(&vol) {
        let mut end = 0;
        for r in &ranges {
            assert!(r.start >= end && r.start < r.end && r.end <= len, "bad ranges {ranges:?} in {len} bytes");
            end = r.end;
        }
    }
}
