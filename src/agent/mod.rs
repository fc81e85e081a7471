//! The agents: the source side (`send`) and the target side (`pull`: check, write, verify).

pub mod client;
pub mod enroll;
pub mod send;
mod throttle;

pub use client::{Client, Endpoint, Refused};
pub mod target;
