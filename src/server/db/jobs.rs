//! Jobs: their rows, disks and history; state changes and per-disk progress.

use std::collections::HashMap;

use anyhow::{Context, Result};

use super::sql::{params, Exec, Row};
use super::{from_json, from_json_opt, job_state, json, kind_str, now, target_kind, Db};
use crate::wire::{BeginDisk, CreateJob, Delivery, DiskStatus, Job, JobEvent, JobState, MachineIdentity, TargetSpec};

const JOB_COLUMNS: &str = "id, name, target, state, error_code, error_reason, options, token, machine, created_at,
     updated_at, inventory, target_token, target_spec, delivery, enrollment";
const DISK_COLUMNS: &str = "job_id, idx, identity, partition_table, size, chunk_size, bytes_done, bytes_received,
     chunks_received, rate, blake3, verified, bad_ranges, used_only";
const EVENT_COLUMNS: &str = "job_id, at, state, code, reason";

/// A job's row, without its disks and history. Tokens are kept only as hashes and never read
/// back: they are shown once, when made.
fn job_row(r: &Row) -> Result<Job> {
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

fn disk_row(r: &Row) -> Result<(String, DiskStatus)> {
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
        verified: r.get::<i64>("verified")? != 0,
        bad_ranges: from_json_opt(r, "bad_ranges")?.unwrap_or_default(),
        used_only: from_json_opt(r, "used_only")?,
    };
    Ok((r.get("job_id")?, disk))
}

fn event_row(r: &Row) -> Result<(String, JobEvent)> {
    let e =
        JobEvent { at: r.get("at")?, state: job_state(r, "state")?, code: r.get("code")?, reason: r.get("reason")? };
    Ok((r.get("job_id")?, e))
}

/// Inserts a Waiting job and its first event (inside the caller's transaction).
pub(super) fn insert_job(
    tx: &mut dyn Exec,
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
            &req.name,
            kind_str(req.target),
            JobState::Waiting.as_str(),
            json(&req.options),
            token,
            req.client_token.as_deref(),
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

/// `state IN ('A', 'B')`: the states a transition may start from, as SQL. The names are
/// ferry's own constants, never client input.
fn state_in(from: &[JobState]) -> String {
    let names: Vec<String> = from.iter().map(|s| format!("'{}'", s.as_str())).collect();
    format!("state IN ({})", names.join(", "))
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
        let existing = self.engine.transaction(|tx| {
            if let Some(ct) = &req.client_token {
                if let Some(r) = tx.query_opt("SELECT id FROM jobs WHERE client_token = ?1", params![ct])? {
                    return Ok(Some(r.get::<String>("id")?));
                }
            }
            insert_job(tx, req, id, token, target_token, None)?;
            Ok(None)
        })?;
        match existing {
            Some(existing) => Ok((self.job(&existing)?.context("job vanished")?, false)),
            None => Ok((self.job(id)?.context("job vanished")?, true)),
        }
    }

    /// Replaces a job's token hashes (the ones given).
    pub fn set_tokens(&self, id: &str, token: Option<&str>, target_token: Option<&str>) -> Result<()> {
        self.engine.transaction(|c| {
            if let Some(t) = token {
                c.execute("UPDATE jobs SET token = ?2 WHERE id = ?1", params![id, t])?;
            }
            if let Some(t) = target_token {
                c.execute("UPDATE jobs SET target_token = ?2 WHERE id = ?1", params![id, t])?;
            }
            Ok(())
        })
    }

    /// A job with its disks and history.
    pub fn job(&self, id: &str) -> Result<Option<Job>> {
        self.engine.with(|c| {
            let sql = format!("SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?1");
            let Some(row) = c.query_opt(&sql, params![id])? else {
                return Ok(None);
            };
            let mut job = job_row(&row)?;
            let sql = format!("SELECT {DISK_COLUMNS} FROM disks WHERE job_id = ?1 ORDER BY idx");
            job.disks = c.query(&sql, params![id])?.iter().map(|r| Ok(disk_row(r)?.1)).collect::<Result<_>>()?;
            let sql = format!("SELECT {EVENT_COLUMNS} FROM job_events WHERE job_id = ?1 ORDER BY seq");
            job.history = c.query(&sql, params![id])?.iter().map(|r| Ok(event_row(r)?.1)).collect::<Result<_>>()?;
            Ok(Some(job))
        })
    }

    /// Every job in creation order (rowids only grow: no job is deleted), without tokens: three
    /// queries, whatever the number of jobs.
    pub fn jobs(&self) -> Result<Vec<Job>> {
        self.engine.with(|c| {
            let mut jobs: Vec<Job> = c
                .query(&format!("SELECT {JOB_COLUMNS} FROM jobs ORDER BY rowid"), &[])?
                .iter()
                .map(job_row)
                .collect::<Result<_>>()?;
            let at: HashMap<String, usize> = jobs.iter().enumerate().map(|(i, j)| (j.id.clone(), i)).collect();
            for r in c.query(&format!("SELECT {DISK_COLUMNS} FROM disks ORDER BY job_id, idx"), &[])? {
                let (job, disk) = disk_row(&r)?;
                if let Some(i) = at.get(&job) {
                    jobs[*i].disks.push(disk);
                }
            }
            for r in c.query(&format!("SELECT {EVENT_COLUMNS} FROM job_events ORDER BY seq"), &[])? {
                let (job, event) = event_row(&r)?;
                if let Some(i) = at.get(&job) {
                    jobs[*i].history.push(event);
                }
            }
            Ok(jobs)
        })
    }

    /// How many jobs are in each state.
    pub fn jobs_by_state(&self) -> Result<std::collections::BTreeMap<String, u64>> {
        self.engine.with(|c| {
            c.query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state", &[])?
                .iter()
                .map(|r| Ok((r.get("state")?, r.get("n")?)))
                .collect()
        })
    }

    /// The hashes of the agent token and target token (instance jobs), and the state of a job.
    pub fn tokens_and_state(&self, id: &str) -> Result<Option<(String, Option<String>, JobState)>> {
        let row = self
            .engine
            .with(|c| c.query_opt("SELECT token, target_token, state FROM jobs WHERE id = ?1", params![id]))?;
        row.map(|r| Ok((r.get("token")?, r.get("target_token")?, job_state(&r, "state")?))).transpose()
    }

    pub fn set_target_spec(&self, id: &str, spec: &TargetSpec) -> Result<()> {
        self.engine.with(|c| {
            c.execute("UPDATE jobs SET target_spec = ?2, updated_at = ?3 WHERE id = ?1", params![id, json(spec), now()])
        })?;
        Ok(())
    }

    /// Changes the delivery record of a job under a lock on its row (read, modify, write), so
    /// concurrent target calls, on this receiver or another, never lose each other's changes.
    pub fn update_delivery<T>(&self, id: &str, change: impl FnOnce(&mut Option<Delivery>) -> T) -> Result<T> {
        self.engine.transaction(|tx| {
            let row = tx.query_opt("SELECT delivery FROM jobs WHERE id = ?1 FOR UPDATE", params![id])?;
            let mut delivery: Option<Delivery> = match row {
                Some(r) => from_json_opt(&r, "delivery")?,
                None => None,
            };
            let out = change(&mut delivery);
            tx.execute(
                "UPDATE jobs SET delivery = ?2, updated_at = ?3 WHERE id = ?1",
                params![id, delivery.as_ref().map(json), now()],
            )?;
            Ok(out)
        })
    }

    /// Moves a job to `to` only if it is in one of `from`, recording the event in the same
    /// transaction; false when it was not (another request, here or on another receiver,
    /// moved it first). The condition is in the UPDATE itself, so of two racing transitions
    /// exactly one applies, and the history never shows one that did not. The error is cleared
    /// unless the job goes InError.
    pub fn transition(
        &self,
        id: &str,
        from: &[JobState],
        to: JobState,
        code: Option<&str>,
        reason: Option<&str>,
    ) -> Result<bool> {
        let (code, reason) = if to == JobState::InError { (code, reason) } else { (None, None) };
        let sql = format!(
            "UPDATE jobs SET state = ?2, error_code = ?3, error_reason = ?4, updated_at = ?5 WHERE id = ?1 AND {}",
            state_in(from)
        );
        self.engine.transaction(|tx| {
            let t = now();
            if tx.execute(&sql, params![id, to.as_str(), code, reason, t])? == 0 {
                return Ok(false);
            }
            tx.execute(
                "INSERT INTO job_events (job_id, at, state, code, reason) VALUES (?1, ?2, ?3, ?4, ?5)",
                params![id, t, to.as_str(), code, reason],
            )?;
            Ok(true)
        })
    }

    pub fn set_machine(
        &self,
        id: &str,
        machine: &MachineIdentity,
        inventory: Option<&serde_json::Value>,
        disk_count: usize,
    ) -> Result<()> {
        self.engine.with(|c| {
            c.execute(
                "UPDATE jobs SET machine = ?2, disk_count = ?3, updated_at = ?4, inventory = ?5 WHERE id = ?1",
                params![id, json(machine), disk_count, now(), inventory.map(json)],
            )
        })?;
        Ok(())
    }

    pub fn disk_count(&self, id: &str) -> Result<Option<u32>> {
        let row = self.engine.with(|c| c.query_opt("SELECT disk_count FROM jobs WHERE id = ?1", params![id]))?;
        Ok(row.map(|r| r.get::<Option<u32>>("disk_count")).transpose()?.flatten())
    }

    /// Starts (or restarts) a disk. A disk seen before keeps its counters only if it is the
    /// same disk (size and chunk size); otherwise its record starts afresh.
    pub fn begin_disk(&self, id: &str, idx: u32, b: &BeginDisk) -> Result<()> {
        let same = self.disk_geometry(id, idx)?;
        self.engine.with(|c| {
            if same == Some((b.size, b.chunk_size)) {
                c.execute(
                    "UPDATE disks SET identity = ?3, partition_table = ?4, verified = 0, blake3 = NULL, bytes_done = 0,
                     bad_ranges = NULL, used_only = NULL WHERE job_id = ?1 AND idx = ?2",
                    params![id, idx, json(&b.identity), json(&b.partition_table)],
                )
            } else {
                c.execute(
                    "INSERT INTO disks (job_id, idx, identity, partition_table, size, chunk_size)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                     ON CONFLICT (job_id, idx) DO UPDATE SET identity = excluded.identity,
                         partition_table = excluded.partition_table, size = excluded.size,
                         chunk_size = excluded.chunk_size, bytes_done = 0, bytes_received = 0,
                         chunks_received = 0, rate = 0, blake3 = NULL, verified = 0, bad_ranges = NULL,
                         used_only = NULL",
                    params![id, idx, json(&b.identity), json(&b.partition_table), b.size, b.chunk_size],
                )
            }
        })?;
        Ok(())
    }

    /// Size and chunk size of a begun disk.
    pub fn disk_geometry(&self, id: &str, idx: u32) -> Result<Option<(u64, u64)>> {
        let row = self.engine.with(|c| {
            c.query_opt("SELECT size, chunk_size FROM disks WHERE job_id = ?1 AND idx = ?2", params![id, idx])
        })?;
        row.map(|r| Ok((r.get("size")?, r.get("chunk_size")?))).transpose()
    }

    /// Adds to a disk's received counters (commuting additions: several receivers may add).
    pub fn add_received(&self, id: &str, idx: u32, bytes: u64, chunks: u64) -> Result<()> {
        self.engine.with(|c| {
            c.execute(
                "UPDATE disks SET bytes_received = bytes_received + ?3, chunks_received = chunks_received + ?4
                 WHERE job_id = ?1 AND idx = ?2",
                params![id, idx, bytes, chunks],
            )
        })?;
        Ok(())
    }

    pub fn set_progress(&self, id: &str, idx: u32, bytes_done: u64, rate: u64) -> Result<()> {
        self.engine.transaction(|c| {
            c.execute(
                "UPDATE disks SET bytes_done = ?3, rate = ?4 WHERE job_id = ?1 AND idx = ?2",
                params![id, idx, bytes_done, rate],
            )?;
            c.execute("UPDATE jobs SET updated_at = ?2 WHERE id = ?1", params![id, now()])
        })?;
        Ok(())
    }

    /// The disk is verified as `manifest` describes it: its whole-disk hash, the sectors the
    /// source could not read, and what a used-blocks copy read.
    pub fn verify_disk(&self, id: &str, idx: u32, manifest: &crate::image::Manifest) -> Result<()> {
        let bad = (!manifest.bad_ranges.is_empty()).then(|| json(&manifest.bad_ranges));
        let used = manifest.used_only.as_ref().map(json);
        let blake3 = hex::encode(manifest.blake3);
        self.engine.with(|c| {
            c.execute(
                "UPDATE disks SET verified = 1, blake3 = ?3, bytes_done = ?4, bad_ranges = ?5, used_only = ?6
                 WHERE job_id = ?1 AND idx = ?2",
                params![id, idx, blake3, manifest.size, bad, used],
            )
        })?;
        Ok(())
    }
}
