//! What the integration tests share. Each test file says `mod support; use support::*;`.
//!
//! - [`cmd`]: the ferry binary under test (`FERRY`, `ferry`, `ferry_json`) and running any tool
//!   with its success asserted (`run`, `run_ok`, `run_with_input`).
//! - [`data`]: bytes and files: `pseudo_random`, `write_at`, `read_at`, `make_file`,
//!   `random_image`, `b3sum`, `files_equal`, `count_files`, `wait_until`, `s`.
//! - [`receiver`]: a real `ferry serve` on loopback (`Receiver`), `free_port`, `sent`,
//!   `export_b3sum`.
//! - [`disks`]: partition tables made and read by sgdisk and sfdisk (and their comparison with
//!   `ferry inspect`), loop devices, sample GPT and MBR images, `esp_offset`.
//! - [`machine`]: a fake sysfs root with a DMI identity, to play a machine (`FERRY_SYS_ROOT`).
//! - [`vm`]: booting the live image in QEMU (`Vm`, `Disk`, `Firmware`), its kernel command lines,
//!   `ferry.toml` files and USB sticks, serial logs.
#![allow(dead_code)]

pub mod cmd;
pub mod data;
pub mod disks;
pub mod machine;
pub mod receiver;
pub mod scaled;
pub mod vm;

// Each test file uses some of these, none all.
#[allow(unused_imports)]
pub use {cmd::*, data::*, disks::*, machine::*, receiver::*, vm::*};
