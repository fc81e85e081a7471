//! Enrollments (a migration wave's standing policy) and the jobs they make for machines.

use anyhow::{Context, Result};

use super::jobs::insert_job;
use super::sql::{params, Row};
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
fn enrollment_row(r: &Row) -> Result<Enrollment> {
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

const ENROLLMENT_COLUMNS: &str = "id, name, target, options, token, created_at, revoked_at, max_jobs";

impl Db {
    /// Creates an enrollment with this token hash.
    pub fn create_enrollment(&self, req: &CreateEnrollment, id: &str, token: &str) -> Result<Enrollment> {
        self.engine.with(|c| {
            c.execute(
                "INSERT INTO enrollments (id, name, target, options, token, created_at, max_jobs)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![id, &req.name, kind_str(req.target), json(&req.options), token, now(), req.max_jobs],
            )
        })?;
        // A new enrollment has no jobs yet.
        self.enrollment_rows()?.into_iter().find(|e| e.id == id).context("enrollment vanished")
    }

    /// Every enrollment, oldest first, with the jobs each created.
    pub fn enrollments(&self) -> Result<Vec<Enrollment>> {
        let mut list = self.enrollment_rows()?;
        self.engine.with(|c| {
            for e in &mut list {
                e.jobs = c
                    .query("SELECT id FROM jobs WHERE enrollment = ?1 ORDER BY rowid", params![&e.id])?
                    .iter()
                    .map(|r| r.get("id"))
                    .collect::<Result<_>>()?;
            }
            Ok(())
        })?;
        Ok(list)
    }

    /// The enrollments without their jobs, each with its token hash: what checking an
    /// enrollment token needs (cheap: every `POST /enroll` compares its token with all of them).
    pub fn enrollment_token_hashes(&self) -> Result<Vec<(Enrollment, String)>> {
        let rows = self
            .engine
            .with(|c| c.query(&format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments ORDER BY rowid"), &[]))?;
        rows.iter().map(|r| Ok((enrollment_row(r)?, r.get("token")?))).collect()
    }

    /// The enrollments without their jobs.
    pub fn enrollment_rows(&self) -> Result<Vec<Enrollment>> {
        let rows = self
            .engine
            .with(|c| c.query(&format!("SELECT {ENROLLMENT_COLUMNS} FROM enrollments ORDER BY rowid"), &[]))?;
        rows.iter().map(enrollment_row).collect()
    }

    /// Stops an enrollment from enrolling more machines (its jobs go on). None: no such id.
    pub fn revoke_enrollment(&self, id: &str) -> Result<Option<Enrollment>> {
        self.engine.with(|c| {
            c.execute("UPDATE enrollments SET revoked_at = ?2 WHERE id = ?1 AND revoked_at IS NULL", params![id, now()])
        })?;
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
        // The enrollment's row is locked for the whole check-then-insert (FOR UPDATE; SQLite's
        // write transaction locks everything): two machines enrolling at once on two receivers
        // never both squeeze under the cap.
        let id = self.engine.transaction(|tx| {
            let Some(row) =
                tx.query_opt("SELECT revoked_at, max_jobs FROM enrollments WHERE id = ?1 FOR UPDATE", params![&e.id])?
            else {
                return Ok(None);
            };
            if row.get::<Option<u64>>("revoked_at")?.is_some() {
                return Ok(None);
            }
            let max_jobs: Option<u64> = row.get("max_jobs")?;
            // Newest by insertion order, not by clock: a receiver whose clock stepped back still
            // finds the machine's latest job.
            let newest = tx.query_opt(
                "SELECT id, state, enrolled_offline FROM jobs WHERE enrollment = ?1 AND machine_key = ?2
                 ORDER BY rowid DESC LIMIT 1",
                params![&e.id, machine_key],
            )?;
            let newest: Option<(String, JobState, Option<i64>)> = newest
                .map(|r| Ok::<_, anyhow::Error>((r.get("id")?, job_state(&r, "state")?, r.get("enrolled_offline")?)))
                .transpose()?;
            let newest_known = newest.is_some();
            let reuse = newest.filter(|(_, state, was_offline)| {
                *state != JobState::Finished || (offline && was_offline.unwrap_or(0) != 0)
            });
            let (id, created) = match reuse {
                Some((id, _, _)) => (id, false),
                None => {
                    // The cap counts machines: one that has a job here (a pre-seed, then its
                    // cutover) is always let through.
                    let machines: u64 = tx
                        .query_one(
                            "SELECT COUNT(DISTINCT machine_key) AS n FROM jobs WHERE enrollment = ?1",
                            params![&e.id],
                        )?
                        .get("n")?;
                    if !newest_known && max_jobs.is_some_and(|max| machines >= max) {
                        return Ok(Some(Err(machines)));
                    }
                    insert_job(tx, new, ids.id, &token_for(ids.id), ids.target_token, Some((&e.id, machine_key)))?;
                    (ids.id.to_string(), true)
                }
            };
            // The machine's token for its job follows from the enrollment token and the job's id:
            // the same after every reboot, and (for a job from a release that kept another one)
            // the one this machine now holds.
            tx.execute(
                "UPDATE jobs SET enrolled_offline = ?2, token = ?3 WHERE id = ?1",
                params![&id, offline, token_for(&id)],
            )?;
            Ok(Some(Ok((id, created))))
        })?;
        match id {
            None => Ok(Enrolled::Revoked),
            Some(Err(machines)) => Ok(Enrolled::Full(machines)),
            Some(Ok((id, created))) => Ok(Enrolled::Job(Box::new(self.job(&id)?.context("job vanished")?), created)),
        }
    }
}
