//! `lru`: the least recently used deployment first.
//!
//! Orders the fit deployments (circuit not open, at most `skip_threshold_ms`
//! of cooldown left) by when an attempt last started on them
//! (`last-used-ms`), oldest first; a deployment never used comes before all
//! others. Ties keep the group's order (by priority, then config order).
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it to keep every deployment in use, so none sits idle while
//! another is saturated, and so each keeps fresh health statistics.
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

struct Lru;

impl Selection for Lru {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(&candidates, &params)
    }
}

switchyard_policy::export_selection!(Lru);

/// The fit candidates, least recently used first (`None`, never used, sorts
/// before any time).
fn order(candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut fit = pick::fit(candidates, params.skip_threshold_ms);
    fit.sort_by_key(|&i| candidates[i as usize].last_used_ms);
    fit
}

#[cfg(test)]
mod tests {
    use super::*;

    fn used(name: &str, at: Option<u64>) -> Candidate {
        Candidate {
            last_used_ms: at,
            ..Candidate::new(name, 1)
        }
    }

    #[test]
    fn never_used_first_then_oldest() {
        let cs = [
            used("a", Some(300)),
            used("b", Some(100)),
            used("c", None),
            used("d", Some(200)),
            used("e", None),
        ];
        assert_eq!(order(&cs, &Params::default()), [2, 4, 1, 3, 0]);
    }
}
