//! Reading partition tables (GPT with the `gpt` crate, MBR with `mbrman`) and reporting damage.
//!
//! ferry copies whole disks, so the table is information for the people and checks around a
//! migration: what is on the disk, whether it is healthy, where the backup GPT sits. Damage is
//! reported, never repaired and never hidden. Nothing here panics on any input: header fields are
//! checked before a crate sees them, and the crate calls run under `catch_unwind` as well.

use std::io::{self, Read, Seek, SeekFrom, Write};
use std::panic::{catch_unwind, AssertUnwindSafe};

use serde::{Deserialize, Serialize};

use super::source::DiskReader;
use super::types;

/// What kind of table a disk carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TableKind {
    /// A GPT was read (from the primary or the backup header; see `problems`).
    Gpt,
    /// An MBR (DOS) table with primary and possibly logical partitions.
    Mbr,
    /// No partition table.
    None,
    /// There are signs of a table, but none could be read (see `problems`).
    Damaged,
}

/// One partition, in bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partition {
    /// Entry number as the OS numbers it (GPT entry index; MBR slot 1-4, logical from 5).
    pub number: u32,
    /// First byte.
    pub start: u64,
    /// Length in bytes.
    pub size: u64,
    /// GPT type GUID (uppercase) or MBR type id (`0x83`).
    #[serde(rename = "type")]
    pub type_id: String,
    /// A readable name for the type, when it is a well-known one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub type_name: Option<String>,
    /// GPT partition name.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub name: Option<String>,
    /// GPT unique partition GUID (uppercase).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub guid: Option<String>,
    /// GPT attribute bits.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub attributes: Option<u64>,
    /// MBR active (bootable) flag.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub bootable: Option<bool>,
    /// MBR logical partition inside the extended one.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub logical: Option<bool>,
}

/// The partition table of a disk as found.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionTable {
    pub kind: TableKind,
    /// The sector size the table was read with.
    pub sector_size: u32,
    /// GPT disk GUID (uppercase).
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub disk_guid: Option<String>,
    /// MBR disk signature, `0x` + 8 hex digits.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub mbr_signature: Option<String>,
    /// Everything found wrong, in words; empty for a healthy table.
    pub problems: Vec<String>,
    pub partitions: Vec<Partition>,
}

impl PartitionTable {
    pub fn empty(kind: TableKind, sector_size: u32) -> Self {
        Self { kind, sector_size, disk_guid: None, mbr_signature: None, problems: vec![], partitions: vec![] }
    }
}

/// Reads the partition table of `disk` with its logical sector size.
pub fn read_partition_table(disk: &DiskReader) -> io::Result<PartitionTable> {
    let ss = disk.logical_sector_size();
    let size = disk.size();
    if size < 2 * u64::from(ss) {
        // Too small to hold even a sector-0 table and a GPT header: raw data.
        let mut t = PartitionTable::empty(TableKind::None, ss);
        if size >= 512 {
            let mbr = read_sector0(disk)?;
            if mbr.signature_ok {
                t.problems
                    .push("sector 0 has a boot signature, but the disk is too small for a partition table".into());
            }
        }
        return Ok(t);
    }
    let sector0 = read_sector0(disk)?;
    let last_lba = size / u64::from(ss) - 1;
    let primary = probe_gpt_header(disk, 1, last_lba)?;
    let backup_at_end = probe_gpt_header(disk, last_lba, last_lba)?;

    let mut table = match (&primary, &backup_at_end) {
        (Err(p), Err(b)) if sector0.has_protective_entry() => {
            let mut t = PartitionTable::empty(TableKind::Damaged, ss);
            t.problems
                .push(format!("protective MBR (type 0xee) but no valid GPT: primary header: {p}; backup header: {b}"));
            t
        }
        (Err(_), Err(_)) if sector0.signature_ok => read_mbr(disk, &sector0)?,
        (Err(_), Err(_)) => PartitionTable::empty(TableKind::None, ss),
        _ => read_gpt(disk, &sector0, &primary, &backup_at_end, last_lba)?,
    };

    if table.kind != TableKind::Gpt {
        if let Some(other) = other_sector_size(ss) {
            if other_size_has_gpt(disk, other)? {
                table.problems.push(format!(
                    "a GPT header sits where a disk with {other}-byte sectors keeps it, but this disk is read with {ss}-byte sectors"
                ));
            }
        }
    }
    check_layout(&mut table, size);
    Ok(table)
}

fn other_sector_size(ss: u32) -> Option<u32> {
    match ss {
        512 => Some(4096),
        4096 => Some(512),
        _ => None,
    }
}

/// True when a GPT header signature sits at LBA 1 or at the last LBA of a disk with `ss`-byte
/// sectors (a primary header, or the backup of a table whose primary is gone).
fn other_size_has_gpt(disk: &DiskReader, ss: u32) -> io::Result<bool> {
    let ss = u64::from(ss);
    let lbas = disk.size() / ss;
    if lbas < 2 {
        return Ok(false);
    }
    for lba in [1, lbas - 1] {
        let mut sig = [0u8; 8];
        read_at(disk, &mut sig, lba * ss)?;
        if &sig == b"EFI PART" {
            return Ok(true);
        }
    }
    Ok(false)
}

fn read_at(disk: &DiskReader, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    disk.file().read_exact_at(buf, offset)
}

/// The four primary entries of sector 0, parsed without trusting anything.
struct Sector0 {
    signature_ok: bool,
    disk_signature: [u8; 4],
    /// (boot flag, type, start LBA, sectors)
    entries: [(u8, u8, u32, u32); 4],
}

impl Sector0 {
    fn has_protective_entry(&self) -> bool {
        self.signature_ok && self.entries.iter().any(|e| e.1 == 0xee)
    }
    fn used(&self) -> impl Iterator<Item = &(u8, u8, u32, u32)> {
        self.entries.iter().filter(|e| e.1 != 0)
    }
}

fn read_sector0(disk: &DiskReader) -> io::Result<Sector0> {
    let mut b = [0u8; 512];
    read_at(disk, &mut b, 0)?;
    let mut entries = [(0u8, 0u8, 0u32, 0u32); 4];
    for (i, e) in entries.iter_mut().enumerate() {
        let o = 446 + i * 16;
        let le32 = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        *e = (b[o], b[o + 4], le32(o + 8), le32(o + 12));
    }
    Ok(Sector0 {
        signature_ok: b[510] == 0x55 && b[511] == 0xaa,
        disk_signature: [b[440], b[441], b[442], b[443]],
        entries,
    })
}

/// The fields of a GPT header that passed every check.
#[derive(Debug, Clone)]
struct GptHeaderInfo {
    backup_lba: u64,
}

/// Checks the GPT header at `lba`: signature, header CRC, its own LBA, the entry array's shape
/// and place, and the entry array's CRC. The error says what is wrong, in words.
fn probe_gpt_header(disk: &DiskReader, lba: u64, last_lba: u64) -> io::Result<Result<GptHeaderInfo, String>> {
    let ss = u64::from(disk.logical_sector_size());
    let mut sector = vec![0u8; ss as usize];
    match read_at(disk, &mut sector, lba * ss) {
        // A failing disk's header sector: reported like any damage; the other header may do.
        Err(e) if e.raw_os_error() == Some(libc::EIO) => return Ok(Err("unreadable (I/O error)".into())),
        r => r?,
    }
    if &sector[0..8] != b"EFI PART" {
        return Ok(Err("missing (no GPT signature)".into()));
    }
    let le32 = |at: usize| u32::from_le_bytes(sector[at..at + 4].try_into().unwrap());
    let le64 = |at: usize| u64::from_le_bytes(sector[at..at + 8].try_into().unwrap());
    let header_size = le32(12) as usize;
    if !(92..=sector.len()).contains(&header_size) {
        return Ok(Err(format!("corrupt (header size {header_size})")));
    }
    let stored_crc = le32(16);
    let mut h = sector[..header_size].to_vec();
    h[16..20].fill(0);
    if crc32fast::hash(&h) != stored_crc {
        return Ok(Err("corrupt (header CRC mismatch)".into()));
    }
    let current = le64(24);
    if current != lba {
        return Ok(Err(format!("corrupt (says it is at LBA {current}, found at LBA {lba})")));
    }
    let part_start = le64(72);
    let num_parts = le32(80);
    let part_size = le32(84);
    let entries_crc = le32(88);
    if part_size != 128 {
        return Ok(Err(format!("unsupported (partition entries of {part_size} bytes; only 128 is read)")));
    }
    if num_parts == 0 || num_parts > 16384 {
        return Ok(Err(format!("corrupt ({num_parts} partition entries)")));
    }
    let array_len = u64::from(num_parts) * 128;
    let array_end_lba = part_start.saturating_add(array_len.div_ceil(ss));
    if part_start < 1 || array_end_lba > last_lba + 1 {
        return Ok(Err(format!("corrupt (partition entries at LBA {part_start} lie outside the disk)")));
    }
    let mut array = vec![0u8; array_len as usize];
    read_at(disk, &mut array, part_start * ss)?;
    if crc32fast::hash(&array) != entries_crc {
        return Ok(Err("partition entries corrupt (entries CRC mismatch)".into()));
    }
    Ok(Ok(GptHeaderInfo { backup_lba: le64(32) }))
}

/// What is wrong with one of the two GPT headers when the other is good.
fn header_problems(
    disk: &DiskReader,
    primary: &Result<GptHeaderInfo, String>,
    backup_at_end: &Result<GptHeaderInfo, String>,
    last_lba: u64,
) -> io::Result<Vec<String>> {
    let mut problems = vec![];
    match (primary, backup_at_end) {
        (Ok(p), Err(b)) if p.backup_lba != last_lba => {
            let elsewhere = if p.backup_lba < last_lba {
                probe_gpt_header(disk, p.backup_lba, last_lba)?
            } else {
                Err("beyond the end of the disk".into())
            };
            problems.push(match elsewhere {
                Ok(_) => format!(
                    "backup GPT header is at LBA {}, not at the last LBA {last_lba} (disk copied onto a larger one?)",
                    p.backup_lba
                ),
                Err(e) => format!(
                    "backup GPT header expected at LBA {} is {e}; the disk's last LBA is {last_lba}",
                    p.backup_lba
                ),
            });
        }
        (Ok(_), Err(b)) => problems.push(format!("backup GPT header at the last LBA {last_lba} is {b}")),
        (Err(p), Ok(_)) => {
            problems.push(format!("primary GPT header at LBA 1 is {p}; the table was read from the backup"))
        }
        _ => {}
    }
    Ok(problems)
}

fn read_gpt(
    disk: &DiskReader,
    sector0: &Sector0,
    primary: &Result<GptHeaderInfo, String>,
    backup_at_end: &Result<GptHeaderInfo, String>,
    last_lba: u64,
) -> io::Result<PartitionTable> {
    let ss = disk.logical_sector_size();
    let mut t = PartitionTable::empty(TableKind::Gpt, ss);
    t.problems = header_problems(disk, primary, backup_at_end, last_lba)?;
    if !sector0.has_protective_entry() {
        t.problems.push("no protective MBR in sector 0 (tools that only know MBR may overwrite this disk)".into());
    } else if sector0.used().count() > 1 {
        t.problems.push("hybrid MBR: sector 0 lists MBR partitions beside the protective 0xee entry".into());
    }

    // The gpt crate prefers the primary header; when the primary is bad, hide LBA 1 so that it
    // falls back to the backup we checked.
    let hide_primary = primary.is_err();
    let lb = match ss {
        4096 => gpt::disk::LogicalBlockSize::Lb4096,
        _ => gpt::disk::LogicalBlockSize::Lb512,
    };
    let device = HidePrimary { inner: disk.cursor(), hide: hide_primary.then_some(u64::from(ss)..2 * u64::from(ss)) };
    let opened = catch_unwind(AssertUnwindSafe(move || {
        gpt::GptConfig::new().writable(false).logical_block_size(lb).open_from_device(device)
    }));
    let gpt = match opened {
        Ok(Ok(g)) => g,
        Ok(Err(e)) => {
            t.kind = TableKind::Damaged;
            t.problems.push(format!("GPT could not be read: {e}"));
            return Ok(t);
        }
        Err(_) => {
            t.kind = TableKind::Damaged;
            t.problems.push("GPT could not be read: the gpt crate rejected it".into());
            return Ok(t);
        }
    };
    t.disk_guid = Some(gpt.guid().hyphenated().to_string().to_uppercase());
    for (&number, p) in gpt.partitions() {
        if !p.is_used() {
            continue;
        }
        if p.last_lba < p.first_lba {
            t.problems
                .push(format!("partition {number} ends (LBA {}) before it starts (LBA {})", p.last_lba, p.first_lba));
            continue;
        }
        t.partitions.push(gpt_partition(number, p, ss));
    }
    Ok(t)
}

fn gpt_partition(number: u32, p: &gpt::partition::Partition, ss: u32) -> Partition {
    let type_guid = p.part_type_guid.guid.hyphenated().to_string().to_uppercase();
    Partition {
        number,
        start: p.first_lba * u64::from(ss),
        size: (p.last_lba - p.first_lba + 1) * u64::from(ss),
        type_name: types::gpt_type_name(&type_guid).map(str::to_owned),
        type_id: type_guid,
        name: Some(p.name.clone()),
        guid: Some(p.part_guid.hyphenated().to_string().to_uppercase()),
        attributes: Some(p.flags),
        bootable: None,
        logical: None,
    }
}

fn read_mbr(disk: &DiskReader, sector0: &Sector0) -> io::Result<PartitionTable> {
    let ss = disk.logical_sector_size();
    let mut t = PartitionTable::empty(TableKind::Mbr, ss);
    if sector0.entries.iter().any(|e| e.0 != 0 && e.0 != 0x80) {
        // Sector 0 ends in 55 AA but its entries are not partition entries: a boot sector of a
        // filesystem written straight onto the disk, or a boot loader with no table.
        t.kind = TableKind::None;
        t.problems.push(
            "sector 0 has a boot signature but no valid partition entries (filesystem on the whole disk?)".into(),
        );
        return Ok(t);
    }
    t.mbr_signature = Some(format!("0x{:08x}", u32::from_le_bytes(sector0.disk_signature)));
    let entries: Vec<(u8, u32)> = sector0.used().map(|e| (e.1, e.2)).collect();
    if let Some(problem) = super::mbr_guard::damage(disk, &entries)? {
        t.kind = TableKind::Damaged;
        t.problems.push(problem);
        return Ok(t);
    }
    let mut cursor = disk.cursor();
    let parsed = catch_unwind(AssertUnwindSafe(|| mbrman::MBR::read_from(&mut cursor, ss)));
    let mbr = match parsed {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => {
            t.kind = TableKind::Damaged;
            t.problems.push(format!("MBR could not be read: {e}"));
            return Ok(t);
        }
        Err(_) => {
            t.kind = TableKind::Damaged;
            t.problems.push("MBR could not be read: the mbrman crate rejected it".into());
            return Ok(t);
        }
    };
    for (number, e) in mbr.iter() {
        if !e.is_used() {
            continue;
        }
        t.partitions.push(Partition {
            number: number as u32,
            start: u64::from(e.starting_lba) * u64::from(ss),
            size: u64::from(e.sectors) * u64::from(ss),
            type_id: format!("0x{:02x}", e.sys),
            type_name: types::mbr_type_name(e.sys).map(str::to_owned),
            name: None,
            guid: None,
            attributes: None,
            bootable: Some(e.boot == 0x80),
            logical: Some(number > 4),
        });
    }
    // An MBR counts sectors in 32 bits: on a larger disk the tail lies beyond any partition it
    // can describe (it is still copied: ferry copies whole disks).
    let reach = (u64::from(u32::MAX) + 1) * u64::from(ss);
    if disk.size() > reach {
        t.problems.push(format!(
            "the disk is {} bytes, but an MBR reaches only its first {reach} bytes: the rest can be in no partition of this table",
            disk.size()
        ));
    }
    Ok(t)
}

/// Partitions past the end of the disk, overlapping partitions, logical partitions outside
/// their extended partition.
fn check_layout(t: &mut PartitionTable, disk_size: u64) {
    let is_extended = |p: &Partition| matches!(p.type_id.as_str(), "0x05" | "0x0f" | "0x85");
    for p in &t.partitions {
        let end = p.start.saturating_add(p.size);
        if end > disk_size {
            t.problems.push(format!(
                "partition {} ends at byte {end}, past the end of the disk ({disk_size} bytes)",
                p.number
            ));
        }
    }
    let extended: Vec<&Partition> = t.partitions.iter().filter(|p| is_extended(p)).collect();
    for p in t.partitions.iter().filter(|p| p.logical == Some(true)) {
        let inside = extended.iter().any(|x| p.start >= x.start && p.start + p.size <= x.start + x.size);
        if !inside {
            t.problems.push(format!("logical partition {} lies outside the extended partition", p.number));
        }
    }
    let mut problems = vec![];
    for (i, a) in t.partitions.iter().enumerate() {
        for b in &t.partitions[i + 1..] {
            // An extended partition contains its logical partitions by design.
            let nested = (is_extended(a) && b.logical == Some(true)) || (is_extended(b) && a.logical == Some(true));
            if nested || a.size == 0 || b.size == 0 {
                continue;
            }
            if a.start < b.start.saturating_add(b.size) && b.start < a.start.saturating_add(a.size) {
                problems.push(format!("partitions {} and {} overlap", a.number, b.number));
            }
        }
    }
    t.problems.extend(problems);
}

/// Reads as zeros over `hide` so the gpt crate does not see a primary header we found bad.
#[derive(Debug)]
struct HidePrimary<R> {
    inner: R,
    hide: Option<std::ops::Range<u64>>,
}

impl<R: Read + Seek> Read for HidePrimary<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let pos = self.inner.stream_position()?;
        let n = self.inner.read(buf)?;
        if let Some(h) = &self.hide {
            for (i, b) in buf[..n].iter_mut().enumerate() {
                if h.contains(&(pos + i as u64)) {
                    *b = 0;
                }
            }
        }
        Ok(n)
    }
}

impl<R: Seek> Seek for HidePrimary<R> {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        self.inner.seek(pos)
    }
}

impl<R: Write> Write for HidePrimary<R> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}
