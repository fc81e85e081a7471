//! The source agent's calls: register, per disk begin / missing / chunks / progress / complete,
//! then finish or fail. Each chunk's bytes are checked against its id before they are kept.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;

use super::auth::Authorized;
use super::error::{ApiErr, ApiResult, Body};
use super::AppState;
use crate::image::manifest::hex_digest;
use crate::image::treehash;
use crate::store::Place;
use crate::wire::routes::call;
use crate::wire::*;

/// A job the source may no longer work on.
fn not_stopped(job: &str, s: JobState) -> ApiResult<()> {
    match s {
        JobState::Cancelled => Err(ApiErr::new(Code::JobCancelled, format!("job {job} was cancelled"))),
        JobState::Finished => Err(ApiErr::new(Code::JobFinished, format!("job {job} is already Finished"))),
        JobState::InError => Err(ApiErr::new(
            Code::JobInError,
            format!("job {job} is InError; an operator must restart it (ferry job restart)"),
        )),
        _ => Ok(()),
    }
}

/// Every source call but `register` and `fail` needs the job Running.
fn running(job: &str, auth: &Authorized) -> ApiResult<()> {
    let state = auth.state();
    not_stopped(job, state)?;
    if state != JobState::Running {
        return Err(ApiErr::new(Code::NotRunning, format!("job {job} is {}; register first", state.as_str())));
    }
    Ok(())
}

pub async fn register(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(req): Body<call::Register>,
) -> ApiResult<Json<Registered>> {
    not_stopped(&job, auth.state())?;
    if req.disks.is_empty() {
        return Err(ApiErr::new(Code::NoDisks, "a source must send at least one disk"));
    }
    st.db.set_machine(&job, &req.machine, req.inventory.as_ref(), req.disks.len())?;
    if auth.state() != JobState::Running
        && !st.db.transition(&job, &[JobState::Waiting], JobState::Running, None, None)?
    {
        // Moved since this request was let in (cancelled, or failed, here or on another
        // receiver): it stays as it is, and the source is told why.
        let now = st.job(&job)?.state;
        not_stopped(&job, now)?;
    }
    log::info!("job {job}: source registered with {} disks", req.disks.len());
    let j = st.job(&job)?;
    Ok(Json(Registered { job, options: j.options }))
}

/// The source's own code, as the job records it: its words are the source's, its code one
/// of ours (an unknown one is recorded as the source's `agent_error`).
fn reported_code(f: &Failure) -> String {
    Code::parse(&f.code).unwrap_or(Code::AgentError).source_reported()
}

pub async fn fail(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Body(f): Body<call::Fail>,
) -> ApiResult<StatusCode> {
    if matches!(auth.state(), JobState::Waiting | JobState::Running) {
        let reason: String = f.reason.chars().take(2000).collect();
        let from = [JobState::Waiting, JobState::Running];
        st.db.transition(&job, &from, JobState::InError, Some(&reported_code(&f)), Some(&reason))?;
        log::warn!("job {job}: the source failed: {reason}");
    }
    Ok(StatusCode::NO_CONTENT)
}

pub async fn finish(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
) -> ApiResult<Json<Job>> {
    running(&job, &auth)?;
    let j = st.job(&job)?;
    let expected = st.db.disk_count(&job)?.unwrap_or(0) as usize;
    let verified = j.disks.iter().filter(|d| d.verified && (d.index as usize) < expected).count();
    if expected == 0 || verified != expected {
        let reason = format!(
            "{verified} of {expected} disks are verified; every disk must be complete before the job can finish"
        );
        return Err(ApiErr::new(Code::DisksIncomplete, reason));
    }
    if !st.db.transition(&job, &[JobState::Running], JobState::Finished, None, None)? {
        let now = st.job(&job)?.state;
        not_stopped(&job, now)?;
        return Err(ApiErr::new(Code::NotRunning, format!("job {job} is {}; register first", now.as_str())));
    }
    log::info!("job {job} Finished: {expected} disks verified");
    Ok(Json(st.job(&job)?))
}

fn disk_in_range(st: &AppState, job: &str, disk: u32) -> ApiResult<()> {
    let count = st.db.disk_count(job)?.unwrap_or(0);
    if disk >= count {
        return Err(ApiErr::new(
            Code::BadDisk,
            format!("disk {disk} is not one of the {count} disks this source registered"),
        ));
    }
    Ok(())
}

fn geometry(st: &AppState, job: &str, disk: u32) -> ApiResult<(u64, u64)> {
    st.db
        .disk_geometry(job, disk)?
        .ok_or_else(|| ApiErr::new(Code::DiskNotBegun, format!("disk {disk} of job {job} was not begun")))
}

pub async fn begin_disk(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk)): Path<(String, u32)>,
    Body(b): Body<call::BeginDisk>,
) -> ApiResult<StatusCode> {
    running(&job, &auth)?;
    disk_in_range(&st, &job, disk)?;
    treehash::validate_chunk_size(b.chunk_size).map_err(|e| ApiErr::new(Code::BadChunkSize, e))?;
    st.db.begin_disk(&job, disk, &b)?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn missing(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk)): Path<(String, u32)>,
    Body(q): Body<call::Missing>,
) -> ApiResult<Json<MissingAnswer>> {
    running(&job, &auth)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    let count = treehash::chunk_count(size, chunk_size);
    if let Some(c) = q.chunks.iter().find(|c| c.index >= count) {
        return Err(ApiErr::new(
            Code::BadIndex,
            format!("chunk {} is past the last chunk ({})", c.index, count.saturating_sub(1)),
        ));
    }
    // Held only where it was verified: an id stored for another index does not count. One
    // question for the lot: the store asks a bucket about many chunks at once.
    let asked: Vec<_> = q.chunks.iter().map(|c| (c.id, Place::of(size, chunk_size, c.index))).collect();
    let absent = st.store.missing(&asked).await.map_err(anyhow::Error::from)?;
    let out = absent.into_iter().map(|i| q.chunks[i].index).collect();
    Ok(Json(MissingAnswer { missing: out }))
}

pub async fn progress(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk)): Path<(String, u32)>,
    Body(p): Body<call::Progress>,
) -> ApiResult<StatusCode> {
    running(&job, &auth)?;
    geometry(&st, &job, disk)?;
    st.db.set_progress(&job, disk, p.bytes_done, p.rate)?;
    Ok(StatusCode::NO_CONTENT)
}

/// Keeps one page of a large disk's chunk ids until the paged manifest that names its hash
/// arrives. Nothing in it is trusted before then; it only has to be a page of this disk.
pub async fn put_page(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk, page)): Path<(String, u32, u64)>,
    Body(p): Body<call::PutPage>,
) -> ApiResult<StatusCode> {
    use crate::image::pages;
    running(&job, &auth)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    let count = treehash::chunk_count(size, chunk_size);
    pages::validate_chunks_per_page(p.chunks_per_page).map_err(|e| ApiErr::new(Code::BadPage, e))?;
    let range = pages::page_chunks(count, p.chunks_per_page, page);
    if p.page != page || !pages::is_paged(count, p.chunks_per_page) || range.is_empty() {
        let pages = pages::page_count(count, p.chunks_per_page);
        let why = format!("disk {disk} has {count} chunks: {pages} pages of {}, no page {page}", p.chunks_per_page);
        return Err(ApiErr::new(Code::BadPage, why));
    }
    if p.chunks.len() as u64 != range.end - range.start {
        let why = format!("page {page} holds chunks {range:?}, but {} were sent", p.chunks.len());
        return Err(ApiErr::new(Code::BadPage, why));
    }
    // The pages of a verified disk are its manifest: they change only after it begins again.
    if st.job(&job)?.disks.iter().any(|d| d.index == disk && d.verified) {
        return Err(ApiErr::new(Code::BadPage, format!("disk {disk} is verified; begin it again to send its pages")));
    }
    let ids: Vec<_> = p.chunks.iter().map(|c| c.id).collect();
    let cv = pages::page_cv(&ids, range.start, size, chunk_size);
    let body = serde_json::to_vec(&p).map_err(anyhow::Error::from)?;
    st.store
        .put_manifest_page(&job, disk, page, &cv, body)
        .await
        .map_err(|e| anyhow::anyhow!("keeping page {page} of job {job} disk {disk} in {}: {e}", st.store.describe()))?;
    Ok(StatusCode::NO_CONTENT)
}

pub async fn put_chunk(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk, index)): Path<(String, u32, u64)>,
    headers: HeaderMap,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let result = put_chunk_checked(&st, &auth, &job, disk, index, &headers, body).await;
    if let Err(e) = &result {
        st.metrics.reject(e.code);
    }
    result
}

/// What a chunk upload says of itself in its headers.
fn chunk_header_id(headers: &HeaderMap) -> ApiResult<crate::image::Digest> {
    headers
        .get(CHUNK_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| ApiErr::new(Code::NoChunkId, format!("the {CHUNK_ID_HEADER} header is required")))
        .and_then(|v| hex_digest::parse(v).map_err(|e| ApiErr::new(Code::BadChunkId, e)))
}

/// What an upload's path and headers say, checked before its body is read.
struct ChunkUpload {
    size: u64,
    chunk_size: u64,
    id: crate::image::Digest,
    expected_len: usize,
    compressed: bool,
}

fn chunk_upload(
    st: &Arc<AppState>,
    auth: &Authorized,
    job: &str,
    disk: u32,
    index: u64,
    headers: &HeaderMap,
) -> ApiResult<ChunkUpload> {
    running(job, auth)?;
    let (size, chunk_size) = geometry(st, job, disk)?;
    if index >= treehash::chunk_count(size, chunk_size) {
        return Err(ApiErr::new(Code::BadIndex, format!("chunk {index} is past the end of disk {disk}")));
    }
    let id = chunk_header_id(headers)?;
    let expected_len = treehash::chunk_len(size, chunk_size, index) as usize;
    let compressed = headers.get(axum::http::header::CONTENT_ENCODING).is_some_and(|v| v.as_bytes() == b"zstd");
    Ok(ChunkUpload { size, chunk_size, id, expected_len, compressed })
}

async fn put_chunk_checked(
    st: &Arc<AppState>,
    auth: &Authorized,
    job: &str,
    disk: u32,
    index: u64,
    headers: &HeaderMap,
    body: axum::body::Body,
) -> ApiResult<StatusCode> {
    let declared = headers.get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    let ChunkUpload { size, chunk_size, id, expected_len, compressed } =
        match chunk_upload(st, auth, job, disk, index, headers) {
            Ok(u) => u,
            Err(e) => {
                // The token was accepted: the body is read and dropped, so that the connection
                // stays good for the agent's next request.
                super::chunk_body::drain(body, declared).await;
                return Err(e);
            }
        };
    let limit = expected_len + if compressed { 64 << 10 } else { 0 };
    let body = super::chunk_body::read(body, declared, limit, index).await?;
    let wire_len = body.len() as u64;
    // Decompressing and hashing take milliseconds of CPU: keep them off the async workers.
    let checked = tokio::task::spawn_blocking(move || -> ApiResult<Bytes> {
        let bytes =
            if compressed {
                Bytes::from(zstd::bulk::decompress(&body, expected_len).map_err(|e| {
                    ApiErr::new(Code::BadCompression, format!("chunk {index} does not decompress: {e}"))
                })?)
            } else {
                body
            };
        if bytes.len() != expected_len {
            return Err(ApiErr::new(
                Code::BadLength,
                format!("chunk {index} must be {expected_len} bytes, got {}", bytes.len()),
            ));
        }
        let actual = Place::of(size, chunk_size, index).id_of(&bytes);
        if actual != id {
            return Err(ApiErr::new(
                Code::HashMismatch,
                format!("chunk {index}: its bytes hash to {}, not to the id sent", hex::encode(actual)),
            ));
        }
        Ok(bytes)
    })
    .await
    .map_err(|e| anyhow::anyhow!("chunk task failed: {e}"))?;
    let stored = match checked {
        Ok(bytes) => match st.store.put(&id, Place::of(size, chunk_size, index), bytes).await {
            Ok(new) => Ok(new),
            Err(e) if e.kind() == std::io::ErrorKind::StorageFull || e.raw_os_error() == Some(libc::EDQUOT) => {
                Err(ApiErr::new(Code::StoreFull, format!("the receiver's store is full: {e}")))
            }
            Err(e) => Err(anyhow::Error::from(e).context(format!("storing chunk {index}")).into()),
        },
        Err(e) => Err(e),
    };
    match stored {
        Ok(new) => {
            // A chunk another upload stored first is not received twice.
            if let Some(batch) = new.then(|| st.received.add(job, disk, expected_len as u64)).flatten() {
                super::counters::write(&st.db, batch);
            }
            st.metrics.chunk_received(expected_len as u64, new);
            log::debug!("job {job} disk {disk} chunk {index}: {wire_len} bytes on the wire, new={new}");
            Ok(if new { StatusCode::CREATED } else { StatusCode::OK })
        }
        Err(e) => {
            if e.code == Code::StoreFull {
                let code = Some(Code::StoreFull.as_str());
                st.db.transition(job, &[JobState::Running], JobState::InError, code, Some(&e.message))?;
            }
            Err(e)
        }
    }
}

pub async fn complete_disk(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path((job, disk)): Path<(String, u32)>,
    Body(manifest): Body<call::CompleteDisk>,
) -> ApiResult<Json<DiskVerdict>> {
    running(&job, &auth)?;
    let (size, chunk_size) = geometry(&st, &job, disk)?;
    if manifest.size != size || manifest.chunk_size != chunk_size {
        return Err(ApiErr::new(
            Code::ManifestMismatch,
            format!(
                "the manifest describes {} bytes in {}-byte chunks, but the disk began as {size} bytes in {chunk_size}-byte chunks",
                manifest.size, manifest.chunk_size
            ),
        ));
    }
    let verdict = super::verify::verify_manifest(&st, &job, disk, &manifest).await.map(|()| manifest);
    match verdict {
        Ok(manifest) => {
            super::verify::keep_manifest(&st, &job, disk, &manifest).await?;
            st.write_counters();
            let root = hex::encode(manifest.blake3);
            st.db.verify_disk(&job, disk, &manifest)?;
            // A target must never be served a manifest cached from before this one.
            st.forget_manifest(&job, disk);
            log::info!("job {job} disk {disk} verified: blake3 {root}");
            Ok(Json(DiskVerdict { verified: true, blake3: root }))
        }
        Err((code, reason)) => {
            st.db.transition(&job, &[JobState::Running], JobState::InError, Some(code.as_str()), Some(&reason))?;
            Err(ApiErr::new(code, reason))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sources_code_is_recorded_as_its_own() {
        let f = |code: &str| Failure { code: code.into(), reason: String::new() };
        assert_eq!(reported_code(&f("missing_driver")), "source_missing_driver");
        assert_eq!(reported_code(&f("no_disks")), "source_no_disks");
        assert_eq!(reported_code(&f("'; drop table jobs")), "source_agent_error");
    }
}
