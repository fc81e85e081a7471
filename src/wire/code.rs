//! Every stable error code ferry emits, in one table: the receiver's answers, the target's
//! refusals, the agents' failures. Each has its snake_case string (what travels, what is stored
//! in a job's `error_code`, what `docs/jobs-and-errors.md` lists), the HTTP status the receiver
//! answers it with where it has one, and the advice the live image gives the technician for it.
//! Nothing else spells a code: callers use the variants, and decide on them, never on words.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// What the live image tells the technician to do about a failure; the words are the live
/// image's (`init::verdict`), the choice is made here, once per code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Advice {
    /// The token is wrong for this job or call.
    CheckToken,
    /// The job id is wrong.
    CheckJob,
    /// The operator cancelled the job.
    Cancelled,
    /// The job needs the operator before it can go on.
    OperatorMustRestart,
    /// Booting again is all it takes (the conversation was interrupted or out of step).
    BootAgain,
    /// Booting again, and if it repeats a disk, the network or the store is failing.
    BootAgainSuspectHardware,
    /// The enrollment was closed.
    EnrollmentRevoked,
    /// This machine cannot tell itself apart from others.
    NoIdentity,
    /// The wave has all its machines.
    EnrollmentFull,
    /// A storage controller has no driver in this image.
    MissingDriver,
    /// No disk to migrate.
    NoDisks,
    /// The operator must allow wiping this machine.
    AllowWipe,
    /// This is not the machine the job names.
    WrongMachine,
    /// This machine or one of its disks is the source.
    IsTheSource,
    /// The disks cannot hold the source's.
    DisksDoNotFit,
    /// The source has not finished sending.
    WaitForSource,
    /// A target disk is in use.
    DiskInUse,
    /// Another machine writes this job's disks.
    TargetBusy,
    /// Writing or reading back failed; the tables were cleared.
    WriteFailed,
    /// Already done: nothing to do.
    AlreadyDone,
    /// Anything else: the operator reads the screen.
    TellOperator,
}

macro_rules! codes {
    ($( $(#[$doc:meta])* $v:ident = $s:literal, $status:expr, $advice:ident; )*) => {
        /// A stable error code.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Code { $( $(#[$doc])* $v, )* }

        impl Code {
            /// Every code, in table order.
            pub const ALL: &'static [Code] = &[ $( Code::$v, )* ];

            /// The code as it travels and is stored.
            pub const fn as_str(self) -> &'static str {
                match self { $( Code::$v => $s, )* }
            }

            /// The HTTP status the receiver answers this code with (None: never an answer).
            pub const fn status(self) -> Option<u16> {
                match self { $( Code::$v => $status, )* }
            }

            /// What the technician is told to do about it.
            pub const fn advice(self) -> Advice {
                match self { $( Code::$v => Advice::$advice, )* }
            }

            /// The code a string names, if it is one.
            pub fn parse(s: &str) -> Option<Code> {
                match s { $( $s => Some(Code::$v), )* _ => None }
            }
        }
    };
}

const fn http(s: u16) -> Option<u16> {
    Some(s)
}
const NONE: Option<u16> = None;

codes! {
    // ---- authentication and ids ----
    /// No `Authorization` header.
    NoToken = "no_token", http(401), CheckToken;
    /// The header is not `Bearer TOKEN`.
    BadToken = "bad_token", http(401), CheckToken;
    /// The token is wrong for this job or this call.
    Forbidden = "forbidden", http(403), CheckToken;
    BadJobId = "bad_job_id", http(400), CheckJob;
    NoSuchJob = "no_such_job", http(404), CheckJob;
    BadJson = "bad_json", http(400), TellOperator;
    /// The receiver failed (database, disk); agents retry it.
    Internal = "internal", http(500), TellOperator;
    // ---- jobs (admin) ----
    BadName = "bad_name", http(400), TellOperator;
    BadChunkSize = "bad_chunk_size", http(400), TellOperator;
    BadClientToken = "bad_client_token", http(400), TellOperator;
    /// Target settings on an `image` job (400 at create, 409 later).
    NotInstanceJob = "not_instance_job", http(400), TellOperator;
    BadTarget = "bad_target", http(400), TellOperator;
    TargetUnnamed = "target_unnamed", http(400), TellOperator;
    JobRunning = "job_running", http(409), TellOperator;
    // ---- job states ----
    JobFinished = "job_finished", http(409), AlreadyDone;
    JobCancelled = "job_cancelled", http(409), Cancelled;
    JobInError = "job_in_error", http(409), OperatorMustRestart;
    NotRunning = "not_running", http(409), BootAgain;
    // ---- the source's disks and chunks ----
    NoDisks = "no_disks", http(400), NoDisks;
    DisksIncomplete = "disks_incomplete", http(409), BootAgain;
    BadDisk = "bad_disk", http(400), TellOperator;
    DiskNotBegun = "disk_not_begun", http(409), BootAgain;
    BadIndex = "bad_index", http(400), TellOperator;
    /// A page of chunk ids that is not a page of this disk.
    BadPage = "bad_page", http(400), TellOperator;
    NoChunkId = "no_chunk_id", http(400), TellOperator;
    BadChunkId = "bad_chunk_id", http(400), TellOperator;
    TooLarge = "too_large", http(413), TellOperator;
    /// An HTTP/1 upload of a chunk or manifest without `Content-Length`.
    LengthRequired = "length_required", http(411), TellOperator;
    /// A chunk or manifest upload that went silent or trickled (agents send it again).
    BodyTimeout = "body_timeout", http(408), BootAgain;
    BadCompression = "bad_compression", http(400), BootAgainSuspectHardware;
    BadLength = "bad_length", http(400), BootAgainSuspectHardware;
    HashMismatch = "hash_mismatch", http(422), BootAgainSuspectHardware;
    StoreFull = "store_full", http(507), OperatorMustRestart;
    /// The manifest differs from `begin` (API), or from the job's record (target).
    ManifestMismatch = "manifest_mismatch", http(400), WriteFailed;
    ManifestInvalid = "manifest_invalid", http(422), OperatorMustRestart;
    ChunkMissing = "chunk_missing", http(422), OperatorMustRestart;
    ZeroMismatch = "zero_mismatch", http(422), OperatorMustRestart;
    StoreError = "store_error", http(422), OperatorMustRestart;
    // ---- the target side ----
    SourceNotFinished = "source_not_finished", http(409), WaitForSource;
    WipeNotAllowed = "wipe_not_allowed", http(403), AllowWipe;
    WrongTarget = "wrong_target", http(403), WrongMachine;
    TargetIsSource = "target_is_source", http(409), IsTheSource;
    TargetBusy = "target_busy", http(409), TargetBusy;
    AlreadyDelivered = "already_delivered", http(409), AlreadyDone;
    NotRegistered = "not_registered", http(409), BootAgain;
    BadMapping = "bad_mapping", http(400), TellOperator;
    ReadbackMismatch = "readback_mismatch", http(422), WriteFailed;
    NoManifest = "no_manifest", http(404), TellOperator;
    ZeroChunk = "zero_chunk", http(404), TellOperator;
    // ---- boot files and logs ----
    NotFound = "not_found", http(404), TellOperator;
    NoBootDir = "no_boot_dir", http(404), TellOperator;
    Starting = "starting", http(503), BootAgain;
    BadBootImage = "bad_boot_image", http(500), TellOperator;
    BadBootId = "bad_boot_id", http(400), TellOperator;
    // ---- enrollments ----
    EnrollmentRevoked = "enrollment_revoked", http(403), EnrollmentRevoked;
    NoIdentity = "no_identity", http(400), NoIdentity;
    EnrollmentFull = "enrollment_full", http(409), EnrollmentFull;
    BadMaxJobs = "bad_max_jobs", http(400), TellOperator;
    NoSuchEnrollment = "no_such_enrollment", http(404), TellOperator;
    BadEnrollmentId = "bad_enrollment_id", http(400), TellOperator;
    // ---- made by the agents and the live image ----
    /// The receiver (or something in between) answered an error without a ferry body.
    Http = "http", NONE, TellOperator;
    /// The source agent failed on its side (stored as `source_agent_error`).
    AgentError = "agent_error", NONE, TellOperator;
    /// A storage controller has no driver in the image.
    MissingDriver = "missing_driver", NONE, MissingDriver;
    TooFewDisks = "too_few_disks", NONE, DisksDoNotFit;
    DiskNotNamed = "disk_not_named", NONE, DisksDoNotFit;
    DiskTooSmall = "disk_too_small", NONE, DisksDoNotFit;
    SectorSizeMismatch = "sector_size_mismatch", NONE, DisksDoNotFit;
    DiskBusy = "disk_busy", NONE, DiskInUse;
    ChunkCorrupt = "chunk_corrupt", NONE, WriteFailed;
    WriteFailed = "write_failed", NONE, WriteFailed;
    ReadFailed = "read_failed", NONE, WriteFailed;
    GptRelocationFailed = "gpt_relocation_failed", NONE, TellOperator;
}

impl Code {
    /// How a job records a code its source reported (`agent_error` → `source_agent_error`):
    /// the job's own codes and its source's are told apart.
    pub fn source_reported(self) -> String {
        format!("source_{}", self.as_str())
    }
}

impl fmt::Display for Code {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Serialize for Code {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for Code {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Code::parse(&s).ok_or_else(|| serde::de::Error::custom(format!("unknown error code {s:?}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_is_snake_case_unique_and_parses_back() {
        let mut seen = std::collections::HashSet::new();
        for c in Code::ALL {
            let s = c.as_str();
            assert!(s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'), "{s}");
            assert!(seen.insert(s), "{s} twice");
            assert_eq!(Code::parse(s), Some(*c));
            assert_eq!(serde_json::to_string(c).unwrap(), format!("\"{s}\""));
            assert_eq!(serde_json::from_str::<Code>(&format!("\"{s}\"")).unwrap(), *c);
            if let Some(st) = c.status() {
                assert!((400..600).contains(&st), "{s}: {st}");
            }
        }
        assert_eq!(Code::parse("no_such_code"), None);
        assert_eq!(Code::AgentError.source_reported(), "source_agent_error");
        assert!(serde_json::from_str::<Code>("\"nope\"").is_err());
    }

    /// `docs/jobs-and-errors.md` lists every code, and no code that does not exist, with the
    /// HTTP status the receiver answers it with.
    #[test]
    fn the_error_document_lists_exactly_these_codes() {
        let doc = include_str!("../../docs/jobs-and-errors.md");
        let table = &doc[doc.find("## Every code").expect("an 'Every code' section")..];
        // The screen texts without a code come last.
        let table = &table[..table.find("### Live-image failures without a code").unwrap_or(table.len())];
        let mut documented = std::collections::BTreeSet::new();
        for row in table.lines().filter(|l| l.starts_with("| `")) {
            let cells: Vec<&str> = row.split('|').map(str::trim).collect();
            let first = cells[1];
            let names: Vec<&str> = first.split('`').skip(1).step_by(2).collect();
            for (i, name) in names.iter().enumerate() {
                let code = match Code::parse(name) {
                    Some(c) => c,
                    // `agent_error` → `source_agent_error`: the second is how a job stores it.
                    None => {
                        let base = name.strip_prefix("source_").and_then(Code::parse);
                        assert!(i > 0 && base.is_some(), "docs/jobs-and-errors.md lists {name:?}, which is not a code");
                        continue;
                    }
                };
                documented.insert(code);
                // The API column (receiver answers only): the first number is the code's status.
                if table[..table.find(row).unwrap()].contains("### Codes made by the agents") {
                    continue;
                }
                let api: Option<u16> = cells[2].split_whitespace().next().and_then(|n| n.parse().ok());
                assert_eq!(api, code.status(), "{name}: the document's status differs");
            }
        }
        let missing: Vec<&str> = Code::ALL.iter().filter(|c| !documented.contains(c)).map(|c| c.as_str()).collect();
        assert!(missing.is_empty(), "not in docs/jobs-and-errors.md: {missing:?}");
    }
}
