//! The facts of a model call that its HTTP request carries outside the
//! body, as extractors: who it is from ([`Caller`]: an API key, or the open
//! gateway's `x-switchyard-user`, with its rank), how long it may wait
//! ([`MaxWait`]), and all of them with the request's id ([`CallFacts`]).
//! A fact that is malformed is a [`GatewayError`] the handler answers in
//! its API's shape.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue};
use axum::response::Response;

use super::AppState;
use crate::service::{Caller, ErrorCode, GatewayError};

/// Header a client may set to name the user a request belongs to.
pub const USER_HEADER: &str = "x-switchyard-user";
/// Header a client may set to rank its request in the fair queue (an
/// integer; higher goes first; default 0).
pub const PRIORITY_HEADER: &str = "x-switchyard-priority";
/// Header a client may set to wait less than `admission.max_wait_ms` for
/// capacity (milliseconds).
pub const MAX_WAIT_HEADER: &str = "x-switchyard-max-wait-ms";

/// The request id: the client's `x-request-id` when it sent a sane one,
/// else a fresh one: 128 random bits as 32 hex digits, drawn from the
/// thread's fast generator (an id needs to be unique, not secret, and the
/// OS's generator cost a `getrandom` system call a request).
pub fn request_id(headers: &HeaderMap) -> String {
    headers
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128 && v.bytes().all(|b| b.is_ascii_graphic()))
        .map(str::to_owned)
        .unwrap_or_else(|| format!("{:032x}", fastrand::u128(..)))
}

/// Who a request is from: its API key's caller when keys are configured
/// (401 without a valid one); else the open gateway's `x-switchyard-user`
/// (or none), ranked by `x-switchyard-priority`. A keyed caller ranks by
/// its key: a client cannot raise its own priority.
impl FromRequestParts<Arc<AppState>> for Caller {
    type Rejection = GatewayError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, GatewayError> {
        caller(state, &parts.headers)
    }
}

/// The caller of a request with `headers` (see [`Caller`]'s extractor).
pub fn caller(state: &AppState, headers: &HeaderMap) -> Result<Caller, GatewayError> {
    if let Some(keyed) = state.access.rules().keys.authenticate(headers)? {
        return Ok(keyed);
    }
    let priority = header_number::<i32>(headers, PRIORITY_HEADER)?.unwrap_or(0);
    let user = headers
        .get(USER_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned);
    Caller::open(user, priority)
}

/// How long a request asks to wait at most for its turn and for capacity
/// (`x-switchyard-max-wait-ms`), in ms; the gateway's own limit caps it.
#[derive(Debug, Clone, Copy)]
pub struct MaxWait(pub Option<u64>);

impl<S: Send + Sync> FromRequestParts<S> for MaxWait {
    type Rejection = GatewayError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, GatewayError> {
        header_number(&parts.headers, MAX_WAIT_HEADER).map(Self)
    }
}

/// What a model call's HTTP request says of the call outside its body:
/// its id, who makes it and how long it may wait. The caller and the wait
/// are checked when the handler asks ([`checked`](Self::checked)), so
/// that their errors come in its API's shape, under the request's id.
pub struct CallFacts {
    pub request_id: String,
    /// The client's W3C trace context, when traces are on.
    pub trace: Option<crate::telemetry::TraceContext>,
    caller: Result<Caller, GatewayError>,
    max_wait: Result<MaxWait, GatewayError>,
}

impl CallFacts {
    /// The caller and the wait it asks for, or why they are refused.
    pub fn checked(self) -> Result<(Caller, Option<u64>), GatewayError> {
        let caller = self.caller?;
        let MaxWait(max_wait_ms) = self.max_wait?;
        Ok((caller, max_wait_ms))
    }
}

impl FromRequestParts<Arc<AppState>> for CallFacts {
    type Rejection = Infallible;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<AppState>,
    ) -> Result<Self, Infallible> {
        Ok(Self {
            request_id: request_id(&parts.headers),
            trace: crate::telemetry::TraceContext::from_headers(&parts.headers),
            caller: Caller::from_request_parts(parts, state).await,
            max_wait: MaxWait::from_request_parts(parts, state).await,
        })
    }
}

/// A numeric header, if present; a malformed one is a 400 naming it.
fn header_number<N: std::str::FromStr>(
    headers: &HeaderMap,
    name: &str,
) -> Result<Option<N>, GatewayError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|v| v.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                GatewayError::refused_param(
                    ErrorCode::InvalidHeader,
                    format!("the `{name}` header must be an integer"),
                    name,
                )
            }),
    }
}

/// The headers of a routed answer: its id, the deployment that answered
/// and how many attempts it took.
pub fn routed_headers(
    response: &mut Response,
    request_id: &str,
    deployment: &str,
    attempts: usize,
) {
    let headers = response.headers_mut();
    if let Ok(id) = HeaderValue::from_str(request_id) {
        headers.insert("x-request-id", id.clone());
        headers.insert("x-amzn-requestid", id);
    }
    if let Ok(d) = HeaderValue::from_str(deployment) {
        headers.insert("x-switchyard-deployment", d);
    }
    headers.insert("x-switchyard-attempts", HeaderValue::from(attempts));
}
