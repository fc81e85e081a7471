//! `GET /boot/menu.ipxe`: the PXE boot menu. A PXE client chained into it (see docs/pxe-and-usb.md)
//! picks "Migrate this machine (source)" or "Receive a migration (target)"; the receiver's URL
//! and certificate pin are baked in, the job and token come from the query string
//! (`menu.ipxe?job=ID&token=TOKEN`, e.g. from per-host DHCP options) or are typed at a prompt.
//! For a wave, `menu.ipxe?enroll=TOKEN` bakes in an enrollment token instead: every source
//! booted from it gets a job of its own (a target still names its job).
//! Kernel and initrd are fetched relative to the menu's own URL, from the same `/boot/`.

use std::collections::HashMap;

use crate::boot::safe_value as safe;

/// The menu script for a receiver at `server` with certificate `pin` (none: plain HTTP).
pub fn menu(server: &str, pin: Option<&str>, query: &HashMap<String, String>) -> String {
    let param = |k: &str| query.get(k).and_then(|v| safe(v)).unwrap_or("");
    let default = match param("role") {
        "target" => "target",
        _ => "source",
    };
    let security = match pin {
        Some(p) => format!("ferry.pin={p}"),
        None => "ferry.plain_http=1".to_string(),
    };
    format!(
        "#!ipxe\n\
         # ferry boot menu, served by the receiver at {server}\n\
         set ferry_server {server}\n\
         set ferry_job {job}\n\
         set ferry_token {token}\n\
         set ferry_enroll {enroll}\n\
         :menu\n\
         menu ferry {version}: what should this machine do?\n\
         item --gap Receiver: {server}\n\
         item source Migrate this machine (source)\n\
         item target Receive a migration (target): ITS DISKS ARE OVERWRITTEN\n\
         item --gap\n\
         item shell iPXE shell\n\
         choose --default {default} --timeout 10000 ferry_role || goto menu\n\
         goto ${{ferry_role}}\n\
         :shell\n\
         shell\n\
         goto menu\n\
         :source\n\
         isset ${{ferry_job}} && goto by_job ||\n\
         isset ${{ferry_enroll}} && goto enrolled ||\n\
         :target\n\
         :by_job\n\
         isset ${{ferry_job}} || echo Job id (from ferry job create):\n\
         isset ${{ferry_job}} || read ferry_job\n\
         isset ${{ferry_token}} || echo Token (the job's token; for a target, its target token):\n\
         isset ${{ferry_token}} || read ferry_token\n\
         kernel vmlinuz initrd=initrd.img console=ttyS0 console=tty0 panic=30 printk.devkmsg=on ip=dhcp ferry.role=${{ferry_role}} ferry.server=${{ferry_server}} {security} ferry.job=${{ferry_job}} ferry.token=${{ferry_token}} || goto menu\n\
         initrd initrd.img || goto menu\n\
         boot || goto menu\n\
         :enrolled\n\
         kernel vmlinuz initrd=initrd.img console=ttyS0 console=tty0 panic=30 printk.devkmsg=on ip=dhcp ferry.role=source ferry.server=${{ferry_server}} {security} ferry.enroll=${{ferry_enroll}} || goto menu\n\
         initrd initrd.img || goto menu\n\
         boot || goto menu\n",
        job = param("job"),
        token = param("token"),
        enroll = param("enroll"),
        version = env!("CARGO_PKG_VERSION"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn bakes_in_the_receiver_and_takes_job_and_token_from_the_query() {
        let m = menu("https://10.0.0.5:8443", Some("ab12"), &q(&[("job", "3f9a0c"), ("token", "deadbeef")]));
        assert!(m.starts_with("#!ipxe\n"));
        assert!(m.contains("set ferry_server https://10.0.0.5:8443\n"));
        assert!(m.contains("set ferry_job 3f9a0c\n") && m.contains("set ferry_token deadbeef\n"));
        assert!(m.contains("ferry.pin=ab12 ") && !m.contains("plain_http"));
        assert!(m.contains("item source Migrate this machine (source)"));
        assert!(m.contains("item target Receive a migration (target)"));
        assert!(m.contains("--default source"));
        assert!(menu("http://x", None, &q(&[("role", "target")])).contains("--default target"));
        assert!(menu("http://x", None, &q(&[])).contains("ferry.plain_http=1"));
    }

    #[test]
    fn an_enrollment_token_boots_sources_without_a_job() {
        let m = menu("https://10.0.0.5:8443", Some("ab12"), &q(&[("enroll", "e0e0")]));
        assert!(m.contains("set ferry_enroll e0e0\n"));
        let enrolled = &m[m.find(":enrolled\n").expect("an enrolled section")..];
        assert!(enrolled.contains("ferry.role=source ") && enrolled.contains("ferry.enroll=${ferry_enroll}"));
        assert!(!enrolled.contains("ferry.job=") && !enrolled.contains("ferry.token="));
        // A job named in the query wins; the target item never enrolls.
        let source = &m[m.find(":source\n").unwrap()..m.find(":target\n").unwrap()];
        assert!(source.find("goto by_job").unwrap() < source.find("goto enrolled").unwrap());
        assert!(!m[m.find(":target\n").unwrap()..m.find(":enrolled\n").unwrap()].contains("enroll"));
    }

    #[test]
    fn query_values_cannot_inject_commands() {
        let m = menu("https://h:1", Some("p"), &q(&[("job", "x\nshell"), ("token", "a b"), ("role", "source\nboot")]));
        assert!(m.contains("set ferry_job \n") && m.contains("set ferry_token \n"), "{m}");
        assert_eq!(m.matches("\nshell\n").count(), 1, "only the menu's own shell item");
    }
}
