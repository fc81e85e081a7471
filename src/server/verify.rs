//! The receiver's own proof that a disk arrived whole, before it says so: the manifest's ids
//! merge up the BLAKE3 tree to its whole-disk hash, every data chunk is in the store, and every
//! chunk marked zero has the id of zeros at its offset (else an export would write zeros where
//! data was). A verified manifest is kept durably beside the chunks.

use super::error::ApiResult;
use super::AppState;
use crate::image::treehash::chunk_id;
use crate::image::{hasher, Manifest};
use crate::store::Place;
use crate::wire::Code;

pub async fn verify_manifest(st: &AppState, m: &Manifest) -> Result<(), (Code, String)> {
    st.store.sync().await.map_err(|e| (Code::StoreError, format!("making the store durable: {e}")))?;
    m.validate().map_err(|e| (Code::ManifestInvalid, format!("disk manifest rejected: {e}")))?;
    // A stored id counts only at the index it was verified for: ids of this disk's chunks
    // listed in another order still merge to a root, but are not this disk.
    let data: Vec<usize> = (0..m.chunks.len()).filter(|&i| !m.chunks[i].zero).collect();
    let asked: Vec<_> = data.iter().map(|&i| (m.chunks[i].id, Place::of(m.size, m.chunk_size, i as u64))).collect();
    let absent = st.store.missing(&asked).await.map_err(|e| (Code::StoreError, format!("reading the store: {e}")))?;
    if let Some(&first) = absent.first() {
        let i = data[first];
        return Err((
            Code::ChunkMissing,
            format!("chunk {i} (id {}) was never received for this place on the disk", hex::encode(m.chunks[i].id)),
        ));
    }
    let m2 = m.clone();
    let bad_zero = tokio::task::spawn_blocking(move || first_bad_zero(&m2))
        .await
        .map_err(|e| (Code::StoreError, format!("checking zero chunks: {e}")))?;
    if let Some(i) = bad_zero {
        return Err((Code::ZeroMismatch, format!("chunk {i} is marked all-zero but its id is not the id of zeros")));
    }
    Ok(())
}

/// The first chunk marked zero whose id is not that of zeros at its offset.
fn first_bad_zero(m: &Manifest) -> Option<usize> {
    use rayon::prelude::*;
    let zeros = vec![0u8; m.chunk_size.min(m.size) as usize];
    let bad = m.chunks.par_iter().enumerate().filter(|(_, c)| c.zero).find_first(|(i, c)| {
        let (offset, len) = m.chunk_range(*i as u64);
        let data = &zeros[..len as usize];
        debug_assert!(hasher::is_zero(data));
        chunk_id(data, offset, m.size, m.chunk_size) != c.id
    });
    bad.map(|(i, _)| i)
}

/// Keeps the verified manifest in the store, durably, where every receiver and `ferry export`
/// find it.
pub async fn keep_manifest(st: &AppState, job: &str, disk: u32, m: &Manifest) -> ApiResult<()> {
    let body = serde_json::to_vec(m).map_err(anyhow::Error::from)?;
    st.store.put_manifest(job, disk, body).await.map_err(|e| {
        anyhow::anyhow!("keeping the manifest of job {job} disk {disk} in {}: {e}", st.store.describe())
    })?;
    Ok(())
}
