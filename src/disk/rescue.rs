//! Reading around sectors that fail, as ddrescue does: when a chunk cannot be read whole, read
//! it again in small blocks, skipping the blocks that fail; then come back to each failed block
//! and read it one sector at a time, a few tries each. Only the sectors that still fail are
//! given up: they stay zero in the chunk and are recorded, so a disk with unreadable sectors can
//! never look like a clean copy.

use std::io;

use serde::{Deserialize, Serialize};

/// What the source does with sectors it cannot read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum BadSectors {
    /// Stop at the first read error and say which disk and offset failed (the default).
    #[default]
    Fail,
    /// Narrow each read error down to the sectors that really fail, send them as zeros and
    /// record their ranges in the manifest and the job.
    Record,
}

impl BadSectors {
    pub fn as_str(self) -> &'static str {
        match self {
            BadSectors::Fail => "fail",
            BadSectors::Record => "record",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "fail" => Some(BadSectors::Fail),
            "record" => Some(BadSectors::Record),
            _ => None,
        }
    }
}

/// Bytes of a disk that could not be read (whole sectors), and the partition they fall in.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct BadRange {
    pub offset: u64,
    pub length: u64,
    /// The partition number the range begins in, when it begins in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
}

impl BadRange {
    pub fn end(&self) -> u64 {
        self.offset.saturating_add(self.length)
    }

    /// "sectors 2048–2055 (8 sectors) in partition 1", in the disk's logical sectors.
    pub fn describe(&self, sector_size: u32) -> String {
        let ss = u64::from(sector_size.max(1));
        let (first, count) = (self.offset / ss, self.length.div_ceil(ss));
        let what = if count == 1 {
            format!("sector {first}")
        } else {
            format!("sectors {first}-{} ({count} sectors)", first + count - 1)
        };
        match self.partition {
            Some(p) => format!("{what} in partition {p}"),
            None => format!("{what}, outside any partition"),
        }
    }
}

/// `ranges` cut where partitions begin and end, each piece with the partition it lies in
/// (from `table`; none in the space between partitions).
pub fn in_partitions(ranges: Vec<BadRange>, table: &super::PartitionTable) -> Vec<BadRange> {
    let number_at =
        |at: u64| table.partitions.iter().find(|p| at >= p.start && at - p.start < p.size).map(|p| p.number);
    let mut edges: Vec<u64> = table.partitions.iter().flat_map(|p| [p.start, p.start.saturating_add(p.size)]).collect();
    edges.sort_unstable();
    let mut out = vec![];
    for r in ranges {
        let mut at = r.offset;
        for &cut in edges.iter().filter(|&&e| e > r.offset && e < r.end()).chain([r.end()].iter()) {
            if cut > at {
                out.push(BadRange { offset: at, length: cut - at, partition: number_at(at) });
                at = cut;
            }
        }
    }
    out
}

/// Sectors in all of `ranges`.
pub fn sector_count(ranges: &[BadRange], sector_size: u32) -> u64 {
    ranges.iter().map(|r| r.length.div_ceil(u64::from(sector_size.max(1)))).sum()
}

/// Sorts `ranges` and joins those that touch or overlap.
pub fn merge(mut ranges: Vec<BadRange>) -> Vec<BadRange> {
    ranges.sort();
    let mut out: Vec<BadRange> = Vec::with_capacity(ranges.len());
    for r in ranges {
        match out.last_mut() {
            Some(last) if r.offset <= last.end() => last.length = last.length.max(r.end() - last.offset),
            _ => out.push(r),
        }
    }
    out
}

/// A buffer whose bytes start on a page boundary, as `O_DIRECT` reads want.
pub struct AlignedBuf {
    buf: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    const ALIGN: usize = 4096;

    pub fn new(len: usize) -> Self {
        let buf = vec![0u8; len + Self::ALIGN];
        let start = buf.as_ptr().align_offset(Self::ALIGN).min(Self::ALIGN);
        Self { buf, start, len }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[self.start..self.start + self.len]
    }

    pub fn as_slice(&self) -> &[u8] {
        &self.buf[self.start..self.start + self.len]
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

/// The most bytes of a disk of `size` bytes that may be given up before the copy fails: 0.1%
/// of the disk, at least 16 MiB. Past it the disk is failing badly, every further failure costs
/// seconds on real media, and a copy with that much missing is not worth having.
pub fn most_given_up(size: u64) -> u64 {
    (size / 1000).max(16 << 20)
}

/// The first pass reads blocks of this size, skipping those that fail.
pub const SKIP_BLOCK: usize = 64 * 1024;
/// Tries for each sector of a failed block before it is given up.
pub const SECTOR_TRIES: u32 = 3;

/// Fills `buf` (the disk's bytes from `offset`) by reading around what fails, with `read`
/// (which fills its buffer whole or fails). Returns the ranges given up, zeroed in `buf`, in
/// order. `sector` is the smallest unit the disk reads.
pub fn read_around_failures(
    buf: &mut [u8],
    offset: u64,
    sector: usize,
    read: impl Fn(&mut [u8], u64) -> io::Result<()>,
) -> Vec<BadRange> {
    let sector = sector.max(1);
    let block = SKIP_BLOCK.max(sector);
    // Skip ahead: every block once, the failed ones left for later.
    let mut failed_blocks = vec![];
    for start in (0..buf.len()).step_by(block) {
        let end = (start + block).min(buf.len());
        if read(&mut buf[start..end], offset + start as u64).is_err() {
            failed_blocks.push(start..end);
        }
    }
    let mut bad = vec![];
    if failed_blocks.len() > 1 && failed_blocks.len() == buf.len().div_ceil(block) {
        // Not one block of the chunk reads: an area, not a few sectors. Reading it a sector at
        // a time would cost thousands of failing reads (seconds each on real media) for nothing.
        buf.fill(0);
        return vec![BadRange { offset, length: buf.len() as u64, partition: None }];
    }
    // Come back: each failed block a sector at a time, a few tries each.
    for blk in failed_blocks {
        for start in (blk.start..blk.end).step_by(sector) {
            let end = (start + sector).min(blk.end);
            let at = offset + start as u64;
            if !(0..SECTOR_TRIES).any(|_| read(&mut buf[start..end], at).is_ok()) {
                buf[start..end].fill(0);
                bad.push(BadRange { offset: at, length: (end - start) as u64, partition: None });
            }
        }
    }
    merge(bad)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::RefCell;
    use std::collections::HashMap;

    /// A disk of `size` bytes whose byte i is `i % 251 + 1` (never zero), where reads that touch
    /// a bad sector fail; a sector in `flaky` fails only the first N times it is read.
    struct FakeDisk {
        sector: u64,
        bad: Vec<u64>,
        flaky: RefCell<HashMap<u64, u32>>,
        reads: RefCell<u64>,
    }

    impl FakeDisk {
        fn read(&self, buf: &mut [u8], at: u64) -> io::Result<()> {
            *self.reads.borrow_mut() += 1;
            let (first, last) = (at / self.sector, (at + buf.len() as u64 - 1) / self.sector);
            let mut failed = false;
            for s in first..=last {
                failed |= self.bad.contains(&s);
                if let Some(left) = self.flaky.borrow_mut().get_mut(&s) {
                    if *left > 0 {
                        *left -= 1;
                        failed = true;
                    }
                }
            }
            if failed {
                // A failing read leaves garbage behind, as a real one may.
                buf.fill(0xee);
                return Err(io::Error::from_raw_os_error(libc::EIO));
            }
            for (i, b) in buf.iter_mut().enumerate() {
                *b = ((at + i as u64) % 251 + 1) as u8;
            }
            Ok(())
        }
    }

    fn expected(offset: u64, len: usize, bad: &[BadRange]) -> Vec<u8> {
        (0..len as u64)
            .map(|i| {
                let at = offset + i;
                if bad.iter().any(|r| at >= r.offset && at < r.end()) {
                    0
                } else {
                    (at % 251 + 1) as u8
                }
            })
            .collect()
    }

    fn range(offset: u64, length: u64) -> BadRange {
        BadRange { offset, length, partition: None }
    }

    #[test]
    fn only_the_failing_sectors_are_given_up() {
        let chunk = 1 << 20;
        let offset = 4 << 20;
        let s = 4 * 2048 + 3; // a sector inside the chunk (512-byte sectors, chunk at sector 8192)
        let run: Vec<u64> = (8192 + 1000..8192 + 1000 + 300).collect(); // 300 sectors across blocks
        let mut bad = vec![s];
        bad.extend(&run);
        bad.push(8192 + 2047); // the chunk's last sector
        let disk = FakeDisk { sector: 512, bad, flaky: RefCell::default(), reads: RefCell::default() };
        let mut buf = vec![0xaau8; chunk];
        let got = read_around_failures(&mut buf, offset, 512, |b, at| disk.read(b, at));
        let want = vec![range(s * 512, 512), range((8192 + 1000) * 512, 300 * 512), range((8192 + 2047) * 512, 512)];
        assert_eq!(got, want);
        assert!(buf == expected(offset, chunk, &want), "the readable bytes were not all read");
    }

    #[test]
    fn a_sector_that_fails_only_sometimes_is_read_on_a_later_try() {
        let flaky = RefCell::new(HashMap::from([(100u64, 2u32)]));
        let disk = FakeDisk { sector: 512, bad: vec![], flaky, reads: RefCell::default() };
        let mut buf = vec![0u8; 256 * 1024];
        let got = read_around_failures(&mut buf, 0, 512, |b, at| disk.read(b, at));
        assert_eq!(got, vec![]);
        assert!(buf == expected(0, buf.len(), &[]));
        // Four blocks, then the failed block's 128 sectors once each, plus one more try for
        // sector 100 (it failed the block read and its first sector read).
        assert_eq!(*disk.reads.borrow(), 4 + 128 + 1);
    }

    #[test]
    fn a_sector_that_always_fails_is_tried_a_few_times_then_given_up() {
        let disk = FakeDisk { sector: 4096, bad: vec![3], flaky: RefCell::default(), reads: RefCell::default() };
        let mut buf = vec![0u8; 64 * 1024];
        let got = read_around_failures(&mut buf, 0, 4096, |b, at| disk.read(b, at));
        assert_eq!(got, vec![range(3 * 4096, 4096)]);
        assert_eq!(*disk.reads.borrow(), 1 + 15 + u64::from(SECTOR_TRIES));
    }

    #[test]
    fn a_chunk_of_which_no_block_reads_is_given_up_whole_without_sector_reads() {
        let bad: Vec<u64> = (0..1024).map(|b| b * 128 + 7).collect(); // one sector in every block
        let disk = FakeDisk { sector: 512, bad, flaky: RefCell::default(), reads: RefCell::default() };
        let mut buf = vec![0xaau8; 1 << 20];
        let got = read_around_failures(&mut buf, 0, 512, |b, at| disk.read(b, at));
        assert_eq!(got, vec![range(0, 1 << 20)]);
        assert!(buf.iter().all(|&b| b == 0));
        assert_eq!(*disk.reads.borrow(), 16, "one read per block, none per sector");
        assert_eq!(most_given_up(1 << 30), 16 << 20);
        assert_eq!(most_given_up(100 << 40), (100 << 40) / 1000);
    }

    #[test]
    fn a_range_across_partitions_is_cut_at_their_edges() {
        let mut table = crate::disk::PartitionTable::empty(crate::disk::TableKind::Gpt, 512);
        for (number, start, size) in [(1, 1 << 20, 1 << 20), (2, 2 << 20, 1 << 20)] {
            table.partitions.push(crate::disk::Partition {
                number,
                start,
                size,
                type_id: String::new(),
                type_name: None,
                name: None,
                guid: None,
                attributes: None,
                bootable: None,
                logical: None,
            });
        }
        // From the gap before partition 1, through it, into partition 2.
        let got = in_partitions(vec![range((1 << 20) - 512, (1 << 20) + 1024)], &table);
        let part = |offset, length, p| BadRange { offset, length, partition: p };
        assert_eq!(
            got,
            vec![part((1 << 20) - 512, 512, None), part(1 << 20, 1 << 20, Some(1)), part(2 << 20, 512, Some(2))]
        );
        assert_eq!(in_partitions(vec![range(4096, 512)], &table), vec![range(4096, 512)]);
    }

    #[test]
    fn ranges_merge_and_describe_themselves() {
        let merged = merge(vec![range(1024, 512), range(0, 512), range(512, 512), range(4096, 512)]);
        assert_eq!(merged, vec![range(0, 1536), range(4096, 512)]);
        assert_eq!(sector_count(&merged, 512), 4);
        assert_eq!(merged[0].describe(512), "sectors 0-2 (3 sectors), outside any partition");
        let one = BadRange { offset: 4096, length: 512, partition: Some(2) };
        assert_eq!(one.describe(512), "sector 8 in partition 2");
    }
}
