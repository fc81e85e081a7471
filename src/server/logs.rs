//! The live image's console transcripts: sent by the source and target agents while they run
//! and with their verdict, read by the operator (`ferry job log`, the dashboard).

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;

use super::auth::Authorized;
use super::error::{ApiErr, ApiResult};
use super::AppState;
use crate::wire::routes::Caller;
use crate::wire::{valid_job_id, Code, LogEntry};

/// `?boot=ID&seq=N` on `POST /jobs/{job}/log`: which boot of the live image the transcript is
/// from, and how late in that boot (a higher `seq` replaces a lower one).
#[derive(serde::Deserialize)]
pub struct LogQuery {
    boot: Option<String>,
    #[serde(default)]
    seq: u64,
}

/// `POST /jobs/{job}/log` (source or target agent).
pub async fn post_log(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    Path(job): Path<String>,
    Query(q): Query<LogQuery>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    let role = if auth.caller == Caller::Target { "target" } else { "source" };
    if q.boot.as_deref().is_some_and(|b| !valid_job_id(b)) {
        return Err(ApiErr::new(Code::BadBootId, "a boot id is 1-64 lowercase letters, digits or '-'"));
    }
    let text = String::from_utf8_lossy(&body);
    let seq = q.seq.min(i64::MAX as u64) as i64;
    st.db.add_log(&job, role, &text, q.boot.as_deref().map(|b| (b, seq)))?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /jobs/{job}/log` (admin or viewer): every transcript the job's agents sent, oldest first.
pub async fn get_log(State(st): State<Arc<AppState>>, Path(job): Path<String>) -> ApiResult<Json<Vec<LogEntry>>> {
    Ok(Json(st.db.logs(&job)?))
}
