//! The tables, and the migrations that bring any database this receiver's releases made up to
//! date. The database's `user_version` counts the migrations applied. Releases before the
//! count existed added columns on open without recording it, so every migration checks what is
//! there first: a database at version 0 may already hold some of their changes.

use anyhow::{bail, Context, Result};
use rusqlite::{Connection, Transaction};

/// The first release's tables.
const FIRST_TABLES: &str = "
CREATE TABLE IF NOT EXISTS jobs (
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
    disk_count INTEGER,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT
);
CREATE TABLE IF NOT EXISTS job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    at INTEGER NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS disks (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx INTEGER NOT NULL,
    identity TEXT NOT NULL,
    partition_table TEXT NOT NULL,
    size INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    bytes_done INTEGER NOT NULL DEFAULT 0,
    bytes_received INTEGER NOT NULL DEFAULT 0,
    chunks_received INTEGER NOT NULL DEFAULT 0,
    rate INTEGER NOT NULL DEFAULT 0,
    blake3 TEXT,
    verified INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, idx)
);
";

const ENROLLMENTS: &str = "
CREATE TABLE IF NOT EXISTS enrollments (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    options TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
";

type Step = fn(&Transaction) -> Result<()>;

/// The migrations, in order: what each brings, and how.
const MIGRATIONS: &[(&str, Step)] = &[
    ("the first release's tables", |tx| Ok(tx.execute_batch(FIRST_TABLES)?)),
    ("the target side of instance jobs", |tx| {
        add_columns(tx, "jobs", &[("target_token", "TEXT"), ("target_spec", "TEXT"), ("delivery", "TEXT")])
    }),
    ("enrollments: jobs a source made for itself, and the machine they are for", |tx| {
        tx.execute_batch(ENROLLMENTS)?;
        // enrolled_offline: 1 when the live image (disks at rest) enrolled into the job last.
        add_columns(tx, "jobs", &[("enrollment", "TEXT"), ("machine_key", "TEXT"), ("enrolled_offline", "INTEGER")])?;
        add_columns(tx, "enrollments", &[("max_jobs", "INTEGER")])
    }),
    ("one boot log entry per boot of the live image, replaced in order as the boot goes on", |tx| {
        add_columns(tx, "job_logs", &[("boot", "TEXT"), ("boot_seq", "INTEGER")])
    }),
    ("indexes: a machine's jobs of an enrollment, a boot's log entry", |tx| {
        Ok(tx.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_by_machine ON jobs (enrollment, machine_key);
             CREATE INDEX IF NOT EXISTS logs_by_boot ON job_logs (job_id, boot, role);",
        )?)
    }),
    ("tokens kept as their SHA-256, not in plaintext", hash_tokens),
    ("the sectors a source could not read, per disk", |tx| add_columns(tx, "disks", &[("bad_ranges", "TEXT")])),
];

/// Replaces every plaintext token (agent, target, enrollment) with its hash.
fn hash_tokens(tx: &Transaction) -> Result<()> {
    use crate::server::tokens::{hash, HASHED};
    let plain = |table: &str, column: &str| -> Result<Vec<(String, String)>> {
        let sql =
            format!("SELECT id, {column} FROM {table} WHERE {column} IS NOT NULL AND {column} NOT LIKE '{HASHED}%'");
        Ok(tx.prepare(&sql)?.query_map([], |r| Ok((r.get(0)?, r.get(1)?)))?.collect::<rusqlite::Result<_>>()?)
    };
    let mut n = 0;
    for (table, column) in [("jobs", "token"), ("jobs", "target_token"), ("enrollments", "token")] {
        for (id, token) in plain(table, column)? {
            tx.execute(
                &format!("UPDATE {table} SET {column} = ?2 WHERE id = ?1"),
                rusqlite::params![id, hash(&token)],
            )?;
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

fn add_columns(tx: &Transaction, table: &str, columns: &[(&str, &str)]) -> Result<()> {
    let existing: Vec<String> = tx
        .prepare("SELECT name FROM pragma_table_info(?1)")?
        .query_map([table], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?;
    for (column, ty) in columns {
        if !existing.iter().any(|c| c == column) {
            tx.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                .with_context(|| format!("adding column {column} to table {table}"))?;
        }
    }
    Ok(())
}

/// The same tables in PostgreSQL, as this release has them. A PostgreSQL job database starts at
/// this release's version (no older one exists); a later release's migration adds its change
/// to both. Integers are BIGINT (ferry's values are 64-bit); `rowid`, implicit in SQLite, is a
/// column here so that "in insertion order" reads the same in both.
const POSTGRES_TABLES: &str = "
CREATE TABLE jobs (
    rowid BIGSERIAL UNIQUE,
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
    disk_count BIGINT,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL,
    target_token TEXT,
    target_spec TEXT,
    delivery TEXT,
    enrollment TEXT,
    machine_key TEXT,
    enrolled_offline BIGINT
);
CREATE TABLE job_events (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    state TEXT NOT NULL,
    code TEXT,
    reason TEXT
);
CREATE TABLE job_logs (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    seq BIGSERIAL PRIMARY KEY,
    at BIGINT NOT NULL,
    role TEXT NOT NULL,
    text TEXT NOT NULL,
    boot TEXT,
    boot_seq BIGINT
);
CREATE TABLE disks (
    job_id TEXT NOT NULL REFERENCES jobs(id),
    idx BIGINT NOT NULL,
    identity TEXT NOT NULL,
    partition_table TEXT NOT NULL,
    size BIGINT NOT NULL,
    chunk_size BIGINT NOT NULL,
    bytes_done BIGINT NOT NULL DEFAULT 0,
    bytes_received BIGINT NOT NULL DEFAULT 0,
    chunks_received BIGINT NOT NULL DEFAULT 0,
    rate BIGINT NOT NULL DEFAULT 0,
    blake3 TEXT,
    verified BIGINT NOT NULL DEFAULT 0,
    bad_ranges TEXT,
    PRIMARY KEY (job_id, idx)
);
CREATE TABLE enrollments (
    rowid BIGSERIAL UNIQUE,
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    target TEXT NOT NULL,
    options TEXT NOT NULL,
    token TEXT NOT NULL UNIQUE,
    created_at BIGINT NOT NULL,
    revoked_at BIGINT,
    max_jobs BIGINT
);
CREATE INDEX jobs_by_machine ON jobs (enrollment, machine_key);
CREATE INDEX logs_by_boot ON job_logs (job_id, boot, role);
";

/// Makes or checks PostgreSQL's tables, inside the caller's transaction. The version lives in
/// `ferry_schema`, locked for the check: receivers starting together make the tables once.
pub fn migrate_postgres(tx: &mut dyn super::sql::Exec) -> Result<()> {
    tx.execute("CREATE TABLE IF NOT EXISTS ferry_schema (version BIGINT NOT NULL)", &[])?;
    tx.execute("LOCK TABLE ferry_schema IN EXCLUSIVE MODE", &[])?;
    let version: Option<u64> =
        tx.query_opt("SELECT version FROM ferry_schema", &[])?.map(|r| r.get("version")).transpose()?;
    match version {
        None => {
            for statement in POSTGRES_TABLES.split(';').map(str::trim).filter(|s| !s.is_empty()) {
                tx.execute(statement, &[])?;
            }
            tx.execute("INSERT INTO ferry_schema (version) VALUES (?1)", super::sql::params![VERSION])?;
            log::info!("job database made in PostgreSQL at version {VERSION}");
        }
        Some(v) if v as usize > VERSION => {
            bail!("the database is of version {v}, newer than this ferry's {VERSION}: use a newer ferry")
        }
        Some(v) if (v as usize) < VERSION => {
            bail!("the PostgreSQL database is of version {v}; this ferry has no migration for it to {VERSION}")
        }
        Some(_) => {}
    }
    Ok(())
}

/// Applies the migrations the database lacks, each in its own transaction with the version it
/// reaches.
pub fn migrate(conn: &mut Connection) -> Result<()> {
    let version: usize = conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))?.try_into().unwrap_or(0);
    if version > VERSION {
        bail!("the database is of version {version}, newer than this ferry's {VERSION}: use a newer ferry");
    }
    for (i, (what, step)) in MIGRATIONS.iter().enumerate().skip(version) {
        let tx = conn.transaction()?;
        step(&tx).with_context(|| format!("migration {}: {what}", i + 1))?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
        if version > 0 || i + 1 == VERSION {
            log::info!("job database at version {}: {what}", i + 1);
        }
    }
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
