//! The chunk ids of a disk as a hashing pass finds them, held only until they can go. A disk of
//! one page keeps them all (its manifest carries them inline, as every receiver reads). A larger
//! disk keeps a page only until its last id is known, then hands it over (the agent uploads it)
//! and keeps just the page's hash: what the agent, or an export checking its file, holds no
//! longer grows with the disk.

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use crate::image::manifest::ManifestPage;
use crate::image::pages::{self, Pages};
use crate::image::treehash::{self, Digest};
use crate::image::ChunkEntry;

/// The ids of one disk, as the hashing pass finds them (in any order).
pub struct IdSpool {
    size: u64,
    chunk_size: u64,
    count: u64,
    held: Held,
}

enum Held {
    /// A disk of one page: every id, for an inline manifest.
    Inline(Vec<Option<ChunkEntry>>),
    /// A paged disk: the pages with some ids known, and the hash of each page handed over.
    Paged { per_page: u64, open: BTreeMap<u64, OpenPage>, cvs: Vec<Option<Digest>> },
}

struct OpenPage {
    chunks: Vec<Option<ChunkEntry>>,
    known: usize,
}

/// What the manifest carries once every id is known.
pub struct Ids {
    /// Every chunk, for an inline manifest; empty for a paged one.
    pub chunks: Vec<ChunkEntry>,
    pub pages: Option<Pages>,
    /// The whole-disk BLAKE3.
    pub root: Digest,
}

impl IdSpool {
    /// A spool for a disk of `size` bytes in `chunk_size` chunks, paged when it has more chunks
    /// than `per_page`.
    pub fn new(size: u64, chunk_size: u64, per_page: u64) -> Self {
        let count = treehash::chunk_count(size, chunk_size);
        let held = if pages::is_paged(count, per_page) {
            let cvs = vec![None; pages::page_count(count, per_page) as usize];
            Held::Paged { per_page, open: BTreeMap::new(), cvs }
        } else {
            Held::Inline(vec![None; count as usize])
        };
        Self { size, chunk_size, count, held }
    }

    /// Records chunk `index`'s entry; returns its page when this was the page's last id.
    pub fn record(&mut self, index: u64, entry: ChunkEntry) -> Result<Option<ManifestPage>> {
        if index >= self.count {
            bail!("chunk {index} is past the last chunk ({})", self.count.saturating_sub(1));
        }
        let (per_page, open, cvs) = match &mut self.held {
            Held::Inline(all) => {
                all[index as usize] = Some(entry);
                return Ok(None);
            }
            Held::Paged { per_page, open, cvs } => (*per_page, open, cvs),
        };
        let page = index / per_page;
        let range = pages::page_chunks(self.count, per_page, page);
        let p = open
            .entry(page)
            .or_insert_with(|| OpenPage { chunks: vec![None; (range.end - range.start) as usize], known: 0 });
        let slot = &mut p.chunks[(index - range.start) as usize];
        if slot.replace(entry).is_none() {
            p.known += 1;
        }
        if p.known < p.chunks.len() {
            return Ok(None);
        }
        let p = open.remove(&page).expect("the page is open");
        let chunks: Vec<ChunkEntry> = p.chunks.into_iter().map(|c| c.expect("every id is known")).collect();
        let ids: Vec<Digest> = chunks.iter().map(|c| c.id).collect();
        cvs[page as usize] = Some(pages::page_cv(&ids, range.start, self.size, self.chunk_size));
        Ok(Some(ManifestPage { page, chunks_per_page: per_page, chunks }))
    }

    /// The manifest's ids and whole-disk hash; an error names the first chunk never hashed.
    pub fn finish(self, path: &str) -> Result<Ids> {
        let never = |i: u64| format!("chunk {i} of {path} was never hashed");
        match self.held {
            Held::Inline(all) => {
                let chunks: Vec<ChunkEntry> = all
                    .into_iter()
                    .enumerate()
                    .map(|(i, e)| e.with_context(|| never(i as u64)))
                    .collect::<Result<_>>()?;
                let ids: Vec<Digest> = chunks.iter().map(|c| c.id).collect();
                let root = treehash::root_from_ids(&ids, self.size, self.chunk_size)?;
                Ok(Ids { chunks, pages: None, root })
            }
            Held::Paged { per_page, open, cvs } => {
                if let Some((page, p)) = open.iter().next() {
                    let missing = p.chunks.iter().position(Option::is_none).unwrap_or(0) as u64;
                    bail!(never(page * per_page + missing));
                }
                let cvs: Vec<Digest> = cvs
                    .into_iter()
                    .enumerate()
                    .map(|(page, cv)| cv.with_context(|| never(page as u64 * per_page)))
                    .collect::<Result<_>>()?;
                let root = pages::root_from_page_cvs(&cvs, self.size, self.chunk_size, per_page)?;
                Ok(Ids { chunks: vec![], pages: Some(Pages { chunks_per_page: per_page, cvs }), root })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::image::treehash::{chunk_id, MIN_CHUNK_SIZE};

    fn entry(i: u64, size: u64) -> ChunkEntry {
        let len = treehash::chunk_len(size, MIN_CHUNK_SIZE, i) as usize;
        ChunkEntry { id: chunk_id(&vec![i as u8 + 1; len], i * MIN_CHUNK_SIZE, size, MIN_CHUNK_SIZE), zero: false }
    }

    #[test]
    fn pages_go_as_they_fill_in_any_order_and_the_root_is_that_of_every_id() {
        let size = 40 * MIN_CHUNK_SIZE + 77;
        let mut spool = IdSpool::new(size, MIN_CHUNK_SIZE, 16);
        // Out of order, as hashing threads finish: page 1 fills first.
        let order: Vec<u64> = (16..32).chain(0..16).chain((32..41).rev()).collect();
        let mut handed = vec![];
        for &i in &order {
            if let Some(p) = spool.record(i, entry(i, size)).unwrap() {
                handed.push((i, p.page, p.chunks.len()));
            }
        }
        // Each page goes with its last id, and only then.
        assert_eq!(handed, [(31, 1, 16), (15, 0, 16), (32, 2, 9)]);
        let ids = spool.finish("d").unwrap();
        assert!(ids.chunks.is_empty());
        assert_eq!(ids.pages.as_ref().unwrap().cvs.len(), 3);
        let all: Vec<Digest> = (0..41).map(|i| entry(i, size).id).collect();
        assert_eq!(ids.root, treehash::root_from_ids(&all, size, MIN_CHUNK_SIZE).unwrap());
    }

    #[test]
    fn a_disk_of_one_page_keeps_its_ids_inline_and_a_missing_id_is_named() {
        let size = 16 * MIN_CHUNK_SIZE;
        let mut spool = IdSpool::new(size, MIN_CHUNK_SIZE, 16);
        for i in 0..16 {
            assert!(spool.record(i, entry(i, size)).unwrap().is_none());
        }
        let ids = spool.finish("d").unwrap();
        assert_eq!((ids.chunks.len(), ids.pages), (16, None));

        let mut gap = IdSpool::new(3 * size, MIN_CHUNK_SIZE, 16);
        for i in (0..48).filter(|&i| i != 20) {
            gap.record(i, entry(i, 3 * size)).unwrap();
        }
        assert_eq!(gap.finish("d").err().unwrap().to_string(), "chunk 20 of d was never hashed");
        assert!(IdSpool::new(size, MIN_CHUNK_SIZE, 16).record(16, entry(0, size)).is_err());
    }
}
