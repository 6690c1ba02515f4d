//! `[jobs]`: async jobs' settings (the jobs themselves live in
//! [`crate::jobs`]).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// `[jobs]`: async jobs. Without the table, `/v1/jobs` is off.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobsConfig {
    /// The folder of the job store (`jobs.redb`). Default:
    /// `$XDG_DATA_HOME/switchyard` or `~/.local/share/switchyard`.
    pub data_dir: Option<PathBuf>,
    /// Jobs run at once.
    pub workers: u32,
    /// Jobs' rank in the fair queue (interactive requests: 0 or their API
    /// key's); a job never ranks above its submitter's key.
    pub priority: i32,
    /// Runs a job may take while the gateway answers "try later" (429, 503,
    /// 504), waiting between them; then it fails with that answer.
    pub max_runs: u32,
    /// How long an ended job and its answer are kept, in seconds.
    pub result_ttl_s: u64,
    /// With Redis: a job whose instance has not said it still runs it for
    /// this long (it died) is taken by another instance, in ms.
    pub claim_after_ms: u64,
    /// Whether callbacks may go to addresses inside the network (loopback,
    /// private, link-local); off, so clients cannot probe through the gateway.
    pub private_callbacks: bool,
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            workers: 4,
            priority: -10,
            max_runs: 3,
            result_ttl_s: 86_400,
            claim_after_ms: 30_000,
            private_callbacks: false,
        }
    }
}

impl JobsConfig {
    /// The folder of the store.
    pub fn dir(&self) -> Option<PathBuf> {
        self.data_dir.clone().or_else(|| {
            let base = std::env::var_os("XDG_DATA_HOME")
                .map(PathBuf::from)
                .or_else(|| {
                    std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share"))
                })?;
            Some(base.join("switchyard"))
        })
    }

    /// The key that makes this table unusable, and why (`on_redis`: the
    /// jobs live in Redis, so no folder is needed).
    pub fn problem(&self, on_redis: bool) -> Option<(&'static str, String)> {
        if self.claim_after_ms < 300 {
            return Some(("jobs.claim_after_ms", "must be at least 300".into()));
        }
        if self.workers == 0 {
            return Some(("jobs.workers", "must be at least 1".into()));
        }
        if self.max_runs == 0 {
            return Some(("jobs.max_runs", "must be at least 1".into()));
        }
        if !on_redis && self.dir().is_none() {
            return Some((
                "jobs.data_dir",
                "needed: neither XDG_DATA_HOME nor HOME is set".into(),
            ));
        }
        None
    }
}
