//! The live image on every firmware as servers ship it: the same USB stick under legacy BIOS
//! (SeaBIOS), UEFI, and UEFI with Secure Boot enforced (OVMF with Microsoft's keys); PXE under
//! Secure Boot through the files ferry's own TFTP listener serves; UEFI HTTP Boot of the stick
//! image. Each boot migrates for real, and each firmware also runs the target role.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use support::*;

const BOOT_TIMEOUT: Duration = Duration::from_secs(420);

/// Boots a source from the stick under `fw` (it migrates its one disk), then a target from the
/// stick under the same firmware (it receives that disk); returns both serial logs.
fn stick_source_then_target(fw: Firmware, name: &str) -> (String, String) {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 32, 40 + fw as u64);
    let source_sum = b3sum(&src);
    let r = Receiver::start(&t.path().join("store"), false);
    let (pin, url) = (r.pin().unwrap(), guest_url(r.port, true));
    let target_machine = format!("TGT-{name}");
    let (job, token, target_token) =
        r.create_instance_job(name, &["--target-machine", &target_machine, "--allow-wipe"]);

    let stick = stick_with_toml(&t.path().join("source-stick.img"), &source_toml(&url, &pin, &job, &token));
    let mut vm = Vm::with_firmware(fw, &t.path().join("source.log"), &t.path().join("source.vars"));
    vm.serial_number(&format!("SRC-{name}")).user_nic("");
    vm.disk(Disk::UsbStick { file: &stick }, 0).disk(Disk::Virtio { file: &src, serial: "STICK-SRC", sector: 512 }, 1);
    let (source, took) = vm.run(BOOT_TIMEOUT);
    let source = readable(&source);
    eprintln!("{fw:?} stick, source: {took:?}");
    assert!(source.contains("M I G R A T E D"), "{fw:?} source: no MIGRATED verdict:\n{source}");
    assert!(source.contains("(not migrated)"), "the stick itself must be left out:\n{source}");
    let j = r.job(&job);
    assert_eq!(j["state"], "Finished", "{j:#}");
    assert_eq!(j["disks"].as_array().unwrap().len(), 1, "only the source disk, not the stick: {j:#}");
    assert_eq!(export_b3sum(&r, &job, 0, t.path()), source_sum);
    assert_eq!(b3sum(&src), source_sum, "the source disk changed");

    let blank = t.path().join("blank.img");
    std::fs::File::create(&blank).unwrap().set_len(32 << 20).unwrap();
    let stick = stick_with_toml(&t.path().join("target-stick.img"), &target_toml(&url, &pin, &job, &target_token));
    let mut vm = Vm::with_firmware(fw, &t.path().join("target.log"), &t.path().join("target.vars"));
    vm.serial_number(&target_machine).user_nic("");
    vm.disk(Disk::UsbStick { file: &stick }, 0)
        .disk(Disk::Virtio { file: &blank, serial: "STICK-TGT", sector: 512 }, 1);
    let (target, took) = vm.run(BOOT_TIMEOUT);
    let target = readable(&target);
    eprintln!("{fw:?} stick, target: {took:?}");
    assert!(target.contains("M I G R A T E D"), "{fw:?} target: no MIGRATED verdict:\n{target}");
    assert_eq!(r.job(&job)["delivery"]["state"], "Finished");
    assert_eq!(b3sum(&blank), source_sum, "the target's disk is not the source's, bit for bit");
    (source, target)
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn legacy_bios_boots_the_stick_as_source_and_as_target() {
    let (source, target) = stick_source_then_target(Firmware::Bios, "bios");
    for log in [&source, &target] {
        assert!(log.contains("Secure Boot: off (legacy BIOS boot)"), "{log}");
        assert!(!log.contains("EFI stub"), "a BIOS boot went through UEFI:\n{log}");
    }
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn uefi_boots_the_stick_as_source_and_as_target() {
    let (source, target) = stick_source_then_target(Firmware::Uefi, "uefi");
    for log in [&source, &target] {
        assert!(log.contains("Secure Boot: off (UEFI)"), "{log}");
    }
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn secure_boot_refuses_unsigned_code_and_boots_the_stick_as_source_and_as_target() {
    vm_ready();
    // Enforcement is real: the same stick with an unsigned loader in shim's place is refused.
    let t = tempfile::tempdir().unwrap();
    let stick = stick_with_toml(&t.path().join("unsigned.img"), "");
    replace_on_stick(&stick, &image_dir().join("snponly.efi"), "EFI/BOOT/BOOTX64.EFI");
    let log = t.path().join("unsigned.log");
    let mut vm = Vm::with_firmware(Firmware::SecureBoot, &log, &t.path().join("unsigned.vars"));
    vm.disk(Disk::UsbStick { file: &stick }, 0);
    let serial = readable(&vm.run_until(Duration::from_secs(120), |s| s.contains("Access Denied")));
    assert!(serial.contains("Access Denied"), "Secure Boot did not refuse an unsigned loader:\n{serial}");
    assert!(!serial.contains("ferry"), "{serial}");

    let (source, target) = stick_source_then_target(Firmware::SecureBoot, "secureboot");
    for log in [&source, &target] {
        // The kernel's own words, then ferry's.
        assert!(log.contains("secureboot: Secure boot enabled"), "{log}");
        assert!(log.contains("Secure Boot: on"), "{log}");
    }
}

/// Fetches `file` from a TFTP server on 127.0.0.1:`port` with tftp-hpa's client into `dest`.
fn tftp_get(port: u16, file: &str, dest: &Path) {
    std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
    let out = Command::new("tftp")
        .args(["-m", "binary", "127.0.0.1", &port.to_string(), "-c", "get", file])
        .arg(dest)
        .output()
        .unwrap();
    assert!(
        out.status.success() && dest.exists(),
        "tftp get {file}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn secure_boot_pxe_from_the_files_ferrys_tftp_serves_enrolls_and_migrates() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 32, 50);
    let store = t.path().join("store");
    let port = free_port();
    // A wave: the receiver hands its enrollment token to every network boot naming none.
    let mut r = Receiver::start_on(&store, false, port);
    let out = ferry(&["job", "enroll", "create", "--store", store.to_str().unwrap(), "--name", "sb-wave", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let enrollment: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let token = enrollment["token"].as_str().unwrap().to_string();
    r.kill();
    let tftp_port = free_port();
    let image = image_dir();
    let r = Receiver::start_with(
        &store,
        false,
        port,
        &[
            "--boot-dir",
            image.to_str().unwrap(),
            "--tftp-listen",
            &format!("127.0.0.1:{tftp_port}"),
            "--boot-enroll",
            &token,
            "--advertise",
            "10.0.2.2",
        ],
    );

    // Every file a Secure Boot PXE client asks for, fetched from ferry's TFTP by a client
    // nobody here wrote; the image's files arrive byte for byte.
    let root = t.path().join("tftp");
    for f in ["shimx64.efi", "grubx64.efi", "mmx64.efi", "vmlinuz", "initrd.img"] {
        tftp_get(tftp_port, f, &root.join(f));
        assert!(files_equal(&root.join(f), &image.join(f)), "{f} differs from the built image's");
    }
    tftp_get(tftp_port, "grub/grub.cfg", &root.join("grub/grub.cfg"));
    let menu = std::fs::read_to_string(root.join("grub/grub.cfg")).unwrap();
    let baked = format!("ferry.server=https://10.0.2.2:{port} ferry.pin={} ferry.enroll={token}", r.pin().unwrap());
    assert!(menu.contains(&baked), "{menu}");
    // QEMU's own TFTP serves that directory to the firmware (its user network answers TFTP for
    // 10.0.2.2 itself, so a guest cannot reach a host TFTP server).
    let log = t.path().join("pxe.log");
    let mut vm = Vm::with_firmware(Firmware::SecureBoot, &log, &t.path().join("pxe.vars"));
    vm.serial_number("SB-PXE-1");
    vm.arg("-netdev").arg(&format!("user,id=n0,tftp={},bootfile=shimx64.efi", root.display()));
    vm.arg("-device").arg("virtio-net-pci,netdev=n0,romfile=,bootindex=1");
    vm.disk(Disk::Virtio { file: &src, serial: "SB-PXE-SRC", sector: 512 }, 0);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    let serial = readable(&serial);
    eprintln!("Secure Boot PXE: {took:?}");
    assert!(serial.contains("secureboot: Secure boot enabled") && serial.contains("Secure Boot: on"), "{serial}");
    assert!(serial.contains("BOOTIF=01-52-54-00-12-34-56"), "GRUB passed no BOOTIF:\n{serial}");
    assert!(serial.contains("M I G R A T E D"), "no MIGRATED verdict:\n{serial}");
    let out = ferry(&["job", "enroll", "list", "--store", store.to_str().unwrap(), "--json"]);
    let list: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let job = list[0]["jobs"][0].as_str().unwrap_or_else(|| panic!("no enrolled job: {list}"));
    let j = r.job(job);
    assert_eq!((j["name"].as_str(), j["state"].as_str()), (Some("sb-wave-SB-PXE-1"), Some("Finished")), "{j:#}");
    assert_eq!(export_b3sum(&r, job, 0, t.path()), b3sum(&src));
}

#[test]
#[ignore = "boots QEMU (minutes under TCG); scripts/test runs these with --ignored"]
fn uefi_http_boot_of_the_stick_image_with_secure_boot_migrates() {
    vm_ready();
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src.img");
    gpt_disk(&src, 32, 60);
    let boot_port = free_port();
    let r = receiver_with_boot_files(&t.path().join("store"), boot_port);
    let (job, token) = r.create_job("vm-http-boot");
    // The firmware's boot entry: a URL, as a DHCP server would give it (virt-fw-vars writes
    // the same entry into the variable store).
    let url = format!("http://10.0.2.2:{boot_port}/boot/ferry-http.img?job={job}&token={token}");
    let vars = t.path().join("http.vars");
    let out = Command::new("virt-fw-vars")
        .args(["--input", "/usr/share/OVMF/OVMF_VARS_4M.ms.fd", "--output"])
        .arg(&vars)
        .args(["--set-boot-uri", &url])
        .output()
        .expect("virt-fw-vars (pip install virt-firmware; scripts/setup does)");
    assert!(out.status.success(), "virt-fw-vars: {}", String::from_utf8_lossy(&out.stderr));
    let log = t.path().join("http.log");
    let mut vm = Vm::secure_boot_with_vars(&log, &vars);
    vm.user_nic("");
    vm.disk(Disk::Virtio { file: &src, serial: "HTTP-SRC", sector: 512 }, 0);
    let (serial, took) = vm.run(BOOT_TIMEOUT);
    let serial = readable(&serial);
    eprintln!("UEFI HTTP Boot: {took:?}");
    assert!(serial.contains("Secure Boot: on"), "{serial}");
    // The firmware's RAM disk is invisible to Linux: no stick, everything from the kernel line.
    assert!(!serial.contains("boot medium:"), "{serial}");
    assert!(serial.contains("M I G R A T E D"), "no MIGRATED verdict:\n{serial}");
    assert_eq!(r.job(&job)["state"], "Finished");
    assert_eq!(export_b3sum(&r, &job, 0, t.path()), b3sum(&src));
}
