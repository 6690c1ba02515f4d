//! `cheapest-first`: the cheapest model first, except for premium users.
//!
//! Most requests go to the deployment whose model costs least (by the
//! `prices` param), falling back to dearer ones by price, then priority.
//! Users listed in `premium_users` keep the configured priority order, so
//! they get the best model first. Either way, a deployment that is not fit
//! to call now (circuit open, or more than `skip_threshold_ms` of cooldown
//! left) is left out.
//!
//! Params:
//!
//! ```json
//! {
//!   "prices": {"anthropic.claude-3-haiku-20240307-v1:0": 25,
//!              "anthropic.claude-3-5-sonnet-20240620-v1:0": 300},
//!   "premium_users": ["ceo@example.com"],
//!   "skip_threshold_ms": 2000
//! }
//! ```
//!
//! `prices` is required and must not be empty; a model it does not name
//! costs more than any it does. The unit is yours: only the order matters.
#![cfg_attr(not(test), no_std)]

extern crate alloc;

use alloc::collections::BTreeMap;

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, ParamsError, PolicyParams};

/// The policy's params, from the gateway config. A misspelt or bad one is
/// refused when the gateway loads the policy.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// Price of each model id.
    prices: BTreeMap<String, u32>,
    /// Users who get the configured priority order instead.
    premium_users: Vec<String>,
    /// A deployment whose cooldown has more than this left is not tried.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            prices: BTreeMap::new(),
            premium_users: Vec::new(),
            skip_threshold_ms: 2_000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        if self.prices.is_empty() {
            return Err(ParamsError::invalid(
                "prices",
                "must name the price of at least one model id",
            ));
        }
        Ok(())
    }
}

struct CheapestFirst;

impl Selection for CheapestFirst {
    fn select(req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params = switchyard_policy::params_or_reject();
        // Which model a deployment calls is config, not health: the host
        // tells when asked, and only the price order needs it.
        order(&req, &candidates, &params, || host::describe_each(&candidates))
    }
}

switchyard_policy::export_selection!(CheapestFirst);

/// The logic, apart from the export glue so that it can be unit-tested
/// natively; `runs_at` says where each candidate runs, in their order.
fn order(
    req: &RequestInfo,
    candidates: &[Candidate],
    params: &Params,
    runs_at: impl FnOnce() -> Vec<DeploymentInfo>,
) -> Vec<u32> {
    let premium = req
        .user
        .as_ref()
        .is_some_and(|user| params.premium_users.contains(user));
    if premium {
        return pick::fit_sorted_by_key(candidates, params.skip_threshold_ms, |c| c.priority);
    }
    let runs_at = runs_at();
    let mut order = pick::fit(candidates, params.skip_threshold_ms);
    order.sort_by_key(|&i| {
        let model = &runs_at[i as usize].model_id;
        let price = params.prices.get(model).copied().unwrap_or(u32::MAX);
        (price, candidates[i as usize].priority)
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    const SONNET: &str = "anthropic.claude-3-5-sonnet-20240620-v1:0";
    const HAIKU: &str = "anthropic.claude-3-haiku-20240307-v1:0";

    fn params() -> Params {
        switchyard_policy::parse_params(&format!(
            r#"{{"prices": {{"{HAIKU}": 25, "{SONNET}": 300}}, "premium_users": ["vip"]}}"#
        ))
        .unwrap()
    }

    fn deployment(id: &str, model_id: &str, priority: u32) -> (Candidate, DeploymentInfo) {
        (
            Candidate::new(id, priority),
            DeploymentInfo::new(model_id, "us-east-1", "default"),
        )
    }

    /// The order for `user` over `group`.
    fn order_for(user: Option<&str>, group: &[(Candidate, DeploymentInfo)]) -> Vec<u32> {
        let (cs, runs_at): (Vec<_>, Vec<_>) = group.iter().cloned().unzip();
        order(&request(user), &cs, &params(), || runs_at)
    }

    fn request(user: Option<&str>) -> RequestInfo {
        RequestInfo {
            request_id: "r".into(),
            user: user.map(Into::into),
            model_group: "claude".into(),
            attempt: 0,
            sequence: 0,
            estimated_tokens: 0,
            previous_deployment: None,
            user_last_success: None,
        }
    }

    fn group() -> [(Candidate, DeploymentInfo); 3] {
        [
            deployment("sonnet-east", SONNET, 1),
            deployment("sonnet-west", SONNET, 2),
            deployment("haiku-east", HAIKU, 3),
        ]
    }

    #[test]
    fn everyone_else_gets_the_cheapest_model_first() {
        assert_eq!(order_for(Some("bob"), &group()), [2, 0, 1]);
        assert_eq!(order_for(None, &group()), [2, 0, 1]);
    }

    #[test]
    fn premium_users_keep_the_priority_order() {
        assert_eq!(order_for(Some("vip"), &group()), [0, 1, 2]);
    }

    #[test]
    fn an_unpriced_model_comes_last() {
        let mut cs = group().to_vec();
        cs.push(deployment("mystery", "some.other-model", 0));
        assert_eq!(order_for(None, &cs), [2, 0, 1, 3]);
    }

    #[test]
    fn prices_are_required() {
        let err = switchyard_policy::parse_params::<Params>("{}").unwrap_err();
        assert_eq!(err.param(), Some("prices"));
    }
}
