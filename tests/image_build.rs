//! The built live image, checked with tools nobody here wrote: building it again from the same
//! inputs gives the same bytes (every boot file, the stick image, its block map); the stick
//! writes with `bmaptool copy` (which checks every block against the map) and passes `sgdisk -v`
//! and `fsck.vfat -n`. Run by scripts/test after image-build/build.sh.

mod support;

use std::path::Path;
use std::process::Command;

use support::*;

#[test]
#[ignore = "builds the live image (root, the apt cache); scripts/test runs it after image-build/build.sh"]
fn the_image_rebuilds_byte_for_byte_and_the_stick_writes_and_checks_clean() {
    let built = image_dir();
    assert!(built.join("image.json").exists(), "no image in {}: run image-build/build.sh", built.display());
    let init = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/x86_64-unknown-linux-gnu/release/ferry");
    let t = tempfile::tempdir().unwrap();
    let again = t.path().join("again");
    // The same static ferry, kernel and packages (from the cache), the same compression level.
    run_ok(Command::new(FERRY).args(["image", "build", "--init"]).arg(&init).arg("--out").arg(&again));
    for f in [
        "vmlinuz",
        "initrd.img",
        "boot.ipxe",
        "shimx64.efi",
        "grubx64.efi",
        "mmx64.efi",
        "grub/grub.cfg",
        "undionly.kpxe",
        "snponly.efi",
        "ferry-usb.img",
        "ferry-usb.img.bmap",
        "image.json",
    ] {
        assert!(files_equal(&again.join(f), &built.join(f)), "{f} differs between two builds of the same inputs");
    }

    // Written as a technician writes it; bmaptool verifies each mapped block's checksum.
    let stick = t.path().join("stick.img");
    std::fs::File::create(&stick)
        .unwrap()
        .set_len(std::fs::metadata(built.join("ferry-usb.img")).unwrap().len())
        .unwrap();
    run_ok(Command::new("bmaptool").arg("copy").arg(built.join("ferry-usb.img")).arg(&stick));
    assert!(files_equal(&stick, &built.join("ferry-usb.img")));
    let v = run_ok(Command::new("sgdisk").arg("-v").arg(&stick));
    assert!(v.contains("No problems found"), "{v}");
    let esp = t.path().join("esp.fat");
    let offset = esp_offset(&stick);
    let info = run_ok(Command::new("sgdisk").arg("-i").arg("1").arg(&stick));
    let sectors: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("Partition size: "))
        .and_then(|s| s.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no partition size in {info}"));
    run_ok(
        Command::new("dd")
            .arg(format!("if={}", stick.display()))
            .arg(format!("of={}", esp.display()))
            .args(["bs=512", "status=none"])
            .arg(format!("skip={}", offset / 512))
            .arg(format!("count={sectors}")),
    );
    run_ok(Command::new("fsck.vfat").arg("-n").arg(&esp));
    // The files the firmware and GRUB look for are where they look.
    let listing =
        run_ok(Command::new("mdir").env("MTOOLS_SKIP_CHECK", "1").args(["-/", "-b", "-i"]).arg(&esp).arg("::/"));
    for f in [
        "EFI/BOOT/BOOTX64.EFI",
        "EFI/BOOT/grubx64.efi",
        "EFI/BOOT/mmx64.efi",
        "EFI/debian/grub.cfg",
        "ferry/vmlinuz",
        "ferry/initrd.img",
        "ferry.toml",
    ] {
        assert!(listing.lines().any(|l| l.trim_end().ends_with(f)), "no {f} on the stick:\n{listing}");
    }
}
