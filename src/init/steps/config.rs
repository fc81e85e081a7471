//! Step 3, configuration: the kernel command line merged with `ferry.toml` from the boot stick
//! (the command line wins), then every setting checked before the network comes up.

use crate::init::cmdline::{LiveConfig, Role};
use crate::init::verdict::Failed;

/// Merges the stick's `ferry.toml` (when there is a stick) and checks the result.
pub fn settle(cfg: &mut LiveConfig, cmdline: &str, toml: Option<String>) -> Result<(), Failed> {
    if let Some(text) = toml {
        if let Err(e) = cfg.merge_toml(&text, cmdline) {
            cfg.errors.push(e);
        }
    }
    for k in &cfg.unknown {
        crate::say!("warning: unknown kernel command line key {k} (ignored)");
    }
    if !cfg.errors.is_empty() {
        return Err(Failed {
            lines: cfg.errors.clone(),
            advice: vec!["Fix the boot entry's kernel command line (or ferry.toml on the stick) and boot again.".into()],
        });
    }
    let missing = cfg.missing_keys();
    if !missing.is_empty() {
        return Err(Failed::new(
            format!("the configuration lacks {}", missing.join(", ")),
            "Add them to the kernel command line (the receiver prints a ready line) or to ferry.toml on the stick.",
        ));
    }
    crate::say!(
        "job {} ({}), receiver {}",
        cfg.job.as_deref().unwrap_or(if cfg.enroll.is_some() { "to be given by the enrollment" } else { "?" }),
        match cfg.role {
            Role::Source => "source: this machine's disks are copied, never written",
            Role::Target => "target: this machine receives the job's disks",
        },
        cfg.server.as_deref().unwrap_or("?")
    );
    Ok(())
}
