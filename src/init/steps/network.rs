//! Step 4, network: the kernel's RNG (TLS needs it), then DHCP or the static `ip=`; needed to
//! report even a failure.

use std::time::Duration;

use crate::init::cmdline::{IpConfig, LiveConfig};
use crate::init::net;
use crate::init::verdict::Failed;

pub async fn bring_up(cfg: &LiveConfig) -> Result<(), Failed> {
    if !kernel_rng_ready() {
        crate::say!("waiting for the kernel's random number generator (needed for TLS) ...");
    }
    crate::say!("network: {} ...", if matches!(cfg.ip, IpConfig::Dhcp) { "DHCP" } else { "static" });
    let configured = net::bring_up(&cfg.ip, cfg.bootif.as_deref(), Duration::from_secs(45)).await.map_err(|e| {
        Failed::new(
            format!("no network: {e:#}"),
            "Check the cable and the switch port (VLAN), then reboot from the stick. The disks were not touched.",
        )
    })?;
    crate::say!(
        "network: {} {}/{} via {} ({})",
        configured.link,
        configured.address,
        configured.prefix,
        configured.gateway.map(|g| g.to_string()).unwrap_or_else(|| "-".into()),
        configured.how
    );
    Ok(())
}

/// Whether getrandom() would answer now; on machines without a hardware RNG the kernel may
/// need a while after boot, and TLS waits for it.
fn kernel_rng_ready() -> bool {
    let mut b = [0u8; 1];
    // SAFETY: b is a valid 1-byte buffer; GRND_NONBLOCK makes the call return at once.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), 1, libc::GRND_NONBLOCK) };
    n == 1
}
