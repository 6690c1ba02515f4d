//! `round-robin`: rotates across the deployments that are fit to call.
//!
//! Takes the fit deployments (circuit not open, at most `skip_threshold_ms`
//! of cooldown left) in the group's order (by priority, then config order)
//! and rotates that list by the request's `sequence` number, which the host
//! increases by one per request in the group. With three fit deployments,
//! requests start on the 1st, 2nd, 3rd, 1st... The rest of the rotated list
//! is the fallback order, so each deployment is also tried second equally
//! often. A deployment that is not fit drops out of the rotation, and its
//! share goes evenly to the others.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it to spread load evenly over deployments of equal capacity, for
//! example the same model in several regions or accounts.
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

struct RoundRobin;

impl Selection for RoundRobin {
    fn select(req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(req.sequence, &candidates, &params)
    }
}

switchyard_policy::export_selection!(RoundRobin);

/// The fit candidates, rotated left by `sequence`.
fn order(sequence: u64, candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut fit = pick::fit(candidates, params.skip_threshold_ms);
    if !fit.is_empty() {
        let start = (sequence % fit.len() as u64) as usize;
        fit.rotate_left(start);
    }
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rotates_by_sequence_over_the_fit_ones() {
        let mut cs: Vec<Candidate> = (1..=4)
            .map(|p| Candidate::new(format!("d{p}"), p))
            .collect();
        let p = Params::default();
        assert_eq!(order(0, &cs, &p), [0, 1, 2, 3]);
        assert_eq!(order(1, &cs, &p), [1, 2, 3, 0]);
        assert_eq!(order(6, &cs, &p), [2, 3, 0, 1]);
        cs[1].cooldown_remaining_ms = 10_000;
        let firsts: Vec<u32> = (0..6).map(|s| order(s, &cs, &p)[0]).collect();
        assert_eq!(firsts, [0, 2, 3, 0, 2, 3]);
        assert_eq!(order(5, &[], &p), Vec::<u32>::new());
    }
}
