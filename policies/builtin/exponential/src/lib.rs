//! `exponential`: exponential backoff for throttles, with a cap and jitter,
//! honouring Bedrock's `retry-after`.
//!
//! - `throttled`: `base_ms × 2^n`, where `n` is the deployment's throttles in
//!   the last 60 s before this one (`recent-throttles`, kept by the host and
//!   cleared by a success), capped at `cap_ms`; then multiplied by a random
//!   factor in `1 ± jitter` (so deployments throttled together do not all
//!   come back at once), and capped again. When Bedrock said how long to wait
//!   (`retry-after`), the cooldown is at least that, even above the cap:
//!   Bedrock knows its quota better than the config.
//! - `unavailable`, `timeout`, `server-error`: `failure_cooldown_ms`.
//! - `client-error`: no cooldown; the request was bad, not the deployment.
//! - `success`: no cooldown, and the throttle history is forgotten, so the
//!   next throttle starts again at `base_ms`.
//!
//! Params (all optional): `{"base_ms": 1000, "cap_ms": 60000, "jitter": 0.1,
//! "failure_cooldown_ms": 5000}`; `base_ms` must be above 0, `cap_ms` at
//! least `base_ms`, and `jitter` from 0 to below 1.
//!
//! Choose it when throttles come in bursts of unknown length: short first
//! cooldowns recover fast, and repeated throttles back off quickly.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, ParamsError, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// The cooldown after a first throttle, in milliseconds.
    base_ms: u64,
    /// The longest backoff, in milliseconds (a `retry-after` may exceed it).
    cap_ms: u64,
    /// The backoff is multiplied by a random factor in `1 ± jitter`.
    jitter: f64,
    /// The cooldown after `unavailable`, `timeout` or `server-error`.
    failure_cooldown_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            base_ms: 1_000,
            cap_ms: 60_000,
            jitter: 0.1,
            failure_cooldown_ms: 5_000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.base_ms == 0 {
            return Err(ParamsError::invalid("base_ms", "must be above 0"));
        }
        if self.cap_ms < self.base_ms {
            return Err(ParamsError::invalid(
                "cap_ms",
                format!("must be at least `base_ms` ({})", self.base_ms),
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ParamsError::invalid(
                "jitter",
                format!("must be from 0 to below 1, not {}", self.jitter),
            ));
        }
        Ok(())
    }
}

struct Exponential;

impl Cooldown for Exponential {
    fn on_outcome(o: Outcome, c: Candidate) -> CooldownDecision {
        let params: Params = switchyard_policy::params_or_reject();
        let cooldown_ms = match o.kind {
            OutcomeKind::Success | OutcomeKind::ClientError => 0,
            OutcomeKind::Throttled => {
                let backoff = jittered(
                    backoff(c.recent_throttles, &params),
                    host::random_u64(),
                    &params,
                );
                backoff.max(o.retry_after_ms.unwrap_or(0))
            }
            OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => {
                params.failure_cooldown_ms
            }
        };
        CooldownDecision {
            cooldown_ms,
            clear_history: o.kind == OutcomeKind::Success,
        }
    }
}

switchyard_policy::export_cooldown!(Exponential);
// A success after a success, off cooldown and unthrottled, decides nothing new.
switchyard_policy::idempotent_successes!();

/// `base_ms × 2^n`, at most `cap_ms`, without overflow.
fn backoff(n: u32, p: &Params) -> u64 {
    let factor = 1u64.checked_shl(n).unwrap_or(u64::MAX);
    p.base_ms.saturating_mul(factor).min(p.cap_ms)
}

/// `ms` times a factor in `1 ± jitter` drawn from `r`, at most `cap_ms`.
fn jittered(ms: u64, r: u64, p: &Params) -> u64 {
    let factor = 1.0 - p.jitter + 2.0 * p.jitter * pick::unit(r);
    ((ms as f64 * factor) as u64).min(p.cap_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_up_to_the_cap() {
        let p = Params::default();
        let got: Vec<u64> = [0, 1, 2, 5, 6, 7, 63, 64, 1000]
            .iter()
            .map(|&n| backoff(n, &p))
            .collect();
        assert_eq!(
            got,
            [1_000, 2_000, 4_000, 32_000, 60_000, 60_000, 60_000, 60_000, 60_000]
        );
    }

    #[test]
    fn jitter_stays_within_its_band_and_the_cap() {
        let p = Params::default();
        assert_eq!(jittered(10_000, 0, &p), 9_000);
        assert!((9_999..=10_000).contains(&jittered(10_000, u64::MAX / 2, &p)));
        assert!((10_990..=11_000).contains(&jittered(10_000, u64::MAX, &p)));
        assert_eq!(jittered(60_000, u64::MAX, &p), 60_000);
        let none = Params { jitter: 0.0, ..p };
        assert_eq!(jittered(4_000, 12345, &none), 4_000);
    }

    #[test]
    fn the_cap_is_at_least_the_base() {
        let err = switchyard_policy::parse_params::<Params>(r#"{"base_ms": 5000, "cap_ms": 10}"#)
            .unwrap_err();
        assert_eq!(err.param(), Some("cap_ms"));
    }
}
