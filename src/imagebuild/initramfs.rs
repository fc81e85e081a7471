//! The initramfs: ferry as /init, the drivers of `initrd/modules.list` closed over their
//! dependencies, their index and a record of the build, as one zstd frame.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use super::cpio::{Archive, Data};
use super::{kernel, modules, step};
use crate::boot::files as names;

/// Stays under this, or the image is too slow to load over TFTP and too big for some firmware.
const INITRD_GOAL: u64 = 32 << 20;
/// zstd level for the initramfs unless `FERRY_ZSTD_LEVEL` says otherwise. Measured on the
/// Debian 12 kernel's 94 modules + ferry (38 MB of cpio, 2 cores): level 9 gives 10.5 MB in
/// 2 s, level 19 gives 9.4 MB in 35 s; the kernel unpacks either equally fast. 9 keeps test
/// builds quick; image-build/build.sh asks for 19 for release media.
const ZSTD_LEVEL: i32 = 9;

fn zstd_level() -> i32 {
    match std::env::var("FERRY_ZSTD_LEVEL").ok().map(|s| s.trim().parse::<i32>()) {
        Some(Ok(l)) if (1..=19).contains(&l) => l,
        Some(_) => {
            log::warn!("FERRY_ZSTD_LEVEL must be a number from 1 to 19; using {ZSTD_LEVEL}");
            ZSTD_LEVEL
        }
        None => ZSTD_LEVEL,
    }
}

/// Everything the initramfs holds; `stage` receives decompressed modules if the kernel's are
/// compressed.
fn assemble(init: &Path, kernel: &kernel::Kernel, stage: &Path, mtime: u32) -> Result<(Archive, modules::Shipped)> {
    let wanted = modules::parse_list(modules::MODULES_LIST);
    let load = modules::parse_list(modules::MODULES_LOAD_LIST);
    let shipped = modules::ship(&kernel.moddir, stage, &wanted, &load)?;
    for m in &shipped.missing {
        log::warn!("kernel {} has no module {m} (listed in initrd/modules.list); skipped", kernel.version);
    }
    let mut a = Archive::new(mtime);
    a.file("init", 0o755, Data::Path(init.to_path_buf()))?;
    a.dir("dev", 0o755)?;
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.char_dev("dev/null", 0o666, 1, 3)?;
    for d in ["proc", "sys", "run", "etc", "mnt", "root"] {
        a.dir(d, 0o755)?;
    }
    a.dir("tmp", 0o1777)?;
    let base = format!("lib/modules/{}", kernel.version);
    for (rel, host) in &shipped.files {
        a.file(&format!("{base}/{rel}"), 0o644, Data::Path(host.clone()))?;
    }
    for (name, text) in &shipped.index {
        a.file(&format!("{base}/{name}"), 0o644, Data::Bytes(text.clone().into_bytes()))?;
    }
    a.file("etc/ferry/modules-load", 0o644, Data::Bytes(shipped.load.clone().into_bytes()))?;
    let mut init_hash = blake3::Hasher::new();
    init_hash.update_reader(File::open(init)?)?;
    let info = serde_json::json!({
        "kernel_version": kernel.version,
        "ferry_version": env!("CARGO_PKG_VERSION"),
        "modules": shipped.modules.len(),
        "init_blake3": init_hash.finalize().to_hex().to_string(),
        "kernel_package": kernel.deb.file_name().map(|n| n.to_string_lossy().into_owned()),
        "source_date_epoch": mtime,
    });
    let mut json = serde_json::to_vec_pretty(&info)?;
    json.push(b'\n');
    a.file("etc/ferry/build.json", 0o644, Data::Bytes(json))?;
    Ok((a, shipped))
}

/// Writes the archive zstd-compressed as one frame with its content size, atomically.
fn write_initrd(a: &Archive, out: &Path, level: i32) -> Result<u64> {
    let mut raw = Vec::with_capacity(128 << 20);
    a.write_to(&mut raw)?;
    let tmp = out.with_extension("img.tmp");
    {
        let f = BufWriter::new(File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?);
        let mut enc = zstd::stream::Encoder::new(f, level)?;
        enc.include_checksum(true)?;
        enc.include_contentsize(true)?;
        enc.set_pledged_src_size(Some(raw.len() as u64))?;
        enc.write_all(&raw)?;
        let mut f = enc.finish()?;
        f.flush()?;
        f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    }
    fs::rename(&tmp, out)?;
    Ok(fs::metadata(out)?.len())
}

/// The initramfs: ferry as /init, the drivers, their index; written as `initrd.img`.
pub fn build_initramfs(
    init: &Path,
    kernel: &kernel::Kernel,
    work: &Path,
    out: &Path,
    mtime: u32,
) -> Result<(PathBuf, u64, modules::Shipped)> {
    let (archive, shipped) = assemble(init, kernel, &work.join("modules"), mtime)?;
    step(format!(
        "initramfs: /init = {}, {} modules ({} requested names missing, built in: {})",
        init.display(),
        shipped.modules.len(),
        shipped.missing.len(),
        if shipped.builtin.is_empty() { "none".to_string() } else { shipped.builtin.join(" ") }
    ));
    let initrd = out.join(names::INITRD);
    let t = Instant::now();
    let level = zstd_level();
    let initrd_bytes = write_initrd(&archive, &initrd, level)?;
    step(format!(
        "initramfs: {} ({} bytes, zstd -{level} in {:.1} s)",
        initrd.display(),
        initrd_bytes,
        t.elapsed().as_secs_f64()
    ));
    if initrd_bytes > INITRD_GOAL {
        log::warn!("initrd.img is {initrd_bytes} bytes, over the 32 MiB goal: trim initrd/modules.list or the binary");
    }
    Ok((initrd, initrd_bytes, shipped))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_is_one_zstd_frame_and_reproducible() {
        let t = tempfile::tempdir().unwrap();
        let mut a = Archive::new(0);
        a.file("init", 0o755, Data::Bytes(vec![1, 2, 3])).unwrap();
        a.char_dev("dev/console", 0o600, 5, 1).unwrap();
        let (p1, p2) = (t.path().join("1.img"), t.path().join("2.img"));
        write_initrd(&a, &p1, 9).unwrap();
        write_initrd(&a.clone(), &p2, 9).unwrap();
        let (b1, b2) = (fs::read(&p1).unwrap(), fs::read(&p2).unwrap());
        assert_eq!(b1, b2);
        assert_eq!(&b1[..4], &[0x28, 0xb5, 0x2f, 0xfd]);
        let raw = zstd::decode_all(&b1[..]).unwrap();
        let mut direct = vec![];
        a.write_to(&mut direct).unwrap();
        assert_eq!(raw, direct);
        // One frame: its compressed size is the whole file.
        assert_eq!(zstd::zstd_safe::find_frame_compressed_size(&b1).unwrap(), b1.len());
    }
}
