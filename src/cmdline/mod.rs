//! The command line: definitions only. The verbs live in [`crate::cli`].

use std::path::PathBuf;

mod agent;
mod store;
pub use agent::{AgentArgs, SendArgs};
pub use store::{ExportArgs, FormatArg, StoreCommand, StoreVerifyArgs};

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
    /// Run the receiver: API, chunk store and jobs.
    Serve(ServeArgs),
    /// Create and manage migration jobs on a receiver.
    #[command(subcommand)]
    Job(JobCommand),
    /// Stream disks to a receiver for a job (the source agent).
    Send(SendArgs),
    /// Write a finished job's disks onto this machine's disks (the target agent).
    Pull(PullArgs),
    /// Write a received disk out of the store as a raw or qcow2 image.
    Export(ExportArgs),
    /// Check a receiver's store.
    #[command(subcommand)]
    Store(StoreCommand),
    /// Build the live image: kernel, initramfs, iPXE script, USB image.
    #[command(subcommand)]
    Image(ImageCommand),
    /// Print a shell completion script, e.g. `ferry completions bash > /etc/bash_completion.d/ferry`.
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Write a man page for ferry and for each of its commands into DIR (for packagers).
    #[command(hide = true)]
    Manpages {
        /// Output directory.
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Debug, Subcommand)]
pub enum ImageCommand {
    /// Build the kernel, initramfs, PXE files and a USB image (UEFI, Secure Boot, BIOS) into DIR.
    Build(ImageBuildArgs),
}

#[derive(Debug, Args)]
pub struct ImageBuildArgs {
    /// Output directory.
    #[arg(long)]
    pub out: PathBuf,
    /// The statically linked ferry to put in the image as /init (default: this binary, if static).
    #[arg(long)]
    pub init: Option<PathBuf>,
    /// A Debian linux-image-*-amd64 .deb to use instead of fetching one with apt.
    #[arg(long)]
    pub kernel_deb: Option<PathBuf>,
    /// Where fetched kernel packages are cached (default: /var/cache/ferry).
    #[arg(long)]
    pub cache: Option<PathBuf>,
    /// Extra kernel command line for the USB image and boot.ipxe (e.g. ferry.server=... ferry.pin=...).
    #[arg(long, default_value = "")]
    pub cmdline: String,
    /// Skip the USB image (faster, for PXE or direct kernel boot only).
    #[arg(long)]
    pub no_usb: bool,
    /// Print what was built as JSON.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Store directory: jobs database, chunks, manifests, admin token, TLS identity.
    #[arg(long, env = "FERRY_STORE")]
    pub store: PathBuf,
    #[command(flatten)]
    pub shared: SharedStoreArgs,
    /// Address and port to listen on.
    #[arg(long, env = "FERRY_LISTEN", default_value = "127.0.0.1:8443")]
    pub listen: std::net::SocketAddr,
    /// Serve plain HTTP instead of HTTPS (disk data and tokens travel unencrypted).
    #[arg(long)]
    pub plain_http: bool,
    /// Host or IP that sources should use, for the printed kernel command line and certificate.
    #[arg(long, env = "FERRY_ADVERTISE")]
    pub advertise: Option<String>,
    /// Serve the live image built by `ferry image build` from this directory under /boot/
    /// (kernel, initrd, iPXE, shim and GRUB, the USB image) for PXE and UEFI HTTP Boot.
    #[arg(long, env = "FERRY_BOOT_DIR")]
    pub boot_dir: Option<PathBuf>,
    /// Also serve /boot/ over plain HTTP here (iPXE cannot check the receiver's certificate;
    /// PXE is unauthenticated anyway). Only the boot files are served on this address.
    #[arg(long, env = "FERRY_BOOT_LISTEN", requires = "boot_dir")]
    pub boot_listen: Option<std::net::SocketAddr>,
    /// Serve the boot files over TFTP on this UDP address (PXE firmware uses port 69), with a
    /// GRUB menu carrying this receiver's URL and pin for Secure Boot PXE clients.
    #[arg(long, env = "FERRY_TFTP_LISTEN", requires = "boot_dir")]
    pub tftp_listen: Option<std::net::SocketAddr>,
    /// An enrollment token that network boots naming no job or enrollment get (TFTP cannot
    /// carry one per request): every such source enrolls into that wave.
    #[arg(long, env = "FERRY_BOOT_ENROLL", hide_env_values = true, requires = "boot_dir")]
    pub boot_enroll: Option<String>,
}

/// Where a scaled-out wave keeps what every receiver shares: chunks and manifests in a bucket,
/// jobs in PostgreSQL. Without them, both stay in the store directory.
#[derive(Debug, Args, Clone, Default)]
pub struct SharedStoreArgs {
    /// Keep chunks and manifests in an S3 bucket described by this TOML file (endpoint, region,
    /// bucket, prefix, credentials). Default: STORE/s3.toml when it exists, else the
    /// FERRY_S3_BUCKET, FERRY_S3_ENDPOINT, FERRY_S3_REGION, FERRY_S3_PREFIX, AWS_ACCESS_KEY_ID and
    /// AWS_SECRET_ACCESS_KEY environment variables when FERRY_S3_BUCKET is set.
    #[arg(long, env = "FERRY_S3_CONFIG")]
    pub s3_config: Option<PathBuf>,
    /// Keep jobs in PostgreSQL: postgres://USER@HOST:PORT/DB (the password from PGPASSWORD or
    /// the file FERRY_DB_PASSWORD_FILE names, never in this URL). Default: STORE/jobs.sqlite.
    #[arg(long, env = "FERRY_DB")]
    pub db: Option<String>,
}

/// How an admin command reaches the receiver.
#[derive(Debug, Args, Clone)]
pub struct AdminArgs {
    /// Receiver URL, e.g. https://10.0.0.5:8443.
    #[arg(long, env = "FERRY_SERVER")]
    pub server: Option<String>,
    /// SHA-256 pin of the receiver's certificate.
    #[arg(long, env = "FERRY_PIN")]
    pub pin: Option<String>,
    /// File holding the admin token (the receiver writes STORE/admin.token).
    #[arg(long)]
    pub admin_token_file: Option<PathBuf>,
    /// The admin token itself (prefer the file: command lines are visible to other users).
    #[arg(long, env = "FERRY_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// On the receiver's machine: read URL, pin and admin token from its store directory.
    #[arg(long)]
    pub store: Option<PathBuf>,
    /// Talk plain HTTP to a receiver started with --plain-http.
    #[arg(long)]
    pub plain_http: bool,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum JobCommand {
    /// Create a job; prints its id and the agent token.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// A name people recognise, e.g. the server's host name.
        #[arg(long)]
        name: String,
        #[command(flatten)]
        job: JobArgs,
        /// Makes creation idempotent: the same client token returns the same job.
        #[arg(long)]
        client_token: Option<String>,
        #[command(flatten)]
        target_spec: TargetSpecArgs,
    },
    /// Name an instance job's target machine and allow (or withdraw permission) to wipe it.
    Target {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        #[command(flatten)]
        target_spec: TargetSpecArgs,
    },
    /// List jobs; with --wave, that wave's summary: machines by state, bytes to go, rate and
    /// ETA, failures first.
    List {
        #[command(flatten)]
        admin: AdminArgs,
        /// Only this wave, summed up.
        #[arg(long)]
        wave: Option<String>,
    },
    /// Show one job with its disks and history.
    Show {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Print a job's receipt: machine, disks, whole-disk hashes, times, target read-back, and
    /// for each disk the b3sum command that gives its hash from the migrated disk.
    Receipt {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Print the console transcripts the live image sent (what the technician saw).
    Log {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Put a job that ended (InError, Cancelled, Finished) back to Waiting.
    Restart {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Give a job new tokens, shown once (the receiver keeps only their hashes); the old
    /// ones stop working. With neither flag, the agent token.
    Token {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
        /// A new agent (source) token.
        #[arg(long)]
        agent: bool,
        /// A new target token (instance jobs).
        #[arg(long)]
        target: bool,
    },
    /// Cancel a job.
    Cancel {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
    /// Enrollments: one token for a whole wave; each source that boots with it gets its own job.
    #[command(subcommand)]
    Enroll(EnrollCommand),
}

#[derive(Debug, Subcommand)]
pub enum EnrollCommand {
    /// Create an enrollment; prints its token and the boot line for sources.
    Create {
        #[command(flatten)]
        admin: AdminArgs,
        /// The wave's name; each machine's job is named NAME-SERIAL (or NAME-MAC).
        #[arg(long)]
        name: String,
        /// The target and options of every job it creates.
        #[command(flatten)]
        job: JobArgs,
        /// At most this many machines; one more is refused (default: no limit).
        #[arg(long, value_parser = clap::value_parser!(u64).range(1..=i64::MAX as u64))]
        max_jobs: Option<u64>,
    },
    /// List enrollments and the jobs each created.
    List {
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Stop an enrollment from creating more jobs (the jobs it made go on).
    Revoke {
        #[command(flatten)]
        admin: AdminArgs,
        id: String,
    },
}

/// The target machine of an `instance` job.
#[derive(Debug, Args, Clone, Default)]
pub struct TargetSpecArgs {
    /// The target's DMI product UUID or serial number (repeatable: any of them matches).
    #[arg(long = "target-machine", value_name = "UUID|SERIAL")]
    pub machine: Vec<String>,
    /// A disk serial or WWN the target must have (repeatable: all must be present).
    #[arg(long = "target-disk", value_name = "SERIAL|WWN")]
    pub disks: Vec<String>,
    /// Allow ferry to overwrite every disk of the named target. Without it a target writes nothing.
    #[arg(long)]
    pub allow_wipe: bool,
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum TargetArg {
    Image,
    Instance,
}

/// A job's destination and options: `job create`, and the jobs an enrollment creates.
#[derive(Debug, Args, Clone)]
pub struct JobArgs {
    /// Destination: disk images, or a target machine.
    #[arg(long, value_enum, default_value = "image")]
    pub target: TargetArg,
    /// Compress chunks with zstd on the wire.
    #[arg(long)]
    pub compress: bool,
    /// Upload rate limit per source in bytes per second (suffixes K, M, G).
    #[arg(long, value_parser = parse_size)]
    pub bandwidth_limit: Option<u64>,
    /// Chunk size for the job's disks.
    #[arg(long, value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
    /// Sectors a source cannot read: fail the job, or record them and send zeros in their place.
    #[arg(long, value_enum, default_value_t)]
    pub bad_sectors: crate::disk::BadSectors,
    /// The migration wave the job belongs to (letters, digits, '.', '_', '-'); an enrollment's
    /// jobs are in the wave of its name unless this names another.
    #[arg(long)]
    pub wave: Option<String>,
    /// Used-blocks mode: read only the blocks the filesystems use (ext2/3/4, XFS, NTFS, FAT,
    /// exFAT, swap, LVM2); the rest are zeros in the copy, which is then not bit-for-bit.
    #[arg(long)]
    pub used_only: bool,
}

impl JobArgs {
    pub fn target_kind(&self) -> crate::wire::TargetKind {
        match self.target {
            TargetArg::Image => crate::wire::TargetKind::Image,
            TargetArg::Instance => crate::wire::TargetKind::Instance,
        }
    }

    pub fn options(&self) -> crate::wire::JobOptions {
        crate::wire::JobOptions {
            compress: self.compress,
            bandwidth_limit: self.bandwidth_limit,
            chunk_size: self.chunk_size,
            bad_sectors: self.bad_sectors,
            wave: self.wave.clone(),
            used_only: self.used_only,
        }
    }
}

#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Disks or image files; none means every disk of this machine.
    pub paths: Vec<PathBuf>,
    /// Sector size to read image files with (512 or 4096); detected when omitted.
    #[arg(long, value_parser = parse_sector_size)]
    pub sector_size: Option<u32>,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    #[command(flatten)]
    pub agent: AgentArgs,
    /// A Finished job with target `instance`.
    #[arg(long)]
    pub job: String,
    /// The job's target token.
    #[arg(long, env = "FERRY_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Target disks or image files, in the order of the source's disks. EVERY BYTE ON THEM IS
    /// OVERWRITTEN once every check holds.
    #[arg(long = "to", required = true, num_args = 1..)]
    pub to: Vec<PathBuf>,
    /// Sector size of image-file targets (512 or 4096); block devices report their own.
    #[arg(long, value_parser = parse_sector_size)]
    pub sector_size: Option<u32>,
    /// Chunk downloads in flight at once.
    #[arg(long, default_value_t = 8)]
    pub in_flight: usize,
    /// Threads reading the disks back.
    #[arg(long)]
    pub threads: Option<usize>,
    /// Wait this many seconds for the source side to finish (0: refuse at once).
    #[arg(long, default_value_t = 0)]
    pub wait: u64,
    /// Print JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct HashArgs {
    /// A disk or image file.
    pub path: PathBuf,
    /// Chunk size: a power of two from 64K to 64M (suffixes K, M); default 4M, larger for
    /// disks past 4 TiB (at most about a million chunks).
    #[arg(long, value_parser = parse_chunk_size)]
    pub chunk_size: Option<u64>,
    /// Hashing threads (default: one per core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Sector size to read an image file's partition table with (512 or 4096).
    #[arg(long, value_parser = parse_sector_size)]
    pub sector_size: Option<u32>,
    /// Set the kernel read-only flag (BLKROSET) on the device and its partitions first.
    #[arg(long)]
    pub lock: bool,
    /// Print the manifest as JSON.
    #[arg(long)]
    pub json: bool,
}

/// A chunk size: a size that is a power of two from 64K to 64M.
pub fn parse_chunk_size(s: &str) -> Result<u64, String> {
    let n = parse_size(s)?;
    crate::image::treehash::validate_chunk_size(n)?;
    Ok(n)
}

/// A logical sector size an image can be read with.
pub fn parse_sector_size(s: &str) -> Result<u32, String> {
    match s.trim() {
        "512" => Ok(512),
        "4096" | "4K" | "4k" => Ok(4096),
        other => Err(format!("sector size {other:?} must be 512 or 4096")),
    }
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
