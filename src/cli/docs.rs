//! `ferry completions SHELL` and `ferry manpages --out DIR`: shell completions and man pages
//! made from the clap definitions, so they never disagree with the commands.

use std::path::Path;

use anyhow::{Context, Result};
use clap::CommandFactory;

use crate::cmdline::Cli;

pub fn completions(shell: clap_complete::Shell) -> Result<i32> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "ferry", &mut std::io::stdout());
    Ok(0)
}

/// `ferry.1`, and `ferry-VERB.1` (`ferry-job-create.1`, …) for every visible command.
pub fn manpages(out: &Path) -> Result<i32> {
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cmd = Cli::command();
    cmd.build();
    let written = write_pages(&cmd, "ferry", out)?;
    eprintln!("wrote {written} man pages into {}", out.display());
    Ok(0)
}

fn write_pages(cmd: &clap::Command, name: &str, out: &Path) -> Result<usize> {
    let page = cmd.clone().name(name.to_string());
    let mut text = vec![];
    clap_mangen::Man::new(page).render(&mut text)?;
    let file = out.join(format!("{name}.1"));
    std::fs::write(&file, text).with_context(|| format!("writing {}", file.display()))?;
    let mut n = 1;
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set() && s.get_name() != "help") {
        n += write_pages(sub, &format!("{name}-{}", sub.get_name()), out)?;
    }
    Ok(n)
}
