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
    /// Jobs one user may keep (queued, running, or ended and not yet
    /// forgotten); one more is refused with 429 `job_quota_exceeded`.
    pub max_jobs_per_user: u64,
    /// Bytes of requests and answers one user may keep.
    pub max_bytes_per_user: u64,
    /// Jobs the store keeps in all, for every user.
    pub max_jobs: u64,
    /// Bytes of requests and answers the store keeps in all.
    pub max_bytes: u64,
    /// A job that has not started this many seconds after it was
    /// submitted fails with `job_expired` instead of running (its answer
    /// would come too late to matter); on Redis, an unfinished job's record
    /// is forgotten this long after its last change, whatever happens.
    pub max_age_s: u64,
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
            max_jobs_per_user: 1_000,
            max_bytes_per_user: 100 << 20,
            max_jobs: 100_000,
            max_bytes: 2 << 30,
            max_age_s: 7 * 86_400,
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
        if self.max_jobs_per_user == 0 || self.max_jobs == 0 {
            return Some(("jobs.max_jobs_per_user", "must be at least 1".into()));
        }
        if self.max_age_s == 0 {
            return Some(("jobs.max_age_s", "must be at least 1".into()));
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

/// Which of the store's caps a submission would pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JobLimit {
    UserJobs(u64),
    UserBytes(u64),
    Jobs(u64),
    Bytes(u64),
}

impl JobLimit {
    /// What the client is told: their own cap, or that the store is full
    /// (nothing about other users).
    pub fn message(self) -> String {
        match self {
            Self::UserJobs(cap) => format!(
                "you keep {cap} jobs, your cap (jobs.max_jobs_per_user); wait until some end and their results expire, or fetch and let them go"
            ),
            Self::UserBytes(cap) => format!(
                "your jobs' requests and answers take {cap} bytes, your cap (jobs.max_bytes_per_user); wait until some expire"
            ),
            Self::Jobs(_) | Self::Bytes(_) => {
                "the gateway's job store is full; try again later".to_owned()
            }
        }
    }
}

/// What one user, or the store in all, keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobUsage {
    pub jobs: u64,
    pub bytes: u64,
}

impl JobsConfig {
    /// The cap that one more job of `bytes` would pass, given what its user
    /// and the store in all keep.
    pub fn limit_passed(&self, user: JobUsage, all: JobUsage, bytes: u64) -> Option<JobLimit> {
        if user.jobs + 1 > self.max_jobs_per_user {
            return Some(JobLimit::UserJobs(self.max_jobs_per_user));
        }
        if user.bytes + bytes > self.max_bytes_per_user {
            return Some(JobLimit::UserBytes(self.max_bytes_per_user));
        }
        if all.jobs + 1 > self.max_jobs {
            return Some(JobLimit::Jobs(self.max_jobs));
        }
        if all.bytes + bytes > self.max_bytes {
            return Some(JobLimit::Bytes(self.max_bytes));
        }
        None
    }
}
