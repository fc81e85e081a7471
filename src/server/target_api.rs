//! The target side of `instance` jobs: the operator names the target and allows wiping it; the
//! target machine registers, reads the verified disks back chunk by chunk, and reports what it
//! read back from its own disks.
//!
//! The receiver enforces what it can know itself (the wipe permission, that this is the machine
//! the job names and not the source, that the source side is Finished); the target agent checks
//! what only it can see (its disks' count, sizes and sector sizes) before writing anything.

use std::sync::Arc;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::Json;
use bytes::Bytes;

use super::api::{
    bad, check_job_id, conflict, job_caller, job_or_404, parse_json, require_admin, ApiErr, ApiResult, Caller,
};
use super::db::now;
use super::AppState;
use crate::agent::identity::meaningful;
use crate::image::{treehash, Manifest};
use crate::wire::*;

fn forbidden(code: &'static str, msg: impl Into<String>) -> ApiErr {
    ApiErr(StatusCode::FORBIDDEN, code, msg.into())
}

/// A target spec an operator may set: names are short, and wiping needs a named target.
pub fn validate_spec(spec: &TargetSpec) -> ApiResult<()> {
    let names = spec.machine.iter().chain(&spec.disks);
    if names.clone().count() > 64 || names.clone().any(|n| n.trim().is_empty() || n.len() > 200) {
        return Err(bad("bad_target", "name the target with at most 64 identifiers of 1-200 characters"));
    }
    if spec.allow_wipe && !spec.names_a_target() {
        return Err(bad(
            "target_unnamed",
            "allowing a wipe needs the target named: its DMI product UUID or serial (--target-machine), or its disks' serials or WWNs (--target-disk)",
        ));
    }
    Ok(())
}

/// `POST /jobs/{job}/target` (admin): names the target machine and sets the wipe permission.
pub async fn set_target(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Job>> {
    require_admin(&st, &headers)?;
    check_job_id(&job)?;
    let j = job_or_404(&st.db, &job, false)?;
    if j.target != TargetKind::Instance {
        return Err(conflict("not_instance_job", format!("job {job} exports images; it has no target machine")));
    }
    let spec: TargetSpec = parse_json(&body)?;
    validate_spec(&spec)?;
    st.db.set_target_spec(&job, &spec)?;
    log::info!("job {job}: target set to {:?}, wipe allowed: {}", spec.machine, spec.allow_wipe);
    Ok(Json(job_or_404(&st.db, &job, true)?))
}

/// The target may call: the caller holds the target token of an instance job, or (for the
/// reading calls only) is the admin. The source's token and the read-only viewer token never
/// reach a disk's bytes or change a delivery.
fn target_caller(st: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<(Caller, JobState)> {
    let (caller, state) = job_caller(st, headers, job)?;
    match caller {
        Caller::Target | Caller::Admin => Ok((caller, state)),
        Caller::Agent => {
            Err(forbidden("forbidden", "the source's token cannot read disks back; the target has its own token"))
        }
        Caller::Viewer => Err(forbidden("forbidden", "the viewer token only reads jobs")),
    }
}

/// Only the target machine itself: registering, reporting progress and results.
fn only_target(st: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<JobState> {
    match target_caller(st, headers, job)? {
        (Caller::Target, state) => Ok(state),
        _ => Err(forbidden("forbidden", "only the job's target machine (its target token) may do this")),
    }
}

fn matches_any(wanted: &[String], have: &[Option<&str>]) -> bool {
    wanted.iter().any(|w| have.iter().flatten().any(|h| meaningful(h) && h.trim().eq_ignore_ascii_case(w.trim())))
}

/// Why this machine may not receive the job's disks, if it may not.
pub fn refuse_target(
    spec: &TargetSpec,
    source: Option<&MachineIdentity>,
    target: &MachineIdentity,
    disks: &[DiskIdentity],
) -> Option<(&'static str, String)> {
    if !spec.allow_wipe {
        return Some((
            "wipe_not_allowed",
            "the job does not allow wiping this machine; the operator must allow it (ferry job target --allow-wipe)"
                .into(),
        ));
    }
    let ids = [target.product_uuid.as_deref(), target.serial.as_deref()];
    if !spec.machine.is_empty() && !matches_any(&spec.machine, &ids) {
        return Some((
            "wrong_target",
            format!(
                "this machine (UUID {}, serial {}) is not the one the job names ({})",
                target.product_uuid.as_deref().unwrap_or("none"),
                target.serial.as_deref().unwrap_or("none"),
                spec.machine.join(", ")
            ),
        ));
    }
    for wanted in &spec.disks {
        let found =
            disks.iter().any(|d| matches_any(std::slice::from_ref(wanted), &[d.serial.as_deref(), d.wwn.as_deref()]));
        if !found {
            return Some(("wrong_target", format!("the job names a disk {wanted} that this machine does not have")));
        }
    }
    if let Some(src) = source {
        let same = |a: &Option<String>, b: &Option<String>| match (a, b) {
            (Some(a), Some(b)) => meaningful(a) && a.eq_ignore_ascii_case(b),
            _ => false,
        };
        if same(&src.product_uuid, &target.product_uuid) || same(&src.serial, &target.serial) {
            return Some((
                "target_is_source",
                "this machine is the source of the job (same DMI UUID or serial): ferry never writes to the source"
                    .into(),
            ));
        }
    }
    None
}

fn new_delivery() -> Delivery {
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

fn event(state: JobState, code: Option<&str>, reason: Option<&str>) -> JobEvent {
    JobEvent { at: now(), state, code: code.map(Into::into), reason: reason.map(Into::into) }
}

/// Moves a delivery to `state`, with an event in its history.
fn transition(d: &mut Delivery, state: JobState, code: Option<&str>, reason: Option<&str>) {
    let (code, reason) = if state == JobState::InError { (code, reason) } else { (None, None) };
    d.state = state;
    d.error_code = code.map(Into::into);
    d.error_reason = reason.map(Into::into);
    d.history.push(event(state, code, reason));
}

/// `POST /jobs/{job}/target/register` (target): who is asking; the answer is the plan.
pub async fn register(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<Json<TargetPlan>> {
    let job_state = only_target(&st, &headers, &job)?;
    let req: TargetRegister = parse_json(&body)?;
    let j = job_or_404(&st.db, &job, false)?;
    if j.target != TargetKind::Instance {
        return Err(conflict("not_instance_job", format!("job {job} exports images; it has no target machine")));
    }
    if j.delivery.as_ref().is_some_and(|d| d.state == JobState::Finished) {
        return Err(conflict(
            "already_delivered",
            format!("job {job} was already written to its target and verified; boot the target from its disks"),
        ));
    }
    let spec = j.target_spec.clone().unwrap_or_default();
    // The machine checks come first: a machine that may never receive the disks is told so at
    // once, not after waiting for the source.
    let refusal = refuse_target(&spec, j.machine.as_ref(), &req.machine, &req.disks).or_else(|| {
        (job_state != JobState::Finished).then(|| {
            ("source_not_finished", format!("the source side of job {job} is {}, not Finished", job_state.as_str()))
        })
    });
    let same_machine = |d: &Delivery| {
        d.machine.as_ref().is_some_and(|m| crate::agent::identity::same_machine(m, &req.machine))
            && d.target_disks
                .iter()
                .map(|x| (&x.serial, &x.wwn, x.size))
                .eq(req.disks.iter().map(|x| (&x.serial, &x.wwn, x.size)))
    };
    let rewriting = j.delivery.as_ref().is_some_and(|d| {
        matches!(d.state, JobState::Running | JobState::InError) && !d.disks.is_empty() && same_machine(d)
    });
    if let (Some((code, reason)), Some(d)) = (&refusal, &j.delivery) {
        if d.state == JobState::Running && !same_machine(d) {
            // Another machine with the token must not disturb the one that is writing.
            log::warn!("job {job}: a second machine tried to register while the target writes ({code}): {reason}");
            return Err(ApiErr(
                StatusCode::CONFLICT,
                "target_busy",
                "another machine is writing this job's disks".into(),
            ));
        }
    }
    st.db.update_delivery(&job, |d| {
        let d = d.get_or_insert_with(new_delivery);
        d.machine = Some(req.machine.clone());
        d.target_disks = req.disks.clone();
        match &refusal {
            // Waiting for the source is not an error: the target polls until it is Finished.
            Some(("source_not_finished", _)) => {
                if d.state != JobState::Waiting || d.history.is_empty() {
                    transition(d, JobState::Waiting, None, None)
                }
            }
            Some((code, reason)) => transition(d, JobState::InError, Some(code), Some(reason)),
            // The mapping of an earlier attempt stays until `begin` replaces it: an attempt
            // cut between register and begin must not cost the next one its resume.
            None => transition(d, JobState::Waiting, None, None),
        }
    })?;
    if let Some((code, reason)) = refusal {
        log::warn!("job {job}: target refused: {reason}");
        let status = match code {
            "wipe_not_allowed" | "wrong_target" => StatusCode::FORBIDDEN,
            _ => StatusCode::CONFLICT,
        };
        return Err(ApiErr(status, code, reason));
    }
    log::info!("job {job}: target registered with {} disks", req.disks.len());
    let disks = j
        .disks
        .iter()
        .map(|d| SourceDisk {
            index: d.index,
            identity: d.identity.clone(),
            partition_table: d.partition_table.clone(),
            size: d.size,
            chunk_size: d.chunk_size,
            blake3: d.blake3.clone().unwrap_or_default(),
        })
        .collect();
    Ok(Json(TargetPlan { job, name: j.name, source_machine: j.machine, disks, named_disks: spec.disks, rewriting }))
}

/// A registered target that is allowed to read and write: the job Finished on the source side,
/// the wipe allowed, the delivery not refused.
fn reading_target(st: &AppState, headers: &HeaderMap, job: &str) -> ApiResult<Job> {
    let (caller, job_state) = target_caller(st, headers, job)?;
    if job_state != JobState::Finished {
        return Err(conflict("source_not_finished", format!("the source side of job {job} is {}", job_state.as_str())));
    }
    let j = job_or_404(&st.db, job, false)?;
    if caller == Caller::Admin {
        return Ok(j);
    }
    if !j.target_spec.as_ref().is_some_and(|s| s.allow_wipe) {
        return Err(forbidden("wipe_not_allowed", "the job does not allow wiping its target"));
    }
    match j.delivery.as_ref().map(|d| d.state) {
        Some(JobState::Waiting | JobState::Running) => Ok(j),
        Some(JobState::Finished) => Err(conflict("already_delivered", "this job's target is already verified")),
        _ => Err(conflict("not_registered", "register the target first (POST target/register)")),
    }
}

/// `POST /jobs/{job}/target/begin` (target): the mapping it is about to write.
pub async fn begin(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    only_target(&st, &headers, &job)?;
    let j = reading_target(&st, &headers, &job)?;
    let req: TargetBegin = parse_json(&body)?;
    let mut seen: Vec<u32> = req.disks.iter().map(|d| d.source_index).collect();
    seen.sort_unstable();
    let expected: Vec<u32> = j.disks.iter().map(|d| d.index).collect();
    if seen != expected {
        return Err(bad("bad_mapping", format!("the mapping covers source disks {seen:?}, the job has {expected:?}")));
    }
    st.db.update_delivery(&job, |d| {
        if let Some(d) = d {
            d.disks = req.disks.clone();
            transition(d, JobState::Running, None, None);
        }
    })?;
    log::info!("job {job}: target writing {} disks", req.disks.len());
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{job}/target/progress` (target heartbeat).
pub async fn progress(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    only_target(&st, &headers, &job)?;
    reading_target(&st, &headers, &job)?;
    let p: TargetProgress = parse_json(&body)?;
    st.db.update_delivery(&job, |d| {
        if let Some(disk) = d.as_mut().and_then(|d| d.disks.iter_mut().find(|x| x.source_index == p.source_index)) {
            disk.bytes_written = p.bytes_written;
        }
    })?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{job}/target/fail` (target): it refused or gave up; nothing more is written.
pub async fn fail(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<StatusCode> {
    only_target(&st, &headers, &job)?;
    let f: Failure = parse_json(&body)?;
    let code: String = f.code.chars().filter(|c| c.is_ascii_alphanumeric() || *c == '_').take(64).collect();
    let reason: String = f.reason.chars().take(2000).collect();
    st.db.update_delivery(&job, |d| {
        // A target that fails before it registered (no driver for its disks, no disks) is
        // recorded too: the operator must see it.
        let d = d.get_or_insert_with(new_delivery);
        if d.state != JobState::Finished {
            transition(d, JobState::InError, Some(&code), Some(&reason));
        }
    })?;
    log::warn!("job {job}: the target failed ({code}): {reason}");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /jobs/{job}/target/finish` (target): what it read back. The delivery is Finished only
/// when every source disk's whole-disk hash was read back from a target disk.
pub async fn finish(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(job): Path<String>,
    body: Bytes,
) -> ApiResult<Json<Job>> {
    only_target(&st, &headers, &job)?;
    let j = reading_target(&st, &headers, &job)?;
    let done: TargetDone = parse_json(&body)?;
    let mut problem = None;
    for src in &j.disks {
        let got = done.disks.iter().find(|d| d.source_index == src.index);
        match (got.and_then(|d| d.blake3.as_deref()), src.blake3.as_deref()) {
            (Some(read), Some(want)) if read == want && got.is_some_and(|d| d.verified) => {}
            (Some(read), Some(want)) => {
                problem = Some(format!("disk {} read back as blake3 {read}, the source's is {want}", src.index));
                break;
            }
            _ => {
                problem = Some(format!("disk {} was not read back", src.index));
                break;
            }
        }
    }
    st.db.update_delivery(&job, |d| {
        if let Some(d) = d {
            d.disks = done.disks.clone();
            match &problem {
                None => transition(d, JobState::Finished, None, None),
                Some(p) => transition(d, JobState::InError, Some("readback_mismatch"), Some(p)),
            }
        }
    })?;
    if let Some(p) = problem {
        log::warn!("job {job}: target verification failed: {p}");
        return Err(ApiErr(StatusCode::UNPROCESSABLE_ENTITY, "readback_mismatch", p));
    }
    log::info!("job {job}: target verified, {} disks", done.disks.len());
    let mut j = job_or_404(&st.db, &job, false)?;
    j.target_spec = None;
    Ok(Json(j))
}

/// The verified manifest of a disk, read and checked once per receiver run.
fn cached_manifest(st: &AppState, job: &str, disk: u32) -> ApiResult<Arc<Manifest>> {
    let key = (job.to_string(), disk);
    if let Some(m) = st.manifests.lock().unwrap_or_else(|p| p.into_inner()).get(&key) {
        return Ok(m.clone());
    }
    let m = crate::store::export::load_manifest(&st.dir, job, disk)
        .map_err(|e| ApiErr(StatusCode::NOT_FOUND, "no_manifest", format!("{e:#}")))?;
    let m = Arc::new(m);
    st.manifests.lock().unwrap_or_else(|p| p.into_inner()).insert(key, m.clone());
    Ok(m)
}

/// `GET /jobs/{job}/disks/{disk}/manifest` (target or admin).
pub async fn manifest(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk)): Path<(String, u32)>,
) -> ApiResult<Json<Manifest>> {
    let j = reading_target(&st, &headers, &job)?;
    if !j.disks.iter().any(|d| d.index == disk && d.verified) {
        return Err(bad("bad_disk", format!("job {job} has no verified disk {disk}")));
    }
    let st2 = st.clone();
    let m = tokio::task::spawn_blocking(move || cached_manifest(&st2, &job, disk))
        .await
        .map_err(|e| anyhow::anyhow!("manifest task failed: {e}"))??;
    Ok(Json((*m).clone()))
}

/// `GET /jobs/{job}/disks/{disk}/chunks/{index}/data` (target or admin): a stored chunk's
/// bytes. Zero chunks are not stored; the target writes zeros for them itself.
pub async fn chunk(
    State(st): State<Arc<AppState>>,
    headers: HeaderMap,
    Path((job, disk, index)): Path<(String, u32, u64)>,
) -> ApiResult<([(&'static str, String); 1], Vec<u8>)> {
    let j = reading_target(&st, &headers, &job)?;
    if !j.disks.iter().any(|d| d.index == disk && d.verified) {
        return Err(bad("bad_disk", format!("job {job} has no verified disk {disk}")));
    }
    let st2 = st.clone();
    let (id, bytes) = tokio::task::spawn_blocking(move || -> ApiResult<_> {
        let m = cached_manifest(&st2, &job, disk)?;
        let entry = m.chunks.get(index as usize).ok_or_else(|| {
            bad("bad_index", format!("chunk {index} is past the last chunk ({})", m.chunks.len().saturating_sub(1)))
        })?;
        if entry.zero {
            return Err(ApiErr(StatusCode::NOT_FOUND, "zero_chunk", format!("chunk {index} is all zeros")));
        }
        let bytes =
            st2.store.get(&entry.id).map_err(|e| anyhow::anyhow!("reading chunk {index} from the store: {e}"))?;
        debug_assert_eq!(bytes.len() as u64, treehash::chunk_len(m.size, m.chunk_size, index));
        Ok((entry.id, bytes))
    })
    .await
    .map_err(|e| anyhow::anyhow!("chunk task failed: {e}"))??;
    st.metrics.chunk_bytes_served.fetch_add(bytes.len() as u64, std::sync::atomic::Ordering::Relaxed);
    Ok(([(CHUNK_ID_HEADER, hex::encode(id))], bytes))
}
