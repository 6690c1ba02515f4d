//! Errors in Anthropic's shape, with the statuses its SDKs map to
//! exceptions: `{"type":"error","error":{"type","message"},"request_id"}`.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

use super::super::error::retry_after;
use crate::service::{ErrorCode, GatewayError};

/// Anthropic's overloaded status: its SDKs raise `OverloadedError` and
/// retry.
const OVERLOADED: u16 = 529;

/// The status and Anthropic error type `e` is answered with.
fn status_and_type(e: &GatewayError) -> (StatusCode, &'static str) {
    let status = e.status();
    let kind = match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        504 => "timeout_error",
        400..=499 => "invalid_request_error",
        _ => "api_error",
    };
    // Every deployment failed (Bedrock unavailable or erring): Anthropic's
    // own word for that is overloaded, which its clients retry.
    if e.code() == ErrorCode::AllAttemptsFailed {
        let status = StatusCode::from_u16(OVERLOADED).expect("529 is a status");
        return (status, "overloaded_error");
    }
    (status, kind)
}

/// `e` as an Anthropic error body.
pub(super) fn error_body(e: &GatewayError, request_id: &str) -> serde_json::Value {
    let (_, kind) = status_and_type(e);
    let mut error = json!({ "type": kind, "message": e.to_string() });
    // Switchyard's own words beside Anthropic's: its stable code and, when
    // deployments were tried, what each attempt met.
    error["code"] = json!(e.code());
    if !e.attempts().is_empty() {
        error["attempts"] = json!(e.attempts());
    }
    json!({ "type": "error", "error": error, "request_id": request_id })
}

/// `e` answered in Anthropic's shape, with its status, `retry-after` and
/// the request id (`request-id`, as Anthropic names it).
pub(crate) fn error_response(e: &GatewayError, request_id: &str) -> Response {
    let (status, _) = status_and_type(e);
    let mut response = (status, axum::Json(error_body(e, request_id))).into_response();
    retry_after(&mut response, e);
    if let Ok(id) = HeaderValue::from_str(request_id) {
        response.headers_mut().insert("request-id", id.clone());
        response.headers_mut().insert("x-request-id", id);
    }
    response
}

/// The Anthropic error type of a failure in mid-stream, by Bedrock's
/// exception name.
pub(super) fn stream_error_type(exception: &str) -> &'static str {
    match exception {
        "throttlingException" => "rate_limit_error",
        "serviceUnavailableException" => "overloaded_error",
        "modelTimeoutException" => "timeout_error",
        "validationException" => "invalid_request_error",
        _ => "api_error",
    }
}
