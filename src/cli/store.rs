//! `ferry store verify`: the receiver's store checked from its own bytes.

use anyhow::Result;

use super::EXIT_FAILED;
use crate::cmdline::StoreVerifyArgs;
use crate::server::db;
use crate::store::verify::{check_against_jobs, kept_in_dir, Report};
use crate::store::{S3Store, StoreConfig};
use crate::util::human_bytes;

pub fn verify(a: StoreVerifyArgs) -> Result<i32> {
    let cfg = StoreConfig::new(&a.store, a.shared.s3_config.as_deref())?;
    let job = a.job.as_deref();
    // What the job database calls verified, when there is one: PostgreSQL when named, else the
    // store's SQLite file, read without changing it.
    let sqlite = a.store.join(db::SQLITE_FILE);
    let mut verified = match &a.shared.db {
        Some(url) => Some(db::Db::open_postgres(url)?.verified_disks()?),
        None if sqlite.exists() => Some(db::verified_disks(&sqlite)?),
        None => None,
    };
    if let Some(v) = &mut verified {
        v.retain(|(j, _, _)| job.is_none_or(|want| want == j));
    }
    let (report, place) = match &cfg.s3 {
        Some(s3) => {
            let s3 = S3Store::open(s3)?;
            let rt = super::runtime()?;
            let mut report = rt.block_on(crate::store::verify_bucket(&s3, job))?;
            if let Some(v) = &verified {
                let kept = |j: &str, d: u32| rt.block_on(crate::store::load_manifest(&s3, j, d)).ok();
                check_against_jobs(v, kept, &mut report);
            }
            (report, crate::store::ChunkStore::describe(&s3))
        }
        None => {
            let mut report = crate::store::verify::verify(&a.store, job)?;
            if let Some(v) = &verified {
                check_against_jobs(v, |j, d| kept_in_dir(&a.store, j, d), &mut report);
            }
            (report, a.store.display().to_string())
        }
    };
    print(&report, &place, a.json)?;
    Ok(if report.problems.is_empty() { 0 } else { EXIT_FAILED })
}

fn print(report: &Report, place: &str, json: bool) -> Result<()> {
    if json {
        println!("{}", serde_json::to_string_pretty(report)?);
        return Ok(());
    }
    for p in &report.problems {
        println!("{}", crate::util::printable(p));
    }
    let unplaced = match report.unplaced_chunks {
        0 => String::new(),
        n => format!(", {n} chunks from an older store checked when a manifest names them"),
    };
    println!(
        "{place}: {} chunks ({}) hashed again at their place, {} manifests checked{unplaced}: {}",
        report.chunks_checked,
        human_bytes(report.bytes_checked),
        report.manifests_checked.len(),
        match report.problems.len() {
            0 => "nothing wrong".to_string(),
            n => format!("{n} PROBLEMS"),
        }
    );
    Ok(())
}
