//! Chunks and manifests in an S3-compatible bucket (Garage, Ceph RGW, AWS S3...), shared by
//! every receiver of a scaled-out wave. Keys: `PREFIX/chunks/ab/ID.OFFSET` (`ID.whole` for a
//! disk of one chunk), the local store's names; `PREFIX/manifests/JOB/N.json`.
//!
//! A PUT is durable once the store answers it (Garage with `data_fsync` and `metadata_fsync`
//! on, which the docs require), so `sync` has nothing left to do. Chunks are written
//! create-only where the store honours `If-None-Match: *`; where it does not (Garage), a second
//! write of a chunk puts the same verified bytes under the same key, which changes nothing.

use std::io;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path as Key;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};
use serde::Deserialize;

use super::{ChunkStore, Place};
use crate::image::Digest;

/// Where the bucket is and how to sign in: a TOML file (`STORE/s3.toml`, or `--s3-config`),
/// with the environment filling what it leaves out. Never the command line: credentials there
/// are in every `ps` listing.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// `http://127.0.0.1:3900` or `https://s3.example.net`.
    pub endpoint: Option<String>,
    /// Must equal the store's own region name (Garage: `s3_region`).
    pub region: Option<String>,
    pub bucket: Option<String>,
    /// Keys start with this (no leading or trailing slash): several stores in one bucket.
    #[serde(default)]
    pub prefix: String,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// A file holding the secret key (mode 0600), instead of `secret_access_key`.
    pub secret_access_key_file: Option<std::path::PathBuf>,
}

/// The environment variables an [`S3Config`] takes its unset fields from.
pub const ENV_ENDPOINT: &str = "FERRY_S3_ENDPOINT";
pub const ENV_REGION: &str = "FERRY_S3_REGION";
pub const ENV_BUCKET: &str = "FERRY_S3_BUCKET";
pub const ENV_PREFIX: &str = "FERRY_S3_PREFIX";
pub const ENV_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const ENV_SECRET: &str = "AWS_SECRET_ACCESS_KEY";

impl S3Config {
    /// Reads `path`; unset fields come from the environment.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let cfg: Self = toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        if cfg.secret_access_key.is_some() {
            let _ = warn_if_open(path);
        }
        Ok(cfg.with_env())
    }

    /// The configuration the environment alone gives, when it names a bucket.
    pub fn from_env() -> Option<Self> {
        std::env::var_os(ENV_BUCKET).map(|_| Self::default().with_env())
    }

    fn with_env(mut self) -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        self.endpoint = self.endpoint.or_else(|| env(ENV_ENDPOINT));
        self.region = self.region.or_else(|| env(ENV_REGION));
        self.bucket = self.bucket.or_else(|| env(ENV_BUCKET));
        if self.prefix.is_empty() {
            self.prefix = env(ENV_PREFIX).unwrap_or_default();
        }
        self.access_key_id = self.access_key_id.or_else(|| env(ENV_KEY_ID));
        self.secret_access_key = self.secret_access_key.or_else(|| env(ENV_SECRET));
        self
    }

    fn secret(&self) -> Result<String> {
        match (&self.secret_access_key, &self.secret_access_key_file) {
            (Some(s), _) => Ok(s.clone()),
            (None, Some(f)) => Ok(warn_if_open(f)
                .and_then(|()| std::fs::read_to_string(f))
                .with_context(|| format!("reading the S3 secret key from {}", f.display()))?
                .trim()
                .to_string()),
            (None, None) => {
                bail!("the S3 store needs a secret key: secret_access_key_file in the config, or {ENV_SECRET}")
            }
        }
    }
}

/// Says so when a file holding a secret can be read by other users.
fn warn_if_open(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)?.permissions().mode();
    if mode & 0o077 != 0 {
        log::warn!("{} holds the S3 secret key but is mode {:o}: make it 0600", path.display(), mode & 0o777);
    }
    Ok(())
}

/// A bucket as a chunk store.
#[derive(Clone)]
pub struct S3Store {
    s3: Arc<AmazonS3>,
    prefix: String,
    name: String,
}

impl S3Store {
    pub fn open(cfg: &S3Config) -> Result<Self> {
        // The S3 client speaks TLS through rustls with ring, as the rest of ferry does.
        crate::tls::install_crypto_provider();
        let need = |v: &Option<String>, what: &str, env: &str| {
            v.clone().with_context(|| format!("the S3 store needs {what} (in the config file, or {env})"))
        };
        let endpoint = need(&cfg.endpoint, "an endpoint", ENV_ENDPOINT)?;
        let bucket = need(&cfg.bucket, "a bucket", ENV_BUCKET)?;
        let region = need(&cfg.region, "a region", ENV_REGION)?;
        let key_id = need(&cfg.access_key_id, "an access key id", ENV_KEY_ID)?;
        let prefix = cfg.prefix.trim_matches('/').to_string();
        if prefix.split('/').any(|p| p == "." || p == "..") {
            bail!("the S3 prefix {prefix:?} has a . or .. component");
        }
        // The client's own retries are short: ferry's agents retry a failed request themselves,
        // on another receiver if need be, and a stuck request must not hold a chunk for minutes.
        let retry = object_store::RetryConfig {
            max_retries: 2,
            retry_timeout: Duration::from_secs(15),
            backoff: Default::default(),
        };
        let client = object_store::ClientOptions::new()
            .with_allow_http(endpoint.starts_with("http://"))
            .with_timeout(Duration::from_secs(60))
            .with_connect_timeout(Duration::from_secs(5));
        let s3 = AmazonS3Builder::new()
            .with_endpoint(&endpoint)
            .with_bucket_name(&bucket)
            .with_region(&region)
            .with_access_key_id(key_id)
            .with_secret_access_key(cfg.secret()?)
            .with_virtual_hosted_style_request(false)
            .with_client_options(client)
            .with_retry(retry)
            .build()
            .with_context(|| format!("setting up the S3 client for bucket {bucket} at {endpoint}"))?;
        let name = match prefix.as_str() {
            "" => format!("s3://{bucket} at {endpoint}"),
            p => format!("s3://{bucket}/{p} at {endpoint}"),
        };
        Ok(Self { s3: Arc::new(s3), prefix, name })
    }

    fn key(&self, rel: &str) -> Key {
        match self.prefix.as_str() {
            "" => Key::from(rel),
            p => Key::from(format!("{p}/{rel}")),
        }
    }

    fn chunk_key(&self, id: &Digest, at: Place) -> Key {
        self.key(&format!("chunks/{}", super::chunk_name(id, at)))
    }

    fn manifest_key(&self, job: &str, disk: u32) -> Key {
        self.key(&format!("manifests/{}", super::manifest_name(job, disk)))
    }

    /// Every key under `rel` (`chunks` or `manifests`), relative to it, with its size.
    pub async fn list(&self, rel: &str) -> io::Result<Vec<(String, u64)>> {
        use futures_util::TryStreamExt;
        let root = self.key(rel);
        let strip = format!("{}/", root.as_ref());
        let metas: Vec<_> = self.s3.list(Some(&root)).try_collect().await.map_err(io_error)?;
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .filter_map(|m| Some((m.location.as_ref().strip_prefix(&strip)?.to_string(), m.size)))
            .collect();
        out.sort();
        Ok(out)
    }

    /// The bytes under `rel/name` as [`S3Store::list`] named them.
    pub async fn get_listed(&self, rel: &str, name: &str) -> io::Result<Vec<u8>> {
        let r = self.s3.get(&self.key(&format!("{rel}/{name}"))).await.map_err(io_error)?;
        Ok(r.bytes().await.map_err(io_error)?.to_vec())
    }
}

fn io_error(e: object_store::Error) -> io::Error {
    match e {
        object_store::Error::NotFound { .. } => io::Error::new(io::ErrorKind::NotFound, e),
        object_store::Error::AlreadyExists { .. } => io::Error::new(io::ErrorKind::AlreadyExists, e),
        e => io::Error::other(e),
    }
}

#[async_trait::async_trait]
impl ChunkStore for S3Store {
    async fn contains(&self, id: &Digest, at: Place) -> io::Result<bool> {
        match self.s3.head(&self.chunk_key(id, at)).await {
            Ok(meta) => Ok(meta.size == at.len),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn put(&self, id: &Digest, at: Place, data: bytes::Bytes) -> io::Result<bool> {
        debug_assert!(data.len() as u64 == at.len && at.id_of(&data) == *id, "put takes verified chunks");
        // Asked first so that a chunk already held is not sent across the network again (and,
        // on stores that ignore If-None-Match, is counted once).
        if self.contains(id, at).await? {
            return Ok(false);
        }
        let opts = PutOptions { mode: PutMode::Create, ..Default::default() };
        match self.s3.put_opts(&self.chunk_key(id, at), PutPayload::from_bytes(data), opts).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. } | object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(io_error(e)),
        }
    }

    async fn get(&self, id: &Digest, at: Place) -> io::Result<Vec<u8>> {
        let r = self.s3.get(&self.chunk_key(id, at)).await.map_err(io_error)?;
        let data = r.bytes().await.map_err(io_error)?;
        if data.len() as u64 != at.len {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("held with {} bytes, not {}", data.len(), at.len),
            ));
        }
        Ok(data.to_vec())
    }

    async fn sync(&self) -> io::Result<()> {
        Ok(())
    }

    async fn put_manifest(&self, job: &str, disk: u32, body: Vec<u8>) -> io::Result<()> {
        self.s3.put(&self.manifest_key(job, disk), PutPayload::from(body)).await.map_err(io_error)?;
        Ok(())
    }

    async fn get_manifest(&self, job: &str, disk: u32) -> io::Result<Vec<u8>> {
        let r = self.s3.get(&self.manifest_key(job, disk)).await.map_err(io_error)?;
        Ok(r.bytes().await.map_err(io_error)?.to_vec())
    }

    async fn put_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest, body: Vec<u8>) -> io::Result<()> {
        let key = self.key(&format!("manifests/{}", super::manifest_page_name(job, disk, page, cv)));
        self.s3.put(&key, PutPayload::from(body)).await.map_err(io_error)?;
        Ok(())
    }

    async fn get_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest) -> io::Result<Vec<u8>> {
        let key = self.key(&format!("manifests/{}", super::manifest_page_name(job, disk, page, cv)));
        let r = self.s3.get(&key).await.map_err(io_error)?;
        Ok(r.bytes().await.map_err(io_error)?.to_vec())
    }

    fn describe(&self) -> String {
        self.name.clone()
    }

    fn kind(&self) -> &'static str {
        "s3"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(text: &str) -> Result<S3Config> {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("s3.toml");
        std::fs::write(&p, text).unwrap();
        S3Config::from_file(&p)
    }

    #[test]
    fn a_config_names_everything_or_says_what_is_missing() {
        let base = "endpoint = \"http://127.0.0.1:3900\"\nregion = \"garage\"\naccess_key_id = \"GK1\"\n\
                    secret_access_key = \"s\"\n";
        // The environment of the test run names no bucket.
        if std::env::var_os(ENV_BUCKET).is_none() {
            let e = S3Store::open(&cfg(base).unwrap()).err().expect("no bucket");
            assert!(format!("{e:#}").contains("needs a bucket"), "{e:#}");
        }
        let ok = S3Store::open(&cfg(&format!("{base}bucket = \"b\"\nprefix = \"/dc1/\"\n")).unwrap()).unwrap();
        assert_eq!(ok.describe(), "s3://b/dc1 at http://127.0.0.1:3900");
        let at = Place { offset: 4 << 20, len: 1 << 20, whole_disk: false };
        let key = ok.chunk_key(&[0xab; 32], at);
        assert_eq!(key.as_ref(), format!("dc1/chunks/ab/{}.{}", "ab".repeat(32), 4 << 20));
        assert_eq!(ok.manifest_key("3fa9c01b7d2e", 1).as_ref(), "dc1/manifests/3fa9c01b7d2e/1.json");
        let e = S3Store::open(&cfg(&format!("{base}bucket = \"b\"\nprefix = \"a/../b\"\n")).unwrap()).err().unwrap();
        assert!(format!("{e:#}").contains(".. component"), "{e:#}");
        assert!(cfg("bucket = \"b\"\nsecret = \"typo\"\n").is_err(), "an unknown field is an error, not ignored");
    }
}
