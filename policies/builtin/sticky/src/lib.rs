//! `sticky`: keeps a user on the deployment where its requests last succeeded.
//!
//! Bedrock's prompt cache lives in one deployment, so a user whose requests
//! keep landing on the same one pays for its long prompt once. The host
//! passes where the user last succeeded in this model group
//! (`user-last-success`); that deployment goes first while all of these hold:
//!
//! - the success is at most `ttl_ms` old (the affinity expires with the cache);
//! - it has not been throttled since (`last-throttle-ms` after the success);
//! - it is not cooling down at all, and its circuit is not open.
//!
//! The other fit deployments (circuit not open, at most `skip_threshold_ms` of
//! cooldown left) follow by priority. A request without a user, or whose
//! affinity broke, gets that priority order; its next success sets the
//! affinity anew, so a throttle moves the user on and it stays there.
//!
//! Params (all optional): `{"ttl_ms": 300000, "skip_threshold_ms": 2000}`;
//! `ttl_ms` must be above 0.
//!
//! Choose it for chat and document sessions that resend a long context, so
//! each user keeps a warm prompt cache.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, ParamsError, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// How long after its last success a user stays on a deployment
    /// (Bedrock's prompt cache lives 5 minutes after its last use).
    ttl_ms: u64,
    /// A deployment whose cooldown has more than this left is not tried.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            ttl_ms: 300_000,
            skip_threshold_ms: 2000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.ttl_ms == 0 {
            return Err(ParamsError::invalid(
                "ttl_ms",
                "must be above 0 (for no affinity, use `priority`)",
            ));
        }
        Ok(())
    }
}

struct Sticky;

impl Selection for Sticky {
    fn select(req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        let home = req
            .user_last_success
            .as_ref()
            .and_then(|last| home(last, host::now_ms(), &candidates, &params));
        order(home, &candidates, &params)
    }
}

switchyard_policy::export_selection!(Sticky);

/// The index of the deployment the user should stay on, if the affinity holds.
fn home(last: &LastSuccess, now_ms: u64, candidates: &[Candidate], params: &Params) -> Option<u32> {
    if now_ms.saturating_sub(last.at_ms) > params.ttl_ms {
        return None;
    }
    let i = candidates
        .iter()
        .position(|c| c.deployment == last.deployment)?;
    let c = &candidates[i];
    let throttled_since = c.last_throttle_ms.is_some_and(|t| t > last.at_ms);
    (c.is_fit(0) && !throttled_since).then_some(i as u32)
}

/// `home` first, then the other fit candidates by priority.
fn order(home: Option<u32>, candidates: &[Candidate], params: &Params) -> Vec<u32> {
    let mut order = pick::fit(candidates, params.skip_threshold_ms);
    order.sort_by_key(|&i| candidates[i as usize].priority);
    if let Some(home) = home {
        order.retain(|&i| i != home);
        order.insert(0, home);
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn last(deployment: &str, at_ms: u64) -> LastSuccess {
        LastSuccess {
            deployment: deployment.into(),
            at_ms,
        }
    }

    fn three() -> Vec<Candidate> {
        (1..=3)
            .map(|p| Candidate::new(format!("d{p}"), p))
            .collect()
    }

    #[test]
    fn stays_on_the_last_success_within_the_ttl() {
        let cs = three();
        let p = Params::default();
        let h = home(&last("d3", 1_000), 301_000, &cs, &p);
        assert_eq!(h, Some(2));
        assert_eq!(order(h, &cs, &p), [2, 0, 1]);
        assert_eq!(home(&last("d3", 1_000), 301_001, &cs, &p), None);
        assert_eq!(home(&last("gone", 1_000), 2_000, &cs, &p), None);
        assert_eq!(order(None, &cs, &p), [0, 1, 2]);
    }

    #[test]
    fn a_throttle_or_a_cooldown_breaks_the_affinity() {
        let p = Params::default();
        let mut cs = three();
        cs[2].last_throttle_ms = Some(900);
        assert_eq!(
            home(&last("d3", 1_000), 2_000, &cs, &p),
            Some(2),
            "older throttle"
        );
        cs[2].last_throttle_ms = Some(1_500);
        assert_eq!(home(&last("d3", 1_000), 2_000, &cs, &p), None);
        let mut cs = three();
        cs[2].cooldown_remaining_ms = 1;
        assert_eq!(home(&last("d3", 1_000), 2_000, &cs, &p), None);
        assert_eq!(
            order(None, &cs, &p),
            [0, 1, 2],
            "a short cooldown is still tried"
        );
    }
}
