//! How this machine booted: legacy BIOS or UEFI, and whether UEFI Secure Boot is enforcing, read
//! from the firmware's `SecureBoot` variable (efivarfs, mounted read-only here: nothing in the
//! live image writes a firmware variable). Told to the technician early, because a Secure Boot
//! boot changes the machine's SBAT revocation level.

use std::path::Path;

use nix::mount::{mount, MsFlags};

use super::modules::Loader;

const EFI: &str = "/sys/firmware/efi";

/// The EFI global variable GUID, under which firmware keeps `SecureBoot`.
const SECURE_BOOT_VAR: &str = "efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    Bios,
    Uefi { secure_boot: Option<bool> },
}

impl Firmware {
    /// This machine's: under UEFI, loads efivarfs (a module in Debian's kernel) and mounts it
    /// read-only first.
    pub fn read(loader: &mut Loader) -> Self {
        let efi = Path::new(EFI);
        if efi.is_dir() && !has_entries(&efi.join("efivars")) {
            loader.load("efivarfs");
            let ro = MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_NODEV;
            if let Err(e) = mount(Some("efivarfs"), &efi.join("efivars"), Some("efivarfs"), ro, None::<&str>) {
                log::warn!("mounting efivarfs: {e}");
            }
        }
        Self::detect(efi)
    }

    /// Reads it from `efi` (normally `/sys/firmware/efi`).
    pub fn detect(efi: &Path) -> Self {
        if !efi.is_dir() {
            return Firmware::Bios;
        }
        // 4 bytes of attributes, then the value: 1 enforcing, 0 not.
        let secure_boot = match std::fs::read(efi.join(SECURE_BOOT_VAR)) {
            Ok(b) if b.len() == 5 => Some(b[4] == 1),
            // No such variable among the others: firmware without Secure Boot support. (An
            // empty directory is efivarfs not mounted: unknown.)
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && has_entries(&efi.join("efivars")) => Some(false),
            _ => None,
        };
        Firmware::Uefi { secure_boot }
    }

    /// The line for the screen.
    pub fn line(&self) -> &'static str {
        match self {
            Firmware::Bios => "Secure Boot: off (legacy BIOS boot)",
            Firmware::Uefi { secure_boot: Some(true) } => "Secure Boot: on (UEFI; the kernel is locked down)",
            Firmware::Uefi { secure_boot: Some(false) } => "Secure Boot: off (UEFI)",
            Firmware::Uefi { secure_boot: None } => "Secure Boot: unknown (UEFI; its variables cannot be read)",
        }
    }
}

fn has_entries(dir: &Path) -> bool {
    std::fs::read_dir(dir).is_ok_and(|mut d| d.next().is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_secure_boot_variable() {
        let t = tempfile::tempdir().unwrap();
        let efi = t.path().join("efi");
        assert_eq!(Firmware::detect(&efi), Firmware::Bios);
        std::fs::create_dir_all(efi.join("efivars")).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: None }, "efivarfs not mounted");
        std::fs::write(efi.join("efivars/Boot0000-8be4df61-93ca-11d2-aa0d-00e098032b8c"), [7, 0, 0, 0]).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: Some(false) });
        let var = efi.join(SECURE_BOOT_VAR);
        std::fs::write(&var, [6, 0, 0, 0, 1]).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: Some(true) });
        assert!(Firmware::detect(&efi).line().starts_with("Secure Boot: on"));
        std::fs::write(&var, [6, 0, 0, 0, 0]).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: Some(false) });
        std::fs::write(&var, [6, 0]).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: None });
        std::fs::remove_dir_all(efi.join("efivars")).unwrap();
        assert_eq!(Firmware::detect(&efi), Firmware::Uefi { secure_boot: None });
    }
}
