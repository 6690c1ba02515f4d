//! `spread`: after a failed attempt, other regions and accounts first.
//!
//! A throttle usually means a quota ran out, and deployments in the same
//! region and account share it; an outage usually takes a whole region. So
//! the next attempts should go elsewhere before trying a neighbour.
//!
//! Starts from what `cascade` would try (the fit deployments by priority, or,
//! when none is fit, all of them soonest out of cooldown first), then:
//!
//! 1. groups them by (region, account) and takes one from each group in
//!    turn, groups ordered by their best deployment, so consecutive attempts
//!    go to different regions or accounts while any is left;
//! 2. puts the deployments in the failed deployment's region and account
//!    last, when that is known.
//!
//! Regions and accounts come from `host.describe`, one call per deployment.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Choose it when deployments span several regions or accounts, so a
//! regional outage or an account's quota does not eat every retry.
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

struct Spread;

impl Fallback for Spread {
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
            .map(|d| (d.region.as_str(), d.account.as_str()));
        order(
            &remaining,
            &host::describe_each(&remaining),
            failed_at,
            &params,
        )
    }
}

switchyard_policy::export_fallback!(Spread);

/// What `cascade` would try.
fn base(remaining: &[Candidate], params: &Params) -> Vec<u32> {
    pick::fit_by_priority_never_empty(remaining, params.skip_threshold_ms)
}

/// The base order, one per (region, account) in turn, with `failed_at`'s
/// (region, account) last; `runs_at[i]` is where `remaining[i]` runs.
fn order(
    remaining: &[Candidate],
    runs_at: &[DeploymentInfo],
    failed_at: Option<(&str, &str)>,
    params: &Params,
) -> Vec<u32> {
    let pair = |i: u32| {
        let d = &runs_at[i as usize];
        (d.region.as_str(), d.account.as_str())
    };
    // Groups in order of their best member; members keep the base order.
    let mut groups: Vec<((&str, &str), Vec<u32>)> = Vec::new();
    for i in base(remaining, params) {
        match groups.iter_mut().find(|(p, _)| *p == pair(i)) {
            Some((_, members)) => members.push(i),
            None => groups.push((pair(i), vec![i])),
        }
    }
    if let Some(failed) = failed_at {
        // Stable: the failed pair's group moves to the end.
        groups.sort_by_key(|(p, _)| *p == failed);
    }
    let mut order = Vec::with_capacity(remaining.len());
    let deepest = groups.iter().map(|(_, m)| m.len()).max().unwrap_or(0);
    for round in 0..deepest {
        let last_group = failed_at.is_some_and(|f| groups.last().is_some_and(|(p, _)| *p == f));
        for (at, (_, members)) in groups.iter().enumerate() {
            // The failed pair's members all come after everyone else's.
            if last_group && at == groups.len() - 1 {
                continue;
            }
            if let Some(&i) = members.get(round) {
                order.push(i);
            }
        }
    }
    if let Some(failed) = failed_at {
        if let Some((p, members)) = groups.last() {
            if *p == failed {
                order.extend(members);
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(name: &str, priority: u32, region: &str, account: &str) -> (Candidate, DeploymentInfo) {
        (
            Candidate::new(name, priority),
            DeploymentInfo::new("m", region, account),
        )
    }

    fn names(cs: &[Candidate], order: &[u32]) -> Vec<String> {
        order
            .iter()
            .map(|&i| cs[i as usize].deployment.clone())
            .collect()
    }

    fn table() -> (Vec<Candidate>, Vec<DeploymentInfo>) {
        [
            at("east-a-2", 2, "us-east-1", "a"),
            at("east-a-3", 3, "us-east-1", "a"),
            at("west-a", 4, "us-west-2", "a"),
            at("east-b", 5, "us-east-1", "b"),
            at("east-a-6", 6, "us-east-1", "a"),
        ]
        .into_iter()
        .unzip()
    }

    #[test]
    fn takes_one_per_region_and_account_in_turn() {
        let (cs, runs_at) = table();
        let got = names(&cs, &order(&cs, &runs_at, None, &Params::default()));
        assert_eq!(
            got,
            ["east-a-2", "west-a", "east-b", "east-a-3", "east-a-6"]
        );
    }

    #[test]
    fn the_failed_region_and_account_go_last() {
        let (cs, runs_at) = table();
        let got = names(
            &cs,
            &order(
                &cs,
                &runs_at,
                Some(("us-east-1", "a")),
                &Params::default(),
            ),
        );
        assert_eq!(
            got,
            ["west-a", "east-b", "east-a-2", "east-a-3", "east-a-6"]
        );
    }

    #[test]
    fn never_empty_while_something_is_left() {
        let (mut cs, runs_at) = table();
        for c in &mut cs {
            c.cooldown_remaining_ms = 50_000;
        }
        cs[3].cooldown_remaining_ms = 10_000;
        let got = order(&cs, &runs_at, None, &Params::default());
        assert_eq!(got.len(), 5);
        assert_eq!(got[0], 3, "soonest out of cooldown first");
    }
}
