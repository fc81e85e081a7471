//! What the live image tells the receiver besides the migration itself: its screen (streamed
//! while it runs, and once more with the verdict) and a failure before any disk was read.

use std::fs;
use std::time::Duration;

use super::cmdline::{LiveConfig, Role};
use crate::agent::{Client, Endpoint};
use crate::wire::routes::{call, Call};
use crate::wire::{valid_job_id, Code, Failure};

/// `?boot=ID&seq=N` for this boot's console transcript: one entry per boot on the receiver (the
/// kernel's boot id), replaced by later ones (`seq`: milliseconds since boot; the verdict's is
/// the highest), so the operator follows the screen while it runs and keeps it when the machine
/// dies mid-way. None without a boot id (then only the verdict's transcript is sent).
fn log_query(last: bool) -> Option<String> {
    let boot = fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let boot = boot.trim();
    if !valid_job_id(boot) {
        return None;
    }
    let seq = if last {
        i64::MAX as u64
    } else {
        let uptime = fs::read_to_string("/proc/uptime").ok()?;
        let secs: f64 = uptime.split_whitespace().next()?.parse().ok()?;
        (secs * 1000.0) as u64
    };
    Some(format!("?boot={boot}&seq={seq}"))
}

async fn post_transcript(client: &Client, job: &str, query: &str, text: String) -> anyhow::Result<()> {
    client.call_raw(&call::PostLog::ROUTE, &[job], query, |r| r.body(text.clone())).await.map(|_| ())
}

/// Sends the console transcript, verdict included, to the receiver: the operator sees what the
/// technician saw. Best effort and brief: the verdict is already on the screen.
pub fn upload_transcript(cfg: &LiveConfig) {
    let (Some(server), Some(job), Some(token)) = (&cfg.server, &cfg.job, &cfg.token) else { return };
    let Ok(rt) = tokio::runtime::Builder::new_current_thread().enable_all().build() else { return };
    let ep = Endpoint {
        server: server.clone(),
        token: token.clone(),
        pin: cfg.pin.clone(),
        plain_http: cfg.plain_http,
        retry_for: Duration::from_secs(5),
    };
    let Ok(client) = Client::new(&ep) else { return };
    let text = crate::init::console::transcript();
    let query = log_query(true).unwrap_or_default();
    let call = post_transcript(&client, job, &query, text);
    if let Err(e) = rt.block_on(async { tokio::time::timeout(Duration::from_secs(15), call).await }) {
        log::warn!("sending the boot log: {e}");
    }
}

/// Sends the transcript every 5 s (the progress lines' pace) while it changes; ends with the
/// worker's runtime.
pub fn stream_transcript(client: &Client, job: &str) {
    if log_query(false).is_none() {
        return;
    }
    let (client, job) = (client.clone(), job.to_string());
    tokio::spawn(async move {
        let mut sent = String::new();
        loop {
            tokio::time::sleep(Duration::from_secs(5)).await;
            let text = crate::init::console::transcript();
            let Some(query) = log_query(false) else { return };
            if text == sent {
                continue;
            }
            let call = post_transcript(&client, &job, &query, text.clone());
            if let Ok(Ok(())) = tokio::time::timeout(Duration::from_secs(10), call).await {
                sent = text;
            }
        }
    });
}

/// Records on the job (or its delivery) why this machine stopped before its work began.
pub async fn report_failure(client: &Client, job: &str, role: Role, code: Code, reason: &str) {
    let f = Failure { code: code.as_str().into(), reason: reason.into() };
    let report = async {
        match role {
            Role::Source => client.call::<call::Fail>(&[job], &f).await,
            Role::Target => client.call::<call::TargetFail>(&[job], &f).await,
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(20), report).await;
}
