//! `priority-global`: the naive baseline, kept for comparisons.
//!
//! Tries the deployments in ascending `priority` (ties keep the configured
//! order), leaving out every deployment that is cooling down at all, or whose
//! circuit is open. So one throttle (through the cooldown policy) benches a
//! deployment for every user until its cooldown ends: the "V1" behaviour of
//! the field notes, which pushed users 1–3 off a model because of user 4's
//! burst. `priority` is the same order with per-request isolation.
//!
//! No params: any param is refused when the policy loads.
//!
//! Choose it only to measure what per-request isolation gains, or to
//! reproduce the behaviour of a gateway that benches globally.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{pick, PolicyParams};

/// The policy takes no params.
#[derive(Debug, Default, Deserialize)]
#[serde(crate = "switchyard_policy::serde", deny_unknown_fields)]
struct Params {}

impl PolicyParams for Params {}

struct PriorityGlobal;

impl Selection for PriorityGlobal {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let _: Params = switchyard_policy::params_or_reject();
        order(&candidates)
    }
}

switchyard_policy::export_selection!(PriorityGlobal);

/// The candidates with no cooldown and a circuit that is not open, by
/// priority; the sort is stable.
fn order(candidates: &[Candidate]) -> Vec<u32> {
    let mut fit = pick::fit(candidates, 0);
    fit.sort_by_key(|&i| candidates[i as usize].priority);
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn any_cooldown_benches() {
        let cs = [
            Candidate {
                cooldown_remaining_ms: 1,
                ..Candidate::new("a", 1)
            },
            Candidate::new("b", 3),
            Candidate::new("c", 2),
        ];
        assert_eq!(order(&cs), [2, 1]);
    }

    #[test]
    fn takes_no_params() {
        assert!(switchyard_policy::parse_params::<Params>("{}").is_ok());
        let err =
            switchyard_policy::parse_params::<Params>(r#"{"skip_threshold_ms": 1}"#).unwrap_err();
        assert!(err.to_string().contains("skip_threshold_ms"), "{err}");
    }
}
