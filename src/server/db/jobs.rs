//! Jobs: their rows, disks and history; state changes and per-disk progress.

use std::collections::HashMap;

use anyhow::{Context, Result};
use rusqlite::{params, OptionalExtension, Row};

use super::{from_json, from_json_opt, job_state, json, kind_str, now, target_kind, Db};
use crate::wire::{
    BadRange, BeginDisk, CreateJob, Delivery, DiskStatus, Job, JobEvent, JobState, MachineIdentity, TargetSpec,
};

const JOB_COLUMNS: &str = "id, name, target, state, error_code, error_reason, options, token, machine, created_at,
     updated_at, inventory, target_token, target_spec, delivery, enrollment";
const DISK_COLUMNS: &str = "job_id, idx, identity, partition_table, size, chunk_size, bytes_done, bytes_received,
     chunks_received, rate, blake3, verified, bad_ranges";
const EVENT_COLUMNS: &str = "job_id, at, state, code, reason";

/// A job's row, without its disks and history. Tokens are kept only as hashes and never read
/// back: they are shown once, when made.
fn job_row(r: &Row) -> rusqlite::Result<Job> {
    Ok(Job {
        id: r.get("id")?,
        name: r.get("name")?,
        target: target_kind(r, "target")?,
        state: job_state(r, "state")?,
        error_code: r.get("error_code")?,
        error_reason: r.get("error_reason")?,
        options: from_json(r, "options")?,
        token: None,
        created_at: r.get("created_at")?,
        updated_at: r.get("updated_at")?,
        machine: from_json_opt::<MachineIdentity>(r, "machine")?,
        disks: vec![],
        history: vec![],
        inventory: from_json_opt(r, "inventory")?,
        target_spec: from_json_opt(r, "target_spec")?,
        target_token: None,
        delivery: from_json_opt(r, "delivery")?,
        enrollment: r.get("enrollment")?,
    })
}

fn disk_row(r: &Row) -> rusqlite::Result<(String, DiskStatus)> {
    let size: u64 = r.get("size")?;
    let bytes_done: u64 = r.get("bytes_done")?;
    let rate: u64 = r.get("rate")?;
    let disk = DiskStatus {
        index: r.get("idx")?,
        identity: from_json(r, "identity")?,
        partition_table: from_json(r, "partition_table")?,
        size,
        chunk_size: r.get("chunk_size")?,
        bytes_done,
        bytes_received: r.get("bytes_received")?,
        chunks_received: r.get("chunks_received")?,
        rate,
        eta_seconds: (rate > 0 && bytes_done < size).then(|| (size - bytes_done) / rate),
        blake3: r.get("blake3")?,
        verified: r.get::<_, i64>("verified")? != 0,
        bad_ranges: from_json_opt(r, "bad_ranges")?.unwrap_or_default(),
    };
    Ok((r.get("job_id")?, disk))
}

fn event_row(r: &Row) -> rusqlite::Result<(String, JobEvent)> {
    let e =
        JobEvent { at: r.get("at")?, state: job_state(r, "state")?, code: r.get("code")?, reason: r.get("reason")? };
    Ok((r.get("job_id")?, e))
}

/// Inserts a Waiting job and its first event (inside the caller's transaction).
pub(super) fn insert_job(
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
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?8, ?9, ?10, ?11, ?12)",
        params![
            id,
            req.name,
            kind_str(req.target),
            JobState::Waiting.as_str(),
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
    tx.execute(
        "INSERT INTO job_events (job_id, at, state) VALUES (?1, ?2, ?3)",
        params![id, t, JobState::Waiting.as_str()],
    )?;
    Ok(())
}

impl Db {
    /// Creates a job with these token hashes, or returns the one created earlier with the same
    /// client token (the bool: whether it is new).
    pub fn create_job(
        &self,
        req: &CreateJob,
        id: &str,
        token: &str,
        target_token: Option<&str>,
    ) -> Result<(Job, bool)> {
        let mut conn = self.conn();
        let tx = conn.transaction()?;
        if let Some(ct) = &req.client_token {
            let existing: Option<String> =
                tx.query_row("SELECT id FROM jobs WHERE client_token = ?1", [ct], |r| r.get(0)).optional()?;
            if let Some(existing) = existing {
                drop(tx);
                drop(conn);
                return Ok((self.job(&existing)?.context("job vanished")?, false));
            }
        }
        insert_job(&tx, req, id, token, target_token, None)?;
        tx.commit()?;
        drop(conn);
        Ok((self.job(id)?.context("job vanished")?, true))
    }

    /// Replaces a job's token hashes (the ones given).
    pub fn set_tokens(&self, id: &str, token: Option<&str>, target_token: Option<&str>) -> Result<()> {
        let conn = self.conn();
        if let Some(t) = token {
            conn.execute("UPDATE jobs SET token = ?2 WHERE id = ?1", params![id, t])?;
        }
        if let Some(t) = target_token {
            conn.execute("UPDATE jobs SET target_token = ?2 WHERE id = ?1", params![id, t])?;
        }
        Ok(())
    }

    /// A job with its disks and history.
    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        let conn = self.conn();
        let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
        let Some(mut job) = conn.query_row(&sql, [id], job_row).optional()? else {
            return Ok(None);
        };
        let sql = format!("SELECT {DISK_COLUMNS} FROM disks WHERE job_id = ?1 ORDER BY idx");
        job.disks = conn
            .prepare(&sql)?
            .query_map([id], disk_row)?
            .map(|d| d.map(|(_, d)| d))
            .collect::<rusqlite::Result<_>>()?;
        let sql = format!("SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ?1 ORDER BY seq");
        job.history = conn
            .prepare(&sql)?
            .query_map([id], event_row)?
            .map(|e| e.map(|(_, e)| e))
            .collect::<rusqlite::Result<_>>()?;
        Ok(Some(job))
    }

    /// Every job in creation order (rowids only grow: no job is deleted), without tokens: three
    /// queries, whatever the number of jobs.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        let conn = self.conn();
        let mut jobs: Vec<Job> = conn
            .prepare(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY rowid"))?
            .query_map([], job_row)?
            .collect::<rusqlite::Result<_>>()?;
        let at: HashMap<String, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id.clone(), i)).collect();
        for d in
            conn.prepare(&format!("SELECT {DISK_COLUMNS} FROM disks ORDER BY job_id, idx"))?.query_map([], disk_row)?
        {
            let (job, disk) = d?;
            if let Some(i) = at.get(&job) {
                jobs[*i].disks.push(disk);
            }
        }
        for e in
            conn.prepare(&format!("SELECT {EVENT_COLUMNS} FROM job_events ORDER BY seq"))?.query_map([], event_row)?
        {
            let (job, event) = e?;
            if let Some(i) = at.get(&job) {
                jobs[*i].history.push(event);
            }
        }
        Ok(jobs)
    }

    /// How many jobs are in each state.
    pub fn jobs_by_state(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        let conn = self.conn();
        let mut stmt = conn.prepare("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")?;
        let rows = stmt.query_map([], |r| Ok((r.get::<_, String>("state")?, r.get::<_, u64>("n")?)))?;
        Ok(rows.collect::<rusqlite::Result<_>>()?)
    }

    /// The hashes of the agent token and target token (instance jobs), and the state of a job.
    pub fn tokens_and_state(&self, id: &str) -> Result<Option<(String, Option<String>, JobState)>> {
        Ok(self
            .conn()
            .query_row("SELECT token, target_token, state FROM jobs WHERE id = ?1", [id], |r| {
                Ok((r.get("token")?, r.get("target_token")?, job_state(r, "state")?))
            })
            .optional()?)
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
        let mut delivery: Option<Delivery> = tx
            .query_row("SELECT delivery FROM jobs WHERE id = ?1", [id], |r| from_json_opt(r, "delivery"))
            .optional()?
            .flatten();
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
        Ok(self
            .conn()
            .query_row("SELECT disk_count FROM jobs WHERE id = ?1", [id], |r| r.get("disk_count"))
            .optional()?
            .flatten())
    }

    /// Starts (or restarts) a disk. A disk seen before keeps its counters only if it is the
    /// same disk (size and chunk size); otherwise its record starts afresh.
    pub fn begin_disk(&self, id: &str, idx: u32, b: &BeginDisk) -> Result<()> {
        let same = self.disk_geometry(id, idx)?;
        let conn = self.conn();
        if same == Some((b.size, b.chunk_size)) {
            conn.execute(
                "UPDATE disks SET identity = ?3, partition_table = ?4, verified = 0, blake3 = NULL, bytes_done = 0,
                 bad_ranges = NULL WHERE job_id = ?1 AND idx = ?2",
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
                Ok((r.get("size")?, r.get("chunk_size")?))
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

    /// The disk is verified with `blake3`, with the sectors the source could not read.
    pub fn verify_disk(&self, id: &str, idx: u32, blake3: &str, size: u64, bad_ranges: &[BadRange]) -> Result<()> {
        let bad = (!bad_ranges.is_empty()).then(|| json(&bad_ranges));
        self.conn().execute(
            "UPDATE disks SET verified = 1, blake3 = ?3, bytes_done = ?4, bad_ranges = ?5 WHERE job_id = ?1 AND idx = ?2",
            params![id, idx, blake3, size, bad],
        )?;
        Ok(())
    }
}
