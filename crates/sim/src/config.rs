//! The simulator's part of the TOML file (`[simulator]`), also usable as a
//! file of its own for `switchyard sim`.

use std::net::SocketAddr;

use serde::Deserialize;

use super::faults::ConfiguredFault;

/// The `[simulator]` table.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimConfig {
    /// Where `switchyard sim` listens (`serve --simulate` picks a free port).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// How long the `timeout` fault stalls before answering, in milliseconds.
    #[serde(default = "default_stall_ms")]
    pub stall_ms: u64,
    /// The models it answers for. A model id not listed gets a 400
    /// ValidationException, as Bedrock does, unless `accept_any_model` is set.
    #[serde(default)]
    pub models: Vec<SimModelConfig>,
    /// Answer for any model id with default quotas (no limits).
    #[serde(default)]
    pub accept_any_model: bool,
}

impl Default for SimConfig {
    fn default() -> Self {
        Self {
            listen: default_listen(),
            stall_ms: default_stall_ms(),
            models: Vec::new(),
            accept_any_model: true,
        }
    }
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4001))
}

fn default_stall_ms() -> u64 {
    30_000
}

/// One simulated model.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SimModelConfig {
    /// The Bedrock model id it answers to.
    pub model_id: String,
    /// Requests per rolling minute before it answers 429. Like Bedrock's,
    /// the quotas hold per region: a call signed for another region (the
    /// deployment's `region`) counts against that region's own.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens (input + output) per rolling minute before it answers 429.
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Time to first token, in milliseconds.
    #[serde(default)]
    pub ttft_ms: u64,
    /// Output speed; 0 means the whole answer at once.
    #[serde(default)]
    pub tokens_per_s: u32,
    /// Faults that happen at random, each with its probability.
    #[serde(default)]
    pub faults: Vec<ConfiguredFault>,
}

impl SimModelConfig {
    /// A model with no quotas, no latency and no faults.
    pub fn unlimited(model_id: &str) -> Self {
        Self {
            model_id: model_id.to_owned(),
            rpm: None,
            tpm: None,
            ttft_ms: 0,
            tokens_per_s: 0,
            faults: Vec::new(),
        }
    }
}
