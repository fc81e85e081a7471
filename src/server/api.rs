//! The HTTP API under `/api/v1`: admin calls (jobs) and agent calls (one job, by its token).

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use subtle::ConstantTimeEq;

use super::db::Db;
use super::{random_hex, AppState};
use crate::image::manifest::hex_digest;
use crate::image::treehash::{self, chunk_id, MAX_CHUNK_SIZE};
use crate::image::{hasher, Manifest};
use crate::wire::*;

/// An error answer: HTTP status, stable code, words.
pub struct ApiErr(pub StatusCode, pub &'static str, pub String);

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.0, Json(ApiError { code: self.1.into(), message: self.2 })).into_response()
    }
}

impl From<anyhow::Error> for ApiErr {
    fn from(e: anyhow::Error) -> Self {
        log::error!("internal error: {e:#}");
        ApiErr(StatusCode::INTERNAL_SERVER_ERROR, "internal", format!("{e:#}"))
    }
}

pub type ApiResult<T> = Result<T, ApiErr>;

pub fn bad(code: &'static str, msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::BAD_REQUEST, code, msg.into())
}

pub fn conflict(code: &'static str, msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::CONFLICT, code, msg.into())
}

/// Room for the largest chunk plus headers of a compressed frame.
const CHUNK_BODY_LIMIT: usize = MAX_CHUNK_SIZE as usize + (1 << 20);
/// Manifests carry one id per chunk: 256 MiB holds a 12 TiB disk in 4 MiB chunks.
const MANIFEST_BODY_LIMIT: usize = 256 << 20;
/// A live image's console transcript.
const LOG_BODY_LIMIT: usize = 256 << 10;
/// Every other body.
const CONTROL_BODY_LIMIT: usize = 1 << 20;

pub fn router(state: Arc<AppState>) -> Router {
    let api = Router::new()
        .route("/health", get(health))
        .route("/jobs", post(create_job).get(list_jobs))
        .route("/jobs/{job}", get(show_job))
        .route("/jobs/{job}/restart", post(restart_job))
        .route("/jobs/{job}/cancel", post(cancel_job))
        .route("/jobs/{job}/log", post(post_log).get(get_log).layer(DefaultBodyLimit::max(LOG_BODY_LIMIT)))
        .route("/whoami", get(whoami))
        .route("/enrollments", post(super::enroll_api::create).get(super::enroll_api::list))
        .route("/enrollments/{id}/revoke", post(super::enroll_api::revoke))
        .route("/enroll", post(super::enroll_api::enroll))
        .route("/jobs/{job}/target", post(super::target_api::set_target))
        .route("/jobs/{job}/target/register", post(super::target_api::register))
        .route("/jobs/{job}/target/begin", post(super::target_api::begin))
        .route("/jobs/{job}/target/progress", post(super::target_api::progress))
        .route("/jobs/{job}/target/fail", post(super::target_api::fail))
        .route("/jobs/{job}/target/finish", post(super::target_api::finish))
        .route("/jobs/{job}/disks/{disk}/manifest", get(super::target_api::manifest))
        .route("/jobs/{job}/disks/{disk}/chunks/{index}/data", get(super::target_api::chunk))
        .route("/jobs/{job}/register", post(register))
        .route("/jobs/{job}/fail", post(fail))
        .route("/jobs/{job}/finish", post(finish))
        .route("/jobs/{job}/disks/{disk}/begin", post(begin_disk))
        .route("/jobs/{job}/disks/{disk}/missing", post(missing))
        .route("/jobs/{job}/disks/{disk}/progress", post(progress))
        .route("/jobs/{job}/disks/{disk}/chunks/{index}", put(put_chunk).layer(DefaultBodyLimit::max(CHUNK_BODY_LIMIT)))
        .route(
            "/jobs/{job}/disks/{disk}/complete",
            post(complete_disk).layer(DefaultBodyLimit::max(MANIFEST_BODY_LIMIT)),
        )
        .layer(DefaultBodyLimit::max(CONTROL_BODY_LIMIT));
    Router::new()
        .route("/", get(super::dashboard::page))
        .nest(API_PREFIX, api)
        .route("/boot/{*file}", get(super::boot_http::boot_file))
        .route("/metrics", get(super::metrics::metrics))
        .route_layer(axum::middleware::from_fn_with_state(state.clone(), super::metrics::track))
        .with_state(state)
}

// ---- authentication ----

pub(super) fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers.get(axum::http::header::AUTHORIZATION).ok_or_else(|| {
        ApiErr(StatusCode::UNAUTHORIZED, "no_token", "an Authorization: Bearer token is required".into())
    })?;
    value.to_str().ok().and_then(|v| v.strip_prefix("Bearer ")).map(str::trim).ok_or_else(|| {
        ApiErr(StatusCode::UNAUTHORIZED, "bad_token", "the Authorization header must be 'Bearer TOKEN'".into())
    })
}

pub(super) fn tokens_equal(a: &str, b: &str) -> bool {
    // Lengths are not secret (every token is 64 hex digits); the bytes are compared in
    // constant time.
    a.len() == b.len() && bool::from(a.as_bytes().ct_eq(b.as_bytes()))
}

/// The admin, or the read-only viewer: may read jobs and logs.
pub fn require_reader(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    let token = bearer(headers)?;
    if tokens_equal(token, &state.admin_token) || tokens_equal(token, &state.viewer_token) {
        Ok(())
    } else {
        Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "this token may not read jobs".into()))
    }
}

pub fn require_admin(state: &AppState, headers: &HeaderMap) -> ApiResult<()> {
    if tokens_equal(bearer(headers)?, &state.admin_token) {
        Ok(())
    } else {
        Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "this token may not manage jobs".into()))
    }
}

pub fn check_job_id(job: &str) -> ApiResult<()> {
    if valid_job_id(job) {
        Ok(())
    } else {
        Err(bad("bad_job_id", "a job id is 1-64 lowercase letters, digits or '-'"))
    }
}

/// Who is calling about a job: the admin, the source agent holding that job's token, or the
/// target machine holding its target token.
#[derive(PartialEq, Debug)]
pub enum Caller {
    Admin,
    /// The read-only viewer token.
    Viewer,
    Agent,
    Target,
}

pub fn job_caller(state: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<(Caller, JobState)> {
    check_job_id(job)?;
    let token = bearer(headers)?;
    let (job_token, target_token, job_state) = state
        .db
        .tokens_and_state(job)?
        .ok_or_else(|| ApiErr(StatusCode::NOT_FOUND, "no_such_job", format!("there is no job {job}")))?;
    if tokens_equal(token, &job_token) {
        Ok((Caller::Agent, job_state))
    } else if target_token.is_some_and(|t| tokens_equal(token, &t)) {
        Ok((Caller::Target, job_state))
    } else if tokens_equal(token, &state.admin_token) {
        Ok((Caller::Admin, job_state))
    } else if tokens_equal(token, &state.viewer_token) {
        Ok((Caller::Viewer, job_state))
    } else {
        Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", format!("this token does not belong to job {job}")))
    }
}

/// An agent call on a job that must be Running.
fn running_agent(state: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<()> {
    let (caller, job_state) = job_caller(state, headers, job)?;
    if caller != Caller::Agent {
        return Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "only the job's agent sends disks".into()));
    }
    not_stopped(job, job_state)?;
    if job_state != JobState::Running {
        return Err(conflict("not_running", format!("job {job} is {}; register first", job_state.as_str())));
    }
    Ok(())
}

fn not_stopped(job: &str, s: JobState) -> ApiResult<()> {
    match s {
        JobState::Cancelled => Err(conflict("job_cancelled", format!("job {job} was cancelled"))),
        JobState::Finished => Err(conflict("job_finished", format!("job {job} is already Finished"))),
        JobState::InError => Err(conflict(
            "job_in_error",
            format!("job {job} is InError; an operator must restart it (ferry job restart)"),
        )),
        _ => Ok(()),
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &Bytes) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| bad("bad_json", format!("malformed request body: {e}")))
}

pub fn job_or_404(db: &Db, job: &str, with_token: bool) -> ApiResult<Job> {
    db.job(job, with_token)?
        .ok_or_else(|| ApiErr(StatusCode::NOT_FOUND, "no_such_job", format!("there is no job {job}")))
}

// ---- admin ----

async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "api": API_PREFIX, "version": env!("CARGO_PKG_VERSION") }))
}

async fn create_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    body: Bytes,
) -> ApiResult<(StatusCode, Json<Job>)> {
    require_admin(&st, &headers)?;
    let req: CreateJob = parse_json(&body)?;
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(bad("bad_name", "a job needs a name of 1-200 characters"));
    }
    if let Some(cs) = req.options.chunk_size {
        treehash::validate_chunk_size(cs).map_err(|e| bad("bad_chunk_size", e))?;
    }
    if req.client_token.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(bad("bad_client_token", "a client token is at most 200 characters"));
    }
    if let Some(spec) = &req.target_spec {
        if req.target != TargetKind::Instance {
            return Err(bad("not_instance_job", "only a job with target 'instance' names a target machine"));
        }
        super::target_api::validate_spec(spec)?;
    }
    let target_token = (req.target == TargetKind::Instance).then(|| random_hex(32));
    let job = st.db.create_job(&req, &random_hex(6), &random_hex(32), target_token.as_deref())?;
    log::info!("job {} ({}) created", job.id, job.name);
    Ok((StatusCode::CREATED, Json(job)))
}

async fn list_jobs(State(st): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Json<Vec<Job>>> {
    require_reader(&st, &headers)?;
    let mut jobs = vec![];
    for id in st.db.job_ids()? {
        if let Some(j) = st.db.job(&id, false)? {
            jobs.push(j);
        }
    }
    Ok(Json(jobs))
}

async fn show_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Json<Job>> {
    let (caller, _) = job_caller(&st, &headers, &job)?;
    let mut j = job_or_404(&st.db, &job, caller == Caller::Admin)?;
    if matches!(caller, Caller::Agent | Caller::Target) {
        // An agent learns its job's state, not how the operator named the target.
        j.target_spec = None;
    }
    Ok(Json(j))
}

async fn restart_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Json<Job>> {
    require_admin(&st, &headers)?;
    check_job_id(&job)?;
    let current = job_or_404(&st.db, &job, false)?;
    if current.state == JobState::Running {
        return Err(conflict("job_running", format!("job {job} is Running; cancel it first")));
    }
    st.db.set_state(&job, JobState::Waiting, None, None)?;
    // The source will send again, possibly other bytes: a target written from the old copy is
    // no longer a copy of this job, so the target side starts over too.
    if current.delivery.is_some() {
        st.db.update_delivery(&job, |d| *d = None)?;
    }
    st.manifests.lock().unwrap_or_else(|p| p.into_inner()).retain(|(j, _), _| j != &job);
    log::info!("job {job} restarted");
    Ok(Json(job_or_404(&st.db, &job, true)?))
}

async fn cancel_job(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Json<Job>> {
    require_admin(&st, &headers)?;
    check_job_id(&job)?;
    let current = job_or_404(&st.db, &job, false)?;
    match current.state {
        JobState::Finished => {
            return Err(conflict("job_finished", format!("job {job} is Finished; nothing to cancel")))
        }
        JobState::Cancelled => {}
        _ => st.db.set_state(&job, JobState::Cancelled, None, None)?,
    }
    Ok(Json(job_or_404(&st.db, &job, true)?))
}

// ---- agent ----

async fn register(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Registered>> {
    let (caller, job_state) = job_caller(&st, &headers, &job)?;
    if caller != Caller::Agent {
        return Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "only the job's agent registers".into()));
    }
    not_stopped(&job, job_state)?;
    let req: Register = parse_json(&body)?;
    if req.disks.is_empty() {
        return Err(bad("no_disks", "a source must send at least one disk"));
    }
    st.db.set_machine(&job, &req.machine, req.inventory.as_ref(), req.disks.len())?;
    if job_state != JobState::Running {
        st.db.set_state(&job, JobState::Running, None, None)?;
    }
    log::info!("job {job}: source registered with {} disks", req.disks.len());
    let j = job_or_404(&st.db, &job, false)?;
    Ok(Json(Registered { job, options: j.options }))
}

async fn fail(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (caller, job_state) = job_caller(&st, &headers, &job)?;
    if caller != Caller::Agent {
        return Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "only the job's agent reports failures".into()));
    }
    let f: Failure = parse_json(&body)?;
    if matches!(job_state, JobState::Waiting | JobState::Running) {
        let code: String = f.code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
        let reason: String = f.reason.chars().take(2000).collect();
        st.db.set_state(&job, JobState::InError, Some(&format!("source_{code}")), Some(&reason))?;
        log::warn!("job {job}: the source failed: {reason}");
    }
    Ok(StatusCode::NO_CONTENT)
}

async fn finish(State(st): State<Arc<AppState>>, headers: HeaderMap, Path(job): Path<String>) -> ApiResult<Json<Job>> {
    running_agent(&st, &headers, &job)?;
    let j = job_or_404(&st.db, &job, false)?;
    let expected = st.db.disk_count(&job)?.unwrap_or(0) as usize;
    let verified = j.disks.iter().filter(|d| d.verified && (d.index as usize) < expected).count();
    if expected == 0 || verified != expected {
        let reason = format!(
            "{verified} of {expected} disks are verified; every disk must be complete before the job can finish"
        );
        return Err(conflict("disks_incomplete", reason));
    }
    st.db.set_state(&job, JobState::Finished, None, None)?;
    log::info!("job {job} Finished: {expected} disks verified");
    Ok(Json(job_or_404(&st.db, &job, false)?))
}

fn disk_in_range(st: &AppState, job: &str, disk: u32) -> ApiResult<()> {
    let count = st.db.disk_count(job)?.unwrap_or(0);
    if disk >= count {
        return Err(bad("bad_disk", format!("disk {disk} is not one of the {count} disks this source registered")));
    }
    Ok(())
}

fn geometry(st: &AppState, job: &str, disk: u32) -> ApiResult<(u64, u64)> {
    st.db
        .disk_geometry(job, disk)?
        .ok_or_else(|| conflict("disk_not_begun", format!("disk {disk} of job {job} was not begun")))
}

async fn begin_disk(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    running_agent(&st, &headers, &job)?;
    disk_in_range(&st, &job, disk)?;
    let b: BeginDisk = parse_json(&body)?;
    treehash::validate_chunk_size(b.chunk_size).map_err(|e| bad("bad_chunk_size", e))?;
    st.db.begin_disk(&job, disk, &b)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn missing(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<Json<MissingAnswer>> {
    running_agent(&st, &headers, &job)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    let q: MissingQuery = parse_json(&body)?;
    let count = treehash::chunk_count(size, chunk_size);
    let mut out = vec![];
    for c in &q.chunks {
        if c.index >= count {
            return Err(bad(
                "bad_index",
                format!("chunk {} is past the last chunk ({})", c.index, count.saturating_sub(1)),
            ));
        }
        if !st.store.contains(&c.id).map_err(anyhow::Error::from)? {
            out.push(c.index);
        }
    }
    Ok(Json(MissingAnswer { missing: out }))
}

async fn progress(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    running_agent(&st, &headers, &job)?;
    geometry(&st, &job, disk)?;
    let p: ProgressReport = parse_json(&body)?;
    st.db.set_progress(&job, disk, p.bytes_done, p.rate)?;
    Ok(StatusCode::NO_CONTENT)
}

async fn put_chunk(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk, index)): Path<(String, u32, u64)>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let result = put_chunk_checked(st.clone(), headers, job, disk, index, body).await;
    if let Err(e) = &result {
        st.metrics.reject(e.1);
    }
    result
}

async fn put_chunk_checked(
    st: Arc<AppState>,
    headers: HeaderMap,
    job: String,
    disk: u32,
    index: u64,
    body: Bytes,
) -> ApiResult<StatusCode> {
    running_agent(&st, &headers, &job)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    if index >= treehash::chunk_count(size, chunk_size) {
        return Err(bad("bad_index", format!("chunk {index} is past the end of disk {disk}")));
    }
    let id = headers
        .get(CHUNK_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| bad("no_chunk_id", format!("the {CHUNK_ID_HEADER} header is required")))
        .and_then(|v| hex_digest::parse(v).map_err(|e| bad("bad_chunk_id", e)))?;
    let expected_len = treehash::chunk_len(size, chunk_size, index) as usize;
    let compressed = headers.get(axum::http::header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() == b"zstd");
    if body.len() > expected_len + if compressed { 64 << 10 } else { 0 } {
        return Err(ApiErr(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            format!("chunk {index} is {expected_len} bytes; the body has {}", body.len()),
        ));
    }
    let wire_len = body.len() as u64;
    let st2 = st.clone();
    // Decompressing and hashing take milliseconds of CPU: keep them off the async workers.
    let stored = tokio::task::spawn_blocking(move || -> ApiResult<bool> {
        let data: Vec<u8>;
        let bytes: &[u8] = if compressed {
            data = zstd::bulk::decompress(&body, expected_len)
                .map_err(|e| bad("bad_compression", format!("chunk {index} does not decompress: {e}")))?;
            &data
        } else {
            &body
        };
        if bytes.len() != expected_len {
            return Err(bad("bad_length", format!("chunk {index} must be {expected_len} bytes, got {}", bytes.len())));
        }
        let actual = chunk_id(bytes, index * chunk_size, size, chunk_size);
        if actual != id {
            return Err(ApiErr(
                StatusCode::UNPROCESSABLE_ENTITY,
                "hash_mismatch",
                format!("chunk {index}: its bytes hash to {}, not to the id sent", hex::encode(actual)),
            ));
        }
        match st2.store.put(&id, bytes) {
            Ok(new) => Ok(new),
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::EDQUOT) => Err(
                ApiErr(StatusCode::INSUFFICIENT_STORAGE, "store_full", format!("the receiver's store is full: {e}")),
            ),
            Err(e) => Err(anyhow::Error::from(e).context(format!("storing chunk {index}")).into()),
        }
    })
    .await
    .map_err(|e| anyhow::anyhow!("chunk task failed: {e}"))?;
    match stored {
        Ok(new) => {
            st.db.add_received(&job, disk, expected_len as u64)?;
            use std::sync::atomic::Ordering::Relaxed;
            st.metrics.chunk_bytes_received.fetch_add(expected_len as u64, Relaxed);
            st.metrics.chunks_received.fetch_add(1, Relaxed);
            st.metrics.chunks_stored.fetch_add(new as u64, Relaxed);
            log::debug!("job {job} disk {disk} chunk {index}: {wire_len} bytes on the wire, new={new}");
            Ok(if new { StatusCode::CREATED } else { StatusCode::OK })
        }
        Err(e) => {
            if e.1 == "store_full" {
                st.db.set_state(&job, JobState::InError, Some("store_full"), Some(&e.2))?;
            }
            Err(e)
        }
    }
}

async fn complete_disk(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk)): Path<(String, u32)>,
    body: Bytes,
) -> ApiResult<Json<DiskVerdict>> {
    running_agent(&st, &headers, &job)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    let manifest: Manifest = parse_json(&body)?;
    if manifest.size != size || manifest.chunk_size != chunk_size {
        return Err(bad(
            "manifest_mismatch",
            format!(
                "the manifest describes {} bytes in {}-byte chunks, but the disk began as {size} bytes in {chunk_size}-byte chunks",
                manifest.size, manifest.chunk_size
            ),
        ));
    }
    let st2 = st.clone();
    let job2 = job.clone();
    let verdict = tokio::task::spawn_blocking(move || verify_manifest(&st2, &manifest).map(|()| manifest))
        .await
        .map_err(|e| anyhow::anyhow!("verification task failed: {e}"))?;
    match verdict {
        Ok(manifest) => {
            let dir = st.dir.join("manifests").join(&job2);
            std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
            let tmp = dir.join(format!("{disk}.json.tmp"));
            let body = serde_json::to_vec(&manifest).map_err(anyhow::Error::from)?;
            write_durably(&tmp, &dir.join(format!("{disk}.json")), &body)?;
            let root = hex::encode(manifest.blake3);
            st.db.verify_disk(&job, disk, &root, size)?;
            // A target must never be served a manifest cached from before this one.
            st.manifests.lock().unwrap_or_else(|p| p.into_inner()).remove(&(job.clone(), disk));
            log::info!("job {job} disk {disk} verified: blake3 {root}");
            Ok(Json(DiskVerdict { verified: true, blake3: root }))
        }
        Err((code, reason)) => {
            st.db.set_state(&job, JobState::InError, Some(code), Some(&reason))?;
            Err(ApiErr(StatusCode::UNPROCESSABLE_ENTITY, code, reason))
        }
    }
}

pub fn write_durably(tmp: &std::path::Path, dest: &std::path::Path, body: &[u8]) -> ApiResult<()> {
    use std::io::Write;
    let mut f = std::fs::File::create(tmp).map_err(anyhow::Error::from)?;
    f.write_all(body).map_err(anyhow::Error::from)?;
    f.sync_all().map_err(anyhow::Error::from)?;
    std::fs::rename(tmp, dest).map_err(anyhow::Error::from)?;
    Ok(())
}

/// The receiver's own proof that a disk arrived whole: the ids merge up the BLAKE3 tree to the
/// stated whole-disk hash, every data chunk is in the store, and every chunk marked zero really
/// has the id of zeros at its offset (otherwise an export would write zeros where data was).
fn verify_manifest(st: &AppState, m: &Manifest) -> Result<(), (&'static str, String)> {
    st.store.sync().map_err(|e| ("store_error", format!("making the store durable: {e}")))?;
    m.validate().map_err(|e| ("manifest_invalid", format!("disk manifest rejected: {e}")))?;
    for (i, c) in m.chunks.iter().enumerate() {
        if c.zero {
            continue;
        }
        match st.store.contains(&c.id) {
            Ok(true) => {}
            Ok(false) => {
                return Err(("chunk_missing", format!("chunk {i} (id {}) was never received", hex::encode(c.id))))
            }
            Err(e) => return Err(("store_error", format!("reading the store: {e}"))),
        }
    }
    use rayon::prelude::*;
    let zeros = vec![0u8; m.chunk_size as usize];
    let bad_zero = m.chunks.par_iter().enumerate().filter(|(_, c)| c.zero).find_any(|(i, c)| {
        let (offset, len) = m.chunk_range(*i as u64);
        let data = &zeros[..len as usize];
        debug_assert!(hasher::is_zero(data));
        chunk_id(data, offset, m.size, m.chunk_size) != c.id
    });
    if let Some((i, _)) = bad_zero {
        return Err(("zero_mismatch", format!("chunk {i} is marked all-zero but its id is not the id of zeros")));
    }
    Ok(())
}

/// `GET /whoami`: which role a token has (the dashboard's login check).
async fn whoami(State(st): State<Arc<AppState>>, headers: HeaderMap) -> ApiResult<Json<serde_json::Value>> {
    let token = bearer(&headers)?;
    let role = if tokens_equal(token, &st.admin_token) {
        "admin"
    } else if tokens_equal(token, &st.viewer_token) {
        "viewer"
    } else {
        return Err(ApiErr(
            StatusCode::FORBIDDEN,
            "forbidden",
            "this token is neither the admin nor the viewer token".into(),
        ));
    };
    // What the dashboard shows in a ready kernel command line for sources.
    let info = st.info.get();
    Ok(Json(serde_json::json!({
        "role": role,
        "server": info.map(|i| i.url_for_sources()),
        "pin": info.and_then(|i| i.pin.as_deref()),
    })))
}

/// `?boot=ID&seq=N` on `POST /jobs/{job}/log`: which boot of the live image the transcript is
/// from, and how late in that boot (a higher `seq` replaces a lower one).
#[derive(serde::Deserialize)]
struct LogQuery {
    boot: Option<String>,
    #[serde(default)]
    seq: u64,
}

/// `POST /jobs/{job}/log` (source or target agent): the live image's console transcript.
async fn post_log(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    Query(q): Query<LogQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let (caller, _) = job_caller(&st, &headers, &job)?;
    let role = match caller {
        Caller::Agent => "source",
        Caller::Target => "target",
        _ => return Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "only a job's agents send boot logs".into())),
    };
    if q.boot.as_deref().is_some_and(|b| !valid_job_id(b)) {
        return Err(bad("bad_boot_id", "a boot id is 1-64 lowercase letters, digits or '-'"));
    }
    let text = String::from_utf8_lossy(&body);
    let seq = q.seq.min(i64::MAX as u64) as i64;
    st.db.add_log(&job, role, &text, q.boot.as_deref().map(|b| (b, seq)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /jobs/{job}/log` (admin or viewer): every transcript the job's agents sent, oldest first.
async fn get_log(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
) -> ApiResult<Json<Vec<LogEntry>>> {
    let (caller, _) = job_caller(&st, &headers, &job)?;
    if !matches!(caller, Caller::Admin | Caller::Viewer) {
        return Err(ApiErr(StatusCode::FORBIDDEN, "forbidden", "only the operator reads boot logs".into()));
    }
    Ok(Json(st.db.logs(&job)?))
}

/// Only the boot files, for the plain-HTTP boot listener.
pub fn boot_router(state: Arc<AppState>) -> Router {
    Router::new().route("/boot/{*file}", get(super::boot_http::boot_file)).with_state(state)
}
