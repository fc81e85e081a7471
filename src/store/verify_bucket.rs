//! `ferry store verify` on a bucket: the same checks as on a directory ([`super::verify`]),
//! through S3 requests. Every chunk object is read back and hashed at the place its key gives;
//! every kept manifest must validate, mark as zero only chunks with the id of zeros, and name
//! only chunks the bucket holds at their place. Read-only: receivers may run beside it.

use std::collections::HashSet;

use anyhow::{bail, Result};
use futures_util::stream::{self, StreamExt};

use super::verify::{bytes_problem, manifest_is_sound, ChunkFile, Report};
use super::{ChunkStore, Place, S3Store};
use crate::image::Manifest;

/// The manifest kept for `job`/`disk` in the bucket, with every chunk id (a paged one's pages
/// read and checked against its head).
async fn read_manifest(s3: &S3Store, job: &str, disk: u32) -> Result<Manifest> {
    let m: Manifest = serde_json::from_slice(&s3.get_manifest(job, disk).await?)?;
    if m.pages.is_none() {
        return Ok(m);
    }
    super::load_manifest(s3, job, disk).await
}

/// How many chunk objects are read and hashed at once.
const READ_CONCURRENCY: usize = 8;

/// Checks the bucket: every chunk and manifest, or with `job` only that job's manifests and the
/// chunks they name.
pub async fn verify_bucket(s3: &S3Store, job: Option<&str>) -> Result<Report> {
    let mut report = Report::default();
    let mut manifests: Vec<(String, u32)> = vec![];
    for (name, _) in s3.list("manifests").await? {
        let Some((j, file)) = name.split_once('/') else { continue };
        let Some(disk) = file.strip_suffix(".json").and_then(|d| d.parse().ok()) else { continue };
        if job.is_none_or(|want| want == j) {
            manifests.push((j.to_string(), disk));
        }
    }
    if let Some(j) = job {
        if !crate::wire::valid_job_id(j) {
            bail!("{j:?} is not a job id");
        }
        if manifests.is_empty() {
            bail!("job {j} has no verified disk in {} (see ferry job show {j})", s3.describe());
        }
    }
    let mut named: HashSet<String> = HashSet::new();
    for (j, disk) in &manifests {
        let name = format!("{j}/{disk}");
        check_manifest(s3, &name, j, *disk, &mut named, &mut report).await;
        report.manifests_checked.push(name);
    }
    let listed: Vec<(String, u64)> = s3.list("chunks").await?;
    let mut chunks = vec![];
    for (key, _) in listed {
        if job.is_some() && !named.contains(&key) {
            continue;
        }
        match ChunkFile::parse(key.clone().into()) {
            Some(f) if f.offset.is_some() => chunks.push((key, f)),
            _ => report.problems.push(format!("chunks/{key}: not a chunk name (ID.OFFSET or ID.whole)")),
        }
    }
    let checked: Vec<(u64, Option<String>)> = stream::iter(chunks.iter().map(|(key, f)| check_object(s3, key, f)))
        .buffer_unordered(READ_CONCURRENCY)
        .collect()
        .await;
    for (bytes, problem) in checked {
        report.chunks_checked += 1;
        report.bytes_checked += bytes;
        report.problems.extend(problem);
    }
    report.problems.sort();
    Ok(report)
}

/// Reads one chunk object back and hashes it at its place: (bytes, what is wrong).
async fn check_object(s3: &S3Store, key: &str, f: &ChunkFile) -> (u64, Option<String>) {
    let label = format!("chunks/{key}");
    let data = match s3.get_listed("chunks", key).await {
        Ok(d) => d,
        Err(e) => return (0, Some(format!("{label}: cannot be read: {e}"))),
    };
    let (id, offset, whole) = (f.id, f.offset.unwrap_or(0), f.whole_disk);
    let len = data.len() as u64;
    let problem = tokio::task::spawn_blocking(move || bytes_problem(&label, &id, offset, whole, &data))
        .await
        .unwrap_or_else(|e| Some(format!("chunks/{key}: hashing failed: {e}")));
    (len, problem)
}

/// Checks one manifest against the bucket; the chunk keys it names go into `named`.
async fn check_manifest(
    s3: &S3Store,
    name: &str,
    job: &str,
    disk: u32,
    named: &mut HashSet<String>,
    report: &mut Report,
) {
    let m: Manifest = match read_manifest(s3, job, disk).await {
        Ok(m) => m,
        Err(e) => return report.problems.push(format!("manifest {name}: cannot be read: {e:#}")),
    };
    if !manifest_is_sound(name, &m, report) {
        return;
    }
    let data: Vec<usize> = (0..m.chunks.len()).filter(|&i| !m.chunks[i].zero).collect();
    let asked: Vec<_> = data.iter().map(|&i| (m.chunks[i].id, Place::of(m.size, m.chunk_size, i as u64))).collect();
    let absent = match s3.missing(&asked).await {
        Ok(a) => a,
        Err(e) => return report.problems.push(format!("manifest {name}: the bucket cannot be asked: {e}")),
    };
    for &k in &absent {
        let i = data[k];
        report
            .problems
            .push(format!("manifest {name}: chunk {i} (id {}) is missing from the store", hex::encode(m.chunks[i].id)));
    }
    named.extend(asked.iter().map(|(id, at)| super::chunk_name(id, *at)));
}
