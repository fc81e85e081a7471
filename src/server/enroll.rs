//! Enrollment: a migration wave without a job per machine typed into each boot entry. The
//! operator makes one enrollment (`ferry job enroll create`); every source that boots with its
//! token and no job (`ferry.enroll=`, or `ferry send --enroll`) gets a job of its own, named after
//! the machine, with the enrollment's target type and options.
//!
//! A machine is recognised by its DMI product UUID, else its DMI serial, else its lowest MAC
//! address (placeholders that firmware puts in DMI do not count). Which job it gets is
//! `Db::enrolled_job`'s rule: its newest job until that one Finished; then a new one (the
//! cutover after a pre-seed sends only what the receiver lacks), except that the live image
//! is told its offline copy is done rather than copy the machine again.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;

use super::auth::{bearer, Authorized};
use super::db::{Enrolled, NewJobIds};
use super::error::{ApiErr, ApiResult, Body};
use super::{random_hex, tokens, AppState};
use crate::image::treehash;
use crate::machine::meaningful;
use crate::wire::routes::call;
use crate::wire::*;

/// How the receiver tells machines apart (`key`), and the readable part of a job's name
/// (`label`). None: the machine carries nothing that identifies it.
pub fn machine_key(m: &MachineIdentity) -> Option<(String, String)> {
    // Identifiers come from the caller: short printable text only (they are stored and logged).
    let usable = |v: &Option<String>| {
        v.as_deref()
            .map(str::trim)
            .filter(|v| v.len() <= 128 && v.chars().all(|c| c.is_ascii_graphic() || c == ' ') && meaningful(v))
            .map(str::to_string)
    };
    let serial = usable(&m.serial);
    let mac = m
        .macs
        .iter()
        .map(|x| x.trim().to_ascii_lowercase())
        .filter(|x| x.len() == 17 && meaningful(&x.replace(':', "")))
        .min();
    let label = serial.clone().or_else(|| mac.as_ref().map(|x| x.replace(':', "")));
    if let Some(uuid) = usable(&m.product_uuid) {
        let uuid = uuid.to_ascii_lowercase();
        let label = label.unwrap_or_else(|| uuid.chars().take(8).collect());
        return Some((format!("uuid:{uuid}"), label));
    }
    if let Some(serial) = serial {
        return Some((format!("serial:{serial}"), serial));
    }
    mac.map(|mac| (format!("mac:{mac}"), mac.replace(':', "")))
}

/// Job names are shown everywhere: keep the machine's part to plain characters.
fn job_name(wave: &str, label: &str) -> String {
    let label: String =
        label.chars().map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' }).take(64).collect();
    format!("{wave}-{label}")
}

/// `POST /enrollments` (admin).
pub async fn create(
    State(st): State<Arc<AppState>>,
    Body(req): Body<call::CreateEnrollment>,
) -> ApiResult<(StatusCode, Json<Enrollment>)> {
    let name = req.name.trim();
    if name.is_empty() || name.len() > 100 {
        return Err(ApiErr::new(Code::BadName, "an enrollment needs a name of 1-100 characters"));
    }
    if let Some(cs) = req.options.chunk_size {
        treehash::validate_chunk_size(cs).map_err(|e| ApiErr::new(Code::BadChunkSize, e))?;
    }
    if req.max_jobs.is_some_and(|m| m == 0 || m > i64::MAX as u64) {
        return Err(ApiErr::new(Code::BadMaxJobs, "max_jobs must be at least 1 (leave it out for no limit)"));
    }
    super::admin::check_wave(&req.options)?;
    let mut req = CreateEnrollment { name: name.to_string(), ..req };
    // An enrollment is a wave: its jobs are in the wave of its name unless it names another.
    if req.options.wave.is_none() && valid_wave(&req.name) {
        req.options.wave = Some(req.name.clone());
    }
    let token = random_hex(32);
    let mut e = st.db.create_enrollment(&req, &random_hex(6), &tokens::hash(&token))?;
    log::info!("enrollment {} ({}) created", e.id, e.name);
    // Shown this once: the receiver keeps only its hash.
    e.token = Some(token);
    Ok((StatusCode::CREATED, Json(e)))
}

/// `GET /enrollments` (admin, viewer): tokens are not kept, so none are listed.
pub async fn list(State(st): State<Arc<AppState>>) -> ApiResult<Json<Vec<Enrollment>>> {
    Ok(Json(st.db.enrollments()?))
}

/// `POST /enrollments/{id}/revoke` (admin).
pub async fn revoke(State(st): State<Arc<AppState>>, Path(id): Path<String>) -> ApiResult<Json<Enrollment>> {
    if !valid_job_id(&id) {
        return Err(ApiErr::new(Code::BadEnrollmentId, "an enrollment id is 1-64 lowercase letters, digits or '-'"));
    }
    let e = st
        .db
        .revoke_enrollment(&id)?
        .ok_or_else(|| ApiErr::new(Code::NoSuchEnrollment, format!("there is no enrollment {id}")))?;
    log::info!("enrollment {id} revoked");
    Ok(Json(e))
}

/// `POST /enroll` (enrollment token): the calling machine's job.
pub async fn enroll(
    State(st): State<Arc<AppState>>,
    auth: Authorized,
    headers: HeaderMap,
    Body(req): Body<call::Enroll>,
) -> ApiResult<(StatusCode, Json<EnrollAnswer>)> {
    let e = auth.enrollment.expect("the enrollment route carries its enrollment");
    // The middleware accepted this token as the enrollment's.
    let presented = bearer(&headers)?;
    let revoked = || {
        ApiErr::new(
            Code::EnrollmentRevoked,
            format!("enrollment {} ({}) was revoked: ask the operator for a job", e.id, e.name),
        )
    };
    if e.revoked_at.is_some() {
        return Err(revoked());
    }
    let Some((key, label)) = machine_key(&req.machine) else {
        return Err(ApiErr::new(
            Code::NoIdentity,
            "this machine has no DMI product UUID, serial or MAC address to tell it apart: give it a job instead",
        ));
    };
    let new = CreateJob {
        name: job_name(&e.name, &label),
        target: e.target,
        options: e.options.clone(),
        client_token: None,
        target_spec: None,
    };
    // A job's target is named by the operator later (`ferry job token --target`); until then
    // its target token is one nobody holds.
    let target_hash = (e.target == TargetKind::Instance).then(|| tokens::hash(&random_hex(32)));
    let ids = NewJobIds { id: &random_hex(6), target_token: target_hash.as_deref() };
    let token_for = |job: &str| tokens::hash(&tokens::derived_job_token(presented, job));
    // Revoked meanwhile, or full: the database checks inside its transaction.
    let (job, created) = match st.db.enrolled_job(&e, &key, req.offline, &new, ids, &token_for)? {
        Enrolled::Job(job, created) => (*job, created),
        Enrolled::Revoked => return Err(revoked()),
        Enrolled::Full(made) => {
            return Err(ApiErr::new(
                Code::EnrollmentFull,
                format!(
                    "enrollment {} ({}) already has its {made} machines, and this machine ({label}) is not one of them: ask the operator",
                    e.id, e.name
                ),
            ))
        }
    };
    if created {
        log::info!("enrollment {}: job {} ({}) created for {key:?}", e.id, job.id, job.name);
    }
    let token = tokens::derived_job_token(presented, &job.id);
    let answer = EnrollAnswer { job: job.id, name: job.name, token, created, state: job.state };
    Ok((if created { StatusCode::CREATED } else { StatusCode::OK }, Json(answer)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(uuid: Option<&str>, serial: Option<&str>, macs: &[&str]) -> MachineIdentity {
        MachineIdentity {
            product_uuid: uuid.map(str::to_string),
            serial: serial.map(str::to_string),
            macs: macs.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn machines_are_told_apart_by_uuid_then_serial_then_mac() {
        let uuid = "4C4C4544-0042-3510-8052-B4C04F333732";
        // (machine, key, label)
        let cases: &[(MachineIdentity, Option<(&str, &str)>)] = &[
            (
                m(Some(uuid), Some("SRV-7"), &["52:54:00:12:34:56"]),
                Some(("uuid:4c4c4544-0042-3510-8052-b4c04f333732", "SRV-7")),
            ),
            (m(Some(uuid), None, &[]), Some(("uuid:4c4c4544-0042-3510-8052-b4c04f333732", "4c4c4544"))),
            (m(None, Some(" SRV-7 "), &["52:54:00:12:34:56"]), Some(("serial:SRV-7", "SRV-7"))),
            // Placeholders that firmware writes identify nothing.
            (
                m(
                    Some("00000000-0000-0000-0000-000000000000"),
                    Some("To Be Filled By O.E.M."),
                    &["52:54:00:AB:00:02", "52:54:00:ab:00:01"],
                ),
                Some(("mac:52:54:00:ab:00:01", "525400ab0001")),
            ),
            (m(None, Some("Default string"), &["00:00:00:00:00:00"]), None),
            (m(None, None, &["garbage"]), None),
            // Text nobody's firmware writes: too long, or with control characters.
            (
                m(Some(&"a".repeat(129)), Some("SRV\n7"), &["52:54:00:00:00:07"]),
                Some(("mac:52:54:00:00:00:07", "525400000007")),
            ),
            (m(None, None, &[]), None),
        ];
        for (machine, want) in cases {
            let got = machine_key(machine);
            assert_eq!(got.as_ref().map(|(k, l)| (k.as_str(), l.as_str())), *want, "{machine:?}");
        }
    }

    #[test]
    fn job_names_keep_to_plain_characters() {
        assert_eq!(job_name("wave-3", "SRV 7/../x"), "wave-3-SRV_7_.._x");
        assert_eq!(job_name("w", &"a".repeat(300)).len(), 2 + 64);
    }
}
