//! The command line: definitions only. The verbs live in [`crate::cli`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// ferry moves whole servers: every disk, verified chunk by chunk.
#[derive(Debug, Parser)]
#[command(name = "ferry", version, about, propagate_version = true)]
pub struct Cli {
    /// More log output (-v info, -vv debug); FERRY_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show disks, sizes, sector sizes and partition tables.
    Inspect(InspectArgs),
    /// Compute a disk's chunk manifest and whole-disk BLAKE3.
    Hash(HashArgs),
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Disks or image files; none means every disk of this machine.
    pub paths: Vec<PathBuf>,
    /// Sector size to read image files with (512 or 4096); detected when omitted.
    #[arg(long)]
    pub sector_size: Option<u32>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// A disk or image file.
    pub path: PathBuf,
    /// Chunk size: a power of two from 64K to 64M (suffixes K, M).
    #[arg(long, default_value = "4M", value_parser = parse_size)]
    pub chunk_size: u64,
    /// Hashing threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sector size to read an image file's partition table with (512 or 4096).
    #[arg(long)]
    pub sector_size: Option<u32>,
    /// Set the kernel read-only flag (BLKROSET) on the device and its partitions first.
    #[arg(long)]
    pub lock: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Parses `4194304`, `4M`, `64K`, `1G` (binary units).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        None => (s, 1u64),
        Some((i, _)) => {
            let unit = s[i..].trim_end_matches(['B', 'b', 'i']);
            let mult = match unit.to_ascii_uppercase().as_str() {
                "K" => 1 << 10,
                "M" => 1 << 20,
                "G" => 1 << 30,
                "T" => 1 << 40,
                _ => return Err(format!("unknown size unit in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mult)
        }
    };
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a size"))?;
    n.checked_mul(mult).ok_or_else(|| format!("{s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        let table: &[(&str, Result<u64, ()>)] = &[
            ("4194304", Ok(4 << 20)),
            ("4M", Ok(4 << 20)),
            ("4MiB", Ok(4 << 20)),
            ("64k", Ok(64 << 10)),
            ("1G", Ok(1 << 30)),
            ("", Err(())),
            ("M", Err(())),
            ("4X", Err(())),
            ("99999999999999T", Err(())),
        ];
        for (input, want) in table {
            assert_eq!(parse_size(input).map_err(|_| ()), *want, "{input:?}");
        }
    }

    #[test]
    fn clap_definitions_are_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
