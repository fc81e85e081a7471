//! Serving connections without letting slow, idle or hostile clients crowd out real ones:
//! a bounded number of connections (from the process's file-descriptor limit), a TLS handshake
//! deadline, a deadline for a request's headers (HTTP/1, which also ends an idle keep-alive
//! connection), a bounded number of HTTP/2 streams per connection, and an idle deadline for
//! connections with no request in flight and no byte moving. When every slot is taken, the
//! connection idle the longest makes room for the new one: a flood of idle connections cannot
//! keep an agent or `/api/v1/health` out.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::Router;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Notify;

/// How connections are bounded.
#[derive(Clone, Debug)]
pub struct Limits {
    pub max_connections: usize,
    pub handshake: Duration,
    pub header_read: Duration,
    pub idle: Duration,
    pub h2_streams: u32,
}

impl Limits {
    /// The defaults, with room for as many connections as the file-descriptor limit allows
    /// after what the receiver needs besides (its database, chunk files being written, the
    /// other listeners).
    pub fn for_this_process() -> Self {
        let nofile = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
            .map(|(soft, _)| soft)
            .unwrap_or(1024);
        Limits {
            max_connections: connections_for(nofile),
            handshake: Duration::from_secs(10),
            header_read: Duration::from_secs(15),
            idle: Duration::from_secs(60),
            h2_streams: 32,
        }
    }
}

/// Connections for a file-descriptor limit: half of what is left after a reserve, so that each
/// connection may also have a chunk file open, and never fewer than 16.
fn connections_for(nofile: u64) -> usize {
    let reserve = 64;
    (nofile.saturating_sub(reserve) / 2).clamp(16, 4096) as usize
}

fn millis(since: Instant) -> u64 {
    since.elapsed().as_millis() as u64
}

/// One connection, as the listener sees it.
struct Conn {
    /// Requests in flight.
    busy: AtomicUsize,
    /// When a byte last moved or a request last began or ended (ms since the listener began).
    last_active: AtomicU64,
    close: Notify,
}

impl Conn {
    fn idle_for(&self, epoch: Instant) -> Option<Duration> {
        (self.busy.load(Ordering::Relaxed) == 0)
            .then(|| Duration::from_millis(millis(epoch).saturating_sub(self.last_active.load(Ordering::Relaxed))))
    }
    fn touch(&self, epoch: Instant) {
        self.last_active.store(millis(epoch), Ordering::Relaxed);
    }
}

/// The open connections of one listener.
struct Registry {
    epoch: Instant,
    conns: Mutex<BTreeMap<u64, Arc<Conn>>>,
    next_id: AtomicU64,
    freed: Notify,
    max: usize,
}

impl Registry {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, Arc<Conn>>> {
        self.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for a free slot: at the limit, the connection idle the longest is asked to close;
    /// when every connection is busy, the next one waits until one ends.
    async fn admit(&self) {
        loop {
            let freed = self.freed.notified();
            {
                let conns = self.lock();
                if conns.len() < self.max {
                    return;
                }
                let idlest =
                    conns.values().filter_map(|c| c.idle_for(self.epoch).map(|d| (d, c))).max_by_key(|(d, _)| *d);
                if let Some((_, c)) = idlest {
                    c.close.notify_one();
                }
            }
            freed.await;
        }
    }

    fn register(self: &Arc<Self>) -> (u64, Arc<Conn>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            busy: AtomicUsize::new(0),
            last_active: AtomicU64::new(millis(self.epoch)),
            close: Notify::new(),
        });
        self.lock().insert(id, conn.clone());
        (id, conn)
    }

    fn remove(&self, id: u64) {
        self.lock().remove(&id);
        self.freed.notify_waiters();
    }
}

/// Serves `app` on `listener` (over TLS when `tls` is given) until the process ends.
pub async fn serve(listener: TcpListener, app: Router, tls: Option<tokio_rustls::TlsAcceptor>, limits: Limits) {
    let registry = Arc::new(Registry {
        epoch: Instant::now(),
        conns: Mutex::new(BTreeMap::new()),
        next_id: AtomicU64::new(0),
        freed: Notify::new(),
        max: limits.max_connections,
    });
    log::debug!("serving at most {} connections on {:?}", limits.max_connections, listener.local_addr());
    loop {
        registry.admit().await;
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: make room, wait, and go on serving.
                log::warn!("accept failed: {e}");
                if let Some(c) = registry.lock().values().find(|c| c.idle_for(registry.epoch).is_some()) {
                    c.close.notify_one();
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = tcp.set_nodelay(true);
        let (id, conn) = registry.register();
        let (registry, app, tls, limits) = (registry.clone(), app.clone(), tls.clone(), limits.clone());
        tokio::spawn(async move {
            let ended = serve_one(tcp, app, tls, &limits, &conn, registry.epoch);
            tokio::select! {
                why = ended => log::debug!("connection from {peer} ended: {why}"),
                _ = conn.close.notified() => log::debug!("connection from {peer} closed to make room"),
                _ = watch_idle(&conn, registry.epoch, limits.idle) => log::debug!("connection from {peer} idle, closed"),
            }
            registry.remove(id);
        });
    }
}

/// Ends when the connection has had no request in flight and no byte moving for `idle`.
async fn watch_idle(conn: &Conn, epoch: Instant, idle: Duration) {
    loop {
        tokio::time::sleep(idle / 4).await;
        if conn.idle_for(epoch).is_some_and(|d| d >= idle) {
            return;
        }
    }
}

async fn serve_one(
    tcp: tokio::net::TcpStream,
    app: Router,
    tls: Option<tokio_rustls::TlsAcceptor>,
    limits: &Limits,
    conn: &Arc<Conn>,
    epoch: Instant,
) -> String {
    let tracked = Tracked { inner: tcp, conn: conn.clone(), epoch };
    match tls {
        Some(acceptor) => match tokio::time::timeout(limits.handshake, acceptor.accept(tracked)).await {
            Ok(Ok(stream)) => http(stream, app, limits, conn, epoch).await,
            Ok(Err(e)) => format!("TLS handshake failed: {e}"),
            Err(_) => "no TLS handshake in time".into(),
        },
        None => http(tracked, app, limits, conn, epoch).await,
    }
}

/// The most an HTTP/1.1 connection buffers of what it read (hyper's default is ~400 KiB). Small
/// enough that each buffer comes from the heap under the 128 KiB mmap threshold
/// (`util::return_large_buffers_to_the_system`) instead of a fresh mmap every few TLS records:
/// measured with scripts/bench-send, 115,000 page faults per 2 GiB received at the default and
/// 13,000 at 64 KiB, and less CPU per GiB; a chunk body still arrives in TLS-record-sized frames.
/// It also bounds a request head: one over 64 KiB is refused (431).
const HTTP1_READ_BUFFER: usize = 64 * 1024;

async fn http<IO>(io: IO, app: Router, limits: &Limits, conn: &Arc<Conn>, epoch: Instant) -> String
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = Counted { inner: app, conn: conn.clone(), epoch };
    let svc = hyper_util::service::TowerToHyperService::new(svc);
    let mut builder = hyper_util::server::conn::auto::Builder::new(hyper_util::rt::TokioExecutor::new());
    builder
        .http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(limits.header_read)
        .max_buf_size(HTTP1_READ_BUFFER);
    builder
        .http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(limits.h2_streams)
        .keep_alive_interval(Some(Duration::from_secs(30)))
        .keep_alive_timeout(Duration::from_secs(20));
    match builder.serve_connection(hyper_util::rt::TokioIo::new(io), svc).await {
        Ok(()) => "closed".into(),
        Err(e) => e.to_string(),
    }
}

/// A connection's stream that notes when a byte moves.
struct Tracked<T> {
    inner: T,
    conn: Arc<Conn>,
    epoch: Instant,
}

impl<T: AsyncRead + Unpin> AsyncRead for Tracked<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let r = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(r, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.touch(self.epoch);
        }
        r
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Tracked<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        let r = Pin::new(&mut self.inner).poll_write(cx, buf);
        if matches!(r, Poll::Ready(Ok(n)) if n > 0) {
            self.conn.touch(self.epoch);
        }
        r
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// The app, counting the requests in flight on its connection.
#[derive(Clone)]
struct Counted {
    inner: Router,
    conn: Arc<Conn>,
    epoch: Instant,
}

/// Decrements the count when the request's answer is done (or dropped).
struct InFlight(Arc<Conn>, Instant);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.busy.fetch_sub(1, Ordering::Relaxed);
        self.0.touch(self.1);
    }
}

impl<B> tower::Service<axum::http::Request<B>> for Counted
where
    B: axum::body::HttpBody<Data = bytes::Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    type Response = axum::response::Response;
    type Error = std::convert::Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: axum::http::Request<B>) -> Self::Future {
        self.conn.busy.fetch_add(1, Ordering::Relaxed);
        self.conn.touch(self.epoch);
        let guard = InFlight(self.conn.clone(), self.epoch);
        let mut app = self.inner.clone();
        let req = req.map(axum::body::Body::new);
        Box::pin(async move {
            let resp = tower::Service::call(&mut app, req).await;
            drop(guard);
            resp
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_connection_cap_follows_the_descriptor_limit() {
        assert_eq!(connections_for(1024), 480);
        assert_eq!(connections_for(256), 96);
        assert_eq!(connections_for(64), 16);
        assert_eq!(connections_for(1 << 20), 4096);
    }

    #[tokio::test]
    async fn the_idlest_connection_makes_room_when_all_slots_are_taken() {
        let r = Arc::new(Registry {
            epoch: Instant::now(),
            conns: Mutex::new(BTreeMap::new()),
            next_id: AtomicU64::new(0),
            freed: Notify::new(),
            max: 2,
        });
        let (a, ca) = r.register();
        let (_b, cb) = r.register();
        cb.busy.fetch_add(1, Ordering::Relaxed);
        // a is idle: asked to close; once it is gone, the next connection is admitted.
        let r2 = r.clone();
        let admitted = tokio::spawn(async move { r2.admit().await });
        tokio::time::timeout(Duration::from_secs(2), ca.close.notified())
            .await
            .expect("the idle one was asked to close");
        r.remove(a);
        tokio::time::timeout(Duration::from_secs(2), admitted).await.expect("admitted").unwrap();
        assert_eq!(r.lock().len(), 1);
    }
}
