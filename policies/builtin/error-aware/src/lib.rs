//! `error-aware`: a different cooldown for each kind of failure.
//!
//! - `throttled`: `throttled_ms`. The deployment is out of quota for now.
//! - `unavailable`: `unavailable_ms`. It could not be reached.
//! - `timeout`: `timeout_ms`. It was too slow this time.
//! - `server-error`: `server_error_ms`. Bedrock failed on this request.
//! - `client-error` (validation, access): never a cooldown, and there is no
//!   param to set one: a bad request says nothing about the deployment, and
//!   must not bench it for everyone.
//! - `success`: no cooldown, and the throttle history is forgotten.
//!
//! Params (all optional): `{"throttled_ms": 10000, "unavailable_ms": 5000,
//! "timeout_ms": 5000, "server_error_ms": 2000}`.
//!
//! Choose it when failures differ in what they say about a deployment, for
//! example a region that times out often but is rarely throttled.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::PolicyParams;

/// The policy's params: a cooldown per outcome kind, in milliseconds.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    throttled_ms: u64,
    unavailable_ms: u64,
    timeout_ms: u64,
    server_error_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            throttled_ms: 10_000,
            unavailable_ms: 5_000,
            timeout_ms: 5_000,
            server_error_ms: 2_000,
        }
    }
}

impl PolicyParams for Params {}

struct ErrorAware;

impl Cooldown for ErrorAware {
    fn on_outcome(o: Outcome, _c: Candidate) -> CooldownDecision {
        let params: Params = switchyard_policy::params_or_reject();
        decide(o.kind, &params)
    }
}

switchyard_policy::export_cooldown!(ErrorAware);
// A success after a success, off cooldown and unthrottled, decides nothing new.
switchyard_policy::idempotent_successes!();

fn decide(kind: OutcomeKind, p: &Params) -> CooldownDecision {
    let cooldown_ms = match kind {
        OutcomeKind::Success | OutcomeKind::ClientError => 0,
        OutcomeKind::Throttled => p.throttled_ms,
        OutcomeKind::Unavailable => p.unavailable_ms,
        OutcomeKind::Timeout => p.timeout_ms,
        OutcomeKind::ServerError => p.server_error_ms,
    };
    CooldownDecision {
        cooldown_ms,
        clear_history: kind == OutcomeKind::Success,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_cooldown_per_kind_and_none_for_client_errors() {
        let p = Params::default();
        let got: Vec<u64> = [
            OutcomeKind::Throttled,
            OutcomeKind::Unavailable,
            OutcomeKind::Timeout,
            OutcomeKind::ServerError,
            OutcomeKind::ClientError,
            OutcomeKind::Success,
        ]
        .into_iter()
        .map(|k| decide(k, &p).cooldown_ms)
        .collect();
        assert_eq!(got, [10_000, 5_000, 5_000, 2_000, 0, 0]);
    }

    #[test]
    fn a_client_error_cooldown_cannot_be_configured() {
        let err =
            switchyard_policy::parse_params::<Params>(r#"{"client_error_ms": 1000}"#).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `client_error_ms`"),
            "{err}"
        );
    }
}
