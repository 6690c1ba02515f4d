//! Switchyard: a gateway in front of AWS Bedrock whose routing decisions are
//! sandboxed, hot-swappable WebAssembly policies.
//!
//! The request path: [`edge`] accepts and times connections, [`api`] parses and checks a request, [`router`] drives the
//! attempt loop ([`attempt`] decides its steps), [`policy`] answers selection / cooldown / fallback questions,
//! [`upstream`] calls Bedrock through the AWS SDK, and [`health`] keeps what
//! happened. [`sim`] is a Bedrock simulator speaking the real wire protocol, and
//! [`state`] holds what several instances share (memory or Redis), and
//! [`vocabulary`] the types those layers speak, so none depends on another for them.

pub mod admin_client;
pub mod admission;
pub mod api;
pub mod attempt;
pub mod authoring;
pub mod clock;
pub mod config;
pub mod edge;
pub mod gateway;
pub mod health;
pub mod lab;
pub mod metrics;
pub mod offline;
pub mod outcome;
pub mod policy;
pub mod router;
pub mod sim;
pub mod state;
pub mod swap;
pub mod upstream;
pub mod vocabulary;
