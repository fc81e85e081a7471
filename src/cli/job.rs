//! `ferry job create|list|show|receipt|log|restart|token|cancel|target`: jobs on a receiver, with the admin
//! token (`enroll` is `cli::enroll`'s).

use anyhow::Result;

use super::admin::admin_client;
use super::job_view::{print_job, print_list};
use crate::agent::Client;
use crate::cmdline::{AdminArgs, JobCommand, TargetSpecArgs};
use crate::wire::routes::call;
use crate::wire::{CreateJob, Job, LogEntry, NewTokens, TargetSpec, TokenRequest};

pub fn run(cmd: JobCommand) -> Result<i32> {
    super::runtime()?.block_on(run_async(cmd))
}

async fn run_async(cmd: JobCommand) -> Result<i32> {
    match cmd {
        JobCommand::Create { admin, name, job, client_token, target_spec } => {
            let req = CreateJob {
                name,
                target: job.target_kind(),
                options: job.options(),
                client_token,
                target_spec: spec_of(&target_spec),
            };
            let job = admin_client(&admin)?.call::<call::CreateJob>(&[], &req).await?;
            print_created(&admin, &job)?;
        }
        JobCommand::List { admin, wave: Some(wave) } => {
            let waves = admin_client(&admin)?.call::<call::ListWaves>(&[], &()).await?;
            let Some(w) = waves.into_iter().find(|w| w.wave == wave) else {
                eprintln!("error: no job is in wave {wave:?} (ferry job create --wave, or an enrollment of that name)");
                return Ok(1);
            };
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&w)?);
            } else {
                super::wave_view::print_wave(&w);
            }
        }
        JobCommand::Receipt { admin, id } => {
            let r = admin_client(&admin)?.call::<call::Receipt>(&[&id], &()).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                super::wave_view::print_receipt(&r);
            }
        }
        JobCommand::List { admin, wave: None } => {
            let jobs = admin_client(&admin)?.call::<call::ListJobs>(&[], &()).await?;
            if admin.json {
                println!("{}", serde_json::to_string_pretty(&jobs)?);
            } else {
                print_list(&jobs);
            }
        }
        JobCommand::Show { admin, id } => {
            let job = admin_client(&admin)?.call::<call::ShowJob>(&[&id], &()).await?;
            show(&admin, &job)?;
        }
        JobCommand::Restart { admin, id } => {
            report(&admin, &admin_client(&admin)?.call::<call::RestartJob>(&[&id], &()).await?)?;
        }
        JobCommand::Log { admin, id } => print_logs(&admin, &admin_client(&admin)?, &id).await?,
        JobCommand::Target { admin, id, target_spec } => {
            let spec = spec_of(&target_spec).unwrap_or_default();
            let job = admin_client(&admin)?.call::<call::SetTarget>(&[&id], &spec).await?;
            show(&admin, &job)?;
        }
        JobCommand::Enroll(cmd) => return super::enroll::run(cmd).await,
        JobCommand::Token { admin, id, agent, target } => {
            let req = TokenRequest { agent: agent || !target, target };
            let new = admin_client(&admin)?.call::<call::RotateTokens>(&[&id], &req).await?;
            print_tokens(&admin, &id, &new)?;
        }
        JobCommand::Cancel { admin, id } => {
            report(&admin, &admin_client(&admin)?.call::<call::CancelJob>(&[&id], &()).await?)?;
        }
    }
    Ok(0)
}

fn print_created(admin: &AdminArgs, job: &Job) -> Result<()> {
    if admin.json {
        println!("{}", serde_json::to_string_pretty(job)?);
        return Ok(());
    }
    println!("job {} ({}) created: {}", job.id, job.name, job.state.as_str());
    println!("id:    {}", job.id);
    match &job.token {
        Some(t) => println!("token: {t}"),
        // The same --client-token again, for a job already at work: its tokens were shown once.
        None => println!("token: (shown when the job was made; new ones: ferry job token {})", job.id),
    }
    if let Some(t) = &job.target_token {
        println!("target token: {t}");
    }
    Ok(())
}

fn print_tokens(admin: &AdminArgs, id: &str, new: &NewTokens) -> Result<()> {
    if admin.json {
        println!("{}", serde_json::to_string_pretty(new)?);
        return Ok(());
    }
    println!("job {id}: new tokens (the old ones no longer work; these are shown only now)");
    if let Some(t) = &new.token {
        println!("token: {t}");
    }
    if let Some(t) = &new.target_token {
        println!("target token: {t}");
    }
    Ok(())
}

fn show(admin: &AdminArgs, job: &Job) -> Result<()> {
    if admin.json {
        println!("{}", serde_json::to_string_pretty(job)?);
    } else {
        print_job(job);
    }
    Ok(())
}

async fn print_logs(admin: &AdminArgs, c: &Client, id: &str) -> Result<()> {
    let logs: Vec<LogEntry> = c.call::<call::GetLog>(&[id], &()).await?;
    if admin.json {
        println!("{}", serde_json::to_string_pretty(&logs)?);
        return Ok(());
    }
    if logs.is_empty() {
        println!("No boot log yet: the live image sends its console every few seconds once its network is up.");
    }
    for l in &logs {
        println!("==== {} live image, {}", crate::util::printable(&l.role), crate::util::utc_time(l.at));
        // The live image's screen, as a machine sent it: no escape reaches the terminal.
        println!("{}", crate::util::printable(l.text.trim_end()));
    }
    Ok(())
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
