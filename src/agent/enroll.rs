//! Enrollment from the agent's side: with an enrollment token instead of a job, ask the receiver
//! which job this machine works on (see `server::enroll` for the policy).

use anyhow::{Context, Result};

use super::{Client, Endpoint};
use crate::wire::routes::call;
use crate::wire::{EnrollAnswer, EnrollRequest, MachineIdentity};

/// The job and agent token for `machine`, from a receiver reached with an enrollment token in
/// `ep`. The answer's token then replaces the enrollment token for everything else.
/// `offline`: the live image is asking (the disks are at rest).
pub async fn enroll(ep: &Endpoint, machine: &MachineIdentity, offline: bool) -> Result<EnrollAnswer> {
    let client = Client::new(ep)?;
    let req = EnrollRequest { machine: machine.clone(), offline };
    client.call::<call::Enroll>(&[], &req).await.context("enrolling this machine")
}
