//! Enrollments (a migration wave's standing policy) and the jobs they make for machines.

use anyhow::{Context, Result};
use rusqlite::{params, OptionalExtension};

use super::jobs::insert_job;
use super::{from_json, job_state, json, kind_str, now, target_kind, Db};
use crate::wire::{CreateEnrollment, CreateJob, Enrollment, Job, JobState};

/// What an enrollment gave a machine.
pub enum Enrolled {
    /// Its job, and whether it is new.
    Job(Box<Job>, bool),
    /// The enrollment was revoked.
    Revoked,
    /// The enrollment already has its `max_jobs` machines (how many), and this is not one.
    Full(u64),
}

/// The id and target token hash of a job about to be created for a machine; its agent token
/// hash follows from its id (`token_for`).
pub struct NewJobIds<'a> {
    pub id: &'a str,
    pub target_token: Option<&'a str>,
}

/// An enrollment's row (its token is shown once, when made, and kept only as a hash).
fn enrollment_row(r: &rusqlite::Row) -> rusqlite::Result<Enrollment> {
    Ok(Enrollment {
        id: r.get("id")?,
        name: r.get("name")?,
        target: target_kind(r, "target")?,
        options: from_json(r, "options")?,
        token: None,
        created_at: r.get("created_at")?,
        revoked_at: r.get("revoked_at")?,
        max_jobs: r.get("max_jobs")?,
        jobs: vec![],
    })
}

impl Db {
    /// Creates an enrollment with this token hash.
    pub fn create_enrollment(&self, req: &CreateEnrollment, id: &str, token: &str) -> Result<Enrollment> {
        self.conn().execute(
            "INSERT INTO enrollments (id, name, target, options, token, created_at, max_jobs)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![id, req.name, kind_str(req.target), json(&req.options), token, now(), req.max_jobs],
        )?;
        // A new enrollment has no jobs yet.
        self.enrollment_rows()?.into_iter().find(|e| e.id == id).context("enrollment vanished")
    }

    /// Every enrollment, oldest first, with the jobs each created.
    pub fn enrollments(&self) -> Result<Vec<Enrollment>> {
        let mut list = self.enrollment_rows()?;
        let conn = self.conn();
        let mut jobs = conn.prepare("SELECT id FROM jobs WHERE enrollment = ?1 ORDER BY rowid")?;
        for e in &mut list {
            e.jobs = jobs.query_map([&e.id], |r| r.get("id"))?.collect::<rusqlite::Result<_>>()?;
        }
        Ok(list)
    }

    /// The enrollments without their jobs, each with its token hash: what checking an
    /// enrollment token needs (cheap: every `POST /enroll` compares its token with all of them).
    pub fn enrollment_token_hashes(&self) -> Result<Vec<(Enrollment, String)>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, target, options, token, created_at, revoked_at, max_jobs FROM enrollments ORDER BY rowid",
        )?;
        let list =
            stmt.query_map([], |r| Ok((enrollment_row(r)?, r.get("token")?)))?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(list)
    }

    /// The enrollments without their jobs.
    pub fn enrollment_rows(&self) -> Result<Vec<Enrollment>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT id, name, target, options, token, created_at, revoked_at, max_jobs FROM enrollments ORDER BY rowid",
        )?;
        let list = stmt.query_map([], enrollment_row)?.collect::<rusqlite::Result<Vec<_>>>()?;
        Ok(list)
    }

    /// Stops an enrollment from enrolling more machines (its jobs go on). None: no such id.
    pub fn revoke_enrollment(&self, id: &str) -> Result<Option<Enrollment>> {
        self.conn().execute(
            "UPDATE enrollments SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL",
            params![id, now()],
        )?;
        Ok(self.enrollments()?.into_iter().find(|e| e.id == id))
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
        token_for: &dyn Fn(&str) -> String,
    ) -> Result<Enrolled> {
        let mut conn = self.conn();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row: Option<(Option<u64>, Option<u64>)> = tx
            .query_row("SELECT revoked_at, max_jobs FROM enrollments WHERE id = ?1", [&e.id], |r| {
                Ok((r.get("revoked_at")?, r.get("max_jobs")?))
            })
            .optional()?;
        let max_jobs = match row {
            Some((None, max)) => max,
            _ => return Ok(Enrolled::Revoked),
        };
        // Newest by insertion order, not by clock: a receiver whose clock stepped back still
        // finds the machine's latest job.
        let newest: Option<(String, JobState, Option<i64>)> = tx
            .query_row(
                "SELECT id, state, enrolled_offline FROM jobs WHERE enrollment = ?1 AND machine_key = ?2
                 ORDER BY rowid DESC LIMIT 1",
                [&e.id, machine_key],
                |r| Ok((r.get("id")?, job_state(r, "state")?, r.get("enrolled_offline")?)),
            )
            .optional()?;
        let newest_known = newest.is_some();
        let reuse = newest.filter(|(_, state, was_offline)| {
            *state != JobState::Finished || (offline && was_offline.unwrap_or(0) != 0)
        });
        let (id, created) = match reuse {
            Some((id, _, _)) => (id, false),
            None => {
                // The cap counts machines: one that has a job here (a pre-seed, then its
                // cutover) is always let through.
                let machines: u64 = tx.query_row(
                    "SELECT COUNT(DISTINCT machine_key) AS n FROM jobs WHERE enrollment = ?1",
                    [&e.id],
                    |r| r.get("n"),
                )?;
                if !newest_known && max_jobs.is_some_and(|max| machines >= max) {
                    return Ok(Enrolled::Full(machines));
                }
                insert_job(&tx, new, ids.id, &token_for(ids.id), ids.target_token, Some((&e.id, machine_key)))?;
                (ids.id.to_string(), true)
            }
        };
        // The machine's token for its job follows from the enrollment token and the job's id:
        // the same after every reboot, and (for a job from a release that kept another one)
        // the one this machine now holds.
        tx.execute(
            "UPDATE jobs SET enrolled_offline = ?2, token = ?3 WHERE id = ?1",
            params![id, offline as i64, token_for(&id)],
        )?;
        tx.commit()?;
        drop(conn);
        Ok(Enrolled::Job(Box::new(self.job(&id)?.context("job vanished")?), created))
    }
}
