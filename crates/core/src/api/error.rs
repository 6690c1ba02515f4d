//! A [`GatewayError`] in the gateway's own shape, which the Bedrock routes,
//! the admin API and the jobs API answer with: JSON with a stable `code`, a
//! human `message` and the attempts made, plus Bedrock's `x-amzn-errortype`
//! header so AWS SDK clients see the exception they expect
//! (ThrottlingException on 429, and so on). The OpenAI routes render the
//! same error in OpenAI's shape (`openai::error_response`).

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::router::AttemptRecord;
use crate::service::{ErrorCode, GatewayError};

/// A body that could not be read: 413 `body_too_large` past the route's
/// limit, 408 `body_timeout` when the client was too slow to send it
/// (`[http] body_read_timeout_ms`), else 400 `unreadable_body`.
pub fn unreadable_body(rejection: &BytesRejection) -> GatewayError {
    if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
        return body_too_large();
    }
    if crate::edge::is_body_timeout(rejection) {
        return GatewayError::refused(
            ErrorCode::BodyTimeout,
            "the request body did not arrive within http.body_read_timeout_ms",
        );
    }
    GatewayError::refused(ErrorCode::UnreadableBody, rejection.body_text())
}

/// 413 `body_too_large`.
pub fn body_too_large() -> GatewayError {
    GatewayError::refused(
        ErrorCode::BodyTooLarge,
        "the request body is larger than this route accepts (limits.max_body_bytes for model calls)",
    )
}

/// A JSON body that could not be read ([`unreadable_body`]) or parsed
/// (400 `invalid_json`).
pub fn unreadable_json(rejection: &JsonRejection) -> GatewayError {
    match rejection {
        JsonRejection::BytesRejection(bytes) => unreadable_body(bytes),
        other => GatewayError::refused(ErrorCode::InvalidJson, other.body_text()),
    }
}

/// The Bedrock exception an AWS SDK client should see for `status`.
fn bedrock_exception(status: StatusCode) -> &'static str {
    match status.as_u16() {
        429 => "ThrottlingException",
        503 => "ServiceUnavailableException",
        404 => "ResourceNotFoundException",
        403 | 401 => "AccessDeniedException",
        408 | 504 => "ModelTimeoutException",
        400..=499 => "ValidationException",
        _ => "InternalServerException",
    }
}

/// The JSON body of `e`: `{"code", "message", "attempts"?}`.
#[derive(Serialize)]
pub struct ErrorBody<'a> {
    code: ErrorCode,
    message: String,
    #[serde(skip_serializing_if = "<[_]>::is_empty")]
    attempts: &'a [AttemptRecord],
}

impl<'a> ErrorBody<'a> {
    pub fn of(e: &'a GatewayError) -> Self {
        Self {
            code: e.code(),
            message: e.to_string(),
            attempts: e.attempts(),
        }
    }
}

/// `e` answered in the gateway's shape, under `request_id` when known.
pub fn error_response(e: &GatewayError, request_id: Option<&str>) -> Response {
    let body = serde_json::to_string(&ErrorBody::of(e)).unwrap_or_else(|_| {
        r#"{"code":"internal","message":"error could not be encoded"}"#.to_owned()
    });
    let status = e.status();
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert(
        "x-amzn-errortype",
        HeaderValue::from_static(bedrock_exception(status)),
    );
    retry_after(&mut response, e);
    if let Some(id) = request_id.and_then(|id| HeaderValue::from_str(id).ok()) {
        let headers = response.headers_mut();
        headers.insert("x-request-id", id.clone());
        headers.insert("x-amzn-requestid", id);
    }
    response
}

/// Sets `retry-after` (whole seconds, at least 1) when `e` says when to retry.
pub fn retry_after(response: &mut Response, e: &GatewayError) {
    if let Some(ms) = e.retry_after_ms() {
        response
            .headers_mut()
            .insert("retry-after", HeaderValue::from(ms.div_ceil(1000).max(1)));
    }
}

impl IntoResponse for GatewayError {
    fn into_response(self) -> Response {
        error_response(&self, None)
    }
}
