//! Used-blocks mode end to end: a GPT disk carrying FAT32, ext4, NTFS, XFS, swap and a dirty
//! ext4, each made by its own mkfs over random bytes (so free space is not zeros), filled with
//! files, some deleted; `ferry send --used-only` to a real receiver, `ferry export`, and then
//! each filesystem of the exported image checked by its own checker and every kept file read
//! back by tools nobody here wrote (debugfs, mtools, ntfscat, a read-only XFS mount). What was
//! read is compared with partclone's map of the same filesystems.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;

use support::*;

const MIB: u64 = 1 << 20;

/// A filesystem image file and the files kept on it (name, bytes).
struct Fs {
    image: PathBuf,
    files: Vec<(String, Vec<u8>)>,
}

/// A file of `mib` MiB of random bytes: what a disk's free space looks like after years.
fn noise(path: &Path, mib: u64, seed: u64) {
    std::fs::write(path, pseudo_random((mib * MIB) as usize, seed)).unwrap();
}

/// Files of assorted sizes named `f0..`, with their bytes.
fn payload(dir: &Path, count: u64, seed: u64) -> Vec<(String, PathBuf, Vec<u8>)> {
    (0..count)
        .map(|i| {
            let bytes = pseudo_random(((i * 37 % 11 + 1) * 190_000 + i * 4099) as usize, seed + i);
            let host = dir.join(format!("host-{seed}-{i}"));
            std::fs::write(&host, &bytes).unwrap();
            (format!("f{i}"), host, bytes)
        })
        .collect()
}

fn ext4(dir: &Path, mib: u64, seed: u64) -> Fs {
    let image = dir.join(format!("ext4-{seed}.img"));
    noise(&image, mib, seed);
    run("mkfs.ext4", &["-q", "-F", "-E", "nodiscard", s(&image)]);
    let files = payload(dir, 18, seed);
    let mut script: String = files.iter().map(|(n, h, _)| format!("write {} {n}\n", h.display())).collect();
    script += "rm f0\nrm f3\nrm f6\n";
    std::fs::write(dir.join("script"), script).unwrap();
    run("debugfs", &["-w", "-f", s(&dir.join("script")), s(&image)]);
    let kept = files.into_iter().filter(|(n, ..)| !["f0", "f3", "f6"].contains(&n.as_str()));
    Fs { image, files: kept.map(|(n, _, b)| (n, b)).collect() }
}

fn vfat(dir: &Path, mib: u64, seed: u64) -> Fs {
    let image = dir.join("vfat.img");
    noise(&image, mib, seed);
    run("mkfs.vfat", &["-F", "32", s(&image)]);
    let files = payload(dir, 10, seed);
    for (n, h, _) in &files {
        run("mcopy", &["-i", s(&image), s(h), &format!("::{n}")]);
    }
    run("mdel", &["-i", s(&image), "::f1", "::f4"]);
    let kept = files.into_iter().filter(|(n, ..)| n != "f1" && n != "f4");
    Fs { image, files: kept.map(|(n, _, b)| (n, b)).collect() }
}

fn ntfs(dir: &Path, mib: u64, seed: u64) -> Fs {
    let image = dir.join("ntfs.img");
    noise(&image, mib, seed);
    run("mkfs.ntfs", &["-q", "-F", "-Q", s(&image)]);
    let files = payload(dir, 12, seed);
    for (n, h, _) in &files {
        run("ntfscp", &["-q", s(&image), s(h), n]);
    }
    Fs { image, files: files.into_iter().map(|(n, _, b)| (n, b)).collect() }
}

/// A mount that is always undone.
struct Mounted(PathBuf);

impl Mounted {
    fn new(image: &Path, at: &Path, opts: &str) -> Self {
        std::fs::create_dir_all(at).unwrap();
        run("mount", &["-o", opts, s(image), s(at)]);
        Mounted(at.to_owned())
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let ok = Command::new("umount").arg(&self.0).status().is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.0).status();
        }
    }
}

fn xfs(dir: &Path, mib: u64, seed: u64) -> Fs {
    let image = dir.join("xfs.img");
    noise(&image, mib, seed);
    run("mkfs.xfs", &["-q", "-f", "-K", s(&image)]);
    let files = payload(dir, 12, seed);
    {
        let m = Mounted::new(&image, &dir.join("xfs-mnt"), "loop");
        for (n, h, _) in &files {
            std::fs::copy(h, m.0.join(n)).unwrap();
        }
        for gone in ["f2", "f5"] {
            std::fs::remove_file(m.0.join(gone)).unwrap();
        }
    }
    let kept = files.into_iter().filter(|(n, ..)| n != "f2" && n != "f5");
    Fs { image, files: kept.map(|(n, _, b)| (n, b)).collect() }
}

/// Copies `part` into `disk` at `offset`.
fn place(disk: &Path, offset: u64, part: &Path) {
    write_at(disk, offset, &std::fs::read(part).unwrap());
}

/// The bytes of `len` at `offset` of `disk` as a file of their own.
fn cut(disk: &Path, offset: u64, len: u64, to: &Path) -> PathBuf {
    std::fs::write(to, read_at(disk, offset, len as usize)).unwrap();
    to.to_owned()
}

fn total(ranges: &[(u64, u64)]) -> u64 {
    ranges.iter().map(|r| r.1).sum()
}

/// partclone's used bytes for a filesystem image (`partclone.<fs> -D`, a ddrescue domain log).
fn partclone_used(fs: &str, image: &Path) -> u64 {
    let domain = image.with_extension("domain");
    run(&format!("partclone.{fs}"), &["-q", "-D", "-s", s(image), "-o", s(&domain)]);
    let text = std::fs::read_to_string(&domain).unwrap();
    let hex = |s: &str| u64::from_str_radix(s.trim_start_matches("0x"), 16).unwrap();
    let ranges: Vec<(u64, u64)> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3 && f[2] == "+").then(|| (hex(f[0]), hex(f[1])))
        })
        .collect();
    total(&ranges)
}

#[test]
fn every_filesystem_migrates_reading_only_its_used_blocks() {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path();
    // Partitions (MiB): 1 FAT32 ESP 64, 2 ext4 160, 3 NTFS 128, 4 XFS 320, 5 swap 16, 6 ext4
    // that needs journal recovery 48.
    let layout: [(&str, u64); 6] =
        [("ef00", 64), ("8300", 160), ("0700", 128), ("8300", 320), ("8200", 16), ("8300", 48)];
    let parts = [
        vfat(dir, 64, 1),
        ext4(dir, 160, 2),
        ntfs(dir, 128, 3),
        xfs(dir, 320, 4),
        {
            let image = dir.join("swap.img");
            noise(&image, 16, 5);
            run("mkswap", &[s(&image)]);
            Fs { image, files: vec![] }
        },
        ext4(dir, 48, 6),
    ];
    run("debugfs", &["-w", "-R", "feature needs_recovery", s(&parts[5].image)]);
    let disk = dir.join("disk.img");
    noise(&disk, 760, 7);
    let mut args = vec![];
    for (i, (ty, mib)) in layout.iter().enumerate() {
        args.push(format!("-n{}:0:+{mib}M", i + 1));
        args.push(format!("-t{}:{ty}", i + 1));
    }
    sgdisk(&disk, &args.iter().map(String::as_str).collect::<Vec<_>>());
    let mut offsets = vec![];
    let mut at = MIB;
    for (p, (_, mib)) in parts.iter().zip(layout) {
        place(&disk, at, &p.image);
        offsets.push(at);
        at += mib * MIB;
    }

    let r = Receiver::start(&dir.join("store"), true);
    let (job, token) = r.create_job("used-blocks");
    let summary = sent(&r.send(&job, &token, &[&disk], &["--used-only", "--chunk-size", "1M"]));
    let d = &summary["disks"][0];
    let used = &d["used_only"];
    let partitions = used["partitions"].as_array().unwrap();
    let found: Vec<(&str, &str)> =
        partitions.iter().map(|p| (p["fs"].as_str().unwrap(), p["read"].as_str().unwrap())).collect();
    assert_eq!(
        found,
        [
            ("vfat", "used_blocks"),
            ("ext4", "used_blocks"),
            ("ntfs", "used_blocks"),
            ("xfs", "used_blocks"),
            ("swap", "used_blocks"),
            ("ext4", "whole")
        ],
        "{used:#}"
    );
    assert!(partitions[5]["reason"].as_str().unwrap().contains("recovery"), "{used:#}");

    // What was read: at most partclone's count plus what the plan reads through (gaps under
    // 64 KiB, 4 KiB alignment), and far less than the disk.
    let names = ["fat", "ext4", "ntfs", "xfs"];
    for (i, fs) in names.iter().enumerate() {
        let ours = partitions[i]["read_bytes"].as_u64().unwrap();
        let theirs = partclone_used(fs, &parts[i].image);
        eprintln!("partition {} ({fs}): ferry reads {ours} bytes, partclone {theirs}", i + 1);
        assert!(ours >= theirs * 99 / 100, "{fs}: ferry reads {ours}, partclone {theirs}");
        assert!(ours <= theirs + theirs / 20 + 2 * MIB, "{fs}: ferry reads {ours}, partclone {theirs}");
    }
    assert_eq!(partitions[4]["read_bytes"], 4096);
    let read = used["read_bytes"].as_u64().unwrap();
    assert!(read < 760 * MIB / 2, "read {read} of {}", 760 * MIB);

    // Pre-seeded: a second job of the same disk finds every chunk held and sends none, with
    // the same whole-disk hash (the plan is the same on an unchanged disk).
    let (again, again_token) = r.create_job("used-blocks-again");
    let resent = sent(&r.send(&again, &again_token, &[&disk], &["--used-only", "--chunk-size", "1M"]));
    assert_eq!(resent["disks"][0]["sent_chunks"], 0, "{resent:#}");
    assert_eq!(resent["disks"][0]["blake3"], d["blake3"]);

    // The job says so too.
    let shown = ferry(&["job", "show", &job, "--store", s(&r.store)]);
    let text = String::from_utf8_lossy(&shown.stdout);
    assert!(text.contains("used blocks only"), "{text}");
    assert!(r.job(&job)["disks"][0]["used_only"]["read_bytes"] == read);

    // The exported image: its BLAKE3 is the manifest's, and each filesystem checks clean.
    let export = dir.join("export.img");
    let ex = ferry(&["export", "--store", s(&r.store), "--job", &job, "--disk", "0", "--to", s(&export)]);
    assert!(ex.status.success(), "export: {}", String::from_utf8_lossy(&ex.stderr));
    assert_eq!(b3sum(&export), d["blake3"].as_str().unwrap());
    assert_ne!(b3sum(&export), b3sum(&disk), "free space was skipped, so the copy differs from the source");
    let part = |i: usize| cut(&export, offsets[i], layout[i].1 * MIB, &dir.join(format!("out-p{}", i + 1)));

    let fat = part(0);
    run("fsck.vfat", &["-n", s(&fat)]);
    for (n, bytes) in &parts[0].files {
        let out = dir.join(format!("read-fat-{n}"));
        run("mcopy", &["-i", s(&fat), &format!("::{n}"), s(&out)]);
        assert!(std::fs::read(&out).unwrap() == *bytes, "FAT file {n} differs");
    }
    let ext = part(1);
    run("e2fsck", &["-fn", s(&ext)]);
    for (n, bytes) in &parts[1].files {
        let out = dir.join(format!("read-ext-{n}"));
        run("debugfs", &["-R", &format!("dump {n} {}", out.display()), s(&ext)]);
        assert!(std::fs::read(&out).unwrap() == *bytes, "ext4 file {n} differs");
    }
    let nt = part(2);
    run("ntfsfix", &["-n", s(&nt)]);
    for (n, bytes) in &parts[2].files {
        let out = Command::new("ntfscat").arg(&nt).arg(n).output().unwrap();
        assert!(out.status.success() && out.stdout == *bytes, "NTFS file {n} differs");
    }
    let x = part(3);
    run("xfs_repair", &["-n", s(&x)]);
    {
        let m = Mounted::new(&x, &dir.join("xfs-out"), "loop,ro,norecovery");
        for (n, bytes) in &parts[3].files {
            assert!(std::fs::read(m.0.join(n)).unwrap() == *bytes, "XFS file {n} differs");
        }
    }
    let swap = part(4);
    let blkid = run("blkid", &["-o", "value", "-s", "TYPE", s(&swap)]);
    assert_eq!(blkid.trim(), "swap");
    // Read whole: the dirty ext4 is byte for byte the source's.
    assert!(files_equal(&part(5), &parts[5].image), "the partition read whole differs from the source");
}
