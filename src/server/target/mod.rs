//! The target side of `instance` jobs: the operator names the target and allows wiping it; the
//! target machine registers, reads the verified disks back chunk by chunk, and reports what it
//! read back from its own disks.
//!
//! The receiver enforces what it can know itself (the wipe permission, that this is the machine
//! the job names and not the source, that the source side is Finished); the target agent checks
//! what only it can see (its disks' count, sizes and sector sizes) before writing anything.

mod rules;

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

pub use rules::validate_spec;
use rules::{new_delivery, refuse_target, same_target, transition};

use super::auth::Authorized;
use super::error::{ApiErr, ApiResult, Body};
use super::AppState;
use crate::image::{treehash, Manifest};
use crate::store::Place;
use crate::wire::routes::{call, Caller};
use crate::wire::*;

fn not_instance(job: &str) -> ApiErr {
    ApiErr::with_status(
        StatusCode::CONFLICT,
        Code::NotInstanceJob,
        format!("job {job} exports images; it has no target machine"),
    )
}

/// `POST /jobs/{job}/target` (admin): names the target machine and sets the wipe permission.
pub async fn set_target(
    State(st): State<Arc<AppState>>,
    Path(job): Path<String>,
    Body(spec): Body<call::SetTarget>,
) -> ApiResult<Json<Job>> {
    let j = st.job(&job)?;
    if j.target != TargetKind::Instance {
        return Err(not_instance(&job));
    }
    validate_spec(&spec)?;
    st.db.set_target_spec(&job, &spec)?;
    log::info!("job {job}: target set to {:?}, wipe allowed: {}", spec.machine, spec.allow_wipe);
    Ok(Json(st.job(&job)?))
}

/// `POST /jobs/{job}/target/register` (target): who is asking; the answer is the plan.
pub async fn register(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(req): Body<call::TargetRegister>,
) -> ApiResult<Json<TargetPlan>> {
    let j = st.job(&job)?;
    if j.target != TargetKind::Instance {
        return Err(not_instance(&job));
    }
    if j.delivery.as_ref().is_some_and(|d| d.state == JobState::Finished) {
        return Err(ApiErr::new(
            Code::AlreadyDelivered,
            format!("job {job} was already written to its target and verified; boot the target from its disks"),
        ));
    }
    let spec = j.target_spec.clone().unwrap_or_default();
    // The machine checks come first: a machine that may never receive the disks is told so at
    // once, not after waiting for the source.
    let refusal = refuse_target(&spec, j.machine.as_ref(), &req.machine, &req.disks).or_else(|| {
        (auth.state() != JobState::Finished).then(|| {
            (
                Code::SourceNotFinished,
                format!("the source side of job {job} is {}, not Finished", auth.state().as_str()),
            )
        })
    });
    let this_target = |d: &Delivery| same_target(d, &req.machine, &req.disks);
    let rewriting = j.delivery.as_ref().is_some_and(|d| {
        matches!(d.state, JobState::Running | JobState::InError) && !d.disks.is_empty() && this_target(d)
    });
    if let (Some((code, reason)), Some(d)) = (&refusal, &j.delivery) {
        if d.state == JobState::Running && !this_target(d) {
            // Another machine with the token must not disturb the one that is writing.
            log::warn!("job {job}: a second machine tried to register while the target writes ({code}): {reason}");
            return Err(ApiErr::new(Code::TargetBusy, "another machine is writing this job's disks"));
        }
    }
    st.db.update_delivery(&job, |d| {
        let d = d.get_or_insert_with(new_delivery);
        d.machine = Some(req.machine.clone());
        d.target_disks = req.disks.clone();
        match &refusal {
            // Waiting for the source is not an error: the target polls until it is Finished.
            Some((Code::SourceNotFinished, _)) => {
                if d.state != JobState::Waiting || d.history.is_empty() {
                    transition(d, JobState::Waiting, None)
                }
            }
            Some((code, reason)) => transition(d, JobState::InError, Some((*code, reason))),
            // The mapping of an earlier attempt stays until `begin` replaces it: an attempt
            // cut between register and begin must not cost the next one its resume.
            None => transition(d, JobState::Waiting, None),
        }
    })?;
    if let Some((code, reason)) = refusal {
        log::warn!("job {job}: target refused: {reason}");
        return Err(ApiErr::new(code, reason));
    }
    log::info!("job {job}: target registered with {} disks", req.disks.len());
    Ok(Json(plan(j, job, spec.disks, rewriting)))
}

/// What the target is told it will write.
fn plan(j: Job, job: String, named_disks: Vec<String>, rewriting: bool) -> TargetPlan {
    let disks = j
        .disks
        .iter()
        .map(|d| SourceDisk {
            index: d.index,
            identity: d.identity.clone(),
            partition_table: d.partition_table.clone(),
            size: d.size,
            chunk_size: d.chunk_size,
            blake3: d.blake3.clone().unwrap_or_default(),
            bad_ranges: d.bad_ranges.clone(),
        })
        .collect();
    TargetPlan { job, name: j.name, source_machine: j.machine, disks, named_disks, rewriting }
}

/// A registered target that is allowed to read and write: the job Finished on the source side,
/// the wipe allowed, the delivery not refused. (The admin may read.)
fn reading_target(st: &AppState, auth: &Authorized, job: &str) -> ApiResult<Job> {
    if auth.state() != JobState::Finished {
        return Err(ApiErr::new(
            Code::SourceNotFinished,
            format!("the source side of job {job} is {}", auth.state().as_str()),
        ));
    }
    let j = st.job(job)?;
    if auth.caller == Caller::Admin {
        return Ok(j);
    }
    if !j.target_spec.as_ref().is_some_and(|s| s.allow_wipe) {
        return Err(ApiErr::new(Code::WipeNotAllowed, "the job does not allow wiping its target"));
    }
    match j.delivery.as_ref().map(|d| d.state) {
        Some(JobState::Waiting | JobState::Running) => Ok(j),
        Some(JobState::Finished) => Err(ApiErr::new(Code::AlreadyDelivered, "this job's target is already verified")),
        _ => Err(ApiErr::new(Code::NotRegistered, "register the target first (POST target/register)")),
    }
}

/// `POST /jobs/{job}/target/begin` (target): the mapping it is about to write.
pub async fn begin(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(req): Body<call::TargetBegin>,
) -> ApiResult<StatusCode> {
    let j = reading_target(&st, &auth, &job)?;
    let mut seen: Vec<u32> = req.disks.iter().map(|d| d.source_index).collect();
    seen.sort_unstable();
    let expected: Vec<u32> = j.disks.iter().map(|d| d.index).collect();
    if seen != expected {
        return Err(ApiErr::new(
            Code::BadMapping,
            format!("the mapping covers source disks {seen:?}, the job has {expected:?}"),
        ));
    }
    st.db.update_delivery(&job, |d| {
        if let Some(d) = d {
            d.disks = req.disks.clone();
            transition(d, JobState::Running, None);
        }
    })?;
    log::info!("job {job}: target writing {} disks", req.disks.len());
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{job}/target/progress` (target heartbeat).
pub async fn progress(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(p): Body<call::TargetProgress>,
) -> ApiResult<StatusCode> {
    reading_target(&st, &auth, &job)?;
    st.db.update_delivery(&job, |d| {
        if let Some(disk) = d.as_mut().and_then(|d| d.disks.iter_mut().find(|x| x.source_index == p.source_index)) {
            disk.bytes_written = p.bytes_written;
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{job}/target/fail` (target): it refused or gave up; nothing more is written.
pub async fn fail(
    State(st): State<Arc<AppState>>,
    Path(job): Path<String>,
    Body(f): Body<call::TargetFail>,
) -> ApiResult<StatusCode> {
    // A target's codes are kept as they are; one that is not a code of ours is `internal`.
    let code = Code::parse(&f.code).unwrap_or(Code::Internal);
    let reason: String = f.reason.chars().take(2000).collect();
    st.db.update_delivery(&job, |d| {
        // A target that fails before it registered (no driver for its disks, no disks) is
        // recorded too: the operator must see it.
        let d = d.get_or_insert_with(new_delivery);
        if d.state != JobState::Finished {
            transition(d, JobState::InError, Some((code, &reason)));
        }
    })?;
    log::warn!("job {job}: the target failed ({code}): {reason}");
    Ok(StatusCode::NO_CONTENT)
}

/// Whether every source disk's whole-disk hash was read back from a target disk; else why not.
fn readback_problem(j: &Job, done: &TargetDone) -> Option<String> {
    for src in &j.disks {
        let got = done.disks.iter().find(|d| d.source_index == src.index);
        match (got.and_then(|d| d.blake3.as_deref()), src.blake3.as_deref()) {
            (Some(read), Some(want)) if read == want && got.is_some_and(|d| d.verified) => {}
            (Some(read), Some(want)) => {
                return Some(format!("disk {} read back as blake3 {read}, the source's is {want}", src.index))
            }
            _ => return Some(format!("disk {} was not read back", src.index)),
        }
    }
    None
}

/// `POST /jobs/{job}/target/finish` (target): what it read back. The delivery is Finished only
/// when every source disk's whole-disk hash was read back from a target disk.
pub async fn finish(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(done): Body<call::TargetFinish>,
) -> ApiResult<Json<Job>> {
    let j = reading_target(&st, &auth, &job)?;
    let problem = readback_problem(&j, &done);
    st.db.update_delivery(&job, |d| {
        if let Some(d) = d {
            d.disks = done.disks.clone();
            match &problem {
                None => transition(d, JobState::Finished, None),
                Some(p) => transition(d, JobState::InError, Some((Code::ReadbackMismatch, p))),
            }
        }
    })?;
    if let Some(p) = problem {
        log::warn!("job {job}: target verification failed: {p}");
        return Err(ApiErr::new(Code::ReadbackMismatch, p));
    }
    log::info!("job {job}: target verified, {} disks", done.disks.len());
    let mut j = st.job(&job)?;
    j.target_spec = None;
    Ok(Json(j))
}

/// The verified manifest of a disk, read and checked once per receiver run. `blake3` is the
/// whole-disk hash the job database holds for it now: a manifest cached before the disk was
/// verified again (on any receiver of a wave) has another, and is read anew.
async fn cached_manifest(st: &AppState, job: &str, disk: u32, blake3: &str) -> ApiResult<Arc<Manifest>> {
    if let Some(m) = st.cached_manifest(job, disk).filter(|m| hex::encode(m.blake3) == blake3) {
        return Ok(m);
    }
    let m = crate::store::load_manifest_head(st.store.as_ref(), job, disk)
        .await
        .map_err(|e| ApiErr::new(Code::NoManifest, format!("{e:#}")))?;
    if hex::encode(m.blake3) != blake3 {
        return Err(ApiErr::new(
            Code::NoManifest,
            format!("the kept manifest of job {job} disk {disk} is not the one verified (blake3 {blake3}): the disk is being sent again"),
        ));
    }
    Ok(st.cache_manifest(job, disk, m))
}

/// The whole-disk hash of verified disk `disk` of the job.
fn verified_disk(j: &Job, job: &str, disk: u32) -> ApiResult<String> {
    match j.disks.iter().find(|d| d.index == disk && d.verified).and_then(|d| d.blake3.clone()) {
        Some(b) => Ok(b),
        None => Err(ApiErr::new(Code::BadDisk, format!("job {job} has no verified disk {disk}"))),
    }
}

/// The entry of chunk `index` of the verified manifest `m`: from the manifest itself, or from
/// the page holding it (read, checked against the manifest, and kept for the chunks after it).
async fn chunk_entry(st: &AppState, job: &str, disk: u32, m: &Manifest, index: u64) -> ApiResult<ChunkEntry> {
    let past = || {
        let last = m.chunk_count().saturating_sub(1);
        ApiErr::new(Code::BadIndex, format!("chunk {index} is past the last chunk ({last})"))
    };
    let Some(pages) = &m.pages else { return m.chunks.get(index as usize).cloned().ok_or_else(past) };
    if index >= m.chunk_count() {
        return Err(past());
    }
    let page = index / pages.chunks_per_page;
    let chunks = page_of(st, job, disk, m, page).await?;
    Ok(chunks[(index - page * pages.chunks_per_page) as usize].clone())
}

/// Page `page` of the verified paged manifest `m`, from the cache or the store.
async fn page_of(st: &AppState, job: &str, disk: u32, m: &Manifest, page: u64) -> ApiResult<Arc<Vec<ChunkEntry>>> {
    if let Some(chunks) = st.cached_page(job, disk, page, &m.blake3) {
        return Ok(chunks);
    }
    let chunks = crate::store::load_page(st.store.as_ref(), job, disk, m, page)
        .await
        .map_err(|e| ApiErr::new(Code::NoManifest, format!("{e:#}")))?;
    Ok(st.cache_page(job, disk, page, m.blake3, chunks))
}

/// `GET /jobs/{job}/disks/{disk}/pages/{page}` (target or admin): a page of a verified paged
/// manifest.
pub async fn page(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk, page)): Path<(String, u32, u64)>,
) -> ApiResult<Json<ManifestPage>> {
    let blake3 = verified_disk(&reading_target(&st, &auth, &job)?, &job, disk)?;
    let m = cached_manifest(&st, &job, disk, &blake3).await?;
    let Some(pages) = &m.pages else {
        return Err(ApiErr::new(Code::BadPage, format!("disk {disk}'s manifest is not paged: it holds its ids")));
    };
    if page >= m.page_count() {
        return Err(ApiErr::new(Code::BadPage, format!("disk {disk} has {} pages, no page {page}", m.page_count())));
    }
    let chunks = (*page_of(&st, &job, disk, &m, page).await?).clone();
    Ok(Json(ManifestPage { page, chunks_per_page: pages.chunks_per_page, chunks }))
}

/// `GET /jobs/{job}/disks/{disk}/manifest` (target or admin).
pub async fn manifest(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk)): Path<(String, u32)>,
) -> ApiResult<Json<Manifest>> {
    let blake3 = verified_disk(&reading_target(&st, &auth, &job)?, &job, disk)?;
    let m = cached_manifest(&st, &job, disk, &blake3).await?;
    Ok(Json((*m).clone()))
}

/// `GET /jobs/{job}/disks/{disk}/chunks/{index}/data` (target or admin): a stored chunk's
/// bytes. Zero chunks are not stored; the target writes zeros for them itself.
pub async fn chunk(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk, index)): Path<(String, u32, u64)>,
) -> ApiResult<([(&'static str, String); 1], Vec<u8>)> {
    let blake3 = verified_disk(&reading_target(&st, &auth, &job)?, &job, disk)?;
    let m = cached_manifest(&st, &job, disk, &blake3).await?;
    let entry = chunk_entry(&st, &job, disk, &m, index).await?;
    if entry.zero {
        return Err(ApiErr::new(Code::ZeroChunk, format!("chunk {index} is all zeros")));
    }
    let id = entry.id;
    let bytes = st
        .store
        .get(&id, Place::of(m.size, m.chunk_size, index))
        .await
        .map_err(|e| anyhow::anyhow!("reading chunk {index} from the store: {e}"))?;
    debug_assert_eq!(bytes.len() as u64, treehash::chunk_len(m.size, m.chunk_size, index));
    st.metrics.chunk_served(bytes.len() as u64);
    Ok(([(CHUNK_ID_HEADER, hex::encode(id))], bytes))
}
