//! The live image booted for real in QEMU: direct kernel boot, PXE through iPXE, and the
//! failure paths (USB sticks and every firmware: tests/vm_boot.rs). Each run ends with the guest's verdict on its serial console
//! and the receiver's job state; exported disks are compared with `b3sum`.

mod support;

use std::path::Path;
use std::time::Duration;

use support::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn direct_boot_migrates_three_disks_and_never_writes_them() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let (gpt, gpt4k, mbr) = (t.path().join("gpt.img"), t.path().join("gpt4k.img"), t.path().join("mbr.img"));
    gpt_disk(&gpt, 48, 1);
    gpt_4k_disk(&gpt4k, 32, 2);
    mbr_disk(&mbr, 24, 3);
    let before = [b3sum(&gpt), b3sum(&gpt4k), b3sum(&mbr)];

    let r = Receiver::start(&t.path().join("store"), false);
    let (job, token) = r.create_job("vm-direct");
    let pin = r.pin().unwrap();
    let log = t.path().join("serial.log");
    let mut vm = Vm::direct(&log, &source_cmdline(&guest_url(r.port, true), &job, &token, Some(&pin)));
    vm.disk(Disk::Virtio { file: &gpt, serial: "SRC-GPT", sector: 512 }, 0)
        .disk(Disk::Virtio { file: &gpt4k, serial: "SRC-4K", sector: 4096 }, 1)
        .disk(Disk::Nvme { file: &mbr, serial: "SRC-NVME" }, 2);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    eprintln!("direct boot with three disks: {took:?}");
    assert!(serial.contains("M I G R A T E D"), "no MIGRATED verdict:\n{serial}");
    assert!(serial.contains("Powering off now"), "no clean power-off:\n{serial}");
    assert!(serial.contains("read-only at the kernel level"));
    // Every line ferry writes fits an 80-column console (kernel messages start with '[').
    for line in serial.lines().map(|l| l.trim_end_matches('\r')).filter(|l| !l.trim_start().starts_with('[')) {
        assert!(line.chars().count() <= 80, "wider than 80 columns: {line:?}");
    }
    assert!(serial.contains("job ") && serial.contains("on machine serial"), "the verdict names job and machine");
    // The receiver keeps what the technician saw.
    let log = ferry(&["job", "log", "--store", r.store.to_str().unwrap(), &job]);
    let log = String::from_utf8_lossy(&log.stdout);
    assert!(log.contains("source live image") && log.contains("M I G R A T E D"), "boot log: {log}");
    // Streamed while it ran and sent again with the verdict: still one entry for the one boot.
    let logs = ferry(&["job", "log", "--store", r.store.to_str().unwrap(), &job, "--json"]);
    let logs: serde_json::Value = serde_json::from_slice(&logs.stdout).unwrap();
    assert_eq!(logs.as_array().unwrap().len(), 1, "{logs:#}");

    let j = r.job(&job);
    assert_eq!(j["state"], "Finished", "{j:#}");
    let disks = j["disks"].as_array().unwrap();
    assert_eq!(disks.len(), 3);
    let by_path =
        |p: &str| disks.iter().find(|d| d["identity"]["path"] == p).unwrap_or_else(|| panic!("no {p} in {j:#}"));
    let expect =
        [("/dev/vda", &gpt, "gpt", 512), ("/dev/vdb", &gpt4k, "gpt", 4096), ("/dev/nvme0n1", &mbr, "mbr", 512)];
    for (path, src, kind, sector) in expect {
        let d = by_path(path);
        assert_eq!(d["partition_table"]["kind"], kind, "{path}");
        assert_eq!(d["identity"]["logical_sector_size"], sector, "{path}");
        assert_eq!(d["blake3"].as_str().unwrap(), b3sum(src), "{path}");
        assert_eq!(export_b3sum(&r, &job, d["index"].as_u64().unwrap(), t.path()), b3sum(src), "{path} export");
    }
    assert_eq!(by_path("/dev/vda")["identity"]["serial"], "SRC-GPT");
    // The driver-coverage inventory came with the registration: every storage controller bound.
    let pci = j["inventory"]["pci"].as_array().expect("inventory.pci");
    assert!(pci.iter().any(|d| d["id"] == "1b36:0010" && d["driver"] == "nvme"), "{pci:?}");
    assert!(pci.iter().any(|d| d["id"] == "1af4:1001" && d["driver"] == "virtio-pci"), "{pci:?}");
    assert_eq!(j["inventory"]["coverage"]["unbound_storage"].as_array().unwrap().len(), 0);
    assert_eq!(by_path("/dev/vdb")["partition_table"]["partitions"][0]["name"], "data4k");
    assert_eq!([b3sum(&gpt), b3sum(&gpt4k), b3sum(&mbr)], before, "a source disk changed");
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn pxe_boot_menu_chain_loads_from_the_receiver_and_migrates() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 32, 9);
    let boot_port = free_port();
    let store = t.path().join("store");
    let r = receiver_with_boot_files(&store, boot_port);
    // A wave: one enrollment token, no job made for this machine beforehand.
    let out = ferry(&["job", "enroll", "create", "--store", store.to_str().unwrap(), "--name", "vm-wave", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enrollment: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = enrollment["token"].as_str().unwrap();
    // The TFTP side only chains iPXE into the receiver's boot menu (which bakes in the URL, the
    // pin and the enrollment token); the menu's default item after its timeout is the source
    // role. Kernel and initrd come over HTTP.
    let tftp = t.path().join("tftp");
    std::fs::create_dir(&tftp).unwrap();
    let menu = format!("http://10.0.2.2:{boot_port}/boot/menu.ipxe?enroll={token}");
    std::fs::write(tftp.join("boot.ipxe"), format!("#!ipxe\nchain {menu}\n")).unwrap();
    let text = std::process::Command::new("curl")
        .args(["-sf", &format!("http://127.0.0.1:{boot_port}/boot/menu.ipxe?enroll={token}")])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(&format!("set ferry_server https://10.0.2.2:{}", r.port)), "{text}");
    assert!(text.contains(&format!("ferry.pin={}", r.pin().unwrap())), "{text}");
    assert!(text.contains(&format!("set ferry_enroll {token}")), "{text}");
    let pxe_vm = |log: &str| {
        let mut vm = Vm::base(&t.path().join(log));
        vm.serial_number("PXE-SRV-1");
        vm.arg("-boot").arg("n");
        vm.arg("-netdev").arg(&format!("user,id=n0,tftp={},bootfile=boot.ipxe", tftp.display()));
        vm.arg("-device").arg("virtio-net-pci,netdev=n0,bootindex=1");
        vm.disk(Disk::Virtio { file: &src, serial: "PXE-SRC", sector: 512 }, 0);
        vm
    };
    let (serial, took) = pxe_vm("serial.log").run(BOOT_TIMEOUT);
    eprintln!("PXE boot: {took:?}");
    assert!(serial.contains("M I G R A T E D"), "no MIGRATED verdict:\n{serial}");
    let out = ferry(&["job", "enroll", "list", "--store", store.to_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let jobs = list[0]["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 1, "{list}");
    let job = jobs[0].as_str().unwrap();
    assert!(serial.contains(&format!("enrolled: job {job} (vm-wave-PXE-SRV-1)")), "{serial}");
    let j = r.job(job);
    assert_eq!((j["name"].as_str(), j["state"].as_str()), (Some("vm-wave-PXE-SRV-1"), Some("Finished")), "{j:#}");
    assert_eq!(export_b3sum(&r, job, 0, t.path()), b3sum(&src));

    // Left to boot from the network again, the machine is told it is migrated and powers off;
    // it is not copied a second time.
    let (serial, _) = pxe_vm("again.log").run(BOOT_TIMEOUT);
    assert!(serial.contains("already migrated") && serial.contains("Powering off"), "{serial}");
    let out = ferry(&["job", "enroll", "list", "--store", store.to_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(list[0]["jobs"].as_array().unwrap().len(), 1, "{list}");

    // The same through the menu's other branch, the job and its token in the query: Finished by
    // this very machine, it is migrated.
    // (The machine's own token is not kept by the receiver; the operator issues another.)
    let out = ferry(&["job", "token", "--store", store.to_str().unwrap(), job, "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let new: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job_token = new["token"].as_str().unwrap();
    let by_job = format!("http://10.0.2.2:{boot_port}/boot/menu.ipxe?job={job}&token={job_token}");
    std::fs::write(tftp.join("boot.ipxe"), format!("#!ipxe\nchain {by_job}\n")).unwrap();
    let (serial, _) = pxe_vm("by-job.log").run(BOOT_TIMEOUT);
    assert!(serial.contains(&format!("job {job} is Finished")) && serial.contains("Powering off"), "{serial}");
}

fn failing_boot(
    append_extra: &str,
    disks: &[Disk<'_>],
    t: &Path,
    r: Option<&Receiver>,
    job: &str,
    token: &str,
    port: u16,
) -> String {
    let pin = r.and_then(|r| r.pin()).unwrap_or_else(|| "0".repeat(64));
    let log = t.join("serial.log");
    let mut vm = Vm::direct(
        &log,
        &format!("{} ferry.retry=5 {append_extra}", source_cmdline(&guest_url(port, true), job, token, Some(&pin))),
    );
    for (i, d) in disks.iter().enumerate() {
        vm.disk(*d, i);
    }
    let (serial, _) = vm.run(BOOT_TIMEOUT);
    assert!(serial.contains("F A I L E D"), "no FAILED verdict:\n{serial}");
    assert!(serial.contains("Powering off now"), "the on-finish policy was not applied:\n{serial}");
    serial
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn failures_end_in_a_failed_verdict_and_the_on_finish_action() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 16, 4);
    let disk = [Disk::Virtio { file: &src, serial: "F1", sector: 512 }];

    // A wrong token: the receiver refuses, the screen says what to check.
    let r = Receiver::start(&t.path().join("store"), false);
    let (job, _) = r.create_job("vm-wrong-token");
    let serial = failing_boot("", &disk, t.path(), Some(&r), &job, &"f".repeat(64), r.port);
    assert!(serial.contains("does not accept this job token"), "{serial}");
    assert_eq!(r.job(&job)["state"], "Waiting");

    // No receiver at all: retried, then FAILED saying where it looked.
    let dead = free_port();
    let serial = failing_boot("", &disk, t.path(), None, "nojob", "tok", dead);
    assert!(serial.contains(&format!("10.0.2.2:{dead}")), "{serial}");

    // A storage controller the image has no driver for: FAILED with its PCI ids, reported.
    let (job, token) = r.create_job("vm-no-driver");
    let scsi = t.path().join("scsi.img");
    gpt_disk(&scsi, 16, 6);
    let disks = [Disk::Virtio { file: &src, serial: "F2", sector: 512 }, Disk::Lsi { file: &scsi }];
    let serial = failing_boot("", &disks, t.path(), Some(&r), &job, &token, r.port);
    assert!(serial.contains("1000:0012"), "the LSI 53C895A's PCI id must be shown:\n{serial}");
    let j = r.job(&job);
    assert_eq!(j["state"], "InError", "{j:#}");
    assert_eq!(j["error_code"], "source_missing_driver");
    assert!(j["error_reason"].as_str().unwrap().contains("1000:0012"));

    // A read error at 6 MiB into the second disk: FAILED naming the disk and the offset, and
    // the job says the same; nothing is reported as migrated.
    let (job, token) = r.create_job("vm-io-error");
    let bad = t.path().join("bad.img");
    gpt_disk(&bad, 16, 7);
    let cfg = t.path().join("blkdebug.conf");
    blkdebug_config(&cfg, 6 * 2048);
    let disks =
        [Disk::Virtio { file: &src, serial: "F3", sector: 512 }, Disk::FailingVirtio { file: &bad, config: &cfg }];
    let serial = failing_boot("", &disks, t.path(), Some(&r), &job, &token, r.port);
    assert!(serial.contains("/dev/vdb: I/O error reading at byte offset"), "{serial}");
    assert!(serial.contains("could not be read"), "the advice names the disk, not the network:\n{serial}");
    let j = r.job(&job);
    assert_eq!(j["state"], "InError", "{j:#}");
    assert!(j["error_reason"].as_str().unwrap().contains("I/O error reading at byte offset"), "{j:#}");
}

/// Every sector (512 bytes) where two byte strings differ.
fn differing_sectors(a: &[u8], b: &[u8]) -> Vec<usize> {
    let mut v: Vec<usize> = a.iter().zip(b).enumerate().filter(|(_, (x, y))| x != y).map(|(i, _)| i / 512).collect();
    v.dedup();
    v
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn target_role_writes_a_bootable_server_that_then_boots_from_its_disk() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let marker = format!("ferry-migrated-{}", std::process::id());
    let (boot, data) = (t.path().join("boot.img"), t.path().join("data.img"));
    bootable_disk(&boot, &marker, 64);
    gpt_disk(&data, 32, 21);
    let source_sums = [b3sum(&boot), b3sum(&data)];

    let r = Receiver::start(&t.path().join("store"), false);
    let pin = r.pin().unwrap();
    let url = guest_url(r.port, true);
    let (job, token, target_token) =
        r.create_instance_job("vm-target", &["--target-machine", "TGT-VM-1", "--allow-wipe"]);

    // The source machine migrates to the receiver.
    let mut vm = Vm::direct(&t.path().join("source.log"), &source_cmdline(&url, &job, &token, Some(&pin)));
    vm.serial_number("SRC-VM-1")
        .disk(Disk::Virtio { file: &boot, serial: "SRC-BOOT", sector: 512 }, 0)
        .disk(Disk::Virtio { file: &data, serial: "SRC-DATA", sector: 512 }, 1);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    eprintln!("source boot: {took:?}");
    assert!(serial.contains("M I G R A T E D"), "source: no MIGRATED verdict:\n{serial}");
    assert_eq!(r.job(&job)["state"], "Finished");

    // The target: a larger used disk and a blank one of the data disk's size.
    let (big, small) = (t.path().join("target-big.img"), t.path().join("target-small.img"));
    std::fs::write(&big, vec![0xa5u8; 96 << 20]).unwrap();
    std::fs::File::create(&small).unwrap().set_len(32 << 20).unwrap();
    let target_vm = |log: &str, slow: bool| {
        let mut vm = Vm::direct(&t.path().join(log), &target_cmdline(&url, &job, &target_token, &pin));
        vm.serial_number("TGT-VM-1");
        if slow {
            vm.disk(Disk::SlowVirtio { file: &big, serial: "TGT-BIG", bps: 6 << 20 }, 0);
        } else {
            vm.disk(Disk::Virtio { file: &big, serial: "TGT-BIG", sector: 512 }, 0);
        }
        vm.disk(Disk::Virtio { file: &small, serial: "TGT-SMALL", sector: 512 }, 1);
        vm
    };
    let uefi_boot = |log: &str| {
        let mut vm = Vm::uefi(&t.path().join(log), &t.path().join(format!("{log}.vars")));
        vm.disk(Disk::Virtio { file: &big, serial: "TGT-BIG", sector: 512 }, 0);
        vm.disk(Disk::Virtio { file: &small, serial: "TGT-SMALL", sector: 512 }, 1);
        vm.run_until(Duration::from_secs(240), |log| log.contains("FERRY-BOOT-") || log.contains("Shell>"))
    };

    // 1. Interrupted: power is cut while the big disk is half written (its writes are slowed).
    let mut child = target_vm("target-cut.log", true).spawn();
    let file = std::fs::File::open(&big).unwrap();
    let store = r.store.to_str().unwrap().to_string();
    let target_log = || {
        let out = ferry(&["job", "log", "--store", &store, &job]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    // Cut when half the disk is written and the receiver has the target's screen so far (the
    // live image streams it every 5 s).
    let mut last_look = std::time::Instant::now() - Duration::from_secs(1);
    let half_written = wait_until(BOOT_TIMEOUT, || {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8; 16];
        file.read_exact_at(&mut b, 40 << 20).unwrap();
        // (The receiver's log is asked at most twice a second: QEMU needs the cores.)
        if b == [0xa5; 16] || last_look.elapsed() < Duration::from_millis(500) {
            return false;
        }
        last_look = std::time::Instant::now();
        target_log().contains("WILL BE OVERWRITTEN")
    });
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        half_written,
        "the target never wrote, or its screen never reached the receiver:\n{}\nreceiver's log: {}",
        std::fs::read_to_string(t.path().join("target-cut.log")).unwrap(),
        target_log()
    );
    assert_ne!(r.job(&job)["delivery"]["state"], "Finished", "the cut came too late to prove anything");
    // The machine died without a verdict, but the operator has its screen up to the cut.
    let logs = ferry(&["job", "log", "--store", &store, &job, "--json"]);
    let logs: serde_json::Value = serde_json::from_slice(&logs.stdout).unwrap();
    let target_screens: Vec<&str> = logs
        .as_array()
        .unwrap()
        .iter()
        .filter(|l| l["role"] == "target")
        .map(|l| l["text"].as_str().unwrap())
        .collect();
    assert_eq!(target_screens.len(), 1, "{logs:#}");
    assert!(target_screens[0].contains("WILL BE OVERWRITTEN"), "{}", target_screens[0]);
    assert!(!target_screens[0].contains("M I G R A T E D"), "{}", target_screens[0]);
    let serial = uefi_boot("cut-boot.log");
    assert!(!serial.contains("FERRY-BOOT-MARKER"), "a half-written disk booted:\n{serial}");

    // 2. Booted again, the target writes everything and verifies it.
    let (serial, took) = target_vm("target.log", false).run(BOOT_TIMEOUT);
    eprintln!("target boot: {took:?}");
    assert!(serial.contains("M I G R A T E D"), "target: no MIGRATED verdict:\n{serial}");
    assert!(serial.contains("WILL BE OVERWRITTEN"), "the screen must say which disks are overwritten:\n{serial}");
    let j = r.job(&job);
    let d = &j["delivery"];
    assert_eq!(d["state"], "Finished", "{j:#}");
    assert_eq!(d["machine"]["serial"], "TGT-VM-1");
    let by_source = |i: u64| d["disks"].as_array().unwrap().iter().find(|x| x["source_index"] == i).unwrap().clone();
    let boot_index = j["disks"].as_array().unwrap().iter().find(|x| x["identity"]["serial"] == "SRC-BOOT").unwrap()
        ["index"]
        .as_u64()
        .unwrap();
    assert_eq!(by_source(boot_index)["target"]["serial"], "TGT-BIG", "largest source to the only disk that fits");
    assert_eq!(by_source(1 - boot_index)["target"]["serial"], "TGT-SMALL");
    // It resumed: what the cut attempt had written was found on the disk and kept.
    assert!(by_source(boot_index)["reused_chunks"].as_u64().unwrap() > 0, "nothing was kept after the cut: {d:#}");
    assert!(serial.contains("written before the interruption were kept"), "{serial}");

    // What the target holds: the data disk bit for bit; the boot disk up to its size except the
    // protective MBR's size and the primary GPT header, and a GPT sgdisk finds no fault with.
    assert!(files_equal(&small, &data), "the same-size disk differs from the source");
    let (src, dst) = (std::fs::read(&boot).unwrap(), std::fs::read(&big).unwrap());
    assert_eq!(differing_sectors(&src, &dst[..src.len()]), [0, 1]);
    let v = std::process::Command::new("sgdisk").arg("-v").arg(&big).output().unwrap();
    assert!(String::from_utf8_lossy(&v.stdout).contains("No problems found"), "{}", String::from_utf8_lossy(&v.stdout));
    assert_eq!([b3sum(&boot), b3sum(&data)], source_sums, "a source disk changed");

    // Booted into ferry once more (the stick left in), it writes nothing and powers off instead
    // of rebooting into the stick again.
    let written = b3sum(&big);
    let again =
        target_cmdline(&url, &job, &target_token, &pin).replace("ferry.on_finish=poweroff", "ferry.on_finish=reboot");
    let mut vm = Vm::direct(&t.path().join("target-again.log"), &again);
    vm.serial_number("TGT-VM-1")
        .disk(Disk::Virtio { file: &big, serial: "TGT-BIG", sector: 512 }, 0)
        .disk(Disk::Virtio { file: &small, serial: "TGT-SMALL", sector: 512 }, 1);
    let (serial, _) = vm.run(BOOT_TIMEOUT);
    assert!(serial.contains("already written to this") && serial.contains("Powering off"), "{serial}");
    assert_eq!(b3sum(&big), written);

    // 3. The target starts the migrated system from its own disk.
    let serial = uefi_boot("migrated-boot.log");
    assert!(serial.contains(&format!("FERRY-BOOT-MARKER: {marker}")), "the migrated disk did not boot:\n{serial}");
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn target_role_refusals_on_screen_write_nothing() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 32, 31);
    let r = Receiver::start(&t.path().join("store"), false);
    let pin = r.pin().unwrap();
    let url = guest_url(r.port, true);
    // The job names the target, but the operator has not allowed wiping it yet.
    let (job, token, target_token) = r.create_instance_job("vm-refusals", &["--target-machine", "TGT-VM-2"]);
    let out = std::process::Command::new(FERRY)
        .args(r.send_args(&job, &token))
        .arg(&src)
        .env("FERRY_SYS_ROOT", t.path().join("no-dmi"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));

    let (plain, four_k) = (t.path().join("plain.img"), t.path().join("4k.img"));
    std::fs::write(&plain, vec![0x5au8; 48 << 20]).unwrap();
    std::fs::write(&four_k, vec![0x5au8; 48 << 20]).unwrap();
    let before = [b3sum(&plain), b3sum(&four_k)];
    let boot = |log: &str, disk: Disk| {
        let mut vm = Vm::direct(&t.path().join(log), &target_cmdline(&url, &job, &target_token, &pin));
        vm.serial_number("TGT-VM-2").disk(disk, 0);
        vm.run(BOOT_TIMEOUT).0
    };

    let serial = boot("no-wipe.log", Disk::Virtio { file: &plain, serial: "T-PLAIN", sector: 512 });
    assert!(serial.contains("F A I L E D") && serial.contains("[wipe_not_allowed]"), "{serial}");
    assert!(serial.contains("serial TGT-VM-2"), "the screen shows the identity to give the operator:\n{serial}");
    assert_eq!(r.job(&job)["delivery"]["error_code"], "wipe_not_allowed");

    let store = r.store.to_str().unwrap();
    let set = ferry(&["job", "target", "--store", store, &job, "--target-machine", "TGT-VM-2", "--allow-wipe"]);
    assert!(set.status.success(), "{}", String::from_utf8_lossy(&set.stderr));
    let serial = boot("4k.log", Disk::Virtio { file: &four_k, serial: "T-4K", sector: 4096 });
    assert!(serial.contains("[sector_size_mismatch]") && serial.contains("4096-byte sectors"), "{serial}");
    assert_eq!(r.job(&job)["delivery"]["error_code"], "sector_size_mismatch");
    assert_eq!([b3sum(&plain), b3sum(&four_k)], before, "a refusing target wrote to a disk");
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn used_blocks_source_with_ext4_root_and_ntfs_data_boots_on_its_target() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let marker = format!("ferry-used-blocks-{}", std::process::id());
    // The bootable disk (ESP + ext4 root), grown by an NTFS data partition made by mkfs.ntfs
    // over random bytes (free space that is not zeros) and holding one file.
    let boot = t.path().join("boot.img");
    bootable_disk(&boot, &marker, 64);
    std::fs::OpenOptions::new().write(true).open(&boot).unwrap().set_len(128 << 20).unwrap();
    sgdisk(&boot, &["-e", "-n3:0:0", "-t3:0700", "-c3:data"]);
    let p3 = &inspect(&boot, &[])["partition_table"]["partitions"][2];
    let (p3_start, p3_size) = (p3["start"].as_u64().unwrap(), p3["size"].as_u64().unwrap());
    let ntfs = t.path().join("ntfs.img");
    std::fs::write(&ntfs, pseudo_random(p3_size as usize, 33)).unwrap();
    run("mkfs.ntfs", &["-q", "-F", "-Q", s(&ntfs)]);
    let payload = t.path().join("payload.bin");
    std::fs::write(&payload, pseudo_random(3 << 20, 34)).unwrap();
    run("ntfscp", &["-q", s(&ntfs), s(&payload), "payload.bin"]);
    write_at(&boot, p3_start, &std::fs::read(&ntfs).unwrap());
    let source_sum = b3sum(&boot);

    let r = Receiver::start(&t.path().join("store"), false);
    let pin = r.pin().unwrap();
    let url = guest_url(r.port, true);
    let (job, token, target_token) =
        r.create_instance_job("vm-used-blocks", &["--target-machine", "TGT-VM-2", "--allow-wipe"]);
    let cmdline = format!("{} ferry.used_only=1", source_cmdline(&url, &job, &token, Some(&pin)));
    let mut vm = Vm::direct(&t.path().join("source.log"), &cmdline);
    vm.serial_number("SRC-VM-2").disk(Disk::Virtio { file: &boot, serial: "SRC-BOOT", sector: 512 }, 0);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    eprintln!("source boot (used blocks only): {took:?}");
    // The headline itself says this is no bit-for-bit copy.
    assert!(serial.contains("MIGRATED (USED BLOCKS ONLY)"), "source: no MIGRATED verdict:\n{serial}");
    assert!(serial.contains("used blocks only:"), "{serial}");
    let j = r.job(&job);
    let used = &j["disks"][0]["used_only"];
    let found: Vec<(&str, &str)> = used["partitions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["fs"].as_str().unwrap(), p["read"].as_str().unwrap()))
        .collect();
    assert_eq!(found, [("vfat", "used_blocks"), ("ext4", "used_blocks"), ("ntfs", "used_blocks")], "{used:#}");
    assert!(used["read_bytes"].as_u64().unwrap() < 64 << 20, "{used:#}");
    assert_eq!(b3sum(&boot), source_sum, "the source disk changed");

    // The target receives the zero-filled copy, checks it by reading it back, and boots it.
    let target = t.path().join("target.img");
    std::fs::write(&target, vec![0x5au8; 128 << 20]).unwrap();
    let mut vm = Vm::direct(&t.path().join("target.log"), &target_cmdline(&url, &job, &target_token, &pin));
    vm.serial_number("TGT-VM-2").disk(Disk::Virtio { file: &target, serial: "TGT-DISK", sector: 512 }, 0);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    eprintln!("target boot: {took:?}");
    assert!(serial.contains("M I G R A T E D"), "target: no MIGRATED verdict:\n{serial}");
    assert_eq!(r.job(&job)["delivery"]["state"], "Finished");
    assert_eq!(b3sum(&target), j["disks"][0]["blake3"].as_str().unwrap(), "the target is not the zero-filled copy");
    let data = t.path().join("target-p3.img");
    std::fs::write(&data, read_at(&target, p3_start, p3_size as usize)).unwrap();
    run("ntfsfix", &["-n", s(&data)]);
    let cat = std::process::Command::new("ntfscat").arg(&data).arg("payload.bin").output().unwrap();
    assert!(cat.status.success() && cat.stdout == std::fs::read(&payload).unwrap(), "the NTFS file differs");

    let mut vm = Vm::uefi(&t.path().join("migrated.log"), &t.path().join("migrated.vars"));
    vm.disk(Disk::Virtio { file: &target, serial: "TGT-DISK", sector: 512 }, 0);
    let serial = vm.run_until(Duration::from_secs(240), |log| log.contains("FERRY-BOOT-") || log.contains("Shell>"));
    assert!(serial.contains(&format!("FERRY-BOOT-MARKER: {marker}")), "the migrated disk did not boot:\n{serial}");
}
