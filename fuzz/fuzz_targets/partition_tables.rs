//! Partition tables from arbitrary disk bytes: GPT (primary, backup, both damaged), MBR with
//! EBR chains (including chains that loop), any sector size. Reading must never panic, loop
//! forever or read outside the disk; whatever it reports must be within the disk.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::partition_tables(data));
