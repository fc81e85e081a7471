//! The receiver: `ferry serve`. Keeps a store directory holding the admin token, the TLS
//! identity and (unless a wave shares them in S3 and PostgreSQL) the chunk store, the disk
//! manifests and the job database; answers the API over HTTPS
//! (HTTP/2 or HTTP/1.1) or, when asked, plain HTTP; serves network boots.
//!
//! - `listen`: the listeners; `router`: the routes, from `wire::routes`; `auth`: who calls,
//!   decided from the headers before a body is read; `error`: the one error answer.
//! - The API by area: `admin` (jobs), `source` (the source agent, `verify` its proof), `target`
//!   (the target side), `enroll` (waves), `logs` (console transcripts).
//! - `boot` (network boots), `dashboard`, `metrics`; `db` (SQLite or PostgreSQL), `counters`
//!   (received counters, batched), `state` (what requests share).

mod admin;
mod auth;
pub mod boot;
mod budget;
mod chunk_body;
mod conn;
mod counters;
mod dashboard;
pub mod db;
mod enroll;
mod error;
mod listen;
mod logs;
mod metrics;
mod router;
mod source;
mod state;
mod target;
mod tokens;
mod verify;

pub use listen::{serve, ServeConfig, Started};
pub use state::{open_state, random_hex, write_private, AppState, ReceiverInfo};
