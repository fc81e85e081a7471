//! Partition tables from arbitrary disk bytes: GPT (primary, backup, both damaged), MBR with
//! EBR chains (including chains that loop), any sector size. Reading must never panic, loop
//! forever or read outside the disk; whatever it reports must be within the disk.
#![no_main]

use std::io::Write;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
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
});
