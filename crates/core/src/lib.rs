//! Switchyard's gateway core: everything a request meets between the
//! client's connection and Bedrock's answer.
//!
//! The request path: [`edge`] accepts and times connections, [`api`] parses and checks a request, [`router`] drives the
//! attempt loop ([`attempt`] decides its steps), [`policy`] answers selection / cooldown / fallback questions,
//! [`upstream`] calls Bedrock through the AWS SDK, and [`health`] keeps what
//! happened. [`state`] holds what several instances share (memory or Redis),
//! and [`vocabulary`] the types those layers speak, so none depends on another
//! for them. [`offline`] runs a group's policies without a server, for the
//! authoring kit and the lab.

pub use switchyard_clock as clock;

pub mod admission;
pub mod api;
pub mod attempt;
pub mod config;
pub mod edge;
pub mod error_chain;
pub mod gateway;
pub mod health;
pub mod jobs;
pub mod metrics;
pub mod offline;
pub mod outcome;
pub mod policy;
pub mod router;
pub mod state;
pub mod swap;
pub mod upstream;
pub mod vocabulary;
