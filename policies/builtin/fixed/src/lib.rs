//! `fixed`: one constant cooldown after any failure of the deployment.
//!
//! - `throttled`, `unavailable`, `timeout`, `server-error`: `cooldown_ms`.
//! - `client-error`: no cooldown; the request was bad, not the deployment.
//! - `success`: no cooldown (ends one in progress), and the deployment's
//!   throttle history is forgotten.
//!
//! Params (all optional): `{"cooldown_ms": 10000}`.
//!
//! Choose it when failures are rare and predictable, or as a simple baseline;
//! `adaptive` and `exponential` react better to repeated throttles.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::PolicyParams;

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// The cooldown after a failure that is the deployment's, in milliseconds.
    cooldown_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            cooldown_ms: 10_000,
        }
    }
}

impl PolicyParams for Params {}

struct Fixed;

impl Cooldown for Fixed {
    fn on_outcome(o: Outcome, _c: Candidate) -> CooldownDecision {
        let params: Params = switchyard_policy::params_or_reject();
        decide(o.kind, &params)
    }
}

switchyard_policy::export_cooldown!(Fixed);

fn decide(kind: OutcomeKind, params: &Params) -> CooldownDecision {
    let cooldown_ms = match kind {
        OutcomeKind::Success | OutcomeKind::ClientError => 0,
        OutcomeKind::Throttled
        | OutcomeKind::Unavailable
        | OutcomeKind::Timeout
        | OutcomeKind::ServerError => params.cooldown_ms,
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
    fn the_same_cooldown_for_every_failure_of_the_deployment() {
        let p = Params { cooldown_ms: 7 };
        assert_eq!(decide(OutcomeKind::Throttled, &p).cooldown_ms, 7);
        assert_eq!(decide(OutcomeKind::Timeout, &p).cooldown_ms, 7);
        assert_eq!(decide(OutcomeKind::ClientError, &p).cooldown_ms, 0);
        assert_eq!(
            decide(OutcomeKind::Success, &p),
            CooldownDecision {
                cooldown_ms: 0,
                clear_history: true
            }
        );
    }
}
