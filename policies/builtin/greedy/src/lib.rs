//! `greedy`: the deployment with the most quota headroom first.
//!
//! Orders the fit deployments (circuit not open, at most `skip_threshold_ms`
//! of cooldown left) by the share of their quota in use
//! (`quota-used-permille`), least first; ties go by priority, then config
//! order. Until the gateway tracks quotas every share is 0, and the order is
//! the priority order.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it when deployments have quotas of different sizes or uses, and
//! each request should go where it is least likely to be throttled.
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

struct Greedy;

impl Selection for Greedy {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(&candidates, &params)
    }
}

switchyard_policy::export_selection!(Greedy);

/// The fit candidates by (quota used, priority); the sort is stable.
fn order(candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut fit = pick::fit(candidates, params.skip_threshold_ms);
    fit.sort_by_key(|&i| {
        let c = &candidates[i as usize];
        (c.quota_used_permille, c.priority)
    });
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn quota(priority: u32, used: u32) -> Candidate {
        Candidate {
            quota_used_permille: used,
            ..Candidate::new(format!("d{priority}"), priority)
        }
    }

    #[test]
    fn most_headroom_first_then_priority() {
        let cs = [quota(1, 900), quota(2, 100), quota(3, 0), quota(4, 100)];
        assert_eq!(order(&cs, &Params::default()), [2, 1, 3, 0]);
    }
}
