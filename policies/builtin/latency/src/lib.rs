//! `latency`: the fastest deployment first, with a share of exploration.
//!
//! Orders the fit deployments (circuit not open, at most `skip_threshold_ms`
//! of cooldown left) by their latency EWMA (`latency-ewma-ms`), lowest first;
//! ties go by priority. A deployment with no measurement yet (EWMA 0) comes
//! first, so each gets measured once.
//!
//! A slow deployment that is not picked is never measured again, so its EWMA
//! would stay stale after it recovers. With probability `exploration`, a
//! request instead starts on the other fit deployment whose measurement is
//! the stalest (least recently used), and the rest follow by latency.
//!
//! Params (all optional): `{"exploration": 0.05, "skip_threshold_ms": 2000}`;
//! `exploration` is a share from 0 to 1.
//!
//! Choose it for interactive traffic across regions, where the time to an
//! answer matters more than spreading load.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, ParamsError, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// The share of requests that start on the stalest other deployment.
    exploration: f64,
    /// A deployment whose cooldown has more than this left is not tried.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            exploration: 0.05,
            skip_threshold_ms: 2000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if !(0.0..=1.0).contains(&self.exploration) {
            return Err(ParamsError::invalid(
                "exploration",
                format!("must be a share from 0 to 1, not {}", self.exploration),
            ));
        }
        Ok(())
    }
}

struct Latency;

impl Selection for Latency {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        let explore = pick::chance(host::random_u64(), params.exploration);
        order(&candidates, &params, explore)
    }
}

switchyard_policy::export_selection!(Latency);

/// The fit candidates by (latency, priority); when `explore`, the least
/// recently used of all but the fastest is moved to the front.
fn order(candidates: &[Candidate], params: &Params, explore: bool) -> Vec<u32> {
    let mut order = pick::fit(candidates, params.skip_threshold_ms);
    order.sort_by_key(|&i| {
        let c = &candidates[i as usize];
        (c.latency_ewma_ms, c.priority)
    });
    if explore && order.len() > 1 {
        let stalest = (1..order.len())
            .min_by_key(|&at| candidates[order[at] as usize].last_used_ms)
            .expect("at least one other");
        let i = order.remove(stalest);
        order.insert(0, i);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn timed(name: &str, ewma: u32, last_used: u64) -> Candidate {
        Candidate {
            latency_ewma_ms: ewma,
            last_used_ms: Some(last_used),
            ..Candidate::new(name, 1)
        }
    }

    #[test]
    fn fastest_first_unmeasured_before_all() {
        let cs = [
            timed("a", 900, 5),
            timed("b", 200, 9),
            timed("c", 0, 1),
            timed("d", 400, 2),
        ];
        assert_eq!(order(&cs, &Params::default(), false), [2, 1, 3, 0]);
    }

    #[test]
    fn exploration_starts_on_the_stalest_other() {
        let cs = [timed("a", 900, 5), timed("b", 200, 9), timed("c", 400, 2)];
        assert_eq!(order(&cs, &Params::default(), true), [2, 1, 0]);
        assert_eq!(order(&cs[..1], &Params::default(), true), [0]);
    }

    #[test]
    fn exploration_is_a_share() {
        let err = switchyard_policy::parse_params::<Params>(r#"{"exploration": 5}"#).unwrap_err();
        assert_eq!(err.param(), Some("exploration"));
    }
}
