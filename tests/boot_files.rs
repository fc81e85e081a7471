//! The receiver's boot listeners against clients nobody here wrote: TFTP (tftp-hpa, curl) and
//! HTTP (curl), on a boot directory made here: files compared with `cmp`, the generated GRUB menu
//! read back, and the UEFI HTTP Boot image's FAT checked with mtools and fsck.vfat.

mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use support::*;

/// What a built image's `grub.cfg` starts with (ferry's `boot::grub::FIRST_LINE`).
const MENU_FIRST_LINE: &str = "# ferry live image: GRUB menu";
const MENU_LEN: usize = 4096;

struct BootDir {
    _t: tempfile::TempDir,
    dir: PathBuf,
    /// Where the stick's menu is inside ferry-usb.img.
    menu_at: u64,
}

/// A boot directory shaped as `ferry image build` makes it: random stand-ins for the kernel,
/// initramfs and EFI binaries (what is served, not what boots, is tested here), and a real GPT
/// stick image whose FAT holds a 4 KiB menu, with `image.json` saying where.
fn boot_dir() -> BootDir {
    let t = tempfile::tempdir().unwrap();
    let dir = t.path().join("image");
    std::fs::create_dir_all(&dir).unwrap();
    for (i, (name, size)) in [
        ("vmlinuz", 3 << 20),
        // Over 65535 blocks of 512 bytes: TFTP block numbers roll over.
        ("initrd.img", (34 << 20) + 123),
        ("shimx64.efi", 1_048_504),
        ("grubx64.efi", 900_000),
        ("mmx64.efi", 5000),
        ("undionly.kpxe", 74_213),
        ("snponly.efi", 1024),
    ]
    .iter()
    .enumerate()
    {
        random_image(&dir.join(name), *size, 100 + i as u64);
    }
    std::fs::write(dir.join("boot.ipxe"), "#!ipxe\nkernel vmlinuz\n").unwrap();
    std::fs::write(dir.join("secret.txt"), "not a boot file").unwrap();

    // The stick: FAT32 with EFI/debian/grub.cfg, at 1 MiB in a GPT disk.
    let fat = t.path().join("esp.fat");
    std::fs::File::create(&fat).unwrap().set_len(40 << 20).unwrap();
    run_ok(Command::new("mkfs.vfat").args(["-F", "32", "-n", "FERRY"]).arg(&fat));
    let mut menu = format!("{MENU_FIRST_LINE}\nset timeout=0\n").into_bytes();
    menu.resize(MENU_LEN, b'#');
    menu[MENU_LEN - 1] = b'\n';
    let cfg = t.path().join("grub.cfg");
    std::fs::write(&cfg, &menu).unwrap();
    run_ok(Command::new("mmd").env("MTOOLS_SKIP_CHECK", "1").args(["-i"]).arg(&fat).args(["::/EFI", "::/EFI/debian"]));
    run_ok(
        Command::new("mcopy").env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&fat).arg(&cfg).arg("::/EFI/debian/grub.cfg"),
    );
    let usb = dir.join("ferry-usb.img");
    std::fs::File::create(&usb).unwrap().set_len(42 << 20).unwrap();
    run_ok(Command::new("sgdisk").args(["-n1:2048:+40M", "-t1:ef00", "-c1:ferry-boot"]).arg(&usb));
    write_at(&usb, 1 << 20, &std::fs::read(&fat).unwrap());
    let bytes = std::fs::read(&usb).unwrap();
    let menu_at = bytes.windows(MENU_FIRST_LINE.len()).position(|w| w == MENU_FIRST_LINE.as_bytes()).unwrap() as u64;
    let info = serde_json::json!({
        "ferry_version": "test",
        "kernel_version": "test",
        "packages": [],
        "usb_grub_cfg": { "offset": menu_at, "len": MENU_LEN },
    });
    std::fs::write(dir.join("image.json"), serde_json::to_vec_pretty(&info).unwrap()).unwrap();
    BootDir { _t: t, dir, menu_at }
}

struct Listeners {
    r: Receiver,
    http: u16,
    tftp: u16,
}

fn serve(b: &BootDir, store: &Path) -> Listeners {
    let (http, tftp) = (free_port(), free_port());
    let r = Receiver::start_with(
        store,
        false,
        free_port(),
        &[
            "--boot-dir",
            b.dir.to_str().unwrap(),
            "--boot-listen",
            &format!("127.0.0.1:{http}"),
            "--tftp-listen",
            &format!("127.0.0.1:{tftp}"),
            "--advertise",
            "10.0.2.2",
        ],
    );
    Listeners { r, http, tftp }
}

/// tftp-hpa's client; returns what it printed (it reports TFTP errors on its output).
fn tftp(port: u16, mode: &str, cmd: &[&str]) -> String {
    let out = Command::new("tftp")
        .args(["-m", mode, "127.0.0.1", &port.to_string(), "-c"])
        .args(cmd)
        .output()
        .expect("tftp-hpa (scripts/setup installs it)");
    format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr))
}

#[test]
fn tftp_serves_the_boot_files_and_nothing_else() {
    let b = boot_dir();
    let t = tempfile::tempdir().unwrap();
    let l = serve(&b, &t.path().join("store"));
    for f in ["vmlinuz", "shimx64.efi", "grubx64.efi", "mmx64.efi", "undionly.kpxe", "snponly.efi", "boot.ipxe"] {
        let got = t.path().join(f);
        let said = tftp(l.tftp, "binary", &["get", f, got.to_str().unwrap()]);
        assert!(files_equal(&got, &b.dir.join(f)), "{f} over TFTP differs: {said}");
    }
    // 512-byte blocks (tftp-hpa negotiates nothing): 69,000 blocks, so the block number rolls over.
    let got = t.path().join("initrd-512");
    tftp(l.tftp, "binary", &["get", "initrd.img", got.to_str().unwrap()]);
    assert!(files_equal(&got, &b.dir.join("initrd.img")), "the initrd over 512-byte blocks differs");
    // curl negotiates blksize and tsize (RFC 2348, 2349), as firmware does.
    let got = t.path().join("initrd-1468");
    let out = Command::new("curl")
        .args(["-sS", "--tftp-blksize", "1468", "-o"])
        .arg(&got)
        .arg(format!("tftp://127.0.0.1:{}/initrd.img", l.tftp))
        .output()
        .unwrap();
    assert!(out.status.success(), "curl: {}", String::from_utf8_lossy(&out.stderr));
    assert!(files_equal(&got, &b.dir.join("initrd.img")), "the initrd over 1468-byte blocks differs");

    // The network GRUB's menu is the receiver's own, with its URL and pin.
    let menu = t.path().join("grub.cfg");
    tftp(l.tftp, "binary", &["get", "grub/grub.cfg", menu.to_str().unwrap()]);
    let text = std::fs::read_to_string(&menu).unwrap();
    let baked = format!("ferry.server=https://10.0.2.2:{} ferry.pin={}", l.r.port, l.r.pin().unwrap());
    assert!(text.contains(&format!("ferry.role=source {baked} $bootif")), "{text}");
    assert!(text.contains("menuentry \"Receive a migration (target)"), "{text}");

    // Refusals, each with the TFTP error code a client shows.
    let nothing = t.path().join("nothing");
    for (file, code) in [
        ("no-such-file", "Error code 1"),
        ("secret.txt", "Error code 1"),
        ("image.json", "Error code 1"),
        ("../store/admin.token", "Error code 2"),
    ] {
        let said = tftp(l.tftp, "binary", &["get", file, nothing.to_str().unwrap()]);
        assert!(said.contains(code), "{file}: {said}");
    }
    let said = tftp(l.tftp, "ascii", &["get", "boot.ipxe", nothing.to_str().unwrap()]);
    assert!(said.contains("Error code 4"), "netascii: {said}");
    let said = tftp(l.tftp, "binary", &["put", b.dir.join("boot.ipxe").to_str().unwrap(), "uploaded"]);
    assert!(said.contains("Error code 2"), "a write: {said}");
    assert!(!b.dir.join("uploaded").exists());
}

fn curl(args: &[&str]) -> Output {
    Command::new("curl").args(["-sS"]).args(args).output().unwrap()
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

#[test]
fn http_boot_files_stream_with_ranges_and_the_http_boot_image_carries_the_configuration() {
    let b = boot_dir();
    let t = tempfile::tempdir().unwrap();
    let l = serve(&b, &t.path().join("store"));
    let base = format!("http://127.0.0.1:{}/boot", l.http);

    let got = t.path().join("vmlinuz");
    assert!(curl(&["-f", "-o", got.to_str().unwrap(), &format!("{base}/vmlinuz")]).status.success());
    assert!(files_equal(&got, &b.dir.join("vmlinuz")));
    let head = String::from_utf8(curl(&["-f", "-I", &format!("{base}/initrd.img")]).stdout).unwrap();
    assert_eq!(header(&head, "content-length"), Some(((34u64 << 20) + 123).to_string().as_str()), "{head}");
    assert_eq!(header(&head, "accept-ranges"), Some("bytes"), "{head}");
    // One range: 206 and exactly those bytes.
    let part = curl(&["-f", "-D", "-", "-r", "1000-1999", &format!("{base}/vmlinuz")]).stdout;
    let split = part.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 4;
    let head = String::from_utf8_lossy(&part[..split]);
    assert!(head.starts_with("HTTP/1.1 206"), "{head}");
    assert_eq!(header(&head, "content-range"), Some("bytes 1000-1999/3145728"), "{head}");
    assert_eq!(&part[split..], &std::fs::read(b.dir.join("vmlinuz")).unwrap()[1000..2000]);
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", "-r", "5000000-", &format!("{base}/vmlinuz")]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "416");
    // Only boot files, nothing else of the directory or the store.
    for path in ["secret.txt", "image.json", "../store/admin.token", "%2e%2e/store/admin.token"] {
        let out = curl(&["--path-as-is", "-o", "/dev/null", "-w", "%{http_code}", &format!("{base}/{path}")]);
        assert_eq!(String::from_utf8_lossy(&out.stdout), "404", "{path}");
    }
    let menu = String::from_utf8(curl(&["-f", &format!("{base}/grub/grub.cfg")]).stdout).unwrap();
    assert!(menu.contains(&format!("ferry.pin={}", l.r.pin().unwrap())), "{menu}");

    // UEFI HTTP Boot: the stick image with its menu replaced, everything else unchanged.
    let (job, token) = l.r.create_job("http-boot");
    let served = t.path().join("http.img");
    let url = format!("{base}/ferry-http.img?job={job}&token={token}&role=target");
    let head = String::from_utf8(curl(&["-f", "-I", &url]).stdout).unwrap();
    assert_eq!(header(&head, "content-type"), Some("application/vnd.efi-img"), "{head}");
    assert!(curl(&["-f", "-o", served.to_str().unwrap(), &url]).status.success());
    let stick = b.dir.join("ferry-usb.img");
    let (at, len) = (b.menu_at, MENU_LEN as u64);
    let same = |skip: u64, n: Option<u64>| {
        let mut c = Command::new("cmp");
        c.arg("-s").arg("-i").arg(skip.to_string());
        if let Some(n) = n {
            c.arg("-n").arg(n.to_string());
        }
        c.arg(&stick).arg(&served).status().unwrap().success()
    };
    assert!(same(0, Some(at)) && same(at + len, None), "bytes outside the menu changed");
    assert!(!same(at, Some(len)), "the menu was not replaced");
    let fat = t.path().join("served.fat");
    run_ok(Command::new("dd").arg(format!("if={}", served.display())).arg(format!("of={}", fat.display())).args([
        "bs=1M",
        "skip=1",
        "count=40",
        "status=none",
    ]));
    let fsck = Command::new("fsck.vfat").arg("-n").arg(&fat).output().unwrap();
    assert!(fsck.status.success(), "fsck.vfat: {}", String::from_utf8_lossy(&fsck.stdout));
    let text =
        run_ok(Command::new("mtype").env("MTOOLS_SKIP_CHECK", "1").arg("-i").arg(&fat).arg("::/EFI/debian/grub.cfg"));
    let words = format!(
        "ferry.role=target ferry.server=https://10.0.2.2:{} ferry.pin={} ferry.job={job} ferry.token={token}",
        l.r.port,
        l.r.pin().unwrap()
    );
    assert!(text.starts_with(MENU_FIRST_LINE) && text.contains(&words), "{text}");
    assert_eq!(text.len(), MENU_LEN);

    // A stick image changed behind the receiver's back is not served with a piece overwritten.
    write_at(&stick, at, b"something else");
    let out = curl(&["-o", "/dev/null", "-w", "%{http_code}", &url]);
    assert_eq!(String::from_utf8_lossy(&out.stdout), "500");
}

/// The dnsmasq lines docs/pxe-and-usb.md gives operators, checked by dnsmasq itself.
#[test]
fn the_documented_dnsmasq_lines_parse() {
    let doc = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/pxe-and-usb.md")).unwrap();
    let blocks: Vec<&str> = doc.split("```").skip(1).step_by(2).filter(|b| b.contains("dhcp-")).collect();
    assert!(blocks.len() >= 2, "the dnsmasq blocks are gone from the docs");
    let t = tempfile::tempdir().unwrap();
    for (i, block) in blocks.iter().enumerate() {
        let conf = t.path().join(format!("{i}.conf"));
        // A snippet meant to be added to the proxy file gets that file's first lines.
        let body =
            if block.contains("port=0") { block.to_string() } else { format!("port=0\ninterface=eth0\n{block}") };
        std::fs::write(&conf, body).unwrap();
        let out = Command::new("dnsmasq").arg("--test").arg(format!("--conf-file={}", conf.display())).output();
        let out = out.expect("dnsmasq (package dnsmasq-base; scripts/setup installs it)");
        assert!(out.status.success(), "dnsmasq refuses block {i}:\n{block}\n{}", String::from_utf8_lossy(&out.stderr));
    }
}
