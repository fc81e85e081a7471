//! The kernel: a Debian `linux-image-*-amd64` package, fetched once with apt into a cache,
//! unpacked there, with the `modules.dep`/`modules.alias` that depmod makes (the package ships
//! none).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::tools::{self, cmd};

/// An unpacked kernel package.
#[derive(Debug, Clone)]
pub struct Kernel {
    pub version: String,
    /// `boot/vmlinuz-VER` inside the unpacked tree.
    pub vmlinuz: PathBuf,
    /// `lib/modules/VER` inside the unpacked tree, with depmod's index files.
    pub moddir: PathBuf,
    /// The package file it came from.
    pub deb: PathBuf,
}

pub const DEFAULT_CACHE: &str = "/var/cache/ferry";
const META: &str = "linux-image-amd64";
/// Written last into an unpacked tree: a tree without it is incomplete and is redone.
const DONE: &str = ".ferry-unpacked";

/// The kernel package `linux-image-amd64` currently depends on, from `apt-cache depends`.
pub fn current_kernel_package() -> Result<String> {
    let parse = parse_depends;
    let first = tools::output(cmd("apt-cache").args(["depends", META])).unwrap_or_default();
    if let Some(p) = parse(&first) {
        return Ok(p);
    }
    // A fresh machine may have no package lists yet.
    tools::apt_update()?;
    let again = tools::output(cmd("apt-cache").args(["depends", META]))?;
    parse(&again).with_context(|| {
        format!("apt-cache depends {META} names no linux-image package; pass a kernel package with --kernel-deb")
    })
}

/// The `linux-image-*` package in `apt-cache depends` output (virtual `<...>` names skipped).
pub fn parse_depends(text: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(str::trim)
        .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
        .map(str::to_string)
}

/// The candidate version of a package, as apt would download it.
fn candidate_version(pkg: &str) -> Result<String> {
    let text = tools::output(cmd("apt-cache").args(["policy", pkg]))?;
    text.lines()
        .filter_map(|l| l.trim().strip_prefix("Candidate:"))
        .map(str::trim)
        .find(|v| !v.is_empty() && *v != "(none)")
        .map(str::to_string)
        .with_context(|| format!("apt has no candidate version of {pkg}"))
}

/// Fetches `pkg` into `cache` with `apt-get download`, unless the same version is there.
pub fn fetch(pkg: &str, cache: &Path) -> Result<PathBuf> {
    let version = candidate_version(pkg)?;
    // apt names the file PKG_VERSION_ARCH.deb with ':' (an epoch) escaped as %3a.
    let prefix = format!("{pkg}_{}_", version.replace(':', "%3a"));
    let find = |dir: &Path| -> Option<PathBuf> {
        let mut v: Vec<PathBuf> = fs::read_dir(dir)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                let n = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
                n.starts_with(&prefix) && n.ends_with(".deb")
            })
            .collect();
        v.sort();
        v.pop()
    };
    if let Some(p) = find(cache) {
        log::info!("using cached {}", p.display());
        return Ok(p);
    }
    fs::create_dir_all(cache).with_context(|| format!("creating the cache {}", cache.display()))?;
    // Download into a scratch directory and move the finished file into place, so an
    // interrupted download is never mistaken for a package.
    let tmp = cache.join(format!(".download-{}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    log::info!("downloading {pkg} {version} (about 70 MB) into {}", cache.display());
    let got = tools::run(cmd("apt-get").args(["download", "-q"]).arg(format!("{pkg}={version}")).current_dir(&tmp));
    if let Err(e) = got {
        let _ = fs::remove_dir_all(&tmp);
        return Err(e);
    }
    let file = find(&tmp).with_context(|| format!("apt-get download left no {prefix}*.deb"));
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    };
    let dst = cache.join(file.file_name().unwrap());
    fs::rename(&file, &dst)?;
    let _ = fs::remove_dir_all(&tmp);
    Ok(dst)
}

/// Unpacks a kernel package into `cache/<package file stem>/` (once) and runs depmod there.
pub fn unpack(deb: &Path, cache: &Path) -> Result<Kernel> {
    let stem = deb
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".deb").to_string())
        .with_context(|| format!("{} is not a package file", deb.display()))?;
    // Key the tree by size too, so a different file with the same name is not mixed up.
    let size = fs::metadata(deb).with_context(|| format!("reading {}", deb.display()))?.len();
    let root = cache.join(format!("{stem}.{size}"));
    if !root.join(DONE).is_file() {
        let tmp = cache.join(format!(".unpack-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        log::info!("unpacking {}", deb.display());
        let res = (|| -> Result<()> {
            tools::run(cmd("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
            let version = find_version(&tmp)?;
            log::info!("running depmod for {version}");
            tools::run(cmd("depmod").arg("-b").arg(&tmp).arg(&version))?;
            fs::write(tmp.join(DONE), format!("{version}\n"))?;
            if root.join(DONE).is_file() {
                // Another build finished the same tree meanwhile: keep that one.
                let _ = fs::remove_dir_all(&tmp);
                return Ok(());
            }
            let _ = fs::remove_dir_all(&root);
            fs::rename(&tmp, &root)?;
            Ok(())
        })();
        if let Err(e) = res {
            let _ = fs::remove_dir_all(&tmp);
            return Err(e);
        }
    } else {
        log::info!("using unpacked kernel in {}", root.display());
    }
    let version = find_version(&root)?;
    let moddir = root.join("lib/modules").join(&version);
    if !moddir.join("modules.dep").is_file() {
        tools::run(cmd("depmod").arg("-b").arg(&root).arg(&version))?;
    }
    Ok(Kernel {
        vmlinuz: root.join("boot").join(format!("vmlinuz-{version}")),
        moddir,
        version,
        deb: deb.to_path_buf(),
    })
}

/// The one kernel version in an unpacked tree: `boot/vmlinuz-VER` with `lib/modules/VER`.
fn find_version(root: &Path) -> Result<String> {
    let mut found = vec![];
    for e in
        fs::read_dir(root.join("boot")).with_context(|| format!("{}/boot: not a kernel package", root.display()))?
    {
        let n = e?.file_name().to_string_lossy().into_owned();
        if let Some(v) = n.strip_prefix("vmlinuz-") {
            if root.join("lib/modules").join(v).is_dir() {
                found.push(v.to_string());
            }
        }
    }
    found.sort();
    match found.len() {
        1 => Ok(found.pop().unwrap()),
        0 => bail!("{}: no boot/vmlinuz-VER with lib/modules/VER; is this a linux-image package?", root.display()),
        _ => bail!("{}: several kernels ({}); expected one", root.display(), found.join(", ")),
    }
}

/// The kernel to use: `--kernel-deb`, or the current Debian kernel fetched into the cache.
pub fn prepare(kernel_deb: Option<&Path>, cache: &Path) -> Result<Kernel> {
    let deb = match kernel_deb {
        Some(d) => d.to_path_buf(),
        None => {
            let pkg = current_kernel_package()?;
            log::info!("kernel package: {pkg}");
            fetch(&pkg, cache)?
        }
    };
    unpack(&deb, cache)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_apt_cache_depends() {
        let out = "linux-image-amd64\n  Depends: linux-image-6.1.0-56-amd64\n";
        assert_eq!(parse_depends(out).as_deref(), Some("linux-image-6.1.0-56-amd64"));
        let odd = "linux-image-amd64\n  Depends: <linux-image-x>\n |Depends: linux-image-6.12.9-amd64\n  Recommends: firmware\n";
        assert_eq!(parse_depends(odd).as_deref(), Some("linux-image-6.12.9-amd64"));
        assert_eq!(parse_depends("W: Unable to locate package linux-image-amd64\n"), None);
    }

    #[test]
    fn finds_the_one_kernel_in_a_tree() {
        let t = tempfile::tempdir().unwrap();
        assert!(find_version(t.path()).is_err());
        fs::create_dir_all(t.path().join("boot")).unwrap();
        fs::create_dir_all(t.path().join("lib/modules/6.1.0-9-amd64")).unwrap();
        fs::write(t.path().join("boot/vmlinuz-6.1.0-9-amd64"), b"x").unwrap();
        fs::write(t.path().join("boot/config-6.1.0-9-amd64"), b"x").unwrap();
        assert_eq!(find_version(t.path()).unwrap(), "6.1.0-9-amd64");
        fs::create_dir_all(t.path().join("lib/modules/6.1.0-10-amd64")).unwrap();
        fs::write(t.path().join("boot/vmlinuz-6.1.0-10-amd64"), b"x").unwrap();
        assert!(find_version(t.path()).unwrap_err().to_string().contains("several kernels"));
    }
}
