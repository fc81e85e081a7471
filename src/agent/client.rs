//! The agent's HTTP client: bearer token, pinned TLS, retries with backoff.
//!
//! Network errors, timeouts and 5xx answers (except 507, a full store) are retried with
//! exponential backoff until `retry_for` has passed since the last success; a refusal (4xx, 507)
//! or a certificate that does not match the pin ends the call at once with the receiver's words.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reqwest::{Method, RequestBuilder, StatusCode};
use serde::de::DeserializeOwned;

use crate::tls;
use crate::wire::routes::{self, Call, Route};
use crate::wire::{ApiError, Code, API_PREFIX};

/// The receiver said no: the status, its stable code, its words.
#[derive(Debug, thiserror::Error)]
#[error("the receiver refused: {message} ({raw_code}, HTTP {status})")]
pub struct Refused {
    pub status: u16,
    /// The code, when it is one this ferry knows (a newer receiver may send others).
    pub code: Option<Code>,
    /// The code as it came.
    pub raw_code: String,
    pub message: String,
}

impl Refused {
    pub fn is(&self, code: Code) -> bool {
        self.code == Some(code)
    }
}

/// Whether `e` is the receiver's refusal with `code`.
pub fn refused_with(e: &anyhow::Error, code: Code) -> bool {
    e.downcast_ref::<Refused>().is_some_and(|r| r.is(code))
}

fn method(m: routes::Method) -> Method {
    match m {
        routes::Method::Get => Method::GET,
        routes::Method::Post => Method::POST,
        routes::Method::Put => Method::PUT,
    }
}

/// How to reach a receiver.
#[derive(Clone, Debug)]
pub struct Endpoint {
    /// `https://IP:PORT` or, with `plain_http`, `http://…`.
    pub server: String,
    pub token: String,
    pub pin: Option<String>,
    pub plain_http: bool,
    /// Give up after this long without any successful exchange.
    pub retry_for: Duration,
}

#[derive(Clone)]
pub struct Client {
    http: reqwest::Client,
    base: String,
    token: String,
    pin_mismatch: Option<Arc<AtomicBool>>,
    retry_for: Duration,
}

impl Client {
    pub fn new(ep: &Endpoint) -> Result<Self> {
        tls::install_crypto_provider();
        let server = ep.server.trim_end_matches('/');
        let builder = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(120))
            .pool_max_idle_per_host(16)
            // A pinned receiver answers itself: a redirect would lead the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("ferry/", env!("CARGO_PKG_VERSION")));
        let (builder, pin_mismatch) = if server.starts_with("https://") {
            let pin = ep.pin.as_deref().context(
                "an https:// receiver needs its pin (--pin, or ferry.pin= on the live image: the SHA-256 that ferry serve printed); ferry trusts no other certificate",
            )?;
            let (cfg, mismatch) = tls::pinned_client_config(pin)?;
            (builder.tls_backend_preconfigured(cfg), Some(mismatch))
        } else if server.starts_with("http://") {
            if !ep.plain_http {
                bail!("{server} is plain HTTP: disk data and tokens would travel unencrypted; add --plain-http (ferry.plain_http=1 on the live image) if you mean it");
            }
            (builder, None)
        } else {
            bail!("the receiver URL must start with https:// (or http:// with --plain-http), not {server:?}");
        };
        Ok(Self {
            http: builder.build().context("building the HTTP client")?,
            base: format!("{server}{API_PREFIX}"),
            token: ep.token.clone(),
            pin_mismatch,
            retry_for: ep.retry_for,
        })
    }

    /// The call `C` on the route's path filled with `args`, with `body` as JSON (none for a
    /// call whose body is `()`); decodes its answer.
    pub async fn call<C: Call>(&self, args: &[&str], body: &C::Body) -> Result<C::Answer> {
        self.call_waiting::<C>(args, body, None).await
    }

    /// [`Client::call`], waiting up to `wait` for each answer instead of the client's usual
    /// two minutes (a receiver verifying a large disk takes longer).
    pub async fn call_waiting<C: Call>(
        &self,
        args: &[&str],
        body: &C::Body,
        wait: Option<Duration>,
    ) -> Result<C::Answer> {
        let path = C::ROUTE.fill(args);
        // Serialized once: a retry sends the same bytes (a manifest can be megabytes).
        let json = bytes::Bytes::from(serde_json::to_vec(body)?);
        let has_body = &json[..] != b"null";
        let (_, answer) = self
            .request(&C::ROUTE, &path, |r| {
                let r = match wait {
                    Some(wait) => r.timeout(wait),
                    None => r,
                };
                if has_body {
                    r.header(reqwest::header::CONTENT_TYPE, "application/json").body(json.clone())
                } else {
                    r
                }
            })
            .await?;
        decode(&answer, &path)
    }

    /// A call whose body and answer are not JSON (a chunk, a transcript): the request `make`
    /// builds on `route` filled with `args` and `query`; the status and raw body of the answer.
    pub async fn call_raw(
        &self,
        route: &Route,
        args: &[&str],
        query: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let path = format!("{}{query}", route.fill(args));
        self.request(route, &path, make).await
    }

    async fn request(
        &self,
        route: &Route,
        path: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        self.send(method(route.method), path, make).await
    }

    /// Sends the request `make` builds (again on each retry); the status and raw body of a
    /// successful answer.
    async fn send(
        &self,
        method: Method,
        path: &str,
        make: impl Fn(RequestBuilder) -> RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes)> {
        let url = format!("{}{path}", self.base);
        let mut delay = Duration::from_millis(250);
        let started = Instant::now();
        loop {
            let req = make(self.http.request(method.clone(), &url).bearer_auth(&self.token));
            let outcome: Result<(), String> = match req.send().await {
                Ok(resp) => {
                    let status = resp.status();
                    match resp.bytes().await {
                        Ok(body) if status.is_success() => return Ok((status, body)),
                        Ok(body) if retryable(status) => {
                            Err(format!("HTTP {status}: {}", String::from_utf8_lossy(&body)))
                        }
                        Ok(body) => {
                            let e: ApiError = serde_json::from_slice(&body).unwrap_or(ApiError {
                                code: Code::Http.as_str().into(),
                                message: String::from_utf8_lossy(&body).trim().to_string(),
                            });
                            let code = Code::parse(&e.code);
                            return Err(Refused {
                                status: status.as_u16(),
                                code,
                                raw_code: e.code,
                                message: e.message,
                            }
                            .into());
                        }
                        Err(e) => Err(format!("reading the answer: {e}")),
                    }
                }
                Err(e) => {
                    if self.pin_mismatch.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) {
                        bail!(
                            "the receiver at {} presented a certificate that does not match --pin: refusing to talk to it",
                            self.base
                        );
                    }
                    Err(format!("{e:#}"))
                }
            };
            if let Err(why) = outcome {
                if started.elapsed() > self.retry_for {
                    bail!("gave up on {method} {url} after {}s of failures: {why}", self.retry_for.as_secs());
                }
                log::warn!("{method} {path} failed ({why}); retrying in {} ms", delay.as_millis());
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(10));
            }
        }
    }
}

/// A JSON answer; an empty one decodes as `null` (for the calls that answer nothing).
fn decode<T: DeserializeOwned>(body: &[u8], path: &str) -> Result<T> {
    let text = if body.is_empty() { &b"null"[..] } else { body };
    serde_json::from_slice(text).with_context(|| format!("decoding the receiver's answer to {path}"))
}

fn retryable(s: StatusCode) -> bool {
    (s.is_server_error() && s != StatusCode::INSUFFICIENT_STORAGE)
        || s == StatusCode::REQUEST_TIMEOUT
        || s == StatusCode::TOO_MANY_REQUESTS
}
