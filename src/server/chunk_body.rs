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

/// The most bytes of a refused body read and dropped: the largest chunk and then some, as the
/// route's body limit allows.
const DRAIN_AT_MOST: usize = MAX_CHUNK_SIZE as usize + (1 << 20);

/// Reads `body`, at most `limit` bytes, for chunk `index`.
pub async fn read(body: Body, limit: usize, index: u64) -> ApiResult<Bytes> {
    let mut buf = aligned_buffers::take(limit);
    let mut len = 0;
    let mut frames = body.into_data_stream();
    while let Some(frame) = frames.next().await {
        let frame =
            frame.map_err(|e| ApiErr::new(Code::BadLength, format!("chunk {index}: the body broke off: {e}")))?;
        if frame.len() > limit - len {
            aligned_buffers::give_back(buf);
            // The rest is read and dropped, up to the most any chunk upload may carry, so that
            // an agent hears why rather than a connection cut mid-upload; past that the
            // connection is cut.
            let mut total = len + frame.len();
            while total <= DRAIN_AT_MOST {
                match frames.next().await {
                    Some(Ok(more)) => total += more.len(),
                    _ => break,
                }
            }
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
