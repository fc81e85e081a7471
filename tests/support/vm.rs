//! Booting the real live image in QEMU (TCG: KVM guests do not run on these machines) with disks
//! made here, against a real receiver on the host's loopback (the guest reaches it as 10.0.2.2).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::cmd::run_ok;
use super::disks::esp_offset;
use super::receiver::{free_port, Receiver};

/// The directory `ferry image build` wrote (`FERRY_IMAGE_DIR`, default `out/image`).
pub fn image_dir() -> PathBuf {
    std::env::var_os("FERRY_IMAGE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("out/image"))
}

/// Checks that the image and QEMU are there; VM tests are run on purpose (`--ignored`), so a
/// missing piece is a failure that says what to do.
pub fn vm_ready() {
    let dir = image_dir();
    assert!(
        dir.join("vmlinuz").exists() && dir.join("initrd.img").exists(),
        "no live image in {}: run image-build/build.sh (scripts/test does)",
        dir.display()
    );
    let qemu = Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status();
    assert!(qemu.is_ok_and(|s| s.success()), "qemu-system-x86_64 is missing: apt-get install qemu-system-x86");
}

/// A disk attached to the VM.
#[derive(Clone, Copy)]
pub enum Disk<'a> {
    Virtio {
        file: &'a Path,
        serial: &'a str,
        sector: u32,
    },
    Nvme {
        file: &'a Path,
        serial: &'a str,
    },
    /// Behind an LSI 53C895A SCSI controller (a controller the image has no driver for).
    Lsi {
        file: &'a Path,
    },
    UsbStick {
        file: &'a Path,
    },
    /// A virtio disk whose writes QEMU throttles to `bps` bytes per second (a slow disk, so a
    /// test can interrupt a write half-way).
    SlowVirtio {
        file: &'a Path,
        serial: &'a str,
        bps: u64,
    },
    /// A virtio disk whose reads fail with EIO at one sector (QEMU's blkdebug error injection).
    FailingVirtio {
        file: &'a Path,
        config: &'a Path,
    },
}

/// Writes a blkdebug configuration that fails every read touching 512-byte sector `sector`.
pub fn blkdebug_config(path: &Path, sector: u64) {
    std::fs::write(
        path,
        format!("[inject-error]\nevent = \"read_aio\"\nerrno = \"5\"\nsector = \"{sector}\"\nonce = \"off\"\n"),
    )
    .unwrap();
}

pub struct Vm {
    pub args: Vec<String>,
    pub serial_log: PathBuf,
}

impl Vm {
    /// A direct kernel boot of the built image.
    pub fn direct(log: &Path, append: &str) -> Self {
        let dir = image_dir();
        let mut vm = Self::base(log);
        vm.args.extend(
            [
                "-kernel",
                &dir.join("vmlinuz").display().to_string(),
                "-initrd",
                &dir.join("initrd.img").display().to_string(),
                "-append",
                &format!("console=ttyS0 panic=-1 quiet {append}"),
            ]
            .map(String::from),
        );
        vm.args.extend(["-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,romfile="].map(String::from));
        vm
    }

    /// An empty machine, for PXE and USB boots that bring their own boot path.
    pub fn base(log: &Path) -> Self {
        let args = [
            "-accel",
            "tcg",
            // RDRAND: the kernel's RNG is ready at once, as on real servers (TLS needs it).
            "-cpu",
            "max",
            "-m",
            "1024",
            "-smp",
            "2",
            "-display",
            "none",
            "-monitor",
            "none",
            "-no-reboot",
            "-serial",
            &format!("file:{}", log.display()),
        ]
        .map(String::from)
        .to_vec();
        Self { args, serial_log: log.to_owned() }
    }

    /// A UEFI machine (OVMF, q35) with its own copy of the firmware variables in `vars`.
    pub fn uefi(log: &Path, vars: &Path) -> Self {
        let code = Path::new("/usr/share/OVMF/OVMF_CODE_4M.fd");
        assert!(code.exists(), "OVMF is missing: apt-get install ovmf");
        std::fs::copy("/usr/share/OVMF/OVMF_VARS_4M.fd", vars).unwrap();
        let mut vm = Self::base(log);
        vm.arg("-machine").arg("q35").arg("-nic").arg("none");
        vm.arg("-drive").arg(&format!("if=pflash,format=raw,unit=0,readonly=on,file={}", code.display()));
        vm.arg("-drive").arg(&format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        vm
    }

    /// Sets the machine's DMI (SMBIOS type 1) serial number.
    pub fn serial_number(&mut self, serial: &str) -> &mut Self {
        self.arg("-smbios").arg(&format!("type=1,serial={serial}"))
    }

    pub fn arg(&mut self, a: &str) -> &mut Self {
        self.args.push(a.to_string());
        self
    }

    pub fn disk(&mut self, d: Disk<'_>, n: usize) -> &mut Self {
        let id = format!("d{n}");
        let drive = |file: &Path| format!("file={},format=raw,if=none,id={id}", file.display());
        match d {
            Disk::Virtio { file, serial, sector } => {
                self.args.extend(["-drive".into(), drive(file)]);
                self.args.extend([
                    "-device".into(),
                    format!("virtio-blk-pci,drive={id},serial={serial},logical_block_size={sector},physical_block_size={sector}"),
                ]);
            }
            Disk::SlowVirtio { file, serial, bps } => {
                self.args.extend(["-drive".into(), format!("{},throttling.bps-write={bps}", drive(file))]);
                self.args.extend(["-device".into(), format!("virtio-blk-pci,drive={id},serial={serial}")]);
            }
            Disk::Nvme { file, serial } => {
                self.args.extend(["-drive".into(), drive(file)]);
                self.args.extend(["-device".into(), format!("nvme,drive={id},serial={serial}")]);
            }
            Disk::Lsi { file } => {
                self.args.extend(["-drive".into(), drive(file)]);
                self.args.extend(["-device".into(), "lsi53c895a,id=scsi0".into()]);
                self.args.extend(["-device".into(), format!("scsi-hd,drive={id},bus=scsi0.0")]);
            }
            Disk::FailingVirtio { file, config } => {
                self.args.extend([
                    "-drive".into(),
                    format!(
                        "if=none,id={id},format=raw,file.driver=blkdebug,file.config={},file.image.driver=file,file.image.filename={}",
                        config.display(),
                        file.display()
                    ),
                ]);
                self.args.extend(["-device".into(), format!("virtio-blk-pci,drive={id},serial=EIO")]);
            }
            Disk::UsbStick { file } => {
                self.args.extend(["-drive".into(), drive(file)]);
                self.args.extend(["-device".into(), "qemu-xhci,id=xhci".into()]);
                self.args.extend(["-device".into(), format!("usb-storage,bus=xhci.0,drive={id},bootindex=1")]);
            }
        }
        self
    }

    /// Runs QEMU until the guest powers off or reboots (QEMU exits) or `timeout` passes; returns
    /// the serial log and how long it took.
    pub fn run(&self, timeout: Duration) -> (String, Duration) {
        let started = Instant::now();
        let mut child = Command::new("qemu-system-x86_64")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let mut timed_out = false;
        loop {
            if child.try_wait().unwrap().is_some() {
                break;
            }
            if started.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                timed_out = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let log = self.serial_text();
        // A kernel panic with panic=-1 and -no-reboot also ends QEMU with status 0: the log, not
        // the exit code, says what happened.
        assert!(!log.contains("Kernel panic"), "the guest kernel panicked:\n{log}");
        assert!(!timed_out, "the VM did not finish within {timeout:?}; serial log:\n{log}");
        (log, started.elapsed())
    }
}

impl Vm {
    /// The serial log so far. Firmware and GRUB write bytes that are not UTF-8 (CP437 box
    /// drawing): read lossily, or a whole log would read as nothing.
    pub fn serial_text(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.serial_log).unwrap_or_default()).into_owned()
    }

    /// Starts QEMU and returns the running process (for tests that stop it themselves).
    pub fn spawn(&self) -> std::process::Child {
        Command::new("qemu-system-x86_64")
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts")
    }

    /// Runs QEMU until the guest ends, `stop` says so of the serial log, or `limit` passes;
    /// returns the serial log: for a boot that is expected to go nowhere.
    pub fn run_until(&self, limit: Duration, stop: impl Fn(&str) -> bool) -> String {
        let mut child = self.spawn();
        let started = Instant::now();
        while started.elapsed() < limit && child.try_wait().unwrap().is_none() {
            if stop(&self.serial_text()) {
                break;
            }
            std::thread::sleep(Duration::from_millis(500));
        }
        let _ = child.kill();
        let _ = child.wait();
        self.serial_text()
    }
}

/// A bootable source disk (GPT, ESP with a UKI of the Debian kernel, ext4 root) whose tiny init
/// prints `FERRY-BOOT-MARKER: <marker>` read from the root filesystem, then powers off.
pub fn bootable_disk(path: &Path, marker: &str, mib: u64) {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/make-bootable-disk");
    run_ok(Command::new(script).arg(path).arg(marker).arg(mib.to_string()));
}

/// A receiver on `store` that also serves the built image's boot files over HTTP on
/// 127.0.0.1:`boot_port`, and tells guests it is at 10.0.2.2.
pub fn receiver_with_boot_files(store: &Path, boot_port: u16) -> Receiver {
    Receiver::start_with(
        store,
        false,
        free_port(),
        &[
            "--boot-dir",
            image_dir().to_str().unwrap(),
            "--boot-listen",
            &format!("127.0.0.1:{boot_port}"),
            "--advertise",
            "10.0.2.2",
        ],
    )
}

/// Kernel command line keys for a target that receives job `job`.
pub fn target_cmdline(url: &str, job: &str, target_token: &str, pin: &str) -> String {
    format!(
        "ferry.role=target ferry.server={url} ferry.job={job} ferry.token={target_token} ferry.pin={pin} ferry.on_finish=poweroff ferry.countdown=0"
    )
}

/// The guest's view of a receiver on host port `port`.
pub fn guest_url(port: u16, https: bool) -> String {
    format!("{}://10.0.2.2:{port}", if https { "https" } else { "http" })
}

/// Kernel command line keys for a source migration.
pub fn source_cmdline(url: &str, job: &str, token: &str, pin: Option<&str>) -> String {
    let mut s =
        format!("ferry.server={url} ferry.job={job} ferry.token={token} ferry.on_finish=poweroff ferry.countdown=0");
    match pin {
        Some(p) => s += &format!(" ferry.pin={p}"),
        None => s += " ferry.plain_http=1",
    }
    s
}

/// The firmware a VM boots with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Firmware {
    /// QEMU's default, SeaBIOS: legacy BIOS.
    Bios,
    /// OVMF without Secure Boot.
    Uefi,
    /// OVMF with Secure Boot enforced and Microsoft's keys enrolled (as on most servers).
    SecureBoot,
}

const OVMF_SECBOOT_CODE: &str = "/usr/share/OVMF/OVMF_CODE_4M.secboot.fd";
const OVMF_MS_VARS: &str = "/usr/share/OVMF/OVMF_VARS_4M.ms.fd";

impl Vm {
    /// A machine with `fw` and its own copy of the firmware variables in `vars` (UEFI), no
    /// network card unless the test adds one.
    pub fn with_firmware(fw: Firmware, log: &Path, vars: &Path) -> Self {
        match fw {
            Firmware::Bios => {
                let mut vm = Self::base(log);
                vm.arg("-nic").arg("none");
                vm
            }
            Firmware::Uefi => Self::uefi(log, vars),
            Firmware::SecureBoot => {
                assert!(
                    Path::new(OVMF_SECBOOT_CODE).exists(),
                    "OVMF with Secure Boot is missing: apt-get install ovmf"
                );
                std::fs::copy(OVMF_MS_VARS, vars).unwrap();
                Self::secure_boot_with_vars(log, vars)
            }
        }
    }

    /// OVMF with Secure Boot enforced, using `vars` as they are (e.g. prepared by virt-fw-vars).
    pub fn secure_boot_with_vars(log: &Path, vars: &Path) -> Self {
        let mut vm = Self::base(log);
        // The Secure Boot build keeps its variables in SMM-protected flash.
        vm.arg("-machine").arg("q35,smm=on").arg("-global").arg("driver=cfi.pflash01,property=secure,value=on");
        vm.arg("-nic").arg("none");
        vm.arg("-drive").arg(&format!("if=pflash,format=raw,unit=0,readonly=on,file={OVMF_SECBOOT_CODE}"));
        vm.arg("-drive").arg(&format!("if=pflash,format=raw,unit=1,file={}", vars.display()));
        vm
    }

    /// A user-mode network card without QEMU's iPXE ROM (so firmware uses its own network stack).
    pub fn user_nic(&mut self, netdev_options: &str) -> &mut Self {
        let opts = if netdev_options.is_empty() { String::new() } else { format!(",{netdev_options}") };
        self.arg("-netdev").arg(&format!("user,id=n0{opts}"));
        self.arg("-device").arg("virtio-net-pci,netdev=n0,romfile=,bootindex=2")
    }
}

/// A copy of the built stick at `dest` whose `ferry.toml` the technician has edited to `toml`
/// (with mtools, as on any computer).
pub fn stick_with_toml(dest: &Path, toml: &str) -> PathBuf {
    let built = image_dir().join("ferry-usb.img");
    assert!(built.exists(), "no {}: build the image with the USB stick", built.display());
    std::fs::copy(&built, dest).unwrap();
    let file = dest.with_extension("toml");
    std::fs::write(&file, toml).unwrap();
    replace_on_stick(dest, &file, "ferry.toml");
    dest.to_path_buf()
}

/// Replaces a file on the stick's FAT partition.
pub fn replace_on_stick(stick: &Path, file: &Path, at: &str) {
    let offset = esp_offset(stick);
    run_ok(
        Command::new("mcopy")
            .env("MTOOLS_SKIP_CHECK", "1")
            .args(["-o", "-i", &format!("{}@@{offset}", stick.display())])
            .arg(file)
            .arg(format!("::{at}")),
    );
}

/// ferry.toml for a source.
pub fn source_toml(url: &str, pin: &str, job: &str, token: &str) -> String {
    format!(
        "server = \"{url}\"\npin = \"{pin}\"\njob = \"{job}\"\ntoken = \"{token}\"\non_finish = \"poweroff\"\ncountdown = 0\n"
    )
}

/// ferry.toml for a target receiving `job`.
pub fn target_toml(url: &str, pin: &str, job: &str, target_token: &str) -> String {
    format!("role = \"target\"\n{}", source_toml(url, pin, job, target_token))
}

/// A serial log as text to read: firmware and GRUB draw their screens with ANSI escape
/// sequences, which would garble a failure message.
pub fn readable(serial: &str) -> String {
    let mut out = String::with_capacity(serial.len());
    let mut chars = serial.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                // Parameters, then one final letter.
                for p in chars.by_ref() {
                    if p.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
            continue;
        }
        if c == '\r' || (c.is_control() && c != '\n' && c != '\t') {
            continue;
        }
        out.push(c);
    }
    out
}
