//! The receiver's own proof that a disk arrived whole, before it says so: the manifest's ids
//! merge up the BLAKE3 tree to its whole-disk hash, every data chunk is in the store, and every
//! chunk marked zero has the id of zeros at its offset (else an export would write zeros where
//! data was). A verified manifest is kept durably beside the chunks.

use super::error::ApiResult;
use super::AppState;
use crate::image::treehash::chunk_id;
use crate::image::{hasher, zero_ids, ChunkEntry, Manifest};
use crate::store::Place;
use crate::wire::Code;

/// Checks `m` for disk `disk` of `job`: an inline manifest as it came, a paged one a page at a
/// time as the agent kept its pages here, so that a disk's ids are never all in memory.
pub async fn verify_manifest(st: &AppState, job: &str, disk: u32, m: &Manifest) -> Result<(), (Code, String)> {
    st.store.sync().await.map_err(|e| (Code::StoreError, format!("making the store durable: {e}")))?;
    m.validate().map_err(|e| (Code::ManifestInvalid, format!("disk manifest rejected: {e}")))?;
    if m.pages.is_none() {
        return verify_chunks(st, m, 0, &m.chunks).await;
    }
    if !m.chunks.is_empty() {
        // Kept and served as it came: ids inline would undo what paging is for.
        return Err((Code::ManifestInvalid, "a paged manifest carries its ids in its pages, not inline".into()));
    }
    let per_page = m.pages.as_ref().map_or(0, |p| p.chunks_per_page);
    let page = |page: u64| async move {
        crate::store::load_page(st.store.as_ref(), job, disk, m, page)
            .await
            .map_err(|e| (Code::ManifestInvalid, format!("disk manifest rejected: {e:#}")))
    };
    // First the manifest is whole (every page there, each merging to its hash), then its chunks
    // are: a page is read twice, a few MB per 256 GiB of disk, and never all pages at once.
    for p in 0..m.page_count() {
        page(p).await?;
    }
    for p in 0..m.page_count() {
        verify_chunks(st, m, p * per_page, &page(p).await?).await?;
    }
    Ok(())
}

/// Checks chunks `first..` of `m`: every data chunk is in the store at its place, and every
/// chunk marked zero has the id of zeros there.
async fn verify_chunks(st: &AppState, m: &Manifest, first: u64, chunks: &[ChunkEntry]) -> Result<(), (Code, String)> {
    // A stored id counts only at the index it was verified for: ids of this disk's chunks
    // listed in another order still merge to a root, but are not this disk.
    let data: Vec<usize> = (0..chunks.len()).filter(|&i| !chunks[i].zero).collect();
    let place = |i: usize| Place::of(m.size, m.chunk_size, first + i as u64);
    let asked: Vec<_> = data.iter().map(|&i| (chunks[i].id, place(i))).collect();
    let absent = st.store.missing(&asked).await.map_err(|e| (Code::StoreError, format!("reading the store: {e}")))?;
    if let Some(&at) = absent.first() {
        let i = data[at];
        return Err((
            Code::ChunkMissing,
            format!(
                "chunk {} (id {}) was never received for this place on the disk",
                first + i as u64,
                hex::encode(chunks[i].id)
            ),
        ));
    }
    let (size, chunk_size) = (m.size, m.chunk_size);
    let zeros: Vec<bool> = chunks.iter().map(|c| c.zero).collect();
    let ids: Vec<_> = chunks.iter().map(|c| c.id).collect();
    let bad_zero = tokio::task::spawn_blocking(move || first_bad_zero(size, chunk_size, first, &ids, &zeros))
        .await
        .map_err(|e| (Code::StoreError, format!("checking zero chunks: {e}")))?;
    if let Some(i) = bad_zero {
        return Err((Code::ZeroMismatch, format!("chunk {i} is marked all-zero but its id is not the id of zeros")));
    }
    Ok(())
}

/// The first chunk marked zero among chunks `first..` of a disk of `size` bytes whose id is not
/// that of zeros at its offset. Whole chunks are checked against the ids of zeros this receiver
/// remembers (hashed once per place, shared by every disk of a wave: `image::zero_ids`); a
/// short last chunk, a disk of one chunk, or a chunk past what is remembered is hashed here.
fn first_bad_zero(size: u64, chunk_size: u64, first: u64, ids: &[[u8; 32]], zero: &[bool]) -> Option<u64> {
    use rayon::prelude::*;
    let len = |i: u64| crate::image::treehash::chunk_len(size, chunk_size, i);
    let whole = |i: u64| size > chunk_size && len(i) == chunk_size;
    let last_whole_zero =
        (0..ids.len() as u64).rev().map(|i| first + i).find(|&i| zero[(i - first) as usize] && whole(i));
    let remembered = last_whole_zero.and_then(|i| zero_ids::shared().first(chunk_size, i as usize + 1));
    let zeros = vec![0u8; chunk_size.min(size) as usize];
    let bad = (0..ids.len()).into_par_iter().filter(|&i| zero[i]).find_first(|&i| {
        let at = first + i as u64;
        let expected = match &remembered {
            Some(remembered) if whole(at) => remembered[at as usize],
            _ => {
                let data = &zeros[..len(at) as usize];
                debug_assert!(hasher::is_zero(data));
                chunk_id(data, at * chunk_size, size, chunk_size)
            }
        };
        expected != ids[i]
    });
    bad.map(|i| first + i as u64)
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

    fn first_bad_zero(m: &Manifest) -> Option<usize> {
        let ids: Vec<_> = m.chunks.iter().map(|c| c.id).collect();
        let zeros: Vec<bool> = m.chunks.iter().map(|c| c.zero).collect();
        super::first_bad_zero(m.size, m.chunk_size, 0, &ids, &zeros).map(|i| i as usize)
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
