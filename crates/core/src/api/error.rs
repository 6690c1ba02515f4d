//! Every error the gateway answers with: JSON with a stable `code` and a human
//! `message`, plus Bedrock's `x-amzn-errortype` header so AWS SDK clients see
//! the exception they expect (ThrottlingException on 429, and so on).

use axum::extract::rejection::{BytesRejection, JsonRejection};
use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::router::AttemptRecord;

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    pub status: StatusCode,
    /// Stable, machine-readable.
    pub code: &'static str,
    /// For people.
    pub message: String,
    /// The attempts made, when any were.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub attempts: Vec<AttemptRecord>,
    #[serde(skip)]
    pub retry_after_ms: Option<u64>,
    #[serde(skip)]
    pub request_id: Option<String>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            attempts: Vec::new(),
            retry_after_ms: None,
            request_id: None,
        }
    }

    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "no such route")
    }

    /// A body that could not be read: 413 `body_too_large` past the
    /// route's limit, 408 `body_timeout` when the client was too slow to
    /// send it (`[http] body_read_timeout_ms`), else 400 `unreadable_body`.
    pub fn unreadable_body(rejection: &BytesRejection) -> Self {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            return Self::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is larger than this route accepts (limits.max_body_bytes for model calls)",
            );
        }
        if crate::edge::is_body_timeout(rejection) {
            return Self::new(
                StatusCode::REQUEST_TIMEOUT,
                "body_timeout",
                "the request body did not arrive within http.body_read_timeout_ms",
            );
        }
        Self::new(
            StatusCode::BAD_REQUEST,
            "unreadable_body",
            rejection.body_text(),
        )
    }

    /// A JSON body that could not be read ([`unreadable_body`](Self::unreadable_body))
    /// or parsed (400 `invalid_json`).
    pub fn unreadable_json(rejection: &JsonRejection) -> Self {
        match rejection {
            JsonRejection::BytesRejection(bytes) => Self::unreadable_body(bytes),
            other => Self::new(StatusCode::BAD_REQUEST, "invalid_json", other.body_text()),
        }
    }

    /// The Bedrock exception an AWS SDK client should see for this status.
    fn bedrock_exception(&self) -> &'static str {
        match self.status.as_u16() {
            429 => "ThrottlingException",
            503 => "ServiceUnavailableException",
            404 => "ResourceNotFoundException",
            403 | 401 => "AccessDeniedException",
            408 | 504 => "ModelTimeoutException",
            400..=499 => "ValidationException",
            _ => "InternalServerException",
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::to_string(&self).unwrap_or_else(|_| {
            r#"{"code":"internal","message":"error could not be encoded"}"#.to_owned()
        });
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        headers.insert(
            "x-amzn-errortype",
            HeaderValue::from_static(self.bedrock_exception()),
        );
        if let Some(ms) = self.retry_after_ms {
            headers.insert("retry-after", HeaderValue::from(ms.div_ceil(1000).max(1)));
        }
        if let Some(id) = self
            .request_id
            .as_deref()
            .and_then(|id| HeaderValue::from_str(id).ok())
        {
            headers.insert("x-request-id", id.clone());
            headers.insert("x-amzn-requestid", id);
        }
        response
    }
}
