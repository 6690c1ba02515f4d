//! How an upstream attempt ended. Classification from SDK errors lives in
//! `upstream::classify`; everything else (health, policies, the router's
//! error response) reads these types.

use serde::{Deserialize, Serialize};

/// The kind of ending of one attempt. Mirrors `outcome-kind` in the WIT.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OutcomeKind {
    /// Bedrock answered.
    Success,
    /// 429: ThrottlingException, ModelNotReadyException, ServiceQuotaExceededException.
    Throttled,
    /// 503 or a connection that failed or was reset.
    Unavailable,
    /// Our deadline passed, or Bedrock's 408.
    Timeout,
    /// The request itself was refused (400, 403, 404): no other deployment will do better.
    ClientError,
    /// 500, 424 or a response we could not read.
    ServerError,
}

impl OutcomeKind {
    /// Its name, as in JSON and the metrics' labels.
    pub fn as_str(self) -> &'static str {
        match self {
            OutcomeKind::Success => "success",
            OutcomeKind::Throttled => "throttled",
            OutcomeKind::Unavailable => "unavailable",
            OutcomeKind::Timeout => "timeout",
            OutcomeKind::ClientError => "client_error",
            OutcomeKind::ServerError => "server_error",
        }
    }

    /// Whether another deployment may do better than this one did.
    pub fn worth_falling_back(self) -> bool {
        !matches!(self, OutcomeKind::Success | OutcomeKind::ClientError)
    }
}

/// One attempt's ending, as recorded by health and shown to policies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    /// The deployment the attempt went to.
    pub deployment: String,
    /// How it ended.
    pub kind: OutcomeKind,
    /// How long it took.
    pub latency_ms: u32,
    /// How long Bedrock asked us to wait, if it said.
    pub retry_after_ms: Option<u64>,
    /// When it ended, on the gateway's clock.
    pub at_ms: u64,
    /// Bedrock's error code and message, for the client's error report.
    pub detail: Option<String>,
    /// The HTTP status Bedrock answered with, when it answered.
    pub upstream_status: Option<u16>,
}
