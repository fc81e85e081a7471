//! The default store: one file per chunk in a local directory.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::ChunkStore;
use crate::image::Digest;

/// Chunks under `DIR/chunks/ab/abcdef…` (two-level fan-out keeps directories small); writes go
/// to `DIR/tmp`, are fsynced, then renamed into place.
pub struct LocalStore {
    chunks: PathBuf,
    tmp: PathBuf,
    counter: AtomicU64,
}

impl LocalStore {
    /// Opens (creating if needed) a store under `dir` for the receiver, and removes the temp
    /// files a crash left.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let store = Self::open_for_reading(dir)?;
        fs::create_dir_all(&store.chunks)?;
        fs::create_dir_all(&store.tmp)?;
        for entry in fs::read_dir(&store.tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(store)
    }

    /// Opens a store to read it beside a receiver that may be running (`ferry export`): its
    /// uploads in flight are left alone.
    pub fn open_for_reading(dir: &Path) -> io::Result<Self> {
        Ok(Self { chunks: dir.join("chunks"), tmp: dir.join("tmp"), counter: AtomicU64::new(0) })
    }

    /// The file a chunk lives in. The id is 32 bytes rendered as hex, so no client input ever
    /// becomes a path component.
    fn path_of(&self, id: &Digest) -> PathBuf {
        let hex = hex::encode(id);
        self.chunks.join(&hex[..2]).join(&hex)
    }
}

impl ChunkStore for LocalStore {
    fn contains(&self, id: &Digest) -> io::Result<bool> {
        match fs::metadata(self.path_of(id)) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn put(&self, id: &Digest, data: &[u8]) -> io::Result<bool> {
        let dest = self.path_of(id);
        if dest.exists() {
            return Ok(false);
        }
        // Several uploads of one chunk may race here: the one whose link lands first stores it,
        // the others find it there (and say so: the chunk is counted once).
        let n = self.counter.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp.join(format!("{}-{}-{n}", hex::encode(&id[..8]), std::process::id()));
        let result = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(data)?;
            // The bytes are on disk before the chunk gets its name, so a crash can never leave
            // a chunk file holding other bytes than its id says. The rename itself becomes
            // durable at the next `sync` (a lost rename only means the chunk is sent again);
            // syncing the directory for every chunk would stall every upload on the disk.
            f.sync_data()?;
            drop(f);
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

    fn get(&self, id: &Digest) -> io::Result<Vec<u8>> {
        fs::read(self.path_of(id))
    }

    fn sync(&self) -> io::Result<()> {
        // syncfs: one call makes every rename (and any data) on the store's filesystem durable.
        let dir = File::open(&self.chunks)?;
        nix::unistd::syncfs(&dir).map_err(io::Error::from)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_get_dedup_and_crash_leftovers() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("tmp")).unwrap();
        fs::write(dir.path().join("tmp/leftover"), b"half a chunk").unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        assert!(!dir.path().join("tmp/leftover").exists());
        let id = [0xab; 32];
        assert!(!store.contains(&id).unwrap());
        assert!(store.put(&id, b"hello").unwrap());
        assert!(!store.put(&id, b"hello").unwrap());
        assert!(store.contains(&id).unwrap());
        assert_eq!(store.get(&id).unwrap(), b"hello");
        assert!(dir.path().join("chunks/ab").join(hex::encode(id)).exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // A reader beside a running receiver leaves its uploads in flight alone.
        fs::write(dir.path().join("tmp/in-flight"), b"upload").unwrap();
        let reader = LocalStore::open_for_reading(dir.path()).unwrap();
        assert_eq!(reader.get(&id).unwrap(), b"hello");
        assert!(dir.path().join("tmp/in-flight").exists());
    }

    #[test]
    fn racing_uploads_of_one_chunk_store_it_once() {
        let dir = tempfile::tempdir().unwrap();
        let store = std::sync::Arc::new(LocalStore::open(dir.path()).unwrap());
        let id = [0x5a; 32];
        let new: usize = (0..8)
            .map(|_| {
                let s = store.clone();
                std::thread::spawn(move || s.put(&id, &[7u8; 65536]).unwrap())
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().unwrap() as usize)
            .sum();
        assert_eq!(new, 1, "eight racing uploads of one chunk were counted {new} times");
        assert_eq!(store.get(&id).unwrap(), vec![7u8; 65536]);
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
