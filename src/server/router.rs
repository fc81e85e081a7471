//! The receiver's routes, mounted from the route table: each call's method and path come from
//! `wire::routes`, each is wrapped in the authorization of its callers, and the large bodies get
//! their own limits.

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::handler::Handler;
use axum::routing::{on, MethodFilter};
use axum::Router;

use super::{admin, auth, boot, budget, dashboard, enroll, logs, metrics, source, target, AppState};
use crate::image::treehash::MAX_CHUNK_SIZE;
use crate::wire::routes::{self, call, Call, Method, Route};
use crate::wire::API_PREFIX;

/// Room for the largest chunk plus headers of a compressed frame.
const CHUNK_BODY_LIMIT: usize = MAX_CHUNK_SIZE as usize + (1 << 20);
/// An inline manifest carries one id per chunk. This build's agents send at most a page of ids
/// inline (65,536: about 6 MB) and page the rest; 256 MiB takes what older agents send, up to a
/// 12 TiB disk in 4 MiB chunks.
const MANIFEST_BODY_LIMIT: usize = 256 << 20;
/// A page of at most 65,536 ids is about 6 MB of JSON.
const PAGE_BODY_LIMIT: usize = 16 << 20;
/// A live image's console transcript.
const LOG_BODY_LIMIT: usize = 256 << 10;
/// Every other body.
const CONTROL_BODY_LIMIT: usize = 1 << 20;

fn filter(m: Method) -> MethodFilter {
    match m {
        Method::Get => MethodFilter::GET,
        Method::Post => MethodFilter::POST,
        Method::Put => MethodFilter::PUT,
    }
}

/// Mounts `handler` at `route`, behind the authorization of the route's callers.
fn mount<H, T>(
    r: Router<Arc<AppState>>,
    st: &Arc<AppState>,
    route: Route,
    limit: usize,
    handler: H,
) -> Router<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let authorized = axum::middleware::from_fn_with_state((st.clone(), route), auth::authorize);
    let mut method = on(filter(route.method), handler).layer(DefaultBodyLimit::max(limit));
    // A route whose bodies may be large also waits for its share of the body budget (after
    // authorization, before a byte of the body is read).
    if limit > CONTROL_BODY_LIMIT {
        method = method.layer(axum::middleware::from_fn_with_state((st.budget.clone(), limit), budget::hold));
    }
    r.route(route.path, method.route_layer(authorized))
}

/// [`mount`] for a call of the API.
fn api<C: Call, H, T>(r: Router<Arc<AppState>>, st: &Arc<AppState>, handler: H) -> Router<Arc<AppState>>
where
    H: Handler<T, Arc<AppState>>,
    T: 'static,
{
    let limit = match C::ROUTE {
        r if r == call::PutChunk::ROUTE => CHUNK_BODY_LIMIT,
        r if r == call::CompleteDisk::ROUTE => MANIFEST_BODY_LIMIT,
        r if r == call::PutPage::ROUTE => PAGE_BODY_LIMIT,
        r if r == call::PostLog::ROUTE => LOG_BODY_LIMIT,
        _ => CONTROL_BODY_LIMIT,
    };
    mount(r, st, C::ROUTE, limit, handler)
}

/// The API, the dashboard, the boot files and the metrics, on the receiver's main listener.
pub fn router(st: Arc<AppState>) -> Router {
    use call::*;
    let r = Router::new();
    let r = api::<Health, _, _>(r, &st, admin::health);
    let r = api::<CreateJob, _, _>(r, &st, admin::create_job);
    let r = api::<ListJobs, _, _>(r, &st, admin::list_jobs);
    let r = api::<ShowJob, _, _>(r, &st, admin::show_job);
    let r = api::<GetLog, _, _>(r, &st, logs::get_log);
    let r = api::<Receipt, _, _>(r, &st, admin::receipt);
    let r = api::<ListWaves, _, _>(r, &st, admin::list_waves);
    let r = api::<PostLog, _, _>(r, &st, logs::post_log);
    let r = api::<WhoAmI, _, _>(r, &st, admin::whoami);
    let r = api::<RestartJob, _, _>(r, &st, admin::restart_job);
    let r = api::<RotateTokens, _, _>(r, &st, admin::rotate_tokens);
    let r = api::<CancelJob, _, _>(r, &st, admin::cancel_job);
    let r = api::<SetTarget, _, _>(r, &st, target::set_target);
    let r = api::<CreateEnrollment, _, _>(r, &st, enroll::create);
    let r = api::<ListEnrollments, _, _>(r, &st, enroll::list);
    let r = api::<RevokeEnrollment, _, _>(r, &st, enroll::revoke);
    let r = api::<Enroll, _, _>(r, &st, enroll::enroll);
    let r = api::<Register, _, _>(r, &st, source::register);
    let r = api::<BeginDisk, _, _>(r, &st, source::begin_disk);
    let r = api::<Missing, _, _>(r, &st, source::missing);
    let r = api::<PutChunk, _, _>(r, &st, source::put_chunk);
    let r = api::<Progress, _, _>(r, &st, source::progress);
    let r = api::<PutPage, _, _>(r, &st, source::put_page);
    let r = api::<CompleteDisk, _, _>(r, &st, source::complete_disk);
    let r = api::<Finish, _, _>(r, &st, source::finish);
    let r = api::<Fail, _, _>(r, &st, source::fail);
    let r = api::<TargetRegister, _, _>(r, &st, target::register);
    let r = api::<TargetBegin, _, _>(r, &st, target::begin);
    let r = api::<TargetProgress, _, _>(r, &st, target::progress);
    let r = api::<TargetFinish, _, _>(r, &st, target::finish);
    let r = api::<TargetFail, _, _>(r, &st, target::fail);
    let r = api::<call::Manifest, _, _>(r, &st, target::manifest);
    let r = api::<GetPage, _, _>(r, &st, target::page);
    let r = api::<ChunkData, _, _>(r, &st, target::chunk);
    let outside = Router::new();
    let outside = mount(outside, &st, routes::DASHBOARD, CONTROL_BODY_LIMIT, dashboard::page);
    let outside = mount(outside, &st, routes::BOOT_FILE, CONTROL_BODY_LIMIT, boot::http::boot_file);
    let outside = mount(outside, &st, routes::METRICS, CONTROL_BODY_LIMIT, metrics::metrics);
    outside
        .nest(API_PREFIX, r)
        .route_layer(axum::middleware::from_fn_with_state(st.clone(), metrics::track))
        .with_state(st)
}

/// Only the boot files, for the plain-HTTP boot listener.
pub fn boot_router(st: Arc<AppState>) -> Router {
    mount(Router::new(), &st, routes::BOOT_FILE, CONTROL_BODY_LIMIT, boot::http::boot_file).with_state(st)
}
