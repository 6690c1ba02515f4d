//! `{{name}}`: a selection policy. It orders the deployments a new request
//! tries: the ones fit to call now (circuit not open, cooldown at most
//! `skip_threshold_ms` left), by priority, and among equal priorities the
//! one with the fewest attempts in flight first.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Build:  switchyard policy build
//! Test:   switchyard policy test target/{{name}}.wasm fixtures/*.json
//!         cargo test            (the unit tests below, natively)
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{pick, ParamsError, PolicyParams};

/// The policy's params, from the gateway config. A misspelt or bad one is
/// refused when the gateway loads the policy.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// A deployment whose cooldown has more than this left is not tried.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            skip_threshold_ms: 2_000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.skip_threshold_ms > 600_000 {
            return Err(ParamsError::invalid(
                "skip_threshold_ms",
                "must be at most 600000 (10 min)",
            ));
        }
        Ok(())
    }
}

struct Policy;

impl Selection for Policy {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        order(&candidates, &switchyard_policy::params_or_reject())
    }
}

switchyard_policy::export_selection!(Policy);

/// The logic, apart from the export glue so that it can be unit-tested natively.
fn order(candidates: &[Candidate], params: &Params) -> Vec<u32> {
    pick::fit_sorted_by_key(candidates, params.skip_threshold_ms, |c| {
        (c.priority, c.in_flight)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefers_priority_then_the_least_busy() {
        let cs = [
            Candidate {
                in_flight: 3,
                ..Candidate::new("a", 1)
            },
            Candidate {
                in_flight: 1,
                ..Candidate::new("b", 1)
            },
            Candidate::new("c", 2),
        ];
        assert_eq!(order(&cs, &Params::default()), [1, 0, 2]);
    }

    #[test]
    fn skips_a_long_cooldown() {
        let cs = [
            Candidate {
                cooldown_remaining_ms: 9_000,
                ..Candidate::new("a", 1)
            },
            Candidate::new("b", 2),
        ];
        assert_eq!(order(&cs, &Params::default()), [1]);
    }
}
