//! The host's clock, random numbers, raw params, and where deployments run.
//!
//! Time and randomness reach a policy only through these functions, so that
//! `switchyard policy test` can fix both and a policy stays deterministic.

use alloc::string::String;
use alloc::vec::Vec;

use crate::{Candidate, DeploymentInfo};

use crate::bindings::switchyard::policy::host as imports;

/// The host clock in milliseconds: monotonic within one gateway, and the same
/// clock as [`Outcome::at_ms`](crate::Outcome::at_ms) and the `*_ms`
/// timestamps of a [`Candidate`](crate::Candidate).
pub fn now_ms() -> u64 {
    imports::now_ms()
}

/// A random number from the host's generator (seeded by the fixture in tests).
pub fn random_u64() -> u64 {
    imports::random_u64()
}

/// The policy's params from the gateway config, as the raw JSON object (`"{}"`
/// when none are set). Most policies want the typed [`params`](crate::params).
pub fn params_json() -> String {
    imports::params()
}

/// Where `deployment` runs (model, region, account), for any deployment of
/// the model group the call is about; `None` for another id. Each call asks
/// the host once, so ask only when the policy needs it.
pub fn describe(deployment: &str) -> Option<DeploymentInfo> {
    imports::describe(deployment)
}

/// Where each of `candidates` runs, in their order: one `describe` each. The
/// host knows every candidate it passes; an id it did not know would read
/// as empty strings.
pub fn describe_each(candidates: &[Candidate]) -> Vec<DeploymentInfo> {
    candidates
        .iter()
        .map(|c| {
            describe(&c.deployment).unwrap_or_else(|| DeploymentInfo::new("", "", ""))
        })
        .collect()
}

/// Where the deployment that just failed runs, in a fallback policy: the
/// last of `tried`. `None` when nothing was tried (or the host does not
/// know it).
pub fn describe_failed(tried: &[Candidate]) -> Option<DeploymentInfo> {
    describe(&tried.last()?.deployment)
}
