//! The operator's calls: jobs (create, list, show, restart, cancel), health and `whoami`.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;

use super::auth::Authorized;
use super::error::{ApiErr, ApiResult, Body};
use super::{random_hex, tokens, AppState};
use crate::image::treehash;
use crate::wire::routes::{call, Caller};
use crate::wire::*;

pub async fn health() -> Json<serde_json::Value> {
    Json(serde_json::json!({ "ok": true, "api": API_PREFIX, "version": env!("CARGO_PKG_VERSION") }))
}

pub async fn create_job(
    State(st): State<Arc<AppState>>,
    Body(req): Body<call::CreateJob>,
) -> ApiResult<(StatusCode, Json<Job>)> {
    if req.name.trim().is_empty() || req.name.len() > 200 {
        return Err(ApiErr::new(Code::BadName, "a job needs a name of 1-200 characters"));
    }
    if let Some(cs) = req.options.chunk_size {
        treehash::validate_chunk_size(cs).map_err(|e| ApiErr::new(Code::BadChunkSize, e))?;
    }
    check_wave(&req.options)?;
    if req.client_token.as_ref().is_some_and(|t| t.len() > 200) {
        return Err(ApiErr::new(Code::BadClientToken, "a client token is at most 200 characters"));
    }
    if let Some(spec) = &req.target_spec {
        if req.target != TargetKind::Instance {
            return Err(ApiErr::new(Code::NotInstanceJob, "only a job with target 'instance' names a target machine"));
        }
        super::target::validate_spec(spec)?;
    }
    let (token, target_token) = (random_hex(32), (req.target == TargetKind::Instance).then(|| random_hex(32)));
    let target_hash = target_token.as_deref().map(tokens::hash);
    let (mut job, new) = st.db.create_job(&req, &random_hex(6), &tokens::hash(&token), target_hash.as_deref())?;
    if !new {
        // The same client token again: the job made the first time. A repeat is a caller that
        // lost the answer, so while nothing has used the job it gets tokens again (new ones:
        // the first were not kept); a job already at work keeps its tokens (`ferry job token`).
        if job.state != JobState::Waiting {
            return Ok((StatusCode::OK, Json(job)));
        }
        st.db.set_tokens(&job.id, Some(&tokens::hash(&token)), target_hash.as_deref())?;
        log::info!("job {} ({}) asked for again: new tokens", job.id, job.name);
        job.token = Some(token);
        job.target_token = target_token;
        return Ok((StatusCode::OK, Json(job)));
    }
    log::info!("job {} ({}) created", job.id, job.name);
    // Shown this once: the receiver keeps only their hashes.
    job.token = Some(token);
    job.target_token = target_token;
    Ok((StatusCode::CREATED, Json(job)))
}

pub async fn list_jobs(State(st): State<Arc<AppState>>) -> ApiResult<Json<Vec<Job>>> {
    Ok(Json(st.db.jobs()?))
}

/// `GET /waves`: every wave's summary, from the jobs as the database holds them (the same on
/// every receiver of a scaled-out wave).
pub async fn list_waves(State(st): State<Arc<AppState>>) -> ApiResult<Json<Vec<WaveSummary>>> {
    Ok(Json(summarize(&st.db.jobs()?)))
}

/// `GET /jobs/{job}/receipt`.
pub async fn receipt(State(st): State<Arc<AppState>>, Path(job): Path<String>) -> ApiResult<Json<Receipt>> {
    Ok(Json(crate::wire::receipt(&st.job(&job)?)))
}

/// A job's or an enrollment's wave name, when it has one, must be a valid one.
pub fn check_wave(options: &JobOptions) -> ApiResult<()> {
    match options.wave.as_deref() {
        Some(w) if !valid_wave(w) => {
            Err(ApiErr::new(Code::BadName, "a wave name is 1-64 letters, digits, '.', '_' or '-'"))
        }
        _ => Ok(()),
    }
}

pub async fn show_job(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
) -> ApiResult<Json<Job>> {
    let mut j = st.job(&job)?;
    if matches!(auth.caller, Caller::Agent | Caller::Target) {
        // An agent learns its job's state, not how the operator named the target.
        j.target_spec = None;
    }
    Ok(Json(j))
}

pub async fn restart_job(State(st): State<Arc<AppState>>, Path(job): Path<String>) -> ApiResult<Json<Job>> {
    let current = st.job(&job)?;
    if current.state == JobState::Running {
        return Err(ApiErr::new(Code::JobRunning, format!("job {job} is Running; cancel it first")));
    }
    let stopped = [JobState::Waiting, JobState::Finished, JobState::InError, JobState::Cancelled];
    if !st.db.transition(&job, &stopped, JobState::Waiting, None, None)? {
        return Err(ApiErr::new(Code::JobRunning, format!("job {job} is Running; cancel it first")));
    }
    // The source will send again, possibly other bytes: a target written from the old copy is
    // no longer a copy of this job, so the target side starts over too.
    if current.delivery.is_some() {
        st.db.update_delivery(&job, |d| *d = None)?;
    }
    st.forget_manifests(&job);
    log::info!("job {job} restarted");
    Ok(Json(st.job(&job)?))
}

/// `POST /jobs/{job}/tokens` (admin): new agent and/or target tokens, shown once; the old
/// ones stop working (a lost token, or a target to name for a job a machine made itself).
pub async fn rotate_tokens(
    State(st): State<Arc<AppState>>,
    Path(job): Path<String>,
    Body(req): Body<call::RotateTokens>,
) -> ApiResult<Json<NewTokens>> {
    let j = st.job(&job)?;
    if req.target && j.target != TargetKind::Instance {
        return Err(ApiErr::with_status(
            StatusCode::CONFLICT,
            Code::NotInstanceJob,
            format!("job {job} exports images; it has no target token"),
        ));
    }
    let token = req.agent.then(|| random_hex(32));
    let target_token = req.target.then(|| random_hex(32));
    st.db.set_tokens(
        &job,
        token.as_deref().map(tokens::hash).as_deref(),
        target_token.as_deref().map(tokens::hash).as_deref(),
    )?;
    log::info!("job {job}: new tokens issued (agent: {}, target: {})", req.agent, req.target);
    Ok(Json(NewTokens { token, target_token }))
}

pub async fn cancel_job(State(st): State<Arc<AppState>>, Path(job): Path<String>) -> ApiResult<Json<Job>> {
    let current = st.job(&job)?;
    match current.state {
        JobState::Finished => {
            return Err(ApiErr::new(Code::JobFinished, format!("job {job} is Finished; nothing to cancel")))
        }
        JobState::Cancelled => {}
        _ => {
            let live = [JobState::Waiting, JobState::Running, JobState::InError];
            // Finished meanwhile (on this receiver or another): the job keeps its verdict.
            if !st.db.transition(&job, &live, JobState::Cancelled, None, None)?
                && st.job(&job)?.state == JobState::Finished
            {
                return Err(ApiErr::new(Code::JobFinished, format!("job {job} is Finished; nothing to cancel")));
            }
        }
    }
    Ok(Json(st.job(&job)?))
}

/// `GET /whoami`: which role a token has (the dashboard's login check), and what the dashboard
/// shows in a ready kernel command line for sources.
pub async fn whoami(State(st): State<Arc<AppState>>, auth: Authorized) -> Json<serde_json::Value> {
    let role = if auth.caller == Caller::Admin { "admin" } else { "viewer" };
    let info = st.info.get();
    Json(serde_json::json!({
        "role": role,
        "server": info.map(|i| i.url_for_sources()),
        "pin": info.and_then(|i| i.pin.as_deref()),
    }))
}
