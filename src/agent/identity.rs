//! The machine's identity as the receiver records it: DMI and MAC addresses.

use std::fs;
use std::path::Path;

use crate::proto::MachineIdentity;

fn read(path: &Path) -> Option<String> {
    let s = fs::read_to_string(path).ok()?;
    let s = s.trim().to_string();
    (!s.is_empty()).then_some(s)
}

/// Reads `/sys/class/dmi/id` and `/sys/class/net` (the product UUID and serial need root).
/// `FERRY_SYS_ROOT` names another sysfs root: containers without DMI, and tests that play two
/// machines on one host.
pub fn machine_identity() -> MachineIdentity {
    match std::env::var_os("FERRY_SYS_ROOT") {
        Some(root) => machine_identity_from(Path::new(&root)),
        None => machine_identity_from(Path::new("/sys")),
    }
}

pub fn machine_identity_from(sys: &Path) -> MachineIdentity {
    let dmi = sys.join("class/dmi/id");
    let mut macs: Vec<String> = fs::read_dir(sys.join("class/net"))
        .map(|rd| {
            rd.filter_map(Result::ok)
                .filter(|e| e.file_name() != "lo")
                .filter_map(|e| read(&e.path().join("address")))
                .filter(|m| m != "00:00:00:00:00:00")
                .collect()
        })
        .unwrap_or_default();
    macs.sort();
    macs.dedup();
    MachineIdentity {
        product_uuid: read(&dmi.join("product_uuid")).map(|u| u.to_lowercase()),
        serial: read(&dmi.join("product_serial")),
        vendor: read(&dmi.join("sys_vendor")),
        product: read(&dmi.join("product_name")),
        hostname: read(&sys.join("../proc/sys/kernel/hostname"))
            .or_else(|| read(Path::new("/proc/sys/kernel/hostname"))),
        macs,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_a_fixture_tree() {
        let t = tempfile::tempdir().unwrap();
        let w = |rel: &str, v: &str| {
            let p = t.path().join(rel);
            fs::create_dir_all(p.parent().unwrap()).unwrap();
            fs::write(p, v).unwrap();
        };
        w("class/dmi/id/product_uuid", "4C4C4544-0031-3210-8052-B4C04F4E3732\n");
        w("class/dmi/id/sys_vendor", "Dell Inc.\n");
        w("class/dmi/id/product_name", "PowerEdge R640\n");
        w("class/net/eth0/address", "52:54:00:12:34:56\n");
        w("class/net/lo/address", "00:00:00:00:00:00\n");
        w("class/net/bond0/address", "00:00:00:00:00:00\n");
        let m = machine_identity_from(t.path());
        assert_eq!(m.product_uuid.as_deref(), Some("4c4c4544-0031-3210-8052-b4c04f4e3732"));
        assert_eq!(m.vendor.as_deref(), Some("Dell Inc."));
        assert_eq!(m.product.as_deref(), Some("PowerEdge R640"));
        assert_eq!(m.serial, None);
        assert_eq!(m.macs, ["52:54:00:12:34:56"]);
    }
}

/// Whether an identifier really identifies something. Firmware often fills DMI and disk fields
/// with placeholders that many machines share; comparing those would call two different
/// machines the same one (or fail to match a named target).
pub fn meaningful(id: &str) -> bool {
    let t = id.trim().to_ascii_lowercase();
    const PLACEHOLDERS: &[&str] = &[
        "not specified",
        "not applicable",
        "to be filled by o.e.m.",
        "default string",
        "system serial number",
        "none",
        "n/a",
        "unknown",
        "0123456789",
        "03000200-0400-0500-0006-000700080009",
    ];
    !t.is_empty() && !t.chars().all(|c| c == '0' || c == '-' || c == 'f') && !PLACEHOLDERS.contains(&t.as_str())
}

#[cfg(test)]
mod meaningful_tests {
    use super::meaningful;

    #[test]
    fn placeholders_identify_nothing() {
        for junk in [
            "",
            "  ",
            "00000000-0000-0000-0000-000000000000",
            "ffffffff-ffff-ffff-ffff-ffffffffffff",
            "To Be Filled By O.E.M.",
            "Not Specified",
            "Default string",
            "0",
        ] {
            assert!(!meaningful(junk), "{junk:?}");
        }
        for real in ["4c4c4544-0042-3510-8051-b4c04f4e4e32", "CZ2012345X", "QM00001", "0x5000c500a1b2c3d4"] {
            assert!(meaningful(real), "{real:?}");
        }
    }
}
