//! Boot files over HTTP (`GET`/`HEAD /boot/NAME`, on the API listener and the plain-HTTP boot
//! listener): streamed in pieces from disk, so many machines booting at once keep the receiver's
//! memory flat, with single byte ranges answered (`Range: bytes=…`, 206).

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

use super::super::error::ApiErr;
use super::super::AppState;
use super::files::{boot_params, resolve, BootContent, BootError};
use crate::wire::Code;

/// How much is read from disk at a time for one response.
const PIECE: usize = 256 << 10;

pub async fn boot_file(
    State(st): State<Arc<AppState>>,
    Path(file): Path<String>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
) -> Response {
    let params = boot_params(&query);
    let content = match tokio::task::spawn_blocking(move || resolve(&st, &file, &params)).await {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return boot_error(e),
        Err(e) => return ApiErr::from(anyhow::anyhow!("resolving a boot file: {e}")).into_response(),
    };
    let len = content.len();
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok()).map(|r| parse_range(r, len));
    let (status, start, end) = match range {
        None | Some(Range::Ignored) => (StatusCode::OK, 0, len),
        Some(Range::Bytes(s, e)) => (StatusCode::PARTIAL_CONTENT, s, e),
        Some(Range::Unsatisfiable) => {
            return (StatusCode::RANGE_NOT_SATISFIABLE, [(header::CONTENT_RANGE, format!("bytes */{len}"))])
                .into_response()
        }
    };
    let mut resp = Response::new(Body::from_stream(pieces(content.clone(), start, end)));
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content.content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    if status == StatusCode::PARTIAL_CONTENT {
        if let Ok(v) = HeaderValue::from_str(&format!("bytes {start}-{}/{len}", end - 1)) {
            h.insert(header::CONTENT_RANGE, v);
        }
    }
    resp
}

fn boot_error(e: BootError) -> Response {
    let code = match e {
        BootError::NotFound(_) => Code::NotFound,
        BootError::NoBootDir => Code::NoBootDir,
        BootError::Starting => Code::Starting,
        BootError::BadImage(_) => Code::BadBootImage,
    };
    if matches!(e, BootError::BadImage(_)) {
        log::error!("{e}");
    }
    ApiErr::new(code, e.to_string()).into_response()
}

/// The bytes `start..end` of `content`, a piece at a time, each read on a blocking thread.
fn pieces(content: BootContent, start: u64, end: u64) -> impl futures_util::Stream<Item = std::io::Result<Bytes>> {
    futures_util::stream::try_unfold(start, move |at| {
        let content = content.clone();
        async move {
            if at >= end {
                return Ok(None);
            }
            let n = PIECE.min((end - at) as usize);
            let piece = tokio::task::spawn_blocking(move || {
                let mut buf = vec![0u8; n];
                let got = content.read_at(at, &mut buf)?;
                buf.truncate(got);
                Ok::<_, std::io::Error>(buf)
            })
            .await
            .map_err(std::io::Error::other)??;
            if piece.is_empty() {
                // The file shrank under us: end the body short rather than loop.
                return Err(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "boot file shrank while being sent",
                ));
            }
            let next = at + piece.len() as u64;
            Ok(Some((Bytes::from(piece), next)))
        }
    })
}

/// A `Range` header, as far as boot files need it.
#[derive(Debug, PartialEq, Eq)]
enum Range {
    /// `bytes=START-END` (END exclusive here).
    Bytes(u64, u64),
    /// Not one byte of the file.
    Unsatisfiable,
    /// Several ranges or another unit: answered with the whole file, as RFC 9110 allows.
    Ignored,
}

fn parse_range(header: &str, len: u64) -> Range {
    let Some(spec) = header.trim().strip_prefix("bytes=") else { return Range::Ignored };
    if spec.contains(',') {
        return Range::Ignored;
    }
    let Some((a, b)) = spec.split_once('-') else { return Range::Ignored };
    let (a, b) = (a.trim(), b.trim());
    let parsed = match (a.is_empty(), b.is_empty()) {
        // bytes=-N: the last N bytes.
        (true, false) => b.parse::<u64>().ok().map(|n| (len.saturating_sub(n), len, n > 0)),
        (false, true) => a.parse::<u64>().ok().map(|s| (s, len, true)),
        (false, false) => match (a.parse::<u64>(), b.parse::<u64>()) {
            (Ok(s), Ok(e)) if s <= e => Some((s, (e + 1).min(len), true)),
            _ => None,
        },
        (true, true) => None,
    };
    match parsed {
        None => Range::Ignored,
        Some((s, e, nonempty)) if nonempty && s < e && s < len => Range::Bytes(s, e),
        Some(_) => Range::Unsatisfiable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-99", 1000), Range::Bytes(0, 100));
        assert_eq!(parse_range("bytes=990-2000", 1000), Range::Bytes(990, 1000));
        assert_eq!(parse_range("bytes=500-", 1000), Range::Bytes(500, 1000));
        assert_eq!(parse_range("bytes=-10", 1000), Range::Bytes(990, 1000));
        assert_eq!(parse_range("bytes=-5000", 1000), Range::Bytes(0, 1000));
        assert_eq!(parse_range("bytes=1000-", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=-0", 1000), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=0-0", 0), Range::Unsatisfiable);
        assert_eq!(parse_range("bytes=5-3", 1000), Range::Ignored);
        assert_eq!(parse_range("bytes=0-1,5-6", 1000), Range::Ignored);
        assert_eq!(parse_range("items=0-1", 1000), Range::Ignored);
        assert_eq!(parse_range("bytes=x-", 1000), Range::Ignored);
    }
}
