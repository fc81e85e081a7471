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
    /// Opens (creating if needed) a store under `dir`, and removes temp files a crash left.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let chunks = dir.join("chunks");
        let tmp = dir.join("tmp");
        fs::create_dir_all(&chunks)?;
        fs::create_dir_all(&tmp)?;
        for entry in fs::read_dir(&tmp)? {
            let _ = fs::remove_file(entry?.path());
        }
        Ok(Self { chunks, tmp, counter: AtomicU64::new(0) })
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
            fs::rename(&tmp, &dest)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        result.map(|_| true)
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
    }
}
