//! What a machine is given to boot the live image, shared by the image build and the receiver:
//! the kernel command line every boot path starts from, the GRUB menus (USB stick, PXE under
//! Secure Boot, UEFI HTTP Boot), and the names and description of a built image's boot files.

pub mod files;
pub mod grub;
pub mod keys;

/// The command line every boot path gets before anything else: both consoles (the last one,
/// the screen, becomes /dev/console), reboot 30 s after a kernel panic, unthrottled kmsg for
/// ferry's log, DHCP.
pub const BASE_CMDLINE: &str = "console=ttyS0 console=tty0 panic=30 printk.devkmsg=on ip=dhcp";

/// The `ferry.*` words a receiver bakes into a network boot's kernel command line: its URL and
/// pin (or plain HTTP), the role, and the job and token or an enrollment token when known.
/// Values must already be safe for a boot script (see [`safe_value`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LiveArgs<'a> {
    pub server: &'a str,
    pub pin: Option<&'a str>,
    pub target: bool,
    pub job: Option<&'a str>,
    pub token: Option<&'a str>,
    pub enroll: Option<&'a str>,
}

impl LiveArgs<'_> {
    /// The words, e.g. `ferry.role=source ferry.server=https://10.0.0.5:8443 ferry.pin=…`.
    pub fn words(&self) -> String {
        let mut s =
            format!("ferry.role={} ferry.server={}", if self.target { "target" } else { "source" }, self.server);
        match self.pin {
            Some(p) => s += &format!(" ferry.pin={p}"),
            None => s += " ferry.plain_http=1",
        }
        match (self.job, self.token, self.enroll) {
            (Some(j), Some(t), _) => s += &format!(" ferry.job={j} ferry.token={t}"),
            // A target always names its job; an enrollment only makes sources.
            (_, _, Some(e)) if !self.target => s += &format!(" ferry.enroll={e}"),
            _ => {}
        }
        s
    }
}

/// Splits a command line into words, keeping double-quoted spaces inside a word.
pub fn split_words(line: &str) -> Vec<String> {
    let mut words = vec![];
    let mut cur = String::new();
    let mut quoted = false;
    for c in line.chars() {
        if c == '"' {
            quoted = !quoted;
            cur.push(c);
        } else if c.is_whitespace() && !quoted {
            if !cur.is_empty() {
                words.push(std::mem::take(&mut cur));
            }
        } else {
            cur.push(c);
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    words
}

/// A value that may go into a boot script (iPXE, GRUB) or a kernel command line: nothing that
/// could end a word, a line or start a command.
pub fn safe_value(v: &str) -> Option<&str> {
    (!v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_'))
        .then_some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn live_args_name_the_receiver_and_the_job_or_the_enrollment() {
        let a = LiveArgs { server: "https://10.0.0.5:8443", pin: Some("ab12"), ..Default::default() };
        assert_eq!(a.words(), "ferry.role=source ferry.server=https://10.0.0.5:8443 ferry.pin=ab12");
        let e = LiveArgs { enroll: Some("e0"), ..a.clone() };
        assert_eq!(e.words(), format!("{} ferry.enroll=e0", a.words()));
        let j = LiveArgs { job: Some("j1"), token: Some("t1"), ..e.clone() };
        assert!(j.words().ends_with(" ferry.job=j1 ferry.token=t1"), "a job wins over the enrollment");
        let t = LiveArgs { target: true, ..e };
        assert_eq!(t.words(), "ferry.role=target ferry.server=https://10.0.0.5:8443 ferry.pin=ab12");
        let plain = LiveArgs { server: "http://h:1", ..Default::default() };
        assert!(plain.words().ends_with(" ferry.plain_http=1"));
    }

    #[test]
    fn unsafe_values_are_refused() {
        for v in ["", "a b", "x\nboot", "a;b", "$x", "a\"b", &"a".repeat(129)] {
            assert_eq!(safe_value(v), None, "{v:?}");
        }
        assert_eq!(safe_value("3f9a-0c_Z"), Some("3f9a-0c_Z"));
    }
}
