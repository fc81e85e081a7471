//! `ferry store verify`: the store checked from its own bytes, read-only. Every chunk file is
//! hashed again at the place its name gives and must have the id its name gives; every kept
//! manifest must merge to its whole-disk hash, name only chunks the store holds at their place,
//! and mark as zero only chunks whose id is that of zeros. Nothing is repaired or moved (a
//! receiver may be running beside it).

use std::collections::HashSet;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rayon::prelude::*;
use serde::Serialize;

use super::Place;
use crate::image::treehash::chunk_id;
use crate::image::{hasher, Digest, Manifest};

/// What a verification found.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Chunk files hashed again.
    pub chunks_checked: u64,
    /// Bytes in them.
    pub bytes_checked: u64,
    /// Chunk files from a store older than places (named by id alone): checked for their id
    /// when a manifest names them, else adopted when first asked for.
    pub unplaced_chunks: u64,
    /// Manifests checked (`JOB/N`).
    pub manifests_checked: Vec<String>,
    /// Each thing wrong, in words naming the file or the job, disk and chunk.
    pub problems: Vec<String>,
}

/// A chunk file and the place its name gives.
pub(super) struct ChunkFile {
    path: PathBuf,
    pub(super) id: Digest,
    /// None for a chunk named by its id alone (a store from before places).
    pub(super) offset: Option<u64>,
    pub(super) whole_disk: bool,
}

impl ChunkFile {
    /// Parses `HEX.OFFSET`, `HEX.whole` or `HEX`; None for any other name.
    pub(super) fn parse(path: PathBuf) -> Option<Self> {
        let name = path.file_name()?.to_str()?;
        let (hex, place) = match name.split_once('.') {
            Some((h, p)) => (h, Some(p)),
            None => (name, None),
        };
        let id = crate::image::manifest::hex_digest::parse(hex).ok()?;
        let (offset, whole_disk) = match place {
            None => (None, false),
            Some("whole") => (Some(0), true),
            Some(p) => (Some(p.parse().ok()?), false),
        };
        Some(Self { path, id, offset, whole_disk })
    }
}

/// Checks that each disk the job database calls verified, `(job, disk, blake3)`, has a kept
/// manifest with that whole-disk hash (a manifest swapped for another consistent one would
/// pass every other check). `kept` reads a manifest from the store.
pub fn check_against_jobs(
    verified: &[(String, u32, String)],
    kept: impl Fn(&str, u32) -> Option<Manifest>,
    report: &mut Report,
) {
    for (job, disk, blake3) in verified {
        match kept(job, *disk) {
            Some(m) if hex::encode(m.blake3) == *blake3 => {}
            Some(m) => report.problems.push(format!(
                "manifest {job}/{disk}: whole-disk hash {} but the job says {blake3}",
                hex::encode(m.blake3)
            )),
            None => report
                .problems
                .push(format!("manifest {job}/{disk}: the job says verified, but no manifest can be read")),
        }
    }
}

/// The manifest kept in the store directory `dir`, if it can be read.
pub fn kept_in_dir(dir: &Path, job: &str, disk: u32) -> Option<Manifest> {
    read_kept(&super::local::manifest_path(dir, job, disk)).ok()
}

/// The manifest kept at `path` in a local store, with every chunk id: a paged one's pages are
/// read from `N.pages/` beside it and checked against its head.
pub fn read_kept(path: &Path) -> Result<Manifest> {
    let mut m: Manifest = serde_json::from_slice(&fs::read(path)?)?;
    if m.pages.is_some() {
        m.validate()?;
        let dir = path.with_extension("pages");
        let cvs = m.pages.as_ref().map(|p| p.cvs.clone()).unwrap_or_default();
        let mut chunks = Vec::with_capacity(m.chunk_count() as usize);
        for (page, cv) in (0..m.page_count()).zip(&cvs) {
            let body = fs::read(dir.join(format!("{page}.{}.json", hex::encode(cv))))
                .with_context(|| format!("reading page {page} of the manifest"))?;
            chunks.extend(crate::image::manifest::check_page(&m, page, &body).map_err(anyhow::Error::msg)?);
        }
        m.chunks = chunks;
    }
    Ok(m)
}

/// Checks the store in `dir`: every chunk file and every manifest, or with `job` only that
/// job's manifests and the chunks they name.
pub fn verify(dir: &Path, job: Option<&str>) -> Result<Report> {
    if !dir.join("chunks").is_dir() {
        bail!("{} is not a ferry store (no chunks/ directory)", dir.display());
    }
    let mut report = Report::default();
    let manifests = manifest_files(dir, job)?;
    let mut named: HashSet<PathBuf> = HashSet::new();
    for (name, path) in &manifests {
        check_manifest(dir, name, path, &mut named, &mut report);
        report.manifests_checked.push(name.clone());
    }
    let files = match job {
        Some(_) => named.into_iter().filter_map(ChunkFile::parse).collect(),
        None => chunk_files(dir, &mut report.problems)?,
    };
    let results: Vec<(u64, Option<String>)> = files.par_iter().map(check_chunk_file).collect();
    for (f, (bytes, problem)) in files.iter().zip(results) {
        if f.offset.is_none() {
            report.unplaced_chunks += 1;
            continue;
        }
        report.chunks_checked += 1;
        report.bytes_checked += bytes;
        report.problems.extend(problem);
    }
    Ok(report)
}

/// `manifests/JOB/N.json` for every job (or one), as (`JOB/N`, path), in order.
fn manifest_files(dir: &Path, job: Option<&str>) -> Result<Vec<(String, PathBuf)>> {
    let root = dir.join("manifests");
    let jobs: Vec<String> = match job {
        Some(j) => {
            if !crate::wire::valid_job_id(j) {
                bail!("{j:?} is not a job id");
            }
            if !root.join(j).is_dir() {
                bail!("job {j} has no verified disk in {} (see ferry job show {j})", dir.display());
            }
            vec![j.to_string()]
        }
        None if !root.is_dir() => vec![],
        None => sorted_names(&root)?,
    };
    let mut out = vec![];
    for j in jobs {
        for f in sorted_names(&root.join(&j))? {
            if let Some(n) = f.strip_suffix(".json") {
                out.push((format!("{j}/{n}"), root.join(&j).join(&f)));
            }
        }
    }
    Ok(out)
}

fn sorted_names(dir: &Path) -> Result<Vec<String>> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    Ok(names)
}

/// Every chunk file under `chunks/`; a file whose name is not a chunk's is a problem.
fn chunk_files(dir: &Path, problems: &mut Vec<String>) -> Result<Vec<ChunkFile>> {
    let mut out = vec![];
    for fan in sorted_names(&dir.join("chunks"))? {
        if !dir.join("chunks").join(&fan).is_dir() {
            problems.push(format!("{}: not a chunk directory", dir.join("chunks").join(&fan).display()));
            continue;
        }
        for name in sorted_names(&dir.join("chunks").join(&fan))? {
            let path = dir.join("chunks").join(&fan).join(&name);
            match ChunkFile::parse(path.clone()) {
                Some(f) => out.push(f),
                None => problems.push(format!("{}: not a chunk file name (ID.OFFSET or ID.whole)", path.display())),
            }
        }
    }
    Ok(out)
}

/// Hashes a chunk file at its place: (bytes read, what is wrong).
fn check_chunk_file(f: &ChunkFile) -> (u64, Option<String>) {
    let Some(offset) = f.offset else { return (0, None) };
    let data = match fs::read(&f.path) {
        Ok(d) => d,
        Err(e) => return (0, Some(format!("{}: cannot be read: {e}", f.path.display()))),
    };
    (data.len() as u64, bytes_problem(&f.path.display().to_string(), &f.id, offset, f.whole_disk, &data))
}

/// What is wrong with chunk bytes named `id` at `offset`, kept under `name`.
pub(super) fn bytes_problem(name: &str, id: &Digest, offset: u64, whole_disk: bool, data: &[u8]) -> Option<String> {
    let at = Place { offset, len: data.len() as u64, whole_disk };
    (at.id_of(data) != *id)
        .then(|| format!("{name}: its bytes do not hash to its id at offset {offset} (damaged on the store's disk)"))
}

/// Checks one manifest against the store; the chunk files it names go into `named`.
fn check_manifest(dir: &Path, name: &str, path: &Path, named: &mut HashSet<PathBuf>, report: &mut Report) {
    let m: Manifest = match read_kept(path) {
        Ok(m) => m,
        Err(e) => return report.problems.push(format!("manifest {name}: cannot be read: {e:#}")),
    };
    if !manifest_is_sound(name, &m, report) {
        return;
    }
    let chunks = dir.join("chunks");
    for (i, c) in m.chunks.iter().enumerate() {
        let at = Place::of(m.size, m.chunk_size, i as u64);
        if c.zero {
            continue;
        }
        let hex = hex::encode(c.id);
        let placed = super::local::placed_path(&chunks, &c.id, at);
        let unplaced = super::local::unplaced_path(&chunks, &c.id);
        match fs::metadata(&placed) {
            Ok(meta) if meta.len() == at.len => {
                named.insert(placed);
            }
            Ok(meta) => report.problems.push(format!(
                "manifest {name}: chunk {i} is {} bytes in the store, not {}: {}",
                meta.len(),
                at.len,
                placed.display()
            )),
            // A chunk of an older store, not adopted yet: it counts if its bytes have the id here.
            Err(_) if unplaced_has_id(&unplaced, &c.id, at) => {}
            Err(_) => report.problems.push(format!("manifest {name}: chunk {i} (id {hex}) is missing from the store")),
        }
    }
}

/// Whether a manifest validates; each chunk it marks zero whose id is not that of zeros is a
/// problem.
pub(super) fn manifest_is_sound(name: &str, m: &Manifest, report: &mut Report) -> bool {
    if let Err(e) = m.validate() {
        report.problems.push(format!("manifest {name}: {e}"));
        return false;
    }
    let zeros = vec![0u8; m.chunk_size.min(m.size) as usize];
    debug_assert!(hasher::is_zero(&zeros));
    let bad_zero: Vec<usize> = (0..m.chunks.len())
        .into_par_iter()
        .filter(|&i| m.chunks[i].zero)
        .filter(|&i| {
            let (offset, len) = m.chunk_range(i as u64);
            chunk_id(&zeros[..len as usize], offset, m.size, m.chunk_size) != m.chunks[i].id
        })
        .collect();
    for i in bad_zero {
        report.problems.push(format!("manifest {name}: chunk {i} is marked zero but its id is not that of zeros"));
    }
    true
}

fn unplaced_has_id(path: &Path, id: &Digest, at: Place) -> bool {
    fs::read(path).is_ok_and(|d| d.len() as u64 == at.len && at.id_of(&d) == *id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunk_file_names_give_their_place() {
        let hex = "ab".repeat(32);
        let f = ChunkFile::parse(PathBuf::from(format!("/s/chunks/ab/{hex}.4194304"))).unwrap();
        assert_eq!((f.offset, f.whole_disk), (Some(4194304), false));
        let f = ChunkFile::parse(PathBuf::from(format!("/s/chunks/ab/{hex}.whole"))).unwrap();
        assert_eq!((f.offset, f.whole_disk), (Some(0), true));
        let f = ChunkFile::parse(PathBuf::from(format!("/s/chunks/ab/{hex}"))).unwrap();
        assert_eq!(f.offset, None);
        assert!(ChunkFile::parse(PathBuf::from(format!("/s/chunks/ab/{hex}.x"))).is_none());
        assert!(ChunkFile::parse(PathBuf::from("/s/chunks/ab/zz.0")).is_none());
    }
}
