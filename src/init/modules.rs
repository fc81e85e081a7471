//! Kernel modules in the live image: `modules.dep` and `modules.alias` from the image, modalias
//! coldplug over /sys/devices, uevents for devices that appear later, dependency order from
//! `modules.dep` (never a hand-kept order), and loading with `finit_module`.

use std::collections::{BTreeSet, HashMap};
use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::sync::{Condvar, Mutex};

/// A module's name as the kernel knows it: file stem, `-` as `_`.
pub fn module_name(path_or_name: &str) -> String {
    let file = path_or_name.rsplit('/').next().unwrap_or(path_or_name);
    let stem = file.split(".ko").next().unwrap_or(file);
    stem.replace('-', "_")
}

/// The modules an image ships and how to find them.
#[derive(Debug, Default)]
pub struct ModuleIndex {
    dir: PathBuf,
    /// name -> (path relative to `dir`, names of direct dependencies)
    deps: HashMap<String, (String, Vec<String>)>,
    /// (pattern, module name)
    aliases: Vec<(String, String)>,
}

impl ModuleIndex {
    /// Reads `dir/modules.dep` and `dir/modules.alias` (dir is `/lib/modules/$(uname -r)`).
    pub fn load(dir: &Path) -> std::io::Result<Self> {
        let dep = fs::read_to_string(dir.join("modules.dep"))?;
        let alias = fs::read_to_string(dir.join("modules.alias")).unwrap_or_default();
        Ok(Self::parse(dir, &dep, &alias))
    }

    pub fn parse(dir: &Path, dep: &str, alias: &str) -> Self {
        let mut deps = HashMap::new();
        for line in dep.lines() {
            let Some((path, rest)) = line.split_once(':') else { continue };
            let d = rest.split_whitespace().map(module_name).collect();
            deps.insert(module_name(path), (path.trim().to_string(), d));
        }
        let aliases = alias
            .lines()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                (w.next() == Some("alias")).then_some(())?;
                Some((w.next()?.to_string(), module_name(w.next()?)))
            })
            .collect();
        Self { dir: dir.to_owned(), deps, aliases }
    }

    pub fn len(&self) -> usize {
        self.deps.len()
    }

    pub fn is_empty(&self) -> bool {
        self.deps.is_empty()
    }

    /// Modules whose alias pattern matches `modalias`, sorted.
    pub fn matching(&self, modalias: &str) -> BTreeSet<String> {
        self.aliases.iter().filter(|(p, _)| glob_match(p, modalias)).map(|(_, m)| m.clone()).collect()
    }

    /// `name` and its dependencies, dependencies first, each once.
    pub fn load_order(&self, name: &str) -> Vec<String> {
        let mut out = vec![];
        self.visit(&module_name(name), &mut out, 0);
        out
    }

    fn visit(&self, name: &str, out: &mut Vec<String>, depth: usize) {
        if out.iter().any(|n| n == name) || depth > 64 {
            return;
        }
        if let Some((_, deps)) = self.deps.get(name) {
            for d in deps {
                self.visit(d, out, depth + 1);
            }
        }
        if !out.iter().any(|n| n == name) {
            out.push(name.to_string());
        }
    }

    fn path_of(&self, name: &str) -> Option<PathBuf> {
        self.deps.get(name).map(|(p, _)| self.dir.join(p))
    }
}

/// fnmatch-style matching as modules.alias needs: `*`, `?` and `[...]` sets.
pub fn glob_match(pattern: &str, text: &str) -> bool {
    let (p, t) = (pattern.as_bytes(), text.as_bytes());
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut star_t) = (None, 0usize);
    while ti < t.len() {
        if pi < p.len() {
            match p[pi] {
                b'*' => {
                    star = Some(pi);
                    star_t = ti;
                    pi += 1;
                    continue;
                }
                b'?' => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                b'[' => {
                    if let Some((matched, next)) = match_set(p, pi, t[ti]) {
                        if matched {
                            pi = next;
                            ti += 1;
                            continue;
                        }
                    } else if t[ti] == b'[' {
                        pi += 1;
                        ti += 1;
                        continue;
                    }
                }
                c if c == t[ti] => {
                    pi += 1;
                    ti += 1;
                    continue;
                }
                _ => {}
            }
        }
        match star {
            Some(s) => {
                pi = s + 1;
                star_t += 1;
                ti = star_t;
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == b'*')
}

/// Matches `c` against the set starting at `p[start] == '['`; returns (matched, index after `]`),
/// or None when the set is not closed.
fn match_set(p: &[u8], start: usize, c: u8) -> Option<(bool, usize)> {
    let mut i = start + 1;
    let negate = i < p.len() && (p[i] == b'!' || p[i] == b'^');
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (p[i] != b']' || first) {
        if i + 2 < p.len() && p[i + 1] == b'-' && p[i + 2] != b']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
        first = false;
    }
    (i < p.len()).then_some((matched != negate, i + 1))
}

/// Loads modules, remembering what it did.
pub struct Loader {
    pub index: ModuleIndex,
    pub loaded: BTreeSet<String>,
    pub failed: BTreeSet<String>,
}

impl Loader {
    pub fn new(index: ModuleIndex) -> Self {
        Self { index, loaded: BTreeSet::new(), failed: BTreeSet::new() }
    }

    /// Loads `name` with its dependencies. Returns how many modules were newly loaded.
    pub fn load(&mut self, name: &str) -> usize {
        self.load_all(&[name.to_string()])
    }

    /// Loads `names` with their dependencies, up to [`PARALLEL_LOADS`] at once: a module starts
    /// when every dependency it has in this batch is done. A driver's probe runs in the thread
    /// that loads it, so one slow probe (a RAID controller's, ata_piix's port scan) no longer
    /// holds back every driver after it, as udev loads modules too. Among modules ready at the
    /// same time the one asked first starts first. Returns how many were newly loaded.
    pub fn load_all(&mut self, names: &[String]) -> usize {
        let batch = self.batch(names);
        if batch.is_empty() {
            return 0;
        }
        // Logged as each one loads, so that ferry.debug's timestamps say when.
        let results = load_batch(&batch, |path| {
            let result = finit(path);
            if result.is_ok() {
                log::info!("loaded module {}", module_name(&path.to_string_lossy()));
            }
            result
        });
        let mut n = 0;
        for (i, result) in results {
            let m = batch[i].name.clone();
            match result {
                Ok(()) => {
                    self.loaded.insert(m);
                    n += 1;
                }
                Err(nix::errno::Errno::EEXIST) => {
                    self.loaded.insert(m);
                }
                Err(e) => {
                    // ENODEV/ENOENT from a probe mean "no such hardware here": not an error.
                    log::debug!("module {m}: {e}");
                    self.failed.insert(m);
                }
            }
        }
        n
    }

    /// The modules of `names` (with dependencies, dependencies first) still to load, each with
    /// the ones it waits for; notes the ones already there or not shipped.
    fn batch(&mut self, names: &[String]) -> Vec<Pending> {
        let mut order: Vec<String> = vec![];
        for name in names {
            for m in self.index.load_order(name) {
                if !order.contains(&m) && !self.loaded.contains(&m) && !self.failed.contains(&m) {
                    order.push(m);
                }
            }
        }
        let mut batch = vec![];
        for m in &order {
            if Path::new("/sys/module").join(m).exists() {
                self.loaded.insert(m.clone());
                continue;
            }
            let Some(path) = self.index.path_of(m) else {
                // Built into the kernel, or not shipped: nothing to load.
                self.failed.insert(m.clone());
                continue;
            };
            let after = self.index.deps.get(m).map(|(_, d)| d.clone()).unwrap_or_default();
            batch.push(Pending { name: m.clone(), path, after });
        }
        // Only modules of this batch are waited for: not those already there or missing.
        let names: BTreeSet<String> = batch.iter().map(|p| p.name.clone()).collect();
        for p in &mut batch {
            p.after.retain(|d| names.contains(d));
        }
        batch
    }

    /// Loads every module whose alias matches a modalias under `/sys/devices`; returns how many
    /// were newly loaded.
    pub fn coldplug(&mut self, sys_devices: &Path) -> usize {
        let mut aliases = BTreeSet::new();
        collect_modaliases(sys_devices, &mut aliases, 0);
        self.load_for_aliases(&aliases)
    }

    pub fn load_for_aliases(&mut self, aliases: &BTreeSet<String>) -> usize {
        let wanted: Vec<String> = self.for_aliases(aliases).into_iter().collect();
        self.load_all(&wanted)
    }

    /// The modules whose alias matches one of `aliases`.
    pub fn for_aliases(&self, aliases: &BTreeSet<String>) -> BTreeSet<String> {
        aliases.iter().flat_map(|a| self.index.matching(a)).collect()
    }
}

/// Most modules loaded at once.
const PARALLEL_LOADS: usize = 4;

/// A module to load and the modules of its batch it waits for.
struct Pending {
    name: String,
    path: PathBuf,
    after: Vec<String>,
}

/// Which modules of a batch are waiting, done, or loading.
struct BatchState {
    waiting: Vec<usize>,
    done: BTreeSet<String>,
    loading: usize,
    results: Vec<(usize, nix::Result<()>)>,
}

/// Loads `batch` with `load` on up to [`PARALLEL_LOADS`] threads; each module's result, in the
/// order they finished.
fn load_batch(batch: &[Pending], load: impl Fn(&Path) -> nix::Result<()> + Sync) -> Vec<(usize, nix::Result<()>)> {
    let state = Mutex::new(BatchState {
        waiting: (0..batch.len()).collect(),
        done: BTreeSet::new(),
        loading: 0,
        results: vec![],
    });
    let changed = Condvar::new();
    std::thread::scope(|scope| {
        for _ in 0..PARALLEL_LOADS.min(batch.len()) {
            scope.spawn(|| {
                while let Some(i) = next_ready(batch, &state, &changed) {
                    let result = load(&batch[i].path);
                    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
                    st.loading -= 1;
                    st.done.insert(batch[i].name.clone());
                    st.results.push((i, result));
                    changed.notify_all();
                }
            });
        }
    });
    let st = state.into_inner().unwrap_or_else(|p| p.into_inner());
    if !st.waiting.is_empty() {
        // modules.dep has no cycles (depmod refuses them); never wait forever on one anyway.
        let left: Vec<&str> = st.waiting.iter().map(|&i| batch[i].name.as_str()).collect();
        log::warn!("modules left unloaded (their dependencies never finished): {}", left.join(" "));
    }
    st.results
}

/// The next module whose dependencies are all done, marked as loading; `None` when none is
/// left, or none can ever be ready.
fn next_ready(batch: &[Pending], state: &Mutex<BatchState>, changed: &Condvar) -> Option<usize> {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    loop {
        let ready = st.waiting.iter().position(|&i| batch[i].after.iter().all(|d| st.done.contains(d)));
        if let Some(pos) = ready {
            st.loading += 1;
            return Some(st.waiting.remove(pos));
        }
        if st.waiting.is_empty() || st.loading == 0 {
            changed.notify_all();
            return None;
        }
        st = changed.wait(st).unwrap_or_else(|p| p.into_inner());
    }
}

/// Parameters some modules are loaded with, by module file name (without `.ko`).
const MODULE_OPTIONS: &[(&str, &std::ffi::CStr)] = &[
    // usb-storage waits a second by default before it looks for the disk behind a USB stick,
    // announcing nothing meanwhile: drivers would seem settled with the ferry stick (and any
    // USB disk) still missing. The SCSI layer's own retries cover a slow stick.
    ("usb-storage", c"delay_use=0"),
];

fn finit(path: &Path) -> nix::Result<()> {
    let f = File::open(path).map_err(|e| nix::errno::Errno::from_raw(e.raw_os_error().unwrap_or(libc::EIO)))?;
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or_default();
    let stem = name.split(".ko").next().unwrap_or_default();
    let options = MODULE_OPTIONS.iter().find(|(m, _)| *m == stem).map(|(_, o)| *o).unwrap_or(c"");
    nix::kmod::finit_module(&f, options, nix::kmod::ModuleInitFlags::empty())
}

/// Every `modalias` value under `dir`, not following symlinks (sysfs is full of loops).
pub fn collect_modaliases(dir: &Path, out: &mut BTreeSet<String>, depth: usize) {
    if depth > 32 {
        return;
    }
    let Ok(rd) = fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let Ok(ft) = e.file_type() else { continue };
        if ft.is_symlink() {
            continue;
        }
        if ft.is_dir() {
            collect_modaliases(&e.path(), out, depth + 1);
        } else if e.file_name() == "modalias" {
            if let Ok(s) = fs::read_to_string(e.path()) {
                let s = s.trim();
                if !s.is_empty() {
                    out.insert(s.to_string());
                }
            }
        }
    }
}

/// A NETLINK_KOBJECT_UEVENT socket: the kernel announces devices that appear after coldplug
/// (disks behind a freshly loaded HBA driver, late USB devices) with their MODALIAS.
pub struct UeventListener {
    fd: std::os::fd::OwnedFd,
}

impl UeventListener {
    pub fn open() -> std::io::Result<Self> {
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket(2) call; the returned fd is checked and owned below.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_DGRAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
                libc::NETLINK_KOBJECT_UEVENT,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
        let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
        // SAFETY: sockaddr_nl is plain old data; zeroed is a valid value that we then fill in.
        let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        addr.nl_family = libc::AF_NETLINK as u16;
        addr.nl_groups = 1; // the kernel's uevent multicast group
        use std::os::fd::AsRawFd;
        // SAFETY: addr is a valid sockaddr_nl and the length matches it.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &addr as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Self { fd })
    }

    /// Waits at most `timeout` for a uevent to arrive; whether one is queued.
    pub fn wait(&self, timeout: std::time::Duration) -> bool {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: pfd is one valid pollfd for the duration of the call.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        n > 0 && pfd.revents & libc::POLLIN != 0
    }

    /// MODALIAS values of every uevent queued so far (does not block).
    pub fn drain_modaliases(&self) -> BTreeSet<String> {
        use std::os::fd::AsRawFd;
        let mut out = BTreeSet::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            // SAFETY: buf is valid for buf.len() bytes for the duration of the call.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n <= 0 {
                break;
            }
            for field in buf[..n as usize].split(|&b| b == 0) {
                if let Some(v) = field.strip_prefix(b"MODALIAS=") {
                    out.insert(String::from_utf8_lossy(v).into_owned());
                }
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_table() {
        let table = [
            ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00", true),
            ("pci:v00001AF4d00001001sv*sd*bc*sc*i*", "pci:v00001AF4d00001000sv00001AF4sd00000001bc02sc00i00", false),
            ("pci:v*d*sv*sd*bc01sc08i02*", "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02", true),
            ("virtio:d00000002v*", "virtio:d00000002v00001AF4", true),
            ("virtio:d00000002v*", "virtio:d00000001v00001AF4", false),
            ("acpi*:PNP0A0[38]:*", "acpi:PNP0A03:", true),
            ("acpi*:PNP0A0[38]:*", "acpi:PNP0A05:", false),
            ("x[!a-c]y", "xdy", true),
            ("x[!a-c]y", "xby", false),
            ("a?c", "abc", true),
            ("a?c", "ac", false),
            ("*", "", true),
            ("", "a", false),
        ];
        for (p, t, want) in table {
            assert_eq!(glob_match(p, t), want, "{p} vs {t}");
        }
    }

    const DEP: &str = "kernel/drivers/block/virtio_blk.ko: kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_pci.ko: kernel/drivers/virtio/virtio_pci_modern_dev.ko kernel/drivers/virtio/virtio_pci_legacy_dev.ko kernel/drivers/virtio/virtio.ko kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio.ko: kernel/drivers/virtio/virtio_ring.ko
kernel/drivers/virtio/virtio_ring.ko:
kernel/drivers/virtio/virtio_pci_modern_dev.ko:
kernel/drivers/virtio/virtio_pci_legacy_dev.ko:
kernel/drivers/scsi/mpt3sas/mpt3sas.ko: kernel/drivers/scsi/scsi_transport_sas.ko kernel/drivers/scsi/raid_class.ko
kernel/drivers/scsi/raid_class.ko:
kernel/drivers/scsi/scsi_transport_sas.ko:
kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko:
kernel/fs/nls/nls_iso8859-1.ko:
";
    const ALIAS: &str = "# Aliases extracted from modules themselves.
alias virtio:d00000002v* virtio_blk
alias pci:v00001AF4d*sv*sd*bc*sc*i* virtio_pci
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
";

    #[test]
    fn dependency_order_comes_from_modules_dep() {
        let idx = ModuleIndex::parse(Path::new("/lib/modules/x"), DEP, ALIAS);
        assert_eq!(idx.len(), 11);
        assert_eq!(idx.load_order("virtio_blk"), ["virtio_ring", "virtio", "virtio_blk"]);
        let pci = idx.load_order("virtio_pci");
        assert_eq!(pci.last().unwrap(), "virtio_pci");
        let pos = |n: &str| pci.iter().position(|m| m == n).unwrap();
        assert!(pos("virtio_ring") < pos("virtio"));
        assert_eq!(idx.load_order("mpt3sas"), ["scsi_transport_sas", "raid_class", "mpt3sas"]);
        assert_eq!(idx.load_order("nls_iso8859-1"), ["nls_iso8859_1"]);
        assert_eq!(idx.load_order("unknown"), ["unknown"]);
    }

    #[test]
    fn a_batch_loads_in_parallel_but_never_before_a_dependency_is_done() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        // a <- b <- c (a chain), and d, e, f with no dependencies.
        let deps: &[(&str, &[&str])] =
            &[("a", &[]), ("b", &["a"]), ("c", &["a", "b"]), ("d", &[]), ("e", &[]), ("f", &[])];
        let batch: Vec<Pending> = deps
            .iter()
            .map(|(n, d)| Pending {
                name: n.to_string(),
                path: PathBuf::from(n),
                after: d.iter().map(|s| s.to_string()).collect(),
            })
            .collect();
        let log = Mutex::new(vec![]);
        let (now, most) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let results = load_batch(&batch, |path| {
            let name = path.to_string_lossy().into_owned();
            log.lock().unwrap().push(format!("start {name}"));
            most.fetch_max(now.fetch_add(1, Ordering::SeqCst) + 1, Ordering::SeqCst);
            std::thread::sleep(std::time::Duration::from_millis(30));
            now.fetch_sub(1, Ordering::SeqCst);
            log.lock().unwrap().push(format!("end {name}"));
            if name == "e" {
                Err(nix::errno::Errno::ENODEV)
            } else {
                Ok(())
            }
        });
        assert_eq!(results.len(), 6);
        assert!(results.iter().any(|(i, r)| batch[*i].name == "e" && *r == Err(nix::errno::Errno::ENODEV)));
        let log = log.into_inner().unwrap();
        let at = |what: &str| log.iter().position(|l| l == what).unwrap();
        assert!(at("end a") < at("start b"), "{log:?}");
        assert!(at("end b") < at("start c"), "{log:?}");
        let most = most.load(Ordering::SeqCst);
        assert!((2..=PARALLEL_LOADS).contains(&most), "{most} loads at once: {log:?}");
    }

    #[test]
    fn aliases_pick_modules() {
        let idx = ModuleIndex::parse(Path::new("/lib/modules/x"), DEP, ALIAS);
        let m = idx.matching("pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00");
        assert_eq!(m.into_iter().collect::<Vec<_>>(), ["virtio_pci"]);
        assert!(idx.matching("pci:v000010ECd00008139sv*").is_empty());
        assert_eq!(idx.matching("virtio:d00000002v00001AF4").len(), 1);
    }

    #[test]
    fn modaliases_are_collected_from_a_sysfs_fixture() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("pci0000:00/0000:00:04.0");
        fs::create_dir_all(&d).unwrap();
        fs::write(d.join("modalias"), "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00\n").unwrap();
        let v = d.join("virtio1");
        fs::create_dir_all(&v).unwrap();
        fs::write(v.join("modalias"), "virtio:d00000002v00001AF4\n").unwrap();
        std::os::unix::fs::symlink(t.path(), d.join("subsystem")).unwrap();
        let mut out = BTreeSet::new();
        collect_modaliases(t.path(), &mut out, 0);
        assert_eq!(out.len(), 2);
    }
}
