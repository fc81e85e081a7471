//! The agents: the source side (`send`) and, later, the target side (`pull`).

pub mod client;
pub mod identity;
pub mod send;

pub use client::{Client, Endpoint, Refused};
