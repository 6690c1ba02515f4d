//! `{{name}}`: a fallback policy. After an attempt failed, it orders what is
//! left: deployments in another region than the one that failed first (an
//! outage or a quota is often regional), then by priority. Deployments that
//! are not fit to call (circuit open, cooldown over `skip_threshold_ms`) come
//! last rather than never, so a request is not given up while any is left.
//!
//! Params (all optional): `{"skip_threshold_ms": 2000}`.
//!
//! Build:  switchyard policy build
//! Test:   switchyard policy test target/{{name}}.wasm fixtures/*.json
//!         cargo test            (the unit tests below, natively)
#![cfg_attr(not(test), no_std)]

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, PolicyParams};

/// The policy's params, from the gateway config. A misspelt or bad one is
/// refused when the gateway loads the policy.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// A deployment whose cooldown has more than this left goes last.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            skip_threshold_ms: 2_000,
        }
    }
}

impl PolicyParams for Params {}

struct Policy;

impl Fallback for Policy {
    fn next(
        _req: RequestInfo,
        _failed: Outcome,
        tried: Vec<Candidate>,
        remaining: Vec<Candidate>,
    ) -> Vec<u32> {
        // Where the deployments run is asked of the host (`describe`): the
        // candidates carry only what changes from call to call.
        let failed = host::describe_failed(&tried);
        let failed_region = failed.as_ref().map(|d| d.region.as_str());
        order(
            failed_region,
            &remaining,
            &host::describe_each(&remaining),
            &switchyard_policy::params_or_reject(),
        )
    }
}

switchyard_policy::export_fallback!(Policy);

/// The logic, apart from the export glue so that it can be unit-tested natively.
/// `runs_at[i]` is where `remaining[i]` runs.
fn order(
    failed_region: Option<&str>,
    remaining: &[Candidate],
    runs_at: &[DeploymentInfo],
    params: &Params,
) -> Vec<u32> {
    let mut order: Vec<u32> = (0..remaining.len() as u32).collect();
    order.sort_by_key(|&i| {
        let c = &remaining[i as usize];
        (
            !c.is_fit(params.skip_threshold_ms),
            Some(runs_at[i as usize].region.as_str()) == failed_region,
            c.priority,
        )
    });
    order
}

#[cfg(test)]
mod tests {
    use super::*;

    fn in_region(region: &str) -> DeploymentInfo {
        DeploymentInfo::new("model", region, "account")
    }

    #[test]
    fn another_region_first_then_by_priority() {
        let remaining = [Candidate::new("b", 2), Candidate::new("c", 3)];
        let runs_at = [in_region("us-east-1"), in_region("us-west-2")];
        let got = order(Some("us-east-1"), &remaining, &runs_at, &Params::default());
        assert_eq!(got, [1, 0]);
    }

    #[test]
    fn unfit_deployments_go_last() {
        let remaining = [
            Candidate {
                circuit: Circuit::Open,
                ..Candidate::new("b", 2)
            },
            Candidate::new("c", 3),
        ];
        let runs_at = [in_region("us-west-2"), in_region("us-east-1")];
        let got = order(Some("us-east-1"), &remaining, &runs_at, &Params::default());
        assert_eq!(got, [1, 0]);
    }
}
