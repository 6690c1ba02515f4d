//! Switchyard: a gateway in front of AWS Bedrock whose routing decisions are
//! sandboxed, hot-swappable WebAssembly policies.
//!
//! This crate is the `switchyard` command. Its library puts the layers, each
//! a crate of its own, under one name: the gateway core
//! ([`switchyard_core`]: edge, API, admission, router, policy runtime, state,
//! upstream), the Bedrock simulator ([`sim`]), the policy authoring kit
//! ([`authoring`]) and the policy lab ([`lab`]).

pub mod gateway_client;

pub use switchyard_authoring as authoring;
pub use switchyard_clock as clock;
pub use switchyard_core::{
    admission, api, attempt, config, edge, error_chain, gateway, health, jobs, keys, metrics,
    offline, outcome, policy, router, service, spend, state, swap, telemetry, upstream, vocabulary,
};
pub use switchyard_lab as lab;
pub use switchyard_sim as sim;
