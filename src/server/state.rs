//! What every request shares: the job database, the chunk store, the tokens, the cache of
//! verified manifests, the metrics, and how sources reach this receiver.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::error::{ApiErr, ApiResult};
use super::{db, metrics};
use crate::image::{ChunkEntry, Digest, Manifest};
use crate::store::{ChunkStore, StoreConfig};
use crate::wire::{Code, Job};

/// Where a receiver can be reached; written to `STORE/receiver.json` so that `ferry job --store`
/// and `ferry export` on the same machine need no other flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverInfo {
    pub url: String,
    /// SHA-256 of the certificate (absent with plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The URL sources and targets use (`--advertise`), when it differs from `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
}

impl ReceiverInfo {
    /// What machines booting the live image should use.
    pub fn url_for_sources(&self) -> &str {
        self.source_url.as_deref().unwrap_or(&self.url)
    }
}

/// Shared by every request.
pub struct AppState {
    pub db: db::Db,
    pub store: Arc<dyn ChunkStore>,
    pub dir: PathBuf,
    pub admin_token: String,
    /// Reads jobs and logs (the dashboard's read-only view); changes nothing.
    pub viewer_token: String,
    pub boot_dir: Option<PathBuf>,
    /// The enrollment token network boots get when they name no job or enrollment.
    pub boot_enroll: Option<String>,
    /// Verified manifests targets are reading, by (job, disk): parsed and checked once (a paged
    /// manifest's head only).
    manifests: Mutex<HashMap<(String, u32), Arc<Manifest>>>,
    /// Pages of paged manifests targets are reading, by (job, disk, page), with the whole-disk
    /// hash of the manifest they belong to: the few most recently used.
    pages: Mutex<HashMap<(String, u32, u64), CachedPage>>,
    pub metrics: metrics::Metrics,
    /// Received counters waiting for their batch to be written.
    pub received: super::counters::Received,
    /// The request bodies held in memory at once.
    pub budget: Arc<super::budget::BodyBudget>,
    /// How sources reach this receiver (URL and pin), once it listens: baked into the PXE menu.
    pub info: OnceLock<ReceiverInfo>,
}

impl AppState {
    fn manifests(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32), Arc<Manifest>>> {
        self.manifests.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn cached_manifest(&self, job: &str, disk: u32) -> Option<Arc<Manifest>> {
        self.manifests().get(&(job.to_string(), disk)).cloned()
    }

    pub fn cache_manifest(&self, job: &str, disk: u32, m: Manifest) -> Arc<Manifest> {
        let m = Arc::new(m);
        self.manifests().insert((job.to_string(), disk), m.clone());
        m
    }

    /// A disk verified again: the cached manifest is no longer its.
    pub fn forget_manifest(&self, job: &str, disk: u32) {
        self.manifests().remove(&(job.to_string(), disk));
        self.pages().retain(|(j, d, _), _| (j.as_str(), *d) != (job, disk));
    }

    fn pages(&self) -> std::sync::MutexGuard<'_, HashMap<(String, u32, u64), CachedPage>> {
        self.pages.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Page `page` of the paged manifest of `job`/`disk` whose whole-disk hash is `blake3`, if
    /// it is cached.
    pub fn cached_page(&self, job: &str, disk: u32, page: u64, blake3: &Digest) -> Option<Arc<Vec<ChunkEntry>>> {
        let mut pages = self.pages();
        let p = pages.get_mut(&(job.to_string(), disk, page)).filter(|p| p.blake3 == *blake3)?;
        p.used = std::time::Instant::now();
        Some(p.chunks.clone())
    }

    /// Keeps a page read for a target, forgetting the least recently used beyond [`CACHED_PAGES`].
    pub fn cache_page(
        &self,
        job: &str,
        disk: u32,
        page: u64,
        blake3: Digest,
        chunks: Vec<ChunkEntry>,
    ) -> Arc<Vec<ChunkEntry>> {
        let chunks = Arc::new(chunks);
        let mut pages = self.pages();
        while pages.len() >= CACHED_PAGES {
            let Some(oldest) = pages.iter().min_by_key(|(_, p)| p.used).map(|(k, _)| k.clone()) else { break };
            pages.remove(&oldest);
        }
        let used = std::time::Instant::now();
        pages.insert((job.to_string(), disk, page), CachedPage { blake3, chunks: chunks.clone(), used });
        chunks
    }

    /// The job `id`, or the `no_such_job` answer.
    pub fn job(&self, id: &str) -> ApiResult<Job> {
        self.db.job(id)?.ok_or_else(|| ApiErr::new(Code::NoSuchJob, format!("there is no job {id}")))
    }

    /// Writes the pending received counters (before a disk is reported verified, and every
    /// second from the receiver's clock).
    pub fn write_counters(&self) {
        super::counters::write(&self.db, self.received.take_all());
    }

    /// A job restarted: none of its manifests stay.
    pub fn forget_manifests(&self, job: &str) {
        self.manifests().retain(|(j, _), _| j != job);
        self.pages().retain(|(j, _, _), _| j != job);
    }
}

/// How many pages of paged manifests a receiver keeps for targets (each up to about 2 MiB, so
/// at most 70 MB): a target reads its chunks in order, a few at a time, so it needs one page,
/// two at a boundary; 32 serve 16 targets pulling paged disks at once without reading a page
/// again per chunk.
const CACHED_PAGES: usize = 32;

/// A page of a paged manifest as cached for targets.
struct CachedPage {
    blake3: Digest,
    chunks: Arc<Vec<ChunkEntry>>,
    used: std::time::Instant,
}

/// Writes a file only its owner can read (tokens, keys), atomically.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    crate::fsx::write_atomic_mode(path, bytes, 0o600).with_context(|| format!("writing {}", path.display()))
}

/// A fresh random token: `bytes` random bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

/// The token in `path`, created (random, mode 0600) when the file does not exist.
fn token_file(path: &Path) -> Result<String> {
    if !path.exists() {
        write_private(path, format!("{}\n", random_hex(32)).as_bytes())?;
    }
    Ok(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
}

/// The store holds disk contents: only the receiver's user may read it. A store made by a
/// release before this one was 0755 with 0644 files: when its directory is open to others,
/// every directory beneath is made 0700 and every file 0600, once (the log says how many).
fn make_private(dir: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let open_to_others = |p: &Path| fs::symlink_metadata(p).map(|m| m.permissions().mode() & 0o077 != 0);
    if !open_to_others(dir).with_context(|| format!("reading {}", dir.display()))? {
        return Ok(());
    }
    let mut changed = 0u64;
    let mut stack = vec![dir.to_owned()];
    while let Some(d) = stack.pop() {
        for entry in fs::read_dir(&d).with_context(|| format!("reading {}", d.display()))? {
            let entry = entry?;
            let kind = entry.file_type()?;
            let mode = if kind.is_dir() {
                stack.push(entry.path());
                0o700
            } else if kind.is_file() {
                0o600
            } else {
                continue; // symlinks and the like: not the receiver's to change
            };
            if open_to_others(&entry.path())? {
                fs::set_permissions(entry.path(), fs::Permissions::from_mode(mode))
                    .with_context(|| format!("making {} private", entry.path().display()))?;
                changed += 1;
            }
        }
    }
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("making {} private", dir.display()))?;
    log::warn!("the store {} was readable by other users: it is now 0700, and {changed} files and directories in it are the receiver's alone", dir.display());
    Ok(())
}

/// Opens (creating on first start) the store directory: admin token, TLS identity, and unless
/// they are shared (`s3_config`, `db_url`), the chunks and the job database.
pub async fn open_state(dir: &Path, s3_config: Option<&Path>, db_url: Option<&str>) -> Result<AppState> {
    fs::create_dir_all(dir).with_context(|| format!("creating store {}", dir.display()))?;
    make_private(dir)?;
    let admin_token = token_file(&dir.join("admin.token"))?;
    let viewer_token = token_file(&dir.join("viewer.token"))?;
    let db = db::Db::open_for(dir, db_url)?;
    let store = crate::store::open(&StoreConfig::new(dir, s3_config)?)?;
    log::info!("chunks and manifests in {}; jobs in {}", store.describe(), db.describe());
    Ok(AppState {
        db,
        store,
        dir: dir.to_owned(),
        admin_token,
        viewer_token,
        boot_dir: None,
        boot_enroll: None,
        manifests: Default::default(),
        pages: Default::default(),
        metrics: Default::default(),
        received: Default::default(),
        budget: super::budget::BodyBudget::from_env(),
        info: Default::default(),
    })
}
