//! `adaptive`: throttles bench a deployment for longer each time they repeat.
//!
//! - `success`: no cooldown, and the deployment's throttle history (the
//!   host's and this policy's own) is forgotten.
//! - `throttled`: the policy counts this deployment's throttles within the
//!   last `window_ms`, this one included. The first gives `steps_ms[0]`, the
//!   second `steps_ms[1]`, and so on; from the last step on, the last step.
//! - `unavailable`, `timeout`, `server-error`: `failure_cooldown_ms`.
//! - `client-error`: no cooldown. The request was bad, not the deployment.
//!
//! Params (all optional):
//! `{"window_ms": 60000, "steps_ms": [10000, 30000, 60000], "failure_cooldown_ms": 5000}`.
//! `steps_ms` must not be empty and `window_ms` must be above 0; a bad or
//! unknown param is refused when the policy loads.
//!
//! The throttle timestamps live in the host's key-value state, one entry per
//! deployment, because the instance itself does not outlive the call.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{kv, ParamsError, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// How far back throttles count, in milliseconds.
    window_ms: u64,
    /// The cooldown for the 1st, 2nd, ... throttle within the window.
    steps_ms: Vec<u64>,
    /// The cooldown after `unavailable`, `timeout` or `server-error`.
    failure_cooldown_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            window_ms: 60_000,
            steps_ms: vec![10_000, 30_000, 60_000],
            failure_cooldown_ms: 5_000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.steps_ms.is_empty() {
            return Err(ParamsError::invalid("steps_ms", "must not be empty"));
        }
        if self.window_ms == 0 {
            return Err(ParamsError::invalid("window_ms", "must be above 0"));
        }
        Ok(())
    }
}

struct Adaptive;

impl Cooldown for Adaptive {
    fn on_outcome(o: Outcome, _c: Candidate) -> CooldownDecision {
        let params: Params = switchyard_policy::params_or_reject();
        let key = history_key(&o.deployment);
        let cooldown_ms = match o.kind {
            OutcomeKind::Success => {
                kv::delete(&key);
                return CooldownDecision {
                    cooldown_ms: 0,
                    clear_history: true,
                };
            }
            OutcomeKind::Throttled => {
                let history = decode(&kv::get(&key).unwrap_or_default());
                let history = record_throttle(history, o.at_ms, &params);
                kv::set(&key, &encode(&history), Some(params.window_ms));
                step_for(history.len(), &params.steps_ms)
            }
            OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => {
                params.failure_cooldown_ms
            }
            OutcomeKind::ClientError => 0,
        };
        CooldownDecision {
            cooldown_ms,
            clear_history: false,
        }
    }
}

switchyard_policy::export_cooldown!(Adaptive);
// A success after a success, off cooldown and unthrottled, decides nothing new.
switchyard_policy::idempotent_successes!();

/// The key-value entry holding a deployment's recent throttle timestamps.
fn history_key(deployment: &str) -> String {
    format!("throttles/{deployment}")
}

/// Adds a throttle at `at_ms` to `history` and drops what fell out of the
/// window. Only the newest `steps_ms.len()` timestamps are kept: more would
/// not change the step, and the entry stays small however hard a deployment
/// is throttled.
fn record_throttle(mut history: Vec<u64>, at_ms: u64, params: &Params) -> Vec<u64> {
    history.retain(|&t| t.saturating_add(params.window_ms) > at_ms);
    history.push(at_ms);
    history.sort_unstable();
    let excess = history.len().saturating_sub(params.steps_ms.len());
    history.drain(..excess);
    history
}

/// The cooldown for the `count`th throttle in the window (1-based).
fn step_for(count: usize, steps_ms: &[u64]) -> u64 {
    steps_ms[count.clamp(1, steps_ms.len()) - 1]
}

/// Timestamps as consecutive little-endian `u64`s.
fn encode(history: &[u64]) -> Vec<u8> {
    history.iter().flat_map(|t| t.to_le_bytes()).collect()
}

/// The inverse of [`encode`]; a trailing partial entry (a value written by
/// something else) is ignored rather than trusted.
fn decode(bytes: &[u8]) -> Vec<u64> {
    bytes
        .chunks_exact(8)
        .map(|b| u64::from_le_bytes(b.try_into().expect("chunks of 8")))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_grow_within_the_window_and_stop_at_the_last() {
        let p = Params::default();
        let mut history = Vec::new();
        let mut got = Vec::new();
        for at in [1_000, 2_000, 3_000, 4_000] {
            history = record_throttle(history, at, &p);
            got.push(step_for(history.len(), &p.steps_ms));
        }
        assert_eq!(got, [10_000, 30_000, 60_000, 60_000]);
        assert_eq!(history, [2_000, 3_000, 4_000]);
    }

    #[test]
    fn throttles_older_than_the_window_do_not_count() {
        let p = Params::default();
        let history = record_throttle(vec![1_000, 30_000], 61_000, &p);
        assert_eq!(history, [30_000, 61_000]);
        assert_eq!(step_for(history.len(), &p.steps_ms), 30_000);
    }

    #[test]
    fn encoding_round_trips_and_ignores_a_torn_tail() {
        let bytes = encode(&[1, u64::MAX]);
        assert_eq!(bytes.len(), 16);
        assert_eq!(decode(&bytes), [1, u64::MAX]);
        assert_eq!(decode(&bytes[..12]), [1]);
    }

    #[test]
    fn params_are_optional() {
        let p: Params = switchyard_policy::parse_params(r#"{"steps_ms": [1, 2]}"#).unwrap();
        assert_eq!(
            (p.window_ms, p.steps_ms, p.failure_cooldown_ms),
            (60_000, vec![1, 2], 5_000)
        );
        let err = switchyard_policy::parse_params::<Params>(r#"{"steps_ms": []}"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "invalid params: `steps_ms`: must not be empty"
        );
    }
}
