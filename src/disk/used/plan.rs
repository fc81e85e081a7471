//! A disk's read plan in used-blocks mode: which byte ranges are skipped (zeros in the copy),
//! and, per partition, what was found and why it is or is not skipped into.
//!
//! Only a partition whose filesystem was read with confidence has ranges skipped. The partition
//! table, boot code, the space between and around partitions, and every partition read whole
//! are always read. A table with problems makes the whole disk read.

use std::io;

use serde::{Deserialize, Serialize};

use super::{probe, ByteRange, Verdict, Volume};
use crate::disk::{DiskReader, PartitionTable, TableKind};
use crate::util::human_bytes;

/// How a partition was read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadAs {
    /// Only the blocks its filesystem uses.
    UsedBlocks,
    /// Every byte.
    Whole,
}

/// One partition (or the whole disk, number 0, when it has no partition table) in a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionUse {
    pub number: u32,
    pub start: u64,
    pub size: u64,
    /// The filesystem found (`unknown` when none was recognised).
    pub fs: String,
    pub read: ReadAs,
    /// Bytes of the partition that are read.
    pub read_bytes: u64,
    /// Why it is read whole.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Anything more (per logical volume, say).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// What a manifest says of a disk copied in used-blocks mode: not a bit-for-bit copy.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsedOnly {
    /// Bytes of the disk read; the rest are zeros in the copy.
    pub read_bytes: u64,
    /// Why the whole disk was read, when it was (a damaged partition table, say).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whole_disk_reason: Option<String>,
    pub partitions: Vec<PartitionUse>,
}

impl UsedOnly {
    /// One line for a verdict or a job listing: that this is not a bit-for-bit copy.
    pub fn summary(&self, disk_size: u64) -> String {
        let pct = self.read_bytes as f64 * 100.0 / disk_size.max(1) as f64;
        format!(
            "used blocks only: {} read of {} ({pct:.0}%), the rest zeros in the copy",
            human_bytes(self.read_bytes),
            human_bytes(disk_size)
        )
    }

    /// A line per partition: what was found, how it was read, and why when whole.
    pub fn details(&self) -> Vec<String> {
        let mut lines: Vec<String> = self.whole_disk_reason.iter().map(|r| format!("whole disk read: {r}")).collect();
        for p in &self.partitions {
            let name = if p.number == 0 { "whole disk".to_string() } else { format!("partition {}", p.number) };
            lines.push(match &p.reason {
                Some(why) => format!("{name} ({}): read whole, {}: {why}", p.fs, human_bytes(p.size)),
                None => format!("{name} ({}): {} used of {}", p.fs, human_bytes(p.read_bytes), human_bytes(p.size)),
            });
            lines.extend(p.notes.iter().map(|n| format!("  {n}")));
        }
        lines
    }
}

/// The ranges to skip, and the report of how they were chosen.
#[derive(Clone, Debug)]
pub struct UsedPlan {
    /// Sorted, disjoint, each at least [`min_skip`] long and 4 KiB aligned.
    pub skip: Vec<ByteRange>,
    pub report: UsedOnly,
}

/// Skipped ranges are 4 KiB aligned: whole sectors of either size, whole pages.
const ALIGN: u64 = 4096;

/// The shortest gap worth skipping: reading through a short gap costs less than the extra read
/// it saves (a seek on a spinning disk, a request on any), and a floor on the gap keeps the
/// plan's size bounded by the disk's size: at most a million ranges (16 MiB) at any size.
pub fn min_skip(disk_size: u64) -> u64 {
    (64 << 10u64).max((disk_size >> 20).next_multiple_of(ALIGN))
}

/// MBR types that are containers of logical partitions, not filesystems.
const EXTENDED: [&str; 3] = ["0x05", "0x0f", "0x85"];

/// Plans reading `disk` in used-blocks mode.
pub fn plan(disk: &DiskReader, table: &PartitionTable) -> UsedPlan {
    let size = disk.size();
    let whole = |reason: String| UsedPlan {
        skip: vec![],
        report: UsedOnly { read_bytes: size, whole_disk_reason: Some(reason), partitions: vec![] },
    };
    let volumes: Vec<(u32, u64, u64)> = match table.kind {
        TableKind::Damaged => return whole("the partition table is damaged".into()),
        _ if !table.problems.is_empty() => {
            return whole(format!("the partition table has problems: {}", table.problems.join("; ")))
        }
        TableKind::None => vec![(0, 0, size)],
        TableKind::Gpt | TableKind::Mbr => table
            .partitions
            .iter()
            .filter(|p| !EXTENDED.contains(&p.type_id.as_str()))
            .map(|p| (p.number, p.start, p.size))
            .collect(),
    };
    if let Some(why) = overlap_or_outside(&volumes, size) {
        return whole(why);
    }
    let gap = min_skip(size);
    let mut skip = vec![];
    let mut partitions = vec![];
    for (number, start, len) in volumes {
        let vol = DiskVolume { disk, start, len };
        let (mut use_, skipped) = plan_volume(&vol, number, gap);
        use_.start = start;
        skip.extend(skipped.into_iter().map(|r| r.start + start..r.end + start));
        partitions.push(use_);
    }
    skip.sort_by_key(|r| r.start);
    let skipped: u64 = skip.iter().map(|r| r.end - r.start).sum();
    UsedPlan { skip, report: UsedOnly { read_bytes: size - skipped, whole_disk_reason: None, partitions } }
}

/// One partition's verdict, and its skipped ranges relative to its start.
fn plan_volume(vol: &dyn Volume, number: u32, gap: u64) -> (PartitionUse, Vec<ByteRange>) {
    let len = vol.len();
    let mut use_ = PartitionUse {
        number,
        start: 0,
        size: len,
        fs: String::new(),
        read: ReadAs::Whole,
        read_bytes: len,
        reason: None,
        notes: vec![],
    };
    let skip = match probe(vol) {
        Verdict::Used { fs, ranges, notes } => {
            use_.fs = fs;
            use_.notes = notes;
            let skip = gaps(&ranges, len, gap);
            let skipped: u64 = skip.iter().map(|r| r.end - r.start).sum();
            use_.read = ReadAs::UsedBlocks;
            use_.read_bytes = len - skipped;
            skip
        }
        Verdict::Whole { fs, reason } => {
            use_.fs = fs;
            use_.reason = Some(reason);
            vec![]
        }
        Verdict::NotMine => unreachable!("probe() never answers NotMine"),
    };
    (use_, skip)
}

/// The gaps between `used` (sorted, disjoint) within `0..len`, shrunk to 4 KiB boundaries and
/// kept only when at least `min` long.
pub fn gaps(used: &[ByteRange], len: u64, min: u64) -> Vec<ByteRange> {
    let mut out = vec![];
    let mut at = 0u64;
    for r in used.iter().chain(std::iter::once(&(len..len))) {
        let (start, end) = (at.next_multiple_of(ALIGN), r.start.min(len) / ALIGN * ALIGN);
        if end > start && end - start >= min {
            out.push(start..end);
        }
        at = at.max(r.end);
    }
    out
}

/// Why the partitions cannot be planned one by one, if they cannot.
fn overlap_or_outside(volumes: &[(u32, u64, u64)], size: u64) -> Option<String> {
    let mut sorted: Vec<_> = volumes.to_vec();
    sorted.sort_by_key(|v| v.1);
    for w in sorted.windows(2) {
        if w[0].1 + w[0].2 > w[1].1 {
            return Some(format!("partitions {} and {} overlap", w[0].0, w[1].0));
        }
    }
    sorted
        .iter()
        .find(|v| v.1.checked_add(v.2).is_none_or(|end| end > size))
        .map(|v| format!("partition {} reaches past the disk's end", v.0))
}

/// A partition of a disk being planned.
struct DiskVolume<'a> {
    disk: &'a DiskReader,
    start: u64,
    len: u64,
}

impl Volume for DiskVolume<'_> {
    fn len(&self) -> u64 {
        self.len
    }
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if offset.checked_add(buf.len() as u64).is_none_or(|end| end > self.len) {
            return Err(super::past_end(offset, buf.len(), self.len));
        }
        self.disk.read_exact_at(buf, self.start + offset).map_err(|e| io::Error::other(format!("{e:#}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gaps_are_aligned_and_short_ones_read() {
        let used = vec![0..5000, 9000..200_000, 300_000..300_001];
        // 5000..9000 shrinks to 8192..8192: nothing; 200000..300000 to 200704..299008.
        assert_eq!(gaps(&used, 1 << 20, 4096), vec![200_704..299_008, 303_104..1_048_576]);
        assert_eq!(gaps(&used, 1 << 20, 800_000), vec![]);
        assert_eq!(gaps(&[], 1 << 20, 4096), vec![0..1 << 20]);
        assert_eq!(gaps(&[0..1 << 20, (1 << 20)..(1 << 20)], 1 << 20, 4096), vec![]);
    }

    #[test]
    fn the_floor_bounds_the_plan() {
        assert_eq!(min_skip(1 << 30), 64 << 10);
        let huge = 100u64 << 40;
        assert!(huge / min_skip(huge) <= 1 << 20);
        assert_eq!(min_skip(huge) % ALIGN, 0);
    }

    #[test]
    fn overlapping_partitions_are_refused() {
        assert!(overlap_or_outside(&[(1, 0, 100), (2, 50, 100)], 1000).unwrap().contains("overlap"));
        assert!(overlap_or_outside(&[(1, 0, 100), (2, 900, 200)], 1000).unwrap().contains("past"));
        assert_eq!(overlap_or_outside(&[(2, 100, 100), (1, 0, 100)], 1000), None);
    }
}
