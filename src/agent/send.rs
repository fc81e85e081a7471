//! The source side: stream every disk of a machine to the receiver, sending only what it lacks.
//!
//! Per disk, one pass: worker threads read and hash chunks; this task asks the receiver in small
//! batches which chunk ids it lacks and uploads only those, several at a time. A resumed or
//! pre-seeded transfer therefore costs one local read plus the changed chunks. The disk is done
//! when the receiver has checked the full manifest against its store.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use serde::Serialize;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;

use super::client::{refused_with, Client, Refused};
use super::throttle::Throttle;
use crate::disk::used::UsedOnly;
use crate::disk::{self, BadRange, BadSectors, DiskReader};
use crate::image::hasher::{self, HashedChunk};
use crate::image::spool::IdSpool;
use crate::image::{pages, treehash, ChunkEntry, Manifest, MANIFEST_VERSION, PAGED_MANIFEST_VERSION};
use crate::machine::machine_identity;
use crate::wire::routes::{call, Call};
use crate::wire::*;

/// Knobs for a send; job options from the receiver fill what is left `None`.
#[derive(Clone, Debug)]
pub struct SendOptions {
    pub threads: usize,
    /// Uploads in flight at once.
    pub in_flight: usize,
    pub compress: Option<bool>,
    pub bandwidth_limit: Option<u64>,
    pub chunk_size: Option<u64>,
    /// What to do with sectors that cannot be read (the job's option when `None`).
    pub bad_sectors: Option<BadSectors>,
    /// Used-blocks mode (the job's option when `None`).
    pub used_only: Option<bool>,
    /// Hardware inventory to register with (the live image's driver coverage).
    pub inventory: Option<serde_json::Value>,
    /// Chunk ids per page of a large disk's manifest (tests make it small).
    pub chunks_per_page: u64,
}

impl Default for SendOptions {
    fn default() -> Self {
        Self {
            threads: hasher::default_threads(),
            in_flight: 8,
            compress: None,
            bandwidth_limit: None,
            chunk_size: None,
            bad_sectors: None,
            used_only: None,
            inventory: None,
            chunks_per_page: pages::DEFAULT_CHUNKS_PER_PAGE,
        }
    }
}

/// What happened to one disk.
#[derive(Clone, Debug, Serialize)]
pub struct DiskSummary {
    pub index: u32,
    pub path: String,
    pub size: u64,
    pub sector_size: u32,
    pub blake3: String,
    pub chunks: u64,
    pub zero_chunks: u64,
    /// Sectors that could not be read (sent as zeros), with `bad_sectors = record`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub bad_ranges: Vec<BadRange>,
    /// Copied in used-blocks mode: what was read and why any partition was read whole.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub used_only: Option<UsedOnly>,
    /// Chunks the receiver lacked, which were uploaded.
    pub sent_chunks: u64,
    /// Bytes on the wire for those chunks (after compression).
    pub sent_bytes: u64,
    pub verified: bool,
}

/// Progress of the disk being sent.
#[derive(Clone, Debug)]
pub struct SendProgress {
    pub index: u32,
    pub path: String,
    pub size: u64,
    pub bytes_done: u64,
    pub sent_bytes: u64,
}

/// Sends `disks` for `job` and finishes the job. `on_progress` is called after each batch.
pub async fn send(
    client: &Client,
    job: &str,
    disks: &[PathBuf],
    opts: &SendOptions,
    on_progress: &mut (dyn FnMut(&SendProgress) + Send),
) -> Result<Vec<DiskSummary>> {
    if !valid_job_id(job) {
        bail!("{job:?} is not a job id (lowercase letters, digits and '-')");
    }
    let readers: Vec<Arc<DiskReader>> =
        disks.iter().map(|p| DiskReader::open(p, None).map(Arc::new)).collect::<Result<_>>()?;
    let mut result = send_opened(client, job, &readers, opts, on_progress).await;
    // Uploads in flight race: the one that hit the real problem (a full store, say) may lose
    // to one refused because the job had already turned InError. Say the job's own reason.
    if result.as_ref().is_err_and(|e| refused_with(e, Code::JobInError)) {
        let args = [job];
        let show = client.call::<call::ShowJob>(&args, &());
        if let Ok(Ok(j)) = tokio::time::timeout(Duration::from_secs(10), show).await {
            if let (Some(code), Some(reason)) = (j.error_code, j.error_reason) {
                let refused = Refused {
                    status: 409,
                    code: Code::parse(&code),
                    raw_code: code,
                    message: format!("job {job} is InError: {reason}"),
                };
                result = Err(anyhow::Error::new(refused));
            }
        }
    }
    if let Err(e) = &result {
        // Tell the receiver why, unless it is the receiver that refused or cannot be reached.
        if e.downcast_ref::<Refused>().is_none() {
            let f = Failure { code: Code::AgentError.as_str().into(), reason: format!("{e:#}") };
            let _ = tokio::time::timeout(Duration::from_secs(10), client.call::<call::Fail>(&[job], &f)).await;
        }
    }
    result
}

async fn send_opened(
    client: &Client,
    job: &str,
    readers: &[Arc<DiskReader>],
    opts: &SendOptions,
    on_progress: &mut (dyn FnMut(&SendProgress) + Send),
) -> Result<Vec<DiskSummary>> {
    let reg = Register {
        machine: machine_identity(),
        disks: readers.iter().map(|r| disk::identify(r)).collect(),
        inventory: opts.inventory.clone(),
    };
    let registered = client.call::<call::Register>(&[job], &reg).await.context("registering with the receiver")?;
    crate::image::zero_ids::shared().remember_for_later_disks(readers.len() > 1);
    let job_opts = registered.options;
    // Absent both, each disk's own default (larger chunks for larger disks).
    let chunk_size = opts.chunk_size.or(job_opts.chunk_size);
    if let Some(c) = chunk_size {
        treehash::validate_chunk_size(c).map_err(anyhow::Error::msg)?;
    }
    let effective = SendOptions {
        compress: Some(opts.compress.unwrap_or(job_opts.compress)),
        bandwidth_limit: opts.bandwidth_limit.or(job_opts.bandwidth_limit),
        chunk_size,
        bad_sectors: Some(opts.bad_sectors.unwrap_or(job_opts.bad_sectors)),
        used_only: Some(opts.used_only.unwrap_or(job_opts.used_only)),
        ..opts.clone()
    };
    let mut summaries = vec![];
    for (i, reader) in readers.iter().enumerate() {
        let s = send_disk(client, job, i as u32, reader.clone(), &effective, on_progress)
            .await
            .with_context(|| format!("sending {}", reader.path().display()))?;
        summaries.push(s);
    }
    client.call::<call::Finish>(&[job], &()).await.context("finishing the job")?;
    Ok(summaries)
}

/// The most chunks asked about in one `missing` query.
const BATCH: usize = 8;

/// One disk's pass: what has been hashed, sent and uploaded so far.
struct DiskPass {
    index: u32,
    path: String,
    size: u64,
    ids: IdSpool,
    bytes_done: u64,
    sent_bytes: u64,
    sent_chunks: u64,
    zero_chunks: u64,
    uploads: JoinSet<Result<u64>>,
}

impl DiskPass {
    fn progress(&self) -> SendProgress {
        SendProgress {
            index: self.index,
            path: self.path.clone(),
            size: self.size,
            bytes_done: self.bytes_done,
            sent_bytes: self.sent_bytes,
        }
    }

    /// Counts the uploads that ended (all of them with `wait`); the first failure ends the pass.
    async fn reap(&mut self, wait: bool) -> Result<()> {
        loop {
            let done = if wait { self.uploads.join_next().await } else { self.uploads.try_join_next() };
            let Some(done) = done else { return Ok(()) };
            self.sent_bytes += done.context("an upload task failed")??;
        }
    }
}

/// What every upload of one disk shares.
struct Uploader {
    client: Client,
    job: String,
    semaphore: Arc<Semaphore>,
    throttle: Arc<Throttle>,
    compress: bool,
}

async fn send_disk(
    client: &Client,
    job: &str,
    index: u32,
    reader: Arc<DiskReader>,
    opts: &SendOptions,
    on_progress: &mut (dyn FnMut(&SendProgress) + Send),
) -> Result<DiskSummary> {
    let size = reader.size();
    let chunk_size = opts.chunk_size.unwrap_or_else(|| treehash::default_chunk_size(size));
    let opts = &SendOptions { chunk_size: Some(chunk_size), ..opts.clone() };
    let path = reader.path().display().to_string();
    reader.set_bad_sectors(opts.bad_sectors.unwrap_or_default());
    let partition_table = partition_table(&reader, opts.bad_sectors)?;
    let used_only = opts.used_only.unwrap_or(false).then(|| plan_used_blocks(&reader, &partition_table)).transpose()?;
    let identity = disk::identify(&reader);
    let disk = index.to_string();
    let begin = BeginDisk { identity: identity.clone(), partition_table: partition_table.clone(), size, chunk_size };
    client.call::<call::BeginDisk>(&[job, &disk], &begin).await?;

    pages::validate_chunks_per_page(opts.chunks_per_page).map_err(anyhow::Error::msg)?;
    let count = treehash::chunk_count(size, chunk_size);
    let mut pass = DiskPass {
        index,
        path,
        size,
        ids: IdSpool::new(size, chunk_size, opts.chunks_per_page),
        bytes_done: 0,
        sent_bytes: 0,
        sent_chunks: 0,
        zero_chunks: 0,
        uploads: JoinSet::new(),
    };
    hash_and_send(client, job, reader.clone(), opts, &mut pass, on_progress).await?;
    let bad_ranges = disk::rescue::in_partitions(reader.bad_ranges(), &partition_table);
    let ids = std::mem::replace(&mut pass.ids, IdSpool::new(0, chunk_size, opts.chunks_per_page)).finish(&pass.path)?;
    let root = ids.root;
    let manifest = Manifest {
        version: if ids.pages.is_some() { PAGED_MANIFEST_VERSION } else { MANIFEST_VERSION },
        identity,
        partition_table,
        size,
        chunk_size,
        blake3: root,
        chunks: ids.chunks,
        bad_ranges: bad_ranges.clone(),
        used_only: used_only.clone(),
        pages: ids.pages,
    };
    let wait = verification_wait(pass.zero_chunks, chunk_size);
    let verdict = client
        .call_waiting::<call::CompleteDisk>(&[job, &disk], &manifest, Some(wait))
        .await
        .context("asking the receiver to verify the disk")?;
    let local = hex::encode(root);
    if !verdict.verified || verdict.blake3 != local {
        bail!("the receiver's whole-disk hash {} differs from this disk's {local}", verdict.blake3);
    }
    Ok(DiskSummary {
        index,
        path: pass.path,
        size,
        sector_size: reader.logical_sector_size(),
        blake3: local,
        chunks: count,
        zero_chunks: pass.zero_chunks,
        bad_ranges,
        used_only,
        sent_chunks: pass.sent_chunks,
        sent_bytes: pass.sent_bytes,
        verified: true,
    })
}

/// The disk's partition table; with bad sectors recorded, one that cannot be read is damage to
/// report (a `Damaged` table), not the end.
fn partition_table(reader: &DiskReader, bad_sectors: Option<BadSectors>) -> Result<disk::PartitionTable> {
    match disk::read_partition_table(reader) {
        Ok(t) => Ok(t),
        Err(e) if bad_sectors == Some(BadSectors::Record) => {
            let mut t = disk::PartitionTable::empty(disk::TableKind::Damaged, reader.logical_sector_size());
            t.problems.push(format!("the partition table could not be read: {e}"));
            Ok(t)
        }
        Err(e) => Err(e).with_context(|| format!("reading the partition table of {}", reader.path().display())),
    }
}

/// How long the receiver may take to verify a disk: the usual two minutes, and a second more
/// per 2 GiB of zero chunks, whose ids it checks by hashing zeros at their places when it does
/// not remember them (measured: about 7 GiB per CPU-second). Under the client's usual limit an
/// empty 2 TiB disk was asked again and again, each time starting over.
fn verification_wait(zero_chunks: u64, chunk_size: u64) -> Duration {
    Duration::from_secs(120 + zero_chunks.saturating_mul(chunk_size) / (2 << 30))
}

/// Used-blocks mode: reads each partition's allocation, tells the reader what to skip, and
/// returns what the manifest says of it.
fn plan_used_blocks(reader: &DiskReader, table: &disk::PartitionTable) -> Result<UsedOnly> {
    let plan = disk::used::plan(reader, table);
    for p in &plan.report.partitions {
        match &p.reason {
            Some(why) => log::info!("{}: partition {} ({}) read whole: {why}", reader.path().display(), p.number, p.fs),
            None => log::info!(
                "{}: partition {} ({}): {} of {} bytes used",
                reader.path().display(),
                p.number,
                p.fs,
                p.read_bytes,
                p.size
            ),
        }
    }
    reader.set_skip(plan.skip)?;
    Ok(plan.report)
}

/// The most memory the chunk buffers of one disk's pass may take: large chunks (a large disk's
/// default) mean fewer buffers and fewer uploads in flight, not more memory.
const BUFFER_BUDGET: u64 = 512 << 20;

/// How many chunk buffers, and uploads in flight, a pass uses: two per hashing thread, one per
/// upload, a batch waiting for the receiver's answer; within [`BUFFER_BUDGET`], keeping at
/// least one buffer per thread and one upload.
fn buffer_budget(threads: usize, in_flight: usize, chunk_size: u64) -> (usize, usize) {
    let wanted = threads * 2 + in_flight + BATCH;
    let affordable = (BUFFER_BUDGET / chunk_size.max(1)) as usize;
    let buffers = wanted.min(affordable).max(threads + 2);
    let in_flight = in_flight.min(buffers.saturating_sub(threads + 1)).max(1);
    (buffers, in_flight)
}

/// The one pass over the disk: chunks hashed in parallel, asked about in batches, the missing
/// ones uploaded (a bounded number in flight), a heartbeat every 2 s.
async fn hash_and_send(
    client: &Client,
    job: &str,
    reader: Arc<DiskReader>,
    opts: &SendOptions,
    pass: &mut DiskPass,
    on_progress: &mut (dyn FnMut(&SendProgress) + Send),
) -> Result<()> {
    let chunk_size = opts.chunk_size.expect("send_disk sets the disk's chunk size");
    let disk = pass.index.to_string();
    let threads = opts.threads.max(1);
    let (buffers, in_flight) = buffer_budget(threads, opts.in_flight.max(1), chunk_size);
    let (tx, mut rx) = mpsc::channel::<HashedChunk>(threads);
    let hashing =
        tokio::task::spawn_blocking(move || hasher::hash_chunks_pooled(reader, chunk_size, threads, buffers, tx));
    let up = Uploader {
        client: client.clone(),
        job: job.to_string(),
        semaphore: Arc::new(Semaphore::new(in_flight)),
        throttle: Arc::new(Throttle::new(opts.bandwidth_limit)),
        compress: opts.compress.unwrap_or(false),
    };
    let started = Instant::now();
    let mut last_beat = Instant::now();
    let mut first_batch = true;
    while let Some(first) = rx.recv().await {
        if std::mem::take(&mut first_batch) {
            log::debug!("disk {disk}: first chunk hashed after {:?}", started.elapsed());
        }
        let mut batch = vec![first];
        while batch.len() < BATCH {
            match rx.try_recv() {
                Ok(c) => batch.push(c),
                Err(_) => break,
            }
        }
        send_batch(&up, pass, batch).await?;
        pass.reap(false).await?;
        on_progress(&pass.progress());
        if last_beat.elapsed() >= Duration::from_secs(2) {
            last_beat = Instant::now();
            let rate = (pass.bytes_done as f64 / started.elapsed().as_secs_f64().max(0.001)) as u64;
            let p = ProgressReport { bytes_done: pass.bytes_done, rate };
            client.call::<call::Progress>(&[job, &disk], &p).await?;
        }
    }
    pass.reap(true).await?;
    hashing.await.context("the hashing task failed")??;
    on_progress(&pass.progress());
    Ok(())
}

/// Records a batch of hashed chunks, asks which of its data chunks the receiver lacks, and
/// starts their uploads.
async fn send_batch(up: &Uploader, pass: &mut DiskPass, batch: Vec<HashedChunk>) -> Result<()> {
    let mut data_chunks = vec![];
    let disk = pass.index.to_string();
    for c in batch {
        pass.bytes_done += c.data.len() as u64;
        if let Some(page) = pass.ids.record(c.index, ChunkEntry { id: c.id, zero: c.zero })? {
            // Sent now and forgotten: the receiver keeps it until the manifest names its hash.
            let n = page.page.to_string();
            up.client.call::<call::PutPage>(&[&up.job, &disk, &n], &page).await.context("sending a page of ids")?;
        }
        if c.zero {
            pass.zero_chunks += 1;
        } else {
            data_chunks.push(c);
        }
    }
    if data_chunks.is_empty() {
        return Ok(());
    }
    let q = MissingQuery { chunks: data_chunks.iter().map(|c| ChunkRef { index: c.index, id: c.id }).collect() };
    let answer = up.client.call::<call::Missing>(&[&up.job, &disk], &q).await?;
    let missing: HashSet<u64> = answer.missing.into_iter().collect();
    for c in data_chunks.into_iter().filter(|c| missing.contains(&c.index)) {
        let permit = up.semaphore.clone().acquire_owned().await.expect("the semaphore is never closed");
        let (client, throttle, job, disk, compress) =
            (up.client.clone(), up.throttle.clone(), up.job.clone(), disk.clone(), up.compress);
        pass.uploads.spawn(async move {
            let _permit = permit;
            upload(&client, &throttle, &job, &disk, c, compress).await
        });
        pass.sent_chunks += 1;
    }
    Ok(())
}

/// Uploads one chunk (zstd-compressed when that helps); returns the bytes put on the wire.
async fn upload(
    client: &Client,
    throttle: &Throttle,
    job: &str,
    disk: &str,
    chunk: HashedChunk,
    compress: bool,
) -> Result<u64> {
    let id = hex::encode(chunk.id);
    let index = chunk.index;
    let index_arg = index.to_string();
    let (body, encoded) = if compress {
        let packed = tokio::task::spawn_blocking(move || {
            let z = zstd::bulk::compress(&chunk.data, 1).ok();
            match z {
                Some(z) if z.len() < chunk.data.len() => (Bytes::from(z), true),
                _ => (Bytes::from_owner(chunk.data), false),
            }
        })
        .await?;
        packed
    } else {
        (Bytes::from_owner(chunk.data), false)
    };
    throttle.take(body.len() as u64).await;
    let len = body.len() as u64;
    client
        .call_raw(&call::PutChunk::ROUTE, &[job, disk, &index_arg], "", |r| {
            let r = r.header(CHUNK_ID_HEADER, &id).header(reqwest::header::CONTENT_TYPE, "application/octet-stream");
            let r = if encoded { r.header(reqwest::header::CONTENT_ENCODING, "zstd") } else { r };
            r.body(body.clone())
        })
        .await
        .with_context(|| format!("uploading chunk {index}"))?;
    Ok(len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn large_chunks_take_fewer_buffers_not_more_memory() {
        // 4 MiB chunks: everything wanted (2 threads: 4 + 8 uploads + 8 batched).
        assert_eq!(buffer_budget(2, 8, 4 << 20), (20, 8));
        // 64 MiB chunks: 8 buffers (512 MiB), uploads cut to what is left after the threads.
        let (buffers, in_flight) = buffer_budget(2, 8, 64 << 20);
        assert_eq!((buffers, in_flight), (8, 5));
        assert!(buffers as u64 * (64 << 20) <= BUFFER_BUDGET);
        // Many threads: never fewer buffers than they need to make progress.
        assert_eq!(buffer_budget(16, 8, 64 << 20).0, 18);
    }
}
