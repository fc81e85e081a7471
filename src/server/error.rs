//! The receiver's one error answer: a stable [`Code`], its HTTP status, and words for people.
//! Internal failures (the database, the store's disk) are logged here with their detail and
//! answered as `internal` without it: a client learns that the receiver failed, not its paths.

use axum::extract::{FromRequest, Request};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use bytes::Bytes;

use crate::wire::routes::Call;
use crate::wire::{ApiError, Code};

/// An error answer.
#[derive(Debug)]
pub struct ApiErr {
    pub status: StatusCode,
    pub code: Code,
    pub message: String,
}

pub type ApiResult<T> = Result<T, ApiErr>;

impl ApiErr {
    /// `code` with its own HTTP status.
    pub fn new(code: Code, message: impl Into<String>) -> Self {
        let status =
            code.status().and_then(|s| StatusCode::from_u16(s).ok()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        Self { status, code, message: message.into() }
    }

    /// `code` with another status than its usual one (`not_instance_job` is 400 at creation
    /// and 409 on a job that exists).
    pub fn with_status(status: StatusCode, code: Code, message: impl Into<String>) -> Self {
        Self { status, code, message: message.into() }
    }
}

impl IntoResponse for ApiErr {
    fn into_response(self) -> Response {
        (self.status, Json(ApiError { code: self.code.as_str().into(), message: self.message })).into_response()
    }
}

impl From<anyhow::Error> for ApiErr {
    fn from(e: anyhow::Error) -> Self {
        log::error!("internal error: {e:#}");
        ApiErr::new(Code::Internal, "the receiver failed; its log says why")
    }
}

/// A call's JSON body, typed by the call: a handler that takes `Body<call::Register>` gets the
/// type `call::Register` declares, the same the client sends.
pub struct Body<C: Call>(pub C::Body);

impl<C: Call, S: Send + Sync> FromRequest<S> for Body<C> {
    type Rejection = Response;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(req, state).await.map_err(IntoResponse::into_response)?;
        parse_json(&bytes).map(Body).map_err(IntoResponse::into_response)
    }
}

pub fn parse_json<T: serde::de::DeserializeOwned>(body: &[u8]) -> ApiResult<T> {
    serde_json::from_slice(body).map_err(|e| ApiErr::new(Code::BadJson, format!("malformed request body: {e}")))
}
