//! Block-device ioctls (numbers from `include/uapi/linux/fs.h`).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;

mod raw {
    nix::ioctl_read!(blkgetsize64, 0x12, 114, u64);
    nix::ioctl_read_bad!(blksszget, nix::request_code_none!(0x12, 104), libc::c_int);
    nix::ioctl_read_bad!(blkpbszget, nix::request_code_none!(0x12, 123), libc::c_uint);
    nix::ioctl_write_ptr_bad!(blkroset, nix::request_code_none!(0x12, 93), libc::c_int);
    nix::ioctl_read_bad!(blkroget, nix::request_code_none!(0x12, 94), libc::c_int);
    nix::ioctl_none!(blkflsbuf, 0x12, 97);
}

/// Size of a block device in bytes (BLKGETSIZE64).
pub fn size_bytes(file: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: the fd is open for the duration of the call and `size` is a valid u64 the kernel
    // writes into.
    unsafe { raw::blkgetsize64(file.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Logical sector size (BLKSSZGET).
pub fn logical_sector_size(file: &File) -> io::Result<u32> {
    let mut v: libc::c_int = 0;
    // SAFETY: valid fd, and `v` is a valid int for the kernel to write.
    unsafe { raw::blksszget(file.as_raw_fd(), &mut v) }?;
    Ok(v as u32)
}

/// Physical sector size (BLKPBSZGET).
pub fn physical_sector_size(file: &File) -> io::Result<u32> {
    let mut v: libc::c_uint = 0;
    // SAFETY: valid fd, and `v` is a valid unsigned int for the kernel to write.
    unsafe { raw::blkpbszget(file.as_raw_fd(), &mut v) }?;
    Ok(v)
}

/// Sets or clears the kernel's read-only flag on the device (BLKROSET). Needs CAP_SYS_ADMIN.
pub fn set_read_only(file: &File, read_only: bool) -> io::Result<()> {
    let v: libc::c_int = read_only.into();
    // SAFETY: valid fd; BLKROSET reads one int through the pointer, which outlives the call.
    unsafe { raw::blkroset(file.as_raw_fd(), &v) }?;
    Ok(())
}

/// Reads the kernel's read-only flag (BLKROGET).
pub fn is_read_only(file: &File) -> io::Result<bool> {
    let mut v: libc::c_int = 0;
    // SAFETY: valid fd, and `v` is a valid int for the kernel to write.
    unsafe { raw::blkroget(file.as_raw_fd(), &mut v) }?;
    Ok(v != 0)
}

/// Drops the device's buffer cache so reads come from the device (BLKFLSBUF).
pub fn flush_buffers(file: &File) -> io::Result<()> {
    // SAFETY: valid fd; BLKFLSBUF takes no argument.
    unsafe { raw::blkflsbuf(file.as_raw_fd()) }?;
    Ok(())
}
