//! The target's own preconditions, checked before a single byte is written: enough disks, each
//! large enough, the same logical sector size, and none of them a disk of the source. Each
//! refusal has a stable code (shown on screen and recorded in the job) and words for people.

use crate::machine::{is_one_of, same_id};
use crate::util::human_bytes;
use crate::wire::{Code, DiskIdentity, SourceDisk};

/// A disk of the target machine, as the checks see it.
#[derive(Clone, Debug)]
pub struct TargetDisk {
    pub identity: DiskIdentity,
    /// The GPT disk GUID it carries now, if any.
    pub gpt_disk_guid: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: Code,
    pub reason: String,
}

fn refuse(code: Code, reason: String) -> Refusal {
    Refusal { code, reason }
}

/// Source disk index → position in the target disk list.
pub type Mapping = Vec<(u32, usize)>;

/// Whether `t` is one of the source's disks: same serial, WWN or GPT disk GUID (the GUID is not
/// compared when `rewriting`: an interrupted delivery left the source's GUID there itself).
fn is_source_disk(t: &TargetDisk, sources: &[SourceDisk], rewriting: bool) -> Option<String> {
    sources.iter().find_map(|s| {
        let why = if same_id(t.identity.serial.as_deref(), s.identity.serial.as_deref()) {
            "serial"
        } else if same_id(t.identity.wwn.as_deref(), s.identity.wwn.as_deref()) {
            "WWN"
        } else if !rewriting && same_id(t.gpt_disk_guid.as_deref(), s.partition_table.disk_guid.as_deref()) {
            "GPT disk GUID"
        } else {
            return None;
        };
        Some(format!("{} has the same {why} as source disk {} ({})", t.identity.path, s.index, s.identity.path))
    })
}

/// Whether a target disk is one the job allows writing: any, or one it names.
fn eligible(t: &TargetDisk, named: &[String]) -> bool {
    named.is_empty() || is_one_of(named, t.identity.serial.as_deref()) || is_one_of(named, t.identity.wwn.as_deref())
}

fn fits(s: &SourceDisk, t: &TargetDisk) -> bool {
    t.identity.size >= s.size
}

fn same_sectors(s: &SourceDisk, t: &TargetDisk) -> bool {
    t.identity.logical_sector_size == s.identity.logical_sector_size
}

fn too_small(s: &SourceDisk, t: &TargetDisk) -> Refusal {
    refuse(
        Code::DiskTooSmall,
        format!(
            "source disk {} is {} ({} bytes); {} is only {} ({} bytes)",
            s.index,
            human_bytes(s.size),
            s.size,
            t.identity.path,
            human_bytes(t.identity.size),
            t.identity.size
        ),
    )
}

fn sector_mismatch(s: &SourceDisk, t: &TargetDisk) -> Refusal {
    refuse(
        Code::SectorSizeMismatch,
        format!(
            "source disk {} has {}-byte sectors, {} has {}-byte sectors: its partition table would not fit",
            s.index, s.identity.logical_sector_size, t.identity.path, t.identity.logical_sector_size
        ),
    )
}

/// Which target disk receives which source disk. With `explicit`, source disk `i` goes to
/// target disk `i` (the operator listed them in order); otherwise each source disk, largest
/// first, gets the smallest free target disk that fits it with the same sector size, the first
/// in bus order among equals (so the mapping is stable from boot to boot).
/// When the job names disks (`named`, serials or WWNs), only those are written.
pub fn plan(
    sources: &[SourceDisk],
    targets: &[TargetDisk],
    explicit: bool,
    named: &[String],
    rewriting: bool,
) -> Result<Mapping, Refusal> {
    let usable = targets.iter().filter(|t| eligible(t, named)).count();
    if usable < sources.len() {
        let which = if named.is_empty() {
            String::new()
        } else {
            format!(" of the disks the job names ({})", named.join(", "))
        };
        return Err(refuse(
            Code::TooFewDisks,
            format!("the source has {} disks, this machine has {usable}{which}", sources.len()),
        ));
    }
    for t in targets {
        if let Some(why) = is_source_disk(t, sources, rewriting) {
            return Err(refuse(Code::TargetIsSource, format!("{why}: ferry never writes to the source")));
        }
    }
    if explicit {
        in_order(sources, targets, named)
    } else {
        by_size(sources, targets, named)
    }
}

/// The operator's order: source disk `i` onto target disk `i`.
fn in_order(sources: &[SourceDisk], targets: &[TargetDisk], named: &[String]) -> Result<Mapping, Refusal> {
    if let Some(t) = targets.iter().take(sources.len()).find(|t| !eligible(t, named)) {
        return Err(refuse(
            Code::DiskNotNamed,
            format!("{} is not one of the disks the job names ({})", t.identity.path, named.join(", ")),
        ));
    }
    let mut mapping = vec![];
    for (i, s) in sources.iter().enumerate() {
        let t = &targets[i];
        if !fits(s, t) {
            return Err(too_small(s, t));
        }
        if !same_sectors(s, t) {
            return Err(sector_mismatch(s, t));
        }
        mapping.push((s.index, i));
    }
    Ok(mapping)
}

/// Largest source first onto the smallest free target that fits it with the same sector size.
fn by_size(sources: &[SourceDisk], targets: &[TargetDisk], named: &[String]) -> Result<Mapping, Refusal> {
    let mut order: Vec<&SourceDisk> = sources.iter().collect();
    order.sort_by_key(|s| (std::cmp::Reverse(s.size), s.index));
    let mut taken = vec![false; targets.len()];
    let mut mapping = vec![];
    for s in order {
        let free = |i: &usize| !taken[*i] && eligible(&targets[*i], named);
        let best = (0..targets.len())
            .filter(|i| free(i) && fits(s, &targets[*i]) && same_sectors(s, &targets[*i]))
            .min_by_key(|&i| (targets[i].identity.size, i));
        let Some(i) = best else {
            // Why not: a disk large enough has other sectors, or none is large enough.
            if let Some(i) = (0..targets.len()).filter(free).find(|&i| fits(s, &targets[i])) {
                return Err(sector_mismatch(s, &targets[i]));
            }
            let largest = (0..targets.len()).filter(free).max_by_key(|&i| targets[i].identity.size);
            return Err(too_small(s, &targets[largest.expect("as many targets as sources")]));
        };
        taken[i] = true;
        mapping.push((s.index, i));
    }
    mapping.sort_unstable();
    Ok(mapping)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::{PartitionTable, TableKind};

    fn id(path: &str, size: u64, ss: u32, serial: Option<&str>) -> DiskIdentity {
        DiskIdentity {
            path: path.into(),
            kind: "block".into(),
            size,
            logical_sector_size: ss,
            physical_sector_size: ss,
            serial: serial.map(Into::into),
            ..Default::default()
        }
    }
    fn source(index: u32, size: u64, ss: u32, serial: Option<&str>, guid: Option<&str>) -> SourceDisk {
        SourceDisk {
            index,
            identity: id(&format!("/dev/src{index}"), size, ss, serial),
            partition_table: PartitionTable {
                kind: TableKind::Gpt,
                sector_size: ss,
                disk_guid: guid.map(Into::into),
                mbr_signature: None,
                problems: vec![],
                partitions: vec![],
            },
            size,
            chunk_size: 4 << 20,
            blake3: String::new(),
            bad_ranges: vec![],
        }
    }
    fn target(path: &str, size: u64, ss: u32, serial: Option<&str>, guid: Option<&str>) -> TargetDisk {
        TargetDisk { identity: id(path, size, ss, serial), gpt_disk_guid: guid.map(Into::into) }
    }

    const G: u64 = 1 << 30;

    /// (case, sources, targets, explicit, expected mapping or refusal code)
    type Case = (&'static str, Vec<SourceDisk>, Vec<TargetDisk>, bool, Result<Mapping, Code>);

    #[test]
    fn table_of_cases() {
        let guid = Some("0B4A6D3E-1C2F-4E5A-9B8C-7D6E5F4A3B2C");
        let cases: Vec<Case> = vec![
            (
                "one to one",
                vec![source(0, 10 * G, 512, None, guid)],
                vec![target("a", 10 * G, 512, None, None)],
                false,
                Ok(vec![(0, 0)]),
            ),
            (
                "larger target",
                vec![source(0, 10 * G, 512, None, guid)],
                vec![target("a", 20 * G, 512, None, None)],
                false,
                Ok(vec![(0, 0)]),
            ),
            (
                "best fit, largest source first",
                vec![source(0, 10 * G, 512, None, None), source(1, 50 * G, 512, None, None)],
                vec![
                    target("a", 100 * G, 512, None, None),
                    target("b", 60 * G, 512, None, None),
                    target("c", 10 * G, 512, None, None),
                ],
                false,
                Ok(vec![(0, 2), (1, 1)]),
            ),
            (
                "bus order among equals",
                vec![source(0, 10 * G, 512, None, None)],
                vec![target("a", 20 * G, 512, None, None), target("b", 20 * G, 512, None, None)],
                false,
                Ok(vec![(0, 0)]),
            ),
            (
                "fewer disks",
                vec![source(0, G, 512, None, None), source(1, G, 512, None, None)],
                vec![target("a", 9 * G, 512, None, None)],
                false,
                Err(Code::TooFewDisks),
            ),
            (
                "smaller disk",
                vec![source(0, 10 * G, 512, None, None)],
                vec![target("a", 10 * G - 512, 512, None, None)],
                false,
                Err(Code::DiskTooSmall),
            ),
            (
                "4Kn vs 512",
                vec![source(0, 10 * G, 512, None, None)],
                vec![target("a", 10 * G, 4096, None, None)],
                false,
                Err(Code::SectorSizeMismatch),
            ),
            (
                "same serial",
                vec![source(0, G, 512, Some("QM0001"), None)],
                vec![target("a", G, 512, Some("qm0001"), None)],
                false,
                Err(Code::TargetIsSource),
            ),
            (
                "same GPT disk GUID",
                vec![source(0, G, 512, None, guid)],
                vec![target("a", G, 512, None, guid)],
                false,
                Err(Code::TargetIsSource),
            ),
            (
                "placeholder serials are no identity",
                vec![source(0, G, 512, Some("0000"), None)],
                vec![target("a", G, 512, Some("0000"), None)],
                false,
                Ok(vec![(0, 0)]),
            ),
            (
                "explicit order is kept",
                vec![source(0, G, 512, None, None), source(1, G, 512, None, None)],
                vec![target("a", 5 * G, 512, None, None), target("b", G, 512, None, None)],
                true,
                Ok(vec![(0, 0), (1, 1)]),
            ),
            (
                "explicit order refuses a small disk",
                vec![source(0, 2 * G, 512, None, None), source(1, G, 512, None, None)],
                vec![target("a", G, 512, None, None), target("b", 5 * G, 512, None, None)],
                true,
                Err(Code::DiskTooSmall),
            ),
        ];
        for (name, sources, targets, explicit, want) in cases {
            let got = plan(&sources, &targets, explicit, &[], false).map_err(|r| r.code);
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn named_disks_and_rewriting() {
        let guid = Some("0B4A6D3E-1C2F-4E5A-9B8C-7D6E5F4A3B2C");
        let sources = [source(0, G, 512, None, guid)];
        let targets = [target("usb", G, 512, Some("USB-1"), None), target("ssd", 4 * G, 512, Some("SSD-9"), None)];
        // Best fit would pick the small USB disk; the job names the SSD.
        assert_eq!(plan(&sources, &targets, false, &[], false), Ok(vec![(0, 0)]));
        assert_eq!(plan(&sources, &targets, false, &["ssd-9".into()], false), Ok(vec![(0, 1)]));
        assert_eq!(
            plan(&sources, &targets, true, &["SSD-9".into()], false).map_err(|r| r.code),
            Err(Code::DiskNotNamed)
        );
        assert_eq!(
            plan(&sources, &targets, false, &["NOPE".into()], false).map_err(|r| r.code),
            Err(Code::TooFewDisks)
        );
        // A disk an interrupted delivery wrote carries the source's GUID: refused unless rewriting.
        let written = [target("ssd", 4 * G, 512, Some("SSD-9"), guid)];
        assert_eq!(plan(&sources, &written, false, &[], false).map_err(|r| r.code), Err(Code::TargetIsSource));
        assert_eq!(plan(&sources, &written, false, &[], true), Ok(vec![(0, 0)]));
        // The serial still counts when rewriting.
        let same_serial = [target("x", G, 512, Some("QM7"), None)];
        let src = [source(0, G, 512, Some("QM7"), None)];
        assert_eq!(plan(&src, &same_serial, false, &[], true).map_err(|r| r.code), Err(Code::TargetIsSource));
    }

    #[test]
    fn refusals_say_what_and_how_big() {
        let r = plan(
            &[source(3, 10 * G, 512, None, None)],
            &[target("/dev/vdb", 5 * G, 512, None, None)],
            false,
            &[],
            false,
        )
        .unwrap_err();
        assert!(r.reason.contains("source disk 3") && r.reason.contains("/dev/vdb"), "{}", r.reason);
        assert!(r.reason.contains("10.0 GiB") && r.reason.contains("5.0 GiB"), "{}", r.reason);
    }
}
