//! Faults the live image must survive, booted for real in QEMU: source disks with sectors that
//! cannot be read (QEMU's blkdebug fails reads the guest makes, as a failing disk does).

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);
const SECTOR: u64 = 512;

/// A blkdebug configuration: reads touching each of `bad` fail always, and reads touching
/// `flaky` fail its first `flaky_times` times only.
fn blkdebug_rules(path: &Path, bad: &[u64], flaky: u64, flaky_times: usize) {
    let rule = |sector: u64, once: &str| {
        format!("[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"{sector}\"\nonce = \"{once}\"\n\n")
    };
    let mut text: String = bad.iter().map(|s| rule(*s, "off")).collect();
    text.extend((0..flaky_times).map(|_| rule(flaky, "on")));
    std::fs::write(path, text).unwrap();
}

/// `src` with each range (in sectors) zeroed by dd, as the copy of a failing disk should be.
fn zeroed_copy(src: &Path, dest: &Path, ranges: &[(u64, u64)]) {
    std::fs::copy(src, dest).unwrap();
    for (first, count) in ranges {
        run_ok(std::process::Command::new("dd").args([
            "if=/dev/zero",
            &format!("of={}", dest.display()),
            "bs=512",
            &format!("seek={first}"),
            &format!("count={count}"),
            "conv=notrunc",
            "status=none",
        ]));
    }
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn unreadable_sectors_are_recorded_sent_as_zeros_and_named_in_the_verdict() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    // 32 MiB, GPT: partition 1 at sectors 2048-18431, partition 2 from 18432 to the end.
    let disk = t.path().join("failing.img");
    gpt_disk(&disk, 32, 21);
    let last = std::fs::metadata(&disk).unwrap().len() / SECTOR - 1;
    // One sector in partition 1, a 1 MiB run in partition 2, and the disk's last sector (the
    // backup GPT header); a sector that fails three times and then reads.
    let one = 3 * 2048 + 5;
    let run = (21 * 2048, 2048);
    let flaky = 4 * 2048 + 1;
    let mut bad = vec![one];
    bad.extend(run.0..run.0 + run.1);
    bad.push(last);
    let cfg = t.path().join("blkdebug.conf");
    blkdebug_rules(&cfg, &bad, flaky, 3);
    eprintln!(
        "injected: sector {one}, sectors {}..{}, sector {last}; sector {flaky} fails 3 times",
        run.0,
        run.0 + run.1
    );

    let r = Receiver::start(&t.path().join("store"), false);
    let (job, token, target_token) =
        r.create_instance_job("vm-bad-sectors", &["--target-machine", "TGT-1", "--allow-wipe"]);
    let pin = r.pin().unwrap();
    let log = t.path().join("serial.log");
    let cmdline =
        format!("{} ferry.bad_sectors=record", source_cmdline(&guest_url(r.port, true), &job, &token, Some(&pin)));
    let mut vm = Vm::direct(&log, &cmdline);
    vm.disk(Disk::FailingVirtio { file: &disk, config: &cfg }, 0);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    eprintln!("source with unreadable sectors: {took:?}");
    let verdict_at = serial.rfind("MIGRATED WITH").map(|i| serial[..i].rfind("=====").unwrap_or(i)).unwrap_or(0);
    eprintln!("{}", &serial[verdict_at..]);

    // The verdict names the count, never a plain MIGRATED, and lists each range with its partition.
    assert!(serial.contains("MIGRATED WITH 2050 UNREADABLE SECTORS"), "{serial}");
    assert!(!serial.contains("M I G R A T E D"), "a plain MIGRATED for a disk with bad sectors:\n{serial}");
    assert!(serial.contains(&format!("disk 0 unreadable: sector {one} in partition 1")), "{serial}");
    assert!(
        serial.contains(&format!("sectors {}-{} (2048 sectors) in partition 2", run.0, run.0 + run.1 - 1)),
        "{serial}"
    );
    assert!(serial.contains(&format!("sector {last}, outside any partition")), "{serial}");

    // The job is Finished with exactly the injected ranges (the flaky sector was read).
    let j = r.job(&job);
    assert_eq!(j["state"], "Finished", "{j:#}");
    let got: Vec<(u64, u64, Option<u64>)> = j["disks"][0]["bad_ranges"]
        .as_array()
        .unwrap_or_else(|| panic!("no bad_ranges in {j:#}"))
        .iter()
        .map(|r| (r["offset"].as_u64().unwrap(), r["length"].as_u64().unwrap(), r["partition"].as_u64()))
        .collect();
    let want =
        vec![(one * SECTOR, SECTOR, Some(1)), (run.0 * SECTOR, run.1 * SECTOR, Some(2)), (last * SECTOR, SECTOR, None)];
    assert_eq!(got, want);
    let shown = ferry(&["job", "show", "--store", r.store.to_str().unwrap(), &job]);
    let shown = String::from_utf8_lossy(&shown.stdout);
    assert!(shown.contains("Finished WITH 2050 UNREADABLE SECTORS"), "{shown}");

    // The copy is the source with exactly those sectors zeroed (dd did the zeroing), and the
    // whole-disk hash both ends agreed on is that copy's b3sum.
    let expected = t.path().join("expected.img");
    zeroed_copy(&disk, &expected, &[(one, 1), run, (last, 1)]);
    assert_eq!(export_b3sum(&r, &job, 0, t.path()), b3sum(&expected));
    assert_eq!(j["disks"][0]["blake3"].as_str().unwrap(), b3sum(&expected));
    assert_ne!(b3sum(&expected), b3sum(&disk), "the zeroed sectors held data");

    // A target (ferry pull onto an image file, as machine TGT-1) writes it and verifies its
    // read-back against the same hashes: it gets exactly that copy.
    let target = t.path().join("target.img");
    std::fs::File::create(&target).unwrap().set_len(std::fs::metadata(&disk).unwrap().len()).unwrap();
    let pull = std::process::Command::new(FERRY)
        .args(["pull", "--server", &r.url, "--job", &job, "--token", &target_token, "--pin", &pin, "--json"])
        .arg("--to")
        .arg(&target)
        .env("FERRY_SYS_ROOT", machine(t.path(), "TGT-1", None, Some("Test Machine")))
        .output()
        .unwrap();
    assert!(pull.status.success(), "pull: {}", String::from_utf8_lossy(&pull.stderr));
    assert_eq!(r.job(&job)["delivery"]["state"], "Finished");
    assert_eq!(b3sum(&target), b3sum(&expected));
}
