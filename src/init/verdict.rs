//! The verdict the technician reads, and the words for what to do: the choice of advice is
//! made once per error code (`wire::Code::advice`), the words here, per role.

use super::cmdline::{OnFinish, Role};
use super::console::Verdict;
use crate::agent::Refused;
use crate::wire::{Advice, Code};

/// A failure with the words the technician needs.
pub struct Failed {
    pub lines: Vec<String>,
    pub advice: Vec<String>,
}

impl Failed {
    pub fn new(line: impl Into<String>, advice: impl Into<String>) -> Self {
        Self { lines: vec![line.into()], advice: vec![advice.into()] }
    }
}

impl Verdict {
    /// MIGRATED, with what was done.
    pub fn migrated(lines: Vec<String>, advice: Vec<String>) -> Self {
        Verdict { ok: true, headline: "MIGRATED".into(), lines, advice, on_finish: None, countdown: None }
    }

    /// MIGRATED, but `sectors` sectors could not be read: the copy has zeros there, and the
    /// headline says so, so it is never mistaken for a clean copy.
    pub fn migrated_with_unreadable(sectors: u64, lines: Vec<String>) -> Self {
        let advice = format!(
            "Tell the operator: {sectors} sectors of this machine's disks could not be read and are zeros in the copy (listed above and in `ferry job show`). Check what lies there before the cutover."
        );
        Verdict {
            headline: format!("MIGRATED WITH {sectors} UNREADABLE SECTORS"),
            ..Self::migrated(lines, vec![advice])
        }
    }

    /// MIGRATED before, nothing done now: the machine powers off rather than start ferry again
    /// and again (the stick left in, the PXE entry still set).
    pub fn already_done(line: String, advice: &str) -> Self {
        Verdict { on_finish: Some(OnFinish::Poweroff), ..Self::migrated(vec![line], vec![advice.into()]) }
    }

    pub fn failed(f: Failed) -> Self {
        Verdict {
            ok: false,
            headline: "FAILED".into(),
            lines: f.lines,
            advice: f.advice,
            on_finish: None,
            countdown: None,
        }
    }
}

/// What the live image was doing when the receiver refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Doing {
    Source,
    Target,
    Enrolling,
}

impl From<Role> for Doing {
    fn from(r: Role) -> Self {
        match r {
            Role::Source => Doing::Source,
            Role::Target => Doing::Target,
        }
    }
}

/// The advice for a refusal with `code` (`None`: a code this ferry does not know).
pub fn advice(code: Option<Code>, doing: Doing) -> &'static str {
    let advice = code.map(Code::advice).unwrap_or(Advice::TellOperator);
    match (advice, doing) {
        (Advice::CheckToken, Doing::Enrolling) => {
            "The receiver does not accept this enrollment token: check ferry.enroll with the operator."
        }
        (Advice::CheckToken, _) => {
            "The receiver does not accept this job token: check ferry.job and ferry.token with the operator."
        }
        (Advice::CheckJob, _) => "The receiver has no such job: check ferry.job with the operator.",
        (Advice::Cancelled, _) => "The operator cancelled this job. Ask before migrating this machine.",
        (Advice::OperatorMustRestart, Doing::Source) => {
            "The job needs the operator: ask them to fix it and restart the job, then reboot from the stick. Chunks already sent are kept."
        }
        (Advice::EnrollmentRevoked, _) => {
            "The operator closed this enrollment: ask them for a job (ferry.job and ferry.token)."
        }
        (Advice::NoIdentity, _) => "This machine cannot enroll: ask the operator for a job (ferry.job and ferry.token).",
        (Advice::EnrollmentFull, _) => {
            "The wave has all its machines: check this is one of them, then ask the operator (a job, or a larger enrollment)."
        }
        (Advice::MissingDriver, _) => {
            "Do not migrate this machine with this image: give the PCI ids to the operator so a driver can be added."
        }
        (Advice::NoDisks, _) => "Check the disks are attached and visible in the firmware setup.",
        (Advice::AllowWipe, _) => {
            "Nothing was written. The operator must allow wiping this machine: give them the serial and UUID shown above (ferry job target JOB --target-machine SERIAL --allow-wipe), then reboot from the stick."
        }
        (Advice::WrongMachine, _) => {
            "Nothing was written: this is not the machine the job names. Check the server's label against the job."
        }
        (Advice::IsTheSource, _) => {
            "Nothing was written: this machine or one of its disks is the source of the migration."
        }
        (Advice::DisksDoNotFit, _) => {
            "Nothing was written: this machine's disks cannot hold the source's. Give this screen to the operator."
        }
        (Advice::WaitForSource, _) => "The source has not finished sending. Reboot from the stick once it has.",
        (Advice::DiskInUse, _) => "Nothing was written: a disk is in use. Reboot from the stick and try again.",
        (Advice::TargetBusy, _) => {
            "Nothing was written: another machine is writing this job's disks right now. Check the job with the operator."
        }
        (Advice::WriteFailed, Doing::Target) => {
            "The disks were left without a partition table, so they do not start half-written. Reboot from the stick to try again; if it repeats, a disk or the receiver's store may be failing."
        }
        (_, Doing::Target) => {
            "Give this screen to the operator; reboot from the stick to try again (a half-written disk does not start)."
        }
        (_, Doing::Enrolling) => "Check that the receiver is running and reachable, then reboot from the stick.",
        _ => "Give this screen to the operator.",
    }
}

/// The advice for a refusal, or None for an error that is not the receiver's refusal.
pub fn advice_for_refusal(e: &anyhow::Error, doing: Doing) -> Option<&'static str> {
    e.downcast_ref::<Refused>().map(|r| advice(r.code, doing))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_same_code_is_told_in_the_words_of_the_role() {
        assert!(advice(Some(Code::Forbidden), Doing::Enrolling).contains("ferry.enroll"));
        assert!(advice(Some(Code::BadToken), Doing::Source).contains("ferry.job and ferry.token"));
        assert!(advice(Some(Code::ManifestMismatch), Doing::Target).contains("without a partition table"));
        assert_eq!(advice(Some(Code::ManifestMismatch), Doing::Source), "Give this screen to the operator.");
        assert!(advice(Some(Code::StoreFull), Doing::Source).contains("restart the job"));
        assert!(advice(None, Doing::Target).contains("a half-written disk does not start"));
        assert!(advice(Some(Code::WipeNotAllowed), Doing::Target).contains("--allow-wipe"));
        let v = Verdict::already_done("x".into(), "y");
        assert!(v.ok && v.headline == "MIGRATED" && v.on_finish == Some(OnFinish::Poweroff));
        assert!(!Verdict::failed(Failed::new("a", "b")).ok);
    }
}
