//! The kernel: a Debian `linux-image-*-amd64` package, fetched once with apt into a cache,
//! unpacked there, with the `modules.dep`/`modules.alias` that depmod makes (the package ships
//! none).

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::packages;
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

/// Unpacks a kernel package into the cache (once) and runs depmod there.
pub fn unpack(deb: &Path, cache: &Path) -> Result<Kernel> {
    let root = packages::unpack(deb, cache, |tree| {
        let version = find_version(tree)?;
        log::info!("running depmod for {version}");
        tools::run(cmd("depmod").arg("-b").arg(tree).arg(&version))
    })?;
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
            packages::fetch(&pkg, cache)?
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
