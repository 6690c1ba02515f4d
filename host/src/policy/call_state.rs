//! What one policy call's store holds, and the `host` imports served from it.

use std::sync::Arc;

use super::bindings::host::{self, LogLevel};
use super::bindings::types::DeploymentInfo;
use super::deployment_table::DeploymentTable;
use super::kv::KvStore;
use super::limits::{CallInProgress, MemoryCap};
use crate::clock::SharedClock;

/// The data of one call's `Store`: everything the `host` interface can reach.
pub struct CallState {
    pub(crate) clock: SharedClock,
    pub(crate) rng: fastrand::Rng,
    pub(crate) params: Arc<str>,
    pub(crate) deployments: DeploymentTable,
    pub(crate) kv: Arc<KvStore>,
    pub(crate) memory: MemoryCap,
    /// For log lines: which policy, which request.
    pub(crate) policy_name: Arc<str>,
    pub(crate) request_id: Option<String>,
    /// Log lines a policy may write per call before the rest are dropped.
    pub(crate) log_budget: u32,
    /// The lines it wrote, kept for the load check and `policy test`.
    pub(crate) logs: Vec<PolicyLog>,
    /// Keeps the epoch ticking for as long as the call's store lives.
    pub(crate) _ticking: CallInProgress,
}

/// A line a policy logged during one call.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PolicyLog {
    /// `trace`, `debug`, `info`, `warn` or `error`.
    pub level: &'static str,
    /// What it said.
    pub message: String,
}

impl host::Host for CallState {
    fn now_ms(&mut self) -> u64 {
        self.clock.now_ms()
    }

    fn random_u64(&mut self) -> u64 {
        self.rng.u64(..)
    }

    fn log(&mut self, level: LogLevel, message: String) {
        if self.log_budget == 0 {
            return;
        }
        self.log_budget -= 1;
        self.logs.push(PolicyLog {
            level: match level {
                LogLevel::Trace => "trace",
                LogLevel::Debug => "debug",
                LogLevel::Info => "info",
                LogLevel::Warn => "warn",
                LogLevel::Error => "error",
            },
            message: message.clone(),
        });
        let policy = &*self.policy_name;
        let request_id = self.request_id.as_deref().unwrap_or("-");
        match level {
            LogLevel::Trace => tracing::trace!(policy, request_id, "{message}"),
            LogLevel::Debug => tracing::debug!(policy, request_id, "{message}"),
            LogLevel::Info => tracing::info!(policy, request_id, "{message}"),
            LogLevel::Warn => tracing::warn!(policy, request_id, "{message}"),
            LogLevel::Error => tracing::error!(policy, request_id, "{message}"),
        }
    }

    fn describe(&mut self, deployment: String) -> Option<DeploymentInfo> {
        self.deployments.describe(&deployment).cloned()
    }

    fn params(&mut self) -> String {
        self.params.to_string()
    }

    fn kv_get(&mut self, key: String) -> Option<Vec<u8>> {
        self.kv.get(&key)
    }

    fn kv_set(&mut self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) {
        if !self.kv.set(key, value, ttl_ms) {
            tracing::warn!(
                policy = &*self.policy_name,
                "kv-set refused: entry too large or store full"
            );
        }
    }

    fn kv_delete(&mut self, key: String) {
        self.kv.delete(&key);
    }
}
