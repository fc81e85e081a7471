//! A bound on the request bodies held in memory at once. Chunk uploads (up to 65 MiB) and
//! manifests (up to 256 MiB) are read whole before they are checked; without a bound, N
//! parallel uploads hold N such bodies. A large body waits for its share of the budget before a
//! byte of it is read (its token was accepted first: `auth` runs before this).
//!
//! Three more rules keep one caller from holding the budget against everyone else: a job may
//! hold at most a quarter of it (so one token opening many uploads and sending nothing leaves
//! room for every other job; a single body larger than a quarter, a big manifest, holds what it
//! needs alone); a body that sends no byte for [`BODY_STALL`] (`FERRY_BODY_STALL_SECS`) is
//! ended, giving its share back; and so is one that trickles slower than [`MIN_BODY_RATE`] on
//! the whole (a byte every 29 s would never stall).

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use tokio::sync::{Notify, Semaphore};

use super::error::ApiErr;
use crate::wire::Code;

const MIB: u64 = 1 << 20;

/// How long a body may send nothing before it is ended: an agent sends a chunk's bytes as fast
/// as its link allows, so a silence this long is a client holding memory, not a slow network.
pub const BODY_STALL: Duration = Duration::from_secs(30);

/// Bodies in flight by default: 32 chunks of the default 4 MiB (a job's quarter is the 8 an agent
/// keeps in flight), or one of the largest. Measured with 50 sources at once (scripts/bench-wave),
/// 128 MiB moves as much as 512 did, and keeps the receiver's peak RSS near 130 MiB.
pub const DEFAULT_BUDGET_MIB: u32 = 128;

/// The slowest a body may arrive on the whole, in bytes per second, after [`BODY_STALL`] of
/// grace: 4 MiB in about 4 minutes. A real agent on the slowest link still sends faster.
pub const MIN_BODY_RATE: u64 = 16 << 10;

/// Bodies in flight, in MiB.
pub struct BodyBudget {
    mib: Semaphore,
    total_mib: u32,
    /// MiB held (or asked for) by each job, each at most `per_job_mib`.
    per_job: Mutex<HashMap<String, u32>>,
    per_job_mib: u32,
    per_job_freed: Notify,
    /// How long a body may be silent.
    stall: Duration,
}

impl BodyBudget {
    /// `FERRY_BODY_BUDGET_MIB` (for tests and larger machines), else [`DEFAULT_BUDGET_MIB`].
    pub fn from_env() -> Arc<Self> {
        let total = std::env::var("FERRY_BODY_BUDGET_MIB")
            .ok()
            .and_then(|v| v.parse::<u32>().ok())
            .unwrap_or(DEFAULT_BUDGET_MIB);
        let stall = std::env::var("FERRY_BODY_STALL_SECS").ok().and_then(|v| v.parse().ok()).map(Duration::from_secs);
        Self::with_stall(total, stall.unwrap_or(BODY_STALL))
    }

    pub fn new(total_mib: u32) -> Arc<Self> {
        Self::with_stall(total_mib, BODY_STALL)
    }

    fn with_stall(total_mib: u32, stall: Duration) -> Arc<Self> {
        let total_mib = total_mib.max(1);
        Arc::new(Self {
            mib: Semaphore::new(total_mib as usize),
            total_mib,
            per_job: Mutex::default(),
            per_job_mib: (total_mib / 4).max(1),
            per_job_freed: Notify::new(),
            stall,
        })
    }

    fn jobs(&self) -> std::sync::MutexGuard<'_, HashMap<String, u32>> {
        self.per_job.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `job` may hold `share` more MiB, and takes them. The guard gives them back.
    async fn take_job_share(self: &Arc<Self>, job: &str, share: u32) -> JobShare {
        let share = share.min(self.per_job_mib);
        loop {
            let freed = self.per_job_freed.notified();
            {
                let mut jobs = self.jobs();
                let held = jobs.entry(job.to_owned()).or_insert(0);
                if *held + share <= self.per_job_mib {
                    *held += share;
                    return JobShare { budget: self.clone(), job: job.to_owned(), share };
                }
            }
            freed.await;
        }
    }
}

/// A job's part of the budget, given back when dropped.
struct JobShare {
    budget: Arc<BodyBudget>,
    job: String,
    share: u32,
}

impl Drop for JobShare {
    fn drop(&mut self) {
        let mut jobs = self.budget.jobs();
        if let Some(held) = jobs.get_mut(&self.job) {
            *held = held.saturating_sub(self.share);
            if *held == 0 {
                jobs.remove(&self.job);
            }
        }
        drop(jobs);
        self.budget.per_job_freed.notify_waiters();
    }
}

/// The job a request's path names (`/api/v1/jobs/{job}/…`): every large body is one job's.
fn job_of(path: &str) -> Option<&str> {
    let mut parts = path.split('/');
    parts.by_ref().find(|p| *p == "jobs")?;
    parts.next().filter(|j| !j.is_empty())
}

/// The body, ended with an error when no byte arrives for `stall`, or when all of its `len`
/// bytes have not arrived by `stall` plus `len` at [`MIN_BODY_RATE`].
/// `timed_out` is set when it ends so.
fn ending_when_stalled(body: Body, stall: Duration, len: u64, timed_out: Arc<AtomicBool>) -> Body {
    let deadline = tokio::time::Instant::now() + stall + Duration::from_secs(len / MIN_BODY_RATE);
    let stream = futures_util::stream::unfold(Some(body.into_data_stream()), move |state| {
        let timed_out = timed_out.clone();
        async move {
            let mut data = state?;
            let wait = stall.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
            match tokio::time::timeout(wait, data.next()).await {
                Ok(Some(item)) => Some((item, Some(data))),
                Ok(None) => None,
                Err(_) => {
                    timed_out.store(true, Ordering::Relaxed);
                    let e = std::io::Error::new(std::io::ErrorKind::TimedOut, "the request body stalled");
                    Some((Err(axum::Error::new(e)), None))
                }
            }
        }
    });
    Body::from_stream(stream)
}

/// The middleware: holds the body's share (by its `Content-Length`, else the route's limit)
/// while the request is handled, within its job's part of the budget.
pub async fn hold(State((budget, limit)): State<(Arc<BodyBudget>, usize)>, req: Request, next: Next) -> Response {
    let declared =
        req.headers().get(axum::http::header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    // An HTTP/1 upload says its length (agents always do); HTTP/2 may leave it out, and is then
    // counted at the route's limit.
    if declared.is_none() && req.version() < axum::http::Version::HTTP_2 {
        return ApiErr::new(Code::LengthRequired, "an upload needs a Content-Length").into_response();
    }
    let len = declared.unwrap_or(limit as u64).min(limit as u64);
    let share = (len.div_ceil(MIB) as u32).clamp(1, budget.total_mib);
    // The job's part first, so a job waiting on its own uploads holds nothing of the rest.
    let _job_share = match job_of(req.uri().path()) {
        Some(job) => Some(budget.take_job_share(job, share).await),
        None => None,
    };
    let _permit = budget.mib.acquire_many(share).await.expect("the budget is never closed");
    let (parts, body) = req.into_parts();
    let timed_out = Arc::new(AtomicBool::new(false));
    let body = ending_when_stalled(body, budget.stall, len, timed_out.clone());
    let response = next.run(Request::from_parts(parts, body)).await;
    // The handler saw a broken body (a 400 of its own); the agent must hear "send it again".
    if timed_out.load(Ordering::Relaxed) {
        return ApiErr::new(Code::BodyTimeout, "the upload sent nothing for too long").into_response();
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_job_is_read_from_the_path() {
        assert_eq!(job_of("/api/v1/jobs/abc/disks/0/chunks/3"), Some("abc"));
        assert_eq!(job_of("/api/v1/jobs/abc/disks/0/complete"), Some("abc"));
        assert_eq!(job_of("/api/v1/jobs//x"), None);
        assert_eq!(job_of("/api/v1/health"), None);
    }

    #[tokio::test]
    async fn a_job_holds_at_most_a_quarter_and_gets_it_back() {
        let b = BodyBudget::new(64);
        let first = b.take_job_share("a", 16).await;
        // A second share of job a waits; job b is not held up by it.
        let waiting = tokio::time::timeout(Duration::from_millis(100), b.take_job_share("a", 1)).await;
        assert!(waiting.is_err(), "job a took more than its quarter");
        let other = tokio::time::timeout(Duration::from_millis(100), b.take_job_share("b", 16)).await;
        assert!(other.is_ok(), "job b waited for job a");
        drop(first);
        let again = tokio::time::timeout(Duration::from_millis(100), b.take_job_share("a", 16)).await;
        assert!(again.is_ok(), "job a's share was not given back");
        drop(again);
        drop(other);
        assert!(b.jobs().is_empty(), "shares left behind: {:?}", b.jobs());
    }
}
