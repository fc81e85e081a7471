//! ferry moves whole servers: it reads every disk of a machine booted from a live image, hashes
//! it into a BLAKE3 chunk manifest, streams the chunks to a receiver that verifies each one, and
//! proves with a whole-disk hash that what arrived is what left.
//!
//! The library holds every part; the `ferry` binary is a thin dispatcher over [`cli`].

pub mod agent;
pub mod boot;
pub mod cli;
pub mod cmdline;
pub mod disk;
pub mod fsx;
pub mod image;
pub mod imagebuild;
pub mod init;
pub mod machine;
pub mod server;
pub mod store;
pub mod tls;
pub mod util;
pub mod wire;
