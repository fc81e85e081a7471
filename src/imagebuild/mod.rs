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
pub mod elf;
pub mod ferry_toml;
pub mod initramfs;
pub mod kernel;
pub mod modules;
pub mod packages;
pub mod pxe;
pub mod tools;
pub mod usb;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};

use crate::boot::files::{self as names, ImageInfo, Package};
use crate::boot::grub;
use crate::boot::split_words;
use crate::fsx::{copy_atomic, write_atomic};
use cpio::Archive;
use ferry_toml::{ferry_toml, full_cmdline, split_cmdline};

/// What to build (the CLI's `ferry image build` fills it).
#[derive(Debug, Clone)]
pub struct BuildOptions {
    pub out: PathBuf,
    /// The static ferry to ship as /init (default: this executable, if static).
    pub init: Option<PathBuf>,
    /// A kernel package file instead of the current one from apt.
    pub kernel_deb: Option<PathBuf>,
    /// Where packages are cached (default: /var/cache/ferry, or the user's cache).
    pub cache: Option<PathBuf>,
    /// Extra kernel command line; its `ferry.*` keys go to the stick's ferry.toml.
    pub cmdline: String,
    pub no_usb: bool,
}

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

fn step(msg: impl AsRef<str>) {
    eprintln!("image: {}", msg.as_ref());
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

pub fn build(args: &BuildOptions) -> Result<BuildOutputs> {
    let started = Instant::now();
    let init = elf::choose_init(args.init.as_deref())?;
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
    args: &BuildOptions,
    init: &Path,
    kernel: &kernel::Kernel,
    loaders: &bootloaders::BootLoaders,
    work: &Path,
    started: Instant,
) -> Result<BuildOutputs> {
    let out = &args.out;
    let mtime = Archive::mtime_from_env();
    let (initrd, initrd_bytes, shipped) = initramfs::build_initramfs(init, kernel, work, out, mtime)?;
    let vmlinuz = out.join(names::KERNEL);
    let kernel_bytes = copy_atomic(&kernel.vmlinuz, &vmlinuz)?;

    let cmdline = full_cmdline(&split_words(&args.cmdline));
    let ipxe = out.join(names::IPXE_SCRIPT);
    write_atomic(&ipxe, pxe::ipxe_script(&cmdline, &kernel.version).as_bytes())?;
    let pxe_files = pxe::write_pxe_files(out, loaders, &cmdline, &kernel.version)?;
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
    write_atomic(&image_json, (serde_json::to_string_pretty(&info)? + "\n").as_bytes())?;

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
