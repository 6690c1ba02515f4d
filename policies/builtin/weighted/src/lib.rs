//! `weighted`: random by the deployments' configured weights.
//!
//! Draws the first deployment among the fit ones (circuit not open, at most
//! `skip_threshold_ms` of cooldown left) with a probability proportional to
//! its `weight` from the gateway config, then the next among those left, and
//! so on: the fallback order follows the weights too. A deployment of weight
//! 0 is only a standby, tried after all the others. Randomness comes from the
//! host, so tests with a fixed seed see a fixed order.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`. The weights are the
//! deployments' `weight` keys (default 1).
//!
//! Choose it to split traffic in set proportions, for example by each
//! deployment's quota, or to move a share of traffic to a new deployment.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, PolicyParams};

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

struct Weighted;

impl Selection for Weighted {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(&candidates, &params, host::random_u64)
    }
}

switchyard_policy::export_selection!(Weighted);

/// The fit candidates, drawn by weight without replacement.
fn order(candidates: &[Candidate], params: &Params, random: impl FnMut() -> u64) -> Vec<u32> {
    let fit = pick::fit(candidates, params.skip_threshold_ms);
    let weights: Vec<u64> = fit
        .iter()
        .map(|&i| u64::from(candidates[i as usize].weight))
        .collect();
    pick::weighted_order(&weights, random)
        .into_iter()
        .map(|at| fit[at])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn weighing(name: &str, weight: u32) -> Candidate {
        Candidate {
            weight,
            ..Candidate::new(name, 1)
        }
    }

    #[test]
    fn first_picks_follow_the_weights() {
        let cs = [weighing("a", 1), weighing("b", 0), weighing("c", 3)];
        let mut counts = [0u32; 3];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..4000 {
            let order = order(&cs, &Params::default(), || {
                state = state
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                state
            });
            assert_eq!(order.len(), 3);
            assert_eq!(order[2], 1, "weight 0 is the standby");
            counts[order[0] as usize] += 1;
        }
        assert_eq!(counts[1], 0);
        assert!((800..1200).contains(&counts[0]), "{counts:?}");
    }
}
