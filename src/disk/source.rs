//! Opening a disk or a disk image for reading, with its real size and sector sizes.

use std::fs::File;
use std::io;
use std::ops::Range;
use std::os::unix::fs::{FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, OnceLock};

use anyhow::{bail, Context, Result};

use super::ioctl;
use super::rescue::{self, BadRange, BadSectors};

/// A disk or image opened read-only. Reads name the path and offset when they fail.
#[derive(Debug)]
pub struct DiskReader {
    path: PathBuf,
    file: File,
    size: u64,
    logical_sector_size: u32,
    physical_sector_size: u32,
    is_block_device: bool,
    /// What a chunk read that fails does: fail, or (true) read around the failing sectors.
    record_bad_sectors: AtomicBool,
    /// The ranges given up so far (with [`BadSectors::Record`]), in no order.
    given_up: Mutex<Vec<BadRange>>,
    /// A second handle that bypasses the page cache, opened at the first failed read: through
    /// the cache a failing sector fails the whole page around it.
    direct: OnceLock<Option<File>>,
    /// Used-blocks mode: ranges never read, zeros in every chunk (sorted, disjoint).
    skip: OnceLock<Vec<Range<u64>>>,
}

impl DiskReader {
    /// Opens `path` with O_RDONLY. A block device reports its size with BLKGETSIZE64 and its
    /// sector sizes with BLKSSZGET/BLKPBSZGET; an image file uses `sector_size` when given,
    /// otherwise detects it from where a GPT header sits (512 unless one is found at 4096).
    pub fn open(path: &Path, sector_size: Option<u32>) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("opening {}", path.display()))?;
        if meta.is_dir() {
            bail!("{} is a directory, not a disk or disk image", path.display());
        }
        let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let ft = meta.file_type();
        if ft.is_block_device() {
            let size = ioctl::size_bytes(&file).with_context(|| format!("reading the size of {}", path.display()))?;
            let logical = ioctl::logical_sector_size(&file)
                .with_context(|| format!("reading the sector size of {}", path.display()))?;
            let physical = ioctl::physical_sector_size(&file).unwrap_or(logical);
            if let Some(given) = sector_size {
                if given != logical {
                    bail!(
                        "{} has {logical}-byte logical sectors; --sector-size {given} does not apply to a block device",
                        path.display()
                    );
                }
            }
            advise_sequential(&file);
            return Ok(Self {
                path: path.to_owned(),
                file,
                size,
                logical_sector_size: logical,
                physical_sector_size: physical.max(logical),
                is_block_device: true,
                record_bad_sectors: AtomicBool::new(false),
                given_up: Mutex::default(),
                direct: OnceLock::new(),
                skip: OnceLock::new(),
            });
        }
        if !ft.is_file() {
            bail!("{} is neither a block device nor a regular file", path.display());
        }
        let size = meta.len();
        let logical = match sector_size {
            Some(s) => {
                if s != 512 && s != 4096 {
                    bail!("--sector-size must be 512 or 4096, not {s}");
                }
                s
            }
            None => detect_sector_size(&file, size).with_context(|| format!("reading {}", path.display()))?,
        };
        advise_sequential(&file);
        Ok(Self {
            path: path.to_owned(),
            file,
            size,
            logical_sector_size: logical,
            physical_sector_size: logical,
            is_block_device: false,
            record_bad_sectors: AtomicBool::new(false),
            given_up: Mutex::default(),
            direct: OnceLock::new(),
            skip: OnceLock::new(),
        })
    }

    /// Reads chunks with `policy` for sectors that fail (see [`DiskReader::read_chunk_at`]).
    /// The source agent sets it once it knows the job's options, before the hashing pass.
    pub fn set_bad_sectors(&self, policy: BadSectors) {
        self.record_bad_sectors.store(policy == BadSectors::Record, Ordering::Relaxed);
    }

    /// Used-blocks mode: `ranges` (sorted, disjoint) are never read again by
    /// [`DiskReader::read_chunk_at`], which gives zeros for them. Set once, before the hashing
    /// pass; a second call changes nothing and says so.
    pub fn set_skip(&self, ranges: Vec<Range<u64>>) -> Result<()> {
        debug_assert!(ranges.windows(2).all(|w| w[0].end <= w[1].start));
        if !ranges.is_empty() {
            advise_random(&self.file);
        }
        self.skip
            .set(ranges)
            .map_err(|_| anyhow::anyhow!("{}: the ranges to skip were already set", self.path.display()))
    }

    /// Fills `buf` with the disk's bytes from `offset`, zeros where the ranges to skip are
    /// (used-blocks mode), sectors that fail handled as [`DiskReader::read_span_at`] does.
    pub fn read_chunk_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let skip = self.skip.get().map(Vec::as_slice).unwrap_or_default();
        let end = offset + buf.len() as u64;
        if !self.is_block_device && no_data_in(&self.file, offset, end) {
            // A hole of a sparse image file reads as zeros; reading it costs the kernel a
            // zeroed page per 4 KiB all the same (measured: 43 s of system time for 32 GiB).
            buf.fill(0);
            return Ok(());
        }
        // The first range that ends after `offset`: the only ones that can meet this chunk.
        let first = skip.partition_point(|r| r.end <= offset);
        let mut at = offset;
        for r in skip[first..].iter().take_while(|r| r.start < end) {
            let (gap_start, gap_end) = (r.start.max(offset), r.end.min(end));
            if gap_start > at {
                self.read_span_at(&mut buf[(at - offset) as usize..(gap_start - offset) as usize], at)?;
            }
            buf[(gap_start - offset) as usize..(gap_end - offset) as usize].fill(0);
            at = gap_end;
        }
        if at < end {
            self.read_span_at(&mut buf[(at - offset) as usize..], at)?;
        }
        Ok(())
    }

    /// Fills `buf` from `offset` like [`DiskReader::read_exact_at`]; but with
    /// [`BadSectors::Record`], an I/O error is read around (`rescue`): the sectors that still
    /// fail are left zero and recorded, and the read succeeds.
    fn read_span_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let err = match self.read_exact_at(buf, offset) {
            Ok(()) => return Ok(()),
            Err(e) => e,
        };
        // Only a medium error is read around: a disk that is gone (unplugged, its controller
        // reset) is not a disk of zeros.
        let medium_error = err.downcast_ref::<ReadFailure>().is_some_and(|f| match &f.kind {
            ReadFailureKind::Io(e) => !matches!(e.raw_os_error(), Some(libc::ENODEV | libc::ENXIO | libc::ENOMEDIUM)),
            _ => false,
        });
        if !self.record_bad_sectors.load(Ordering::Relaxed) || !medium_error {
            return Err(err);
        }
        log::warn!("{err:#}: reading around the sectors that fail");
        let sector = self.logical_sector_size as usize;
        let given_up = rescue::read_around_failures(buf, offset, sector, |b, at| self.read_sectors_at(b, at));
        for r in &given_up {
            log::warn!(
                "{}: {} bytes at offset {} cannot be read; sent as zeros",
                self.path.display(),
                r.length,
                r.offset
            );
        }
        let mut all = self.given_up.lock().unwrap_or_else(|p| p.into_inner());
        all.extend(given_up);
        let total: u64 = all.iter().map(|r| r.length).sum();
        let cap = rescue::most_given_up(self.size);
        if total > cap {
            let kind = ReadFailureKind::FailingBadly { given_up: total, cap };
            return Err(ReadFailure { path: self.path.clone(), offset, kind }.into());
        }
        Ok(())
    }

    /// The ranges given up so far, in order and merged.
    pub fn bad_ranges(&self) -> Vec<BadRange> {
        rescue::merge(self.given_up.lock().unwrap_or_else(|p| p.into_inner()).clone())
    }

    /// One small read for `rescue`, past the page cache when the disk allows it.
    fn read_sectors_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let direct = self.direct.get_or_init(|| {
            use std::os::unix::fs::OpenOptionsExt;
            std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(&self.path).ok()
        });
        match direct {
            Some(f) => {
                // O_DIRECT wants a buffer aligned to the sector size: read through one.
                let mut aligned = rescue::AlignedBuf::new(buf.len());
                match f.read_exact_at(aligned.as_mut_slice(), offset) {
                    Ok(()) => {
                        buf.copy_from_slice(aligned.as_mut_slice());
                        Ok(())
                    }
                    // An image file's short last sector cannot be read past the cache.
                    Err(e) if e.raw_os_error() == Some(libc::EINVAL) => self.file.read_exact_at(buf, offset),
                    Err(e) => Err(e),
                }
            }
            None => self.file.read_exact_at(buf, offset),
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The first `size` bytes only: a target disk larger than the source is read back over the
    /// source's size, so its hash can be compared with the source's whole-disk hash.
    pub fn limited_to(mut self, size: u64) -> Result<Self> {
        if size > self.size {
            bail!("{} is {} bytes; it cannot be read as {size} bytes", self.path.display(), self.size);
        }
        self.size = size;
        Ok(self)
    }
    pub fn file(&self) -> &File {
        &self.file
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn logical_sector_size(&self) -> u32 {
        self.logical_sector_size
    }
    pub fn physical_sector_size(&self) -> u32 {
        self.physical_sector_size
    }
    pub fn is_block_device(&self) -> bool {
        self.is_block_device
    }

    /// Fills `buf` from `offset`. A read that ends early (the device shrank or vanished) and an
    /// I/O error are both a [`ReadFailure`], naming the path and the offset.
    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        let mut done = 0usize;
        while done < buf.len() {
            let at = offset + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => {
                    let kind = ReadFailureKind::Ended { opened_size: self.size };
                    return Err(ReadFailure { path: self.path.clone(), offset: at, kind }.into());
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let kind = ReadFailureKind::Io(e);
                    return Err(ReadFailure { path: self.path.clone(), offset: at, kind }.into());
                }
            }
        }
        Ok(())
    }

    /// A `Read + Seek` view for the partition-table crates (which also insist on `Write`; every
    /// write fails).
    pub fn cursor(&self) -> ReadCursor<'_> {
        ReadCursor { disk: self, pos: 0 }
    }
}

/// A disk could not be read: the disk's fault (a failing disk or cable, a disk removed), not
/// the network's. Callers tell the technician so by this type, not by its words.
#[derive(Debug)]
pub struct ReadFailure {
    pub path: PathBuf,
    pub offset: u64,
    pub kind: ReadFailureKind,
}

#[derive(Debug)]
pub enum ReadFailureKind {
    Io(io::Error),
    Ended {
        opened_size: u64,
    },
    /// Recording bad sectors, more bytes failed than a copy worth making may lack.
    FailingBadly {
        given_up: u64,
        cap: u64,
    },
}

impl std::fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (path, at) = (self.path.display(), self.offset);
        match &self.kind {
            ReadFailureKind::Io(_) => write!(f, "{path}: I/O error reading at byte offset {at}"),
            ReadFailureKind::Ended { opened_size } => write!(
                f,
                "{path}: the disk ended at byte {at}, but it was {opened_size} bytes when opened (removed or resized?)"
            ),
            ReadFailureKind::FailingBadly { given_up, cap } => write!(
                f,
                "{path}: {given_up} bytes cannot be read by byte offset {at}, more than the {cap} a copy may lack: the disk is failing badly; image it with ddrescue onto a healthy disk and migrate that"
            ),
        }
    }
}

impl std::error::Error for ReadFailure {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            ReadFailureKind::Io(e) => Some(e),
            ReadFailureKind::Ended { .. } | ReadFailureKind::FailingBadly { .. } => None,
        }
    }
}

impl ReadFailure {
    /// Whether `e` (or what it wraps) is a disk that could not be read.
    pub fn in_chain(e: &anyhow::Error) -> bool {
        e.chain().any(|c| c.is::<ReadFailure>())
    }
}

fn advise_sequential(file: &File) {
    use std::os::fd::AsRawFd;
    // Only a hint: failure changes nothing but speed.
    // SAFETY: valid fd; posix_fadvise does not touch memory.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_SEQUENTIAL);
    }
}

/// Whether `offset..end` of a regular file is all hole: the file system says no data starts
/// there (SEEK_DATA, as cp and tar ask). Any doubt (a file system that does not say) is "data".
fn no_data_in(file: &File, offset: u64, end: u64) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(at) = libc::off_t::try_from(offset) else { return false };
    // SAFETY: valid fd; lseek only moves the file offset, which ferry never uses (every read
    // is a pread at its own offset).
    let data = unsafe { libc::lseek(file.as_raw_fd(), at, libc::SEEK_DATA) };
    if data < 0 {
        // ENXIO: no data at or after `offset`, up to the end of the file.
        return io::Error::last_os_error().raw_os_error() == Some(libc::ENXIO);
    }
    data as u64 >= end
}

/// Read-ahead off: with ranges skipped, the kernel's read-ahead past each used range reads
/// what was meant to be skipped (measured: 7% more bytes read on a quarter-full ext4 disk).
/// The hashing pass's reads are whole chunks, large enough without it.
fn advise_random(file: &File) {
    use std::os::fd::AsRawFd;
    // Only a hint: failure changes nothing but speed.
    // SAFETY: valid fd; posix_fadvise does not touch memory.
    unsafe {
        libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM);
    }
}

/// The sector size a GPT in an image file was written with: where its primary header sits (LBA 1:
/// byte 512 or 4096) or, when the primary is gone, where its backup sits (the last LBA of either
/// size). 512 when no GPT signature is at any of those places.
fn detect_sector_size(file: &File, size: u64) -> io::Result<u32> {
    let mut sig = [0u8; 8];
    let mut at = |off: u64| -> io::Result<bool> {
        if size < off + 8 {
            return Ok(false);
        }
        file.read_exact_at(&mut sig, off)?;
        Ok(&sig == b"EFI PART")
    };
    if at(512)? {
        return Ok(512);
    }
    if at(4096)? {
        return Ok(4096);
    }
    // No primary header: look for a backup header at the last LBA.
    for ss in [512u64, 4096] {
        let lbas = size / ss;
        if lbas >= 2 && at((lbas - 1) * ss)? {
            return Ok(ss as u32);
        }
    }
    Ok(512)
}

/// A seekable reader over a [`DiskReader`] that never writes.
#[derive(Debug)]
pub struct ReadCursor<'a> {
    disk: &'a DiskReader,
    pos: u64,
}

impl io::Read for ReadCursor<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.disk.file.read_at(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for ReadCursor<'_> {
    fn seek(&mut self, pos: io::SeekFrom) -> io::Result<u64> {
        let new = match pos {
            io::SeekFrom::Start(p) => Some(p),
            io::SeekFrom::End(d) => self.disk.size.checked_add_signed(d),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        self.pos =
            new.ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start of the disk"))?;
        Ok(self.pos)
    }
}

impl io::Write for ReadCursor<'_> {
    fn write(&mut self, _: &[u8]) -> io::Result<usize> {
        Err(io::Error::new(io::ErrorKind::PermissionDenied, "ferry never writes to a source disk"))
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bytes this thread has read through read(2)/pread(2) so far.
    fn rchar() -> u64 {
        let io = std::fs::read_to_string("/proc/thread-self/io").unwrap();
        io.lines().find_map(|l| l.strip_prefix("rchar: ")).unwrap().trim().parse().unwrap()
    }

    #[test]
    fn holes_of_a_sparse_image_are_zeros_without_being_read() {
        const CHUNK: usize = 1 << 20;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sparse.img");
        let f = File::create(&path).unwrap();
        f.set_len(64 * CHUNK as u64).unwrap();
        // Data in chunk 3 only (and across the start of chunk 10 and the end of chunk 9).
        f.write_all_at(&[7u8; 4096], 3 * CHUNK as u64 + 8192).unwrap();
        f.write_all_at(&[9u8; 8192], 10 * CHUNK as u64 - 4096).unwrap();
        f.sync_all().unwrap();
        let disk = DiskReader::open(&path, None).unwrap();
        let mut buf = vec![1u8; CHUNK];

        let before = rchar();
        for i in (20..64).map(|i| i as u64 * CHUNK as u64) {
            disk.read_chunk_at(&mut buf, i).unwrap();
            assert!(buf.iter().all(|&b| b == 0), "chunk at {i}");
        }
        assert!(rchar() - before < CHUNK as u64, "44 MiB of holes were read: {} bytes", rchar() - before);

        disk.read_chunk_at(&mut buf, 3 * CHUNK as u64).unwrap();
        assert_eq!(&buf[8192..8192 + 4096], &[7u8; 4096][..]);
        assert!(buf[..8192].iter().chain(&buf[8192 + 4096..]).all(|&b| b == 0));
        disk.read_chunk_at(&mut buf, 9 * CHUNK as u64).unwrap();
        assert_eq!(&buf[CHUNK - 4096..], &[9u8; 4096][..]);
        disk.read_chunk_at(&mut buf, 10 * CHUNK as u64).unwrap();
        assert_eq!(&buf[..4096], &[9u8; 4096][..]);
        assert!(buf[4096..].iter().all(|&b| b == 0));
    }
}
