//! Step 5, enrolment: a source booted with an enrollment token and no job asks the receiver for
//! its job, and goes on with that job's token.

use crate::agent::Endpoint;
use crate::init::cmdline::LiveConfig;
use crate::init::console::Verdict;
use crate::init::verdict::{advice, advice_for_refusal, Doing, Failed};
use crate::wire::{JobState, MachineIdentity};

/// The job this machine works on, filled into `cfg`; a verdict when that job is already done.
pub async fn enroll(cfg: &mut LiveConfig, ep: Endpoint, machine: &MachineIdentity) -> Result<Option<Verdict>, Failed> {
    let answer = crate::agent::enroll::enroll(&ep, machine, true).await.map_err(|e| {
        let words = advice_for_refusal(&e, Doing::Enrolling).unwrap_or(advice(None, Doing::Enrolling));
        Failed::new(format!("{e:#}"), words)
    })?;
    crate::say!(
        "enrolled: job {} ({}){}",
        answer.job,
        answer.name,
        match (answer.created, answer.state) {
            (true, _) => "",
            (false, JobState::Finished) => ", already Finished",
            (false, _) => ", this machine's job from before",
        }
    );
    cfg.job = Some(answer.job.clone());
    cfg.token = Some(answer.token);
    Ok((answer.state == JobState::Finished).then(|| already_migrated(&answer.job)))
}

/// The verdict for a source whose job is already Finished: booted into ferry again (the stick
/// left in, the PXE entry still set), it sends nothing and powers off rather than loop.
pub fn already_migrated(job: &str) -> Verdict {
    Verdict::already_done(
        format!("already migrated: job {job} is Finished; nothing sent now"),
        "Remove the ferry stick (or the PXE entry). It powers off now rather than start ferry again; to copy it once more, the operator restarts the job.",
    )
}
