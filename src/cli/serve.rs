//! `ferry serve`: the receiver.

use anyhow::Result;

use crate::cmdline::ServeArgs;
use crate::server::{self, tls, ServeConfig};

pub fn run(a: ServeArgs) -> Result<i32> {
    tls::install_crypto_provider();
    let cfg = ServeConfig {
        store: a.store,
        listen: a.listen,
        plain_http: a.plain_http,
        advertise: a.advertise,
        boot_dir: a.boot_dir,
        boot_listen: a.boot_listen,
    };
    super::runtime()?.block_on(server::serve(cfg))?;
    Ok(0)
}
