//! `ferry image build`: the live image and its boot media.
//!
//! From a Debian kernel package and a statically linked ferry it makes, in the output directory:
//! - `vmlinuz`: the kernel, as Debian ships it;
//! - `initrd.img`: a zstd-compressed newc cpio with ferry as `/init`, the storage, network and
//!   FAT drivers of `initrd/modules.list` (closed over their dependencies) and their index;
//! - `boot.ipxe`: an iPXE script loading both, by paths relative to the script's own URL;
//! - `shimx64.efi`, `grubx64.efi`, `mmx64.efi`, `grub/grub.cfg`: PXE under UEFI, Secure Boot on
//!   or off (Microsoft-signed shim, Debian-signed network GRUB); `undionly.kpxe`, `snponly.efi`:
//!   iPXE for BIOS and non-Secure-Boot UEFI PXE clients;
//! - `ferry-usb.img` (+ `.bmap`): a GPT disk image that boots under UEFI (shim, GRUB, the signed
//!   kernel: Secure Boot on or off) and legacy BIOS (GRUB in a BIOS boot partition), with an
//!   editable `ferry.toml` on its EFI system partition, named `ferry-boot`;
//! - `image.json`: what was built from which packages, read by `ferry serve --boot-dir`.
//!
//! See image-build/README.md for the recipe and how to use each output.

pub mod bios;
pub mod bootloaders;
pub mod cpio;
pub mod kernel;
pub mod modules;
pub mod packages;
pub mod tools;
pub mod usb;

use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::boot::files::{self as names, ImageInfo, Package};
use crate::boot::keys::{PREFIX, TOML_KEYS};
use crate::boot::{grub, split_words};
use crate::cmdline::ImageBuildArgs;
use cpio::{Archive, Data};

/// What a build produced.
#[derive(Debug, serde::Serialize)]
pub struct BuildOutputs {
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub ipxe: PathBuf,
    pub usb: Option<PathBuf>,
    pub kernel_version: String,
    /// The block map of the USB image, for `bmaptool copy`.
    pub bmap: Option<PathBuf>,
    pub kernel_bytes: u64,
    pub initrd_bytes: u64,
    pub usb_bytes: Option<u64>,
    /// Kernel modules in the initramfs (dependencies included).
    pub modules: usize,
    /// Names from initrd/modules.list this kernel does not have.
    pub missing_modules: Vec<String>,
    /// The kernel command line of the USB image and boot.ipxe (ferry.* keys of the USB image
    /// go to its ferry.toml instead).
    pub cmdline: String,
    /// The kernel package used.
    pub kernel_package: PathBuf,
    /// PXE files besides the kernel and initramfs: shim, network GRUB and its menu, MOK
    /// manager, iPXE for BIOS and UEFI.
    pub pxe_files: Vec<PathBuf>,
    /// `image.json`, with the packages of the boot chain.
    pub image_json: PathBuf,
    pub packages: Vec<Package>,
    pub seconds: f64,
}

pub use crate::boot::BASE_CMDLINE;

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

const STATIC_ADVICE: &str = "build a static ferry with \
`RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu` \
and pass --init target/x86_64-unknown-linux-gnu/release/ferry";

fn step(msg: impl AsRef<str>) {
    eprintln!("image: {}", msg.as_ref());
}

/// Whether an ELF executable is statically linked: it has no `PT_INTERP` program header
/// (static-pie included). Errors if it is not a 64-bit little-endian x86-64 ELF executable.
pub fn elf_is_static(path: &Path) -> Result<bool> {
    let mut f = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut h = [0u8; 64];
    f.read_exact(&mut h).with_context(|| format!("{}: not an ELF executable", path.display()))?;
    if &h[..4] != b"\x7fELF" || h[4] != 2 || h[5] != 1 {
        bail!("{}: not a 64-bit little-endian ELF file", path.display());
    }
    let machine = u16::from_le_bytes([h[18], h[19]]);
    if machine != 62 {
        bail!("{}: not an x86-64 program (ELF machine {machine})", path.display());
    }
    let phoff = u64::from_le_bytes(h[32..40].try_into()?);
    let phentsize = u16::from_le_bytes([h[54], h[55]]) as u64;
    let phnum = u16::from_le_bytes([h[56], h[57]]) as u64;
    if phnum == 0 || phentsize < 4 {
        bail!("{}: an ELF file without program headers is not an executable", path.display());
    }
    let mut ph = vec![0u8; (phentsize * phnum) as usize];
    use std::io::Seek;
    f.seek(std::io::SeekFrom::Start(phoff))?;
    f.read_exact(&mut ph).with_context(|| format!("{}: truncated program headers", path.display()))?;
    const PT_INTERP: u32 = 3;
    Ok(!ph.chunks(phentsize as usize).any(|p| u32::from_le_bytes(p[..4].try_into().unwrap()) == PT_INTERP))
}

/// The program to ship as /init: `--init`, or this very executable; it must be static.
fn choose_init(arg: Option<&Path>) -> Result<PathBuf> {
    let p = match arg {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe().context("finding the running executable")?,
    };
    if !elf_is_static(&p)? {
        if arg.is_some() {
            bail!("{} is dynamically linked and cannot run as /init: {STATIC_ADVICE}", p.display());
        }
        bail!("this ferry ({}) is dynamically linked and cannot be the image's /init: {STATIC_ADVICE}", p.display());
    }
    Ok(p)
}

fn default_cache() -> PathBuf {
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from(kernel::DEFAULT_CACHE);
    }
    // /var/cache is root's: a user build caches in their own cache directory.
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    base.join("ferry")
}

/// Splits `--cmdline` for the USB image: `ferry.*` keys go to ferry.toml (key without the
/// prefix, value unquoted) so they stay editable on the stick (the kernel command line would
/// win over the file), and every other word stays on the kernel command line.
pub fn split_cmdline(extra: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut kernel = vec![];
    let mut keys = vec![];
    for w in split_words(extra) {
        let unq = w.replace('"', "");
        match unq.strip_prefix(PREFIX).and_then(|kv| kv.split_once('=')) {
            Some((k, v)) if !k.is_empty() => keys.push((k.to_string(), v.to_string())),
            _ => kernel.push(w),
        }
    }
    (kernel, keys)
}

fn full_cmdline(extra: &[String]) -> String {
    let mut s = BASE_CMDLINE.to_string();
    for w in extra {
        s.push(' ');
        s.push_str(w);
    }
    s
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The editable ferry.toml on the stick, with `keys` (from `--cmdline`) set and the rest
/// commented out.
pub fn ferry_toml(keys: &[(String, String)]) -> String {
    let mut t = String::from(
        "# ferry.toml: settings for the ferry live image, read from this stick when it boots.\n\
         #\n\
         # Edit it on any computer: the stick's partition is FAT32, labelled FERRY. The keys are\n\
         # the kernel command line's ferry.* keys without the \"ferry.\" prefix; a key given on the\n\
         # kernel command line wins over this file. Remove the leading \"# \" to set a key; values\n\
         # are quoted strings.\n",
    );
    for k in TOML_KEYS {
        t.push_str(&format!("\n# {}\n", k.help));
        match keys.iter().rev().find(|(key, _)| key == k.key) {
            Some((_, v)) => t.push_str(&format!("{} = {}\n", k.key, toml_string(v))),
            None => t.push_str(&format!("# {} = {}\n", k.key, toml_string(k.example))),
        }
    }
    let others: Vec<&(String, String)> =
        keys.iter().filter(|(k, _)| !TOML_KEYS.iter().any(|known| known.key == k)).collect();
    if !others.is_empty() {
        t.push_str("\n# Other keys given at build time.\n");
        for (k, v) in others {
            t.push_str(&format!("{} = {}\n", toml_string(k), toml_string(v)));
        }
    }
    t
}

/// The iPXE script. Paths are relative, so iPXE resolves them against the script's own URL:
/// the same script works from TFTP and from `ferry serve` (http://HOST:PORT/boot/boot.ipxe).
pub fn ipxe_script(cmdline: &str, kernel_version: &str) -> String {
    format!(
        "#!ipxe\n\
         # ferry live image (kernel {kernel_version}, ferry {}). vmlinuz and initrd.img are\n\
         # fetched relative to this script's URL: keep the three files together.\n\
         kernel vmlinuz initrd=initrd.img {cmdline}\n\
         initrd initrd.img\n\
         boot\n",
        env!("CARGO_PKG_VERSION")
    )
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

fn copy_atomic(src: &Path, dst: &Path) -> Result<u64> {
    let tmp = dst.with_extension("tmp");
    fs::copy(src, &tmp).with_context(|| format!("copying {} to {}", src.display(), tmp.display()))?;
    fs::rename(&tmp, dst)?;
    Ok(fs::metadata(dst)?.len())
}

fn write_atomic(dst: &Path, text: &str) -> Result<()> {
    let tmp = dst.with_extension("tmp");
    fs::write(&tmp, text).with_context(|| format!("writing {}", tmp.display()))?;
    fs::rename(&tmp, dst)?;
    Ok(())
}

pub fn build(args: &ImageBuildArgs) -> Result<BuildOutputs> {
    let started = Instant::now();
    let init = choose_init(args.init.as_deref())?;
    let cache = args.cache.clone().unwrap_or_else(default_cache);

    // Host tools first, so a missing one fails before the long steps. The boot chain's
    // packages always come from apt (only the kernel can be given as a file).
    let mut need: Vec<(&str, &str)> =
        vec![("dpkg-deb", "dpkg"), ("depmod", "kmod"), ("apt-get", "apt"), ("apt-cache", "apt")];
    if !args.no_usb {
        need.extend([
            ("sgdisk", "gdisk"),
            ("mkfs.vfat", "dosfstools"),
            ("mcopy", "mtools"),
            ("mmd", "mtools"),
            ("bmaptool", "bmap-tools"),
        ]);
    }
    tools::ensure(&need)?;

    step(format!("kernel: preparing (cache {})", cache.display()));
    let kernel = kernel::prepare(args.kernel_deb.as_deref(), &cache)?;
    step(format!("kernel: {} from {}", kernel.version, kernel.deb.display()));
    let loaders = bootloaders::prepare(&cache)?;
    step(format!(
        "boot chain: {}",
        loaders.packages.iter().map(|p| format!("{} {}", p.name, p.version)).collect::<Vec<_>>().join(", ")
    ));

    fs::create_dir_all(&args.out).with_context(|| format!("creating {}", args.out.display()))?;
    let work = args.out.join(format!(".ferry-build-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let result = build_in(args, &init, &kernel, &loaders, &work, started);
    let _ = fs::remove_dir_all(&work);
    result
}

fn build_in(
    args: &ImageBuildArgs,
    init: &Path,
    kernel: &kernel::Kernel,
    loaders: &bootloaders::BootLoaders,
    work: &Path,
    started: Instant,
) -> Result<BuildOutputs> {
    let out = &args.out;
    let mtime = Archive::mtime_from_env();
    let (initrd, initrd_bytes, shipped) = build_initramfs(init, kernel, work, out, mtime)?;
    let vmlinuz = out.join(names::KERNEL);
    let kernel_bytes = copy_atomic(&kernel.vmlinuz, &vmlinuz)?;

    let cmdline = full_cmdline(&split_words(&args.cmdline));
    let ipxe = out.join(names::IPXE_SCRIPT);
    write_atomic(&ipxe, &ipxe_script(&cmdline, &kernel.version))?;
    let pxe_files = write_pxe_files(out, loaders, &cmdline, &kernel.version)?;
    step(format!("PXE: {}, {} and {} more", ipxe.display(), vmlinuz.display(), pxe_files.len()));

    let mut info = ImageInfo {
        ferry_version: env!("CARGO_PKG_VERSION").into(),
        kernel_version: kernel.version.clone(),
        packages: std::iter::once(&kernel.deb)
            .filter_map(|d| packages::name_and_version(d))
            .map(|(name, version)| Package { name, version })
            .chain(loaders.packages.iter().cloned())
            .collect(),
        usb_grub_cfg: None,
    };
    let (mut usb, mut bmap, mut usb_bytes) = (None, None, None);
    if args.no_usb {
        // A stick image from an earlier build would not match the new initrd.
        for stale in [names::USB, names::USB_BMAP] {
            if fs::remove_file(out.join(stale)).is_ok() {
                step(format!("removed the earlier {stale} (--no-usb)"));
            }
        }
    } else {
        let img = out.join(names::USB);
        let stick = build_stick(&args.cmdline, &initrd, kernel, loaders, work, &img, mtime)?;
        bmap = Some(usb::bmap(&img)?);
        step(format!(
            "USB: {} ({} bytes; UEFI with or without Secure Boot, and legacy BIOS)",
            img.display(),
            stick.bytes
        ));
        info.usb_grub_cfg = Some(stick.menu);
        usb = Some(img);
        usb_bytes = Some(stick.bytes);
    }
    let image_json = out.join(names::IMAGE_JSON);
    write_atomic(&image_json, &(serde_json::to_string_pretty(&info)? + "\n"))?;

    Ok(BuildOutputs {
        kernel: vmlinuz,
        initrd,
        ipxe,
        usb,
        kernel_version: kernel.version.clone(),
        bmap,
        kernel_bytes,
        initrd_bytes,
        usb_bytes,
        modules: shipped.modules.len(),
        missing_modules: shipped.missing.clone(),
        cmdline,
        kernel_package: kernel.deb.clone(),
        pxe_files,
        image_json,
        packages: info.packages,
        seconds: started.elapsed().as_secs_f64(),
    })
}

/// The initramfs: ferry as /init, the drivers, their index; written as `initrd.img`.
fn build_initramfs(
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

/// The PXE files beside kernel and initramfs: the signed chain for UEFI (shim as the DHCP boot
/// file, the network GRUB under the name shim loads, the MOK manager) with a GRUB menu carrying
/// `--cmdline` (`ferry serve --tftp-listen` serves its own instead, with the receiver's URL and
/// pin), and iPXE for the rest.
fn write_pxe_files(
    out: &Path,
    bl: &bootloaders::BootLoaders,
    cmdline: &str,
    kernel_version: &str,
) -> Result<Vec<PathBuf>> {
    let mut written = vec![];
    for (name, src) in [
        (names::SHIM, &bl.shim),
        (names::GRUB_NET, &bl.grub_net_efi),
        (names::MOK_MANAGER, &bl.mok_manager),
        (names::IPXE_BIOS, &bl.ipxe_bios),
        (names::IPXE_EFI, &bl.ipxe_efi),
    ] {
        let dst = out.join(name);
        copy_atomic(src, &dst)?;
        written.push(dst);
    }
    let comment = format!(
        "PXE boot under UEFI (shim, then this network GRUB), kernel {kernel_version}, ferry {}.\n\
         Kernel and initramfs come from the TFTP root. `ferry serve --tftp-listen` serves its\n\
         own menu here, with the receiver's URL and pin.",
        env!("CARGO_PKG_VERSION")
    );
    let menu = grub::Menu {
        kernel: &format!("/{}", names::KERNEL),
        initrd: &format!("/{}", names::INITRD),
        entries: vec![grub::Entry { title: "ferry live image".into(), args: cmdline.to_string() }],
        timeout: 0,
        netboot: true,
        comment: &comment,
    };
    let cfg = out.join(names::GRUB_NET_CFG);
    fs::create_dir_all(cfg.parent().expect("grub/"))?;
    write_atomic(&cfg, &grub::render(&menu))?;
    written.push(cfg);
    Ok(written)
}

/// The USB stick image: the signed chain for UEFI, GRUB for BIOS, the menu with the non-ferry
/// words of `--cmdline`, ferry.toml with its ferry.* keys.
fn build_stick(
    cmdline: &str,
    initrd: &Path,
    kernel: &kernel::Kernel,
    bl: &bootloaders::BootLoaders,
    work: &Path,
    img: &Path,
    mtime: u32,
) -> Result<usb::Stick> {
    let (kwords, keys) = split_cmdline(cmdline);
    let comment = format!(
        "The USB stick, for UEFI (shim and GRUB, Secure Boot on or off) and legacy BIOS.\n\
         Kernel {}, ferry {}. Settings for the technician go in /ferry.toml, not here.",
        kernel.version,
        env!("CARGO_PKG_VERSION")
    );
    let menu = grub::stick_menu(&full_cmdline(&kwords), &comment)?;
    let toml_path = work.join("ferry.toml");
    fs::write(&toml_path, ferry_toml(&keys))?;
    let boot_sector = fs::read(bl.grub_pc_dir.join("boot.img"))?;
    let core = bios::core_image(bl, work)?;
    let contents = usb::StickContents {
        files: vec![
            ("EFI/BOOT/BOOTX64.EFI", bl.shim.clone()),
            ("EFI/BOOT/grubx64.efi", bl.grub_efi.clone()),
            ("EFI/BOOT/mmx64.efi", bl.mok_manager.clone()),
            (names::STICK_KERNEL, kernel.vmlinuz.clone()),
            (names::STICK_INITRD, initrd.to_path_buf()),
            ("ferry.toml", toml_path.clone()),
        ],
        menu: &menu,
        bios_boot_sector: &boot_sector,
        bios_core: &core,
    };
    // GUIDs and the volume id follow from the contents: the same inputs, the same image.
    let mut seed = blake3::Hasher::new();
    for (_, f) in &contents.files {
        seed.update_reader(File::open(f)?)?;
    }
    seed.update(&menu);
    seed.update(&core);
    // FAT cannot store times before 1980.
    let stick = usb::build_disk(&contents, work, img, seed.finalize().as_bytes(), i64::from(mtime).max(315_532_800))?;
    usb::verify_disk(img)?;
    Ok(stick)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_test_binary_is_dynamic_and_sh_is_not_static_either() {
        // Test binaries are dynamically linked unless built with +crt-static.
        let me = std::env::current_exe().unwrap();
        let st = elf_is_static(&me).unwrap();
        let crt_static = cfg!(target_feature = "crt-static");
        assert_eq!(st, crt_static);
        assert!(elf_is_static(Path::new("/bin/sh")).map(|s| !s).unwrap_or(true));
        assert!(elf_is_static(Path::new("/etc/hostname")).is_err() || !Path::new("/etc/hostname").exists());
    }

    #[test]
    fn dynamic_init_is_refused_with_the_build_command() {
        let me = std::env::current_exe().unwrap();
        if cfg!(target_feature = "crt-static") {
            return;
        }
        let e = choose_init(Some(&me)).unwrap_err().to_string();
        assert!(e.contains("+crt-static") && e.contains("--init target/x86_64-unknown-linux-gnu/release/ferry"), "{e}");
    }

    #[test]
    fn cmdline_split_for_the_stick() {
        let (k, keys) = split_cmdline(
            "ferry.server=https://10.0.2.2:8443 ferry.pin=ab12 ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none \
             ferry.disks=\"sda, sdb\" quiet",
        );
        assert_eq!(k, ["ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none", "quiet"]);
        assert_eq!(
            keys,
            [
                ("server".to_string(), "https://10.0.2.2:8443".to_string()),
                ("pin".into(), "ab12".into()),
                ("disks".into(), "sda, sdb".into())
            ]
        );
        assert_eq!(full_cmdline(&k), format!("{BASE_CMDLINE} ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none quiet"));
    }

    #[test]
    fn ferry_toml_parses_and_carries_the_keys() {
        let keys = vec![
            ("server".to_string(), "https://10.0.2.2:8443".to_string()),
            ("job".into(), "j-1".into()),
            ("odd".into(), "a \"quoted\" \\ value".into()),
        ];
        let text = ferry_toml(&keys);
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["server"].as_str(), Some("https://10.0.2.2:8443"));
        assert_eq!(t["job"].as_str(), Some("j-1"));
        assert_eq!(t["odd"].as_str(), Some("a \"quoted\" \\ value"));
        assert!(!t.contains_key("pin"));
        for k in ["server", "pin", "job", "token", "on_finish", "disks"] {
            assert!(text.contains(&format!("{k} = ")), "{k} is not documented");
        }
        // Nothing set: every line is a comment, and it still parses.
        let empty: toml::Table = toml::from_str(&ferry_toml(&[])).unwrap();
        assert!(empty.is_empty());
    }

    #[test]
    fn ipxe_uses_relative_paths() {
        let s = ipxe_script(&full_cmdline(&["ferry.job=7".into()]), "6.1.0-x");
        let lines: Vec<&str> = s.lines().filter(|l| !l.starts_with('#') || l.starts_with("#!")).collect();
        assert_eq!(
            lines,
            [
                "#!ipxe",
                "kernel vmlinuz initrd=initrd.img console=ttyS0 console=tty0 panic=30 printk.devkmsg=on ip=dhcp ferry.job=7",
                "initrd initrd.img",
                "boot"
            ]
        );
    }

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
