//! Async jobs: a request submitted now and answered later (the field's
//! Celery queue). `POST /v1/jobs` stores the request durably and answers
//! 202; workers run it through the gateway's own synchronous route, in
//! process, so it meets the same API keys, fair queue, quotas, policies and
//! fallbacks, at a lower rank in the queue than interactive requests; the
//! answer is kept, exactly as the route returned it, for `result_ttl_s`.
//!
//! One machine's jobs live in a redb file under `data_dir`. A job that was
//! running when the process died is queued again when it starts (it runs
//! once more); a job that ended is never run again.

pub mod callback;
pub mod record;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;
use tokio::task::AbortHandle;

pub use record::{Job, JobAnswer, JobRoute, JobStatus};
pub use store::{JobStore, StoreError};

use crate::api::AppState;

/// Header carrying the secret that lets a job's in-process request speak
/// for its submitter (user, priority, cap) without their API key.
pub const JOB_TOKEN_HEADER: &str = "x-switchyard-job-token";
/// With the token: the submitter's cap of running requests.
pub const JOB_MAX_CONCURRENT_HEADER: &str = "x-switchyard-job-max-concurrent";

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
}

impl Default for JobsConfig {
    fn default() -> Self {
        Self {
            data_dir: None,
            workers: 4,
            priority: -10,
            max_runs: 3,
            result_ttl_s: 86_400,
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

    /// The key that makes this table unusable, and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        if self.workers == 0 {
            return Some(("jobs.workers", "must be at least 1".into()));
        }
        if self.max_runs == 0 {
            return Some(("jobs.max_runs", "must be at least 1".into()));
        }
        if self.dir().is_none() {
            return Some((
                "jobs.data_dir",
                "needed: neither XDG_DATA_HOME nor HOME is set".into(),
            ));
        }
        None
    }
}

/// The jobs of one gateway: the store, the queue of job ids, the workers.
pub struct Jobs {
    store: JobStore,
    config: JobsConfig,
    queue: Mutex<VecDeque<String>>,
    ready: Notify,
    running: Mutex<HashMap<String, AbortHandle>>,
    /// The secret of [`JOB_TOKEN_HEADER`], made afresh by every process.
    token: String,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Unix milliseconds now: jobs' timestamps are for people and for the TTL,
/// so they follow the wall clock, not the routing clock.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Jobs {
    /// Opens the store and queues again what was waiting or running when
    /// the last process stopped.
    pub fn open(config: &JobsConfig) -> Result<Arc<Self>, StoreError> {
        let dir = config.dir().expect("checked by JobsConfig::problem");
        let store = JobStore::open(&dir)?;
        let mut queue = VecDeque::new();
        for mut job in store.all()? {
            match job.status {
                JobStatus::Queued => queue.push_back(job.id),
                JobStatus::Running => {
                    tracing::warn!(job = %job.id, "a job was running when the gateway stopped; it runs again");
                    job.status = JobStatus::Queued;
                    store.put(&job)?;
                    queue.push_back(job.id);
                }
                _ => {}
            }
        }
        Ok(Arc::new(Self {
            store,
            config: config.clone(),
            queue: Mutex::new(queue),
            ready: Notify::new(),
            running: Mutex::new(HashMap::new()),
            token: uuid::Uuid::new_v4().simple().to_string(),
        }))
    }

    /// Its config.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Whether `headers` carry this process's job token.
    pub fn is_own(&self, token: &str) -> bool {
        token == self.token
    }

    /// Stores `job` and queues it.
    pub async fn submit(self: &Arc<Self>, job: Job) -> Result<Job, StoreError> {
        let id = job.id.clone();
        let job = self
            .blocking(move |store| store.put(&job).map(|()| job))
            .await?;
        self.enqueue(id);
        Ok(job)
    }

    /// The job `id`.
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<Option<Job>, StoreError> {
        let id = id.to_owned();
        self.blocking(move |store| store.get(&id)).await
    }

    /// Every job kept, oldest first.
    pub async fn all(self: &Arc<Self>) -> Result<Vec<Job>, StoreError> {
        self.blocking(JobStore::all).await
    }

    /// Cancels job `id` unless it has ended. Returns it as it is after.
    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<Option<Job>, StoreError> {
        let Some(mut job) = self.get(id).await? else {
            return Ok(None);
        };
        if job.status.is_final() {
            return Ok(Some(job));
        }
        job.status = JobStatus::Cancelled;
        job.finished_ms = Some(now_ms());
        let job = self
            .blocking(move |store| store.put(&job).map(|()| job))
            .await?;
        if let Some(run) = self.running.lock().expect("jobs poisoned").remove(id) {
            run.abort();
        }
        Ok(Some(job))
    }

    /// Starts the workers and the sweeper of ended jobs. They stop when the
    /// gateway's state is gone.
    pub fn start(self: &Arc<Self>, state: Weak<AppState>) {
        for _ in 0..self.config.workers {
            let (jobs, state) = (self.clone(), state.clone());
            tokio::spawn(async move {
                loop {
                    let id = jobs.next().await;
                    let Some(state) = state.upgrade() else {
                        return;
                    };
                    jobs.run(&state, &id).await;
                }
            });
        }
        let jobs = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_secs(60));
            loop {
                every.tick().await;
                let Some(jobs) = jobs.upgrade() else {
                    return;
                };
                let before = now_ms().saturating_sub(jobs.config.result_ttl_s * 1000);
                if let Err(e) = jobs.blocking(move |s| s.forget_ended_before(before)).await {
                    let error = crate::error_chain::render(&e);
                    tracing::warn!(%error, "could not forget expired jobs");
                }
            }
        });
    }

    fn enqueue(&self, id: String) {
        self.queue.lock().expect("jobs poisoned").push_back(id);
        self.ready.notify_one();
    }

    /// The next queued job's id, when there is one.
    async fn next(&self) -> String {
        loop {
            let ready = self.ready.notified();
            if let Some(id) = self.queue.lock().expect("jobs poisoned").pop_front() {
                return id;
            }
            ready.await;
        }
    }

    /// Runs `f` on the store off the async threads (a write waits for fsync).
    async fn blocking<R: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&JobStore) -> Result<R, StoreError> + Send + 'static,
    ) -> Result<R, StoreError> {
        let jobs = self.clone();
        tokio::task::spawn_blocking(move || f(&jobs.store))
            .await
            .expect("a job store call does not panic")
    }
}

mod run;
