//! Small file-system helpers written once: writing a file so that a crash leaves either the old
//! or the new content (temp file, fsync, rename, fsync of the directory), and reading the short
//! text files of sysfs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// The temporary name `write_atomic` writes `dest` under first.
fn temp_for(dest: &Path) -> PathBuf {
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    dest.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `dest` atomically and durably, with file mode `mode`.
pub fn write_atomic_mode(dest: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let tmp = temp_for(dest);
    let result = (|| {
        let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, dest)?;
        // The rename itself is durable only once the directory is.
        if let Some(dir) = dest.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::File::open(dir)?.sync_all()?;
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// [`write_atomic_mode`] with mode 0644 (less the umask).
pub fn write_atomic(dest: &Path, bytes: &[u8]) -> std::io::Result<()> {
    write_atomic_mode(dest, bytes, 0o644)
}

/// Page-aligned buffers for direct writes, a few kept for the next write: a fresh 4 MiB buffer
/// is 1024 page faults (and as many pages cleared and unmapped again), which cost a receiver
/// more CPU than the copy itself.
pub mod aligned_buffers {
    use std::sync::Mutex;

    use crate::disk::rescue::AlignedBuf;

    /// At most this many kept (48 MiB at 4 MiB chunks): a receiver's chunk bodies land in them
    /// too, as many as a source keeps in flight and a few more; not as many as its body budget
    /// could hold.
    const KEEP: usize = 12;
    static FREE: Mutex<Vec<AlignedBuf>> = Mutex::new(Vec::new());

    /// A buffer of `len` bytes: a kept one of that size, or a new one.
    pub fn take(len: usize) -> AlignedBuf {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        match free.iter().position(|b| b.len() == len) {
            Some(i) => free.swap_remove(i),
            None => AlignedBuf::new(len),
        }
    }

    /// Keeps `buf` for the next write, unless enough are kept.
    pub fn give_back(buf: AlignedBuf) {
        let mut free = FREE.lock().unwrap_or_else(|p| p.into_inner());
        if free.len() < KEEP {
            free.push(buf);
        }
    }

    /// A kept buffer's first `len` bytes, given back when dropped: a chunk body read into one
    /// is hashed and written (around the page cache) without another copy.
    pub struct Filled {
        buf: Option<AlignedBuf>,
        len: usize,
    }

    impl Filled {
        pub fn new(buf: AlignedBuf, len: usize) -> Self {
            assert!(len <= buf.len(), "{len} bytes do not fit a buffer of {}", buf.len());
            Self { buf: Some(buf), len }
        }
    }

    impl AsRef<[u8]> for Filled {
        fn as_ref(&self) -> &[u8] {
            self.buf.as_ref().map(|b| &b.as_slice()[..self.len]).unwrap_or_default()
        }
    }

    impl Drop for Filled {
        fn drop(&mut self) {
            if let Some(b) = self.buf.take() {
                give_back(b);
            }
        }
    }
}

/// Writes `data` to `path` (created, or emptied first) and makes its bytes durable
/// (`fdatasync`). A file of whole 4 KiB blocks is written around the page cache (`O_DIRECT`,
/// through a page-aligned copy): a chunk store writes each file once and seldom reads it back,
/// and copying into the page cache is what a receiver spent most of its CPU on (measured with dd
/// on these machines: 3.1 CPU-seconds per GiB buffered, 0.2 direct). A filesystem without
/// `O_DIRECT` (tmpfs) gets a buffered write.
pub fn write_durably(path: &Path, data: &[u8]) -> std::io::Result<()> {
    const BLOCK: usize = 4096;
    let open = |direct: bool| {
        let mut o = fs::OpenOptions::new();
        o.write(true).create(true).truncate(true);
        if direct {
            o.custom_flags(libc::O_DIRECT);
        }
        o.open(path)
    };
    let unsupported = |e: &std::io::Error| e.raw_os_error() == Some(libc::EINVAL);
    if !data.is_empty() && data.len() % BLOCK == 0 {
        match open(true) {
            Ok(mut f) => {
                // Bytes already in a page-aligned buffer (a chunk body read into a kept one)
                // are written as they are; others through a kept buffer.
                let written = if (data.as_ptr() as usize) % BLOCK == 0 {
                    f.write_all(data)
                } else {
                    let mut aligned = aligned_buffers::take(data.len());
                    aligned.as_mut_slice().copy_from_slice(data);
                    let written = f.write_all(aligned.as_mut_slice());
                    aligned_buffers::give_back(aligned);
                    written
                };
                match written {
                    Ok(()) => return f.sync_data(),
                    Err(e) if unsupported(&e) => {}
                    Err(e) => return Err(e),
                }
            }
            Err(e) if unsupported(&e) => {}
            Err(e) => return Err(e),
        }
    }
    let mut f = open(false)?;
    f.write_all(data)?;
    f.sync_data()
}

/// Copies `src` to `dest` atomically and durably; returns the bytes copied.
pub fn copy_atomic(src: &Path, dest: &Path) -> std::io::Result<u64> {
    let tmp = temp_for(dest);
    let result = (|| {
        let n = fs::copy(src, &tmp)?;
        fs::File::open(&tmp)?.sync_all()?;
        fs::rename(&tmp, dest)?;
        Ok(n)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// A sysfs attribute's text without surrounding white space (or the NUL padding some drivers
/// leave); None when absent or empty.
pub fn read_trimmed(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim_matches(|c: char| c.is_whitespace() || c == '\0');
    (!s.is_empty()).then(|| s.to_string())
}

#[cfg(test)]
mod tests {

    #[test]
    fn durable_writes_read_back_direct_buffered_and_on_tmpfs() {
        let t = tempfile::tempdir().unwrap();
        let shm = std::path::Path::new("/dev/shm");
        let on_tmpfs = shm.is_dir().then(|| tempfile::tempdir_in(shm).unwrap());
        let dirs = [Some(t.path()), on_tmpfs.as_ref().map(|d| d.path())];
        for dir in dirs.into_iter().flatten() {
            // Whole 4 KiB blocks go around the page cache; 4 KiB + 1 cannot.
            for len in [4 << 20, 4096 + 1, 1] {
                let data: Vec<u8> = (0..len).map(|i| (i * 7 % 251) as u8).collect();
                let p = dir.join(format!("f{len}"));
                fs::write(&p, b"old and longer than some of the new contents").unwrap();
                write_durably(&p, &data).unwrap();
                assert!(fs::read(&p).unwrap() == data, "{} bytes in {}", len, dir.display());
            }
        }
    }

    use super::*;

    #[test]
    fn atomic_writes_replace_whole_files_and_leave_no_temp() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("f.json");
        write_atomic(&p, b"one").unwrap();
        write_atomic_mode(&p, b"two", 0o600).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(fs::metadata(&p).unwrap().permissions().mode() & 0o777, 0o600);
        assert_eq!(copy_atomic(&p, &t.path().join("g")).unwrap(), 3);
        assert_eq!(fs::read_dir(t.path()).unwrap().count(), 2, "no temporary file left");
        assert!(write_atomic(&t.path().join("no/such/dir/f"), b"x").is_err());
        fs::write(t.path().join("attr"), " 512\n").unwrap();
        assert_eq!(read_trimmed(&t.path().join("attr")).as_deref(), Some("512"));
        fs::write(t.path().join("padded"), "QM0001\0\0\n").unwrap();
        assert_eq!(read_trimmed(&t.path().join("padded")).as_deref(), Some("QM0001"));
        fs::write(t.path().join("empty"), "\n").unwrap();
        assert_eq!(read_trimmed(&t.path().join("empty")), None);
        assert_eq!(read_trimmed(&t.path().join("absent")), None);
    }
}
