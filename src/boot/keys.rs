//! Every `ferry.*` key of the live image, once: the kernel command line parser
//! (`init::cmdline`) matches these constants, and the image build writes the editable
//! `ferry.toml` from [`TOML_KEYS`] (the same keys without the `ferry.` prefix).

pub const SERVER: &str = "ferry.server";
pub const PIN: &str = "ferry.pin";
pub const JOB: &str = "ferry.job";
pub const TOKEN: &str = "ferry.token";
pub const ENROLL: &str = "ferry.enroll";
pub const ROLE: &str = "ferry.role";
pub const ON_FINISH: &str = "ferry.on_finish";
pub const DISKS: &str = "ferry.disks";
pub const COUNTDOWN: &str = "ferry.countdown";
pub const RETRY: &str = "ferry.retry";
pub const PLAIN_HTTP: &str = "ferry.plain_http";
pub const BAD_SECTORS: &str = "ferry.bad_sectors";
pub const USED_ONLY: &str = "ferry.used_only";
/// Debug logs on the console: read by the logger from the command line alone, before the rest.
pub const DEBUG: &str = "ferry.debug";
/// The kernel's own network key, in dracut's form.
pub const IP: &str = "ip";
/// PXELINUX's (and ferry's GRUB menus') boot card.
pub const BOOTIF: &str = "BOOTIF";

/// The prefix `ferry.toml` leaves out.
pub const PREFIX: &str = "ferry.";

/// A key as `ferry.toml` documents it: the key without the prefix, an example value, the help.
pub struct TomlKey {
    pub key: &'static str,
    pub example: &'static str,
    pub help: &'static str,
}

impl TomlKey {
    /// The key on the kernel command line.
    pub fn cmdline_key(&self) -> String {
        format!("{PREFIX}{}", self.key)
    }
}

/// The keys `ferry.toml` lists, in its order.
pub const TOML_KEYS: &[TomlKey] = &[
    TomlKey {
        key: "server",
        example: "https://192.0.2.10:8443",
        help: "The receiver, as `ferry serve` prints it. Use an IP address: the live image does not\n\
               # resolve host names.",
    },
    TomlKey {
        key: "pin",
        example: "<64 hex digits>",
        help: "SHA-256 pin of the receiver's TLS certificate, printed by `ferry serve`. The image\n\
               # talks only to the receiver holding that certificate.",
    },
    TomlKey {
        key: "job",
        example: "<job id>",
        help: "The migration job (`ferry job create`, `ferry job list`, or the dashboard).",
    },
    TomlKey {
        key: "token",
        example: "<job token>",
        help: "The job's token: the agent token on a source, the target token on a target. It works\n\
               # for that job only.",
    },
    TomlKey {
        key: "enroll",
        example: "<enrollment token>",
        help: "Instead of job and token, on the sticks of a whole wave: an enrollment token\n\
               # (`ferry job enroll create`). Each source gets a job of its own, named after its serial.",
    },
    TomlKey {
        key: "role",
        example: "source",
        help: "\"source\" (the default): send this machine's disks, never writing them. \"target\":\n\
               # receive a finished job's disks; THIS MACHINE'S DISKS ARE OVERWRITTEN.",
    },
    TomlKey {
        key: "on_finish",
        example: "reboot",
        help: "After the verdict: \"reboot\" (the default), \"poweroff\", or \"wait\" (stay on the\n\
               # verdict screen until someone acts).",
    },
    TomlKey {
        key: "disks",
        example: "sda,nvme0n1",
        help: "Disks to send, by kernel name, comma-separated. Absent or empty: every disk except\n\
               # this stick.",
    },
    TomlKey {
        key: "countdown",
        example: "10",
        help: "Seconds the verdict stays on screen before on_finish (default 10).",
    },
    TomlKey {
        key: "bad_sectors",
        example: "fail",
        help: "A source disk with sectors that cannot be read: \"fail\" (stop and say where) or\n\
               # \"record\" (send them as zeros, list them in the job and the verdict). Default: the job's.",
    },
    TomlKey {
        key: "used_only",
        example: "0",
        help: "1: read only the blocks the filesystems use (the rest are zeros in the copy, which is\n\
               # then not bit-for-bit). Default: the job's.",
    },
];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_toml_keys_are_the_command_line_keys_without_the_prefix() {
        let cmdline = [
            SERVER,
            PIN,
            JOB,
            TOKEN,
            ENROLL,
            ROLE,
            ON_FINISH,
            DISKS,
            COUNTDOWN,
            RETRY,
            PLAIN_HTTP,
            BAD_SECTORS,
            USED_ONLY,
        ];
        for k in TOML_KEYS {
            assert!(cmdline.contains(&k.cmdline_key().as_str()), "{} is not a key", k.key);
        }
    }
}
