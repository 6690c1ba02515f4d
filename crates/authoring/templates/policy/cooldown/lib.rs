//! `{{name}}`: a cooldown policy. It decides how long a deployment is
//! benched after each attempt: a throttle benches it for as long as Bedrock
//! asked, or `base_ms` doubled for each recent throttle (up to `max_ms`); an
//! outage benches it for `failure_ms`; a success ends any cooldown and
//! forgets the throttle history.
//!
//! Params (all optional): `{"base_ms": 5000, "max_ms": 120000, "failure_ms": 5000}`.
//!
//! Build:  switchyard policy build
//! Test:   switchyard policy test target/{{name}}.wasm fixtures/*.json
//!         cargo test            (the unit tests below, natively)
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{ParamsError, PolicyParams};

/// The policy's params, from the gateway config. A misspelt or bad one is
/// refused when the gateway loads the policy.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// The cooldown after a first throttle.
    base_ms: u64,
    /// The longest cooldown.
    max_ms: u64,
    /// The cooldown after `unavailable`, `timeout` or `server-error`.
    failure_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            base_ms: 5_000,
            max_ms: 120_000,
            failure_ms: 5_000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.base_ms > self.max_ms {
            return Err(ParamsError::invalid("base_ms", "must not be above max_ms"));
        }
        Ok(())
    }
}

struct Policy;

impl Cooldown for Policy {
    fn on_outcome(o: Outcome, c: Candidate) -> CooldownDecision {
        decide(&o, &c, &switchyard_policy::params_or_reject())
    }
}

switchyard_policy::export_cooldown!(Policy);

/// The logic, apart from the export glue so that it can be unit-tested natively.
fn decide(o: &Outcome, c: &Candidate, params: &Params) -> CooldownDecision {
    let bench = |cooldown_ms| CooldownDecision {
        cooldown_ms,
        clear_history: false,
    };
    match o.kind {
        OutcomeKind::Success => CooldownDecision {
            cooldown_ms: 0,
            clear_history: true,
        },
        OutcomeKind::Throttled => bench(o.retry_after_ms.unwrap_or_else(|| {
            // `recent_throttles` is the history before this throttle.
            let doublings = c.recent_throttles.min(16);
            params
                .base_ms
                .saturating_mul(1 << doublings)
                .min(params.max_ms)
        })),
        OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => {
            bench(params.failure_ms)
        }
        OutcomeKind::ClientError => bench(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn throttled() -> Outcome {
        Outcome {
            deployment: "a".into(),
            kind: OutcomeKind::Throttled,
            latency_ms: 40,
            retry_after_ms: None,
            at_ms: 0,
        }
    }

    #[test]
    fn doubles_with_each_recent_throttle_up_to_the_max() {
        let p = Params::default();
        let with = |n| Candidate {
            recent_throttles: n,
            ..Candidate::new("a", 1)
        };
        assert_eq!(decide(&throttled(), &with(0), &p).cooldown_ms, 5_000);
        assert_eq!(decide(&throttled(), &with(2), &p).cooldown_ms, 20_000);
        assert_eq!(decide(&throttled(), &with(9), &p).cooldown_ms, 120_000);
    }

    #[test]
    fn follows_retry_after_when_bedrock_sends_it() {
        let o = Outcome {
            retry_after_ms: Some(1_500),
            ..throttled()
        };
        assert_eq!(
            decide(&o, &Candidate::new("a", 1), &Params::default()).cooldown_ms,
            1_500
        );
    }
}
