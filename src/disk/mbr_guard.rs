//! MBR damage that mbrman does not survive, found before it reads the table (both found by
//! fuzzing): a table whose every partition starts at LBA 0 (mbrman unwraps `None`), and an
//! extended boot record (EBR) chain whose 32-bit LBAs overflow when mbrman adds them unchecked
//! (a panic in a debug build; in a release build it wraps and reports partitions that are not
//! there). The chain is walked here with 64-bit arithmetic.

use std::io;
use std::os::unix::fs::FileExt;

use super::DiskReader;

/// Partition types mbrman takes for an extended partition.
const EXTENDED: [u8; 3] = [0x05, 0x0f, 0x85];
/// Links followed at most: a chain is strictly forward, so this only bounds work on a huge disk.
const MOST_LINKS: usize = 1 << 16;

/// What is wrong with the MBR whose used primary entries are `entries` (type, start LBA), that
/// mbrman would not survive; `None` when mbrman may read it.
pub fn damage(disk: &DiskReader, entries: &[(u8, u32)]) -> io::Result<Option<String>> {
    if let Some((ty, _)) = entries.iter().find(|(_, start)| *start == 0) {
        return Ok(Some(format!("an MBR partition of type 0x{ty:02x} starts at LBA 0, over the MBR itself")));
    }
    ebr_overflow(disk, entries)
}

/// What is wrong with the EBR chain of the extended partition among `entries`, when its LBAs
/// overflow 32 bits; `None` when they do not (or there is no chain).
fn ebr_overflow(disk: &DiskReader, entries: &[(u8, u32)]) -> io::Result<Option<String>> {
    let Some(&(_, ext_start)) = entries.iter().find(|(ty, _)| EXTENDED.contains(ty)) else { return Ok(None) };
    let ss = u64::from(disk.logical_sector_size());
    let mut relative = 0u64;
    let mut sector = vec![0u8; ss as usize];
    for _ in 0..MOST_LINKS {
        let ebr = u64::from(ext_start) + relative;
        if ebr > u64::from(u32::MAX) {
            return Ok(Some(format!("an EBR of the extended partition lies past LBA 2^32 (LBA {ebr})")));
        }
        if (ebr + 1) * ss > disk.size() || disk.file().read_exact_at(&mut sector, ebr * ss).is_err() {
            return Ok(None); // mbrman fails to read it too, and says so
        }
        let le32 = |at: usize| u32::from_le_bytes([sector[at], sector[at + 1], sector[at + 2], sector[at + 3]]);
        let (logical_start, next) = (u64::from(le32(446 + 8)), u64::from(le32(462 + 8)));
        if ebr + logical_start > u64::from(u32::MAX) {
            return Ok(Some(format!(
                "the logical partition of the EBR at LBA {ebr} starts past LBA 2^32 ({} + {logical_start})",
                ebr
            )));
        }
        if next == 0 || relative >= next {
            return Ok(None); // the end, or a chain going back, which mbrman refuses by itself
        }
        relative = next;
    }
    Ok(None)
}
