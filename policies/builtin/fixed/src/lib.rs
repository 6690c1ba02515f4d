//! `fixed`: one constant cooldown after any failure of the deployment.
//!
//! - `throttled`, `unavailable`, `timeout`, `server-error`: `cooldown_ms`.
//! - `client-error`: no cooldown; the request was bad, not the deployment.
//! - `success`: no cooldown (ends one in progress), and the deployment's
//!   throttle history is forgotten. With `success_ends_cooldown: false`, a
//!   cooldown in progress runs to its end even so: the "benched for 60 s
//!   whatever happens" behaviour of the field's V1 gateway, for the lab.
//!
//! Params (all optional): `{"cooldown_ms": 10000, "success_ends_cooldown": true}`.
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
    /// Whether a success ends a cooldown in progress.
    success_ends_cooldown: bool,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            cooldown_ms: 10_000,
            success_ends_cooldown: true,
        }
    }
}

impl PolicyParams for Params {}

struct Fixed;

impl Cooldown for Fixed {
    fn on_outcome(o: Outcome, c: Candidate) -> CooldownDecision {
        let params: Params = switchyard_policy::params_or_reject();
        decide(o.kind, c.cooldown_remaining_ms, &params)
    }
}

switchyard_policy::export_cooldown!(Fixed);
// A success after a success, off cooldown and unthrottled, decides nothing new.
switchyard_policy::idempotent_successes!();

/// `remaining_ms`: the cooldown the deployment is in now (0: none).
fn decide(kind: OutcomeKind, remaining_ms: u64, params: &Params) -> CooldownDecision {
    let cooldown_ms = match kind {
        OutcomeKind::Success if !params.success_ends_cooldown => remaining_ms,
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
        let p = Params {
            cooldown_ms: 7,
            ..Params::default()
        };
        assert_eq!(decide(OutcomeKind::Throttled, 0, &p).cooldown_ms, 7);
        assert_eq!(decide(OutcomeKind::Timeout, 0, &p).cooldown_ms, 7);
        assert_eq!(decide(OutcomeKind::ClientError, 5, &p).cooldown_ms, 0);
        assert_eq!(
            decide(OutcomeKind::Success, 5, &p),
            CooldownDecision {
                cooldown_ms: 0,
                clear_history: true
            }
        );
    }

    #[test]
    fn a_success_can_leave_the_cooldown_to_run_out() {
        let p = Params {
            cooldown_ms: 60_000,
            success_ends_cooldown: false,
        };
        assert_eq!(
            decide(OutcomeKind::Success, 41_000, &p),
            CooldownDecision {
                cooldown_ms: 41_000,
                clear_history: true
            }
        );
        assert_eq!(decide(OutcomeKind::Success, 0, &p).cooldown_ms, 0);
    }
}
