//! The names of every key and channel, under the configured prefix.

use super::super::budget::Window;
use super::super::{QuotaSpec, SlotId};

/// Key names for one fleet (one prefix).
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// The sorted set of `kind` ("rpm" | "tpm") spends of a quota pool.
    pub fn spends(&self, quota: &QuotaSpec, kind: &str) -> String {
        format!("{}:spends:{kind}:{}", self.prefix, quota.pool)
    }

    /// The hash of a quota pool's sums and reservation sequence.
    pub fn sums(&self, quota: &QuotaSpec) -> String {
        format!("{}:quota:{}", self.prefix, quota.pool)
    }

    /// The hash of an account's sums in one day or week (`period`).
    pub fn budget(&self, account: &str, window: Window, period: u64) -> String {
        format!(
            "{}:budget:{account}:{}:{period}",
            self.prefix,
            window.name()
        )
    }

    /// The channel every change is broadcast on.
    pub fn changes(&self) -> String {
        format!("{}:changes", self.prefix)
    }

    /// A deployment's latest cooldown, expiring with it, for instances
    /// that (re)connect.
    pub fn cooldown(&self, deployment: &str) -> String {
        format!("{}:cooldown:{deployment}", self.prefix)
    }

    /// Present while a deployment's circuit is open, expiring with it.
    pub fn circuit(&self, deployment: &str) -> String {
        format!("{}:circuit:{deployment}", self.prefix)
    }

    /// A policy slot's key-value entry.
    pub fn kv(&self, slot: &SlotId, key: &str) -> String {
        format!("{}:kv:{slot}:{key}", self.prefix)
    }

    /// Sorted set of live instances, scored by their last heartbeat.
    pub fn instances(&self) -> String {
        format!("{}:instances", self.prefix)
    }

    /// Hash: user → requests running on `instance`.
    pub fn running(&self, instance: &str) -> String {
        format!("{}:running:{instance}", self.prefix)
    }
}
