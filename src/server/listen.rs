//! `ferry serve`'s listeners: the API (HTTPS, or plain HTTP when asked), and for network boots
//! a plain-HTTP boot listener and a TFTP listener. What the operator is told about them is the
//! caller's to print ([`Started`]).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result};
use tokio::net::TcpListener;

use super::state::{open_state, AppState, ReceiverInfo};
use super::{boot, conn, router};
use crate::tls;

/// What `ferry serve` needs.
pub struct ServeConfig {
    pub store: PathBuf,
    /// The bucket's configuration file, when chunks are kept in S3.
    pub s3_config: Option<PathBuf>,
    /// A PostgreSQL URL, when jobs are kept there.
    pub db: Option<String>,
    pub listen: SocketAddr,
    pub plain_http: bool,
    /// Address sources should use in the printed kernel command line (the listen address when
    /// it is not a wildcard).
    pub advertise: Option<String>,
    /// Directory of a built live image to serve under `/boot/`.
    pub boot_dir: Option<PathBuf>,
    /// Plain-HTTP address serving only `/boot/`.
    pub boot_listen: Option<SocketAddr>,
    /// UDP address serving the boot files over TFTP (PXE; port 69 for firmware clients).
    pub tftp_listen: Option<SocketAddr>,
    /// The enrollment token network boots get when they name no job or enrollment.
    pub boot_enroll: Option<String>,
}

/// A receiver that listens: where, and with which identity.
pub struct Started {
    pub info: ReceiverInfo,
    /// The listen address was a wildcard and no `--advertise` was given.
    pub unadvertised: bool,
    pub boot_http: Option<SocketAddr>,
    pub tftp: Option<SocketAddr>,
}

/// Runs the receiver until the process is stopped; `announce` is told where it listens once it
/// does.
pub async fn serve(cfg: ServeConfig, announce: impl FnOnce(&Started)) -> Result<()> {
    let mut state = open_state(&cfg.store, cfg.s3_config.as_deref(), cfg.db.as_deref()).await?;
    state.boot_dir = cfg.boot_dir.clone();
    state.boot_enroll = cfg.boot_enroll.clone();
    let state = Arc::new(state);
    tokio::spawn(write_counters_every_second(state.clone()));
    let listener = TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let boot_http = match cfg.boot_listen {
        Some(addr) => Some(start_boot_http(addr, &state).await?),
        None => None,
    };
    let tftp = match cfg.tftp_listen {
        Some(addr) => Some(start_tftp(addr, &state).await?),
        None => None,
    };
    let local = listener.local_addr()?;
    let info = receiver_info(&cfg, local)?;
    crate::fsx::write_atomic(&cfg.store.join("receiver.json"), &serde_json::to_vec_pretty(&info)?)
        .with_context(|| format!("writing {}", cfg.store.join("receiver.json").display()))?;
    let _ = state.info.set(info.clone());
    announce(&Started { info, unadvertised: cfg.advertise.is_none() && local.ip().is_unspecified(), boot_http, tftp });
    let app = router::router(state.clone());
    let tls = if cfg.plain_http {
        None
    } else {
        let id = tls::ensure_identity(&cfg.store.join("tls"), &[])?;
        Some(tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&id)?)))
    };
    conn::serve(listener, app, tls, conn::Limits::for_this_process()).await;
    Ok(())
}

/// The URLs tools on this machine and sources use, and the certificate pin (made on the first
/// start, for the advertised host).
fn receiver_info(cfg: &ServeConfig, local: SocketAddr) -> Result<ReceiverInfo> {
    // Tools on this machine use the listen address (loopback for a wildcard listener); sources
    // use the advertised host.
    let local_host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
    let host = cfg.advertise.clone().unwrap_or_else(|| local_host.clone());
    let scheme = if cfg.plain_http { "http" } else { "https" };
    let pin = if cfg.plain_http {
        None
    } else {
        Some(tls::ensure_identity(&cfg.store.join("tls"), std::slice::from_ref(&host))?.pin)
    };
    let url = format!("{scheme}://{local_host}:{}", local.port());
    let source_url = format!("{scheme}://{host}:{}", local.port());
    Ok(ReceiverInfo { source_url: (source_url != url).then_some(source_url), url, pin })
}

async fn start_boot_http(addr: SocketAddr, state: &Arc<AppState>) -> Result<SocketAddr> {
    let boot = TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} for boot files"))?;
    let local = boot.local_addr()?;
    let router = router::boot_router(state.clone());
    tokio::spawn(conn::serve(boot, router, None, conn::Limits::for_this_process()));
    Ok(local)
}

async fn start_tftp(addr: SocketAddr, state: &Arc<AppState>) -> Result<SocketAddr> {
    let socket =
        tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("listening on {addr} (UDP) for TFTP"))?;
    let local = socket.local_addr()?;
    tokio::spawn(boot::tftp::serve(socket, state.clone()));
    Ok(local)
}

/// Writes the batched received counters at least once a second, so that a wave's dashboard
/// moves while its chunks arrive.
async fn write_counters_every_second(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(super::counters::BATCH_AGE);
    loop {
        tick.tick().await;
        state.write_counters();
    }
}
