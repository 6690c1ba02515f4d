//! `cascade`: after a failed attempt, what is left, by priority.
//!
//! Orders the remaining deployments by ascending `priority` (ties keep the
//! configured order) and leaves out the ones that are not fit to call now: a
//! circuit that is open, or a cooldown with more than `skip_threshold_ms`
//! left. But it never gives up while something is left: when that filter
//! would leave nothing, it returns every remaining deployment, soonest out of
//! cooldown first (then by priority), because a request that already failed
//! once is better served by a long shot than by an error.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`; a bad or unknown
//! one is refused when the policy loads.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{pick, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// A deployment whose cooldown has more than this left is tried only
    /// when nothing else is left.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            skip_threshold_ms: 2000,
        }
    }
}

impl PolicyParams for Params {}

struct Cascade;

impl Fallback for Cascade {
    fn next(
        _req: RequestInfo,
        _failed: Outcome,
        _tried: Vec<Candidate>,
        remaining: Vec<Candidate>,
    ) -> Vec<u32> {
        order(&remaining, &switchyard_policy::params_or_reject())
    }
}

switchyard_policy::export_fallback!(Cascade);

/// The fit deployments by priority or, when none is fit, all of them by
/// (cooldown left, priority).
fn order(remaining: &[Candidate], params: &Params) -> Vec<u32> {
    pick::fit_by_priority_never_empty(remaining, params.skip_threshold_ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(priority: u32, cooldown_remaining_ms: u64, circuit: Circuit) -> Candidate {
        Candidate {
            cooldown_remaining_ms,
            circuit,
            ..Candidate::new(format!("d{priority}"), priority)
        }
    }

    #[test]
    fn fit_ones_by_priority() {
        let rs = [
            candidate(3, 0, Circuit::Closed),
            candidate(1, 60_000, Circuit::Closed),
            candidate(2, 0, Circuit::Open),
            candidate(2, 1500, Circuit::HalfOpen),
            candidate(1, 0, Circuit::Closed),
        ];
        assert_eq!(order(&rs, &Params::default()), [4, 3, 0]);
    }

    #[test]
    fn never_empty_while_something_is_left() {
        let rs = [
            candidate(1, 50_000, Circuit::Closed),
            candidate(2, 10_000, Circuit::Open),
            candidate(3, 10_000, Circuit::Closed),
            candidate(0, 0, Circuit::Open),
        ];
        assert_eq!(order(&rs, &Params::default()), [3, 1, 2, 0]);
        assert_eq!(order(&[], &Params::default()), Vec::<u32>::new());
    }
}
