//! Who is calling, decided for every route from its headers and path alone, before any body is
//! read: a middleware on each route checks the bearer token against the callers the route
//! table (`wire::routes`) admits, and hands the handler an [`Authorized`]. A caller the route
//! does not admit never reaches its handler, so its body is never read.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::error::{ApiErr, ApiResult};
use super::tokens;
use super::AppState;
use crate::wire::routes::{call, Call, Caller, Route};
use crate::wire::{valid_job_id, Code, Enrollment, JobState};

/// What the middleware decided.
#[derive(Clone, Debug)]
pub struct Authorized {
    pub caller: Caller,
    /// The job's state, for a route on one job.
    pub job_state: Option<JobState>,
    /// The enrollment whose token it is, for `POST /enroll`.
    pub enrollment: Option<Arc<Enrollment>>,
}

impl Authorized {
    fn new(caller: Caller) -> Self {
        Self { caller, job_state: None, enrollment: None }
    }

    /// The job's state (routes on one job always have it).
    pub fn state(&self) -> JobState {
        self.job_state.expect("a route on one job carries the job's state")
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Authorized {
    type Rejection = ApiErr;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Authorized>()
            .cloned()
            .ok_or_else(|| ApiErr::from(anyhow::anyhow!("a route was mounted without its authorization")))
    }
}

/// A refused request's body up to this size is taken in (and thrown away unread) before the
/// answer: HTTP/2 clients such as curl take an answer that overtakes the end of a small body as
/// a reset stream. A larger body is not read at all.
const DRAIN_LIMIT: usize = 64 << 10;

/// The middleware: decides the caller of `route`, or answers the refusal itself.
pub async fn authorize(State((st, route)): State<(Arc<AppState>, Route)>, req: Request, next: Next) -> Response {
    let (mut parts, body) = req.into_parts();
    match decide(&st, &route, &mut parts).await {
        Ok(a) => {
            parts.extensions.insert(a);
            next.run(Request::from_parts(parts, body)).await
        }
        Err(e) => {
            let small = parts
                .headers
                .get(axum::http::header::CONTENT_LENGTH)
                .and_then(|v| v.to_str().ok()?.parse::<usize>().ok())
                .is_some_and(|n| n <= DRAIN_LIMIT);
            if small {
                let drained = axum::body::to_bytes(body, DRAIN_LIMIT);
                let _ = tokio::time::timeout(std::time::Duration::from_secs(5), drained).await;
            }
            e.into_response()
        }
    }
}

async fn decide(st: &Arc<AppState>, route: &Route, parts: &mut Parts) -> ApiResult<Authorized> {
    let callers = route.callers;
    if callers.contains(&Caller::Anyone) {
        return Ok(Authorized::new(Caller::Anyone));
    }
    if callers == [Caller::Admin] {
        if !tokens::equal(bearer(&parts.headers)?, &st.admin_token) {
            return Err(forbidden("this token may not manage jobs"));
        }
        if route.per_job() {
            check_job_id(&job_param(parts).await?)?;
        }
        return Ok(Authorized::new(Caller::Admin));
    }
    if callers == [Caller::Enrollment] {
        return enrollment_caller(st, &parts.headers);
    }
    if !route.per_job() {
        let token = bearer(&parts.headers)?;
        if tokens::equal(token, &st.admin_token) {
            return Ok(Authorized::new(Caller::Admin));
        }
        if callers.contains(&Caller::Viewer) && tokens::equal(token, &st.viewer_token) {
            return Ok(Authorized::new(Caller::Viewer));
        }
        return Err(forbidden(if *route == call::WhoAmI::ROUTE {
            "this token is neither the admin nor the viewer token"
        } else {
            "this token may not read jobs"
        }));
    }
    let job = job_param(parts).await?;
    let (caller, state) = job_caller(st, &parts.headers, &job)?;
    if !callers.contains(&caller) {
        return Err(forbidden(denied(route, caller)));
    }
    Ok(Authorized { caller, job_state: Some(state), enrollment: None })
}

/// Why `caller` may not use `route` (a route on one job).
fn denied(route: &Route, caller: Caller) -> String {
    let target_route = route.callers.contains(&Caller::Target) && !route.callers.contains(&Caller::Agent);
    let text = match caller {
        Caller::Agent if target_route => "the source's token cannot read disks back; the target has its own token",
        Caller::Viewer if target_route => "the viewer token only reads jobs",
        _ if target_route => "only the job's target machine (its target token) may do this",
        _ if *route == call::GetLog::ROUTE => "only the operator reads boot logs",
        _ if *route == call::PostLog::ROUTE => "only a job's agents send boot logs",
        _ if route.callers == [Caller::Agent] => "only the job's agent may do this",
        _ => "this token may not do this",
    };
    text.to_string()
}

fn forbidden(message: impl Into<String>) -> ApiErr {
    ApiErr::new(Code::Forbidden, message)
}

async fn job_param(parts: &mut Parts) -> ApiResult<String> {
    let Path(params) = Path::<HashMap<String, String>>::from_request_parts(parts, &())
        .await
        .map_err(|e| ApiErr::new(Code::BadJobId, format!("the job in the path: {e}")))?;
    params.get("job").cloned().ok_or_else(|| ApiErr::from(anyhow::anyhow!("a route on one job without {{job}}")))
}

/// The bearer token of a request.
pub fn bearer(headers: &HeaderMap) -> ApiResult<&str> {
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| ApiErr::new(Code::NoToken, "an Authorization: Bearer token is required"))?;
    value
        .to_str()
        .ok()
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .ok_or_else(|| ApiErr::new(Code::BadToken, "the Authorization header must be 'Bearer TOKEN'"))
}

pub fn check_job_id(job: &str) -> ApiResult<()> {
    if valid_job_id(job) {
        Ok(())
    } else {
        Err(ApiErr::new(Code::BadJobId, "a job id is 1-64 lowercase letters, digits or '-'"))
    }
}

/// Which of the job's tokens (or the admin's, or the viewer's) the request carries.
fn job_caller(st: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<(Caller, JobState)> {
    check_job_id(job)?;
    let token = bearer(headers)?;
    // One indexed row: read on the worker (as every small database call here is).
    let (job_token, target_token, state) =
        st.db.tokens_and_state(job)?.ok_or_else(|| ApiErr::new(Code::NoSuchJob, format!("there is no job {job}")))?;
    let caller = if tokens::matches(token, &job_token) {
        Caller::Agent
    } else if target_token.is_some_and(|t| tokens::matches(token, &t)) {
        Caller::Target
    } else if tokens::equal(token, &st.admin_token) {
        Caller::Admin
    } else if tokens::equal(token, &st.viewer_token) {
        Caller::Viewer
    } else {
        return Err(forbidden(format!("this token does not belong to job {job}")));
    };
    Ok((caller, state))
}

/// The enrollment whose token the request carries. Every enrollment is compared, in constant
/// time, whichever matches.
fn enrollment_caller(st: &AppState, headers: &HeaderMap) -> ApiResult<Authorized> {
    let token = bearer(headers)?;
    let mut matching = None;
    for (e, hash) in st.db.enrollment_token_hashes()? {
        if tokens::matches(token, &hash) {
            matching = Some(e);
        }
    }
    let e = matching.ok_or_else(|| forbidden("this token is not an enrollment token"))?;
    if e.revoked_at.is_some() {
        return Err(ApiErr::new(
            Code::EnrollmentRevoked,
            format!("enrollment {} ({}) was revoked: ask the operator for a job", e.id, e.name),
        ));
    }
    Ok(Authorized { caller: Caller::Enrollment, job_state: None, enrollment: Some(Arc::new(e)) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denials_say_which_token_the_route_wants() {
        assert!(denied(&call::TargetRegister::ROUTE, Caller::Agent).contains("target has its own token"));
        assert!(denied(&call::ChunkData::ROUTE, Caller::Viewer).contains("viewer token only reads"));
        assert!(denied(&call::TargetBegin::ROUTE, Caller::Admin).contains("target token"));
        assert!(denied(&call::Register::ROUTE, Caller::Target).contains("agent"));
        assert_eq!(denied(&call::GetLog::ROUTE, Caller::Agent), "only the operator reads boot logs");
        assert!(tokens::equal("abc", "abc") && !tokens::equal("abc", "abd") && !tokens::equal("abc", "ab"));
    }
}
