//! Jobs in an embedded SQLite database. Every state change is a row in `job_events` with its
//! time. WAL mode: a receiver killed at any moment restarts with every committed change intact.

use std::path::Path;
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use rusqlite::{params, Connection, OptionalExtension};

use crate::wire::{
    BeginDisk, CreateEnrollment, CreateJob, Delivery, DiskStatus, Enrollment, Job, JobEvent, JobOptions, JobState,
    MachineIdentity, TargetKind, TargetSpec,
};

pub struct Db {
    conn: Mutex<Connection>,
}

pub fn now() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

const SCHEMA: &str = "
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

/// Columns added after the first release, added to older databases on open: (table, column,
/// type).
const ADDED_COLUMNS: &[(&str, &str, &str)] = &[
    ("jobs", "target_token", "TEXT"),
    ("jobs", "target_spec", "TEXT"),
    ("jobs", "delivery", "TEXT"),
    // Jobs a source made for itself with an enrollment token, and the machine they are for.
    ("jobs", "enrollment", "TEXT"),
    ("jobs", "machine_key", "TEXT"),
    // 1 when the live image (disks at rest) enrolled into the job last.
    ("jobs", "enrolled_offline", "INTEGER"),
    // One entry per boot of the live image, replaced as the boot goes on.
    ("job_logs", "boot", "TEXT"),
    // Which of a boot's transcripts this is (later ones replace earlier ones, never the reverse).
    ("job_logs", "boot_seq", "INTEGER"),
    ("enrollments", "max_jobs", "INTEGER"),
];

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string(v).expect("wire types always serialize")
}

/// What an enrollment gave a machine.
pub enum Enrolled {
    /// Its job, and whether it is new.
    Job(Box<Job>, bool),
    /// The enrollment was revoked.
    Revoked,
    /// The enrollment already has its `max_jobs` machines (how many), and this is not one.
    Full(u64),
}

/// The ids and tokens of a job about to be created.
pub struct NewJobIds<'a> {
    pub id: &'a str,
    pub token: &'a str,
    pub target_token: Option<&'a str>,
}

/// Inserts a Waiting job and its first event (inside the caller's transaction).
fn insert_job(
    tx: &rusqlite::Transaction,
    req: &CreateJob,
    id: &str,
    token: &str,
    target_token: Option<&str>,
    enrolled: Option<(&str, &str)>,
) -> Result<()> {
    let t = now();
    tx.execute(
        "INSERT INTO jobs (id, name, target, state, options, token, client_token, created_at, updated_at,
                           target_token, target_spec, enrollment, machine_key)
         VALUES (?1, ?2, ?3, 'Waiting', ?4, ?5, ?6, ?7, ?7, ?8, ?9, ?10, ?11)",
        params![
            id,
            req.name,
            json(&req.target).trim_matches('"'),
            json(&req.options),
            token,
            req.client_token,
            t,
            target_token,
            req.target_spec.as_ref().map(json),
            enrolled.map(|e| e.0),
            enrolled.map(|e| e.1),
        ],
    )?;
    tx.execute("INSERT INTO job_events (job_id, at, state) VALUES (?1, ?2, 'Waiting')", params![id, t])?;
    Ok(())
}

impl Db {
    pub fn open(path: &Path) -> Result<Self> {
        let conn = Connection::open(path).with_context(|| format!("opening job database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.pragma_update(None, "foreign_keys", "ON")?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.execute_batch(SCHEMA).context("creating the job tables")?;
        for (table, column, ty) in ADDED_COLUMNS {
            let existing: Vec<String> = conn
                .prepare("SELECT name FROM pragma_table_info(?1)")?
                .query_map([table], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            if !existing.iter().any(|c| c == column) {
                conn.execute_batch(&format!("ALTER TABLE {table} ADD COLUMN {column} {ty}"))
                    .with_context(|| format!("adding column {column} to table {table}"))?;
            }
        }
        // After the added columns exist (an older database gets them just above).
        conn.execute_batch(
            "CREATE INDEX IF NOT EXISTS jobs_by_machine ON jobs (enrollment, machine_key);
             CREATE INDEX IF NOT EXISTS logs_by_boot ON job_logs (job_id, boot, role);",
        )
        .context("indexing jobs by enrollment and logs by boot")?;
        Ok(Self { conn: Mutex::new(conn) })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Creates a job, or returns the one created earlier with the same client token.
    pub fn create_job(&self, req: &CreateJob, id: &str, token: &str, target_token: Option<&str>) -> Result<Job> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(ct) = &req.client_token {
            let existing: Option<String> =
                tx.query_row("SELECT id FROM jobs WHERE client_token = ?1", [ct], |r| r.get(0)).optional()?;
            if let Some(existing) = existing {
                drop(tx);
                drop(conn);
                return self.job(&existing, true)?.context("job vanished");
            }
        }
        insert_job(&tx, req, id, token, target_token, None)?;
        tx.commit()?;
        drop(conn);
        self.job(id, true)?.context("job vanished")
    }

    pub fn create_enrollment(&self, req: &CreateEnrollment, id: &str, token: &str) -> Result<Enrollment> {
        self.conn().execute(
            "INSERT INTO enrollments (id, name, target, options, token, created_at, max_jobs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, req.name, json(&req.target).trim_matches('"'), json(&req.options), token, now(), req.max_jobs],
        )?;
        // A new enrollment has no jobs yet.
        self.enrollment_rows(true)?.into_iter().find(|e| e.id == id).context("enrollment vanished")
    }

    /// Every enrollment, oldest first, with the jobs each created; tokens only when `with_token`.
    pub fn enrollments(&self, with_token: bool) -> Result<Vec<Enrollment>> {
        let mut list = self.enrollment_rows(with_token)?;
        let conn = self.conn();
        let mut jobs = conn.prepare("SELECT id FROM jobs WHERE enrollment = ?1 ORDER BY rowid")?;
        for e in &mut list {
            e.jobs = jobs.query_map([&e.id], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
        }
        Ok(list)
    }

    /// The enrollments without their jobs: what checking an enrollment token needs (cheap:
    /// every `POST /enroll` compares its token with all of them).
    pub fn enrollment_rows(&self, with_token: bool) -> Result<Vec<Enrollment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, target, options, token, created_at, revoked_at, max_jobs FROM enrollments ORDER BY rowid",
        )?;
        let list = stmt
            .query_map([], |r| {
                Ok(Enrollment {
                    id: r.get(0)?,
                    name: r.get(1)?,
                    target: if r.get::<_, String>(2)? == "instance" { TargetKind::Instance } else { TargetKind::Image },
                    options: serde_json::from_str(&r.get::<_, String>(3)?).unwrap_or_default(),
                    token: if with_token { Some(r.get(4)?) } else { None },
                    created_at: r.get(5)?,
                    revoked_at: r.get(6)?,
                    max_jobs: r.get(7)?,
                    jobs: vec![],
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(list)
    }

    /// Stops an enrollment from enrolling more machines (its jobs go on). None: no such id.
    pub fn revoke_enrollment(&self, id: &str) -> Result<Option<Enrollment>> {
        self.conn().execute(
            "UPDATE enrollments SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now()],
        )?;
        Ok(self.enrollments(false)?.into_iter().find(|e| e.id == id))
    }

    /// The job a machine works on under an enrollment: its newest job, so that a reboot or an
    /// interruption resumes it, and a job the operator cancelled or must restart stays with
    /// the operator; but once that job Finished, a new job (the cutover after a pre-seed: the
    /// chunks the receiver holds are not sent again), unless the Finished copy was made by the
    /// live image and the live image asks again (the migration is done; a machine left to
    /// boot the stick must not copy itself over and over). The bool says whether it is new.
    ///
    /// `offline` is recorded on the job at every enrollment: the agent that enrolled last is
    /// the one that finishes it, so a job a running system finished (a pre-seed, even one the
    /// live image had begun) never counts as the offline migration.
    ///
    /// Revocation and the job cap are checked here, in the same transaction.
    pub fn enrolled_job(
        &self,
        e: &Enrollment,
        machine_key: &str,
        offline: bool,
        new: &CreateJob,
        ids: NewJobIds,
    ) -> Result<Enrolled> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(Option<u64>, Option<u64>)> = tx
            .query_row("SELECT revoked_at, max_jobs FROM enrollments WHERE id = ?1", [&e.id], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        let max_jobs = match row {
            Some((None, max)) => max,
            _ => return Ok(Enrolled::Revoked),
        };
        // Newest by insertion order, not by clock: a receiver whose clock stepped back still
        // finds the machine's latest job.
        let newest: Option<(String, String, Option<i64>)> = tx
            .query_row(
                "SELECT id, state, enrolled_offline FROM jobs WHERE enrollment = ?1 AND machine_key = ?2
                 ORDER BY rowid DESC LIMIT 1",
                [&e.id, machine_key],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )
            .optional()?;
        let newest_known = newest.is_some();
        let reuse = newest.filter(|(_, state, was_offline)| {
            state != JobState::Finished.as_str() || (offline && was_offline.unwrap_or(0) != 0)
        });
        let (id, created) = match reuse {
            Some((id, _, _)) => (id, false),
            None => {
                // The cap counts machines: one that has a job here (a pre-seed, then its
                // cutover) is always let through.
                let machines: u64 =
                    tx.query_row("SELECT COUNT(DISTINCT machine_key) FROM jobs WHERE enrollment = ?1", [&e.id], |r| {
                        r.get(0)
                    })?;
                if !newest_known && max_jobs.is_some_and(|max| machines >= max) {
                    return Ok(Enrolled::Full(machines));
                }
                insert_job(&tx, new, ids.id, ids.token, ids.target_token, Some((&e.id, machine_key)))?;
                (ids.id.to_string(), true)
            }
        };
        tx.execute("UPDATE jobs SET enrolled_offline = ?2 WHERE id = ?1", params![id, offline as i64])?;
        tx.commit()?;
        drop(conn);
        Ok(Enrolled::Job(Box::new(self.job(&id, true)?.context("job vanished")?), created))
    }

    /// A job with its disks and history; the agent token only when `with_token`.
    pub fn job(&self, id: &str, with_token: bool) -> Result<Option<Job>> {
        let conn = self.conn();
        let row = conn
            .query_row(
                "SELECT id, name, target, state, error_code, error_reason, options, token, machine, created_at, updated_at,
                        inventory, target_token, target_spec, delivery, enrollment
                 FROM jobs WHERE id = ?1",
                [id],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, String>(3)?,
                        r.get::<_, Option<String>>(4)?,
                        r.get::<_, Option<String>>(5)?,
                        r.get::<_, String>(6)?,
                        r.get::<_, String>(7)?,
                        r.get::<_, Option<String>>(8)?,
                        r.get::<_, u64>(9)?,
                        r.get::<_, u64>(10)?,
                        r.get::<_, Option<String>>(11)?,
                        r.get::<_, Option<String>>(12)?,
                        r.get::<_, Option<String>>(13)?,
                        r.get::<_, Option<String>>(14)?,
                        r.get::<_, Option<String>>(15)?,
                    ))
                },
            )
            .optional()?;
        let Some((
            id,
            name,
            target,
            state,
            error_code,
            error_reason,
            options,
            token,
            machine,
            created_at,
            updated_at,
            inventory,
            target_token,
            target_spec,
            delivery,
            enrollment,
        )) = row
        else {
            return Ok(None);
        };
        let mut stmt = conn.prepare(
            "SELECT idx, identity, partition_table, size, chunk_size, bytes_done, bytes_received, chunks_received,
                    rate, blake3, verified FROM disks WHERE job_id = ?1 ORDER BY idx",
        )?;
        let disks = stmt
            .query_map([&id], |r| {
                let size: u64 = r.get(3)?;
                let bytes_done: u64 = r.get(5)?;
                let rate: u64 = r.get(8)?;
                Ok(DiskStatus {
                    index: r.get(0)?,
                    identity: serde_json::from_str(&r.get::<_, String>(1)?).unwrap_or_default(),
                    partition_table: serde_json::from_str(&r.get::<_, String>(2)?).unwrap_or_else(|_| {
                        crate::disk::PartitionTable {
                            kind: crate::disk::TableKind::None,
                            sector_size: 512,
                            disk_guid: None,
                            mbr_signature: None,
                            problems: vec!["unreadable record".into()],
                            partitions: vec![],
                        }
                    }),
                    size,
                    chunk_size: r.get(4)?,
                    bytes_done,
                    bytes_received: r.get(6)?,
                    chunks_received: r.get(7)?,
                    rate,
                    eta_seconds: (rate > 0 && bytes_done < size).then(|| (size - bytes_done) / rate),
                    blake3: r.get(9)?,
                    verified: r.get::<_, i64>(10)? != 0,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        let mut stmt = conn.prepare("SELECT at, state, code, reason FROM job_events WHERE job_id = ?1 ORDER BY seq")?;
        let history = stmt
            .query_map([&id], |r| {
                Ok(JobEvent {
                    at: r.get(0)?,
                    state: JobState::parse(&r.get::<_, String>(1)?).unwrap_or(JobState::InError),
                    code: r.get(2)?,
                    reason: r.get(3)?,
                })
            })?
            .collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(Some(Job {
            id,
            name,
            target: if target == "instance" { TargetKind::Instance } else { TargetKind::Image },
            state: JobState::parse(&state).unwrap_or(JobState::InError),
            error_code,
            error_reason,
            options: serde_json::from_str::<JobOptions>(&options).unwrap_or_default(),
            token: with_token.then_some(token),
            created_at,
            updated_at,
            machine: machine.and_then(|m| serde_json::from_str::<MachineIdentity>(&m).ok()),
            disks,
            history,
            inventory: inventory.and_then(|i| serde_json::from_str(&i).ok()),
            target_spec: target_spec.and_then(|t| serde_json::from_str(&t).ok()),
            target_token: if with_token { target_token } else { None },
            delivery: delivery.and_then(|d| serde_json::from_str(&d).ok()),
            enrollment,
        }))
    }

    /// Keeps a console transcript; only the newest 20 per job are kept. With `boot`, the entry of that boot is replaced (the live image sends its screen as it
    /// goes, then once more with the verdict).
    /// `seq` orders a boot's transcripts: one that arrives after a later one (a slow request)
    /// changes nothing.
    pub fn add_log(&self, id: &str, role: &str, text: &str, boot: Option<(&str, i64)>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let existing: Option<Option<i64>> = match boot {
            Some((b, _)) => tx
                .query_row(
                    "SELECT boot_seq FROM job_logs WHERE job_id = ?1 AND boot = ?2 AND role = ?3",
                    params![id, b, role],
                    |r| r.get(0),
                )
                .optional()?,
            None => None,
        };
        match (boot, existing) {
            (Some((b, seq)), Some(stored)) => {
                if stored.unwrap_or(0) <= seq {
                    tx.execute(
                        "UPDATE job_logs SET at = ?4, text = ?5, boot_seq = ?6
                         WHERE job_id = ?1 AND boot = ?2 AND role = ?3",
                        params![id, b, role, now(), text, seq],
                    )?;
                }
            }
            _ => {
                tx.execute(
                    "INSERT INTO job_logs (job_id, at, role, text, boot, boot_seq) VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![id, now(), role, text, boot.map(|b| b.0), boot.map(|b| b.1)],
                )?;
            }
        }
        tx.execute(
            "DELETE FROM job_logs WHERE job_id = ?1 AND seq NOT IN
                 (SELECT seq FROM job_logs WHERE job_id = ?1 ORDER BY seq DESC LIMIT 20)",
            [id],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn logs(&self, id: &str) -> Result<Vec<crate::wire::LogEntry>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT at, role, text FROM job_logs WHERE job_id = ?1 ORDER BY seq")?;
        let rows =
            stmt.query_map([id], |r| Ok(crate::wire::LogEntry { at: r.get(0)?, role: r.get(1)?, text: r.get(2)? }))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// How many jobs are in each state.
    pub fn jobs_by_state(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, u64>(1)?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// Every job, in creation order, without tokens.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let mut jobs = vec![];
        for id in self.job_ids()? {
            jobs.extend(self.job(&id, false)?);
        }
        Ok(jobs)
    }

    pub fn job_ids(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        // Creation order (rowids only grow: no job is deleted), exact within a second too.
        let mut stmt = conn.prepare("SELECT id FROM jobs ORDER BY rowid")?;
        let ids = stmt.query_map([], |r| r.get(0))?.collect::<rusqlite::Result<Vec<String>>>()?;
        Ok(ids)
    }

    /// The agent token, target token (instance jobs) and state of a job.
    pub fn tokens_and_state(&self, id: &str) -> Result<Option<(String, Option<String>, JobState)>> {
        let conn = self.conn();
        let row: Option<(String, Option<String>, String)> = conn
            .query_row("SELECT token, target_token, state FROM jobs WHERE id = ?1", [id], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?))
            })
            .optional()?;
        Ok(row.map(|(t, tt, s)| (t, tt, JobState::parse(&s).unwrap_or(JobState::InError))))
    }

    pub fn set_target_spec(&self, id: &str, spec: &TargetSpec) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET target_spec = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, json(spec), now()],
        )?;
        Ok(())
    }

    /// Changes the delivery record of a job under the database lock (read, modify, write), so
    /// concurrent target calls never lose each other's changes.
    pub fn update_delivery<T>(&self, id: &str, change: impl FnOnce(&mut Option<Delivery>) -> T) -> Result<T> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let current: Option<String> =
            tx.query_row("SELECT delivery FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?.flatten();
        let mut delivery = current.and_then(|d| serde_json::from_str::<Delivery>(&d).ok());
        let out = change(&mut delivery);
        tx.execute(
            "UPDATE jobs SET delivery = ?2, updated_at = ?3 WHERE id = ?1",
            params![id, delivery.as_ref().map(json), now()],
        )?;
        tx.commit()?;
        Ok(out)
    }

    /// Moves a job to `state`, recording the event; clears the error unless it is InError.
    pub fn set_state(&self, id: &str, state: JobState, code: Option<&str>, reason: Option<&str>) -> Result<()> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        let t = now();
        let (code, reason) = if state == JobState::InError { (code, reason) } else { (None, None) };
        tx.execute(
            "UPDATE jobs SET state = ?2, error_code = ?3, error_reason = ?4, updated_at = ?5 WHERE id = ?1",
            params![id, state.as_str(), code, reason, t],
        )?;
        tx.execute(
            "INSERT INTO job_events (job_id, at, state, code, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
            params![id, t, state.as_str(), code, reason],
        )?;
        tx.commit()?;
        Ok(())
    }

    pub fn set_machine(
        &self,
        id: &str,
        machine: &MachineIdentity,
        inventory: Option<&serde_json::Value>,
        disk_count: usize,
    ) -> Result<()> {
        self.conn().execute(
            "UPDATE jobs SET machine = ?2, disk_count = ?3, updated_at = ?4, inventory = ?5 WHERE id = ?1",
            params![id, json(machine), disk_count as i64, now(), inventory.map(json)],
        )?;
        Ok(())
    }

    pub fn disk_count(&self, id: &str) -> Result<Option<u32>> {
        Ok(self.conn().query_row("SELECT disk_count FROM jobs WHERE id = ?1", [id], |r| r.get(0)).optional()?.flatten())
    }

    /// Starts (or restarts) a disk. A disk seen before keeps its counters only if it is the
    /// same disk (size and chunk size); otherwise its record starts afresh.
    pub fn begin_disk(&self, id: &str, idx: u32, b: &BeginDisk) -> Result<()> {
        let conn = self.conn();
        let same: Option<(u64, u64)> = conn
            .query_row("SELECT size, chunk_size FROM disks WHERE job_id = ?1 AND idx = ?2", params![id, idx], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?;
        if same == Some((b.size, b.chunk_size)) {
            conn.execute(
                "UPDATE disks SET identity = ?3, partition_table = ?4, verified = 0, blake3 = NULL, bytes_done = 0
                 WHERE job_id = ?1 AND idx = ?2",
                params![id, idx, json(&b.identity), json(&b.partition_table)],
            )?;
        } else {
            conn.execute(
                "INSERT OR REPLACE INTO disks (job_id, idx, identity, partition_table, size, chunk_size)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![id, idx, json(&b.identity), json(&b.partition_table), b.size, b.chunk_size],
            )?;
        }
        Ok(())
    }

    /// Size and chunk size of a begun disk.
    pub fn disk_geometry(&self, id: &str, idx: u32) -> Result<Option<(u64, u64)>> {
        Ok(self
            .conn()
            .query_row("SELECT size, chunk_size FROM disks WHERE job_id = ?1 AND idx = ?2", params![id, idx], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()?)
    }

    pub fn add_received(&self, id: &str, idx: u32, bytes: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE disks SET bytes_received = bytes_received + ?3, chunks_received = chunks_received + 1
             WHERE job_id = ?1 AND idx = ?2",
            params![id, idx, bytes],
        )?;
        Ok(())
    }

    pub fn set_progress(&self, id: &str, idx: u32, bytes_done: u64, rate: u64) -> Result<()> {
        let conn = self.conn();
        conn.execute(
            "UPDATE disks SET bytes_done = ?3, rate = ?4 WHERE job_id = ?1 AND idx = ?2",
            params![id, idx, bytes_done, rate],
        )?;
        conn.execute("UPDATE jobs SET updated_at = ?2 WHERE id = ?1", params![id, now()])?;
        Ok(())
    }

    pub fn verify_disk(&self, id: &str, idx: u32, blake3: &str, size: u64) -> Result<()> {
        self.conn().execute(
            "UPDATE disks SET verified = 1, blake3 = ?3, bytes_done = ?4 WHERE job_id = ?1 AND idx = ?2",
            params![id, idx, blake3, size],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn an_older_database_opens_and_takes_enrollments_and_boot_logs() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("jobs.db");
        Connection::open(&path).unwrap().execute_batch(FIRST_SCHEMA).unwrap();
        let db = Db::open(&path).unwrap();
        assert_eq!(db.job("old1", false).unwrap().unwrap().state, JobState::Finished);

        let req = CreateEnrollment {
            name: "w".into(),
            target: TargetKind::Image,
            options: Default::default(),
            max_jobs: Some(1),
        };
        let e = db.create_enrollment(&req, "e1", &"a".repeat(64)).unwrap();
        let new = CreateJob {
            name: "w-S1".into(),
            target: TargetKind::Image,
            options: Default::default(),
            client_token: None,
            target_spec: None,
        };
        let ids = NewJobIds { id: "j1", token: "t1", target_token: None };
        let Enrolled::Job(job, true) = db.enrolled_job(&e, "serial:S1", true, &new, ids).unwrap() else {
            panic!("no new job")
        };
        assert_eq!(job.enrollment.as_deref(), Some("e1"));
        let ids = NewJobIds { id: "j2", token: "t2", target_token: None };
        assert!(matches!(db.enrolled_job(&e, "serial:S2", true, &new, ids).unwrap(), Enrolled::Full(1)));

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
        assert_eq!(Db::open(&path).unwrap().enrollments(false).unwrap()[0].jobs, ["j1"]);
    }
}
