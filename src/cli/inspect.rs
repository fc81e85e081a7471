//! `ferry inspect`: disks, sizes, sector sizes and partition tables.

use anyhow::Result;
use serde::Serialize;

use crate::cmdline::InspectArgs;
use crate::disk::{self, DiskReport};

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
        print!("{}", disk::render(&disks));
    }
    Ok(if failed { crate::cli::EXIT_FAILED } else { 0 })
}
