//! Everything that can end a call to the gateway without an answer, as one
//! type. Each API renders a [`GatewayError`] in its own shape by matching
//! on it (Bedrock's JSON with `x-amzn-errortype`, OpenAI's `{"error": ..}`),
//! and its [`ErrorCode`] is both the stable `code` clients see and the
//! label of the metrics that count it.

use http::StatusCode;

use crate::admission::AdmitError;
use crate::outcome::OutcomeKind;
use crate::router::{AttemptRecord, RouteError};

/// The stable, machine-readable name of an error. Clients match on it, and
/// metrics are labelled with it: renaming one is a breaking change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    // The request itself.
    InvalidJson,
    InvalidRequest,
    InvalidHeader,
    UnsupportedParameter,
    UserNameTooLong,
    NotAnEmbeddingModel,
    UnreadableBody,
    BodyTooLarge,
    BodyTimeout,
    UnknownModel,
    /// OpenAI's name for [`UnknownModel`](Self::UnknownModel), on its routes.
    ModelNotFound,
    NotFound,
    // Who sends it.
    MissingApiKey,
    InvalidApiKey,
    ObserverKeyRequired,
    Unauthorized,
    Forbidden,
    // Waiting for a turn and for capacity.
    QueueFull,
    UserQueueFull,
    DeadlineInQueue,
    NoCapacity,
    // The attempts.
    AllAttemptsThrottled,
    AllAttemptsFailed,
    RejectedByBedrock,
    // Async jobs.
    JobsDisabled,
    InvalidJob,
    UnknownJob,
    JobEnded,
    JobStoreUnavailable,
    JobQuotaExceeded,
    // The admin API.
    UnknownKind,
    UnknownVersion,
    NothingToRollBackTo,
    InvalidPolicy,
    InvalidParams,
    InvalidConfig,
    UnknownKey,
    UnknownTeam,
    TeamExists,
    TeamHasKeys,
    KeyStoreUnavailable,
    KeyRateLimited,
    TeamRateLimited,
    KeyBudgetExhausted,
    TeamBudgetExhausted,
    Internal,
}

impl ErrorCode {
    /// The code as clients and metrics see it.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidJson => "invalid_json",
            Self::InvalidRequest => "invalid_request",
            Self::InvalidHeader => "invalid_header",
            Self::UnsupportedParameter => "unsupported_parameter",
            Self::UserNameTooLong => "user_name_too_long",
            Self::NotAnEmbeddingModel => "not_an_embedding_model",
            Self::UnreadableBody => "unreadable_body",
            Self::BodyTooLarge => "body_too_large",
            Self::BodyTimeout => "body_timeout",
            Self::UnknownModel => "unknown_model",
            Self::ModelNotFound => "model_not_found",
            Self::NotFound => "not_found",
            Self::MissingApiKey => "missing_api_key",
            Self::InvalidApiKey => "invalid_api_key",
            Self::ObserverKeyRequired => "observer_key_required",
            Self::Unauthorized => "unauthorized",
            Self::Forbidden => "forbidden",
            Self::QueueFull => "queue_full",
            Self::UserQueueFull => "user_queue_full",
            Self::DeadlineInQueue => "deadline_in_queue",
            Self::NoCapacity => "no_capacity",
            Self::AllAttemptsThrottled => "all_attempts_throttled",
            Self::AllAttemptsFailed => "all_attempts_failed",
            Self::RejectedByBedrock => "rejected_by_bedrock",
            Self::JobsDisabled => "jobs_disabled",
            Self::InvalidJob => "invalid_job",
            Self::UnknownJob => "unknown_job",
            Self::JobEnded => "job_ended",
            Self::JobStoreUnavailable => "job_store_unavailable",
            Self::JobQuotaExceeded => "job_quota_exceeded",
            Self::UnknownKind => "unknown_kind",
            Self::UnknownVersion => "unknown_version",
            Self::NothingToRollBackTo => "nothing_to_roll_back_to",
            Self::InvalidPolicy => "invalid_policy",
            Self::InvalidParams => "invalid_params",
            Self::InvalidConfig => "invalid_config",
            Self::UnknownKey => "unknown_key",
            Self::UnknownTeam => "unknown_team",
            Self::TeamExists => "team_exists",
            Self::TeamHasKeys => "team_has_keys",
            Self::KeyStoreUnavailable => "key_store_unavailable",
            Self::KeyRateLimited => "key_rate_limited",
            Self::TeamRateLimited => "team_rate_limited",
            Self::KeyBudgetExhausted => "key_budget_exhausted",
            Self::TeamBudgetExhausted => "team_budget_exhausted",
            Self::Internal => "internal",
        }
    }

    /// The HTTP status an error of this code is answered with (Bedrock's
    /// refusals keep Bedrock's own status instead).
    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidJson
            | Self::InvalidRequest
            | Self::InvalidHeader
            | Self::UnsupportedParameter
            | Self::UserNameTooLong
            | Self::NotAnEmbeddingModel
            | Self::UnreadableBody
            | Self::InvalidJob
            | Self::InvalidParams
            | Self::RejectedByBedrock => StatusCode::BAD_REQUEST,
            Self::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            Self::UnknownModel
            | Self::ModelNotFound
            | Self::NotFound
            | Self::JobsDisabled
            | Self::UnknownJob
            | Self::UnknownKind
            | Self::UnknownVersion
            | Self::UnknownKey
            | Self::UnknownTeam => StatusCode::NOT_FOUND,
            Self::MissingApiKey
            | Self::InvalidApiKey
            | Self::ObserverKeyRequired
            | Self::Unauthorized => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::QueueFull
            | Self::UserQueueFull
            | Self::NoCapacity
            | Self::JobQuotaExceeded
            | Self::AllAttemptsThrottled
            | Self::KeyRateLimited
            | Self::TeamRateLimited
            | Self::KeyBudgetExhausted
            | Self::TeamBudgetExhausted => StatusCode::TOO_MANY_REQUESTS,
            Self::DeadlineInQueue => StatusCode::GATEWAY_TIMEOUT,
            Self::AllAttemptsFailed | Self::JobStoreUnavailable | Self::KeyStoreUnavailable => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::JobEnded | Self::NothingToRollBackTo | Self::TeamExists | Self::TeamHasKeys => {
                StatusCode::CONFLICT
            }
            Self::InvalidPolicy | Self::InvalidConfig => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for ErrorCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Why a call ended without an answer.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// The request was refused before it was routed: a malformed body, a
    /// missing key, a model group that does not exist, ... `param` names
    /// the field at fault, when one is.
    #[error("{message}")]
    Refused {
        code: ErrorCode,
        message: String,
        param: Option<String>,
    },
    /// No turn in the fair queue: it is full, the user has as many requests
    /// waiting as one may, or the deadline passed while waiting.
    #[error(transparent)]
    Queue(AdmitError),
    /// No deployment could take the request before its deadline (cooling
    /// down, out of quota or circuit open).
    #[error("no deployment of this model group can take the request before its deadline (cooling down, out of quota or circuit open); retry later")]
    NoCapacity { retry_after_ms: u64 },
    /// Every attempt was throttled.
    #[error("all {} attempts failed", attempts.len())]
    AllThrottled {
        attempts: Vec<AttemptRecord>,
        retry_after_ms: u64,
    },
    /// Every attempt failed, not all by throttling.
    #[error("all {} attempts failed", attempts.len())]
    AllFailed {
        attempts: Vec<AttemptRecord>,
        retry_after_ms: Option<u64>,
    },
    /// Bedrock refused the request itself (its status); no other
    /// deployment would take it.
    #[error("{detail}")]
    Rejected {
        status: u16,
        detail: String,
        attempts: Vec<AttemptRecord>,
    },
    /// A key's or a team's limit refused the call until `retry_after_ms`
    /// from now (a rate limit, or a budget until its period renews).
    #[error("{message}")]
    Limited {
        code: ErrorCode,
        message: String,
        retry_after_ms: u64,
    },
    /// Something in the gateway broke.
    #[error("{message}")]
    Internal { message: String },
}

impl From<crate::spend::OverLimit> for GatewayError {
    fn from(e: crate::spend::OverLimit) -> Self {
        use crate::spend::{Holder, Limit};
        let code = match (e.holder, e.limit) {
            (Holder::Key, Limit::Rate) => ErrorCode::KeyRateLimited,
            (Holder::Team, Limit::Rate) => ErrorCode::TeamRateLimited,
            (Holder::Key, Limit::Budget) => ErrorCode::KeyBudgetExhausted,
            (Holder::Team, Limit::Budget) => ErrorCode::TeamBudgetExhausted,
        };
        Self::Limited {
            code,
            message: e.message,
            retry_after_ms: e.retry_after_ms,
        }
    }
}

impl GatewayError {
    /// A refusal with `code` and a message for people.
    pub fn refused(code: ErrorCode, message: impl Into<String>) -> Self {
        Self::Refused {
            code,
            message: message.into(),
            param: None,
        }
    }

    /// A refusal that names the request field at fault.
    pub fn refused_param(
        code: ErrorCode,
        message: impl Into<String>,
        param: impl Into<String>,
    ) -> Self {
        Self::Refused {
            code,
            message: message.into(),
            param: Some(param.into()),
        }
    }

    /// Something in the gateway broke.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::Internal {
            message: message.into(),
        }
    }

    /// 404 `not_found`: no route at this path.
    pub fn no_route() -> Self {
        Self::refused(ErrorCode::NotFound, "no such route")
    }

    /// Its stable code.
    pub fn code(&self) -> ErrorCode {
        match self {
            Self::Refused { code, .. } | Self::Limited { code, .. } => *code,
            Self::Queue(AdmitError::QueueFull { .. }) => ErrorCode::QueueFull,
            Self::Queue(AdmitError::UserQueueFull { .. }) => ErrorCode::UserQueueFull,
            Self::Queue(AdmitError::DeadlineInQueue { .. }) => ErrorCode::DeadlineInQueue,
            Self::NoCapacity { .. } => ErrorCode::NoCapacity,
            Self::AllThrottled { .. } => ErrorCode::AllAttemptsThrottled,
            Self::AllFailed { .. } => ErrorCode::AllAttemptsFailed,
            Self::Rejected { .. } => ErrorCode::RejectedByBedrock,
            Self::Internal { .. } => ErrorCode::Internal,
        }
    }

    /// The HTTP status it is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::Rejected { status, .. } => {
                StatusCode::from_u16(*status).unwrap_or(StatusCode::BAD_REQUEST)
            }
            other => other.code().status(),
        }
    }

    /// When the client may try again, in ms, when that is worth saying.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Self::Queue(AdmitError::QueueFull { .. } | AdmitError::UserQueueFull { .. }) => {
                Some(1_000)
            }
            Self::NoCapacity { retry_after_ms }
            | Self::AllThrottled { retry_after_ms, .. }
            | Self::Limited { retry_after_ms, .. } => Some(*retry_after_ms),
            Self::AllFailed { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// The attempts made before it, when any were.
    pub fn attempts(&self) -> &[AttemptRecord] {
        match self {
            Self::AllThrottled { attempts, .. }
            | Self::AllFailed { attempts, .. }
            | Self::Rejected { attempts, .. } => attempts,
            _ => &[],
        }
    }

    /// The request field at fault, when one is.
    pub fn param(&self) -> Option<&str> {
        match self {
            Self::Refused { param, .. } => param.as_deref(),
            _ => None,
        }
    }

    /// The same refusal under another code (an API's own name for it,
    /// such as OpenAI's `model_not_found`), naming `param`.
    pub fn renamed(self, code: ErrorCode, param: &str) -> Self {
        match self {
            Self::Refused { message, .. } => Self::Refused {
                code,
                message,
                param: Some(param.to_owned()),
            },
            other => other,
        }
    }
}

impl From<AdmitError> for GatewayError {
    fn from(e: AdmitError) -> Self {
        Self::Queue(e)
    }
}

impl From<RouteError> for GatewayError {
    fn from(error: RouteError) -> Self {
        match error {
            RouteError::UnknownGroup(name) => {
                Self::refused(ErrorCode::UnknownModel, format!("no model group `{name}`"))
            }
            RouteError::NothingAvailable { retry_after_ms } => Self::NoCapacity { retry_after_ms },
            RouteError::AttemptsFailed {
                attempts,
                retry_after_ms,
            } => {
                if attempts.iter().all(|a| a.outcome == OutcomeKind::Throttled) {
                    Self::AllThrottled {
                        retry_after_ms: retry_after_ms.unwrap_or(1_000),
                        attempts,
                    }
                } else {
                    Self::AllFailed {
                        attempts,
                        retry_after_ms,
                    }
                }
            }
            RouteError::Rejected {
                status,
                detail,
                attempts,
            } => Self::Rejected {
                status,
                detail,
                attempts,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_code_has_its_status_and_a_distinct_name() {
        let codes = [
            ErrorCode::InvalidJson,
            ErrorCode::QueueFull,
            ErrorCode::DeadlineInQueue,
            ErrorCode::AllAttemptsFailed,
            ErrorCode::InvalidPolicy,
        ];
        let statuses: Vec<u16> = codes.iter().map(|c| c.status().as_u16()).collect();
        assert_eq!(statuses, [400, 429, 504, 503, 422]);
        let names: std::collections::HashSet<_> = codes.iter().map(|c| c.as_str()).collect();
        assert_eq!(names.len(), codes.len());
    }

    #[test]
    fn attempts_all_throttled_are_429_with_a_retry_after() {
        let throttled = AttemptRecord {
            deployment: "a".into(),
            outcome: OutcomeKind::Throttled,
            latency_ms: 3,
            retry_after_ms: None,
            detail: None,
        };
        let e = GatewayError::from(RouteError::AttemptsFailed {
            attempts: vec![throttled.clone()],
            retry_after_ms: None,
        });
        assert_eq!(e.code(), ErrorCode::AllAttemptsThrottled);
        assert_eq!(
            (e.status().as_u16(), e.retry_after_ms()),
            (429, Some(1_000))
        );
        let mixed = AttemptRecord {
            outcome: OutcomeKind::ServerError,
            ..throttled.clone()
        };
        let e = GatewayError::from(RouteError::AttemptsFailed {
            attempts: vec![throttled, mixed],
            retry_after_ms: None,
        });
        assert_eq!((e.status().as_u16(), e.retry_after_ms()), (503, None));
        assert_eq!(e.attempts().len(), 2);
    }

    #[test]
    fn bedrock_refusals_keep_bedrock_status() {
        let e = GatewayError::Rejected {
            status: 422,
            detail: "no".into(),
            attempts: Vec::new(),
        };
        assert_eq!(
            (e.status().as_u16(), e.code().as_str()),
            (422, "rejected_by_bedrock")
        );
    }
}
