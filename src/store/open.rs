//! Which store a command works on: the receiver's directory alone (chunks and manifests beside
//! its keys), or that directory for keys and a bucket for chunks and manifests.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};

use super::{ChunkStore, LocalStore, S3Config, S3Store};

/// The store's configuration file, read when it is in the store directory.
pub const S3_CONFIG_FILE: &str = "s3.toml";

/// Where chunks and manifests are kept.
#[derive(Clone, Debug)]
pub struct StoreConfig {
    /// The receiver's directory (keys, tokens; chunks too when there is no bucket).
    pub dir: PathBuf,
    pub s3: Option<S3Config>,
}

impl StoreConfig {
    /// `--s3-config FILE` if given, else `DIR/s3.toml` if it exists, else the environment's
    /// `FERRY_S3_BUCKET` and friends, else the directory alone.
    pub fn new(dir: &Path, s3_config: Option<&Path>) -> Result<Self> {
        let in_dir = dir.join(S3_CONFIG_FILE);
        let s3 = match s3_config {
            Some(file) => Some(S3Config::from_file(file)?),
            None if in_dir.exists() => Some(S3Config::from_file(&in_dir)?),
            None => S3Config::from_env(),
        };
        Ok(Self { dir: dir.to_owned(), s3 })
    }
}

/// Opens the store for a receiver (creating the directory's layout, clearing crash leftovers).
pub fn open(cfg: &StoreConfig) -> Result<Arc<dyn ChunkStore>> {
    match &cfg.s3 {
        Some(s3) => Ok(Arc::new(S3Store::open(s3)?)),
        None => Ok(Arc::new(
            LocalStore::open(&cfg.dir).with_context(|| format!("opening the chunk store in {}", cfg.dir.display()))?,
        )),
    }
}

/// Opens the store to read it beside receivers that may be running.
pub fn open_for_reading(cfg: &StoreConfig) -> Result<Arc<dyn ChunkStore>> {
    match &cfg.s3 {
        Some(s3) => Ok(Arc::new(S3Store::open(s3)?)),
        None => Ok(Arc::new(LocalStore::open_for_reading(&cfg.dir)?)),
    }
}
