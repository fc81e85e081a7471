//! The target's plan from arbitrary disk reports (its own disks and the source's): never a
//! panic, and a plan it makes maps every source disk once, onto distinct target disks that are
//! large enough, with the same sector size, never a source disk.
#![no_main]

use arbitrary::{Arbitrary, Unstructured};
use ferry::agent::target::check::{plan, TargetDisk};
use ferry::disk::{DiskIdentity, PartitionTable, TableKind};
use ferry::wire::SourceDisk;
use libfuzzer_sys::fuzz_target;

#[derive(Arbitrary, Debug)]
struct Disk {
    size: u16,
    big_sectors: bool,
    serial: Option<u8>,
    wwn: Option<u8>,
    guid: Option<u8>,
}

fn identity(d: &Disk, i: usize) -> DiskIdentity {
    DiskIdentity {
        path: format!("/dev/d{i}"),
        kind: "block".into(),
        size: u64::from(d.size) << 20,
        logical_sector_size: if d.big_sectors { 4096 } else { 512 },
        physical_sector_size: 4096,
        serial: d.serial.map(|s| format!("SN-{s}")),
        wwn: d.wwn.map(|w| format!("0x50{w:02x}")),
        ..Default::default()
    }
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let (Ok(src), Ok(tgt), Ok(explicit), Ok(rewriting), Ok(named)) = (
        Vec::<Disk>::arbitrary(&mut u),
        Vec::<Disk>::arbitrary(&mut u),
        bool::arbitrary(&mut u),
        bool::arbitrary(&mut u),
        Vec::<u8>::arbitrary(&mut u),
    ) else {
        return;
    };
    let sources: Vec<SourceDisk> = src
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, d)| {
            let id = identity(d, i);
            let mut table = PartitionTable::empty(TableKind::Gpt, id.logical_sector_size);
            table.disk_guid = d.guid.map(|g| format!("GUID-{g}"));
            SourceDisk { index: i as u32, size: id.size, identity: id, partition_table: table, chunk_size: 1 << 22, blake3: String::new() }
        })
        .collect();
    let targets: Vec<TargetDisk> = tgt
        .iter()
        .take(8)
        .enumerate()
        .map(|(i, d)| TargetDisk { identity: identity(d, 100 + i), gpt_disk_guid: d.guid.map(|g| format!("GUID-{g}")) })
        .collect();
    let named: Vec<String> = named.iter().take(4).map(|n| format!("SN-{n}")).collect();
    if let Ok(mapping) = plan(&sources, &targets, explicit, &named, rewriting) {
        assert_eq!(mapping.len(), sources.len());
        let mut used = std::collections::HashSet::new();
        for (s, t) in &mapping {
            assert!(used.insert(*t), "target disk {t} used twice");
            let (s, t) = (&sources[*s as usize], &targets[*t]);
            assert!(t.identity.size >= s.size);
            assert_eq!(t.identity.logical_sector_size, s.identity.logical_sector_size);
        }
    }
});
