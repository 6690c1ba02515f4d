//! `least-busy`: the deployment with the fewest attempts in flight first.
//!
//! Orders the fit deployments (circuit not open, at most `skip_threshold_ms`
//! of cooldown left) by their attempts in flight across all requests
//! (`in-flight`), fewest first; ties go by priority, then config order.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it for long requests (70–180 s analyses) where concurrency, not
//! request rate, is what saturates a deployment.
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

struct LeastBusy;

impl Selection for LeastBusy {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(&candidates, &params)
    }
}

switchyard_policy::export_selection!(LeastBusy);

/// The fit candidates by (in flight, priority); the sort is stable.
fn order(candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut fit = pick::fit(candidates, params.skip_threshold_ms);
    fit.sort_by_key(|&i| {
        let c = &candidates[i as usize];
        (c.in_flight, c.priority)
    });
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn busy(priority: u32, in_flight: u32) -> Candidate {
        Candidate {
            in_flight,
            ..Candidate::new(format!("d{priority}"), priority)
        }
    }

    #[test]
    fn fewest_in_flight_first_then_priority() {
        let cs = [busy(1, 5), busy(2, 1), busy(3, 1), busy(4, 0)];
        assert_eq!(order(&cs, &Params::default()), [3, 1, 2, 0]);
    }
}
