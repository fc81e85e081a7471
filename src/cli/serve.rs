//! `ferry serve`: the receiver.

use anyhow::Result;

use crate::cmdline::ServeArgs;
use crate::server::{self, tls, ServeConfig};

pub fn run(a: ServeArgs) -> Result<i32> {
    if let Some(e) = &a.boot_enroll {
        if crate::boot::safe_value(e).is_none() {
            eprintln!("error: --boot-enroll must be an enrollment token (letters, digits, '-' and '_')");
            return Ok(2);
        }
    }
    tls::install_crypto_provider();
    let cfg = ServeConfig {
        store: a.store,
        listen: a.listen,
        plain_http: a.plain_http,
        advertise: a.advertise,
        boot_dir: a.boot_dir,
        boot_listen: a.boot_listen,
        tftp_listen: a.tftp_listen,
        boot_enroll: a.boot_enroll,
    };
    super::runtime()?.block_on(server::serve(cfg))?;
    Ok(0)
}
