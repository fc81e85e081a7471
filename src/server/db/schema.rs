//! The tables, and the migrations that bring any job database this receiver's releases made up
//! to date, written once for both engines. A migration's DDL names its integers `{INT}`, an
//! auto-numbered key `{SERIAL}`, and where a table needs its insertion order `{ROWID}`
//! (SQLite has `rowid` of itself; PostgreSQL gets a column of that name), rendered per engine.
//!
//! SQLite's `user_version` counts the migrations applied; PostgreSQL's count is the row of
//! `ferry_schema`. Releases before the count existed added columns on open without recording
//! it, so every migration checks what is there first: a database at version 0 may already hold
//! some of their changes.

use anyhow::{bail, Context, Result};
use rusqlite::Connection;

use super::sql::{params, Exec};

/// The engine a migration runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

/// `text` with `{INT}`, `{SERIAL}` and `{ROWID}` in `d`'s words.
fn ddl(d: Dialect, text: &str) -> String {
    let (int, serial, rowid) = match d {
        Dialect::Sqlite => ("INTEGER", "INTEGER PRIMARY KEY AUTOINCREMENT", ""),
        Dialect::Postgres => ("BIGINT", "BIGSERIAL PRIMARY KEY", "rowid BIGSERIAL UNIQUE,"),
    };
    text.replace("{SERIAL}", serial).replace("{INT}", int).replace("{ROWID}", rowid)
}

/// Runs each `;`-separated statement of `text` (rendered for `d`).
fn batch(tx: &mut dyn Exec, d: Dialect, text: &str) -> Result<()> {
    for statement in ddl(d, text).split(';').map(str::trim).filter(|s| !s.is_empty()) {
        tx.execute(statement, &[])?;
    }
    Ok(())
}

/// The first release's tables.
const FIRST_TABLES: &str = "
CREATE TABLE IF NOT EXISTS jobs (
    {ROWID}
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    state TEXT NOT NULL,
    error_code TEXT,
    error_reason TEXT,
    options TEXT NOT NULL,
    token TEXT NOT NULL,
    client_token TEXT UNIQUE,
    machine TEXT,
    inventory TEXT,
    disk_count {INT},
    created_at {INT} NOT NULL,
    updated_at {INT} NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq {SERIAL},
    at {INT} NOT NULL,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq {SERIAL},
    at {INT} NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS disks (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx {INT} NOT NULL,
    identity TEXT NOT NULL,
    partition_table TEXT NOT NULL,
    size {INT} NOT NULL,
    chunk_size {INT} NOT NULL,
    bytes_done {INT} NOT NULL DEFAULT 0,
    bytes_received {INT} NOT NULL DEFAULT 0,
    chunks_received {INT} NOT NULL DEFAULT 0,
    rate {INT} NOT NULL DEFAULT 0,
    blake3 TEXT,
    verified {INT} NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
";

const ENROLLMENTS: &str = "
CREATE TABLE IF NOT EXISTS enrollments (
    {ROWID}
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    options TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    created_at {INT} NOT NULL,
    revoked_at {INT}
);
";

type Step = fn(&mut dyn Exec, Dialect) -> Result<()>;

/// The migrations, in order: what each brings, and how.
const MIGRATIONS: &[(&str, Step)] = &[
    ("the first release's tables", |tx, d| batch(tx, d, FIRST_TABLES)),
    ("the target side of instance jobs", |tx, d| {
        add_columns(tx, d, "jobs", &[("target_token", "TEXT"), ("target_spec", "TEXT"), ("delivery", "TEXT")])
    }),
    ("enrollments: jobs a source made for itself, and the machine they are for", |tx, d| {
        batch(tx, d, ENROLLMENTS)?;
        // enrolled_offline: 1 when the live image (disks at rest) enrolled into the job last.
        add_columns(tx, d, "jobs", &[("enrollment", "TEXT"), ("machine_key", "TEXT"), ("enrolled_offline", "{INT}")])?;
        add_columns(tx, d, "enrollments", &[("max_jobs", "{INT}")])
    }),
    ("one boot log entry per boot of the live image, replaced in order as the boot goes on", |tx, d| {
        add_columns(tx, d, "job_logs", &[("boot", "TEXT"), ("boot_seq", "{INT}")])
    }),
    ("indexes: a machine's jobs of an enrollment, a boot's log entry", |tx, d| {
        batch(
            tx,
            d,
            "CREATE INDEX IF NOT EXISTS jobs_by_machine ON jobs (enrollment, machine_key);
             CREATE INDEX IF NOT EXISTS logs_by_boot ON job_logs (job_id, boot, role);",
        )
    }),
    ("tokens kept as their SHA-256, not in plaintext", |tx, _| hash_tokens(tx)),
    ("the sectors a source could not read, per disk", |tx, d| add_columns(tx, d, "disks", &[("bad_ranges", "TEXT")])),
    ("what a used-blocks copy read, per disk", |tx, d| add_columns(tx, d, "disks", &[("used_only", "TEXT")])),
];

/// Replaces every plaintext token (agent, target, enrollment) with its hash.
fn hash_tokens(tx: &mut dyn Exec) -> Result<()> {
    use crate::server::tokens::{hash, HASHED};
    let mut n = 0;
    for (table, column) in [("jobs", "token"), ("jobs", "target_token"), ("enrollments", "token")] {
        let sql = format!(
            "SELECT id, {column} AS token FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE '{HASHED}%'"
        );
        for row in tx.query(&sql, &[])? {
            let (id, token): (String, String) = (row.get("id")?, row.get("token")?);
            tx.execute(&format!("UPDATE {table} SET {column} = ?2 WHERE id = ?1"), params![id, hash(&token)])?;
            n += 1;
        }
    }
    if n > 0 {
        log::warn!("the job database kept {n} tokens in plaintext: each is now kept as its SHA-256 (they still work)");
    }
    Ok(())
}

/// The version a database of this release has.
pub const VERSION: usize = MIGRATIONS.len();

fn add_columns(tx: &mut dyn Exec, d: Dialect, table: &str, columns: &[(&str, &str)]) -> Result<()> {
    let existing_sql = match d {
        Dialect::Sqlite => "SELECT name FROM pragma_table_info(?1)",
        Dialect::Postgres => {
            "SELECT column_name::text AS name FROM information_schema.columns
             WHERE table_schema = current_schema() AND table_name::text = ?1"
        }
    };
    let existing: Vec<String> =
        tx.query(existing_sql, params![table])?.iter().map(|r| r.get("name")).collect::<Result<_>>()?;
    for (column, ty) in columns {
        if !existing.iter().any(|c| c == column) {
            tx.execute(&format!("ALTER TABLE {table} ADD COLUMN {column} {}", ddl(d, ty)), &[])
                .with_context(|| format!("adding column {column} to table {table}"))?;
        }
    }
    Ok(())
}

fn too_new(version: usize) -> Result<()> {
    if version > VERSION {
        bail!("the database is of version {version}, newer than this ferry's {VERSION}: use a newer ferry");
    }
    Ok(())
}

/// Applies the migrations an SQLite database lacks, each in its own transaction with the
/// version it reaches.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    too_new(version)?;
    for (i, (what, step)) in MIGRATIONS.iter().enumerate().skip(version) {
        let mut tx = conn.transaction()?;
        step(&mut tx, Dialect::Sqlite).with_context(|| format!("migration {}: {what}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        if version > 0 || i + 1 == VERSION {
            log::info!("job database at version {}: {what}", i + 1);
        }
    }
    Ok(())
}

/// Applies the migrations a PostgreSQL database lacks, inside the caller's transaction (its DDL
/// is transactional: all or nothing). `ferry_schema` is locked for the check, so receivers
/// starting together migrate once.
pub fn migrate_postgres(tx: &mut dyn Exec) -> Result<()> {
    tx.execute("CREATE TABLE IF NOT EXISTS ferry_schema (version BIGINT NOT NULL)", &[])?;
    tx.execute("LOCK TABLE ferry_schema IN EXCLUSIVE MODE", &[])?;
    let row = tx.query_opt("SELECT version FROM ferry_schema", &[])?;
    let version: usize = match &row {
        Some(r) => r.get::<u64>("version")? as usize,
        None => 0,
    };
    too_new(version)?;
    for (i, (what, step)) in MIGRATIONS.iter().enumerate().skip(version) {
        step(&mut *tx, Dialect::Postgres).with_context(|| format!("migration {}: {what}", i + 1))?;
        log::info!("job database at version {}: {what}", i + 1);
    }
    match row {
        None => tx.execute("INSERT INTO ferry_schema (version) VALUES (?1)", params![VERSION])?,
        Some(_) => tx.execute("UPDATE ferry_schema SET version = ?1", params![VERSION])?,
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::{Db, Enrolled, NewJobIds};
    use super::*;
    use crate::wire::{CreateEnrollment, CreateJob, JobState, TargetKind};

    /// The first release's tables, before any column was added.
    const FIRST_SCHEMA: &str = "
        CREATE TABLE jobs (id TEXT PRIMARY KEY, name TEXT NOT NULL, target TEXT NOT NULL, state TEXT NOT NULL,
            error_code TEXT, error_reason TEXT, options TEXT NOT NULL, token TEXT NOT NULL, client_token TEXT UNIQUE,
            machine TEXT, inventory TEXT, disk_count INTEGER, created_at INTEGER NOT NULL, updated_at INTEGER NOT NULL);
        CREATE TABLE job_events (job_id TEXT NOT NULL REFERENCES jobs(id), seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL, state TEXT NOT NULL, code TEXT, reason TEXT);
        CREATE TABLE job_logs (job_id TEXT NOT NULL REFERENCES jobs(id), seq INTEGER PRIMARY KEY AUTOINCREMENT,
            at INTEGER NOT NULL, role TEXT NOT NULL, text TEXT NOT NULL);
        INSERT INTO jobs (id, name, target, state, options, token, created_at, updated_at)
            VALUES ('old1', 'old job', 'image', 'Finished', '{}', 'tok', 1, 1);
    ";

    /// The layout the release before versioning left: every column added, user_version 0.
    const UNVERSIONED: &str = "
        ALTER TABLE jobs ADD COLUMN target_token TEXT; ALTER TABLE jobs ADD COLUMN target_spec TEXT;
        ALTER TABLE jobs ADD COLUMN delivery TEXT; ALTER TABLE jobs ADD COLUMN enrollment TEXT;
        ALTER TABLE jobs ADD COLUMN machine_key TEXT; ALTER TABLE jobs ADD COLUMN enrolled_offline INTEGER;
        ALTER TABLE job_logs ADD COLUMN boot TEXT; ALTER TABLE job_logs ADD COLUMN boot_seq INTEGER;
        CREATE TABLE enrollments (id TEXT PRIMARY KEY, name TEXT NOT NULL, target TEXT NOT NULL,
            options TEXT NOT NULL, token TEXT NOT NULL UNIQUE, created_at INTEGER NOT NULL, revoked_at INTEGER,
            max_jobs INTEGER);
        CREATE INDEX jobs_by_machine ON jobs (enrollment, machine_key);
    ";

    #[test]
    fn an_older_database_opens_and_takes_enrollments_and_boot_logs() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("jobs.db");
        Connection::open(&path).unwrap().execute_batch(FIRST_SCHEMA).unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.job("old1").unwrap().unwrap().state, JobState::Finished);
        // Its plaintext token is kept as a hash now, and still matches.
        let (hash, _, _) = db.tokens_and_state("old1").unwrap().unwrap();
        assert!(crate::server::tokens::matches("tok", &hash), "{hash}");

        let req = CreateEnrollment {
            name: "w".into(),
            target: TargetKind::Image,
            options: Default::default(),
            max_jobs: Some(1),
        };
        let e = db.create_enrollment(&req, "e1", &crate::server::tokens::hash(&"a".repeat(64))).unwrap();
        let new = CreateJob {
            name: "w-S1".into(),
            target: TargetKind::Image,
            options: Default::default(),
            client_token: None,
            target_spec: None,
        };
        let token_for = |id: &str| crate::server::tokens::hash(id);
        let ids = NewJobIds { id: "j1", target_token: None };
        let Enrolled::Job(job, true) = db.enrolled_job(&e, "serial:S1", true, &new, ids, &token_for).unwrap() else {
            panic!("no new job")
        };
        assert_eq!(job.enrollment.as_deref(), Some("e1"));
        let ids = NewJobIds { id: "j2", target_token: None };
        assert!(matches!(db.enrolled_job(&e, "serial:S2", true, &new, ids, &token_for).unwrap(), Enrolled::Full(1)));

        db.add_log("j1", "source", "first", Some(("b1", 5))).unwrap();
        db.add_log("j1", "source", "final", Some(("b1", i64::MAX))).unwrap();
        // A slow request with an earlier screen arrives last: it changes nothing.
        db.add_log("j1", "source", "stale", Some(("b1", 10))).unwrap();
        // The other role's screen of the same boot id is its own entry.
        db.add_log("j1", "target", "target's", Some(("b1", 1))).unwrap();
        let logs = db.logs("j1").unwrap();
        assert_eq!(logs.iter().map(|l| l.text.as_str()).collect::<Vec<_>>(), ["final", "target's"]);
        // Opening again changes nothing more.
        drop(db);
        assert_eq!(Db::open(&path).unwrap().enrollments().unwrap()[0].jobs, ["j1"]);
    }

    #[test]
    fn the_unversioned_layout_and_a_newer_database() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("jobs.db");
        let c = Connection::open(&path).unwrap();
        c.execute_batch(FIRST_SCHEMA).unwrap();
        c.execute_batch(UNVERSIONED).unwrap();
        drop(c);
        let db = Db::open(&path).unwrap();
        assert_eq!(db.job("old1").unwrap().unwrap().name, "old job");
        drop(db);
        let v: i64 = Connection::open(&path).unwrap().query_row("PRAGMA user_version", [], |r| r.get(0)).unwrap();
        assert_eq!(v as usize, VERSION);
        Connection::open(&path).unwrap().pragma_update(None, "user_version", VERSION as i64 + 1).unwrap();
        let e = Db::open(&path).err().expect("a newer database is refused");
        assert!(format!("{e:#}").contains("newer than this ferry"), "{e:#}");
    }
}
