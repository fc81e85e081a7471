//! Readable names for well-known partition types.

/// GPT type GUIDs (uppercase) and their names, as gdisk and the UEFI spec call them.
const GPT_TYPES: &[(&str, &str)] = &[
    ("C12A7328-F81F-11D2-BA4B-00A0C93EC93B", "EFI System"),
    ("21686148-6449-6E6F-744E-656564454649", "BIOS boot"),
    ("0FC63DAF-8483-4772-8E79-3D69D8477DE4", "Linux filesystem"),
    ("0657FD6D-A4AB-43C4-84E5-0933C84B4F4F", "Linux swap"),
    ("E6D6D379-F507-44C2-A23C-238F2A3DF928", "Linux LVM"),
    ("A19D880F-05FC-4D3B-A006-743F0F84911E", "Linux RAID"),
    ("4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709", "Linux root (x86-64)"),
    ("44479540-F297-41B2-9AF7-D131D5F0458A", "Linux root (x86)"),
    ("B921B045-1DF0-41C3-AF44-4C6F280D3FAE", "Linux root (ARM64)"),
    ("933AC7E1-2EB4-4F13-B844-0E14E2AEF915", "Linux /home"),
    ("3B8F8425-20E0-4F3B-907F-1A25A76F98E8", "Linux /srv"),
    ("BC13C2FF-59E6-4262-A352-B275FD6F7172", "Linux extended boot"),
    ("CA7D7CCB-63ED-4C53-861C-1742536059CC", "Linux LUKS"),
    ("EBD0A0A2-B9E5-4433-87C0-68B6B72699C7", "Microsoft basic data"),
    ("E3C9E316-0B5C-4DB8-817D-F92DF00215AE", "Microsoft reserved"),
    ("DE94BBA4-06D1-4D40-A16A-BFD50179D6AC", "Windows recovery"),
    ("5808C8AA-7E8F-42E0-85D2-E1E90434CFB3", "Windows LDM metadata"),
    ("AF9B60A0-1431-4F62-BC68-3311714A69AD", "Windows LDM data"),
    ("6A898CC3-1DD2-11B2-99A6-080020736631", "ZFS (Solaris /usr)"),
    ("516E7CBA-6ECF-11D6-8FF8-00022D09712B", "FreeBSD ZFS"),
    ("48465300-0000-11AA-AA11-00306543ECAC", "Apple HFS+"),
    ("9E1A2D38-C612-4316-AA26-8B49521E5A8B", "PReP boot"),
];

/// The name of a GPT partition type, when known.
pub fn gpt_type_name(guid_upper: &str) -> Option<&'static str> {
    GPT_TYPES.iter().find(|(g, _)| *g == guid_upper).map(|(_, n)| *n)
}

/// The name of an MBR partition type id, when known.
pub fn mbr_type_name(id: u8) -> Option<&'static str> {
    Some(match id {
        0x01 => "FAT12",
        0x04 | 0x06 | 0x0e => "FAT16",
        0x05 => "Extended",
        0x07 => "NTFS/exFAT",
        0x0b | 0x0c => "FAT32",
        0x0f => "Extended (LBA)",
        0x27 => "Hidden NTFS (recovery)",
        0x82 => "Linux swap",
        0x83 => "Linux",
        0x85 => "Linux extended",
        0x8e => "Linux LVM",
        0xa5 => "FreeBSD",
        0xee => "GPT protective",
        0xef => "EFI System",
        0xfd => "Linux RAID",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_and_unknown_types() {
        assert_eq!(gpt_type_name("C12A7328-F81F-11D2-BA4B-00A0C93EC93B"), Some("EFI System"));
        assert_eq!(gpt_type_name("00000000-0000-0000-0000-000000000001"), None);
        assert_eq!(mbr_type_name(0x83), Some("Linux"));
        assert_eq!(mbr_type_name(0x42), None);
    }
}
