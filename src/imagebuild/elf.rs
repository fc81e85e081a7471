//! The program the image runs as /init: a statically linked x86-64 ferry (the initramfs has no
//! libraries).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

const STATIC_ADVICE: &str = "build a static ferry with \
`RUSTFLAGS='-C target-feature=+crt-static' cargo build --release --target x86_64-unknown-linux-gnu` \
and pass --init target/x86_64-unknown-linux-gnu/release/ferry";

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
    f.seek(SeekFrom::Start(phoff))?;
    f.read_exact(&mut ph).with_context(|| format!("{}: truncated program headers", path.display()))?;
    const PT_INTERP: u32 = 3;
    Ok(!ph.chunks(phentsize as usize).any(|p| u32::from_le_bytes(p[..4].try_into().unwrap()) == PT_INTERP))
}

/// The program to ship as /init: `--init`, or this very executable; it must be static.
pub fn choose_init(arg: Option<&Path>) -> Result<PathBuf> {
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
}
