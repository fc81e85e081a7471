//! The receiver: `ferry serve`. Keeps a store directory holding the job database, the chunk
//! store, the disk manifests, the admin token and the TLS identity; answers the API over HTTPS
//! (HTTP/2 or HTTP/1.1) or, when asked, plain HTTP.

mod api;
pub mod boot_files;
mod boot_http;
mod boot_menu;
mod dashboard;
pub mod db;
mod enroll_api;
mod metrics;
mod target_api;
mod tftp;
pub mod tls;

use std::fs;
use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::{ChunkStore, LocalStore};

/// Where a receiver can be reached; written to `STORE/receiver.json` so that `ferry job --store`
/// and `ferry export` on the same machine need no other flags.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReceiverInfo {
    pub url: String,
    /// SHA-256 of the certificate (absent with plain HTTP).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pin: Option<String>,
    /// The URL sources and targets use (`--advertise`), when it differs from `url`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source_url: Option<String>,
}

impl ReceiverInfo {
    /// What machines booting the live image should use.
    pub fn url_for_sources(&self) -> &str {
        self.source_url.as_deref().unwrap_or(&self.url)
    }
}

/// What `ferry serve` needs.
pub struct ServeConfig {
    pub store: PathBuf,
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

/// Shared by every request.
pub struct AppState {
    pub db: db::Db,
    pub store: Arc<dyn ChunkStore>,
    pub dir: PathBuf,
    pub admin_token: String,
    /// Reads jobs and logs (the dashboard's read-only view); changes nothing.
    pub viewer_token: String,
    pub boot_dir: Option<PathBuf>,
    /// The enrollment token network boots get when they name no job or enrollment.
    pub boot_enroll: Option<String>,
    /// Verified manifests targets are reading, by (job, disk): parsed and checked once.
    pub manifests: std::sync::Mutex<std::collections::HashMap<(String, u32), Arc<crate::image::Manifest>>>,
    pub metrics: metrics::Metrics,
    /// How sources reach this receiver (URL and pin), once it listens: baked into the PXE menu.
    pub info: std::sync::OnceLock<ReceiverInfo>,
}

/// Writes a file only its owner can read (tokens, keys).
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("writing {}", path.display()))?;
    f.write_all(bytes)?;
    f.sync_all()?;
    Ok(())
}

/// A fresh random token: 32 bytes as hex.
pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).expect("the kernel's random source is available");
    hex::encode(b)
}

/// The token in `path`, created (random, mode 0600) when the file does not exist.
fn token_file(path: &Path) -> Result<String> {
    if !path.exists() {
        write_private(path, format!("{}\n", random_hex(32)).as_bytes())?;
    }
    Ok(fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?.trim().to_string())
}

/// Opens (creating on first start) the store directory: admin token, TLS identity, database.
pub fn open_state(dir: &Path) -> Result<AppState> {
    fs::create_dir_all(dir).with_context(|| format!("creating store {}", dir.display()))?;
    let admin_token = token_file(&dir.join("admin.token"))?;
    let viewer_token = token_file(&dir.join("viewer.token"))?;
    let db = db::Db::open(&dir.join("jobs.sqlite"))?;
    let store = LocalStore::open(dir).with_context(|| format!("opening the chunk store in {}", dir.display()))?;
    fs::create_dir_all(dir.join("manifests"))?;
    Ok(AppState {
        db,
        store: Arc::new(store),
        dir: dir.to_owned(),
        admin_token,
        viewer_token,
        boot_dir: None,
        boot_enroll: None,
        manifests: Default::default(),
        metrics: Default::default(),
        info: Default::default(),
    })
}

/// Runs the receiver until the process is stopped.
pub async fn serve(cfg: ServeConfig) -> Result<()> {
    let mut state = open_state(&cfg.store)?;
    state.boot_dir = cfg.boot_dir.clone();
    state.boot_enroll = cfg.boot_enroll.clone();
    let state = Arc::new(state);
    let listener =
        tokio::net::TcpListener::bind(cfg.listen).await.with_context(|| format!("listening on {}", cfg.listen))?;
    let local = listener.local_addr()?;
    // Tools on this machine use the listen address (loopback for a wildcard listener); sources
    // use the advertised host.
    let local_host = if local.ip().is_unspecified() { "127.0.0.1".to_string() } else { local.ip().to_string() };
    let host = cfg.advertise.clone().unwrap_or_else(|| local_host.clone());
    if cfg.advertise.is_none() && local.ip().is_unspecified() {
        println!("note: listening on every address; pass --advertise IP so that sources get a reachable URL");
    }
    let app = api::router(state.clone());
    if let Some(addr) = cfg.boot_listen {
        let boot =
            tokio::net::TcpListener::bind(addr).await.with_context(|| format!("listening on {addr} for boot files"))?;
        println!("boot files:   http://{}/boot/boot.ipxe", boot.local_addr()?);
        let router = api::boot_router(state.clone());
        tokio::spawn(async move {
            if let Err(e) = axum::serve(boot, router).await {
                log::error!("boot file server stopped: {e}");
            }
        });
    }
    if let Some(addr) = cfg.tftp_listen {
        let socket =
            tokio::net::UdpSocket::bind(addr).await.with_context(|| format!("listening on {addr} (UDP) for TFTP"))?;
        println!("TFTP:         {} (shimx64.efi for UEFI, undionly.kpxe for BIOS)", socket.local_addr()?);
        tokio::spawn(tftp::serve(socket, state.clone()));
    }
    let scheme = if cfg.plain_http { "http" } else { "https" };
    let pin = if cfg.plain_http {
        None
    } else {
        Some(tls::ensure_identity(&cfg.store.join("tls"), std::slice::from_ref(&host))?.pin)
    };
    let local_url = format!("{scheme}://{local_host}:{}", local.port());
    let url = format!("{scheme}://{host}:{}", local.port());
    let info =
        ReceiverInfo { url: local_url.clone(), pin: pin.clone(), source_url: (url != local_url).then(|| url.clone()) };
    fs::write(cfg.store.join("receiver.json"), serde_json::to_vec_pretty(&info)?)?;
    let _ = state.info.set(info);
    println!("ferry receiver listening on {local_url}");
    if url != local_url {
        println!("sources reach it at {url}");
    }
    println!("store:        {}", cfg.store.display());
    println!("admin token:  {}", cfg.store.join("admin.token").display());
    println!("viewer token: {} (read-only dashboard)", cfg.store.join("viewer.token").display());
    println!("dashboard:    {local_url}/");
    let security = match &pin {
        Some(pin) => {
            println!("certificate pin (SHA-256): {pin}");
            format!("ferry.pin={pin}")
        }
        None => {
            println!("WARNING: plain HTTP: disk data and tokens travel unencrypted");
            "ferry.plain_http=1".to_string()
        }
    };
    println!("boot sources with:\n  ferry.server={url} {security} ferry.job=<JOB> ferry.token=<TOKEN> ip=dhcp");
    println!("  (a wave: ferry.enroll=<TOKEN> instead of job and token; see ferry job enroll create)");
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    if cfg.plain_http {
        axum::serve(listener, app).await.context("serving HTTP")?;
        return Ok(());
    }
    let id = tls::ensure_identity(&cfg.store.join("tls"), &[])?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls::server_config(&id)?));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait and go on serving.
                log::warn!("accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let app = app.clone();
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    log::info!("TLS handshake with {peer} failed: {e}");
                    return;
                }
            };
            let io = hyper_util::rt::TokioIo::new(tls);
            let svc = hyper_util::service::TowerToHyperService::new(app);
            let builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
            if let Err(e) = builder.serve_connection(io, svc).await {
                log::debug!("connection from {peer} ended: {e}");
            }
        });
    }
}
