//! Uploads under a bandwidth limit (`bandwidth_limit`): the average rate since the pass began
//! stays under it.

use std::time::{Duration, Instant};

use tokio::sync::Mutex;

/// A simple shared rate limiter: uploads wait until the average rate is under the limit.
pub struct Throttle {
    limit: Option<u64>,
    state: Mutex<(Instant, u64)>,
}

impl Throttle {
    /// A limiter of `limit` bytes per second on average (none when `None` or 0).
    pub fn new(limit: Option<u64>) -> Self {
        Self { limit, state: Mutex::new((Instant::now(), 0)) }
    }

    pub async fn take(&self, bytes: u64) {
        let Some(limit) = self.limit.filter(|l| *l > 0) else { return };
        let wait = {
            let mut s = self.state.lock().await;
            s.1 += bytes;
            let due = Duration::from_secs_f64(s.1 as f64 / limit as f64);
            due.saturating_sub(s.0.elapsed())
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}
