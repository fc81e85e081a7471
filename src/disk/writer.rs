//! Opening a target disk for writing: the only place ferry writes to a disk.
//!
//! A block device is opened with O_EXCL, so the kernel refuses while any of it is mounted or
//! held by another exclusive user, and its kernel read-only flag (which the live image sets on
//! every disk at boot) is cleared only here, after every precondition held.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::ioctl;

pub struct DiskWriter {
    path: PathBuf,
    file: File,
    size: u64,
    is_block_device: bool,
}

impl DiskWriter {
    pub fn open(path: &Path) -> Result<Self> {
        let meta = std::fs::metadata(path).with_context(|| format!("opening {}", path.display()))?;
        let is_block_device = meta.file_type().is_block_device();
        if !is_block_device && !meta.is_file() {
            bail!("{} is neither a block device nor a regular file", path.display());
        }
        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if is_block_device {
            opts.custom_flags(libc::O_EXCL);
        }
        let file = opts.open(path).map_err(|e| {
            if e.raw_os_error() == Some(libc::EBUSY) {
                anyhow::anyhow!("{} is in use (mounted, or part of a RAID or LVM volume)", path.display())
            } else {
                anyhow::Error::from(e).context(format!("opening {} for writing", path.display()))
            }
        })?;
        let size = if is_block_device {
            if ioctl::is_read_only(&file).unwrap_or(false) {
                ioctl::set_read_only(&file, false)
                    .with_context(|| format!("clearing the kernel read-only flag of {}", path.display()))?;
            }
            ioctl::size_bytes(&file).with_context(|| format!("reading the size of {}", path.display()))?
        } else {
            meta.len()
        };
        Ok(Self { path: path.to_owned(), file, size, is_block_device })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
    pub fn size(&self) -> u64 {
        self.size
    }

    pub fn write_at(&self, data: &[u8], offset: u64) -> Result<()> {
        if offset + data.len() as u64 > self.size {
            bail!(
                "{}: a write at {offset} of {} bytes would pass the end ({})",
                self.path.display(),
                data.len(),
                self.size
            );
        }
        self.file
            .write_all_at(data, offset)
            .with_context(|| format!("{}: I/O error writing at byte offset {offset}", self.path.display()))
    }

    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> Result<()> {
        self.file
            .read_exact_at(buf, offset)
            .with_context(|| format!("{}: reading at byte offset {offset}", self.path.display()))
    }

    /// Writes zeros over `len` bytes from `offset`, in pieces of at most 1 MiB.
    pub fn zero(&self, offset: u64, len: u64) -> Result<()> {
        let zeros = vec![0u8; len.min(1 << 20) as usize];
        let mut done = 0;
        while done < len {
            let n = (len - done).min(zeros.len() as u64);
            self.write_at(&zeros[..n as usize], offset + done)?;
            done += n;
        }
        Ok(())
    }

    /// Makes every write durable, then drops the kernel's cached copy of the disk so that a
    /// read-back reads the medium, not the page cache the writes went through.
    pub fn sync_and_drop_cache(&self) -> Result<()> {
        self.file.sync_all().with_context(|| format!("flushing writes to {}", self.path.display()))?;
        if self.is_block_device {
            ioctl::flush_buffers(&self.file)
                .with_context(|| format!("dropping the buffer cache of {}", self.path.display()))?;
        } else {
            use std::os::fd::AsRawFd;
            // SAFETY: valid fd; posix_fadvise does not touch memory. Only a hint for files.
            unsafe {
                libc::posix_fadvise(self.file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED);
            }
        }
        Ok(())
    }

    /// Leaves the disk without a partition table a firmware or kernel would use: zeros over the
    /// first and the last MiB (MBR, primary GPT, and a backup GPT at the end). Called before
    /// the first chunk is written and again when anything fails after that.
    pub fn clear_tables(&self) -> io::Result<()> {
        let span = self.size.min(1 << 20);
        for offset in [0, self.size - span] {
            self.zero(offset, span).map_err(|e| io::Error::other(format!("{e:#}")))?;
        }
        self.file.sync_all()
    }
}
