//! Bedrock's error responses on the wire.

use axum::http::{HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// Why the simulator refuses an access key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Its session has expired.
    Expired,
    /// It may not call the model.
    Denied,
}

/// A Bedrock error: status, exception name and message.
#[derive(Debug, Clone)]
pub struct BedrockError {
    pub status: StatusCode,
    pub exception: &'static str,
    pub message: String,
    pub retry_after_s: Option<u64>,
}

impl BedrockError {
    pub fn throttling(message: &str, retry_after_ms: u64) -> Self {
        Self {
            status: StatusCode::TOO_MANY_REQUESTS,
            exception: "ThrottlingException",
            message: message.to_owned(),
            retry_after_s: Some(retry_after_ms.div_ceil(1000).max(1)),
        }
    }

    pub fn validation(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            exception: "ValidationException",
            message: message.into(),
            retry_after_s: None,
        }
    }

    pub fn unavailable() -> Self {
        Self {
            status: StatusCode::SERVICE_UNAVAILABLE,
            exception: "ServiceUnavailableException",
            message: "Bedrock is unable to process your request.".to_owned(),
            retry_after_s: None,
        }
    }

    /// Bedrock's answer to credentials it does not take: expired
    /// (`ExpiredTokenException`) or without access (`AccessDeniedException`).
    pub fn refused_credentials(refusal: KeyRefusal, access_key: &str) -> Self {
        let (exception, message) = match refusal {
            KeyRefusal::Expired => (
                "ExpiredTokenException",
                format!("The security token included in the request is expired ({access_key})"),
            ),
            KeyRefusal::Denied => (
                "AccessDeniedException",
                format!("{access_key} is not authorized to perform: bedrock:InvokeModel"),
            ),
        };
        Self {
            status: StatusCode::FORBIDDEN,
            exception,
            message,
            retry_after_s: None,
        }
    }

    pub fn internal() -> Self {
        Self {
            status: StatusCode::INTERNAL_SERVER_ERROR,
            exception: "InternalServerException",
            message: "The server encountered an internal error.".to_owned(),
            retry_after_s: None,
        }
    }
}

impl IntoResponse for BedrockError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "message": self.message }).to_string();
        let mut response = (self.status, body).into_response();
        let headers = response.headers_mut();
        headers.insert("content-type", HeaderValue::from_static("application/json"));
        let error_type = format!(
            "{}:http://internal.amazon.com/coral/com.amazon.bedrock/",
            self.exception
        );
        if let Ok(v) = HeaderValue::from_str(&error_type) {
            headers.insert("x-amzn-errortype", v);
        }
        if let Some(s) = self.retry_after_s {
            headers.insert("retry-after", HeaderValue::from(s));
        }
        response
    }
}
