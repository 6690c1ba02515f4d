//! Switchyard's policy host: everything that runs or reasons about a
//! routing policy without a network, so the gateway, the authoring kit and
//! the lab share it and only the gateway links HTTP, the AWS SDK, Redis and
//! the job store.
//!
//! [`policy`] is the wasmtime runtime (pooled per-call instances, limits,
//! host imports, hot-swappable slots); [`attempt`] decides the steps of a
//! request's way through a group (sans I/O) and the safe stand-ins when a
//! policy faults; [`outcome`] and [`health`] are what an attempt's end
//! changes; [`candidate`] is what policies see of it all; [`offline`] runs a
//! group's three policies off the request path; [`settings`] are the config
//! types they read, and [`budget`] an account's token and request books.

pub use switchyard_clock as clock;

pub mod attempt;
pub mod budget;
pub mod candidate;
pub mod error_chain;
pub mod health;
pub mod offline;
pub mod outcome;
pub mod policy;
pub mod resolve;
pub mod settings;
pub mod vocabulary;
