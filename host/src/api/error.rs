//! Every error the gateway answers with: JSON with a stable `code` and a human
//! `message`, plus Bedrock's `x-amzn-errortype` header so AWS SDK clients see
//! the exception they expect (ThrottlingException on 429, and so on).

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
