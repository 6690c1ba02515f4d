//! Outcome classification: what Bedrock's exception names and statuses
//! stand for, for answers (`signed`) and streams (`events`) alike.

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
