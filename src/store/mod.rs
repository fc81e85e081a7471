//! Chunk stores: where the receiver keeps verified chunks, keyed by chunk id and place.
//!
//! A chunk id is the chunk's BLAKE3 chaining value at its offset, so identical bytes at the same
//! offset of any disk are kept once: resumed transfers, pre-seeded disks and clones of one
//! template share their chunks. An id says nothing about where it belongs, though: the tree's
//! merges take any ids, so a manifest listing a stored id at another index still merges to a
//! root. A chunk is therefore kept under its id *and* the place it was verified at, and is
//! present only there. Callers verify a chunk's bytes against its id at its place *before*
//! `put`; a store only keeps bytes and never makes a partial chunk visible.

pub mod export;
mod local;
mod open;
mod s3;
pub mod verify;
mod verify_bucket;

pub use local::LocalStore;
pub use open::{open, open_for_reading, StoreConfig};
pub use s3::{S3Config, S3Store};
pub use verify_bucket::verify_bucket;

use std::io;

use crate::image::treehash::{self, chunk_count, chunk_len};
use crate::image::Digest;

/// Where on a disk a chunk is: the only place its id holds. The id is the chaining value of
/// `len` bytes at byte `offset`, finalized as the root when the chunk is the whole disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    pub offset: u64,
    pub len: u64,
    pub whole_disk: bool,
}

impl Place {
    /// Chunk `index` of a disk of `disk_size` bytes cut in `chunk_size` chunks.
    pub fn of(disk_size: u64, chunk_size: u64, index: u64) -> Self {
        Self {
            offset: index * chunk_size,
            len: chunk_len(disk_size, chunk_size, index),
            whole_disk: chunk_count(disk_size, chunk_size) == 1,
        }
    }

    /// The id `data` has at this place.
    pub fn id_of(&self, data: &[u8]) -> Digest {
        treehash::id_at(data, self.offset, self.whole_disk)
    }
}

/// `ab/abcdef….OFFSET` (`….whole` for a disk of one chunk): the name a chunk has at a place,
/// under `chunks/` in every store (a directory's files, a bucket's keys). The id is rendered as
/// hex and the offset as a number, so no client input ever becomes part of a name.
pub fn chunk_name(id: &Digest, at: Place) -> String {
    let hex = hex::encode(id);
    let place = if at.whole_disk { "whole".to_string() } else { at.offset.to_string() };
    format!("{}/{hex}.{place}", &hex[..2])
}

/// `JOB/N.json`: the name of disk `disk`'s verified manifest under `manifests/`. Job ids are
/// checked to be plain tokens before they get here.
pub fn manifest_name(job: &str, disk: u32) -> String {
    debug_assert!(crate::wire::valid_job_id(job));
    format!("{job}/{disk}.json")
}

/// `JOB/N.pages/P.CV.json`: the name of page `page` of a paged manifest under `manifests/`,
/// beside its head, `CV` being the page's hash. A page is kept when uploaded and counts once a
/// verified head names its hash. Named by its hash, a page sent again for another attempt
/// (another chunk size, changed data) never replaces the page a verified head names: that head
/// stays readable until a new one replaces it, here and on every receiver sharing the bucket.
pub fn manifest_page_name(job: &str, disk: u32, page: u64, cv: &Digest) -> String {
    debug_assert!(crate::wire::valid_job_id(job));
    format!("{job}/{disk}.pages/{page}.{}.json", hex::encode(cv))
}

/// A place to keep chunks and the manifests of verified disks: a local directory (the default)
/// or an S3 bucket shared by several receivers. Async, because a bucket is a network away: a
/// receiver asks about many chunks at once rather than one round trip after another.
///
/// Implementations must make `put` atomic: after a crash at any moment a chunk is either absent
/// or complete.
#[async_trait::async_trait]
pub trait ChunkStore: Send + Sync + 'static {
    /// Whether the chunk is held at this place.
    async fn contains(&self, id: &Digest, at: Place) -> io::Result<bool>;
    /// Which of `chunks` are not held at their place: their positions in `chunks`, in order.
    /// The questions go out [`MISSING_CONCURRENCY`] at a time.
    async fn missing(&self, chunks: &[(Digest, Place)]) -> io::Result<Vec<usize>> {
        use futures_util::stream::{self, StreamExt, TryStreamExt};
        let asks: Vec<_> = chunks.iter().map(|(id, at)| self.contains(id, *at)).collect();
        let held: Vec<bool> = stream::iter(asks).buffered(MISSING_CONCURRENCY).try_collect().await?;
        Ok(held.iter().enumerate().filter(|(_, h)| !**h).map(|(i, _)| i).collect())
    }
    /// Keeps `data`, verified to be `id` at `at`; returns false when it was already held there
    /// (nothing written).
    async fn put(&self, id: &Digest, at: Place, data: bytes::Bytes) -> io::Result<bool>;
    /// The bytes kept under `id` at `at` (NotFound when they are not held there).
    async fn get(&self, id: &Digest, at: Place) -> io::Result<Vec<u8>>;
    /// Makes every `put` so far durable. The receiver calls it before it reports a disk
    /// verified, so a power cut can never leave a verified disk with a missing chunk.
    async fn sync(&self) -> io::Result<()>;
    /// Keeps the verified manifest of disk `disk` of `job`, durably, replacing any before it.
    async fn put_manifest(&self, job: &str, disk: u32, body: Vec<u8>) -> io::Result<()>;
    /// The manifest kept for disk `disk` of `job` (NotFound when there is none).
    async fn get_manifest(&self, job: &str, disk: u32) -> io::Result<Vec<u8>>;
    /// Keeps page `page`, whose hash is `cv`, of the paged manifest of disk `disk` of `job`,
    /// durably.
    async fn put_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest, body: Vec<u8>) -> io::Result<()>;
    /// That page (NotFound when it was never kept).
    async fn get_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest) -> io::Result<Vec<u8>>;
    /// Where the store is, in words, for messages.
    fn describe(&self) -> String;
    /// What kind of store it is (`local` or `s3`), for metrics.
    fn kind(&self) -> &'static str;
}

/// How many chunk questions [`ChunkStore::missing`] has in flight at once: 25,600 HEADs for a
/// 100 GiB disk take over a minute one after another (3 ms each), a couple of seconds 64 at once.
pub const MISSING_CONCURRENCY: usize = 64;

/// The verified manifest of disk `disk` of `job`, as a receiver kept it in `store`, with every
/// chunk id: a paged one's pages are read and checked against its head. Holds every id, so it
/// is for the readers that want them all at once; [`load_manifest_head`] and [`load_page`] read
/// a paged manifest a page at a time.
pub async fn load_manifest(store: &dyn ChunkStore, job: &str, disk: u32) -> anyhow::Result<crate::image::Manifest> {
    let mut m = load_manifest_head(store, job, disk).await?;
    let mut chunks = Vec::with_capacity(if m.pages.is_some() { m.chunk_count() as usize } else { 0 });
    for page in 0..m.page_count() {
        chunks.extend(load_page(store, job, disk, &m, page).await?);
    }
    if m.pages.is_some() {
        m.chunks = chunks;
    }
    Ok(m)
}

/// The verified manifest of disk `disk` of `job` as kept: a paged one without its chunk ids.
pub async fn load_manifest_head(
    store: &dyn ChunkStore,
    job: &str,
    disk: u32,
) -> anyhow::Result<crate::image::Manifest> {
    use anyhow::Context;
    if !crate::wire::valid_job_id(job) {
        anyhow::bail!("{job:?} is not a job id");
    }
    let where_ = || format!("manifest {job}/{disk} in {}", store.describe());
    let text = store.get_manifest(job, disk).await.with_context(|| {
        format!("reading the {} (is disk {disk} of job {job} verified? see ferry job show {job})", where_())
    })?;
    let m: crate::image::Manifest =
        serde_json::from_slice(&text).with_context(|| format!("parsing the {}", where_()))?;
    m.validate().with_context(|| format!("checking the {}", where_()))?;
    Ok(m)
}

/// The chunks of page `page` of the paged manifest `m` (its head), checked against it.
pub async fn load_page(
    store: &dyn ChunkStore,
    job: &str,
    disk: u32,
    m: &crate::image::Manifest,
    page: u64,
) -> anyhow::Result<Vec<crate::image::ChunkEntry>> {
    use anyhow::Context;
    let where_ = || format!("page {page} of manifest {job}/{disk} in {}", store.describe());
    let cv = m.pages.as_ref().and_then(|p| p.cvs.get(page as usize)).with_context(|| format!("no {}", where_()))?;
    let body =
        store.get_manifest_page(job, disk, page, cv).await.with_context(|| format!("reading the {}", where_()))?;
    crate::image::manifest::check_page(m, page, &body).map_err(anyhow::Error::msg).with_context(where_)
}
