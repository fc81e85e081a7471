//! How an agent that sends disks is told where and what: `ferry send` (and `pull`'s receiver).

use std::path::PathBuf;

use clap::Args;

use super::{parse_chunk_size, parse_size};

/// How an agent (`send`, `pull`) reaches the receiver.
#[derive(Debug, Args)]
pub struct AgentArgs {
    /// Receiver URL, e.g. https://10.0.0.5:8443.
    #[arg(long)]
    pub server: String,
    /// SHA-256 pin of the receiver's certificate (required for https).
    #[arg(long)]
    pub pin: Option<String>,
    /// Allow an http:// receiver.
    #[arg(long)]
    pub plain_http: bool,
    /// Keep retrying an unreachable receiver this many seconds before giving up.
    #[arg(long, default_value_t = 600)]
    pub retry_for: u64,
}

#[derive(Debug, Args)]
pub struct SendArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// Job id.
    #[arg(long, required_unless_present = "enroll", requires = "token")]
    pub job: Option<String>,
    /// The job's agent token.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub token: Option<String>,
    /// Instead of a job: an enrollment token (`ferry job enroll create`); the receiver gives
    /// this machine its own job, or its unfinished one again. Run as root: the receiver tells
    /// machines apart by their DMI UUID or serial, which only root can read.
    #[arg(long, conflicts_with = "job", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub enroll: Option<String>,
    /// Disks or image files, in order (disk 0, 1, ...).
    #[arg(required = true)]
    pub disks: Vec<PathBuf>,
    /// Hashing threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Chunk uploads in flight.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Compress chunks with zstd (default: the job's setting).
    #[arg(long)]
    pub compress: bool,
    /// Upload rate limit in bytes per second (default: the job's setting).
    #[arg(long, value_parser = parse_size)]
    pub bandwidth_limit: Option<u64>,
    /// Chunk size (default: the job's setting, else 4M, larger for disks past 4 TiB).
    #[arg(long, value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
    /// Sectors that cannot be read: fail, or record them and send zeros (default: the job's).
    #[arg(long, value_enum)]
    pub bad_sectors: Option<crate::disk::BadSectors>,
    /// Used-blocks mode: read only the blocks the filesystems use; the rest are zeros in the
    /// copy (default: the job's setting).
    #[arg(long)]
    pub used_only: bool,
    /// Chunk ids per page of a large disk's manifest (a power of two, 16 to 65536); tests use
    /// small pages to send paged manifests of small disks.
    #[arg(long, default_value_t = crate::image::pages::DEFAULT_CHUNKS_PER_PAGE, hide = true)]
    pub chunks_per_page: u64,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}
