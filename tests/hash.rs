//! `ferry hash` against `b3sum` (the BLAKE3 team's CLI): the manifest's whole-disk hash must be
//! the plain BLAKE3 of the bytes for every size and thread count, and zero chunks must be flagged
//! exactly where zeros were written.

mod support;

use std::path::Path;

use serde_json::Value;
use support::*;

const KIB: u64 = 1 << 10;
const MIB: u64 = 1 << 20;

/// `ferry hash --json PATH [extra...]`.
fn hash(path: &Path, extra: &[&str]) -> Value {
    let mut args = vec!["hash", "--json", s(path)];
    args.extend_from_slice(extra);
    ferry_json(&args)
}

fn ids(m: &Value) -> Vec<String> {
    m["chunks"].as_array().unwrap().iter().map(|c| c["id"].as_str().unwrap().to_string()).collect()
}

fn zero_flags(m: &Value) -> Vec<bool> {
    m["chunks"].as_array().unwrap().iter().map(|c| c["zero"].as_bool().unwrap()).collect()
}

#[test]
fn whole_disk_hash_equals_b3sum_at_chunk_edges() {
    let t = tempfile::tempdir().unwrap();
    let sizes = [0, 1, 511, 65535, 65536, 65537, 2 * 65536, 3 * 65536 + 777, 8 * 65536 + 1];
    for (i, &size) in sizes.iter().enumerate() {
        let img = t.path().join(format!("size-{size}.img"));
        std::fs::write(&img, pseudo_random(size as usize, i as u64 + 1)).unwrap();
        let want = b3sum(&img);

        let m = hash(&img, &["--chunk-size", "64K"]);
        assert_eq!(m["version"], 1);
        assert_eq!(m["size"].as_u64().unwrap(), size, "size {size}");
        assert_eq!(m["chunk_size"].as_u64().unwrap(), 64 * KIB);
        assert_eq!(m["blake3"].as_str().unwrap(), want, "size {size}: ferry and b3sum disagree");
        assert_eq!(m["identity"]["size"].as_u64().unwrap(), size);
        assert_eq!(m["identity"]["kind"], "file");
        let ids = ids(&m);
        assert_eq!(ids.len() as u64, size.div_ceil(64 * KIB), "size {size}: chunk count");
        if size > 0 && size <= 64 * KIB {
            // A disk of one chunk has no inner node: its one id is the whole-disk hash.
            assert_eq!(ids[0], want, "size {size}");
        }
        if size > 64 * KIB {
            assert!(ids.iter().all(|id| *id != want), "size {size}: an inner chunk id is not the root");
        }

        // The default chunk size (4 MiB) gives the same whole-disk hash.
        let d = hash(&img, &[]);
        assert_eq!(d["chunk_size"].as_u64().unwrap(), 4 * MIB);
        assert_eq!(d["blake3"].as_str().unwrap(), want, "size {size} at 4M");
        assert_eq!(ids.len() as u64 > 1, size > 64 * KIB);
    }
    // The empty file's hash is BLAKE3 of nothing.
    assert_eq!(
        hash(&t.path().join("size-0.img"), &[])["blake3"],
        "af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262"
    );
}

#[test]
fn random_50_mib_image_equals_b3sum_with_any_thread_count() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("random.img");
    std::fs::write(&img, pseudo_random(50 * MIB as usize, 50)).unwrap();
    let want = b3sum(&img);

    let m = hash(&img, &[]);
    assert_eq!(m["blake3"].as_str().unwrap(), want);
    assert_eq!(m["chunk_size"].as_u64().unwrap(), 4 * MIB);
    assert_eq!(m["chunks"].as_array().unwrap().len(), 13, "12 whole chunks of 4 MiB and one of 2 MiB");
    assert!(zero_flags(&m).iter().all(|z| !z), "random data has no zero chunk");
    let set: std::collections::HashSet<String> = ids(&m).into_iter().collect();
    assert_eq!(set.len(), 13, "every chunk id differs");

    // The manifest does not depend on how many workers hashed it.
    let text = |threads: &str| {
        let out = ferry(&["hash", "--json", "--threads", threads, s(&img)]);
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let one = text("1");
    assert_eq!(serde_json::from_str::<Value>(&one).unwrap(), m);
    assert_eq!(text("2"), one, "--threads 2 and --threads 1 give the same manifest");
    assert_eq!(text("5"), one, "more threads than cores still give the same manifest");
}

#[test]
fn zero_chunks_are_flagged_exactly_where_zeros_were_written() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("zeros.img");
    let chunk = 64 * KIB as usize;
    let count = 20;
    let tail = 1000;
    let mut data = pseudo_random(count * chunk + tail, 3);
    let zero_chunks = [0usize, 5, 6, 7, 12, 19];
    for &c in &zero_chunks {
        data[c * chunk..(c + 1) * chunk].fill(0);
    }
    // Nearly zero: one byte set at the very end of chunk 9 and the very start of chunk 10.
    data[9 * chunk..11 * chunk].fill(0);
    data[10 * chunk - 1] = 1;
    data[10 * chunk] = 0x80;
    // The short last chunk is zero too.
    data[count * chunk..].fill(0);
    std::fs::write(&img, &data).unwrap();

    let m = hash(&img, &["--chunk-size", "64K"]);
    assert_eq!(m["blake3"].as_str().unwrap(), b3sum(&img));
    let flags = zero_flags(&m);
    assert_eq!(flags.len(), count + 1);
    let expected: Vec<bool> = (0..=count).map(|i| zero_chunks.contains(&i) || i == count).collect();
    assert_eq!(flags, expected);
    // The same, judged from the bytes on disk rather than from what the test meant to write.
    let on_disk = std::fs::read(&img).unwrap();
    let judged: Vec<bool> = on_disk.chunks(chunk).map(|c| c.iter().all(|&b| b == 0)).collect();
    assert_eq!(flags, judged);
    // Equal bytes at different offsets get different ids: no two zero chunks share one.
    let ids = ids(&m);
    let zero_ids: std::collections::HashSet<&String> = (0..=count).filter(|&i| flags[i]).map(|i| &ids[i]).collect();
    assert_eq!(zero_ids.len(), zero_chunks.len() + 1);
}

#[test]
fn sparse_image_is_all_zero_chunks() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("sparse.img");
    make_file(&img, 40 * MIB + 4096);
    let m = hash(&img, &[]);
    assert_eq!(m["blake3"].as_str().unwrap(), b3sum(&img));
    let flags = zero_flags(&m);
    assert_eq!(flags.len(), 11);
    assert!(flags.iter().all(|&z| z));
}

#[test]
fn one_changed_byte_changes_one_chunk_id_and_the_whole_disk_hash() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("edit.img");
    std::fs::write(&img, pseudo_random(16 * 64 * KIB as usize + 5, 9)).unwrap();
    let before = hash(&img, &["--chunk-size", "64K"]);
    let at = 7 * 64 * KIB + 1234;
    let old = read_at(&img, at, 1)[0];
    write_at(&img, at, &[old ^ 0x40]);
    let after = hash(&img, &["--chunk-size", "64K"]);
    assert_eq!(after["blake3"].as_str().unwrap(), b3sum(&img));
    assert_ne!(after["blake3"], before["blake3"]);
    let (a, b) = (ids(&before), ids(&after));
    let changed: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    assert_eq!(changed, [7], "only the chunk holding the byte changes its id");
}

#[test]
fn manifest_carries_the_partition_table_inspect_reads() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("gpt.img");
    make_file(&img, 16 * MIB);
    run("sgdisk", &["-n1:2048:+4M", "-t1:ef00", "-c1:esp", "-n2:0:0", "-t2:8300", "-c2:root", s(&img)]);
    write_at(&img, 6 * MIB, &pseudo_random(3 * MIB as usize + 17, 4));
    let m = hash(&img, &["--chunk-size", "1M"]);
    assert_eq!(m["blake3"].as_str().unwrap(), b3sum(&img));
    assert_eq!(m["partition_table"], inspect(&img, &[])["partition_table"]);
    assert_gpt_matches_sgdisk(&m["partition_table"], &sgdisk_table(&img));
    // Chunk 0 holds the tables, chunks 6-9 the data, the last one the backup GPT.
    let flags = zero_flags(&m);
    let nonzero: Vec<usize> = (0..flags.len()).filter(|&i| !flags[i]).collect();
    assert_eq!(nonzero, [0, 6, 7, 8, 9, 15]);
}

#[test]
fn bad_chunk_sizes_and_paths_fail_with_a_clear_message() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("small.img");
    std::fs::write(&img, pseudo_random(100_000, 5)).unwrap();
    // Sizes that are not a power of two in 64K..64M: bad usage (exit 2), and the message gives
    // the rule.
    for bad in ["3M", "32K", "128M", "0", "100000"] {
        let out = ferry(&["hash", "--json", "--chunk-size", bad, s(&img)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--chunk-size {bad}: {err}");
        assert!(err.contains("must be a power of two between 65536 and 67108864 bytes"), "--chunk-size {bad}: {err}");
        assert!(out.stdout.is_empty(), "no manifest is printed for a bad chunk size");
    }
    // Not a size at all: bad usage, exit 2.
    for bad in ["3X", "lots", ""] {
        let out = ferry(&["hash", "--chunk-size", bad, s(&img)]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "--chunk-size {bad:?}: {err}");
        assert!(err.contains("--chunk-size"), "{err}");
    }
    // The edges of the range are fine.
    for ok in ["64K", "64M", "65536"] {
        let m = hash(&img, &["--chunk-size", ok]);
        assert_eq!(m["blake3"].as_str().unwrap(), b3sum(&img), "--chunk-size {ok}");
    }

    let missing = t.path().join("missing.img");
    let out = ferry(&["hash", s(&missing)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains(s(&missing)));
    let out = ferry(&["hash", s(t.path())]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("directory"));
    let out = ferry(&["hash"]);
    assert_eq!(out.status.code(), Some(2), "a missing path is bad usage");
}

#[test]
fn hash_of_a_4k_sector_loop_device_equals_b3sum() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("dev.img");
    make_file(&img, 12 * MIB);
    write_at(&img, 2 * MIB, &pseudo_random(5 * MIB as usize + 3, 11));
    let Some(dev) = loop_or_skip("hash_of_a_4k_sector_loop_device_equals_b3sum", &img, 4096) else {
        return;
    };
    run("sgdisk", &["-n1:256:+1M", "-t1:8300", "-c1:data", s(&dev.dev)]);
    let m = hash(&dev.dev, &["--chunk-size", "1M"]);
    assert_eq!(m["identity"]["kind"], "block");
    assert_eq!(m["identity"]["logical_sector_size"], 4096);
    assert_eq!(m["size"].as_u64().unwrap(), 12 * MIB);
    assert_eq!(m["partition_table"]["kind"], "gpt");
    assert_eq!(m["partition_table"]["sector_size"], 4096);
    let want = b3sum(&dev.dev);
    assert_eq!(m["blake3"].as_str().unwrap(), want);
    dev.detach();
    assert_eq!(b3sum(&img), want, "the device and its backing file hold the same bytes");
}

#[test]
fn lock_sets_the_kernel_read_only_flag_on_the_disk_and_its_partitions() {
    let t = tempfile::tempdir().unwrap();
    let img = t.path().join("lock.img");
    make_file(&img, 16 << 20);
    run("sgdisk", &["-n1:1M:+4M", "-n2:0:0", s(&img)]);
    write_at(&img, 2 << 20, &pseudo_random(1 << 20, 9));
    // Without --lock nothing changes the flag; a regular file cannot be locked at all.
    let out = ferry(&["hash", "--lock", s(&img)]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only block devices"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let attach = std::process::Command::new("losetup").args(["-f", "--show", "-P", s(&img)]).output().unwrap();
    if !attach.status.success() {
        use std::io::Write;
        let _ = writeln!(
            std::io::stderr(),
            "SKIPPED lock test: losetup -P failed: {}",
            String::from_utf8_lossy(&attach.stderr)
        );
        return;
    }
    let dev = String::from_utf8_lossy(&attach.stdout).trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("blockdev").args(["--setrw", &self.0]).status();
            for p in ["p1", "p2"] {
                let _ = std::process::Command::new("blockdev").args(["--setrw", &format!("{}{p}", self.0)]).status();
            }
            let _ = std::process::Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _guard = Detach(dev.clone());
    let getro = |d: &str| run("blockdev", &["--getro", d]).trim().to_string();
    let unlocked = ferry_json(&["hash", "--json", "--chunk-size", "64K", &dev]);
    assert_eq!(getro(&dev), "0", "hashing without --lock must leave the flag alone");

    let locked = ferry_json(&["hash", "--lock", "--json", "--chunk-size", "64K", &dev]);
    assert_eq!(locked["blake3"], unlocked["blake3"]);
    assert_eq!(locked["blake3"].as_str().unwrap(), b3sum(Path::new(&dev)));
    assert_eq!(getro(&dev), "1", "the disk is read-only at the kernel level");
    for p in ["p1", "p2"] {
        let part = format!("{dev}{p}");
        if Path::new(&part).exists() {
            assert_eq!(getro(&part), "1", "{part} is read-only too");
        }
    }
    // The kernel now refuses writes to the device.
    let dd = std::process::Command::new("dd")
        .args(["if=/dev/zero", &format!("of={dev}"), "bs=4096", "count=1", "oflag=direct", "conv=notrunc"])
        .output()
        .unwrap();
    assert!(!dd.status.success(), "a write to a locked disk must fail");
    assert_eq!(b3sum(&img), locked["blake3"].as_str().unwrap(), "the image is unchanged");
}
