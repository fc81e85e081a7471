//! The live image's steps, in the order the worker runs them.

pub mod config;
pub mod disks;
pub mod drivers;
pub mod enroll;
pub mod network;
