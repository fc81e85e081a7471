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

pub fn verify_manifest(st: &AppState, m: &Manifest) -> Result<(), (Code, String)> {
    st.store.sync().map_err(|e| (Code::StoreError, format!("making the store durable: {e}")))?;
    m.validate().map_err(|e| (Code::ManifestInvalid, format!("disk manifest rejected: {e}")))?;
    for (i, c) in m.chunks.iter().enumerate() {
        if c.zero {
            continue;
        }
        // A stored id counts only at the index it was verified for: ids of this disk's chunks
        // listed in another order still merge to a root, but are not this disk.
        match st.store.contains(&c.id, Place::of(m.size, m.chunk_size, i as u64)) {
            Ok(true) => {}
            Ok(false) => {
                return Err((
                    Code::ChunkMissing,
                    format!("chunk {i} (id {}) was never received for this place on the disk", hex::encode(c.id)),
                ))
            }
            Err(e) => return Err((Code::StoreError, format!("reading the store: {e}"))),
        }
    }
    use rayon::prelude::*;
    let zeros = vec![0u8; m.chunk_size as usize];
    let bad_zero = m.chunks.par_iter().enumerate().filter(|(_, c)| c.zero).find_any(|(i, c)| {
        let (offset, len) = m.chunk_range(*i as u64);
        let data = &zeros[..len as usize];
        debug_assert!(hasher::is_zero(data));
        chunk_id(data, offset, m.size, m.chunk_size) != c.id
    });
    if let Some((i, _)) = bad_zero {
        return Err((Code::ZeroMismatch, format!("chunk {i} is marked all-zero but its id is not the id of zeros")));
    }
    Ok(())
}

/// `STORE/manifests/JOB/N.json`, written atomically and durably.
pub fn keep_manifest(st: &AppState, job: &str, disk: u32, m: &Manifest) -> ApiResult<()> {
    let dir = st.dir.join("manifests").join(job);
    std::fs::create_dir_all(&dir).map_err(anyhow::Error::from)?;
    let body = serde_json::to_vec(m).map_err(anyhow::Error::from)?;
    crate::fsx::write_atomic(&dir.join(format!("{disk}.json")), &body).map_err(anyhow::Error::from)?;
    Ok(())
}
