//! The stick's editable `ferry.toml`, and which `--cmdline` words go there (the `ferry.*` keys,
//! so they stay editable) and which onto the kernel line.

use crate::boot::keys::{PREFIX, TOML_KEYS};
use crate::boot::{split_words, BASE_CMDLINE};

/// Splits `--cmdline` for the USB image: `ferry.*` keys go to ferry.toml (key without the
/// prefix, value unquoted) so they stay editable on the stick (the kernel command line would
/// win over the file), and every other word stays on the kernel command line.
pub fn split_cmdline(extra: &str) -> (Vec<String>, Vec<(String, String)>) {
    let mut kernel = vec![];
    let mut keys = vec![];
    for w in split_words(extra) {
        let unq = w.replace('"', "");
        match unq.strip_prefix(PREFIX).and_then(|kv| kv.split_once('=')) {
            Some((k, v)) if !k.is_empty() => keys.push((k.to_string(), v.to_string())),
            _ => kernel.push(w),
        }
    }
    (kernel, keys)
}

pub fn full_cmdline(extra: &[String]) -> String {
    let mut s = BASE_CMDLINE.to_string();
    for w in extra {
        s.push(' ');
        s.push_str(w);
    }
    s
}

/// A TOML basic string.
fn toml_string(s: &str) -> String {
    let mut o = String::from("\"");
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\t' => o.push_str("\\t"),
            c if (c as u32) < 0x20 || c == '\u{7f}' => o.push_str(&format!("\\u{:04X}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The editable ferry.toml on the stick, with `keys` (from `--cmdline`) set and the rest
/// commented out.
pub fn ferry_toml(keys: &[(String, String)]) -> String {
    let mut t = String::from(
        "# ferry.toml: settings for the ferry live image, read from this stick when it boots.\n\
         #\n\
         # Edit it on any computer: the stick's partition is FAT32, labelled FERRY. The keys are\n\
         # the kernel command line's ferry.* keys without the \"ferry.\" prefix; a key given on the\n\
         # kernel command line wins over this file. Remove the leading \"# \" to set a key; values\n\
         # are quoted strings.\n",
    );
    for k in TOML_KEYS {
        t.push_str(&format!("\n# {}\n", k.help));
        match keys.iter().rev().find(|(key, _)| key == k.key) {
            Some((_, v)) => t.push_str(&format!("{} = {}\n", k.key, toml_string(v))),
            None => t.push_str(&format!("# {} = {}\n", k.key, toml_string(k.example))),
        }
    }
    let others: Vec<&(String, String)> =
        keys.iter().filter(|(k, _)| !TOML_KEYS.iter().any(|known| known.key == k)).collect();
    if !others.is_empty() {
        t.push_str("\n# Other keys given at build time.\n");
        for (k, v) in others {
            t.push_str(&format!("{} = {}\n", toml_string(k), toml_string(v)));
        }
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline_split_for_the_stick() {
        let (k, keys) = split_cmdline(
            "ferry.server=https://10.0.2.2:8443 ferry.pin=ab12 ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none \
             ferry.disks=\"sda, sdb\" quiet",
        );
        assert_eq!(k, ["ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none", "quiet"]);
        assert_eq!(
            keys,
            [
                ("server".to_string(), "https://10.0.2.2:8443".to_string()),
                ("pin".into(), "ab12".into()),
                ("disks".into(), "sda, sdb".into())
            ]
        );
        assert_eq!(full_cmdline(&k), format!("{BASE_CMDLINE} ip=10.0.0.5::10.0.0.1:255.255.255.0::eth0:none quiet"));
    }

    #[test]
    fn ferry_toml_parses_and_carries_the_keys() {
        let keys = vec![
            ("server".to_string(), "https://10.0.2.2:8443".to_string()),
            ("job".into(), "j-1".into()),
            ("odd".into(), "a \"quoted\" \\ value".into()),
        ];
        let text = ferry_toml(&keys);
        let t: toml::Table = toml::from_str(&text).unwrap();
        assert_eq!(t["server"].as_str(), Some("https://10.0.2.2:8443"));
        assert_eq!(t["job"].as_str(), Some("j-1"));
        assert_eq!(t["odd"].as_str(), Some("a \"quoted\" \\ value"));
        assert!(!t.contains_key("pin"));
        for k in ["server", "pin", "job", "token", "on_finish", "disks"] {
            assert!(text.contains(&format!("{k} = ")), "{k} is not documented");
        }
        // Nothing set: every line is a comment, and it still parses.
        let empty: toml::Table = toml::from_str(&ferry_toml(&[])).unwrap();
        assert!(empty.is_empty());
    }
}
