//! Reaching a receiver as its operator: URL, pin and admin token from the flags, the
//! environment, or the store directory of the receiver on this machine.

use std::time::Duration;

use anyhow::{bail, Context, Result};

use crate::agent::{Client, Endpoint};
use crate::cmdline::AdminArgs;
use crate::server::ReceiverInfo;

pub(super) fn admin_client(a: &AdminArgs) -> Result<Client> {
    let info: Option<ReceiverInfo> = match &a.store {
        Some(dir) => {
            let p = dir.join("receiver.json");
            let text = std::fs::read_to_string(&p)
                .with_context(|| format!("reading {} (has ferry serve run?)", p.display()))?;
            Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?)
        }
        None => None,
    };
    let server = a
        .server
        .clone()
        .or_else(|| info.as_ref().map(|i| i.url.clone()))
        .context("give --server URL (or --store DIR on the receiver's machine)")?;
    let pin = a.pin.clone().or_else(|| info.as_ref().and_then(|i| i.pin.clone()));
    let token = match (&a.admin_token, &a.admin_token_file, &a.store) {
        (Some(t), _, _) => t.clone(),
        (None, Some(f), _) => read_token(f)?,
        (None, None, Some(dir)) => read_token(&dir.join("admin.token"))?,
        _ => bail!("give --admin-token-file PATH, FERRY_ADMIN_TOKEN, or --store DIR"),
    };
    // A plain-HTTP receiver found in the store (started with --plain-http itself) needs no more
    // consent; a plain URL given with --server always does, as everywhere else.
    let plain = a.plain_http || (a.server.is_none() && a.store.is_some() && server.starts_with("http://"));
    Client::new(&Endpoint { server, token, pin, plain_http: plain, retry_for: Duration::from_secs(15) })
}

/// The receiver's URL and pin as machines booting the live image should use them.
pub(super) fn receiver_for_sources(a: &AdminArgs) -> Option<(String, Option<String>)> {
    if let Some(dir) = &a.store {
        let text = std::fs::read_to_string(dir.join("receiver.json")).ok()?;
        let info: ReceiverInfo = serde_json::from_str(&text).ok()?;
        return Some((info.url_for_sources().to_string(), info.pin.clone()));
    }
    Some((a.server.clone()?, a.pin.clone()))
}

fn read_token(path: &std::path::Path) -> Result<String> {
    Ok(std::fs::read_to_string(path)
        .with_context(|| format!("reading the admin token from {}", path.display()))?
        .trim()
        .to_string())
}
