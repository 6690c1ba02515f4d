//! A Bedrock Runtime simulator that speaks the real wire protocol, so the
//! unmodified AWS SDK can be its client.
//!
//! Each simulated model has RPM and TPM quotas over a rolling 60-second
//! window on the simulator's clock, a latency profile, and faults that can be
//! configured or injected at run time. Replies are a deterministic function of
//! the prompt so tests can check content.

#[cfg(feature = "server")]
mod abandonable;
#[cfg(feature = "server")]
mod anthropic;
#[cfg(feature = "server")]
mod config;
#[cfg(feature = "server")]
mod converse;
#[cfg(feature = "server")]
mod embed;
#[cfg(feature = "server")]
mod eventstream;
#[cfg(feature = "server")]
mod faults;
pub mod quota;
#[cfg(feature = "server")]
mod server;
#[cfg(feature = "server")]
mod tools;
#[cfg(feature = "server")]
mod wire;

#[cfg(feature = "server")]
pub use config::{SimConfig, SimModelConfig};
#[cfg(feature = "server")]
pub use embed::EmbeddingFamily;
#[cfg(feature = "server")]
pub use faults::{ConfiguredFault, Fault};
#[cfg(feature = "server")]
pub use server::{ModelCounts, SimHandle, Simulator};
#[cfg(feature = "server")]
pub use wire::KeyRefusal;
