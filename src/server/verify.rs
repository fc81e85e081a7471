//! The receiver's own proof that a disk arrived whole, before it says so: the manifest's ids
//! merge up the BLAKE3 tree to its whole-disk hash, every data chunk is in the store, and every
//! chunk marked zero has the id of zeros at its offset (else an export would write zeros where
//! data was). A verified manifest is kept durably beside the chunks.

use super::error::ApiResult;
use super::AppState;
use crate::image::treehash::chunk_id;
use crate::image::{hasher, zero_ids, Manifest};
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

/// The first chunk marked zero whose id is not that of zeros at its offset. Whole chunks are
/// checked against the ids of zeros this receiver remembers (hashed once per place, shared by
/// every disk of a wave: `image::zero_ids`); a short last chunk, a disk of one chunk, or a disk
/// past what is remembered is hashed here.
fn first_bad_zero(m: &Manifest) -> Option<usize> {
    use rayon::prelude::*;
    let whole = |i: u64| m.size > m.chunk_size && m.chunk_range(i).1 == m.chunk_size;
    let last_whole_zero = (0..m.chunks.len()).rev().find(|&i| m.chunks[i].zero && whole(i as u64));
    let remembered = last_whole_zero.and_then(|i| zero_ids::shared().first(m.chunk_size, i + 1));
    let zeros = vec![0u8; m.chunk_size.min(m.size) as usize];
    let bad = m.chunks.par_iter().enumerate().filter(|(_, c)| c.zero).find_first(|(i, c)| {
        let expected = match &remembered {
            Some(ids) if whole(*i as u64) => ids[*i],
            _ => {
                let (offset, len) = m.chunk_range(*i as u64);
                let data = &zeros[..len as usize];
                debug_assert!(hasher::is_zero(data));
                chunk_id(data, offset, m.size, m.chunk_size)
            }
        };
        expected != c.id
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::disk::DiskReader;

    const CHUNK: u64 = 64 * 1024;

    /// The manifest of a disk of `chunks` (true: data, false: zeros), the last one `last_len`
    /// bytes long.
    fn manifest_of(chunks: &[bool], last_len: u64) -> Manifest {
        let mut bytes = vec![];
        for (i, &data) in chunks.iter().enumerate() {
            let len = if i + 1 == chunks.len() { last_len } else { CHUNK };
            bytes.extend((0..len).map(|b| if data { (b % 251) as u8 + 1 } else { 0 }));
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), &bytes).unwrap();
        let disk = Arc::new(DiskReader::open(file.path(), None).unwrap());
        crate::image::build_manifest(disk, CHUNK, 2, |_| {}).unwrap()
    }

    #[test]
    fn a_chunk_marked_zero_must_have_the_id_of_zeros_at_its_place() {
        let m = manifest_of(&[true, false, false, true, false], 1000);
        let zeros: Vec<bool> = m.chunks.iter().map(|c| c.zero).collect();
        assert_eq!(zeros, [false, true, true, false, true]);
        assert_eq!(first_bad_zero(&m), None, "the source's own manifest");
        // Data marked zero (an export would write zeros there): found, remembered ids or not.
        let mut lying = m.clone();
        lying.chunks[3].zero = true;
        assert_eq!(first_bad_zero(&lying), Some(3));
        // The id of zeros from another place: the ids of zeros differ by offset.
        let mut moved = m.clone();
        moved.chunks[2].id = m.chunks[1].id;
        assert_eq!(first_bad_zero(&moved), Some(2));
        // The short last chunk is hashed, not looked up.
        let mut short = m.clone();
        short.chunks[4].id = m.chunks[1].id;
        assert_eq!(first_bad_zero(&short), Some(4));
        // A disk of one zero chunk: its id is the whole-disk hash.
        let one = manifest_of(&[false], 4096);
        assert_eq!(first_bad_zero(&one), None);
        let mut one_wrong = one.clone();
        one_wrong.chunks[0].id = m.chunks[1].id;
        assert_eq!(first_bad_zero(&one_wrong), Some(0));
    }
}
