//! Machine identity, for the agents and the receiver alike: reading it (DMI, network cards),
//! and the one rule for "the same machine" and "the same identifier" that the target's checks,
//! the receiver's target checks and enrollment all use.

use std::fs;
use std::path::Path;

use crate::fsx::read_trimmed as read;
use crate::wire::MachineIdentity;

/// Reads `/sys/class/dmi/id` and the network cards' addresses in `/sys/class/net` (the product
/// UUID and serial need root).
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
                // Only network cards (they have a `device`): bridges, bonds, veth pairs and
                // docker0 have made-up addresses that change between boots and systems.
                .filter(|e| e.path().join("device").exists())
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

/// Whether two identifiers (DMI UUIDs, serials, WWNs, GUIDs) name the same thing: both
/// present, meaningful, and equal but for case and surrounding white space.
pub fn same_id(a: Option<&str>, b: Option<&str>) -> bool {
    matches!((a, b), (Some(a), Some(b)) if meaningful(a) && a.trim().eq_ignore_ascii_case(b.trim()))
}

/// Whether an identifier is one of `wanted` (names an operator gave).
pub fn is_one_of(wanted: &[String], have: Option<&str>) -> bool {
    wanted.iter().any(|w| same_id(have, Some(w)))
}

/// Whether two machine identities are the same machine: an equal meaningful UUID or serial, or
/// neither carrying any (virtual machines without DMI), compared by their network cards.
pub fn same_machine(a: &MachineIdentity, b: &MachineIdentity) -> bool {
    if same_id(a.product_uuid.as_deref(), b.product_uuid.as_deref())
        || same_id(a.serial.as_deref(), b.serial.as_deref())
    {
        return true;
    }
    let blank = |m: &MachineIdentity| {
        !m.product_uuid.as_deref().is_some_and(meaningful) && !m.serial.as_deref().is_some_and(meaningful)
    };
    blank(a) && blank(b) && a.macs == b.macs
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
        w("class/net/eth0/device/vendor", "0x1af4\n");
        w("class/net/eth1/address", "00:00:00:00:00:00\n");
        w("class/net/eth1/device/vendor", "0x8086\n");
        w("class/net/lo/address", "00:00:00:00:00:00\n");
        w("class/net/docker0/address", "02:42:0a:00:00:01\n");
        w("class/net/br0/address", "00:11:22:33:44:55\n");
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

    #[test]
    fn one_rule_for_the_same_identifier_and_machine() {
        use super::*;
        assert!(same_id(Some(" SN-1 "), Some("sn-1")));
        assert!(!same_id(Some("Default string"), Some("Default string")));
        assert!(!same_id(None, Some("x")) && !same_id(Some("x"), None));
        assert!(is_one_of(&["a".into(), "SN-1".into()], Some("sn-1 ")) && !is_one_of(&[], Some("sn-1")));
        let m = |uuid: Option<&str>, serial: Option<&str>, macs: &[&str]| MachineIdentity {
            product_uuid: uuid.map(Into::into),
            serial: serial.map(Into::into),
            macs: macs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        assert!(same_machine(&m(Some("U1"), None, &[]), &m(Some("u1 "), Some("other"), &[])));
        assert!(same_machine(&m(None, Some("S"), &["aa"]), &m(None, Some("s"), &["bb"])));
        assert!(!same_machine(&m(Some("U1"), None, &["aa"]), &m(Some("U2"), None, &["aa"])), "MACs only without DMI");
        assert!(same_machine(&m(None, None, &["aa"]), &m(None, Some("None"), &["aa"])));
        assert!(!same_machine(&m(None, None, &["aa"]), &m(None, None, &["bb"])));
    }
}
