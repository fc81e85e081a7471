//! Debian packages the image is made of (the kernel, shim, GRUB, iPXE), fetched with
//! `apt-get download` into a cache and unpacked there with `dpkg-deb -x`. Never installed: the
//! signed boot loader packages' maintainer scripts manage the host's own boot loader.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::tools::{self, cmd};

/// Written last into an unpacked tree: a tree without it is incomplete and is redone.
const DONE: &str = ".ferry-unpacked";

/// The candidate version of a package, as apt would download it.
pub fn candidate_version(pkg: &str) -> Result<String> {
    let parse = |text: &str| {
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Candidate:"))
            .map(str::trim)
            .find(|v| !v.is_empty() && *v != "(none)")
            .map(str::to_string)
    };
    if let Some(v) = parse(&tools::output(cmd("apt-cache").args(["policy", pkg]))?) {
        return Ok(v);
    }
    // A fresh machine may have no package lists yet.
    tools::apt_update()?;
    parse(&tools::output(cmd("apt-cache").args(["policy", pkg]))?)
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
    let tmp = cache.join(format!(".download-{}-{pkg}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp)?;
    log::info!("downloading {pkg} {version} into {}", cache.display());
    let got = tools::run(cmd("apt-get").args(["download", "-q"]).arg(format!("{pkg}={version}")).current_dir(&tmp))
        .and_then(|()| find(&tmp).with_context(|| format!("apt-get download left no {prefix}*.deb")))
        .and_then(|file| {
            let dst = cache.join(file.file_name().expect("a file name"));
            fs::rename(&file, &dst)?;
            Ok(dst)
        });
    let _ = fs::remove_dir_all(&tmp);
    got
}

/// Unpacks a package into `cache/<package file stem>.<size>/` once, running `finish` on the
/// fresh tree before it is published (the kernel runs depmod there); returns the tree.
pub fn unpack(deb: &Path, cache: &Path, finish: impl FnOnce(&Path) -> Result<()>) -> Result<PathBuf> {
    let stem = deb
        .file_name()
        .map(|n| n.to_string_lossy().trim_end_matches(".deb").to_string())
        .with_context(|| format!("{} is not a package file", deb.display()))?;
    // Key the tree by size too, so a different file with the same name is not mixed up.
    let size = fs::metadata(deb).with_context(|| format!("reading {}", deb.display()))?.len();
    let root = cache.join(format!("{stem}.{size}"));
    if root.join(DONE).is_file() {
        log::debug!("using unpacked {}", root.display());
        return Ok(root);
    }
    let tmp = cache.join(format!(".unpack-{}-{stem}", std::process::id()));
    let _ = fs::remove_dir_all(&tmp);
    fs::create_dir_all(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    log::info!("unpacking {}", deb.display());
    let res = (|| -> Result<()> {
        tools::run(cmd("dpkg-deb").arg("-x").arg(deb).arg(&tmp))?;
        finish(&tmp)?;
        fs::write(tmp.join(DONE), b"")?;
        if root.join(DONE).is_file() {
            // Another build finished the same tree meanwhile: keep that one.
            let _ = fs::remove_dir_all(&tmp);
            return Ok(());
        }
        let _ = fs::remove_dir_all(&root);
        fs::rename(&tmp, &root)?;
        Ok(())
    })();
    if res.is_err() {
        let _ = fs::remove_dir_all(&tmp);
    }
    res.map(|()| root)
}

/// The package name and version of a `.deb` file name (`NAME_VERSION_ARCH.deb`), for the record
/// of what an image was built from.
pub fn name_and_version(deb: &Path) -> Option<(String, String)> {
    let n = deb.file_name()?.to_string_lossy().into_owned();
    let mut parts = n.trim_end_matches(".deb").splitn(3, '_');
    let name = parts.next()?.to_string();
    let version = parts.next()?.replace("%3a", ":");
    Some((name, version))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_name_and_version_from_apt_file_names() {
        assert_eq!(
            name_and_version(Path::new("/c/shim-signed_1.51~1+deb12u1+16.1-2~deb12u1_amd64.deb")),
            Some(("shim-signed".into(), "1.51~1+deb12u1+16.1-2~deb12u1".into()))
        );
        assert_eq!(
            name_and_version(Path::new("grub-efi-amd64-signed_1%3a2.06_amd64.deb")),
            Some(("grub-efi-amd64-signed".into(), "1:2.06".into()))
        );
        assert_eq!(name_and_version(Path::new("nodeb")), None);
    }

    #[test]
    fn unpack_runs_finish_once_and_reuses_the_tree() {
        if tools::resolve("dpkg-deb") == "dpkg-deb" && !Path::new("/usr/bin/dpkg-deb").exists() {
            eprintln!("skipping: no dpkg-deb");
            return;
        }
        let t = tempfile::tempdir().unwrap();
        // A real package made by dpkg-deb itself.
        let pkg = t.path().join("pkg");
        fs::create_dir_all(pkg.join("DEBIAN")).unwrap();
        fs::create_dir_all(pkg.join("usr/share/x")).unwrap();
        fs::write(pkg.join("usr/share/x/file"), b"hello").unwrap();
        fs::write(
            pkg.join("DEBIAN/control"),
            "Package: x\nVersion: 1.0\nArchitecture: all\nMaintainer: t <t@example.org>\nDescription: x\n",
        )
        .unwrap();
        let deb = t.path().join("x_1.0_all.deb");
        tools::run(cmd("dpkg-deb").args(["--root-owner-group", "-b"]).arg(&pkg).arg(&deb)).unwrap();
        let cache = t.path().join("cache");
        let calls = std::cell::Cell::new(0);
        let root = unpack(&deb, &cache, |tree| {
            calls.set(calls.get() + 1);
            assert!(tree.join("usr/share/x/file").is_file());
            Ok(())
        })
        .unwrap();
        assert_eq!(fs::read(root.join("usr/share/x/file")).unwrap(), b"hello");
        let again = unpack(&deb, &cache, |_| panic!("finish runs only on a fresh tree")).unwrap();
        assert_eq!((root, calls.get()), (again, 1));
    }
}
