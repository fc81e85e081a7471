//! `ferry inspect`: disks, sizes, sector sizes and partition tables.

use anyhow::Result;
use serde::Serialize;

use crate::cmdline::InspectArgs;
use crate::disk::{self, DiskReport};
use crate::util::human_bytes;

#[derive(Serialize)]
struct InspectOutput {
    disks: Vec<DiskReport>,
}

pub fn run(args: InspectArgs) -> Result<i32> {
    let paths = if args.paths.is_empty() { disk::machine_disks()? } else { args.paths.clone() };
    // Every disk that can be read is shown; each one that cannot is named on stderr and makes
    // the exit code 1, so one bad disk never hides the others.
    let mut disks = vec![];
    let mut failed = false;
    for p in &paths {
        match disk::inspect_path(p, args.sector_size) {
            Ok(d) => disks.push(d),
            Err(e) => {
                eprintln!("ferry: error: {e:#}");
                failed = true;
            }
        }
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&InspectOutput { disks })?);
    } else if disks.is_empty() {
        println!("No disks found.");
    } else {
        print!("{}", render(&disks));
    }
    Ok(if failed { crate::cli::EXIT_FAILED } else { 0 })
}

/// The human table.
pub fn render(disks: &[DiskReport]) -> String {
    let mut out = String::new();
    for d in disks {
        let id = &d.identity;
        let t = &d.partition_table;
        let hw = [id.vendor.as_deref(), id.model.as_deref(), id.serial.as_deref().map(|s| s.trim())]
            .into_iter()
            .flatten()
            .collect::<Vec<_>>()
            .join(" ");
        out += &format!(
            "{}  {}  sectors {}/{}  {}{}{}\n",
            id.path,
            human_bytes(id.size),
            id.logical_sector_size,
            id.physical_sector_size,
            format!("{:?}", t.kind).to_lowercase(),
            if hw.is_empty() { String::new() } else { format!("  {hw}") },
            if id.read_only { "  (read-only)" } else { "" },
        );
        if !t.partitions.is_empty() {
            out += &format!("  {:>3}  {:>12}  {:>10}  {:<24}  {}\n", "#", "START", "SIZE", "TYPE", "NAME");
            for p in &t.partitions {
                let ty = p.type_name.clone().unwrap_or_else(|| p.type_id.clone());
                let mut name = p.name.clone().unwrap_or_default();
                if p.bootable == Some(true) {
                    name += " (boot)";
                }
                if p.logical == Some(true) {
                    name += " (logical)";
                }
                out += &format!(
                    "  {:>3}  {:>12}  {:>10}  {:<24}  {}\n",
                    p.number,
                    p.start,
                    human_bytes(p.size),
                    ty,
                    name.trim()
                );
            }
        }
        for problem in &t.problems {
            out += &format!("  ! {problem}\n");
        }
        out += "\n";
    }
    out
}
