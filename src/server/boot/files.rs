//! The live image's files for network boots, as the boot listeners (HTTP and TFTP) serve them:
//! the files of a built image (`--boot-dir`, only the names in [`files::SERVED`]), and what the
//! receiver makes for each request with its own URL and pin baked in: the iPXE menu, the network
//! GRUB's menu (PXE under Secure Boot), and the stick image with its GRUB menu replaced for UEFI
//! HTTP Boot. Files are read piece by piece as they are sent, never whole.

use std::collections::HashMap;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use super::super::{AppState, ReceiverInfo};
use super::ipxe;
use crate::boot::files::{self, ImageInfo};
use crate::boot::{grub, safe_value, LiveArgs, BASE_CMDLINE};

/// Why a boot file cannot be served.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootError {
    /// No such boot file (or not one that is served).
    NotFound(String),
    /// The receiver was started without `--boot-dir`.
    NoBootDir,
    /// The receiver is still starting (its URL and pin are not known yet).
    Starting,
    /// The built image is not what its `image.json` says.
    BadImage(String),
}

impl std::fmt::Display for BootError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BootError::NotFound(n) => write!(f, "no boot file {n:?}"),
            BootError::NoBootDir => write!(f, "this receiver was started without --boot-dir"),
            BootError::Starting => write!(f, "the receiver is starting"),
            BootError::BadImage(m) => write!(f, "the live image in --boot-dir is damaged: {m}"),
        }
    }
}

/// A file to send: bytes made for this request, or a file on disk, optionally with one range
/// of it replaced.
#[derive(Clone)]
pub struct BootContent {
    source: Source,
    len: u64,
    pub content_type: &'static str,
}

#[derive(Clone)]
enum Source {
    Bytes(Bytes),
    File { file: Arc<File>, overlay: Option<(u64, Arc<Vec<u8>>)> },
}

impl BootContent {
    fn bytes(b: impl Into<Bytes>, content_type: &'static str) -> Self {
        let b = b.into();
        Self { len: b.len() as u64, source: Source::Bytes(b), content_type }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads up to `buf.len()` bytes at `offset` (fewer only at the end). Blocking: call it from
    /// a blocking thread.
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        if offset >= self.len {
            return Ok(0);
        }
        let want = buf.len().min((self.len - offset) as usize);
        let buf = &mut buf[..want];
        match &self.source {
            Source::Bytes(b) => buf.copy_from_slice(&b[offset as usize..offset as usize + want]),
            Source::File { file, overlay } => {
                file.read_exact_at(buf, offset)?;
                if let Some((at, bytes)) = overlay {
                    overlay_onto(buf, offset, *at, bytes);
                }
            }
        }
        Ok(want)
    }
}

/// Copies the part of `bytes` (placed at `at` in the file) that falls in `buf` (placed at
/// `offset`) onto it.
fn overlay_onto(buf: &mut [u8], offset: u64, at: u64, bytes: &[u8]) {
    let (start, end) = (offset.max(at), (offset + buf.len() as u64).min(at + bytes.len() as u64));
    if start < end {
        buf[(start - offset) as usize..(end - offset) as usize]
            .copy_from_slice(&bytes[(start - at) as usize..(end - at) as usize]);
    }
}

/// What a request names besides the file: `job`, `token`, `enroll`, `role` (from an HTTP query;
/// TFTP has none). Unsafe values are dropped.
pub fn boot_params(query: &HashMap<String, String>) -> HashMap<String, String> {
    query
        .iter()
        .filter(|(k, _)| ["job", "token", "enroll", "role"].contains(&k.as_str()))
        .filter_map(|(k, v)| safe_value(v).map(|v| (k.clone(), v.to_string())))
        .collect()
}

/// The file `name` for a request with `params` (see [`boot_params`]).
pub fn resolve(st: &AppState, name: &str, params: &HashMap<String, String>) -> Result<BootContent, BootError> {
    let dir = st.boot_dir.as_ref().ok_or(BootError::NoBootDir)?;
    let info = || st.info.get().ok_or(BootError::Starting);
    let mut params = params.clone();
    // A network boot that names nothing gets the receiver's default enrollment, if it has one.
    if let Some(e) = &st.boot_enroll {
        if !params.contains_key("job") && !params.contains_key("enroll") {
            params.insert("enroll".into(), e.clone());
        }
    }
    match name {
        files::IPXE_MENU => {
            let i = info()?;
            Ok(BootContent::bytes(
                ipxe::menu(i.url_for_sources(), i.pin.as_deref(), &params),
                "text/plain; charset=utf-8",
            ))
        }
        files::GRUB_NET_CFG => Ok(BootContent::bytes(network_grub_menu(info()?, &params), "text/plain; charset=utf-8")),
        files::HTTP_BOOT_IMAGE => http_boot_image(dir, info()?, &params),
        _ => {
            let (name, ctype) =
                files::SERVED.iter().find(|(n, _)| *n == name).ok_or_else(|| BootError::NotFound(name.to_string()))?;
            let file = File::open(dir.join(name)).map_err(|_| BootError::NotFound(name.to_string()))?;
            let len = file.metadata().map_err(|e| BootError::NotFound(format!("{name}: {e}")))?.len();
            Ok(BootContent { source: Source::File { file: Arc::new(file), overlay: None }, len, content_type: ctype })
        }
    }
}

fn live_args<'a>(info: &'a ReceiverInfo, params: &'a HashMap<String, String>, target: bool) -> LiveArgs<'a> {
    LiveArgs {
        server: info.url_for_sources(),
        pin: info.pin.as_deref(),
        target,
        job: params.get("job").map(String::as_str),
        token: params.get("token").map(String::as_str),
        enroll: params.get("enroll").map(String::as_str),
    }
}

/// The network GRUB's menu (`grub/grub.cfg` over TFTP): migrate this machine, or receive a
/// migration, with the receiver's URL and pin and the card GRUB booted from as BOOTIF.
pub fn network_grub_menu(info: &ReceiverInfo, params: &HashMap<String, String>) -> String {
    let entry = |title: &str, target: bool| grub::Entry {
        title: title.into(),
        args: format!("{BASE_CMDLINE} {}", live_args(info, params, target).words()),
    };
    let mut entries = vec![
        entry("Migrate this machine (source)", false),
        entry("Receive a migration (target): ITS DISKS ARE OVERWRITTEN", true),
    ];
    if params.get("role").is_some_and(|r| r == "target") {
        entries.reverse();
    }
    let comment = format!(
        "Served by the ferry receiver at {}.\n\
         Without a job or enrollment on an entry's line, press e on it and add\n\
         ferry.job=ID ferry.token=TOKEN (a target always needs its job and target token).",
        info.url_for_sources()
    );
    grub::render(&grub::Menu {
        kernel: &format!("/{}", files::KERNEL),
        initrd: &format!("/{}", files::INITRD),
        entries,
        timeout: 10,
        netboot: true,
        comment: &comment,
    })
}

/// The stick image with its GRUB menu replaced by one that carries the whole configuration on
/// the kernel command line: under UEFI HTTP Boot the firmware holds the image in a RAM disk that
/// Linux cannot see, so the live image finds no stick and no ferry.toml.
fn http_boot_image(
    dir: &std::path::Path,
    info: &ReceiverInfo,
    params: &HashMap<String, String>,
) -> Result<BootContent, BootError> {
    let image = ImageInfo::read(dir).map_err(|e| BootError::NotFound(format!("{}: {e:#}", files::HTTP_BOOT_IMAGE)))?;
    let place = image.usb_grub_cfg.ok_or_else(|| {
        BootError::NotFound(format!("{} (the image was built with --no-usb)", files::HTTP_BOOT_IMAGE))
    })?;
    let path: PathBuf = dir.join(files::USB);
    let file = File::open(&path).map_err(|e| BootError::NotFound(format!("{}: {e}", files::USB)))?;
    let len = file.metadata().map_err(|e| BootError::NotFound(format!("{}: {e}", files::USB)))?.len();
    // The menu must still be where image.json says: a stick image rebuilt or edited since would
    // otherwise be served with a piece of something else overwritten.
    let mut head = vec![0u8; grub::FIRST_LINE.len()];
    let found = file.read_exact_at(&mut head, place.offset).is_ok() && head == grub::FIRST_LINE.as_bytes();
    if !found || place.offset + place.len > len {
        return Err(BootError::BadImage(format!("{} has no GRUB menu at byte {}", files::USB, place.offset)));
    }
    let target = params.get("role").is_some_and(|r| r == "target");
    let args = format!("{BASE_CMDLINE} {}", live_args(info, params, target).words());
    let comment = format!("UEFI HTTP Boot image served by the ferry receiver at {}.", info.url_for_sources());
    let menu = grub::stick_menu(&args, &comment).map_err(|e| BootError::BadImage(format!("{e:#}")))?;
    if menu.len() as u64 != place.len {
        return Err(BootError::BadImage(format!("its GRUB menu is {} bytes, expected {}", place.len, menu.len())));
    }
    Ok(BootContent {
        source: Source::File { file: Arc::new(file), overlay: Some((place.offset, Arc::new(menu))) },
        len,
        // What UEFI HTTP Boot firmware takes as a disk image to boot from a RAM disk.
        content_type: "application/vnd.efi-img",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlay_replaces_only_the_overlapping_part() {
        let bytes = b"ABCD";
        for (offset, len, want) in [
            (0u64, 10usize, "....ABCD.."),
            (0, 4, "...."),
            (3, 3, ".AB"),
            (5, 5, "BCD.."),
            (7, 2, "D."),
            (8, 2, ".."),
            (10, 4, "...."),
        ] {
            let mut buf = vec![b'.'; len];
            overlay_onto(&mut buf, offset, 4, bytes);
            let mut expect = vec![b'.'; len];
            expect.copy_from_slice(want.as_bytes());
            assert_eq!(String::from_utf8(buf).unwrap(), String::from_utf8(expect).unwrap(), "at {offset}+{len}");
        }
    }

    #[test]
    fn only_safe_boot_parameters_are_kept() {
        let q: HashMap<String, String> =
            [("job", "j1"), ("token", "a b"), ("enroll", "e\nboot"), ("x", "1"), ("role", "target")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let p = boot_params(&q);
        assert_eq!(p.len(), 2, "{p:?}");
        assert_eq!((p["job"].as_str(), p["role"].as_str()), ("j1", "target"));
    }

    #[test]
    fn network_menu_offers_both_roles_with_the_receiver_baked_in() {
        let info = ReceiverInfo {
            url: "https://127.0.0.1:8443".into(),
            pin: Some("ab12".into()),
            source_url: Some("https://10.0.0.5:8443".into()),
        };
        let enroll: HashMap<String, String> = [("enroll".to_string(), "e0e0".to_string())].into();
        let m = network_grub_menu(&info, &enroll);
        let source = m.find("menuentry \"Migrate this machine (source)\"").unwrap();
        let target = m.find("menuentry \"Receive a migration (target)").unwrap();
        assert!(source < target, "{m}");
        assert!(m.contains(&format!(
            "  linux /vmlinuz {BASE_CMDLINE} ferry.role=source ferry.server=https://10.0.0.5:8443 ferry.pin=ab12 ferry.enroll=e0e0 $bootif\n"
        )), "{m}");
        assert!(m.contains("ferry.role=target ferry.server=https://10.0.0.5:8443 ferry.pin=ab12 $bootif\n"), "{m}");
        assert!(m.contains("  initrd /initrd.img\n") && m.contains("set timeout=10\n"));
        let t: HashMap<String, String> = [("role".to_string(), "target".to_string())].into();
        let m = network_grub_menu(&info, &t);
        assert!(m.find("Receive a migration").unwrap() < m.find("Migrate this machine").unwrap());
    }
}
