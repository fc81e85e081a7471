//! `ferry serve`: the receiver.

use anyhow::Result;

use crate::cmdline::ServeArgs;
use crate::server::{self, ServeConfig, Started};
use crate::tls;

pub fn run(a: ServeArgs) -> Result<i32> {
    if let Some(e) = &a.boot_enroll {
        if crate::boot::safe_value(e).is_none() {
            eprintln!("error: --boot-enroll must be an enrollment token (letters, digits, '-' and '_')");
            return Ok(2);
        }
    }
    // Everything the receiver writes (chunks, manifests, the database, exports' temp files) is
    // its own: nothing it makes is for other local users to read.
    nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o077));
    crate::util::return_large_buffers_to_the_system();
    tls::install_crypto_provider();
    let cfg = ServeConfig {
        store: a.store,
        s3_config: a.shared.s3_config,
        db: a.shared.db,
        listen: a.listen,
        plain_http: a.plain_http,
        advertise: a.advertise,
        boot_dir: a.boot_dir,
        boot_listen: a.boot_listen,
        tftp_listen: a.tftp_listen,
        boot_enroll: a.boot_enroll,
    };
    let store = cfg.store.clone();
    super::runtime()?.block_on(server::serve(cfg, |s| announce(s, &store)))?;
    Ok(0)
}

/// What the operator is told once the receiver listens.
fn announce(s: &Started, store: &std::path::Path) {
    let info = &s.info;
    if s.unadvertised {
        println!("note: listening on every address; pass --advertise IP so that sources get a reachable URL");
    }
    if let Some(a) = s.boot_http {
        println!("boot files:   http://{a}/boot/boot.ipxe");
    }
    if let Some(a) = s.tftp {
        println!("TFTP:         {a} (shimx64.efi for UEFI, undionly.kpxe for BIOS)");
    }
    println!("ferry receiver listening on {}", info.url);
    if let Some(url) = &info.source_url {
        println!("sources reach it at {url}");
    }
    println!("store:        {}", store.display());
    println!("admin token:  {}", store.join("admin.token").display());
    println!("viewer token: {} (read-only dashboard)", store.join("viewer.token").display());
    println!("dashboard:    {}/", info.url);
    let security = match &info.pin {
        Some(pin) => {
            println!("certificate pin (SHA-256): {pin}");
            format!("ferry.pin={pin}")
        }
        None => {
            println!("WARNING: plain HTTP: disk data and tokens travel unencrypted");
            "ferry.plain_http=1".to_string()
        }
    };
    println!(
        "boot sources with:\n  ferry.server={} {security} ferry.job=<JOB> ferry.token=<TOKEN> ip=dhcp",
        info.url_for_sources()
    );
    println!("  (a wave: ferry.enroll=<TOKEN> instead of job and token; see ferry job enroll create)");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
}
