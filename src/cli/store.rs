//! `ferry store verify`: the receiver's store checked from its own bytes.

use anyhow::Result;

use super::EXIT_FAILED;
use crate::cmdline::StoreVerifyArgs;
use crate::util::human_bytes;

pub fn verify(a: StoreVerifyArgs) -> Result<i32> {
    let mut report = crate::store::verify::verify(&a.store, a.job.as_deref())?;
    let db = a.store.join("jobs.sqlite");
    if db.exists() {
        let mut verified = crate::server::db::verified_disks(&db)?;
        verified.retain(|(job, _, _)| a.job.as_deref().is_none_or(|j| j == job));
        crate::store::verify::check_against_jobs(&a.store, &verified, &mut report);
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        for p in &report.problems {
            println!("{}", crate::util::printable(p));
        }
        let unplaced = match report.unplaced_chunks {
            0 => String::new(),
            n => format!(", {n} chunks from an older store checked when a manifest names them"),
        };
        println!(
            "{}: {} chunks ({}) hashed again at their place, {} manifests checked{unplaced}: {}",
            a.store.display(),
            report.chunks_checked,
            human_bytes(report.bytes_checked),
            report.manifests_checked.len(),
            match report.problems.len() {
                0 => "nothing wrong".to_string(),
                n => format!("{n} PROBLEMS"),
            }
        );
    }
    Ok(if report.problems.is_empty() { 0 } else { EXIT_FAILED })
}
