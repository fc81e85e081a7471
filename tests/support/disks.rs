//! Partition tables: sample GPT and MBR images, sgdisk's and sfdisk's readings of a table and
//! their comparison with `ferry inspect`, and loop devices.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

use super::cmd::{ferry_json, run};
use super::data::{pseudo_random, s, write_at};

/// `sgdisk ARGS... PATH`, asserting success; its stdout.
pub fn sgdisk(path: &Path, args: &[&str]) -> String {
    let mut a: Vec<&str> = args.to_vec();
    a.push(s(path));
    run("sgdisk", &a)
}

/// `ferry inspect --json PATH [extra...]`: the partition table of the one disk.
pub fn inspect(path: &Path, extra: &[&str]) -> Value {
    let p = path.to_str().unwrap();
    let mut args = vec!["inspect", "--json", p];
    args.extend_from_slice(extra);
    let v = ferry_json(&args);
    let disks = v["disks"].as_array().expect("disks array");
    assert_eq!(disks.len(), 1, "one path gives one disk: {v}");
    disks[0].clone()
}

/// A GPT disk image with 512-byte sectors, an EFI System and a Linux partition holding data.
pub fn gpt_disk(path: &Path, mib: u64, seed: u64) {
    std::fs::File::create(path).unwrap().set_len(mib << 20).unwrap();
    sgdisk(path, &["-n1:1M:+8M", "-t1:ef00", "-c1:esp", "-n2:0:0", "-t2:8300", "-c2:root"]);
    write_at(path, 2 << 20, &pseudo_random(3 << 20, seed));
    write_at(path, 20 << 20, &pseudo_random(5 << 20, seed + 1));
}

/// A GPT disk image with 4096-byte logical sectors (made through a 4Kn loop device).
pub fn gpt_4k_disk(path: &Path, mib: u64, seed: u64) {
    std::fs::File::create(path).unwrap().set_len(mib << 20).unwrap();
    let out = Command::new("losetup").args(["-f", "--show", "--sector-size", "4096"]).arg(path).output().unwrap();
    assert!(out.status.success(), "losetup: {}", String::from_utf8_lossy(&out.stderr));
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    let made = Command::new("sgdisk")
        .args(["-n1:0:+8M", "-t1:8300", "-c1:data4k", "-n2:0:0", "-t2:8300"])
        .arg(&dev)
        .output()
        .unwrap();
    let _ = Command::new("losetup").args(["-d", &dev]).status();
    assert!(made.status.success(), "sgdisk on {dev}: {}", String::from_utf8_lossy(&made.stderr));
    write_at(path, 1 << 20, &pseudo_random(2 << 20, seed));
}

/// An MBR disk image with two primary partitions (made with sfdisk) holding data.
pub fn mbr_disk(path: &Path, mib: u64, seed: u64) {
    use std::io::Write;
    std::fs::File::create(path).unwrap().set_len(mib << 20).unwrap();
    let mut child =
        Command::new("sfdisk").arg("--quiet").arg(path).stdin(Stdio::piped()).stdout(Stdio::null()).spawn().unwrap();
    child.stdin.take().unwrap().write_all(b"label: dos\n,8M,83,*\n,,83\n").unwrap();
    assert!(child.wait().unwrap().success());
    write_at(path, 1 << 20, &pseudo_random(3 << 20, seed));
}

/// Byte offset of the first partition (the ESP) of a GPT image, from sgdisk.
pub fn esp_offset(img: &Path) -> u64 {
    let out = Command::new("sgdisk").arg("-i").arg("1").arg(img).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let first: u64 = text
        .lines()
        .find_map(|l| l.strip_prefix("First sector: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no first sector in {text}"));
    first * 512
}

/// One partition as `sgdisk -i N` reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SgdiskPart {
    pub number: u32,
    pub first: u64,
    pub last: u64,
    pub sectors: u64,
    pub type_guid: String,
    pub guid: String,
    pub attributes: u64,
    pub name: String,
}

/// A GPT as `sgdisk -p` and `sgdisk -i N` report it.
#[derive(Debug, Clone)]
pub struct SgdiskTable {
    pub sector_size: u64,
    pub disk_guid: String,
    pub parts: Vec<SgdiskPart>,
}

fn after<'a>(text: &'a str, label: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.strip_prefix(label))
        .unwrap_or_else(|| panic!("no line starting {label:?} in:\n{text}"))
        .trim()
}

fn first_number(s: &str) -> u64 {
    let digits: String = s.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().unwrap_or_else(|_| panic!("no number at the start of {s:?}"))
}

/// Reads a GPT with sgdisk: `-p` for the disk and partition numbers, `-i N` for each partition.
pub fn sgdisk_table(path: &Path) -> SgdiskTable {
    let p = run("sgdisk", &["-p", s(path)]);
    // "Sector size (logical): 512 bytes" or "Sector size (logical/physical): 4096/4096 bytes"
    let ss_line = p.lines().find(|l| l.starts_with("Sector size (logical")).expect("sector size line");
    let sector_size = first_number(ss_line.split(": ").nth(1).unwrap());
    let disk_guid = after(&p, "Disk identifier (GUID):").to_string();
    let mut numbers = vec![];
    let mut in_table = false;
    for line in p.lines() {
        if line.starts_with("Number") {
            in_table = true;
            continue;
        }
        if in_table {
            if let Some(n) = line.split_whitespace().next().and_then(|w| w.parse::<u32>().ok()) {
                numbers.push(n);
            }
        }
    }
    let parts = numbers
        .into_iter()
        .map(|n| {
            let i = run("sgdisk", &["-i", &n.to_string(), s(path)]);
            let name = after(&i, "Partition name:");
            SgdiskPart {
                number: n,
                first: first_number(after(&i, "First sector:")),
                last: first_number(after(&i, "Last sector:")),
                sectors: first_number(after(&i, "Partition size:")),
                type_guid: after(&i, "Partition GUID code:").split_whitespace().next().unwrap().to_string(),
                guid: after(&i, "Partition unique GUID:").to_string(),
                attributes: u64::from_str_radix(after(&i, "Attribute flags:"), 16).unwrap(),
                name: name.strip_prefix('\'').and_then(|n| n.strip_suffix('\'')).unwrap_or(name).to_string(),
            }
        })
        .collect();
    SgdiskTable { sector_size, disk_guid, parts }
}

/// Asserts that ferry's partition table (the `partition_table` object of `inspect --json`)
/// agrees partition by partition with sgdisk's reading of `sg` (a file or device that holds the
/// same table).
pub fn assert_gpt_matches_sgdisk(table: &Value, sg: &SgdiskTable) {
    assert_eq!(table["kind"], "gpt", "{table:#}");
    assert_eq!(table["sector_size"].as_u64().unwrap(), sg.sector_size, "{table:#}");
    assert_eq!(table["disk_guid"].as_str().unwrap(), sg.disk_guid, "{table:#}");
    let parts = table["partitions"].as_array().unwrap();
    assert_eq!(parts.len(), sg.parts.len(), "partition count; ferry: {table:#}\nsgdisk: {sg:#?}");
    for (p, q) in parts.iter().zip(&sg.parts) {
        let ctx = format!("partition {}: ferry {p:#} / sgdisk {q:#?}", q.number);
        assert_eq!(p["number"].as_u64().unwrap(), u64::from(q.number), "{ctx}");
        assert_eq!(p["start"].as_u64().unwrap(), q.first * sg.sector_size, "{ctx}");
        assert_eq!(p["size"].as_u64().unwrap(), q.sectors * sg.sector_size, "{ctx}");
        assert_eq!(q.sectors, q.last - q.first + 1, "{ctx}");
        assert_eq!(p["type"].as_str().unwrap(), q.type_guid, "{ctx}");
        assert_eq!(p["guid"].as_str().unwrap(), q.guid, "{ctx}");
        assert_eq!(p["name"].as_str().unwrap(), q.name, "{ctx}");
        assert_eq!(p["attributes"].as_u64().unwrap(), q.attributes, "{ctx}");
        assert!(p.get("bootable").is_none() && p.get("logical").is_none(), "{ctx}");
    }
}

/// `sfdisk --json PATH`: the `partitiontable` object (sizes in sectors).
pub fn sfdisk_json(path: &Path) -> Value {
    let out = run("sfdisk", &["--json", s(path)]);
    let v: Value = serde_json::from_str(&out).unwrap();
    v["partitiontable"].clone()
}

/// The partition number sfdisk gives a node: `/x/disk.img5` -> 5.
pub fn sfdisk_number(device: &str, node: &str) -> u32 {
    let rest = node.strip_prefix(device).unwrap_or_else(|| panic!("node {node} is not under {device}"));
    rest.trim_start_matches('p').parse().unwrap()
}

/// Asserts that ferry's MBR table agrees partition by partition with `sfdisk --json`.
pub fn assert_mbr_matches_sfdisk(table: &Value, path: &Path) {
    let sf = sfdisk_json(path);
    assert_eq!(sf["label"], "dos");
    assert_eq!(table["kind"], "mbr", "{table:#}");
    let ss = sf["sectorsize"].as_u64().unwrap();
    assert_eq!(table["sector_size"].as_u64().unwrap(), ss);
    assert_eq!(table["mbr_signature"].as_str().unwrap(), sf["id"].as_str().unwrap(), "disk signature");
    let mut theirs: Vec<&Value> = sf["partitions"].as_array().unwrap().iter().collect();
    theirs.sort_by_key(|q| sfdisk_number(s(path), q["node"].as_str().unwrap()));
    let ours = table["partitions"].as_array().unwrap();
    assert_eq!(ours.len(), theirs.len(), "partition count; ferry: {table:#}\nsfdisk: {sf:#}");
    for (p, q) in ours.iter().zip(theirs) {
        let number = sfdisk_number(s(path), q["node"].as_str().unwrap());
        let ctx = format!("partition {number}: ferry {p:#} / sfdisk {q:#}");
        assert_eq!(p["number"].as_u64().unwrap(), u64::from(number), "{ctx}");
        assert_eq!(p["start"].as_u64().unwrap(), q["start"].as_u64().unwrap() * ss, "{ctx}");
        assert_eq!(p["size"].as_u64().unwrap(), q["size"].as_u64().unwrap() * ss, "{ctx}");
        let ty = u8::from_str_radix(q["type"].as_str().unwrap(), 16).unwrap();
        assert_eq!(p["type"].as_str().unwrap(), format!("0x{ty:02x}"), "{ctx}");
        assert_eq!(p["bootable"].as_bool().unwrap(), q["bootable"].as_bool().unwrap_or(false), "{ctx}");
        assert_eq!(p["logical"].as_bool().unwrap(), number > 4, "{ctx}");
        assert!(p.get("guid").is_none() && p.get("name").is_none(), "{ctx}");
    }
}

/// The problems ferry reported, as strings.
pub fn problems(table: &Value) -> Vec<String> {
    table["problems"].as_array().unwrap().iter().map(|p| p.as_str().unwrap().to_string()).collect()
}

/// A loop device over an image file, detached on drop.
pub struct LoopDev {
    pub dev: PathBuf,
}

impl LoopDev {
    /// Attaches `file` with `sector_size`-byte logical sectors, or returns why it cannot (no
    /// loop support in this environment, not root, ...), for the test to print and skip.
    pub fn attach(file: &Path, sector_size: u32) -> Result<Self, String> {
        let out = Command::new("losetup")
            .args(["-f", "--show", "--sector-size", &sector_size.to_string(), s(file)])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("losetup could not run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "losetup -f --show --sector-size {sector_size} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let dev = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        let dev = Self { dev };
        // Check that the kernel applied the sector size (old kernels ignore it).
        let ss = Command::new("blockdev").args(["--getss", s(&dev.dev)]).output().map_err(|e| e.to_string())?;
        let got = String::from_utf8_lossy(&ss.stdout).trim().to_string();
        if got != sector_size.to_string() {
            return Err(format!("{} has {got}-byte sectors, not {sector_size}", dev.dev.display()));
        }
        Ok(dev)
    }

    /// Detaches now (flushing what was written through the device into the file).
    pub fn detach(self) {}
}

impl Drop for LoopDev {
    fn drop(&mut self) {
        let _ = Command::new("blockdev").args(["--flushbufs", s(&self.dev)]).status();
        let _ = Command::new("losetup").args(["-d", s(&self.dev)]).status();
    }
}

/// Attaches a loop device or prints why the calling test is skipped and returns `None`.
pub fn loop_or_skip(test: &str, file: &Path, sector_size: u32) -> Option<LoopDev> {
    match LoopDev::attach(file, sector_size) {
        Ok(d) => Some(d),
        Err(why) => {
            // Straight to stderr rather than eprintln!, which the test harness captures and
            // shows only for failing tests: a skip must be visible in a passing run.
            use std::io::Write;
            let _ = writeln!(std::io::stderr(), "SKIPPED {test}: loop devices are unavailable here: {why}");
            None
        }
    }
}
