//! `same-model-first`: after a failed attempt, the same model in other
//! regions before a different model.
//!
//! A client that asked for a model group usually wants the answer of its
//! first model; another region of the same model gives the same answer,
//! while a fallback model is a compromise. A throttle is per region, so
//! another region of the same model is likely to have quota.
//!
//! Starts from what `cascade` would try (the fit deployments by priority, or,
//! when none is fit, all of them soonest out of cooldown first), then orders
//! it as:
//!
//! 1. the failed deployment's model, in other regions;
//! 2. the failed deployment's model, in its region;
//! 3. the other models, each model's deployments together, models in the
//!    order of their best deployment.
//!
//! Each step keeps the base order. Models and regions come from
//! `host.describe`; when no deployment has been tried yet, the reference is
//! the model of the best remaining deployment, so a model's regions are
//! still tried together before the next model.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it when a group mixes models (a primary and a cheaper fallback)
//! deployed in several regions, and answers should come from the primary
//! model whenever any region of it has quota.
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// A deployment whose cooldown has more than this left is tried only
    /// when nothing else is left.
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

struct SameModelFirst;

impl Fallback for SameModelFirst {
    fn next(
        _req: RequestInfo,
        _failed: Outcome,
        tried: Vec<Candidate>,
        remaining: Vec<Candidate>,
    ) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        let failed = host::describe_failed(&tried);
        let failed_at = failed
            .as_ref()
            .map(|d| (d.model_id.as_str(), d.region.as_str()));
        order(
            &remaining,
            &host::describe_each(&remaining),
            failed_at,
            &params,
        )
    }
}

switchyard_policy::export_fallback!(SameModelFirst);

/// What `cascade` would try.
fn base(remaining: &[Candidate], params: &Params) -> Vec<u32> {
    pick::fit_by_priority_never_empty(remaining, params.skip_threshold_ms)
}

/// The base order by (model rank, same region as the failure); `runs_at[i]`
/// is where `remaining[i]` runs, `failed_at` the failed deployment's (model
/// id, region).
fn order(
    remaining: &[Candidate],
    runs_at: &[DeploymentInfo],
    failed_at: Option<(&str, &str)>,
    params: &Params,
) -> Vec<u32> {
    let base = base(remaining, params);
    // Models ranked by their best deployment, the failed one's first.
    let mut models: Vec<&str> = Vec::new();
    if let Some((model, _)) = failed_at {
        models.push(model);
    }
    for &i in &base {
        let model = runs_at[i as usize].model_id.as_str();
        if !models.contains(&model) {
            models.push(model);
        }
    }
    let mut order = base;
    order.sort_by_key(|&i| {
        let d = &runs_at[i as usize];
        let rank = models
            .iter()
            .position(|m| *m == d.model_id)
            .unwrap_or(usize::MAX);
        let same_region =
            failed_at.is_some_and(|(model, region)| model == d.model_id && region == d.region);
        (rank, same_region)
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, priority: u32, model: &str, region: &str) -> (Candidate, DeploymentInfo) {
        (
            Candidate::new(name, priority),
            DeploymentInfo::new(model, region, "default"),
        )
    }

    fn names(cs: &[Candidate], order: &[u32]) -> Vec<String> {
        order
            .iter()
            .map(|&i| cs[i as usize].deployment.clone())
            .collect()
    }

    /// sonnet failed in us-east-1; haiku there has a better priority than
    /// sonnet elsewhere.
    fn table() -> (Vec<Candidate>, Vec<DeploymentInfo>) {
        [
            at("haiku-east", 2, "haiku", "us-east-1"),
            at("sonnet-west", 3, "sonnet", "us-west-2"),
            at("sonnet-east-2", 4, "sonnet", "us-east-1"),
            at("haiku-west", 5, "haiku", "us-west-2"),
            at("sonnet-eu", 6, "sonnet", "eu-west-1"),
        ]
        .into_iter()
        .unzip()
    }

    #[test]
    fn the_same_model_elsewhere_then_here_then_other_models() {
        let (cs, runs_at) = table();
        let got = names(
            &cs,
            &order(
                &cs,
                &runs_at,
                Some(("sonnet", "us-east-1")),
                &Params::default(),
            ),
        );
        assert_eq!(
            got,
            [
                "sonnet-west",
                "sonnet-eu",
                "sonnet-east-2",
                "haiku-east",
                "haiku-west"
            ]
        );
    }

    #[test]
    fn without_the_failed_model_each_models_regions_stay_together() {
        let (cs, runs_at) = table();
        let got = names(&cs, &order(&cs, &runs_at, None, &Params::default()));
        assert_eq!(
            got,
            [
                "haiku-east",
                "haiku-west",
                "sonnet-west",
                "sonnet-east-2",
                "sonnet-eu"
            ]
        );
    }
}
