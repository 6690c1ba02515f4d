//! `priority`: per-request isolation by configured priority.
//!
//! Tries the deployments in ascending `priority` (ties keep the configured
//! order), leaving out the ones that are not fit to call now: a circuit that
//! is open, or a cooldown with more than `skip_threshold_ms` left. A short
//! cooldown is only a hint, and a deployment about to come back is worth
//! trying after the healthy ones rather than failing the request.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`; a bad or unknown
//! one is refused when the policy loads.
//!
//! May return an empty list when every deployment is left out; the gateway
//! then answers 429 with `retry-after`.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{pick, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// A deployment whose cooldown has more than this left is not tried.
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

struct Priority;

impl Selection for Priority {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        order(&candidates, &switchyard_policy::params_or_reject())
    }
}

switchyard_policy::export_selection!(Priority);

/// Indices of the fit candidates, by ascending priority; the sort is stable,
/// so equal priorities keep their configured order.
fn order(candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut fit = pick::fit(candidates, params.skip_threshold_ms);
    fit.sort_by_key(|&i| candidates[i as usize].priority);
    fit
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
    fn orders_by_priority_and_keeps_ties_in_order() {
        let cs = [
            candidate(2, 0, Circuit::Closed),
            candidate(1, 0, Circuit::Closed),
            candidate(2, 0, Circuit::HalfOpen),
            candidate(1, 0, Circuit::Closed),
        ];
        assert_eq!(order(&cs, &Params::default()), [1, 3, 0, 2]);
    }

    #[test]
    fn skips_long_cooldowns_and_open_circuits() {
        let cs = [
            candidate(1, 2001, Circuit::Closed),
            candidate(2, 2000, Circuit::Closed),
            candidate(3, 0, Circuit::Open),
        ];
        assert_eq!(order(&cs, &Params::default()), [1]);
        let strict = Params {
            skip_threshold_ms: 0,
        };
        assert_eq!(order(&cs, &strict), Vec::<u32>::new());
    }

    #[test]
    fn params_are_optional() {
        let p: Params = switchyard_policy::parse_params("{}").unwrap();
        assert_eq!(p.skip_threshold_ms, 2000);
        let p: Params = switchyard_policy::parse_params(r#"{"skip_threshold_ms": 5}"#).unwrap();
        assert_eq!(p.skip_threshold_ms, 5);
        let err = switchyard_policy::parse_params::<Params>(r#"{"skip_threshold_ms": "soon"}"#)
            .unwrap_err();
        assert_eq!(err.param(), Some("skip_threshold_ms"));
    }
}
