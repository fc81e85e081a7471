//! A small, reproducible writer for the kernel's initramfs format: cpio "newc" (`070701`).
//!
//! Reproducible by construction: entries are written sorted by path (a parent sorts before its
//! children), every parent directory exists as an entry, times come from one fixed value
//! (`SOURCE_DATE_EPOCH` or 0), owners are root, and inode numbers are the entry's position.
//! Device nodes are plain entries, so no privilege is needed to write `/dev/console`.
//! Format: the kernel's `Documentation/driver-api/early-userspace/buffer-format.rst`.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::PathBuf;

const S_IFDIR: u32 = 0o040000;
const S_IFREG: u32 = 0o100000;
const S_IFCHR: u32 = 0o020000;
const S_IFLNK: u32 = 0o120000;

/// Where a regular file's bytes come from.
#[derive(Debug, Clone)]
pub enum Data {
    Bytes(Vec<u8>),
    /// Read when the archive is written; its length is taken then, too.
    Path(PathBuf),
}

#[derive(Debug, Clone)]
enum Kind {
    Dir,
    File(Data),
    CharDev { major: u32, minor: u32 },
    Symlink(String),
}

#[derive(Debug, Clone)]
struct Entry {
    perm: u32,
    kind: Kind,
}

/// An initramfs being assembled. Paths are relative to the root, without a leading `/`
/// (one is stripped if given).
#[derive(Debug, Clone, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
    mtime: u32,
}

fn clean(path: &str) -> io::Result<String> {
    let p = path.trim_start_matches('/').trim_end_matches('/');
    let bad = p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..") || p.contains('\0');
    if bad {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("bad path in archive: {path:?}")));
    }
    Ok(p.to_string())
}

impl Archive {
    /// An empty archive whose entries carry `mtime` (seconds since the epoch).
    pub fn new(mtime: u32) -> Self {
        Archive { entries: BTreeMap::new(), mtime }
    }

    /// The mtime to use: `SOURCE_DATE_EPOCH` when set and valid, else 0.
    pub fn mtime_from_env() -> u32 {
        std::env::var("SOURCE_DATE_EPOCH").ok().and_then(|s| s.trim().parse::<u32>().ok()).unwrap_or(0)
    }

    fn insert(&mut self, path: &str, perm: u32, kind: Kind) -> io::Result<()> {
        let p = clean(path)?;
        // Every ancestor becomes a directory entry unless it exists already.
        let mut end = 0;
        while let Some(i) = p[end..].find('/') {
            let parent = &p[..end + i];
            match self.entries.get(parent) {
                Some(Entry { kind: Kind::Dir, .. }) => {}
                Some(_) => {
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidInput,
                        format!("{parent} is not a directory, cannot hold {p}"),
                    ))
                }
                None => {
                    self.entries.insert(parent.to_string(), Entry { perm: 0o755, kind: Kind::Dir });
                }
            }
            end += i + 1;
        }
        if let Some(old) = self.entries.get(&p) {
            // Re-adding a directory is harmless; anything else replacing an entry is a bug.
            if matches!((&old.kind, &kind), (Kind::Dir, Kind::Dir)) {
                self.entries.insert(p, Entry { perm, kind });
                return Ok(());
            }
            return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{p} is already in the archive")));
        }
        self.entries.insert(p, Entry { perm, kind });
        Ok(())
    }

    pub fn dir(&mut self, path: &str, perm: u32) -> io::Result<()> {
        self.insert(path, perm & 0o7777, Kind::Dir)
    }

    pub fn file(&mut self, path: &str, perm: u32, data: Data) -> io::Result<()> {
        self.insert(path, perm & 0o7777, Kind::File(data))
    }

    pub fn char_dev(&mut self, path: &str, perm: u32, major: u32, minor: u32) -> io::Result<()> {
        self.insert(path, perm & 0o7777, Kind::CharDev { major, minor })
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> io::Result<()> {
        self.insert(path, 0o777, Kind::Symlink(target.to_string()))
    }

    /// Number of entries (directories included, trailer excluded).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Writes the archive, trailer included, and returns the bytes written.
    pub fn write_to<W: Write>(&self, w: W) -> io::Result<u64> {
        let mut w = Counting { inner: w, n: 0 };
        let mut buf = vec![0u8; 256 * 1024];
        for (i, (path, e)) in self.entries.iter().enumerate() {
            // Inode 0 is avoided; numbers follow the sorted order, so they are stable.
            let ino = i as u32 + 1;
            match &e.kind {
                Kind::Dir => write_header(&mut w, path, ino, S_IFDIR | e.perm, 2, self.mtime, 0, (0, 0))?,
                Kind::CharDev { major, minor } => {
                    write_header(&mut w, path, ino, S_IFCHR | e.perm, 1, self.mtime, 0, (*major, *minor))?
                }
                Kind::Symlink(target) => {
                    let len = size32(target.len() as u64, path)?;
                    write_header(&mut w, path, ino, S_IFLNK | e.perm, 1, self.mtime, len, (0, 0))?;
                    w.write_all(target.as_bytes())?;
                    pad(&mut w, target.len() as u64)?;
                }
                Kind::File(Data::Bytes(b)) => {
                    let len = size32(b.len() as u64, path)?;
                    write_header(&mut w, path, ino, S_IFREG | e.perm, 1, self.mtime, len, (0, 0))?;
                    w.write_all(b)?;
                    pad(&mut w, b.len() as u64)?;
                }
                Kind::File(Data::Path(src)) => {
                    let mut f =
                        File::open(src).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", src.display())))?;
                    let want = f.metadata()?.len();
                    let len = size32(want, path)?;
                    write_header(&mut w, path, ino, S_IFREG | e.perm, 1, self.mtime, len, (0, 0))?;
                    let mut copied = 0u64;
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        copied += n as u64;
                        if copied > want {
                            break;
                        }
                        w.write_all(&buf[..n])?;
                    }
                    if copied != want {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            format!("{} changed size while being archived", src.display()),
                        ));
                    }
                    pad(&mut w, want)?;
                }
            }
        }
        write_header(&mut w, "TRAILER!!!", 0, 0, 1, 0, 0, (0, 0))?;
        w.flush()?;
        Ok(w.n)
    }
}

fn size32(n: u64, path: &str) -> io::Result<u32> {
    u32::try_from(n).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{path} is too large for cpio")))
}

#[allow(clippy::too_many_arguments)]
fn write_header<W: Write>(
    w: &mut Counting<W>,
    name: &str,
    ino: u32,
    mode: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    rdev: (u32, u32),
) -> io::Result<()> {
    let namesize = name.len() as u32 + 1;
    let fields = [ino, mode, 0, 0, nlink, mtime, filesize, 0, 0, rdev.0, rdev.1, namesize, 0];
    let mut h = String::with_capacity(110);
    h.push_str("070701");
    for f in fields {
        h.push_str(&format!("{f:08x}"));
    }
    debug_assert_eq!(h.len(), 110);
    w.write_all(h.as_bytes())?;
    w.write_all(name.as_bytes())?;
    w.write_all(&[0])?;
    // Header plus name is padded to a multiple of 4.
    pad(w, 110 + namesize as u64)
}

fn pad<W: Write>(w: &mut W, len: u64) -> io::Result<()> {
    let n = (4 - (len % 4) as usize) % 4;
    w.write_all(&[0u8; 3][..n])
}

struct Counting<W> {
    inner: W,
    n: u64,
}

impl<W: Write> Write for Counting<W> {
    fn write(&mut self, b: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(b)?;
        self.n += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::{Command, Stdio};

    fn sample(dir: &std::path::Path) -> Archive {
        let big = dir.join("big.bin");
        std::fs::write(&big, (0..100_003u32).map(|i| (i * 7) as u8).collect::<Vec<_>>()).unwrap();
        let mut a = Archive::new(1_700_000_000);
        a.file("init", 0o755, Data::Bytes(b"#!/bin/sh\necho hi\n".to_vec())).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        a.char_dev("dev/null", 0o666, 1, 3).unwrap();
        for d in ["proc", "sys", "run", "tmp", "etc", "mnt"] {
            a.dir(d, 0o755).unwrap();
        }
        a.dir("tmp", 0o1777).unwrap();
        a.file("/lib/modules/6.1.0-x/kernel/drivers/a-b.ko", 0o644, Data::Path(big)).unwrap();
        a.file("etc/ferry/build.json", 0o644, Data::Bytes(b"{}".to_vec())).unwrap();
        a.file("etc/empty", 0o644, Data::Bytes(vec![])).unwrap();
        a.symlink("bin/sh", "/init").unwrap();
        a
    }

    #[test]
    fn layout_is_newc_and_sorted() {
        let t = tempfile::tempdir().unwrap();
        let a = sample(t.path());
        let mut out = vec![];
        let n = a.write_to(&mut out).unwrap();
        assert_eq!(n as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        assert!(out.starts_with(b"070701"));
        // Parents were created, and come before their children.
        let text = String::from_utf8_lossy(&out);
        let lib = text.find("lib\0").unwrap();
        let modules = text.find("lib/modules\0").unwrap();
        let ko = text.find("a-b.ko\0").unwrap();
        assert!(lib < modules && modules < ko);
        assert!(text.contains("TRAILER!!!\0"));
        // The device node header: mode 020600, rdev 5:1.
        let i = text.find("dev/console\0").unwrap();
        let h = &text[i - 110..i];
        assert_eq!(&h[14..22], "00002180");
        assert_eq!(&h[78..86], "00000005");
        assert_eq!(&h[86..94], "00000001");
    }

    #[test]
    fn rejects_bad_paths_and_duplicates() {
        let mut a = Archive::new(0);
        assert!(a.dir("../x", 0o755).is_err());
        assert!(a.dir("a//b", 0o755).is_err());
        assert!(a.dir("/", 0o755).is_err());
        a.file("x", 0o644, Data::Bytes(vec![])).unwrap();
        assert!(a.file("x", 0o644, Data::Bytes(vec![])).is_err());
        assert!(a.file("x/y", 0o644, Data::Bytes(vec![])).is_err());
    }

    #[test]
    fn reproducible() {
        let t = tempfile::tempdir().unwrap();
        let mut one = vec![];
        sample(t.path()).write_to(&mut one).unwrap();
        // Built again, entries added in another order.
        let mut b = Archive::new(1_700_000_000);
        b.symlink("bin/sh", "/init").unwrap();
        b.file("etc/empty", 0o644, Data::Bytes(vec![])).unwrap();
        b.file("etc/ferry/build.json", 0o644, Data::Bytes(b"{}".to_vec())).unwrap();
        b.file("lib/modules/6.1.0-x/kernel/drivers/a-b.ko", 0o644, Data::Path(t.path().join("big.bin"))).unwrap();
        b.dir("tmp", 0o1777).unwrap();
        for d in ["mnt", "etc", "run", "sys", "proc"] {
            b.dir(d, 0o755).unwrap();
        }
        b.char_dev("dev/null", 0o666, 1, 3).unwrap();
        b.char_dev("dev/console", 0o600, 5, 1).unwrap();
        b.file("init", 0o755, Data::Bytes(b"#!/bin/sh\necho hi\n".to_vec())).unwrap();
        let mut two = vec![];
        b.write_to(&mut two).unwrap();
        assert!(one == two, "two builds of the same input differ");
    }

    #[test]
    fn gnu_cpio_reads_it() {
        if Command::new("cpio").arg("--version").stdout(Stdio::null()).status().is_err() {
            eprintln!("skipping: GNU cpio is not installed (apt-get install cpio)");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        let a = sample(t.path());
        let arc = t.path().join("a.cpio");
        a.write_to(std::io::BufWriter::new(File::create(&arc).unwrap())).unwrap();

        let list = Command::new("cpio").args(["-t", "--quiet", "-F"]).arg(&arc).output().unwrap();
        assert!(list.status.success(), "{}", String::from_utf8_lossy(&list.stderr));
        let names: Vec<String> = String::from_utf8_lossy(&list.stdout).lines().map(str::to_string).collect();
        assert_eq!(names.first().map(String::as_str), Some("bin"));
        for want in ["init", "dev/console", "dev/null", "lib/modules/6.1.0-x/kernel/drivers/a-b.ko", "tmp", "bin/sh"] {
            assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
        }
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);

        // Extract (device nodes need privilege: -i without them still checks every body).
        let x = t.path().join("x");
        std::fs::create_dir(&x).unwrap();
        let ex = Command::new("cpio")
            .args(["-idv", "--quiet", "--no-absolute-filenames", "-F"])
            .arg(&arc)
            .current_dir(&x)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&ex.stderr);
        if !ex.status.success() {
            // Only the device nodes may fail (no root, or no CAP_MKNOD in a container).
            let other = err.lines().filter(|l| !l.trim().is_empty() && !l.contains("dev/")).count();
            assert_eq!(other, 0, "cpio -i failed: {err}");
        }
        if x.join("dev/console").exists() {
            use std::os::unix::fs::FileTypeExt;
            let md = std::fs::metadata(x.join("dev/console")).unwrap();
            assert!(md.file_type().is_char_device());
            use std::os::unix::fs::MetadataExt;
            assert_eq!((nix::sys::stat::major(md.rdev()), nix::sys::stat::minor(md.rdev())), (5, 1));
        }
        assert_eq!(std::fs::read(x.join("init")).unwrap(), b"#!/bin/sh\necho hi\n");
        assert_eq!(
            std::fs::read(x.join("lib/modules/6.1.0-x/kernel/drivers/a-b.ko")).unwrap(),
            std::fs::read(t.path().join("big.bin")).unwrap()
        );
        assert_eq!(std::fs::read(x.join("etc/empty")).unwrap(), b"");
        assert_eq!(std::fs::read_link(x.join("bin/sh")).unwrap(), std::path::Path::new("/init"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(x.join("init")).unwrap().permissions().mode() & 0o7777, 0o755);
        assert_eq!(std::fs::metadata(x.join("tmp")).unwrap().permissions().mode() & 0o7777, 0o1777);
    }
}
