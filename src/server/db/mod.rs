//! Jobs in an embedded SQLite database. Every state change is a row in `job_events` with its
//! time. WAL mode: a receiver killed at any moment restarts with every committed change intact.
//!
//! `schema`: the tables and their versioned migrations; `jobs`, `enrollments`, `logs`: the
//! queries by concern. Rows are read by column name; enums are stored as their stable strings;
//! a row that does not decode is an error, never a silent default.

mod enrollments;
mod jobs;
mod logs;
mod schema;

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::Connection;

pub use enrollments::{Enrolled, NewJobIds};

use crate::wire::{JobState, TargetKind};

pub struct Db {
    conn: Mutex<Connection>,
}

/// The whole-disk hash of every verified disk in the database at `path`, as (job, disk, hex),
/// read without changing the file (no migration, no checkpoint): for `ferry store verify`
/// beside a running receiver.
pub fn verified_disks(path: &Path) -> Result<Vec<(String, u32, String)>> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening job database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    let mut q = conn.prepare("SELECT job_id, idx, blake3 FROM disks WHERE verified = 1 ORDER BY job_id, idx")?;
    let rows = q.query_map([], |r| Ok((r.get("job_id")?, r.get("idx")?, r.get("blake3")?)))?;
    Ok(rows.collect::<rusqlite::Result<_>>()?)
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

impl Db {
    pub fn open(path: &Path) -> Result<Self> {
        let mut conn = Connection::open(path).with_context(|| format!("opening job database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Overwritten rows (a plaintext token from before, a replaced token hash) are zeroed, not
        // left in free pages for a copy of the file to show.
        conn.pragma_update(None, "secure_delete", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        schema::migrate(&mut conn).with_context(|| format!("bringing {} up to date", path.display()))?;
        // What a migration replaced leaves the main file now, not at some later checkpoint.
        conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("wire types always serialize")
}

/// A column that did not decode, as rusqlite reports conversion failures.
fn undecodable(column: &str, why: impl std::fmt::Display) -> rusqlite::Error {
    rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, format!("column {column}: {why}").into())
}

/// A JSON column.
fn from_json<T: serde::de::DeserializeOwned>(r: &rusqlite::Row, column: &str) -> rusqlite::Result<T> {
    let text: String = r.get(column)?;
    serde_json::from_str(&text).map_err(|e| undecodable(column, e))
}

/// A JSON column that may be NULL.
fn from_json_opt<T: serde::de::DeserializeOwned>(r: &rusqlite::Row, column: &str) -> rusqlite::Result<Option<T>> {
    match r.get::<_, Option<String>>(column)? {
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| undecodable(column, e)),
        None => Ok(None),
    }
}

fn job_state(r: &rusqlite::Row, column: &str) -> rusqlite::Result<JobState> {
    let s: String = r.get(column)?;
    JobState::parse(&s).ok_or_else(|| undecodable(column, format!("{s:?} is not a job state")))
}

/// How a target kind is stored.
fn kind_str(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Image => "image",
        TargetKind::Instance => "instance",
    }
}

fn target_kind(r: &rusqlite::Row, column: &str) -> rusqlite::Result<TargetKind> {
    match r.get::<_, String>(column)?.as_str() {
        "image" => Ok(TargetKind::Image),
        "instance" => Ok(TargetKind::Instance),
        other => Err(undecodable(column, format!("{other:?} is not a target kind"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn target_kinds_are_stored_as_their_wire_names() {
        for k in [TargetKind::Image, TargetKind::Instance] {
            assert_eq!(format!("\"{}\"", kind_str(k)), serde_json::to_string(&k).unwrap());
        }
    }

    #[test]
    fn a_row_that_does_not_decode_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let db = Db::open(&t.path().join("jobs.sqlite")).unwrap();
        db.conn()
            .execute_batch(
                "INSERT INTO jobs (id, name, target, state, options, token, created_at, updated_at)
                 VALUES ('bad1', 'x', 'image', 'Exploded', '{}', 't', 1, 1);
                 INSERT INTO jobs (id, name, target, state, options, token, created_at, updated_at)
                 VALUES ('bad2', 'x', 'cloud', 'Waiting', '{}', 't', 1, 1);
                 INSERT INTO jobs (id, name, target, state, options, token, created_at, updated_at)
                 VALUES ('bad3', 'x', 'image', 'Waiting', 'not json', 't', 1, 1);",
            )
            .unwrap();
        for id in ["bad1", "bad2", "bad3"] {
            let e = db.job(id).unwrap_err();
            assert!(format!("{e:#}").contains("column"), "{id}: {e:#}");
        }
        assert!(db.jobs().is_err(), "a list with an undecodable row is an error, not a shorter list");
    }
}
