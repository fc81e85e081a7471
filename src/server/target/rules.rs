//! What the receiver decides about a target from what it knows itself: the operator's target
//! spec, whether a machine may receive a job's disks, and how a delivery moves between states.

use super::super::db::now;
use super::super::error::{ApiErr, ApiResult};
use crate::machine::{is_one_of, same_machine};
use crate::wire::*;

/// A target spec an operator may set: names are short, and wiping needs a named target.
pub fn validate_spec(spec: &TargetSpec) -> ApiResult<()> {
    let names = spec.machine.iter().chain(&spec.disks);
    if names.clone().count() > 64 || names.clone().any(|n| n.trim().is_empty() || n.len() > 200) {
        return Err(ApiErr::new(Code::BadTarget, "name the target with at most 64 identifiers of 1-200 characters"));
    }
    if spec.allow_wipe && !spec.names_a_target() {
        return Err(ApiErr::new(
            Code::TargetUnnamed,
            "allowing a wipe needs the target named: its DMI product UUID or serial (--target-machine), or its disks' serials or WWNs (--target-disk)",
        ));
    }
    Ok(())
}

/// Why this machine may not receive the job's disks, if it may not.
pub fn refuse_target(
    spec: &TargetSpec,
    source: Option<&MachineIdentity>,
    target: &MachineIdentity,
    disks: &[DiskIdentity],
) -> Option<(Code, String)> {
    if !spec.allow_wipe {
        return Some((
            Code::WipeNotAllowed,
            "the job does not allow wiping this machine; the operator must allow it (ferry job target --allow-wipe)"
                .into(),
        ));
    }
    let names_this_machine =
        is_one_of(&spec.machine, target.product_uuid.as_deref()) || is_one_of(&spec.machine, target.serial.as_deref());
    if !spec.machine.is_empty() && !names_this_machine {
        return Some((
            Code::WrongTarget,
            format!(
                "this machine (UUID {}, serial {}) is not the one the job names ({})",
                target.product_uuid.as_deref().unwrap_or("none"),
                target.serial.as_deref().unwrap_or("none"),
                spec.machine.join(", ")
            ),
        ));
    }
    for wanted in &spec.disks {
        let wanted = std::slice::from_ref(wanted);
        let found = disks.iter().any(|d| is_one_of(wanted, d.serial.as_deref()) || is_one_of(wanted, d.wwn.as_deref()));
        if !found {
            return Some((
                Code::WrongTarget,
                format!("the job names a disk {} that this machine does not have", wanted[0]),
            ));
        }
    }
    if source.is_some_and(|src| same_machine(src, target)) {
        return Some((
            Code::TargetIsSource,
            "this machine is the source of the job (same DMI UUID or serial): ferry never writes to the source".into(),
        ));
    }
    None
}

pub fn new_delivery() -> Delivery {
    Delivery {
        state: JobState::Waiting,
        error_code: None,
        error_reason: None,
        machine: None,
        target_disks: vec![],
        disks: vec![],
        history: vec![],
    }
}

/// A delivery's history keeps its first event and the newest ones: a target (or anyone with its
/// token) failing over and over cannot grow the job without bound.
pub const HISTORY_KEPT: usize = 50;

/// Moves a delivery to `state`, with an event in its history.
pub fn transition(d: &mut Delivery, state: JobState, failure: Option<(Code, &str)>) {
    let failure = if state == JobState::InError { failure } else { None };
    d.state = state;
    d.error_code = failure.map(|(c, _)| c.as_str().to_string());
    d.error_reason = failure.map(|(_, r)| r.to_string());
    d.history.push(JobEvent { at: now(), state, code: d.error_code.clone(), reason: d.error_reason.clone() });
    if d.history.len() > HISTORY_KEPT {
        let extra = d.history.len() - HISTORY_KEPT;
        d.history.drain(1..1 + extra);
    }
}

/// Whether the delivery is this machine, with these disks, writing again (a reboot mid-way).
pub fn same_target(d: &Delivery, machine: &MachineIdentity, disks: &[DiskIdentity]) -> bool {
    d.machine.as_ref().is_some_and(|m| same_machine(m, machine))
        && d.target_disks
            .iter()
            .map(|x| (&x.serial, &x.wwn, x.size))
            .eq(disks.iter().map(|x| (&x.serial, &x.wwn, x.size)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_delivery_history_keeps_its_first_and_newest_events() {
        let mut d = new_delivery();
        transition(&mut d, JobState::Waiting, None);
        for i in 0..500 {
            transition(&mut d, JobState::InError, Some((Code::WriteFailed, &format!("attempt {i}"))));
        }
        assert_eq!(d.history.len(), HISTORY_KEPT);
        assert_eq!(d.history[0].state, JobState::Waiting);
        assert_eq!(d.history.last().unwrap().reason.as_deref(), Some("attempt 499"));
        assert_eq!(d.history[1].reason.as_deref(), Some("attempt 451"));
    }
}
