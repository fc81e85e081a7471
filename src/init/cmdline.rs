//! The live image's configuration: kernel command line keys under `ferry.*`, the dracut-style
//! `ip=` and PXE's `BOOTIF=`, and an optional `ferry.toml` from the boot stick.
//!
//! The command line is parsed by hand (not clap): the kernel hands init the whole line with
//! everyone's parameters, and `key="value with spaces"` quoting must survive.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Deserialize;

use crate::boot::keys;
use crate::disk::BadSectors;

/// What to do when the work is over.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum OnFinish {
    #[default]
    Reboot,
    Poweroff,
    /// Stay on the verdict screen until someone acts.
    Wait,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    #[default]
    Source,
    Target,
}

/// How to bring up the network.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub enum IpConfig {
    /// DHCP on every link with carrier (the default).
    #[default]
    Dhcp,
    /// `ip=<client>::<gw>:<mask>:<host>:<iface>:none`
    Static { client: Ipv4Addr, gateway: Option<Ipv4Addr>, prefix: u8, hostname: Option<String>, iface: Option<String> },
}

/// Everything the live image is told.
#[derive(Clone, Debug, PartialEq, Eq, Default)]
pub struct LiveConfig {
    pub server: Option<String>,
    pub job: Option<String>,
    pub token: Option<String>,
    /// An enrollment token: a source without `ferry.job` asks the receiver for its own job.
    pub enroll: Option<String>,
    pub pin: Option<String>,
    pub role: Role,
    pub on_finish: OnFinish,
    /// Kernel names of the disks to send (all when empty).
    pub disks: Vec<String>,
    /// Seconds the verdict stays before the on-finish action.
    pub countdown: u64,
    /// Seconds to keep retrying an unreachable receiver before the verdict is FAILED.
    pub retry: u64,
    pub plain_http: bool,
    /// Unreadable sectors on a source disk: fail or record (the job's option when absent).
    pub bad_sectors: Option<BadSectors>,
    /// Used-blocks mode (the job's option when absent).
    pub used_only: Option<bool>,
    pub ip: IpConfig,
    /// MAC of the PXE boot NIC (from `BOOTIF=01-aa-bb-cc-dd-ee-ff`).
    pub bootif: Option<String>,
    /// `ferry.*` keys nobody knows: reported on screen, never silently dropped.
    pub unknown: Vec<String>,
    /// Values that did not parse, in words.
    pub errors: Vec<String>,
}

/// Splits a command line into `key[=value]` words, honouring double quotes (which go).
pub fn tokenize(line: &str) -> Vec<(String, Option<String>)> {
    crate::boot::split_words(line)
        .into_iter()
        .map(|w| w.replace('"', ""))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (w, None),
        })
        .collect()
}

fn parse_bool(v: Option<&str>) -> Result<bool, String> {
    match v {
        None | Some("1") | Some("yes") | Some("true") | Some("on") => Ok(true),
        Some("0") | Some("no") | Some("false") | Some("off") => Ok(false),
        Some(o) => Err(format!("{o:?} is not yes or no")),
    }
}

impl LiveConfig {
    /// Parses a kernel command line.
    pub fn from_cmdline(line: &str) -> Self {
        let mut cfg = LiveConfig { countdown: 10, retry: 300, ..Default::default() };
        for (k, v) in tokenize(line) {
            cfg.apply(&k, v.as_deref());
        }
        cfg
    }

    /// Applies one `key=value`; `ferry.toml` keys come here too, with the `ferry.` prefix added.
    pub fn apply(&mut self, key: &str, value: Option<&str>) {
        let need = |v: Option<&str>| v.filter(|s| !s.is_empty()).map(str::to_string);
        match key {
            keys::SERVER => self.server = need(value),
            keys::JOB => self.job = need(value),
            keys::TOKEN => self.token = need(value),
            keys::ENROLL => self.enroll = need(value),
            keys::PIN => self.pin = need(value),
            keys::ROLE => match value {
                Some("source") => self.role = Role::Source,
                Some("target") => self.role = Role::Target,
                other => self.errors.push(format!("ferry.role={} must be source or target", other.unwrap_or(""))),
            },
            keys::ON_FINISH => match value {
                Some("reboot") => self.on_finish = OnFinish::Reboot,
                Some("poweroff") => self.on_finish = OnFinish::Poweroff,
                Some("wait") => self.on_finish = OnFinish::Wait,
                other => self
                    .errors
                    .push(format!("ferry.on_finish={} must be reboot, poweroff or wait", other.unwrap_or(""))),
            },
            keys::DISKS => {
                self.disks = value
                    .unwrap_or("")
                    .split(',')
                    .map(|d| d.trim().trim_start_matches("/dev/").to_string())
                    .filter(|d| !d.is_empty())
                    .collect()
            }
            keys::COUNTDOWN => match value.and_then(|v| v.parse().ok()) {
                Some(n) => self.countdown = n,
                None => {
                    self.errors.push(format!("ferry.countdown={} must be a number of seconds", value.unwrap_or("")))
                }
            },
            keys::RETRY => match value.and_then(|v| v.parse().ok()) {
                Some(n) => self.retry = n,
                None => self.errors.push(format!("ferry.retry={} must be a number of seconds", value.unwrap_or(""))),
            },
            keys::PLAIN_HTTP => match parse_bool(value) {
                Ok(b) => self.plain_http = b,
                Err(e) => self.errors.push(format!("ferry.plain_http: {e}")),
            },
            keys::BAD_SECTORS => match value.and_then(BadSectors::parse) {
                Some(b) => self.bad_sectors = Some(b),
                None => self.errors.push(format!("ferry.bad_sectors={} must be fail or record", value.unwrap_or(""))),
            },
            keys::USED_ONLY => match parse_bool(value) {
                Ok(b) => self.used_only = Some(b),
                Err(e) => self.errors.push(format!("ferry.used_only: {e}")),
            },
            keys::IP => match parse_ip(value.unwrap_or("")) {
                Ok(ip) => self.ip = ip,
                Err(e) => self.errors.push(e),
            },
            keys::BOOTIF => match parse_bootif(value.unwrap_or("")) {
                Some(mac) => self.bootif = Some(mac),
                None => self.errors.push(format!("BOOTIF={} is not 01-aa-bb-cc-dd-ee-ff", value.unwrap_or(""))),
            },
            // Read directly by the logger, before anything else is parsed.
            keys::DEBUG => {}
            k if k.starts_with(keys::PREFIX) => self.unknown.push(k.to_string()),
            _ => {}
        }
    }

    /// Merges a `ferry.toml` (keys without the prefix); the kernel command line wins where both
    /// set a key, since it is the more deliberate of the two.
    pub fn merge_toml(&mut self, text: &str, cmdline: &str) -> Result<(), String> {
        let table: BTreeMap<String, toml::Value> = toml::from_str(text).map_err(|e| format!("ferry.toml: {e}"))?;
        let on_cmdline: Vec<String> = tokenize(cmdline).into_iter().map(|(k, _)| k).collect();
        for (k, v) in table {
            let key = format!("{}{k}", keys::PREFIX);
            if on_cmdline.contains(&key) {
                continue;
            }
            let value = match &v {
                toml::Value::String(s) => s.clone(),
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                toml::Value::Array(a) => {
                    a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect::<Vec<_>>().join(",")
                }
                other => return Err(format!("ferry.toml: {k} = {other} is not a string, number or list")),
            };
            self.apply(&key, Some(&value));
        }
        Ok(())
    }

    /// What is missing before a source can send, in words for the screen.
    pub fn missing_keys(&self) -> Vec<&'static str> {
        let mut m = vec![];
        if self.server.is_none() {
            m.push(keys::SERVER);
        }
        // A source may enroll instead of naming its job; a target always names the job it
        // receives (the operator allows wiping it job by job).
        let enrolls = self.enroll.is_some() && self.role == Role::Source && self.job.is_none();
        if self.job.is_none() && !enrolls {
            m.push(keys::JOB);
        }
        if self.token.is_none() && !enrolls {
            m.push(keys::TOKEN);
        }
        if self.pin.is_none() && !self.plain_http {
            m.push(keys::PIN);
        }
        m
    }
}

/// `dhcp`, `on`, `any`, or `<client>:<srv>:<gw>:<mask>:<host>:<iface>:<autoconf>`.
pub fn parse_ip(v: &str) -> Result<IpConfig, String> {
    if matches!(v, "dhcp" | "on" | "any" | "auto" | "dhcp4") {
        return Ok(IpConfig::Dhcp);
    }
    let f: Vec<&str> = v.split(':').collect();
    if f.len() < 4 {
        return Err(format!("ip={v}: use ip=dhcp or ip=<client>::<gateway>:<netmask>:<hostname>:<iface>:none"));
    }
    let client: Ipv4Addr = f[0].parse().map_err(|_| format!("ip={v}: {:?} is not an IPv4 address", f[0]))?;
    let gateway = match f[2] {
        "" => None,
        g => Some(g.parse::<Ipv4Addr>().map_err(|_| format!("ip={v}: gateway {g:?} is not an IPv4 address"))?),
    };
    let prefix = match f[3] {
        "" => 24,
        m if !m.contains('.') => {
            m.parse::<u8>().ok().filter(|p| *p <= 32).ok_or(format!("ip={v}: bad prefix {m:?}"))?
        }
        m => {
            let mask: Ipv4Addr = m.parse().map_err(|_| format!("ip={v}: netmask {m:?} is not an IPv4 address"))?;
            let bits = u32::from(mask);
            if bits.leading_ones() + bits.trailing_zeros() != 32 {
                return Err(format!("ip={v}: netmask {m} is not contiguous"));
            }
            bits.leading_ones() as u8
        }
    };
    let hostname = f.get(4).filter(|s| !s.is_empty()).map(|s| s.to_string());
    let iface = f.get(5).filter(|s| !s.is_empty()).map(|s| s.to_string());
    Ok(IpConfig::Static { client, gateway, prefix, hostname, iface })
}

/// `01-52-54-00-12-34-56` (ARP type 1 + MAC) to `52:54:00:12:34:56`.
pub fn parse_bootif(v: &str) -> Option<String> {
    let parts: Vec<&str> = v.split('-').collect();
    if parts.len() != 7
        || parts[0] != "01"
        || !parts.iter().all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
    {
        return None;
    }
    Some(parts[1..].join(":").to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    type Words<'a> = &'a [(&'a str, Option<&'a str>)];

    #[test]
    fn tokenizer_table() {
        let table: &[(&str, Words)] = &[
            ("", &[]),
            ("quiet", &[("quiet", None)]),
            ("a=1  b=2", &[("a", Some("1")), ("b", Some("2"))]),
            (r#"ferry.token="a b c" x"#, &[("ferry.token", Some("a b c")), ("x", None)]),
            (r#""ferry.server=https://h:1""#, &[("ferry.server", Some("https://h:1"))]),
            ("k=v=w", &[("k", Some("v=w"))]),
            ("console=ttyS0,115200n8\n", &[("console", Some("ttyS0,115200n8"))]),
        ];
        for (line, want) in table {
            let got = tokenize(line);
            let want: Vec<(String, Option<String>)> =
                want.iter().map(|(k, v)| (k.to_string(), v.map(str::to_string))).collect();
            assert_eq!(got, want, "{line:?}");
        }
    }

    #[test]
    fn a_full_command_line() {
        let c = LiveConfig::from_cmdline(
            r#"BOOT_IMAGE=/vmlinuz console=ttyS0 ferry.server=https://10.0.2.2:8443 ferry.job=3fa9c01b7d2e ferry.token=tok ferry.pin=ab ferry.on_finish=poweroff ferry.disks=/dev/vda,nvme0n1 ferry.countdown=0 ferry.retry=20 ip=dhcp BOOTIF=01-52-54-00-12-34-56 ferry.colour=red"#,
        );
        assert_eq!(c.server.as_deref(), Some("https://10.0.2.2:8443"));
        assert_eq!(c.job.as_deref(), Some("3fa9c01b7d2e"));
        assert_eq!(c.token.as_deref(), Some("tok"));
        assert_eq!(c.pin.as_deref(), Some("ab"));
        assert_eq!(c.on_finish, OnFinish::Poweroff);
        assert_eq!(c.disks, ["vda", "nvme0n1"]);
        assert_eq!(c.countdown, 0);
        assert_eq!(c.retry, 20);
        assert_eq!(c.ip, IpConfig::Dhcp);
        assert_eq!(c.bootif.as_deref(), Some("52:54:00:12:34:56"));
        assert_eq!(c.unknown, ["ferry.colour"]);
        assert!(c.errors.is_empty(), "{:?}", c.errors);
        assert!(c.missing_keys().is_empty());
    }

    #[test]
    fn bad_values_are_reported() {
        let c =
            LiveConfig::from_cmdline("ferry.role=both ferry.on_finish=explode ferry.countdown=soon ip=1.2.3 BOOTIF=xx");
        assert_eq!(c.errors.len(), 5, "{:?}", c.errors);
        assert_eq!(c.missing_keys(), ["ferry.server", "ferry.job", "ferry.token", "ferry.pin"]);
        assert_eq!(LiveConfig::from_cmdline("ferry.plain_http=1").missing_keys().len(), 3);
    }

    #[test]
    fn a_source_may_enroll_instead_of_naming_its_job_a_target_may_not() {
        let base = "ferry.server=https://10.0.2.2:8443 ferry.pin=ab ferry.enroll=e1";
        let c = LiveConfig::from_cmdline(base);
        assert_eq!(c.enroll.as_deref(), Some("e1"));
        assert!(c.missing_keys().is_empty(), "{:?}", c.missing_keys());
        let t = LiveConfig::from_cmdline(&format!("{base} ferry.role=target"));
        assert_eq!(t.missing_keys(), ["ferry.job", "ferry.token"]);
        // A job named with its token wins over an enrollment.
        let j = LiveConfig::from_cmdline(&format!("{base} ferry.job=j1"));
        assert_eq!(j.missing_keys(), ["ferry.token"]);
    }

    #[test]
    fn ip_forms() {
        let table: &[(&str, Result<IpConfig, ()>)] = &[
            ("dhcp", Ok(IpConfig::Dhcp)),
            (
                "10.0.0.7::10.0.0.1:255.255.255.0:src1:eth0:none",
                Ok(IpConfig::Static {
                    client: "10.0.0.7".parse().unwrap(),
                    gateway: Some("10.0.0.1".parse().unwrap()),
                    prefix: 24,
                    hostname: Some("src1".into()),
                    iface: Some("eth0".into()),
                }),
            ),
            (
                "192.168.5.9:::16::",
                Ok(IpConfig::Static {
                    client: "192.168.5.9".parse().unwrap(),
                    gateway: None,
                    prefix: 16,
                    hostname: None,
                    iface: None,
                }),
            ),
            ("10.0.0.7::10.0.0.1:255.0.255.0:h:eth0:none", Err(())),
            ("nonsense", Err(())),
            ("10.0.0.300::::", Err(())),
        ];
        for (v, want) in table {
            assert_eq!(parse_ip(v).map_err(|_| ()), *want, "{v}");
        }
    }

    #[test]
    fn toml_merges_under_the_command_line() {
        let line = "ferry.server=https://1.2.3.4:8443";
        let mut c = LiveConfig::from_cmdline(line);
        c.merge_toml(
            "server = \"https://9.9.9.9:1\"\njob = \"j1\"\ntoken = \"t\"\npin = \"p\"\ndisks = [\"sda\", \"sdb\"]\ncountdown = 3\non_finish = \"wait\"\n",
            line,
        )
        .unwrap();
        assert_eq!(c.server.as_deref(), Some("https://1.2.3.4:8443"), "the command line wins");
        assert_eq!(c.job.as_deref(), Some("j1"));
        assert_eq!(c.disks, ["sda", "sdb"]);
        assert_eq!(c.countdown, 3);
        assert_eq!(c.on_finish, OnFinish::Wait);
        assert!(c.merge_toml("server = [", "").is_err());
    }
}
