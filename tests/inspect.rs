//! `ferry inspect` against partition tables made and read by tools nobody here wrote: every
//! partition's start, size, type, name and GUIDs must agree with sgdisk (GPT) or sfdisk (MBR),
//! and damage must be reported in words.

mod support;

use std::path::Path;

use support::*;

const MIB: u64 = 1 << 20;

/// A 64 MiB image with a four-partition GPT: EFI System, swap, Linux filesystem (with attribute
/// bits set) and a non-ASCII-named /home filling the rest.
fn four_partition_gpt(path: &Path) {
    make_file(path, 64 * MIB);
    sgdisk(
        path,
        &[
            "-n1:2048:+16M",
            "-t1:ef00",
            "-c1:EFI System Partition",
            "-n2:0:+8M",
            "-t2:8200",
            "-c2:swap",
            "-n3:0:+24M",
            "-t3:8300",
            "-c3:root fs",
            "-A3:set:2",
            "-A3:set:60",
            "-n4:0:0",
            "-t4:8302",
            "-c4:données",
        ],
    );
}

/// What `sgdisk -v` says about a disk, stdout and stderr together (it reports header damage on
/// stderr).
fn sgdisk_verify(path: &Path) -> String {
    let out = std::process::Command::new("sgdisk").args(["-v", s(path)]).output().unwrap();
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

fn problems_text(table: &serde_json::Value) -> String {
    problems(table).join("\n")
}

#[test]
fn gpt_with_several_partitions_agrees_with_sgdisk_and_sfdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("gpt.img");
    four_partition_gpt(&img);

    let disk = inspect(&img, &[]);
    assert_eq!(disk["path"], s(&img));
    assert_eq!(disk["kind"], "file");
    assert_eq!(disk["size"].as_u64().unwrap(), 64 * MIB);
    assert_eq!(disk["logical_sector_size"], 512);
    let table = &disk["partition_table"];
    assert_eq!(problems(table), Vec::<String>::new(), "a fresh sgdisk table is healthy");
    assert_gpt_matches_sgdisk(table, &sgdisk_table(&img));

    // The readable type names, and the values we asked sgdisk for.
    let parts = table["partitions"].as_array().unwrap();
    let names: Vec<(&str, &str)> =
        parts.iter().map(|p| (p["type_name"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    assert_eq!(
        names,
        [
            ("EFI System", "EFI System Partition"),
            ("Linux swap", "swap"),
            ("Linux filesystem", "root fs"),
            ("Linux /home", "données"),
        ]
    );
    assert_eq!(parts[0]["type"], "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
    assert_eq!(parts[2]["type"], "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
    assert_eq!(parts[0]["start"].as_u64().unwrap(), MIB);
    assert_eq!(parts[0]["size"].as_u64().unwrap(), 16 * MIB);
    assert_eq!(parts[2]["attributes"].as_u64().unwrap(), (1 << 60) | (1 << 2));
    // The last partition ends at sgdisk's last usable LBA: 33 sectors before the end hold the
    // backup entries and header.
    let last = &parts[3];
    assert_eq!(last["start"].as_u64().unwrap() + last["size"].as_u64().unwrap(), 64 * MIB - 33 * 512);

    // sfdisk (util-linux) reads the same table the same way.
    let sf = sfdisk_json(&img);
    assert_eq!(sf["label"], "gpt");
    assert_eq!(sf["id"].as_str().unwrap(), table["disk_guid"].as_str().unwrap());
    let theirs = sf["partitions"].as_array().unwrap();
    assert_eq!(theirs.len(), parts.len());
    for (p, q) in parts.iter().zip(theirs) {
        assert_eq!(p["start"].as_u64().unwrap(), q["start"].as_u64().unwrap() * 512, "{p} / {q}");
        assert_eq!(p["size"].as_u64().unwrap(), q["size"].as_u64().unwrap() * 512, "{p} / {q}");
        assert_eq!(p["type"], q["type"], "{p} / {q}");
        assert_eq!(p["guid"], q["uuid"], "{p} / {q}");
        assert_eq!(p["name"], q["name"], "{p} / {q}");
    }

    // The human table names the same things.
    let out = ferry(&["inspect", s(&img)]);
    assert_eq!(out.status.code(), Some(0));
    let text = String::from_utf8(out.stdout).unwrap();
    for want in ["gpt", "EFI System", "EFI System Partition", "Linux filesystem", "root fs", "données", "1048576"] {
        assert!(text.contains(want), "{want:?} missing from:\n{text}");
    }
}

#[test]
fn gpt_on_a_4k_sector_loop_device_agrees_with_sgdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("4k.img");
    make_file(&img, 32 * MIB);
    let Some(dev) = loop_or_skip("gpt_on_a_4k_sector_loop_device_agrees_with_sgdisk", &img, 4096) else {
        return;
    };
    sgdisk(&dev.dev, &["-n1:0:+4M", "-t1:ef00", "-c1:esp", "-n2:0:+8M", "-t2:8300", "-c2:root", "-n3:0:0", "-t3:8200"]);
    let sg = sgdisk_table(&dev.dev);
    assert_eq!(sg.sector_size, 4096);
    assert_eq!(sg.parts.len(), 3);

    let disk = inspect(&dev.dev, &[]);
    assert_eq!(disk["kind"], "block");
    assert_eq!(disk["size"].as_u64().unwrap(), 32 * MIB);
    assert_eq!(disk["logical_sector_size"], 4096);
    let table = &disk["partition_table"];
    assert_eq!(problems(table), Vec::<String>::new());
    assert_gpt_matches_sgdisk(table, &sg);
    // 4 MiB at 4096-byte sectors is 1024 sectors, starting at sgdisk's 1 MiB alignment.
    assert_eq!(table["partitions"][0]["start"].as_u64().unwrap(), MIB);
    assert_eq!(table["partitions"][0]["size"].as_u64().unwrap(), 4 * MIB);
    // The last partition ends where the 4K backup entries (4 sectors) and header (1) begin.
    let p3 = &table["partitions"][2];
    assert_eq!(p3["start"].as_u64().unwrap() + p3["size"].as_u64().unwrap(), 32 * MIB - 5 * 4096);

    // A block device's sector size is the kernel's; a different --sector-size is refused.
    let out = ferry(&["inspect", "--sector-size", "512", s(&dev.dev)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("4096-byte logical sectors"));
}

#[test]
fn gpt_image_file_with_4k_sectors_agrees_with_sgdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("4k-file.img");
    make_file(&img, 24 * MIB);
    let Some(dev) = loop_or_skip("gpt_image_file_with_4k_sectors_agrees_with_sgdisk", &img, 4096) else {
        return;
    };
    sgdisk(&dev.dev, &["-n1:0:+2M", "-t1:ef00", "-c1:EFI", "-n2:0:0", "-t2:8300", "-c2:rootfs"]);
    let sg = sgdisk_table(&dev.dev);
    dev.detach();
    // The GPT header sits at byte 4096 (LBA 1 of a 4K disk), as the kernel wrote it.
    assert_eq!(&read_at(&img, 4096, 8), b"EFI PART");

    for extra in [&[][..], &["--sector-size", "4096"][..]] {
        let disk = inspect(&img, extra);
        assert_eq!(disk["kind"], "file");
        assert_eq!(disk["logical_sector_size"], 4096, "{extra:?}");
        let table = &disk["partition_table"];
        assert_eq!(problems(table), Vec::<String>::new(), "{extra:?}");
        assert_gpt_matches_sgdisk(table, &sg);
    }

    // Read with the wrong sector size, the table is not there, and ferry says why.
    let disk = inspect(&img, &["--sector-size", "512"]);
    let table = &disk["partition_table"];
    assert_ne!(table["kind"], "gpt");
    assert_eq!(table["partitions"].as_array().unwrap().len(), 0);
    assert!(problems_text(table).contains("4096-byte sectors"), "{table:#}");

    // With the primary header gone, the backup at the last 4096-byte LBA still tells the sector
    // size, and the table is read from it.
    write_at(&img, 4096, &[0u8; 4096]);
    let disk = inspect(&img, &[]);
    assert_eq!(disk["logical_sector_size"], 4096);
    let table = &disk["partition_table"];
    let p = problems(table);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("primary") && p[0].contains("backup"), "{p:?}");
    assert_gpt_matches_sgdisk(table, &sg);
    let table = &inspect(&img, &["--sector-size", "512"])["partition_table"];
    assert!(problems_text(table).contains("4096-byte sectors"), "{table:#}");
}

#[test]
fn mbr_with_extended_logical_and_bootable_partitions_agrees_with_sfdisk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("mbr.img");
    make_file(&img, 64 * MIB);
    run_with_input(
        "sfdisk",
        &["-q", s(&img)],
        "label: dos\nlabel-id: 0x1234abcd\n\
         start=2048, size=16384, type=83, bootable\n\
         start=18432, size=65536, type=5\n\
         start=86016, size=20480, type=7\n\
         start=20480, size=8192, type=82\n\
         start=30720, size=40960, type=8e\n",
    );
    let disk = inspect(&img, &[]);
    let table = &disk["partition_table"];
    assert_eq!(problems(table), Vec::<String>::new(), "{table:#}");
    assert_eq!(table["mbr_signature"], "0x1234abcd");
    assert_mbr_matches_sfdisk(table, &img);

    let parts = table["partitions"].as_array().unwrap();
    let summary: Vec<(u64, &str, bool, bool)> = parts
        .iter()
        .map(|p| {
            (
                p["number"].as_u64().unwrap(),
                p["type"].as_str().unwrap(),
                p["bootable"].as_bool().unwrap(),
                p["logical"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            (1, "0x83", true, false),
            (2, "0x05", false, false),
            (3, "0x07", false, false),
            (5, "0x82", false, true),
            (6, "0x8e", false, true),
        ]
    );
    let type_names: Vec<&str> = parts.iter().map(|p| p["type_name"].as_str().unwrap()).collect();
    assert_eq!(type_names, ["Linux", "Extended", "NTFS/exFAT", "Linux swap", "Linux LVM"]);
    // Logical partitions are absolute on the disk, inside the extended one.
    assert_eq!(parts[3]["start"].as_u64().unwrap(), 20480 * 512);
    assert_eq!(parts[4]["size"].as_u64().unwrap(), 40960 * 512);
}

#[test]
fn a_disk_without_a_table_is_none() {
    let t = tempfile::tempdir().unwrap();
    let zeros = t.path().join("zeros.img");
    make_file(&zeros, 8 * MIB);
    let noise = t.path().join("noise.img");
    std::fs::write(&noise, pseudo_random(MIB as usize, 7)).unwrap();
    for img in [&zeros, &noise] {
        // Neither sfdisk nor blkid finds a table either.
        let out = std::process::Command::new("sfdisk").args(["--json", s(img)]).output().unwrap();
        assert!(!out.status.success() || out.stdout.is_empty(), "sfdisk found a table on {}", img.display());
        let blkid = std::process::Command::new("blkid").args(["-p", "-o", "export", s(img)]).output().unwrap();
        assert!(!String::from_utf8_lossy(&blkid.stdout).contains("PTTYPE"), "blkid found a table");

        let disk = inspect(img, &[]);
        let table = &disk["partition_table"];
        assert_eq!(table["kind"], "none", "{}: {table:#}", img.display());
        assert_eq!(table["partitions"].as_array().unwrap().len(), 0);
        assert_eq!(problems(table), Vec::<String>::new());
    }
}

#[test]
fn primary_gpt_header_zeroed_is_read_from_the_backup() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("noprimary.img");
    four_partition_gpt(&img);
    let healthy = sgdisk_table(&img);
    write_at(&img, 512, &[0u8; 512]);
    // sgdisk agrees the main header is gone and the backup is good.
    let v = sgdisk_verify(&img);
    assert!(v.contains("Main header: ERROR") && v.contains("Backup header: OK"), "{v}");

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_eq!(table["kind"], "gpt");
    let p = problems(&table);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("primary") && p[0].contains("backup"), "{p:?}");
    // Every partition as sgdisk read it before the damage (and reads it now, from the backup).
    assert_gpt_matches_sgdisk(&table, &healthy);
    assert_gpt_matches_sgdisk(&table, &sgdisk_table(&img));
}

#[test]
fn backup_gpt_removed_is_reported() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("nobackup.img");
    four_partition_gpt(&img);
    let healthy = sgdisk_table(&img);
    // The backup entries (32 sectors) and header (the last sector).
    write_at(&img, 64 * MIB - 33 * 512, &vec![0u8; 33 * 512]);
    let v = sgdisk_verify(&img);
    assert!(v.contains("Main header: OK") && v.contains("Backup header: ERROR"), "{v}");

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_eq!(table["kind"], "gpt");
    let p = problems(&table);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("backup") && p[0].contains(&format!("LBA {}", 64 * MIB / 512 - 1)), "{p:?}");
    assert_gpt_matches_sgdisk(&table, &healthy);
}

#[test]
fn protective_mbr_over_garbage_is_damaged() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("garbage.img");
    four_partition_gpt(&img);
    // Both headers and both entry arrays become noise; the protective MBR stays.
    write_at(&img, 512, &pseudo_random(33 * 512, 1));
    write_at(&img, 64 * MIB - 33 * 512, &pseudo_random(33 * 512, 2));
    // blkid sees a protective MBR and no GPT; sfdisk sees only the 0xee entry.
    let blkid = run("blkid", &["-p", "-o", "export", s(&img)]);
    assert!(blkid.contains("PTTYPE=PMBR"), "{blkid}");
    let sf = sfdisk_json(&img);
    assert_eq!(sf["label"], "dos");
    assert_eq!(sf["partitions"][0]["type"], "ee");

    let out = ferry(&["inspect", "--json", s(&img)]);
    assert_eq!(out.status.code(), Some(0), "damage is a finding, not a failure");
    let table = inspect(&img, &[])["partition_table"].clone();
    assert_eq!(table["kind"], "damaged", "{table:#}");
    assert_eq!(table["partitions"].as_array().unwrap().len(), 0);
    let text = problems_text(&table);
    assert!(text.contains("protective MBR") && text.contains("primary") && text.contains("backup"), "{text}");
}

#[test]
fn backup_header_not_at_the_end_after_copying_to_a_larger_disk() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("grown.img");
    four_partition_gpt(&img);
    let healthy = sgdisk_table(&img);
    make_file(&img, 96 * MIB); // the same bytes on a larger disk
    let v = sgdisk_verify(&img);
    assert!(v.contains("doesn't reside\nat the end of the disk"), "{v}");

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_eq!(table["kind"], "gpt");
    let p = problems(&table);
    assert_eq!(p.len(), 1, "{p:?}");
    let old_last = 64 * MIB / 512 - 1;
    let new_last = 96 * MIB / 512 - 1;
    assert!(
        p[0].contains("not at the last LBA")
            && p[0].contains(&format!("LBA {old_last}"))
            && p[0].contains(&new_last.to_string()),
        "{p:?}"
    );
    assert_gpt_matches_sgdisk(&table, &healthy);
}

#[test]
fn truncated_gpt_image_has_a_partition_past_the_end() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("truncated.img");
    four_partition_gpt(&img);
    let healthy = sgdisk_table(&img);
    // 56 MiB keeps partitions 1-3 whole and cuts partition 4 (it started at 49 MiB).
    make_file(&img, 56 * MIB);
    let old_last = 64 * MIB / 512 - 1;

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_eq!(table["kind"], "gpt");
    // The primary header still describes all four partitions.
    assert_gpt_matches_sgdisk(&table, &healthy);
    let text = problems_text(&table);
    assert!(text.contains(&format!("backup GPT header expected at LBA {old_last}")), "{text}");
    assert!(text.contains("beyond the end of the disk"), "{text}");
    let p4 = &healthy.parts[3];
    assert_eq!(p4.first * 512, 49 * MIB);
    let end = (p4.last + 1) * 512;
    let past: Vec<String> = problems(&table).into_iter().filter(|p| p.contains("past the end")).collect();
    assert_eq!(past, [format!("partition 4 ends at byte {end}, past the end of the disk ({} bytes)", 56 * MIB)]);
}

#[test]
fn overlapping_partitions_and_a_partition_past_the_end_are_reported() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("overlap.img");
    make_file(&img, 16 * MIB);
    run_with_input(
        "sfdisk",
        &["-q", s(&img)],
        "label: dos\nlabel-id: 0xdeadbeef\n\
         start=2048, size=8192, type=83\n\
         start=10240, size=8192, type=83\n\
         start=20480, size=8192, type=83\n",
    );
    // sfdisk refuses to write such a table, so edit the entries by hand: entry 2 now starts at
    // sector 6144 (inside entry 1) and entry 3 runs 40960 sectors (past the 32768-sector end).
    write_at(&img, 446 + 16 + 8, &6144u32.to_le_bytes());
    write_at(&img, 446 + 32 + 12, &40960u32.to_le_bytes());
    // sfdisk reads the table as written and its verifier flags the overlap.
    let verify = std::process::Command::new("sfdisk").args(["-V", s(&img)]).output().unwrap();
    let said = format!("{}{}", String::from_utf8_lossy(&verify.stdout), String::from_utf8_lossy(&verify.stderr));
    assert!(said.contains("overlaps partition 2"), "{said}");

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_mbr_matches_sfdisk(&table, &img);
    let mut p = problems(&table);
    p.sort();
    assert_eq!(
        p,
        [
            format!(
                "partition 3 ends at byte {}, past the end of the disk ({} bytes)",
                (20480 + 40960) * 512,
                16 * MIB
            ),
            "partitions 1 and 2 overlap".to_string(),
        ]
    );
}

#[test]
fn hybrid_mbr_is_reported_and_the_gpt_still_read() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("hybrid.img");
    make_file(&img, 64 * MIB);
    sgdisk(&img, &["-n1:2048:+16M", "-t1:0700", "-c1:data", "-n2:0:+16M", "-t2:8300", "-c2:linux"]);
    sgdisk(&img, &["-h", "1"]);
    // sgdisk's own view of sector 0: the protective entry and partition 1 as 0x07.
    let mbr = run("sgdisk", &["-O", s(&img)]);
    assert!(mbr.contains("0xEE") && mbr.contains("0x07"), "{mbr}");

    let table = inspect(&img, &[])["partition_table"].clone();
    assert_gpt_matches_sgdisk(&table, &sgdisk_table(&img));
    let p = problems(&table);
    assert_eq!(p.len(), 1, "{p:?}");
    assert!(p[0].contains("hybrid MBR"), "{p:?}");
}

#[test]
fn several_paths_are_reported_in_order() {
    let t = tempfile::tempdir().unwrap();
    let a = t.path().join("a.img");
    let b = t.path().join("b.img");
    four_partition_gpt(&a);
    make_file(&b, MIB);
    let v = ferry_json(&["inspect", "--json", s(&a), s(&b)]);
    let disks = v["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 2);
    assert_eq!(disks[0]["path"], s(&a));
    assert_eq!(disks[0]["partition_table"]["kind"], "gpt");
    assert_eq!(disks[1]["path"], s(&b));
    assert_eq!(disks[1]["partition_table"]["kind"], "none");
}

#[test]
fn exit_codes_and_messages() {
    let t = tempfile::tempdir().unwrap();
    let missing = t.path().join("no-such-disk.img");
    let out = ferry(&["inspect", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(s(&missing)), "the message names the path: {err}");

    let out = ferry(&["inspect", "--json", s(t.path())]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(s(t.path())) && err.contains("directory"), "{err}");

    // One bad path does not hide the good one, but the exit code says something failed.
    let good = t.path().join("good.img");
    four_partition_gpt(&good);
    let out = ferry(&["inspect", "--json", s(&missing), s(&good)]);
    assert_eq!(out.status.code(), Some(1));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["disks"].as_array().unwrap().len(), 1);
    assert_eq!(v["disks"][0]["path"], s(&good));

    for bad in
        [&["inspect", "--no-such-flag"][..], &["inspect", "--sector-size", "lots", s(&good)][..], &["no-such-verb"]]
    {
        let out = ferry(bad);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stderr.is_empty(), "{bad:?} explains itself");
    }
    // A sector size no disk has: bad usage.
    let out = ferry(&["inspect", "--sector-size", "1000", s(&good)]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("512 or 4096"));
}
