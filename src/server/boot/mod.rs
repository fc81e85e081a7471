//! Network boots: the live image's files and the menus the receiver makes (`files`), served over
//! HTTP (`http`) and TFTP (`tftp`); the iPXE menu (`ipxe`).

pub mod files;
pub mod http;
pub mod ipxe;
pub mod tftp;
