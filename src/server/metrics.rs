//! `GET /metrics`: the receiver's counters in the Prometheus text format (version 0.0.4).
//!
//! Counters are atomics or small maps behind a mutex, updated on the request path; the jobs by
//! state are counted from the database when scraped. Request labels use the route template
//! (`/api/v1/jobs/{job}`), never the ids in a URL, so the number of series stays bounded.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::AppState;
use crate::wire::JobState;

/// Upper bounds (seconds) of the request latency histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0, 30.0];

#[derive(Default)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        for (i, le) in BUCKETS.iter().enumerate() {
            if secs <= *le {
                self.counts[i] += 1;
            }
        }
        self.count += 1;
        self.sum += secs;
    }
}

#[derive(Default)]
pub struct Metrics {
    /// Chunk bytes accepted from sources (after decompression), new or already held.
    pub chunk_bytes_received: AtomicU64,
    /// Chunks accepted from sources.
    pub chunks_received: AtomicU64,
    /// Of those, chunks that were new to the store.
    pub chunks_stored: AtomicU64,
    /// Chunk bytes served to targets.
    pub chunk_bytes_served: AtomicU64,
    rejects: Mutex<BTreeMap<&'static str, u64>>,
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<String, Histogram>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Metrics {
    /// A chunk upload refused, by its error code (`hash_mismatch`, `too_large`, …).
    pub fn reject(&self, code: crate::wire::Code) {
        *lock(&self.rejects).entry(code.as_str()).or_default() += 1;
    }

    /// A chunk verified (and `new` when the store did not hold it yet).
    pub fn chunk_received(&self, bytes: u64, new: bool) {
        self.chunk_bytes_received.fetch_add(bytes, Ordering::Relaxed);
        self.chunks_received.fetch_add(1, Ordering::Relaxed);
        self.chunks_stored.fetch_add(new as u64, Ordering::Relaxed);
    }

    /// A chunk's bytes sent to a target.
    pub fn chunk_served(&self, bytes: u64) {
        self.chunk_bytes_served.fetch_add(bytes, Ordering::Relaxed);
    }

    fn request(&self, route: &str, method: &str, status: u16, secs: f64) {
        *lock(&self.requests).entry((route.to_string(), method.to_string(), status)).or_default() += 1;
        lock(&self.latency).entry(route.to_string()).or_default().observe(secs);
    }

    /// The text exposition, with `jobs` counted by state.
    pub fn render(&self, jobs: &BTreeMap<String, u64>) -> String {
        let mut out = String::new();
        let mut counter = |name: &str, help: &str, v: u64| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        counter(
            "ferry_chunk_bytes_received_total",
            "Chunk bytes accepted from sources, after decompression.",
            self.chunk_bytes_received.load(Ordering::Relaxed),
        );
        counter(
            "ferry_chunks_received_total",
            "Chunks accepted from sources.",
            self.chunks_received.load(Ordering::Relaxed),
        );
        counter("ferry_chunks_stored_total", "Chunks new to the store.", self.chunks_stored.load(Ordering::Relaxed));
        counter(
            "ferry_chunk_bytes_served_total",
            "Chunk bytes served to target machines.",
            self.chunk_bytes_served.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "# HELP ferry_jobs Jobs by state.\n# TYPE ferry_jobs gauge");
        for s in [JobState::Waiting, JobState::Running, JobState::Finished, JobState::InError, JobState::Cancelled] {
            let _ =
                writeln!(out, "ferry_jobs{{state=\"{}\"}} {}", s.as_str(), jobs.get(s.as_str()).copied().unwrap_or(0));
        }
        let _ = writeln!(
            out,
            "# HELP ferry_chunk_rejects_total Chunk uploads refused, by reason.\n# TYPE ferry_chunk_rejects_total counter"
        );
        for (code, n) in lock(&self.rejects).iter() {
            let _ = writeln!(out, "ferry_chunk_rejects_total{{reason=\"{code}\"}} {n}");
        }
        let _ = writeln!(
            out,
            "# HELP ferry_http_requests_total HTTP requests by route, method and status.\n# TYPE ferry_http_requests_total counter"
        );
        for ((route, method, status), n) in lock(&self.requests).iter() {
            let _ = writeln!(
                out,
                "ferry_http_requests_total{{route=\"{route}\",method=\"{method}\",status=\"{status}\"}} {n}"
            );
        }
        let name = "ferry_http_request_duration_seconds";
        let _ = writeln!(out, "# HELP {name} HTTP request latency by route.\n# TYPE {name} histogram");
        for (route, h) in lock(&self.latency).iter() {
            for (le, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"{le}\"}} {c}");
            }
            let _ = writeln!(out, "{name}_bucket{{route=\"{route}\",le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "{name}_sum{{route=\"{route}\"}} {}", h.sum);
            let _ = writeln!(out, "{name}_count{{route=\"{route}\"}} {}", h.count);
        }
        out
    }
}

/// Middleware: counts every request and its latency under its route template.
pub async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let route = req.extensions().get::<MatchedPath>().map(|m| m.as_str().to_string()).unwrap_or_else(|| "other".into());
    let method = req.method().to_string();
    let started = Instant::now();
    let response = next.run(req).await;
    st.metrics.request(&route, &method, response.status().as_u16(), started.elapsed().as_secs_f64());
    response
}

/// Which receiver answers (its URL) and what keeps its chunks (`local`, `s3`) and jobs
/// (`sqlite`, `postgres`): the counters above are
/// this receiver's own, so a wave of several receivers is scraped receiver by receiver and
/// summed. The wave gauges come from the shared job database: every receiver gives the same.
fn render_shared(receiver: &str, chunks: &str, jobs: &str, waves: &[crate::wire::WaveSummary]) -> String {
    let label = |v: &str| v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n");
    let mut out = String::new();
    let _ = writeln!(out, "# HELP ferry_receiver_info This receiver, and where it keeps chunks and jobs.");
    let _ = writeln!(out, "# TYPE ferry_receiver_info gauge");
    let _ = writeln!(
        out,
        "ferry_receiver_info{{receiver=\"{}\",chunks=\"{}\",jobs=\"{}\"}} 1",
        label(receiver),
        label(chunks),
        label(jobs)
    );
    let _ = writeln!(
        out,
        "# HELP ferry_wave_machines Machines of each wave by job state.\n# TYPE ferry_wave_machines gauge"
    );
    for w in waves {
        for (state, n) in &w.by_state {
            let _ = writeln!(out, "ferry_wave_machines{{wave=\"{}\",state=\"{state}\"}} {n}", label(&w.wave));
        }
    }
    let _ = writeln!(out, "# HELP ferry_wave_bytes_to_go Bytes of registered disks not yet read, per wave.\n# TYPE ferry_wave_bytes_to_go gauge");
    for w in waves {
        let _ = writeln!(out, "ferry_wave_bytes_to_go{{wave=\"{}\"}} {}", label(&w.wave), w.bytes_to_go);
    }
    let _ = writeln!(out, "# HELP ferry_wave_rate_bytes The Running sources' rates added up, per wave.\n# TYPE ferry_wave_rate_bytes gauge");
    for w in waves {
        let _ = writeln!(out, "ferry_wave_rate_bytes{{wave=\"{}\"}} {}", label(&w.wave), w.rate);
    }
    out
}

/// `GET /metrics`.
pub async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    let jobs = st.db.jobs_by_state().unwrap_or_default();
    let waves = st.db.jobs().map(|j| crate::wire::summarize(&j)).unwrap_or_default();
    let receiver = st.info.get().map(|i| i.url.clone()).unwrap_or_default();
    let text = st.metrics.render(&jobs) + &render_shared(&receiver, st.store.kind(), st.db.kind(), &waves);
    ([(axum::http::header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], text).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let m = Metrics::default();
        m.request("/a", "GET", 200, 0.003);
        m.request("/a", "GET", 200, 0.2);
        m.request("/a", "GET", 404, 60.0);
        let text = m.render(&BTreeMap::new());
        for line in [
            "ferry_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.001\"} 0",
            "ferry_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.005\"} 1",
            "ferry_http_request_duration_seconds_bucket{route=\"/a\",le=\"0.25\"} 2",
            "ferry_http_request_duration_seconds_bucket{route=\"/a\",le=\"30\"} 2",
            "ferry_http_request_duration_seconds_bucket{route=\"/a\",le=\"+Inf\"} 3",
            "ferry_http_request_duration_seconds_count{route=\"/a\"} 3",
            "ferry_http_requests_total{route=\"/a\",method=\"GET\",status=\"404\"} 1",
            "ferry_jobs{state=\"Waiting\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
