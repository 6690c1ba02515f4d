//! Switchyard's gateway core: everything a request meets between the
//! client's connection and Bedrock's answer.
//!
//! The request path: [`edge`] accepts and times connections, [`api`] parses and checks a request and calls
//! [`service`] (the fair queue, then routing; async jobs call it too), [`router`] drives the
//! attempt loop ([`attempt`] decides its steps), [`policy`] answers selection / cooldown / fallback questions,
//! [`upstream`] calls Bedrock through the AWS SDK, and [`health`] keeps what
//! happened. [`state`] holds what several instances share (memory or Redis),
//! and [`vocabulary`] the types those layers speak, so none depends on another
//! for them. [`offline`] runs a group's policies without a server, for the
//! authoring kit and the lab.

pub use switchyard_clock as clock;
// The policy host's modules, under the names the gateway has always used.
pub use switchyard_policy_host::{
    attempt, error_chain, health, offline, outcome, policy, vocabulary,
};

pub mod admission;
pub mod api;
pub mod config;
pub mod edge;
pub mod gateway;
pub mod history;
pub mod jobs;
pub mod keys;
pub mod metrics;
pub mod router;
pub mod service;
pub mod spend;
pub mod state;
pub mod swap;
pub mod telemetry;
pub mod upstream;
