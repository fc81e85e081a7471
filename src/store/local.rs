//! The default store: one file per chunk in a local directory.

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use super::{ChunkStore, Place};
use crate::image::Digest;

/// Chunks under `DIR/chunks/ab/abcdef….OFFSET` (`….whole` for a disk of one chunk; the two-level
/// fan-out keeps directories small); writes go to `DIR/tmp`, are fsynced, then linked into
/// place.
///
/// A store from before places were kept names its chunks `ab/abcdef…` alone. Such a chunk is
/// adopted the first time it is asked for at a place: if its bytes have that id there, it is
/// renamed to the placed name; else it stays unplaced and is absent for that place.
///
/// Verified manifests live in `DIR/manifests/JOB/N.json`. File work runs on tokio's blocking
/// threads; [`LocalStore::blocking`] gives the same operations to callers off the runtime.
#[derive(Clone)]
pub struct LocalStore {
    dir: Arc<LocalDir>,
}

/// The store's directory, worked on synchronously.
pub struct LocalDir {
    root: PathBuf,
    chunks: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) a store under `dir` for the receiver, and removes the temp
    /// files a crash left.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let store = Self::open_for_reading(dir)?;
        let d = store.blocking();
        fs::create_dir_all(&d.chunks)?;
        fs::create_dir_all(&d.tmp)?;
        fs::create_dir_all(d.root.join("manifests"))?;
        for entry in fs::read_dir(&d.tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(store)
    }

    /// Opens a store to read it beside a receiver that may be running (`ferry export`): its
    /// uploads in flight are left alone.
    pub fn open_for_reading(dir: &Path) -> io::Result<Self> {
        let dir = LocalDir {
            root: dir.to_owned(),
            chunks: dir.join("chunks"),
            tmp: dir.join("tmp"),
            counter: AtomicU64::new(0),
        };
        Ok(Self { dir: Arc::new(dir) })
    }

    /// The same store, worked on from the calling thread.
    pub fn blocking(&self) -> &LocalDir {
        &self.dir
    }

    /// Runs `f` on a blocking thread: file system calls never stall the async workers.
    async fn run<T: Send + 'static>(
        &self,
        f: impl FnOnce(&LocalDir) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || f(&dir)).await.map_err(io::Error::other)?
    }
}

impl LocalDir {
    /// `DIR/manifests/JOB/N.json`.
    fn manifest_path(&self, job: &str, disk: u32) -> PathBuf {
        manifest_path(&self.root, job, disk)
    }

    /// The file a chunk lives in at a place. The id is 32 bytes rendered as hex and the offset
    /// a number, so no client input ever becomes a path component.
    fn path_of(&self, id: &Digest, at: Place) -> PathBuf {
        placed_path(&self.chunks, id, at)
    }

    fn unplaced_path(&self, id: &Digest) -> PathBuf {
        unplaced_path(&self.chunks, id)
    }

    /// Gives an unplaced chunk its place if its bytes have `id` there. True: it is held at `at`.
    fn adopt(&self, id: &Digest, at: Place) -> io::Result<bool> {
        let old = self.unplaced_path(id);
        let data = match fs::read(&old) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) => return Err(e),
        };
        if data.len() as u64 != at.len || at.id_of(&data) != *id {
            return Ok(false);
        }
        match fs::hard_link(&old, self.path_of(id, at)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(e),
        }
        match fs::remove_file(&old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(true),
        }
    }
}

/// `CHUNKS/ab/abcdef….OFFSET` (`….whole` for a disk of one chunk): where a chunk lives at a place.
pub(super) fn placed_path(chunks: &Path, id: &Digest, at: Place) -> PathBuf {
    chunks.join(super::chunk_name(id, at))
}

/// `DIR/manifests/JOB/N.json`: where the store in `dir` keeps a verified manifest.
pub(super) fn manifest_path(dir: &Path, job: &str, disk: u32) -> PathBuf {
    dir.join("manifests").join(super::manifest_name(job, disk))
}

/// `DIR/manifests/JOB/N.pages/P.CV.json`: where the store in `dir` keeps a page of a manifest.
pub(super) fn manifest_page_path(dir: &Path, job: &str, disk: u32, page: u64, cv: &Digest) -> PathBuf {
    dir.join("manifests").join(super::manifest_page_name(job, disk, page, cv))
}

/// `CHUNKS/ab/abcdef…`: where a store from before places kept the chunk.
pub(super) fn unplaced_path(chunks: &Path, id: &Digest) -> PathBuf {
    let hex = hex::encode(id);
    chunks.join(&hex[..2]).join(hex)
}

#[async_trait::async_trait]
impl ChunkStore for LocalStore {
    async fn contains(&self, id: &Digest, at: Place) -> io::Result<bool> {
        let id = *id;
        self.run(move |d| d.contains(&id, at)).await
    }

    async fn missing(&self, chunks: &[(Digest, Place)]) -> io::Result<Vec<usize>> {
        // One blocking task for the lot: a stat each is microseconds on a local disk.
        let chunks = chunks.to_vec();
        self.run(move |d| {
            let mut out = vec![];
            for (i, (id, at)) in chunks.iter().enumerate() {
                if !d.contains(id, *at)? {
                    out.push(i);
                }
            }
            Ok(out)
        })
        .await
    }

    async fn put(&self, id: &Digest, at: Place, data: bytes::Bytes) -> io::Result<bool> {
        let id = *id;
        self.run(move |d| d.put(&id, at, &data)).await
    }

    async fn get(&self, id: &Digest, at: Place) -> io::Result<Vec<u8>> {
        let id = *id;
        self.run(move |d| d.get(&id, at)).await
    }

    async fn sync(&self) -> io::Result<()> {
        self.run(|d| d.sync()).await
    }

    async fn put_manifest(&self, job: &str, disk: u32, body: Vec<u8>) -> io::Result<()> {
        let path = self.dir.manifest_path(job, disk);
        self.run(move |_| {
            fs::create_dir_all(path.parent().expect("manifest paths have a parent"))?;
            crate::fsx::write_atomic(&path, &body)
        })
        .await
    }

    async fn get_manifest(&self, job: &str, disk: u32) -> io::Result<Vec<u8>> {
        let path = self.dir.manifest_path(job, disk);
        self.run(move |_| fs::read(path)).await
    }

    async fn put_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest, body: Vec<u8>) -> io::Result<()> {
        let path = manifest_page_path(&self.dir.root, job, disk, page, cv);
        self.run(move |_| {
            fs::create_dir_all(path.parent().expect("page paths have a parent"))?;
            crate::fsx::write_atomic(&path, &body)
        })
        .await
    }

    async fn get_manifest_page(&self, job: &str, disk: u32, page: u64, cv: &Digest) -> io::Result<Vec<u8>> {
        let path = manifest_page_path(&self.dir.root, job, disk, page, cv);
        self.run(move |_| fs::read(path)).await
    }

    fn describe(&self) -> String {
        format!("the store {}", self.dir.root.display())
    }

    fn kind(&self) -> &'static str {
        "local"
    }
}

impl LocalDir {
    pub fn contains(&self, id: &Digest, at: Place) -> io::Result<bool> {
        match fs::metadata(self.path_of(id, at)) {
            Ok(m) => Ok(m.len() == at.len),
            Err(e) if e.kind() == io::ErrorKind::NotFound => self.adopt(id, at),
            Err(e) => Err(e),
        }
    }

    pub fn put(&self, id: &Digest, at: Place, data: &[u8]) -> io::Result<bool> {
        debug_assert!(data.len() as u64 == at.len && at.id_of(data) == *id, "put takes verified chunks");
        let dest = self.path_of(id, at);
        if dest.exists() {
            return Ok(false);
        }
        // Several uploads of one chunk may race here: the one whose link lands first stores it,
        // the others find it there (and say so: the chunk is counted once).
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{}-{n}", hex::encode(&id[..8]), std::process::id()));
        let result = (|| {
            // The bytes are on disk before the chunk gets its name, so a crash can never leave
            // a chunk file holding other bytes than its id says. The link itself becomes
            // durable at the next `sync` (a lost link only means the chunk is sent again);
            // syncing the directory for every chunk would stall every upload on the disk.
            crate::fsx::write_durably(&tmp, data)?;
            let parent = dest.parent().expect("chunk paths have a parent");
            fs::create_dir_all(parent)?;
            // A hard link creates the name only if it is free (rename would replace it).
            let linked = match fs::hard_link(&tmp, &dest) {
                Ok(()) => Ok(true),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
                Err(e) => Err(e),
            };
            fs::remove_file(&tmp)?;
            linked
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result
    }

    pub fn get(&self, id: &Digest, at: Place) -> io::Result<Vec<u8>> {
        let data = match fs::read(self.path_of(id, at)) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && self.adopt(id, at)? => fs::read(self.path_of(id, at))?,
            other => other?,
        };
        if data.len() as u64 != at.len {
            // The id of other bytes than this place's length: not held here.
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("held with {} bytes, not {}", data.len(), at.len),
            ));
        }
        Ok(data)
    }

    pub fn sync(&self) -> io::Result<()> {
        // syncfs: one call makes every link (and any data) on the store's filesystem durable.
        let dir = File::open(&self.chunks)?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Chunk 1 of a disk of three 64 KiB chunks, its bytes and id.
    fn chunk(fill: u8) -> (Digest, Place, Vec<u8>) {
        let at = Place::of(3 << 16, 1 << 16, 1);
        let data = vec![fill; 1 << 16];
        (at.id_of(&data), at, data)
    }

    #[test]
    fn put_get_dedup_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/leftover"), b"half a chunk").unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let store = store.blocking();
        assert!(!dir.path().join("tmp/leftover").exists());
        let (id, at, data) = chunk(1);
        assert!(!store.contains(&id, at).unwrap());
        assert!(store.put(&id, at, &data).unwrap());
        assert!(!store.put(&id, at, &data).unwrap());
        assert!(store.contains(&id, at).unwrap());
        assert_eq!(store.get(&id, at).unwrap(), data);
        assert!(dir
            .path()
            .join("chunks")
            .join(&hex::encode(id)[..2])
            .join(format!("{}.65536", hex::encode(id)))
            .exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A reader beside a running receiver leaves its uploads in flight alone.
        fs::write(dir.path().join("tmp/in-flight"), b"upload").unwrap();
        let reader = LocalStore::open_for_reading(dir.path()).unwrap();
        let reader = reader.blocking();
        assert_eq!(reader.get(&id, at).unwrap(), data);
        assert!(dir.path().join("tmp/in-flight").exists());
    }

    #[test]
    fn a_chunk_is_held_only_at_the_place_it_was_verified_at() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let store = store.blocking();
        let (id, at, data) = chunk(2);
        store.put(&id, at, &data).unwrap();
        let elsewhere = [
            Place { offset: 0, ..at },
            Place { offset: 2 << 16, ..at },
            Place { len: at.len - 1, ..at },
            Place { whole_disk: true, ..at },
        ];
        for other in elsewhere {
            assert!(!store.contains(&id, other).unwrap(), "{other:?}");
            assert_eq!(
                store.get(&id, other).map(|d| d.len()).unwrap_err().kind(),
                io::ErrorKind::NotFound,
                "{other:?}"
            );
        }
        assert!(store.contains(&id, at).unwrap());
    }

    #[test]
    fn a_chunk_of_an_older_store_is_adopted_only_where_its_bytes_have_its_id() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let store = store.blocking();
        let as_before = |id: &Digest, data: &[u8]| {
            let path = store.unplaced_path(id);
            fs::create_dir_all(path.parent().unwrap()).unwrap();
            fs::write(&path, data).unwrap();
            path
        };
        let (id, at, data) = chunk(3);
        let unplaced = as_before(&id, &data);
        // Asked for at another index, it is absent, and stays unplaced.
        let other = Place { offset: 0, ..at };
        assert!(!store.contains(&id, other).unwrap());
        assert!(unplaced.exists());
        // At its own, it is held, and renamed to its placed name.
        assert!(store.contains(&id, at).unwrap());
        assert!(!unplaced.exists() && store.path_of(&id, at).exists());
        assert_eq!(store.get(&id, at).unwrap(), data);
        // The same through get.
        let (id2, at2, data2) = chunk(4);
        as_before(&id2, &data2);
        assert_eq!(store.get(&id2, at2).unwrap(), data2);
        // Damaged bytes are never adopted.
        let (id3, at3, mut data3) = chunk(5);
        data3[7] ^= 1;
        let damaged = as_before(&id3, &data3);
        assert!(!store.contains(&id3, at3).unwrap() && damaged.exists());
    }

    #[test]
    fn racing_uploads_of_one_chunk_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let (id, at, data) = chunk(7);
        let data = std::sync::Arc::new(data);
        let new: usize = (0..8)
            .map(|_| {
                let (s, d) = (store.clone(), data.clone());
                std::thread::spawn(move || s.blocking().put(&id, at, &d).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap() as usize)
            .sum();
        assert_eq!(new, 1, "eight racing uploads of one chunk were counted {new} times");
        assert_eq!(store.blocking().get(&id, at).unwrap(), *data);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
