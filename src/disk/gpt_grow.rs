//! Moving a GPT's backup structures to the end of a larger disk: what `sgdisk -e` does.
//!
//! A disk copied onto a larger one keeps its backup GPT header and entries where the source ended,
//! in the middle of the new disk. Firmware and kernels then see a primary header that points to
//! a backup that is not at the last LBA; some complain, some refuse. The fix changes only:
//! the primary header (alternate LBA, last usable LBA, CRC), a new backup entry array and header
//! at the new end, and the protective MBR's size (as `sgdisk -e` does; the old backup is left in
//! place, like sgdisk leaves it). The result is byte-for-byte what `sgdisk -e` writes.

/// Bytes to write at an offset, and what they are (recorded in the job).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub offset: u64,
    pub bytes: Vec<u8>,
    pub what: &'static str,
}

fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}
fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}
fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_le_bytes());
}
fn put64(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_le_bytes());
}

/// Header field offsets (UEFI spec, table "GPT Header").
const CRC: usize = 16;
const MY_LBA: usize = 24;
const ALTERNATE_LBA: usize = 32;
const LAST_USABLE: usize = 48;
const ENTRIES_LBA: usize = 72;
const NUM_ENTRIES: usize = 80;
const ENTRY_SIZE: usize = 84;
const ENTRIES_CRC: usize = 88;

/// The header with its CRC field recomputed over its first `header_size` bytes.
fn with_crc(mut header: Vec<u8>, header_size: usize) -> Vec<u8> {
    put32(&mut header, CRC, 0);
    let crc = crc32fast::hash(&header[..header_size]);
    put32(&mut header, CRC, crc);
    header
}

/// Where the primary header says its entry array is, and how long it is in bytes.
pub fn entry_array(header: &[u8]) -> Result<(u64, u64), String> {
    if header.len() < 92 || &header[..8] != b"EFI PART" {
        return Err("no GPT header at LBA 1".into());
    }
    let len = le32(header, NUM_ENTRIES) as u64 * le32(header, ENTRY_SIZE) as u64;
    if len == 0 || len > 1 << 20 {
        return Err(format!("the GPT header describes an entry array of {len} bytes"));
    }
    Ok((le64(header, ENTRIES_LBA), len))
}

/// CHS address of `lba` in the 255-head, 63-sector geometry every partitioning tool assumes
/// for LBA disks; past 1024 cylinders it saturates at the conventional FE FF FF.
fn chs(lba: u64) -> [u8; 3] {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    if lba >= HEADS * SECTORS * 1024 {
        return [0xfe, 0xff, 0xff];
    }
    let cylinder = lba / (HEADS * SECTORS);
    let rest = lba % (HEADS * SECTORS);
    let (head, sector) = (rest / SECTORS, rest % SECTORS);
    [head as u8, ((sector + 1) + (cylinder >> 8) * 64) as u8, (cylinder & 0xff) as u8]
}

/// The patches that move the backup GPT of a disk of `disk_bytes` to its end. `mbr` is sector 0,
/// `header` is the primary header's sector (LBA 1), `entries` the primary entry array. Empty
/// when the backup is already at the end. Apply them in order: the new backup first, then the
/// primary header that points to it, so an interruption leaves a consistent table either way.
pub fn relocate_backup(
    mbr: &[u8],
    header: &[u8],
    entries: &[u8],
    sector_size: u64,
    disk_bytes: u64,
) -> Result<Vec<Patch>, String> {
    let ss = sector_size as usize;
    if header.len() != ss || mbr.len() != ss {
        return Err(format!("sector buffers must be {ss} bytes"));
    }
    let (_, entries_len) = entry_array(header)?;
    let header_size = le32(header, 12) as usize;
    if !(92..=ss).contains(&header_size) {
        return Err(format!("the GPT header says it is {header_size} bytes"));
    }
    let stored_crc = le32(header, CRC);
    if with_crc(header.to_vec(), header_size)[CRC..CRC + 4] != stored_crc.to_le_bytes() {
        return Err("the primary GPT header's CRC does not match it".into());
    }
    if le64(header, MY_LBA) != 1 {
        return Err("the header at LBA 1 is not a primary header".into());
    }
    if entries.len() as u64 != entries_len || crc32fast::hash(entries) != le32(header, ENTRIES_CRC) {
        return Err("the GPT entry array does not match its CRC".into());
    }
    let last_lba = disk_bytes / sector_size - 1;
    let entries_sectors = entries_len.div_ceil(sector_size);
    let old_alternate = le64(header, ALTERNATE_LBA);
    if old_alternate == last_lba {
        return Ok(vec![]);
    }
    if old_alternate > last_lba {
        return Err(format!("the backup GPT header is at LBA {old_alternate}, past the disk's end ({last_lba})"));
    }
    let backup_entries_lba = last_lba - entries_sectors;

    let mut primary = header.to_vec();
    put64(&mut primary, ALTERNATE_LBA, last_lba);
    put64(&mut primary, LAST_USABLE, backup_entries_lba - 1);
    let primary = with_crc(primary, header_size);

    let mut backup = primary.clone();
    put64(&mut backup, MY_LBA, last_lba);
    put64(&mut backup, ALTERNATE_LBA, 1);
    put64(&mut backup, ENTRIES_LBA, backup_entries_lba);
    let mut backup = with_crc(backup, header_size);
    backup[header_size..].fill(0);

    let mut backup_entries = entries.to_vec();
    backup_entries.resize((entries_sectors * sector_size) as usize, 0);

    let mut patches = vec![
        Patch { offset: backup_entries_lba * sector_size, bytes: backup_entries, what: "backup GPT entries" },
        Patch { offset: last_lba * sector_size, bytes: backup, what: "backup GPT header" },
        Patch { offset: sector_size, bytes: primary, what: "primary GPT header" },
    ];
    if let Some(pmbr) = grow_protective_mbr(mbr, last_lba) {
        patches.push(Patch { offset: 0, bytes: pmbr, what: "protective MBR size" });
    }
    Ok(patches)
}

/// The protective MBR with its 0xEE partition grown to the disk's new end, when it has one
/// that starts at LBA 1 (a hybrid MBR's other entries are left alone).
fn grow_protective_mbr(mbr: &[u8], last_lba: u64) -> Option<Vec<u8>> {
    if mbr.len() < 512 || mbr[510..512] != [0x55, 0xaa] {
        return None;
    }
    let mut out = mbr.to_vec();
    for e in (446..510).step_by(16) {
        if out[e + 4] == 0xee && le32(&out, e + 8) == 1 {
            let size = last_lba.min(u32::MAX as u64) as u32;
            put32(&mut out, e + 12, size);
            out[e + 5..e + 8].copy_from_slice(&chs(last_lba));
        }
    }
    (out != mbr).then_some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal valid GPT for a disk of `sectors` 512-byte sectors with one partition.
    fn sample(sectors: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let mut entries = vec![0u8; 128 * 128];
        entries[0] = 0xaf; // a non-zero type GUID byte: one used entry
        put64(&mut entries, 32, 2048);
        put64(&mut entries, 40, sectors - 34);
        let mut h = vec![0u8; 512];
        h[..8].copy_from_slice(b"EFI PART");
        put32(&mut h, 8, 0x0001_0000);
        put32(&mut h, 12, 92);
        put64(&mut h, MY_LBA, 1);
        put64(&mut h, ALTERNATE_LBA, sectors - 1);
        put64(&mut h, 40, 34);
        put64(&mut h, LAST_USABLE, sectors - 34);
        put64(&mut h, ENTRIES_LBA, 2);
        put32(&mut h, NUM_ENTRIES, 128);
        put32(&mut h, ENTRY_SIZE, 128);
        put32(&mut h, ENTRIES_CRC, crc32fast::hash(&entries));
        let h = with_crc(h, 92);
        let mut mbr = vec![0u8; 512];
        mbr[446 + 4] = 0xee;
        put32(&mut mbr, 446 + 8, 1);
        put32(&mut mbr, 446 + 12, (sectors - 1) as u32);
        mbr[510] = 0x55;
        mbr[511] = 0xaa;
        (mbr, h, entries)
    }

    #[test]
    fn same_size_needs_nothing() {
        let (mbr, h, e) = sample(131072);
        assert_eq!(relocate_backup(&mbr, &h, &e, 512, 131072 * 512).unwrap(), vec![]);
    }

    #[test]
    fn moves_the_backup_to_the_new_end() {
        let (mbr, h, e) = sample(131072);
        let p = relocate_backup(&mbr, &h, &e, 512, 262144 * 512).unwrap();
        let whats: Vec<_> = p.iter().map(|p| p.what).collect();
        assert_eq!(whats, ["backup GPT entries", "backup GPT header", "primary GPT header", "protective MBR size"]);
        assert_eq!(p[0].offset, (262143 - 32) * 512);
        assert_eq!(p[0].bytes, e);
        let backup = &p[1].bytes;
        assert_eq!(p[1].offset, 262143 * 512);
        assert_eq!((le64(backup, MY_LBA), le64(backup, ALTERNATE_LBA)), (262143, 1));
        assert_eq!(le64(backup, ENTRIES_LBA), 262143 - 32);
        let primary = &p[2].bytes;
        assert_eq!((le64(primary, ALTERNATE_LBA), le64(primary, LAST_USABLE)), (262143, 262143 - 33));
        for hdr in [primary, backup] {
            assert_eq!(with_crc(hdr.clone(), 92), *hdr, "CRC must be valid");
        }
        assert_eq!(le32(&p[3].bytes, 446 + 12), 262143);
        // The CHS end of the last LBA: cylinder 16, head 81, sector 1 (as sgdisk computes it).
        assert_eq!(p[3].bytes[446 + 5..446 + 8], [81, 1, 16]);
    }

    #[test]
    fn refuses_damaged_tables() {
        let (mbr, mut h, e) = sample(131072);
        let mut bad_entries = e.clone();
        bad_entries[5] ^= 1;
        assert!(relocate_backup(&mbr, &h, &bad_entries, 512, 262144 * 512).unwrap_err().contains("entry array"));
        h[40] ^= 1;
        assert!(relocate_backup(&mbr, &h, &e, 512, 262144 * 512).unwrap_err().contains("CRC"));
        assert!(relocate_backup(&mbr, &[0u8; 512], &e, 512, 262144 * 512).is_err());
    }

    #[test]
    fn chs_saturates_past_1024_cylinders() {
        assert_eq!(chs(131071), [40, 32, 8]);
        assert_eq!(chs(255 * 63 * 1024), [0xfe, 0xff, 0xff]);
    }
}
