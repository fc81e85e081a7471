//! Jobs in an embedded SQLite database (the default), or in PostgreSQL when several receivers
//! share a wave. Every state change is a row in `job_events` with its time. SQLite runs in WAL
//! mode: a receiver killed at any moment restarts with every committed change intact.
//!
//! `sql`: the two engines behind one way of running statements, each statement written once;
//! `schema`: the tables and their versioned migrations; `jobs`, `enrollments`, `logs`: the
//! queries by concern. Rows are read by column name; enums are stored as their stable strings;
//! a row that does not decode is an error, never a silent default.

mod enrollments;
mod jobs;
mod logs;
mod schema;
pub mod sql;

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use rusqlite::Connection;

pub use enrollments::{Enrolled, NewJobIds};
use sql::{Engine, Row};

use crate::wire::{JobState, TargetKind};

pub struct Db {
    engine: Engine,
}

/// The whole-disk hash of every verified disk in the database at `path`, as (job, disk, hex),
/// read without changing the file (no migration, no checkpoint): for `ferry store verify`
/// beside a running receiver.
pub fn verified_disks(path: &Path) -> Result<Vec<(String, u32, String)>> {
    let conn = Connection::open_with_flags(path, rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY)
        .with_context(|| format!("opening job database {}", path.display()))?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Db { engine: Engine::Sqlite(Mutex::new(conn)) }.verified_disks()
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// The job database file in a store directory.
pub const SQLITE_FILE: &str = "jobs.sqlite";

impl Db {
    /// The jobs of a receiver whose store is `dir`: in PostgreSQL at `url` when given, else in
    /// `dir/jobs.sqlite`.
    pub fn open_for(dir: &Path, url: Option<&str>) -> Result<Self> {
        match url {
            Some(url) => Self::open_postgres(url),
            None => Self::open(&dir.join(SQLITE_FILE)),
        }
    }

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
        Ok(Self { engine: Engine::Sqlite(Mutex::new(conn)) })
    }

    /// The jobs in PostgreSQL at `url` (its tables made or brought up to date).
    pub fn open_postgres(url: &str) -> Result<Self> {
        let db = Self { engine: sql::connect_postgres(url)? };
        let name = db.describe();
        db.engine.transaction(schema::migrate_postgres).with_context(|| format!("bringing {name} up to date"))?;
        Ok(db)
    }

    /// Where the jobs are, in words.
    pub fn describe(&self) -> String {
        match &self.engine {
            Engine::Sqlite(c) => {
                let c = c.lock().unwrap_or_else(|p| p.into_inner());
                format!("SQLite {}", c.path().unwrap_or("(in memory)"))
            }
            Engine::Postgres(pg) => pg.name.clone(),
        }
    }

    /// The engine (`sqlite` or `postgres`), for metrics.
    pub fn kind(&self) -> &'static str {
        match &self.engine {
            Engine::Sqlite(_) => "sqlite",
            Engine::Postgres(_) => "postgres",
        }
    }

    /// The whole-disk hash of every verified disk, as (job, disk, hex).
    pub fn verified_disks(&self) -> Result<Vec<(String, u32, String)>> {
        let rows = self
            .engine
            .with(|c| c.query("SELECT job_id, idx, blake3 FROM disks WHERE verified = 1 ORDER BY job_id, idx", &[]))?;
        rows.iter().map(|r| Ok((r.get("job_id")?, r.get("idx")?, r.get("blake3")?))).collect()
    }
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("wire types always serialize")
}

/// A JSON column.
fn from_json<T: serde::de::DeserializeOwned>(r: &Row, column: &str) -> Result<T> {
    let text: String = r.get(column)?;
    serde_json::from_str(&text).map_err(|e| anyhow!("column {column}: {e}"))
}

/// A JSON column that may be NULL.
fn from_json_opt<T: serde::de::DeserializeOwned>(r: &Row, column: &str) -> Result<Option<T>> {
    match r.get::<Option<String>>(column)? {
        Some(text) => serde_json::from_str(&text).map(Some).map_err(|e| anyhow!("column {column}: {e}")),
        None => Ok(None),
    }
}

fn job_state(r: &Row, column: &str) -> Result<JobState> {
    let s: String = r.get(column)?;
    JobState::parse(&s).ok_or_else(|| anyhow!("column {column}: {s:?} is not a job state"))
}

/// How a target kind is stored.
fn kind_str(k: TargetKind) -> &'static str {
    match k {
        TargetKind::Image => "image",
        TargetKind::Instance => "instance",
    }
}

fn target_kind(r: &Row, column: &str) -> Result<TargetKind> {
    match r.get::<String>(column)?.as_str() {
        "image" => Ok(TargetKind::Image),
        "instance" => Ok(TargetKind::Instance),
        other => Err(anyhow!("column {column}: {other:?} is not a target kind")),
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
        for (id, target, state, options) in [
            ("bad1", "image", "Exploded", "{}"),
            ("bad2", "cloud", "Waiting", "{}"),
            ("bad3", "image", "Waiting", "not json"),
        ] {
            db.engine
                .with(|c| {
                    c.execute(
                        "INSERT INTO jobs (id, name, target, state, options, token, created_at, updated_at)
                         VALUES (?1, 'x', ?2, ?3, ?4, 't', 1, 1)",
                        sql::params![id, target, state, options],
                    )
                })
                .unwrap();
        }
        for id in ["bad1", "bad2", "bad3"] {
            let e = db.job(id).unwrap_err();
            assert!(format!("{e:#}").contains("column"), "{id}: {e:#}");
        }
        assert!(db.jobs().is_err(), "a list with an undecodable row is an error, not a shorter list");
    }
}
