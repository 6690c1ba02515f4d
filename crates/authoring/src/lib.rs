//! The policy authoring kit behind `switchyard policy new | build | test |
//! simulate | check`: everything a policy author needs without a gateway.
//!
//! - [`scaffold`] writes a ready-to-build crate from a template;
//! - [`wasm_build`] builds it to a component with the host's toolchain discovery;
//! - [`fixture`] and [`runner`] run a component on JSON fixtures in the
//!   gateway's runtime, with fixed clock, seed, params and kv state, and
//!   report decision, fuel and peak memory;
//! - [`simulate`] runs a group's policies over a scripted timeline;
//! - [`check`] is the gateway's load gate on its own.

pub mod fixture;
pub mod runner;
pub mod scaffold;
pub mod simulate;
pub mod wasm_build;

use std::sync::Arc;

use switchyard_clock::SystemClock;
use switchyard_policy_host::policy::{KvStore, LoadError, PolicyKind, PolicyRuntime};
use switchyard_policy_host::settings::PolicyRuntimeConfig;

/// Runs the gateway's load gate on `bytes` with `params`: compile, world and
/// version, link, and the load-check call. Returns the world it implements.
pub fn check(
    label: &str,
    bytes: &[u8],
    params: &serde_json::Value,
) -> Result<PolicyKind, LoadError> {
    let clock = SystemClock::shared();
    let config = PolicyRuntimeConfig {
        max_concurrent_calls: 4,
        ..PolicyRuntimeConfig::default()
    };
    let runtime = PolicyRuntime::new(&config, clock.clone())?;
    let kind = runtime.kind_of(bytes)?;
    runtime.load(kind, label, bytes, params, Arc::new(KvStore::new(clock)))?;
    Ok(kind)
}
