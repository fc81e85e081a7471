//! The store's verbs, run on the receiver's machine against its store directory: `export` and
//! `store verify`.

use std::path::PathBuf;

use clap::{Args, Subcommand};

#[derive(Debug, Subcommand)]
pub enum StoreCommand {
    /// Hash every stored chunk again at its place and check every manifest against the store
    /// (read-only; a receiver may run beside it). Exit 1 when anything is wrong.
    Verify(StoreVerifyArgs),
}

#[derive(Debug, Args)]
pub struct StoreVerifyArgs {
    /// The receiver's store directory.
    #[arg(long, env = "FERRY_STORE")]
    pub store: PathBuf,
    #[command(flatten)]
    pub shared: super::SharedStoreArgs,
    /// Only this job's manifests and the chunks they name.
    #[arg(long)]
    pub job: Option<String>,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ExportArgs {
    /// The receiver's store directory.
    #[arg(long)]
    pub store: PathBuf,
    /// The bucket's configuration when chunks are kept in S3 (see `ferry serve --s3-config`).
    #[arg(long, env = "FERRY_S3_CONFIG")]
    pub s3_config: Option<PathBuf>,
    /// Job id.
    #[arg(long)]
    pub job: String,
    /// Disk number (0 for the first disk sent).
    #[arg(long)]
    pub disk: u32,
    /// Output file.
    #[arg(long)]
    pub to: PathBuf,
    /// Output format.
    #[arg(long, value_enum, default_value = "raw")]
    pub format: FormatArg,
    /// Print the result as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum FormatArg {
    Raw,
    Qcow2,
}
