//! `ferry job create|list|show|restart|cancel`: jobs on a receiver, with the admin token.

use std::time::Duration;

use anyhow::{bail, Context, Result};
use reqwest::Method;

use crate::agent::{Client, Endpoint};
use crate::cmdline::{AdminArgs, JobCommand, TargetSpecArgs};
use crate::server::ReceiverInfo;
use crate::util::{human_bytes, human_duration};
use crate::wire::{CreateJob, Job, TargetKind, TargetSpec};

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
    let plain = a.plain_http || (a.store.is_some() && server.starts_with("http://"));
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

pub fn run(cmd: JobCommand) -> Result<i32> {
    super::runtime()?.block_on(run_async(cmd))
}

async fn run_async(cmd: JobCommand) -> Result<i32> {
    match cmd {
        JobCommand::Create { admin, name, job, client_token, target_spec } => {
            let c = admin_client(&admin)?;
            let req = CreateJob {
                name,
                target: job.target_kind(),
                options: job.options(),
                client_token,
                target_spec: spec_of(&target_spec),
            };
            let job: Job = c.call(Method::POST, "/jobs", |r| r.json(&req)).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                println!("job {} ({}) created: {}", job.id, job.name, job.state.as_str());
                println!("id:    {}", job.id);
                println!("token: {}", job.token.as_deref().unwrap_or("?"));
                if let Some(t) = &job.target_token {
                    println!("target token: {t}");
                }
            }
        }
        JobCommand::List { admin } => {
            let c = admin_client(&admin)?;
            let jobs: Vec<Job> = c.call(Method::GET, "/jobs", |r| r).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else if jobs.is_empty() {
                println!("No jobs.");
            } else {
                println!("{:<14} {:<10} {:<24} {:>6} {:>22}  TARGET", "ID", "STATE", "NAME", "DISKS", "PROGRESS");
                for j in &jobs {
                    let (done, total) = j.disks.iter().fold((0, 0), |(d, t), x| (d + x.bytes_done, t + x.size));
                    let target = match (&j.target, &j.delivery) {
                        (TargetKind::Image, _) => "images".to_string(),
                        (TargetKind::Instance, None) => "instance (not registered)".to_string(),
                        (TargetKind::Instance, Some(d)) => format!("instance {}", d.state.as_str()),
                    };
                    println!(
                        "{:<14} {:<10} {:<24} {:>6} {:>22}  {}",
                        j.id,
                        j.state.as_str(),
                        j.name,
                        j.disks.len(),
                        format!("{} / {}", human_bytes(done), human_bytes(total)),
                        target
                    );
                }
            }
        }
        JobCommand::Show { admin, id } => {
            let c = admin_client(&admin)?;
            let job: Job = c.call(Method::GET, &format!("/jobs/{id}"), |r| r).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
        }
        JobCommand::Restart { admin, id } => {
            let c = admin_client(&admin)?;
            let job: Job = c.call(Method::POST, &format!("/jobs/{id}/restart"), |r| r).await?;
            report(&admin, &job)?;
        }
        JobCommand::Log { admin, id } => {
            let c = admin_client(&admin)?;
            let logs: Vec<crate::wire::LogEntry> = c.call(Method::GET, &format!("/jobs/{id}/log"), |r| r).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&logs)?);
            } else if logs.is_empty() {
                println!("No boot log yet: the live image sends its console every few seconds once its network is up.");
            }
            for l in logs.iter().filter(|_| !admin.json) {
                println!("==== {} live image, {}", l.role, crate::util::utc_time(l.at));
                println!("{}", l.text.trim_end());
            }
        }
        JobCommand::Target { admin, id, target_spec } => {
            let c = admin_client(&admin)?;
            let spec = spec_of(&target_spec).unwrap_or_default();
            let job: Job = c.call(Method::POST, &format!("/jobs/{id}/target"), |r| r.json(&spec)).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&job)?);
            } else {
                print_job(&job);
            }
        }
        JobCommand::Enroll(cmd) => return super::enroll::run(cmd).await,
        JobCommand::Cancel { admin, id } => {
            let c = admin_client(&admin)?;
            let job: Job = c.call(Method::POST, &format!("/jobs/{id}/cancel"), |r| r).await?;
            report(&admin, &job)?;
        }
    }
    Ok(0)
}

fn spec_of(a: &TargetSpecArgs) -> Option<TargetSpec> {
    let spec = TargetSpec { machine: a.machine.clone(), disks: a.disks.clone(), allow_wipe: a.allow_wipe };
    (spec != TargetSpec::default()).then_some(spec)
}

fn report(admin: &AdminArgs, job: &Job) -> Result<()> {
    if admin.json {
        println!("{}", serde_json::to_string_pretty(job)?);
    } else {
        println!("job {} is now {}", job.id, job.state.as_str());
    }
    Ok(())
}

fn print_job(j: &Job) {
    println!("job {} ({}), target {:?}: {}", j.id, j.name, j.target, j.state.as_str());
    if let (Some(code), Some(reason)) = (&j.error_code, &j.error_reason) {
        println!("error: {reason} [{code}]");
    }
    if let Some(m) = &j.machine {
        let what = [m.vendor.as_deref(), m.product.as_deref(), m.serial.as_deref(), m.product_uuid.as_deref()]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        println!("machine: {what} macs {}", m.macs.join(","));
    }
    if let Some(e) = &j.enrollment {
        println!("enrolled itself with enrollment {e}");
    }
    for d in &j.disks {
        let eta = d.eta_seconds.map(|s| format!(", ETA {}", human_duration(s))).unwrap_or_default();
        println!(
            "disk {}: {} {} - {} of {} hashed, {} received{}{}",
            d.index,
            d.identity.path,
            format!("{:?}", d.partition_table.kind).to_lowercase(),
            human_bytes(d.bytes_done),
            human_bytes(d.size),
            human_bytes(d.bytes_received),
            eta,
            match &d.blake3 {
                Some(h) if d.verified => format!(", verified blake3 {h}"),
                _ => String::new(),
            }
        );
    }
    print_history(&j.history);
    if let Some(spec) = &j.target_spec {
        let names: Vec<&str> = spec.machine.iter().chain(&spec.disks).map(String::as_str).collect();
        println!(
            "target: {}; wipe {}",
            if names.is_empty() { "not named".to_string() } else { names.join(", ") },
            if spec.allow_wipe { "allowed" } else { "NOT allowed" }
        );
    }
    if let Some(d) = &j.delivery {
        println!("delivery: {}", d.state.as_str());
        if let (Some(code), Some(reason)) = (&d.error_code, &d.error_reason) {
            println!("error: {reason} [{code}]");
        }
        if let Some(m) = &d.machine {
            println!(
                "target machine: {} serial {} uuid {}",
                m.product.as_deref().unwrap_or("?"),
                m.serial.as_deref().unwrap_or("none"),
                m.product_uuid.as_deref().unwrap_or("none")
            );
        }
        for x in &d.disks {
            println!(
                "source disk {} -> {} ({}): {} written{}",
                x.source_index,
                x.target.path,
                human_bytes(x.target.size),
                human_bytes(x.bytes_written),
                match &x.blake3 {
                    Some(h) if x.verified => format!(", read back blake3 {h}"),
                    _ => String::new(),
                }
            );
            for c in &x.changed {
                println!("  changed after verifying: {} bytes at {} ({})", c.length, c.offset, c.what);
            }
        }
        print_history(&d.history);
    }
}

fn print_history(history: &[crate::wire::JobEvent]) {
    for e in history {
        println!(
            "  {} {}{}",
            crate::util::utc_time(e.at),
            e.state.as_str(),
            e.reason.as_ref().map(|r| format!(": {r}")).unwrap_or_default()
        );
    }
}
