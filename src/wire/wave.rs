//! What an operator and an auditor read about many jobs at once: a wave's summary (`GET
//! /waves`, `ferry job list --wave`, the dashboard's wave view) and a job's receipt (`GET
//! /jobs/{job}/receipt`, `ferry job receipt`). Both are computed from jobs as the job database
//! holds them, so every receiver of a scaled-out wave gives the same answer.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{BadRange, Job, JobState, MachineIdentity, TargetKind};

/// A wave name: 1-64 letters, digits, `.`, `_` or `-` (it appears in URLs, metrics labels and
/// file names).
pub fn valid_wave(name: &str) -> bool {
    (1..=64).contains(&name.len()) && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
}

/// One job of a wave, as its summary lists it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveJob {
    pub id: String,
    pub name: String,
    pub state: JobState,
    /// Bytes of its disks read and hashed by the source, and their total.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// Bytes per second the source reports now (Running jobs).
    pub rate: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_code: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_reason: Option<String>,
}

/// A wave at a glance.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct WaveSummary {
    pub wave: String,
    /// Jobs (machines) in the wave.
    pub machines: u64,
    /// Jobs per state, by state name.
    pub by_state: BTreeMap<String, u64>,
    /// Bytes the wave's sources have read and hashed, and the size of every disk registered.
    pub bytes_done: u64,
    pub bytes_total: u64,
    /// What is left of the disks registered (machines not yet registered add to it later).
    pub bytes_to_go: u64,
    /// The Running sources' reported rates added up, bytes per second.
    pub rate: u64,
    /// `bytes_to_go / rate`, when anything moves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_seconds: Option<u64>,
    /// Failed jobs first (InError, then Cancelled), then Running, Waiting, Finished.
    pub jobs: Vec<WaveJob>,
}

fn attention(s: JobState) -> u8 {
    match s {
        JobState::InError => 0,
        JobState::Cancelled => 1,
        JobState::Running => 2,
        JobState::Waiting => 3,
        JobState::Finished => 4,
    }
}

/// The waves of `jobs`, by name; a job without a wave is in none.
pub fn summarize(jobs: &[Job]) -> Vec<WaveSummary> {
    let mut waves: BTreeMap<&str, Vec<&Job>> = BTreeMap::new();
    for j in jobs {
        if let Some(w) = j.options.wave.as_deref() {
            waves.entry(w).or_default().push(j);
        }
    }
    waves.into_iter().map(|(name, jobs)| summary(name, &jobs)).collect()
}

fn summary(wave: &str, jobs: &[&Job]) -> WaveSummary {
    let mut by_state = BTreeMap::new();
    let mut list: Vec<WaveJob> = jobs
        .iter()
        .map(|j| {
            *by_state.entry(j.state.as_str().to_string()).or_insert(0) += 1;
            let total: u64 = j.disks.iter().map(|d| d.size).sum();
            let done: u64 = if j.state == JobState::Finished {
                total
            } else {
                j.disks.iter().map(|d| d.bytes_done.min(d.size)).sum()
            };
            let rate = if j.state == JobState::Running { j.disks.iter().map(|d| d.rate).sum() } else { 0 };
            WaveJob {
                id: j.id.clone(),
                name: j.name.clone(),
                state: j.state,
                bytes_done: done,
                bytes_total: total,
                rate,
                error_code: j.error_code.clone(),
                error_reason: j.error_reason.clone(),
            }
        })
        .collect();
    list.sort_by_key(|j| attention(j.state));
    let bytes_done: u64 = list.iter().map(|j| j.bytes_done).sum();
    let bytes_total: u64 = list.iter().map(|j| j.bytes_total).sum();
    let bytes_to_go = bytes_total - bytes_done;
    let rate: u64 = list.iter().map(|j| j.rate).sum();
    WaveSummary {
        wave: wave.to_string(),
        machines: list.len() as u64,
        by_state,
        bytes_done,
        bytes_total,
        bytes_to_go,
        rate,
        eta_seconds: (rate > 0 && bytes_to_go > 0).then(|| bytes_to_go.div_ceil(rate)),
        jobs: list,
    }
}

/// What an auditor checks a migration against: for each disk its whole-disk BLAKE3 and how to
/// compute the same hash of the migrated disk with `b3sum`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Receipt {
    pub job: String,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wave: Option<String>,
    pub target: TargetKind,
    pub state: JobState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub machine: Option<MachineIdentity>,
    pub created_at: u64,
    /// When the source first registered (the job went Running), and when it Finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finished_at: Option<u64>,
    pub disks: Vec<ReceiptDisk>,
    /// The target machine, once it has read its disks back (instance jobs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_machine: Option<MachineIdentity>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ReceiptDisk {
    pub index: u32,
    /// The disk on the source, as it named itself.
    pub source: String,
    pub size: u64,
    /// BLAKE3 of the whole source disk, verified by the receiver.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blake3: Option<String>,
    pub verified: bool,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unreadable: Vec<BadRange>,
    /// Copied in used-blocks mode: not bit-for-bit; `blake3` is that of the zero-filled copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub used_only: Option<crate::disk::used::UsedOnly>,
    /// The target disk it was written to, and the BLAKE3 of its first `size` bytes read back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_disk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target_blake3: Option<String>,
    /// The command that gives `blake3` from the migrated disk (`b3sum` reads a whole image
    /// file; a target disk larger than the source is hashed over the source's size).
    pub check: String,
}

/// The receipt of `j`.
pub fn receipt(j: &Job) -> Receipt {
    let first = |s: JobState| j.history.iter().find(|e| e.state == s).map(|e| e.at);
    let last_finished = j.history.iter().rev().find(|e| e.state == JobState::Finished).map(|e| e.at);
    let delivered = j.delivery.as_ref();
    let disks = j
        .disks
        .iter()
        .map(|d| {
            let target = delivered.and_then(|del| del.disks.iter().find(|t| t.source_index == d.index));
            let check = match target {
                Some(t) => format!("head -c {} {} | b3sum", d.size, t.target.path),
                None => format!(
                    "ferry export --job {} --disk {} --to disk{}.img && b3sum disk{}.img",
                    j.id, d.index, d.index, d.index
                ),
            };
            ReceiptDisk {
                index: d.index,
                source: d.identity.path.clone(),
                size: d.size,
                blake3: d.blake3.clone(),
                verified: d.verified,
                unreadable: d.bad_ranges.clone(),
                used_only: d.used_only.clone(),
                target_disk: target.map(|t| t.target.path.clone()),
                target_blake3: target.and_then(|t| t.blake3.clone()),
                check,
            }
        })
        .collect();
    Receipt {
        job: j.id.clone(),
        name: j.name.clone(),
        wave: j.options.wave.clone(),
        target: j.target,
        state: j.state,
        machine: j.machine.clone(),
        created_at: j.created_at,
        started_at: first(JobState::Running),
        finished_at: last_finished,
        disks,
        target_machine: delivered.and_then(|d| d.machine.clone()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wave_names() {
        assert!(valid_wave("dc1-rack7.wave_2"));
        for bad in ["", "a b", "x/y", "é", &"w".repeat(65)] {
            assert!(!valid_wave(bad), "{bad:?}");
        }
    }
}
