//! `ferry job enroll create|list|revoke`: enrollments for migration waves.

use anyhow::Result;

use super::admin::{admin_client, receiver_for_sources};
use crate::cmdline::EnrollCommand;
use crate::wire::routes::call;
use crate::wire::{CreateEnrollment, TargetKind};

pub async fn run(cmd: EnrollCommand) -> Result<i32> {
    match cmd {
        EnrollCommand::Create { admin, name, job, max_jobs } => {
            let c = admin_client(&admin)?;
            let req = CreateEnrollment { name, target: job.target_kind(), options: job.options(), max_jobs };
            let e = c.call::<call::CreateEnrollment>(&[], &req).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
                return Ok(0);
            }
            let token = e.token.as_deref().unwrap_or("?");
            println!(
                "enrollment {} ({}) created: each source that boots with its token gets a job of its own",
                e.id, e.name
            );
            println!("id:    {}", e.id);
            println!("token: {token}");
            if let Some((url, pin)) = receiver_for_sources(&admin) {
                let security = match pin {
                    Some(p) => format!("ferry.pin={p}"),
                    None => "ferry.plain_http=1".into(),
                };
                println!("boot sources with: ferry.server={url} {security} ferry.enroll={token}");
            }
            println!("PXE: chain the receiver's /boot/menu.ipxe?enroll={token}");
        }
        EnrollCommand::List { admin } => {
            let c = admin_client(&admin)?;
            let list = c.call::<call::ListEnrollments>(&[], &()).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else if list.is_empty() {
                println!("No enrollments.");
            } else {
                println!("{:<14} {:<20} {:<9} {:<8} {:>5}  CREATED", "ID", "NAME", "TARGET", "STATE", "JOBS");
                for e in &list {
                    println!(
                        "{:<14} {:<20} {:<9} {:<8} {:>5}  {}",
                        e.id,
                        crate::util::printable(&e.name),
                        match e.target {
                            TargetKind::Image => "image",
                            TargetKind::Instance => "instance",
                        },
                        if e.revoked_at.is_some() { "revoked" } else { "active" },
                        match e.max_jobs {
                            Some(max) => format!("{}/{max}", e.jobs.len()),
                            None => e.jobs.len().to_string(),
                        },
                        crate::util::utc_time(e.created_at)
                    );
                }
            }
        }
        EnrollCommand::Revoke { admin, id } => {
            let c = admin_client(&admin)?;
            let e = c.call::<call::RevokeEnrollment>(&[&id], &()).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&e)?);
            } else {
                println!(
                    "enrollment {} ({}) revoked: it creates no more jobs; its {} job(s) go on",
                    e.id,
                    e.name,
                    e.jobs.len()
                );
            }
        }
    }
    Ok(0)
}
