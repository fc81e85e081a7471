//! A chunk upload's body, read frame by frame into a kept page-aligned buffer: no growing
//! buffer, no fresh pages to fault in, and the bytes are hashed and written (around the page
//! cache) where they landed. Only called once the token was accepted and the chunk's place
//! checked; a body longer than the chunk is refused, never kept.

use axum::body::Body;
use bytes::Bytes;
use futures_util::StreamExt;

use super::error::{ApiErr, ApiResult};
use crate::fsx::aligned_buffers::{self, Filled};
use crate::image::treehash::MAX_CHUNK_SIZE;
use crate::wire::Code;

/// The most bytes of a refused body read and dropped: twice the largest chunk. A body read to
/// its end leaves nothing unread when the answer goes out, so the agent hears 413 rather than a
/// connection cut under its upload; one that says it is longer is refused unread.
const DRAIN_AT_MOST: usize = 2 * MAX_CHUNK_SIZE as usize;

/// Reads `body`, at most `limit` bytes, for chunk `index`. `declared` is its `Content-Length`.
pub async fn read(body: Body, declared: Option<u64>, limit: usize, index: u64) -> ApiResult<Bytes> {
    if let Some(n) = declared.filter(|&n| n > DRAIN_AT_MOST as u64) {
        return Err(ApiErr::new(Code::TooLarge, format!("chunk {index} is at most {limit} bytes; the body has {n}")));
    }
    let mut buf = aligned_buffers::take(limit);
    let mut len = 0;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| ApiErr::new(Code::BadLength, format!("chunk {index}: the body broke off: {e}")))?;
        if frame.len() > limit - len {
            aligned_buffers::give_back(buf);
            // The rest is read and dropped (bounded: see DRAIN_AT_MOST).
            let total = len + frame.len() + drain_stream(&mut frames).await;
            return Err(ApiErr::new(
                Code::TooLarge,
                format!("chunk {index} is at most {limit} bytes; the body has {total}"),
            ));
        }
        buf.as_mut_slice()[len..len + frame.len()].copy_from_slice(&frame);
        len += frame.len();
    }
    Ok(Bytes::from_owner(Filled::new(buf, len)))
}

/// Reads and drops what is left of `frames`, at most [`DRAIN_AT_MOST`] bytes; returns how much.
async fn drain_stream(frames: &mut axum::body::BodyDataStream) -> usize {
    let mut total = 0;
    while total <= DRAIN_AT_MOST {
        match frames.next().await {
            Some(Ok(more)) => total += more.len(),
            _ => break,
        }
    }
    total
}

/// Reads and drops an upload refused before its body was read (the token was accepted), so the
/// connection stays usable; one that says it is longer than [`DRAIN_AT_MOST`] is left unread.
pub async fn drain(body: Body, declared: Option<u64>) {
    if declared.is_some_and(|n| n > DRAIN_AT_MOST as u64) {
        return;
    }
    drain_stream(&mut body.into_data_stream()).await;
}
