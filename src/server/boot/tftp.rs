//! A read-only TFTP server for PXE (`ferry serve --tftp-listen`): RFC 1350 with option
//! negotiation (RFC 2347) for `blksize` (RFC 2348), `timeout` and `tsize` (RFC 2349), octet mode,
//! block numbers rolling over past 65535 as firmware expects. It serves exactly what the HTTP
//! boot listener serves (see `boot_files`), the network GRUB's menu made with the receiver's
//! URL and pin. Writes are refused; each transfer has its own socket (its transfer id), a
//! bounded number run at once, and a file is read piece by piece as it is sent.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::UdpSocket;
use tokio::sync::Semaphore;

use super::super::AppState;
use super::files::{resolve, BootContent, BootError};

const RRQ: u16 = 1;
const WRQ: u16 = 2;
const DATA: u16 = 3;
const ACK: u16 = 4;
const ERROR: u16 = 5;
const OACK: u16 = 6;

/// RFC 1350's error codes that this server sends.
const ERR_UNDEFINED: u16 = 0;
const ERR_NOT_FOUND: u16 = 1;
const ERR_ACCESS: u16 = 2;
const ERR_ILLEGAL: u16 = 4;

const DEFAULT_BLKSIZE: usize = 512;
/// RFC 2348's largest block.
const MAX_BLKSIZE: usize = 65464;
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1);
/// Sends of one packet before the transfer is given up.
const TRIES: u32 = 6;
/// Transfers at once; a PXE wave of 50 machines needs about 3 each (shim, GRUB, menu, kernel,
/// initramfs in turn).
const MAX_TRANSFERS: usize = 256;
/// However slowly a client acknowledges, a transfer ends after this.
const MAX_TRANSFER_TIME: Duration = Duration::from_secs(600);
/// Read from disk at a time.
const READ_AHEAD: usize = 256 << 10;

/// A packet a client sends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Read { file: String, mode: String, options: Vec<(String, String)> },
    Write,
    Ack(u16),
    Error(u16, String),
    Other(u16),
}

/// Parses a client's packet; `None` for one too short or malformed to answer.
pub fn parse(b: &[u8]) -> Option<Packet> {
    let op = u16::from_be_bytes(b.get(..2)?.try_into().ok()?);
    match op {
        RRQ => {
            let fields: Vec<&[u8]> = b[2..].split(|c| *c == 0).collect();
            // "file\0mode\0[opt\0value\0]*": the split leaves an empty last field.
            if fields.len() < 3 || !fields.last()?.is_empty() || fields.len() % 2 == 0 {
                return None;
            }
            let text = |f: &[u8]| String::from_utf8(f.to_vec()).ok();
            let options = fields[2..fields.len() - 1]
                .chunks(2)
                .map(|kv| Some((text(kv[0])?.to_ascii_lowercase(), text(kv[1])?)))
                .collect::<Option<Vec<_>>>()?;
            Some(Packet::Read { file: text(fields[0])?, mode: text(fields[1])?.to_ascii_lowercase(), options })
        }
        WRQ => Some(Packet::Write),
        ACK => Some(Packet::Ack(u16::from_be_bytes(b.get(2..4)?.try_into().ok()?))),
        ERROR => {
            let code = u16::from_be_bytes(b.get(2..4)?.try_into().ok()?);
            let msg = b[4..].split(|c| *c == 0).next().unwrap_or_default();
            Some(Packet::Error(code, String::from_utf8_lossy(msg).into_owned()))
        }
        other => Some(Packet::Other(other)),
    }
}

fn error_packet(code: u16, msg: &str) -> Vec<u8> {
    let mut p = [ERROR.to_be_bytes(), code.to_be_bytes()].concat();
    p.extend_from_slice(msg.as_bytes());
    p.push(0);
    p
}

fn data_packet(block: u16, payload: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(4 + payload.len());
    p.extend_from_slice(&DATA.to_be_bytes());
    p.extend_from_slice(&block.to_be_bytes());
    p.extend_from_slice(payload);
    p
}

fn oack_packet(options: &[(String, String)]) -> Vec<u8> {
    let mut p = OACK.to_be_bytes().to_vec();
    for (k, v) in options {
        p.extend_from_slice(k.as_bytes());
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        p.push(0);
    }
    p
}

/// What a transfer runs with after the client's options.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Negotiated {
    pub blksize: usize,
    pub timeout: Duration,
    /// The options acknowledged in an OACK (none: no OACK, data starts at once).
    pub acked: Vec<(String, String)>,
}

/// Takes the options this server knows (unknown ones, such as `windowsize`, are not
/// acknowledged, so the client goes on without them).
pub fn negotiate(options: &[(String, String)], file_len: u64) -> Negotiated {
    let mut n = Negotiated { blksize: DEFAULT_BLKSIZE, timeout: DEFAULT_TIMEOUT, acked: vec![] };
    for (k, v) in options {
        match k.as_str() {
            "blksize" => {
                if let Ok(b) = v.trim().parse::<usize>() {
                    if b >= 8 {
                        n.blksize = b.min(MAX_BLKSIZE);
                        n.acked.push((k.clone(), n.blksize.to_string()));
                    }
                }
            }
            "timeout" => {
                if let Ok(t) = v.trim().parse::<u64>() {
                    if (1..=255).contains(&t) {
                        n.timeout = Duration::from_secs(t);
                        n.acked.push((k.clone(), t.to_string()));
                    }
                }
            }
            // A reader asks with 0 and is told the size.
            "tsize" => n.acked.push((k.clone(), file_len.to_string())),
            _ => {}
        }
    }
    n
}

/// A requested path as a boot file name: no leading slash, forward slashes, nothing that climbs.
pub fn clean_name(file: &str) -> Option<String> {
    let f = file.replace('\\', "/");
    let f = f.trim_start_matches('/');
    let ok = !f.is_empty() && f.len() <= 255 && !f.split('/').any(|p| p.is_empty() || p == "." || p == "..");
    (ok && !f.bytes().any(|b| b.is_ascii_control())).then(|| f.to_string())
}

/// Serves TFTP on `socket` until the process ends.
pub async fn serve(socket: UdpSocket, state: Arc<AppState>) {
    let socket = Arc::new(socket);
    let local_ip = socket.local_addr().map(|a| a.ip()).unwrap_or(IpAddr::from([0, 0, 0, 0]));
    let slots = Arc::new(Semaphore::new(MAX_TRANSFERS));
    let mut buf = vec![0u8; 2048];
    loop {
        let (n, peer) = match socket.recv_from(&mut buf).await {
            Ok(r) => r,
            Err(e) => {
                log::warn!("tftp: receiving: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let reply = |p: Vec<u8>| {
            let socket = socket.clone();
            async move {
                let _ = socket.send_to(&p, peer).await;
            }
        };
        match parse(&buf[..n]) {
            Some(Packet::Read { file, mode, options }) => {
                let Ok(slot) = slots.clone().try_acquire_owned() else {
                    reply(error_packet(ERR_UNDEFINED, "busy: too many transfers, try again")).await;
                    continue;
                };
                let state = state.clone();
                tokio::spawn(async move {
                    let started = Instant::now();
                    match tokio::time::timeout(
                        MAX_TRANSFER_TIME,
                        transfer(state, local_ip, peer, &file, &mode, &options),
                    )
                    .await
                    {
                        Ok(Ok(sent)) => log::info!(
                            "tftp: sent {file} to {peer} ({sent} bytes, {:.1} s)",
                            started.elapsed().as_secs_f64()
                        ),
                        Ok(Err(e)) => log::info!("tftp: {file} to {peer}: {e}"),
                        Err(_) => log::info!("tftp: {file} to {peer}: took over {MAX_TRANSFER_TIME:?}, stopped"),
                    }
                    drop(slot);
                });
            }
            Some(Packet::Write) => {
                reply(error_packet(ERR_ACCESS, "ferry serves boot files only; writing is refused")).await
            }
            // A stray packet for a transfer that ended, or nonsense: nothing to answer.
            _ => {}
        }
    }
}

/// One read transfer on its own socket; returns the bytes sent.
async fn transfer(
    state: Arc<AppState>,
    local_ip: IpAddr,
    peer: SocketAddr,
    file: &str,
    mode: &str,
    options: &[(String, String)],
) -> Result<u64, String> {
    let sock = UdpSocket::bind(SocketAddr::new(local_ip, 0)).await.map_err(|e| format!("socket: {e}"))?;
    sock.connect(peer).await.map_err(|e| format!("connect: {e}"))?;
    let refuse = |code: u16, msg: String| {
        let p = error_packet(code, &msg);
        let sock = &sock;
        async move {
            let _ = sock.send(&p).await;
            Err::<u64, String>(msg)
        }
    };
    if mode != "octet" {
        return refuse(ERR_ILLEGAL, format!("mode {mode:?}: only octet (binary) transfers are served")).await;
    }
    let Some(name) = clean_name(file) else {
        return refuse(ERR_ACCESS, format!("{file:?} is not a boot file name")).await;
    };
    let content = match tokio::task::spawn_blocking(move || resolve(&state, &name, &HashMap::new())).await {
        Ok(Ok(c)) => c,
        Ok(Err(BootError::NotFound(n))) => return refuse(ERR_NOT_FOUND, format!("no boot file {n}")).await,
        Ok(Err(e)) => return refuse(ERR_UNDEFINED, e.to_string()).await,
        Err(e) => return refuse(ERR_UNDEFINED, format!("internal error: {e}")).await,
    };
    let neg = negotiate(options, content.len());
    let mut pending = Pending { sock: &sock, timeout: neg.timeout, buf: vec![0u8; 2048] };
    if !neg.acked.is_empty() {
        pending.send_until_acked(&oack_packet(&neg.acked), 0).await?;
    }
    let mut reader = Reader { content, at: 0, buf: vec![], buf_at: 0 };
    let (mut block, mut sent) = (0u16, 0u64);
    loop {
        block = block.wrapping_add(1);
        let payload = reader.next(neg.blksize).await.map_err(|e| format!("reading: {e}"))?;
        pending.send_until_acked(&data_packet(block, &payload), block).await?;
        sent += payload.len() as u64;
        if payload.len() < neg.blksize {
            return Ok(sent);
        }
    }
}

/// Sends a packet and waits for its acknowledgement, sending it again on silence.
struct Pending<'a> {
    sock: &'a UdpSocket,
    timeout: Duration,
    buf: Vec<u8>,
}

impl Pending<'_> {
    async fn send_until_acked(&mut self, packet: &[u8], block: u16) -> Result<(), String> {
        for _ in 0..TRIES {
            self.sock.send(packet).await.map_err(|e| format!("sending: {e}"))?;
            let deadline = tokio::time::Instant::now() + self.timeout;
            // A duplicate acknowledgement of an earlier block is not answered (the Sorcerer's
            // Apprentice bug): only silence makes the packet go again.
            loop {
                let Ok(got) = tokio::time::timeout_at(deadline, self.sock.recv(&mut self.buf)).await else { break };
                let n = got.map_err(|e| format!("receiving: {e}"))?;
                match parse(&self.buf[..n]) {
                    Some(Packet::Ack(b)) if b == block => return Ok(()),
                    Some(Packet::Error(code, msg)) => return Err(format!("the client stopped (error {code}: {msg})")),
                    _ => {}
                }
            }
        }
        Err(format!("no acknowledgement of block {block} after {TRIES} tries"))
    }
}

/// Reads a boot file ahead in large pieces, handing out blocks.
struct Reader {
    content: BootContent,
    at: u64,
    buf: Vec<u8>,
    buf_at: usize,
}

impl Reader {
    async fn next(&mut self, len: usize) -> std::io::Result<Vec<u8>> {
        if self.buf.len() - self.buf_at < len && self.at < self.content.len() {
            let (content, at, want) = (self.content.clone(), self.at, READ_AHEAD.max(len));
            let fresh = tokio::task::spawn_blocking(move || {
                let mut b = vec![0u8; want];
                let n = content.read_at(at, &mut b)?;
                b.truncate(n);
                Ok::<_, std::io::Error>(b)
            })
            .await
            .map_err(std::io::Error::other)??;
            self.at += fresh.len() as u64;
            self.buf.drain(..self.buf_at);
            self.buf_at = 0;
            self.buf.extend_from_slice(&fresh);
        }
        let end = (self.buf_at + len).min(self.buf.len());
        let block = self.buf[self.buf_at..end].to_vec();
        self.buf_at = end;
        Ok(block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_read_requests_with_options() {
        let p = parse(b"\x00\x01grub/grub.cfg\x00octet\x00blksize\x001024\x00TSIZE\x000\x00").unwrap();
        assert_eq!(
            p,
            Packet::Read {
                file: "grub/grub.cfg".into(),
                mode: "octet".into(),
                options: vec![("blksize".into(), "1024".into()), ("tsize".into(), "0".into())]
            }
        );
        assert_eq!(
            parse(b"\x00\x01f\x00NetASCII\x00"),
            Some(Packet::Read { file: "f".into(), mode: "netascii".into(), options: vec![] })
        );
        assert_eq!(parse(b"\x00\x04\x01\x02"), Some(Packet::Ack(0x0102)));
        assert_eq!(parse(b"\x00\x05\x00\x08abort\x00"), Some(Packet::Error(8, "abort".into())));
        assert_eq!(parse(b"\x00\x02f\x00octet\x00"), Some(Packet::Write));
        // Truncated or unterminated: not answered.
        for bad in [&b"\x00"[..], b"\x00\x01f\x00octet", b"\x00\x01f\x00octet\x00blksize\x00", b"\x00\x04\x01"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn negotiates_known_options_only() {
        let opts = |v: &[(&str, &str)]| v.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<Vec<_>>();
        let n = negotiate(&opts(&[("blksize", "1468"), ("tsize", "0"), ("windowsize", "4"), ("timeout", "3")]), 12345);
        assert_eq!(n.blksize, 1468);
        assert_eq!(n.timeout, Duration::from_secs(3));
        assert_eq!(n.acked, opts(&[("blksize", "1468"), ("tsize", "12345"), ("timeout", "3")]));
        let n = negotiate(&opts(&[("blksize", "99999"), ("timeout", "0")]), 1);
        assert_eq!((n.blksize, n.timeout), (MAX_BLKSIZE, DEFAULT_TIMEOUT));
        assert_eq!(n.acked, opts(&[("blksize", "65464")]));
        let n = negotiate(&opts(&[("blksize", "4")]), 1);
        assert_eq!((n.blksize, n.acked.len()), (DEFAULT_BLKSIZE, 0));
        assert_eq!(oack_packet(&opts(&[("tsize", "7")])), b"\x00\x06tsize\x007\x00");
    }

    #[test]
    fn names_cannot_climb_out() {
        assert_eq!(clean_name("/grub/grub.cfg").as_deref(), Some("grub/grub.cfg"));
        assert_eq!(clean_name("\\shimx64.efi").as_deref(), Some("shimx64.efi"));
        for bad in ["", "/", "../etc/passwd", "grub/../../x", "a//b", "./x", "a\nb"] {
            assert_eq!(clean_name(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn packets_are_laid_out_as_the_rfc_says() {
        assert_eq!(data_packet(0xfffe, b"ab"), b"\x00\x03\xff\xfeab");
        assert_eq!(error_packet(1, "no"), b"\x00\x05\x00\x01no\x00");
    }
}
