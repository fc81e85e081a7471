//! The live image's console transcripts, per job: one entry per boot and role, replaced as the
//! boot goes on; the newest 20 kept.

use anyhow::Result;

use super::sql::params;

use super::{now, Db};
use crate::wire::LogEntry;

impl Db {
    /// Keeps a console transcript; only the newest 20 per job are kept. With `boot`, the entry of that boot is replaced (the live image sends its screen as it
    /// goes, then once more with the verdict).
    /// `seq` orders a boot's transcripts: one that arrives after a later one (a slow request)
    /// changes nothing.
    pub fn add_log(&self, id: &str, role: &str, text: &str, boot: Option<(&str, i64)>) -> Result<()> {
        self.engine.transaction(|tx| {
            let existing: Option<Option<i64>> = match boot {
                Some((b, _)) => tx
                    .query_opt(
                        "SELECT boot_seq FROM job_logs WHERE job_id = ?1 AND boot = ?2 AND role = ?3",
                        params![id, b, role],
                    )?
                    .map(|r| r.get("boot_seq"))
                    .transpose()?,
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
                params![id],
            )?;
            Ok(())
        })
    }

    pub fn logs(&self, id: &str) -> Result<Vec<LogEntry>> {
        let rows = self
            .engine
            .with(|c| c.query("SELECT at, role, text FROM job_logs WHERE job_id = ?1 ORDER BY seq", params![id]))?;
        rows.iter().map(|r| Ok(LogEntry { at: r.get("at")?, role: r.get("role")?, text: r.get("text")? })).collect()
    }
}
