//! Outcome classification: the one place that reads SDK errors.

use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_bedrockruntime::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_bedrockruntime::types::error::{ConverseStreamOutputError, ResponseStreamError};

use crate::error_chain::render;
use crate::outcome::OutcomeKind;

/// A failed attempt, classified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttemptFailure {
    /// What kind of failure.
    pub kind: OutcomeKind,
    /// Bedrock's status, when it answered.
    pub status: Option<u16>,
    /// How long Bedrock asked us to wait.
    pub retry_after_ms: Option<u64>,
    /// Bedrock's error code and message, or what went wrong on the way.
    pub detail: String,
}

impl AttemptFailure {
    pub(crate) fn timeout(detail: &str) -> Self {
        Self {
            kind: OutcomeKind::Timeout,
            status: None,
            retry_after_ms: None,
            detail: detail.to_owned(),
        }
    }

    pub(crate) fn server_error(detail: &str) -> Self {
        Self {
            kind: OutcomeKind::ServerError,
            status: None,
            retry_after_ms: None,
            detail: detail.to_owned(),
        }
    }
}

/// The outcome Bedrock's exception name stands for.
pub fn kind_of_code(code: &str) -> Option<OutcomeKind> {
    Some(match code {
        "ThrottlingException" | "ModelNotReadyException" | "ServiceQuotaExceededException" => {
            OutcomeKind::Throttled
        }
        // The deployment's own credentials or permissions failed: another
        // deployment (another account or role) may well succeed.
        "ServiceUnavailableException"
        | "AccessDeniedException"
        | "ExpiredTokenException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "IncompleteSignatureException"
        | "MissingAuthenticationTokenException" => OutcomeKind::Unavailable,
        "InternalServerException" | "ModelErrorException" | "ModelStreamErrorException" => {
            OutcomeKind::ServerError
        }
        "ModelTimeoutException" => OutcomeKind::Timeout,
        "ValidationException" | "ResourceNotFoundException" => OutcomeKind::ClientError,
        _ => return None,
    })
}

/// The outcome an HTTP status stands for, when the exception name says nothing.
pub fn kind_of_status(status: u16) -> OutcomeKind {
    match status {
        429 => OutcomeKind::Throttled,
        // 401/403: the deployment's credentials, not the client's request.
        503 | 502 | 401 | 403 => OutcomeKind::Unavailable,
        408 | 504 => OutcomeKind::Timeout,
        400..=499 => OutcomeKind::ClientError,
        _ => OutcomeKind::ServerError,
    }
}

fn caused_by_io(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<std::io::Error>() {
            return true;
        }
        cause = e.source();
    }
    false
}

fn retry_after_ms(headers: &aws_smithy_runtime_api::http::Headers) -> Option<u64> {
    let value = headers.get("retry-after")?;
    let seconds: f64 = value.trim().parse().ok()?;
    (seconds >= 0.0).then_some((seconds * 1000.0) as u64)
}

/// Whether the credentials provider failed somewhere in `error`'s chain.
fn caused_by_credentials(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = cause {
        if e.is::<CredentialsError>() {
            return true;
        }
        cause = e.source();
    }
    false
}

/// Classifies an error from `send()`.
pub fn sdk_error<E>(error: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> AttemptFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    // As on the signed path: credentials that cannot be had are this
    // deployment's failure, whichever stage of the SDK's call met it.
    if caused_by_credentials(error) {
        return AttemptFailure {
            kind: OutcomeKind::Unavailable,
            status: None,
            retry_after_ms: None,
            detail: format!("no credentials for this deployment: {}", render(error)),
        };
    }
    match error {
        SdkError::ServiceError(ctx) => {
            let raw = ctx.raw();
            let status = raw.status().as_u16();
            let err = ctx.err();
            let kind = err
                .code()
                .and_then(kind_of_code)
                .unwrap_or_else(|| kind_of_status(status));
            AttemptFailure {
                kind,
                status: Some(status),
                retry_after_ms: retry_after_ms(raw.headers()),
                detail: format!(
                    "{}: {}",
                    err.code().unwrap_or("UnknownError"),
                    err.message().unwrap_or("(no message)")
                ),
            }
        }
        SdkError::TimeoutError(_) => AttemptFailure::timeout("timed out waiting for Bedrock"),
        SdkError::DispatchFailure(failure) => AttemptFailure {
            kind: if failure.is_timeout() {
                OutcomeKind::Timeout
            } else {
                OutcomeKind::Unavailable
            },
            status: None,
            retry_after_ms: None,
            detail: format!("could not reach Bedrock: {}", render(error)),
        },
        SdkError::ResponseError(ctx) => AttemptFailure {
            kind: if caused_by_io(error) {
                OutcomeKind::Unavailable
            } else {
                OutcomeKind::ServerError
            },
            status: Some(ctx.raw().status().as_u16()),
            retry_after_ms: None,
            detail: format!("unreadable answer: {}", render(error)),
        },
        _ => AttemptFailure::server_error(&render(error)),
    }
}

/// The exception an in-stream ConverseStream error is: in-stream
/// exceptions carry no `code()`, the variant says what it was.
pub fn converse_stream_exception(e: &ConverseStreamOutputError) -> Option<&'static str> {
    match e {
        ConverseStreamOutputError::ThrottlingException(_) => Some("ThrottlingException"),
        ConverseStreamOutputError::ServiceUnavailableException(_) => {
            Some("ServiceUnavailableException")
        }
        ConverseStreamOutputError::ValidationException(_) => Some("ValidationException"),
        ConverseStreamOutputError::ModelStreamErrorException(_) => {
            Some("ModelStreamErrorException")
        }
        ConverseStreamOutputError::InternalServerException(_) => Some("InternalServerException"),
        _ => None,
    }
}

/// The exception an in-stream InvokeModelWithResponseStream error is.
pub fn invoke_stream_exception(e: &ResponseStreamError) -> Option<&'static str> {
    match e {
        ResponseStreamError::ThrottlingException(_) => Some("ThrottlingException"),
        ResponseStreamError::ServiceUnavailableException(_) => Some("ServiceUnavailableException"),
        ResponseStreamError::ValidationException(_) => Some("ValidationException"),
        ResponseStreamError::ModelStreamErrorException(_) => Some("ModelStreamErrorException"),
        ResponseStreamError::ModelTimeoutException(_) => Some("ModelTimeoutException"),
        ResponseStreamError::InternalServerException(_) => Some("InternalServerException"),
        _ => None,
    }
}

/// Classifies an error from a stream's `recv()`; `exception` names the
/// in-stream exception of the stream's own error type.
pub fn stream_error<E>(
    error: &SdkError<E, aws_smithy_types::event_stream::RawMessage>,
    exception: fn(&E) -> Option<&'static str>,
) -> AttemptFailure
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    match error {
        SdkError::ServiceError(ctx) => {
            let err = ctx.err();
            let name = exception(err)
                .or_else(|| err.code())
                .unwrap_or("InternalServerException");
            AttemptFailure {
                kind: kind_of_code(name).unwrap_or(OutcomeKind::ServerError),
                status: None,
                retry_after_ms: None,
                detail: format!("{name}: {}", err.message().unwrap_or("(no message)")),
            }
        }
        SdkError::TimeoutError(_) => AttemptFailure::timeout("the stream timed out"),
        _ => AttemptFailure {
            kind: if caused_by_io(error) {
                OutcomeKind::Unavailable
            } else {
                OutcomeKind::ServerError
            },
            status: None,
            retry_after_ms: None,
            detail: format!("the stream broke: {}", render(error)),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_names_map_to_outcomes() {
        assert_eq!(
            kind_of_code("ThrottlingException"),
            Some(OutcomeKind::Throttled)
        );
        assert_eq!(
            kind_of_code("ModelNotReadyException"),
            Some(OutcomeKind::Throttled)
        );
        assert_eq!(
            kind_of_code("ServiceUnavailableException"),
            Some(OutcomeKind::Unavailable)
        );
        assert_eq!(
            kind_of_code("ValidationException"),
            Some(OutcomeKind::ClientError)
        );
        assert_eq!(
            kind_of_code("ModelTimeoutException"),
            Some(OutcomeKind::Timeout)
        );
        for credentials in ["AccessDeniedException", "ExpiredTokenException"] {
            assert_eq!(kind_of_code(credentials), Some(OutcomeKind::Unavailable));
        }
        assert_eq!(kind_of_code("SomethingNew"), None);
    }

    #[test]
    fn statuses_map_to_outcomes() {
        assert_eq!(kind_of_status(429), OutcomeKind::Throttled);
        assert_eq!(kind_of_status(503), OutcomeKind::Unavailable);
        assert_eq!(kind_of_status(408), OutcomeKind::Timeout);
        assert_eq!(kind_of_status(403), OutcomeKind::Unavailable);
        assert_eq!(kind_of_status(404), OutcomeKind::ClientError);
        assert_eq!(kind_of_status(500), OutcomeKind::ServerError);
    }
}
