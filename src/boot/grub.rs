//! GRUB menus for the live image. One text serves the USB stick under UEFI (Microsoft-signed
//! shim, then Debian-signed GRUB, Secure Boot on or off) and under legacy BIOS (GRUB i386-pc);
//! another the network GRUB that shim loads over TFTP; a third the stick image served for UEFI
//! HTTP Boot. Under Secure Boot GRUB has only its built-in modules, so the menus use nothing
//! else: `serial`, `terminal_*`, `regexp`, `if`, `menuentry`, `linux`, `initrd`.

use anyhow::{ensure, Result};

/// Every menu written to the stick is exactly this long (padded with comment lines), so that the
/// receiver can replace it inside the stick image, in place, for UEFI HTTP Boot.
pub const STICK_CFG_LEN: usize = 4096;
/// The first line of every ferry menu: how the build finds the stick's menu inside the FAT.
pub const FIRST_LINE: &str = "# ferry live image: GRUB menu";

/// A boot entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub title: String,
    /// The kernel command line after the kernel.
    pub args: String,
}

/// A menu: where kernel and initramfs are (GRUB paths on GRUB's root device: the stick's FAT
/// partition, or the TFTP server) and what to boot.
#[derive(Debug, Clone)]
pub struct Menu<'a> {
    pub kernel: &'a str,
    pub initrd: &'a str,
    pub entries: Vec<Entry>,
    /// Seconds before the first entry boots (0: at once).
    pub timeout: u32,
    /// A PXE boot: pass the network card GRUB booted from to the kernel as `BOOTIF=`, as
    /// PXELINUX does, so that the live image takes its lease on that card.
    pub netboot: bool,
    /// Lines of explanation for whoever opens the file.
    pub comment: &'a str,
}

/// GRUB's `$net_default_mac` (`52:54:00:12:34:56`) as PXELINUX's `BOOTIF=01-52-54-00-12-34-56`.
const BOOTIF_FROM_MAC: &str = "\
set bootif=\"\"
if regexp --set=1:m1 --set=2:m2 --set=3:m3 --set=4:m4 --set=5:m5 --set=6:m6 \
'^([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f]):([0-9a-f][0-9a-f])$' \
\"$net_default_mac\"; then
  set bootif=\"BOOTIF=01-$m1-$m2-$m3-$m4-$m5-$m6\"
fi
";

/// The menu's text.
pub fn render(m: &Menu) -> String {
    let mut s = format!("{FIRST_LINE}\n");
    for l in m.comment.lines() {
        s += &format!("# {l}\n").replace("# \n", "#\n");
    }
    // The serial console first: servers are often reached only through it (and tests read it).
    s += "serial --unit=0 --speed=115200\n\
          terminal_input console serial\n\
          terminal_output console serial\n";
    s += &format!("set timeout={}\n", m.timeout);
    if m.netboot {
        s += BOOTIF_FROM_MAC;
    }
    for e in &m.entries {
        let bootif = if m.netboot { " $bootif" } else { "" };
        s += &format!(
            "menuentry \"{}\" {{\n  linux {} {}{bootif}\n  initrd {}\n}}\n",
            e.title.replace(['"', '\\', '$'], ""),
            m.kernel,
            e.args,
            m.initrd
        );
    }
    s
}

/// The stick's menu: one entry booting the live image at once with `args` after the kernel;
/// padded to its fixed size, [`STICK_CFG_LEN`].
pub fn stick_menu(args: &str, comment: &str) -> Result<Vec<u8>> {
    let menu = Menu {
        kernel: &format!("/{}", super::files::STICK_KERNEL),
        initrd: &format!("/{}", super::files::STICK_INITRD),
        entries: vec![Entry { title: "ferry live image".into(), args: args.to_string() }],
        timeout: 0,
        netboot: false,
        comment,
    };
    padded(&render(&menu), STICK_CFG_LEN)
}

/// The menu padded with comment lines to exactly `len` bytes.
pub fn padded(text: &str, len: usize) -> Result<Vec<u8>> {
    ensure!(text.len() < len, "the GRUB menu is {} bytes, over the {len} bytes reserved for it", text.len());
    let mut b = text.as_bytes().to_vec();
    if !text.ends_with('\n') {
        b.push(b'\n');
    }
    const NOTE: &[u8] = b"# (padding: this file keeps its size, so it can be replaced in place)\n";
    if b.len() + NOTE.len() <= len {
        b.extend_from_slice(NOTE);
    }
    while b.len() < len {
        let room = (len - b.len()).min(72);
        if room == 1 {
            b.push(b'\n');
        } else {
            b.push(b'#');
            b.extend(std::iter::repeat_n(b'-', room - 2));
            b.push(b'\n');
        }
    }
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn menu(netboot: bool) -> Menu<'static> {
        Menu {
            kernel: "/ferry/vmlinuz",
            initrd: "/ferry/initrd.img",
            entries: vec![
                Entry { title: "ferry \"live\" $image".into(), args: "console=ttyS0 ip=dhcp".into() },
                Entry { title: "target".into(), args: "ferry.role=target".into() },
            ],
            timeout: 3,
            netboot,
            comment: "line one\n\nline three",
        }
    }

    #[test]
    fn renders_entries_in_order_with_kernel_and_initrd() {
        let t = render(&menu(false));
        assert!(t.starts_with(&format!("{FIRST_LINE}\n# line one\n#\n# line three\nserial --unit=0")), "{t}");
        assert!(t.contains("set timeout=3\n"));
        let first = t.find("menuentry \"ferry live image\" {\n  linux /ferry/vmlinuz console=ttyS0 ip=dhcp\n  initrd /ferry/initrd.img\n}\n");
        let second = t.find("menuentry \"target\" {\n  linux /ferry/vmlinuz ferry.role=target\n");
        assert!(first.is_some() && second.is_some() && first < second, "{t}");
        assert!(!t.contains("bootif"), "no BOOTIF off the network: {t}");
    }

    #[test]
    fn a_network_menu_passes_the_boot_card_as_bootif() {
        let t = render(&menu(true));
        assert!(
            t.contains("\"$net_default_mac\"; then\n  set bootif=\"BOOTIF=01-$m1-$m2-$m3-$m4-$m5-$m6\"\nfi\n"),
            "{t}"
        );
        assert!(t.contains("  linux /ferry/vmlinuz console=ttyS0 ip=dhcp $bootif\n"), "{t}");
        assert!(t.find("set bootif").unwrap() < t.find("menuentry").unwrap());
    }

    #[test]
    fn padding_keeps_the_size_and_the_text() {
        let t = render(&menu(false));
        for len in [t.len() + 1, t.len() + 2, t.len() + 73, STICK_CFG_LEN] {
            let p = padded(&t, len).unwrap();
            assert_eq!(p.len(), len);
            assert!(p.starts_with(t.as_bytes()));
            // Everything after the menu is comment lines (or bare newlines).
            let rest = std::str::from_utf8(&p[t.len()..]).unwrap();
            assert!(rest.lines().all(|l| l.is_empty() || l.starts_with('#')), "{rest:?}");
            assert!(rest.lines().all(|l| l.len() <= 79));
        }
        assert!(padded(&t, t.len()).is_err());
    }
}
