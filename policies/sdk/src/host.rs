//! The host's clock, random numbers and raw params.
//!
//! Time and randomness reach a policy only through these functions, so that
//! `switchyard policy test` can fix both and a policy stays deterministic.

use alloc::string::String;

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
