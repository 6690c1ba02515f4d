//! A Bedrock Runtime simulator that speaks the real wire protocol, so the
//! unmodified AWS SDK can be its client.
//!
//! Each simulated model has RPM and TPM quotas over a rolling 60-second
//! window on the simulator's clock, a latency profile, and faults that can be
//! configured or injected at run time. Replies are a deterministic function of
//! the prompt so tests can check content.

mod abandonable;
mod config;
mod converse;
mod embed;
mod eventstream;
mod faults;
pub mod quota;
mod server;
mod tools;
mod wire;

pub use config::{SimConfig, SimModelConfig};
pub use embed::EmbeddingFamily;
pub use faults::Fault;
pub use server::{ModelCounts, SimHandle, Simulator};
pub use wire::KeyRefusal;
