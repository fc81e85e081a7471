//! Writing a received disk out of the store: a sparse raw file (zero chunks stay holes) or a
//! qcow2 image, each verified against the disk's whole-disk BLAKE3 before it takes its name.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rayon::prelude::*;

use super::{ChunkStore, Place, StoreConfig};
use crate::disk::DiskReader;
use crate::image::{self, hasher, pages, treehash, ChunkEntry, Manifest};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Raw,
    Qcow2,
}

/// What an export wrote.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Exported {
    pub path: String,
    pub format: &'static str,
    pub size: u64,
    pub blake3: String,
    pub verified: bool,
}

/// Exports disk `disk` of `job` to `to`.
pub fn export(cfg: &StoreConfig, job: &str, disk: u32, to: &Path, format: Format) -> Result<Exported> {
    // The store may be a bucket: its reads are async, made from the export's rayon threads
    // through this runtime's handle.
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let store = super::open_for_reading(cfg)?;
    // A paged manifest's head: its pages are read one at a time as they are written out.
    let manifest = rt.block_on(super::load_manifest_head(store.as_ref(), job, disk))?;
    if to.is_dir() {
        bail!("{} is a directory; give a file name", to.display());
    }
    let source = Source { store: store.as_ref(), rt: rt.handle(), job, disk };
    let partial = sibling(to, ".partial");
    let result = match format {
        Format::Raw => write_raw(&source, &manifest, &partial),
        Format::Qcow2 => {
            let raw = sibling(to, ".raw.partial");
            let r = write_raw(&source, &manifest, &raw).and_then(|()| to_qcow2(&raw, &partial));
            let _ = fs::remove_file(&raw);
            r
        }
    };
    if let Err(e) = result {
        let _ = fs::remove_file(&partial);
        return Err(e);
    }
    fs::rename(&partial, to).with_context(|| format!("renaming {} to {}", partial.display(), to.display()))?;
    Ok(Exported {
        path: to.display().to_string(),
        format: match format {
            Format::Raw => "raw",
            Format::Qcow2 => "qcow2",
        },
        size: manifest.size,
        blake3: hex::encode(manifest.blake3),
        verified: true,
    })
}

/// The store an export reads, the runtime its reads run on, and the disk it exports.
struct Source<'a> {
    store: &'a dyn ChunkStore,
    rt: &'a tokio::runtime::Handle,
    job: &'a str,
    disk: u32,
}

impl Source<'_> {
    /// Calls `each` with the manifest's chunks and the index of the first: an inline manifest's
    /// at once, a paged one's a page at a time, each read from the store and checked.
    fn each_page(&self, m: &Manifest, mut each: impl FnMut(u64, &[ChunkEntry]) -> Result<()>) -> Result<()> {
        let Some(pages) = &m.pages else { return each(0, &m.chunks) };
        for page in 0..m.page_count() {
            let chunks = self.rt.block_on(super::load_page(self.store, self.job, self.disk, m, page))?;
            each(page * pages.chunks_per_page, &chunks)?;
        }
        Ok(())
    }
}

fn sibling(p: &Path, suffix: &str) -> PathBuf {
    let mut s = p.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Writes every data chunk at its offset into a sparse file, re-checking each chunk's id as it
/// leaves the store (bit rot on the receiver is caught here), then hashes the whole file and
/// compares it with the manifest.
fn write_raw(source: &Source, m: &Manifest, path: &Path) -> Result<()> {
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .with_context(|| format!("creating {}", path.display()))?;
    f.set_len(m.size).with_context(|| format!("sizing {}", path.display()))?;
    source.each_page(m, |first, chunks| write_chunks(source, m, first, chunks, &f, path))?;
    f.sync_all()?;
    drop(f);
    verify_file(path, m)
}

/// Writes the data chunks among chunks `first..` of `m` into `f`.
fn write_chunks(source: &Source, m: &Manifest, first: u64, chunks: &[ChunkEntry], f: &File, path: &Path) -> Result<()> {
    (0..chunks.len()).into_par_iter().try_for_each(|at| -> Result<()> {
        let (i, c) = (first + at as u64, &chunks[at]);
        if c.zero {
            return Ok(());
        }
        let (offset, len) = m.chunk_range(i);
        let data = match source.rt.block_on(source.store.get(&c.id, Place::of(m.size, m.chunk_size, i))) {
            Ok(data) => data,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                bail!("chunk {i} ({}) is not in the store at byte {offset}: it was removed", hex::encode(c.id))
            }
            Err(e) => {
                return Err(e).with_context(|| format!("reading chunk {i} ({}) from the store", hex::encode(c.id)))
            }
        };
        if data.len() as u64 != len || treehash::chunk_id(&data, offset, m.size, m.chunk_size) != c.id {
            bail!("chunk {i} in the store is damaged: its bytes no longer match its id {}", hex::encode(c.id));
        }
        f.write_all_at(&data, offset).with_context(|| format!("writing {} at byte {offset}", path.display()))
    })
}

/// Hashes `path` in one pass and compares it with the manifest's whole-disk BLAKE3. The ids
/// are kept a page at a time for a paged manifest, so this too holds no more for a larger disk.
pub fn verify_file(path: &Path, m: &Manifest) -> Result<()> {
    let reader = Arc::new(DiskReader::open(path, None)?);
    if reader.size() != m.size {
        bail!("{} is {} bytes, the disk was {}", path.display(), reader.size(), m.size);
    }
    let per_page = m.pages.as_ref().map_or(u64::MAX, |p| p.chunks_per_page);
    let ids = image::hash_ids(reader, m.chunk_size, hasher::default_threads(), per_page, &Default::default(), |_| {})?;
    if ids.root != m.blake3 {
        let first = match (&ids.pages, &m.pages) {
            (Some(got), Some(want)) => {
                let page = got.cvs.iter().zip(&want.cvs).position(|(a, b)| a != b).unwrap_or(0) as u64;
                format!("chunks {:?}", pages::page_chunks(m.chunk_count(), want.chunks_per_page, page))
            }
            _ => format!("chunk {}", ids.chunks.iter().zip(&m.chunks).position(|(a, b)| a.id != b.id).unwrap_or(0)),
        };
        bail!(
            "{} hashes to {}, not the disk's {} (first difference in {first})",
            path.display(),
            hex::encode(ids.root),
            hex::encode(m.blake3)
        );
    }
    Ok(())
}

/// Converts a verified raw file to qcow2 with qemu-img, then proves the two hold the same guest
/// bytes with `qemu-img compare`.
fn to_qcow2(raw: &Path, out: &Path) -> Result<()> {
    let run = |args: &[&std::ffi::OsStr], what: &str| -> Result<()> {
        let status = Command::new("qemu-img")
            .args(args)
            .status()
            .with_context(|| format!("running qemu-img to {what} (install qemu-utils)"))?;
        if !status.success() {
            bail!("qemu-img failed to {what} ({status})");
        }
        Ok(())
    };
    run(
        &[
            "convert".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-O".as_ref(),
            "qcow2".as_ref(),
            raw.as_os_str(),
            out.as_os_str(),
        ],
        "convert to qcow2",
    )?;
    run(
        &[
            "compare".as_ref(),
            "-q".as_ref(),
            "-f".as_ref(),
            "raw".as_ref(),
            "-F".as_ref(),
            "qcow2".as_ref(),
            raw.as_os_str(),
            out.as_os_str(),
        ],
        "compare the qcow2 with the verified raw image",
    )?;
    File::open(out)?.sync_all()?;
    Ok(())
}
