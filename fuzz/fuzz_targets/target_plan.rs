//! The target's plan from arbitrary disk reports (its own disks and the source's): never a
//! panic, and a plan it makes maps every source disk once, onto distinct target disks that are
//! large enough, with the same sector size, never a source disk.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ferry_fuzz::target_plan(data));
