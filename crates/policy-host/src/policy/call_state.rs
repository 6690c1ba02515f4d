//! What one policy call's store holds, and the `host` imports served from it.

use std::sync::Arc;

use super::bindings::host::{self, LogLevel};
use super::bindings::types::DeploymentInfo;
use super::deployment_table::DeploymentTable;
use super::kv::KvStore;
use super::limits::{CallInProgress, CpuWatch, MemoryCap};
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
    /// Bytes of log a policy may write per call; a line past it is cut.
    pub(crate) log_bytes_left: usize,
    /// Bytes of key-value writes (and deletes) the call may still make:
    /// each is told to the sibling instances, so one call must not flood
    /// them.
    pub(crate) kv_bytes_left: usize,
    /// The lines it wrote, kept for the load check and `policy test`.
    pub(crate) logs: Vec<PolicyLog>,
    /// Decides, at each epoch deadline, whether the call has used its time.
    pub(crate) cpu: CpuWatch,
    /// Keeps the epoch ticking for as long as the call's store lives.
    pub(crate) _ticking: CallInProgress,
}

/// Bytes of log one policy call may write in all.
pub const LOG_BYTES_PER_CALL: usize = 4 * 1024;

/// Bytes of key-value writes one policy call may make in all (keys, values,
/// and a fixed cost a write for the message that carries it to the
/// siblings); a write past it is refused.
pub const KV_BYTES_PER_CALL: usize = 64 * 1024;

/// What one write costs of [`KV_BYTES_PER_CALL`] beyond its key and value.
const KV_WRITE_OVERHEAD: usize = 64;

/// `message` as one log line: control characters (newlines included)
/// escaped, so a policy cannot forge lines of the gateway's log, and cut
/// to what is left of `budget`, which it spends.
pub fn log_line(message: &str, budget: &mut usize) -> String {
    const CUT: &str = "…(cut)";
    let mut line = String::with_capacity(message.len().min(*budget));
    let mut cut = false;
    for c in message.chars() {
        let before = line.len();
        if c.is_control() {
            line.extend(c.escape_default());
        } else {
            line.push(c);
        }
        if line.len() > *budget {
            line.truncate(before);
            cut = true;
            break;
        }
    }
    *budget -= line.len();
    if cut {
        line.push_str(CUT);
        *budget = 0;
    }
    line
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
        self.log_line(level, message);
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
        let cost = key.len() + value.len() + KV_WRITE_OVERHEAD;
        if cost > self.kv_bytes_left {
            self.kv_bytes_left = 0;
            let message = format!(
                "host: kv-set of `{key}` refused: the call's writes passed {KV_BYTES_PER_CALL} bytes"
            );
            return self.log_line(LogLevel::Warn, message);
        }
        self.kv_bytes_left -= cost;
        if !self.kv.set(key.clone(), value, ttl_ms) {
            let message = format!("host: kv-set of `{key}` refused: entry too large or store full");
            self.log_line(LogLevel::Warn, message);
        }
    }

    fn kv_delete(&mut self, key: String) {
        // A delete of nothing tells no sibling, and costs nothing.
        let cost = key.len() + KV_WRITE_OVERHEAD;
        if self.kv.get(&key).is_none() {
            return;
        }
        if cost > self.kv_bytes_left {
            self.kv_bytes_left = 0;
            let message = format!(
                "host: kv-delete of `{key}` refused: the call's writes passed {KV_BYTES_PER_CALL} bytes"
            );
            return self.log_line(LogLevel::Warn, message);
        }
        self.kv_bytes_left -= cost;
        self.kv.delete(&key);
    }
}

impl CallState {
    /// Writes one line of the policy's log (its own, or the host's about
    /// it), within the call's budget of lines and bytes: past it, lines are
    /// dropped, so no policy can fill the gateway's log.
    fn log_line(&mut self, level: LogLevel, message: String) {
        if self.log_budget == 0 || self.log_bytes_left == 0 {
            return;
        }
        self.log_budget -= 1;
        let message = log_line(&message, &mut self.log_bytes_left);
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
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_line_cannot_break_into_several_and_stops_at_the_budget() {
        let mut budget = 64;
        let line = log_line("ok\nFAKE gateway line\r\u{1b}[31m", &mut budget);
        assert_eq!(line, "ok\\nFAKE gateway line\\r\\u{1b}[31m");
        assert!(!line.contains('\n'));
        let long = "é".repeat(100);
        let line = log_line(&long, &mut budget);
        assert!(line.ends_with("…(cut)"), "{line}");
        assert_eq!(budget, 0);
        assert!(line.len() <= 64 + "…(cut)".len());
    }
}
