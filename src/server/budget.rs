//! A bound on the request bodies held in memory at once. Chunk uploads (up to 65 MiB) and
//! manifests (up to 256 MiB) are read whole before they are checked; without a bound, N
//! parallel uploads hold N such bodies. A large body waits for its share of the budget before a
//! byte of it is read (its token was accepted first: `auth` runs before this).

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tokio::sync::Semaphore;

const MIB: u64 = 1 << 20;

/// Bodies in flight, in MiB.
pub struct BodyBudget {
    mib: Semaphore,
    total_mib: u32,
}

impl BodyBudget {
    /// `FERRY_BODY_BUDGET_MIB` (for tests and small machines), else 512 MiB: eight of the
    /// largest chunks, or 128 default ones.
    pub fn from_env() -> Arc<Self> {
        let total = std::env::var("FERRY_BODY_BUDGET_MIB").ok().and_then(|v| v.parse::<u32>().ok()).unwrap_or(512);
        Self::new(total)
    }

    pub fn new(total_mib: u32) -> Arc<Self> {
        let total_mib = total_mib.max(1);
        Arc::new(Self { mib: Semaphore::new(total_mib as usize), total_mib })
    }
}

/// The middleware: holds the body's share (by its `Content-Length`, else the route's limit)
/// while the request is handled.
pub async fn hold(State((budget, limit)): State<(Arc<BodyBudget>, usize)>, req: Request, next: Next) -> Response {
    let len = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok())
        .unwrap_or(limit as u64)
        .min(limit as u64);
    let share = (len.div_ceil(MIB) as u32).clamp(1, budget.total_mib);
    let _permit = budget.mib.acquire_many(share).await.expect("the budget is never closed");
    next.run(req).await
}
