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
