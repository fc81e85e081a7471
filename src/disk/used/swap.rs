//! Linux swap: only its header page matters, unless a hibernation image sits in it.
//!
//! Swap holds nothing a migrated system needs after a clean shutdown, so only the header (its
//! signature, UUID and label, which `/etc/fstab` may name) is read. A machine hibernated
//! instead of shut down keeps its memory image there, and resuming from it needs every page:
//! such an area is read whole.

use std::io;

use super::{read_vec, RangeSet, Verdict, Volume};

const FS: &str = "swap";
/// The page sizes a swap header can be written with (x86 uses 4096; arm64 and ppc64 larger).
const PAGE_SIZES: [u64; 4] = [4096, 8192, 16384, 65536];
/// What the last ten bytes of the header page say for an ordinary swap area.
const SWAP_SIGNATURES: [&[u8]; 2] = [b"SWAPSPACE2", b"SWAP-SPACE"];
/// What swsusp, uswsusp and TuxOnIce write there instead while a hibernation image is kept.
const HIBERNATION_SIGNATURES: [&[u8]; 4] = [b"S1SUSPEND", b"S2SUSPEND", b"ULSUSPEND", b"LINHIB0001"];

/// Reads a swap area's header from `vol`.
pub fn probe(vol: &dyn Volume) -> io::Result<Verdict> {
    for page in PAGE_SIZES {
        if vol.len() < page {
            break;
        }
        let sig = read_vec(vol, page - 10, 10)?;
        if SWAP_SIGNATURES.iter().any(|s| sig.starts_with(s)) {
            let mut used = RangeSet::new();
            used.add(0, page);
            return Ok(Verdict::Used { fs: FS.into(), ranges: used.finish(vol.len()), notes: vec![] });
        }
        if HIBERNATION_SIGNATURES.iter().any(|s| sig.starts_with(s)) {
            return Ok(Verdict::whole(FS, "it holds a hibernation image (the machine was hibernated, not shut down)"));
        }
    }
    Ok(Verdict::NotMine)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::used::FileVolume;

    fn volume(bytes: &[u8]) -> (tempfile::NamedTempFile, FileVolume) {
        let f = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(f.path(), bytes).unwrap();
        let v = FileVolume::open(f.path()).unwrap();
        (f, v)
    }

    #[test]
    fn mkswap_header_only_and_hibernation_whole() {
        let (f, _) = volume(&vec![0xAAu8; 8 << 20]);
        let out = std::process::Command::new("mkswap").arg(f.path()).output().expect("mkswap (util-linux) runs");
        assert!(out.status.success(), "mkswap: {}", String::from_utf8_lossy(&out.stderr));
        let v = FileVolume::open(f.path()).unwrap();
        assert_eq!(
            probe(&v).unwrap(),
            Verdict::Used { fs: "swap".into(), ranges: std::iter::once(0..4096).collect(), notes: vec![] }
        );

        // What the kernel writes over the signature when it hibernates to this area.
        let mut bytes = std::fs::read(f.path()).unwrap();
        bytes[4086..4096].copy_from_slice(b"S1SUSPEND\0");
        let (_g, v) = volume(&bytes);
        match probe(&v).unwrap() {
            Verdict::Whole { fs, reason } => assert!(fs == "swap" && reason.contains("hibernat"), "{reason}"),
            other => panic!("{other:?}"),
        }
        let (_h, v) = volume(&vec![0u8; 70000]);
        assert_eq!(probe(&v).unwrap(), Verdict::NotMine);
    }
}
