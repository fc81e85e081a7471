//! Choosing the kernel modules for the live image: the names in `initrd/modules.list`, closed
//! over `modules.dep` (and `modules.softdep`), copied uncompressed, with `modules.dep` and
//! `modules.alias` filtered to what is shipped.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// The modules to ship (names, `-` or `_`), kept as data in the source tree.
pub const MODULES_LIST: &str = include_str!("../../initrd/modules.list");
/// The modules init loads at boot before coldplug.
pub const MODULES_LOAD_LIST: &str = include_str!("../../initrd/modules-load.list");

// Module names and alias patterns follow the same rules at build time as at boot time.
pub use crate::init::modules::{glob_match, module_name};

/// Names from a list file: one a line, `#` starts a comment.
pub fn parse_list(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .flat_map(|l| l.split_whitespace())
        .map(str::to_string)
        .collect()
}

/// The module metadata of one kernel: `modules.dep`, `modules.softdep`, `modules.alias`,
/// `modules.builtin`.
#[derive(Debug, Default)]
pub struct KernelModules {
    /// name -> (path relative to lib/modules/VER, direct dependencies by name), in file order.
    deps: BTreeMap<String, (String, Vec<String>)>,
    /// The order of modules.dep, by name.
    order: Vec<String>,
    /// name -> soft dependencies (pre and post), as written: names or aliases.
    softdeps: HashMap<String, Vec<String>>,
    /// (pattern, module name), in file order.
    aliases: Vec<(String, String)>,
    builtin: BTreeSet<String>,
}

/// The result of closing a request over the dependencies.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Selection {
    /// Names of modules to ship, sorted.
    pub modules: BTreeSet<String>,
    /// Requested names that are built into the kernel (nothing to ship).
    pub builtin: Vec<String>,
    /// Requested names this kernel does not have.
    pub missing: Vec<String>,
}

impl KernelModules {
    pub fn parse(dep: &str, softdep: &str, alias: &str, builtin: &str) -> Self {
        let mut k = KernelModules::default();
        for line in dep.lines() {
            let Some((path, rest)) = line.split_once(':') else { continue };
            let name = module_name(path.trim());
            let d = rest.split_whitespace().map(module_name).collect();
            if k.deps.insert(name.clone(), (path.trim().to_string(), d)).is_none() {
                k.order.push(name);
            }
        }
        for line in softdep.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("softdep") {
                continue;
            }
            let Some(m) = words.next() else { continue };
            let targets = words.filter(|w| *w != "pre:" && *w != "post:").map(str::to_string);
            k.softdeps.entry(module_name(m)).or_default().extend(targets);
        }
        for line in alias.lines() {
            let mut words = line.split_whitespace();
            if words.next() != Some("alias") {
                continue;
            }
            if let (Some(pat), Some(m)) = (words.next(), words.next()) {
                k.aliases.push((pat.to_string(), module_name(m)));
            }
        }
        k.builtin = builtin.lines().map(str::trim).filter(|l| !l.is_empty()).map(module_name).collect();
        k
    }

    /// Reads the metadata files from `dir` (lib/modules/VER); softdep and builtin may be absent.
    pub fn load(dir: &Path) -> Result<Self> {
        let read = |n: &str| fs::read_to_string(dir.join(n));
        let dep = read("modules.dep").with_context(|| format!("reading {}/modules.dep", dir.display()))?;
        Ok(Self::parse(
            &dep,
            &read("modules.softdep").unwrap_or_default(),
            &read("modules.alias").unwrap_or_default(),
            &read("modules.builtin").unwrap_or_default(),
        ))
    }

    pub fn path_of(&self, name: &str) -> Option<&str> {
        self.deps.get(&module_name(name)).map(|(p, _)| p.as_str())
    }

    /// Modules a softdep target names: a module, or every module with a matching alias.
    fn resolve_soft(&self, target: &str) -> Vec<String> {
        let n = module_name(target);
        if self.deps.contains_key(&n) {
            return vec![n];
        }
        self.aliases.iter().filter(|(pat, _)| glob_match(pat, target)).map(|(_, m)| m.clone()).collect()
    }

    /// Closes `wanted` over hard and soft dependencies.
    pub fn select(&self, wanted: &[String]) -> Selection {
        let mut sel = Selection::default();
        let mut todo: Vec<String> = vec![];
        for w in wanted {
            let n = module_name(w);
            if self.deps.contains_key(&n) {
                todo.push(n);
            } else if self.builtin.contains(&n) {
                sel.builtin.push(w.clone());
            } else {
                sel.missing.push(w.clone());
            }
        }
        while let Some(n) = todo.pop() {
            if !sel.modules.insert(n.clone()) {
                continue;
            }
            if let Some((_, d)) = self.deps.get(&n) {
                todo.extend(d.iter().filter(|x| !sel.modules.contains(*x)).cloned());
            }
            for t in self.softdeps.get(&n).map(Vec::as_slice).unwrap_or(&[]) {
                // A soft dependency that this kernel lacks or has built in is not an error.
                todo.extend(self.resolve_soft(t).into_iter().filter(|x| !sel.modules.contains(x)));
            }
        }
        sel
    }

    /// `modules.dep` for the shipped set, in the original order, with `strip` applied to paths.
    pub fn filtered_dep(&self, shipped: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for n in &self.order {
            if !shipped.contains(n) {
                continue;
            }
            let (path, deps) = &self.deps[n];
            out.push_str(&uncompressed_path(path));
            out.push(':');
            for d in deps {
                if let Some((dp, _)) = self.deps.get(d) {
                    out.push(' ');
                    out.push_str(&uncompressed_path(dp));
                }
            }
            out.push('\n');
        }
        out
    }

    /// `modules.softdep` lines of shipped modules.
    pub fn filtered_softdep(softdep: &str, shipped: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for line in softdep.lines() {
            let mut w = line.split_whitespace();
            if w.next() == Some("softdep") && w.next().is_some_and(|m| shipped.contains(&module_name(m))) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }

    /// `modules.alias` lines whose module is shipped.
    pub fn filtered_alias(alias: &str, shipped: &BTreeSet<String>) -> String {
        let mut out = String::new();
        for line in alias.lines() {
            let mut w = line.split_whitespace();
            if w.next() == Some("alias") && w.nth(1).is_some_and(|m| shipped.contains(&module_name(m))) {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

/// `x.ko.zst` -> `x.ko` (the image ships modules uncompressed).
pub fn uncompressed_path(p: &str) -> String {
    for ext in [".xz", ".zst", ".gz"] {
        if let Some(s) = p.strip_suffix(ext) {
            if s.ends_with(".ko") {
                return s.to_string();
            }
        }
    }
    p.to_string()
}

/// A module file's bytes, decompressed if it is `.ko.xz`, `.ko.zst` or `.ko.gz`.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let name = path.to_string_lossy();
    if name.ends_with(".ko.zst") {
        let f = fs::File::open(path).with_context(|| format!("opening {name}"))?;
        let mut out = vec![];
        zstd::stream::read::Decoder::new(f)?.read_to_end(&mut out).with_context(|| format!("decompressing {name}"))?;
        return Ok(out);
    }
    for (ext, tool) in [(".ko.xz", "xz"), (".ko.gz", "gzip")] {
        if name.ends_with(ext) {
            let out = Command::new(tool)
                .args(["-dc", "--"])
                .arg(path)
                .output()
                .with_context(|| format!("running {tool} to decompress {name}"))?;
            if !out.status.success() {
                bail!("{tool} -dc {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
            return Ok(out.stdout);
        }
    }
    fs::read(path).with_context(|| format!("reading {name}"))
}

/// What was put in the image.
#[derive(Debug)]
pub struct Shipped {
    /// (path inside the image relative to lib/modules/VER, file on the host holding its bytes)
    pub files: Vec<(String, PathBuf)>,
    pub modules: BTreeSet<String>,
    /// Generated index files: (name, contents).
    pub index: Vec<(String, String)>,
    /// Contents of /etc/ferry/modules-load.
    pub load: String,
    pub missing: Vec<String>,
    pub builtin: Vec<String>,
}

/// Selects modules from the extracted kernel tree `moddir` (lib/modules/VER) and stages
/// decompressed copies under `stage` when needed.
pub fn ship(moddir: &Path, stage: &Path, wanted: &[String], load: &[String]) -> Result<Shipped> {
    let km = KernelModules::load(moddir)?;
    let sel = km.select(wanted);
    let read = |n: &str| fs::read_to_string(moddir.join(n)).unwrap_or_default();
    let mut files = vec![];
    for m in &sel.modules {
        let rel = km.path_of(m).expect("selected modules are in modules.dep");
        let src = moddir.join(rel);
        let dst_rel = uncompressed_path(rel);
        if dst_rel == rel {
            files.push((dst_rel, src));
        } else {
            let bytes = read_module(&src)?;
            let staged = stage.join(&dst_rel);
            fs::create_dir_all(staged.parent().unwrap())?;
            fs::write(&staged, bytes)?;
            files.push((dst_rel, staged));
        }
    }
    for (_, f) in &files {
        if !f.is_file() {
            bail!("module file {} is missing from the kernel package", f.display());
        }
    }
    let index = vec![
        ("modules.dep".to_string(), km.filtered_dep(&sel.modules)),
        ("modules.alias".to_string(), KernelModules::filtered_alias(&read("modules.alias"), &sel.modules)),
        ("modules.softdep".to_string(), KernelModules::filtered_softdep(&read("modules.softdep"), &sel.modules)),
        ("modules.builtin".to_string(), read("modules.builtin")),
    ];
    let mut load_out = String::new();
    let mut seen = BTreeSet::new();
    for l in load {
        let n = module_name(l);
        if sel.modules.contains(&n) && seen.insert(n.clone()) {
            load_out.push_str(&n);
            load_out.push('\n');
        }
    }
    Ok(Shipped { files, modules: sel.modules, index, load: load_out, missing: sel.missing, builtin: sel.builtin })
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEP: &str = "\
kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/net/ethernet/realtek/r8169.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/realtek.ko: kernel/drivers/net/phy/libphy.ko
kernel/drivers/net/phy/libphy.ko:
kernel/fs/ext4/ext4.ko: kernel/fs/jbd2/jbd2.ko
kernel/fs/jbd2/jbd2.ko:
kernel/arch/x86/crypto/crc32c-intel.ko:
kernel/crypto/crc32c_generic.ko:
kernel/drivers/block/xen-blkfront.ko.zst:
kernel/drivers/usb/storage/usb-storage.ko: kernel/drivers/scsi/scsi_mod.ko
kernel/drivers/scsi/scsi_mod.ko:
";
    const SOFT: &str = "\
# Soft dependencies extracted from modules themselves.
softdep r8169 pre: realtek
softdep ext4 pre: crypto-crc32c
softdep jbd2 pre: crypto-crc32c
softdep virtio_blk post: nonexistent
";
    const ALIAS: &str = "\
# Aliases extracted from modules themselves.
alias crypto-crc32c crc32c_intel
alias crc32c crc32c_intel
alias crypto-crc32c crc32c_generic
alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk
alias virtio:d00000002v* virtio_blk
alias pci:v000010ECd00008168sv*sd*bc*sc*i* r8169
alias fs-ext4 ext4
alias usb:v*p*d*dc*dsc*dp*ic08isc06ip50in* usb_storage
";
    const BUILTIN: &str = "kernel/net/packet/af_packet.ko\nkernel/fs/nls/nls_base.ko\n";

    fn names(s: &BTreeSet<String>) -> Vec<&str> {
        s.iter().map(String::as_str).collect()
    }

    #[test]
    fn closes_over_deps_and_softdeps() {
        let k = KernelModules::parse(DEP, SOFT, ALIAS, BUILTIN);
        let want: Vec<String> =
            ["virtio-blk", "r8169", "ext4", "af_packet", "nope", "usb-storage"].iter().map(|s| s.to_string()).collect();
        let sel = k.select(&want);
        assert_eq!(
            names(&sel.modules),
            [
                "crc32c_generic",
                "crc32c_intel",
                "ext4",
                "jbd2",
                "libphy",
                "r8169",
                "realtek",
                "scsi_mod",
                "usb_storage",
                "virtio",
                "virtio_blk",
                "virtio_ring"
            ]
        );
        assert_eq!(sel.builtin, ["af_packet"]);
        assert_eq!(sel.missing, ["nope"]);
        assert!(!sel.modules.contains("virtio_pci"));
    }

    #[test]
    fn filtered_index_files() {
        let k = KernelModules::parse(DEP, SOFT, ALIAS, BUILTIN);
        let sel = k.select(&["virtio_blk".to_string(), "xen_blkfront".to_string()]);
        assert_eq!(names(&sel.modules), ["virtio", "virtio_blk", "virtio_ring", "xen_blkfront"]);
        assert_eq!(
            k.filtered_dep(&sel.modules),
            "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko\n\
             kernel/drivers/virtio/virtio_ring.ko:\n\
             kernel/drivers/block/xen-blkfront.ko:\n"
        );
        assert_eq!(
            KernelModules::filtered_alias(ALIAS, &sel.modules),
            "alias pci:v00001AF4d00001001sv*sd*bc*sc*i* virtio_blk\nalias virtio:d00000002v* virtio_blk\n"
        );
        assert_eq!(KernelModules::filtered_softdep(SOFT, &sel.modules), "softdep virtio_blk post: nonexistent\n");
    }

    #[test]
    fn ships_from_a_tree() {
        let t = tempfile::tempdir().unwrap();
        let m = t.path().join("lib/modules/6.1.0-x");
        for line in DEP.lines() {
            let p = m.join(line.split(':').next().unwrap());
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            if p.to_string_lossy().ends_with(".zst") {
                fs::write(&p, zstd::encode_all(&b"\x7fELF blkfront"[..], 3).unwrap()).unwrap();
            } else {
                fs::write(&p, b"\x7fELF").unwrap();
            }
        }
        fs::write(m.join("modules.dep"), DEP).unwrap();
        fs::write(m.join("modules.alias"), ALIAS).unwrap();
        fs::write(m.join("modules.builtin"), BUILTIN).unwrap();
        let stage = t.path().join("stage");
        let want = parse_list("virtio_pci # the bus\n\n# storage\nxen-blkfront af_packet\n");
        let load = parse_list("virtio_pci\naf_packet\nvirtio-pci\n");
        let s = ship(&m, &stage, &want, &load).unwrap();
        assert_eq!(s.load, "virtio_pci\n");
        assert_eq!(s.builtin, ["af_packet"]);
        assert_eq!(s.modules.len(), 5);
        let (rel, host) = s.files.iter().find(|(r, _)| r.contains("xen")).unwrap();
        assert_eq!(rel, "kernel/drivers/block/xen-blkfront.ko");
        assert_eq!(fs::read(host).unwrap(), b"\x7fELF blkfront");
        assert!(s.index.iter().any(|(n, c)| n == "modules.dep" && c.contains("xen-blkfront.ko:\n")));
    }

    #[test]
    fn globbing() {
        assert!(glob_match(
            "pci:v00008086d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01"
        ));
        assert!(!glob_match(
            "pci:v00008086d*sv*sd*bc01sc06i01*",
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i00"
        ));
        assert!(glob_match("a?c", "abc"));
        assert!(glob_match("of:N*T*Cfsl,imx[0-9]*", "of:NxTyCfsl,imx6q"));
        assert!(!glob_match("x[!0-9]", "x5"));
        assert!(glob_match("crypto-crc32c", "crypto-crc32c"));
        assert!(!glob_match("crypto-crc32c", "crypto-crc32"));
    }

    #[test]
    fn lists_in_the_tree_parse() {
        let all = parse_list(MODULES_LIST);
        assert!(all.len() > 30);
        for must in ["nvme", "ahci", "virtio_blk", "virtio_net", "vfat", "usb-storage", "xhci_pci"] {
            assert!(all.iter().any(|m| module_name(m) == module_name(must)), "{must} not in modules.list");
        }
        for m in parse_list(MODULES_LOAD_LIST) {
            assert!(all.iter().any(|x| module_name(x) == module_name(&m)), "{m} is loaded but not shipped");
        }
    }
}
