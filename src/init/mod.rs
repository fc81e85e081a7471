//! The live image: ferry as PID 1 (a supervisor that never exits) and its worker.

pub mod cmdline;
pub mod console;
pub mod coverage;
pub mod firmware;
pub mod kmsg;
pub mod modules;
pub mod net;
pub mod pid1;
mod report;
mod source;
mod steps;
mod target;
mod verdict;
pub mod worker;
