//! Async jobs: a request submitted now and answered later (the field's
//! Celery queue). `POST /v1/jobs` stores the request durably and answers
//! 202; workers run it through the gateway's own synchronous route, in
//! process, so it meets the same API keys, fair queue, quotas, policies and
//! fallbacks, at a lower rank in the queue than interactive requests; the
//! answer is kept, exactly as the route returned it, for `result_ttl_s`.
//!
//! One machine's jobs live in a redb file under `data_dir`. With
//! `[state] backend = "redis"` they live in Redis, shared by every instance
//! ([`redis`]): any instance runs any job, and one whose instance died is
//! claimed by another. Either way a job that was running when its process
//! died runs again, at most `max_runs` times in all (then it fails with
//! `job_interrupted`), and a job that ended never runs again.
//!
//! What a client can keep is capped (jobs and bytes, per user and in all),
//! and a job's callback waits in a durable outbox until it is taken or has
//! been tried [`callback::MAX_TRIES`] times, across restarts.

pub mod callback;
pub mod record;
pub mod redis;
pub mod store;

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;
use tokio::task::AbortHandle;

pub use record::{Job, JobAnswer, JobRoute, JobStatus};
pub use store::{JobStore, Page, PageQuery, StoreError};

use bytes::Bytes;

pub use crate::config::JobsConfig;
use crate::state::{BackendKind, StateConfig};

/// What runs one job's request and says what its synchronous route would
/// have answered: the gateway's API, which knows each route's shapes,
/// calling the routing service directly with the job's submitter as the
/// caller.
pub trait JobRunner: Send + Sync + 'static {
    /// Runs `job`'s `request` once.
    fn run(
        self: Arc<Self>,
        job: Job,
        request: Bytes,
    ) -> futures::future::BoxFuture<'static, JobAnswer>;
}

/// Where jobs and their queue live.
enum Backend {
    /// This machine: a redb file, and the queue in memory.
    Local {
        store: Arc<JobStore>,
        queue: Mutex<VecDeque<String>>,
        ready: Notify,
    },
    /// A Redis server every instance shares.
    Redis(Box<redis::RedisJobs>),
}

/// A job a worker took: its id, and its stream entry on Redis.
pub(crate) struct Delivery {
    pub(crate) id: String,
    entry: Option<redis::Entry>,
}

/// What one worker keeps between jobs: on Redis, its own connection (its
/// reads block) and where it is among the entries it may claim.
#[derive(Default)]
struct Worker {
    conn: Option<::redis::aio::MultiplexedConnection>,
    cursor: redis::Cursor,
}

/// What a change did to a job's record.
pub enum Edit {
    /// Nothing: the record stays as it was.
    Leave,
    /// Changed the record.
    Write,
    /// Changed the record and ended the job with this answer body, which is
    /// written beside it (see [`end_with`]).
    WriteAnswer(Bytes),
}

/// A change of a stored job.
pub(crate) type Change = Arc<dyn Fn(&mut Job) -> Edit + Send + Sync>;

/// Ends `job` as `status` with `answer`.
pub(crate) fn end_with(job: &mut Job, status: JobStatus, answer: &JobAnswer) -> Edit {
    job.status = status;
    job.finished_ms = Some(now_ms());
    job.owner = None;
    job.answer_status = Some(answer.status);
    job.answer_bytes = answer.body.len() as u64;
    Edit::WriteAnswer(answer.body.clone())
}

/// The jobs of one gateway: where they live, and the workers.
pub struct Jobs {
    backend: Backend,
    config: JobsConfig,
    running: Mutex<HashMap<String, AbortHandle>>,
    /// Wakes the callback deliverer when a job with a callback ends.
    callbacks: Notify,
    /// This instance's name as a job's runner (and a Redis consumer).
    owner: String,
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
    /// Opens where the jobs live: Redis when the shared state is there,
    /// else the store under `data_dir`, queueing again what was waiting or
    /// running when the last process stopped.
    pub fn open(config: &JobsConfig, state: &StateConfig) -> Result<Arc<Self>, StoreError> {
        let owner = format!("instance-{}", uuid::Uuid::new_v4().simple());
        let backend = match (state.backend, state.url.as_deref()) {
            (BackendKind::Redis, Some(url)) => Backend::Redis(Box::new(redis::RedisJobs::new(
                url,
                &state.key_prefix,
                owner.clone(),
                config,
            )?)),
            _ => Self::open_local(config)?,
        };
        Ok(Arc::new(Self {
            backend,
            config: config.clone(),
            running: Mutex::new(HashMap::new()),
            callbacks: Notify::new(),
            owner,
        }))
    }

    fn open_local(config: &JobsConfig) -> Result<Backend, StoreError> {
        let dir = config.dir().expect("checked by JobsConfig::problem");
        let store = JobStore::open(&dir)?;
        let mut queue = VecDeque::new();
        for job in store.unfinished()? {
            // A job that was running stays so: taking it again counts the
            // run, so one that kills its gateway every time ends after
            // `max_runs` instead of running on every start.
            if job.status == JobStatus::Running {
                tracing::warn!(job = %job.id, runs = job.runs, "a job was running when the gateway stopped; it runs again");
            }
            queue.push_back(job.id);
        }
        Ok(Backend::Local {
            store: Arc::new(store),
            queue: Mutex::new(queue),
            ready: Notify::new(),
        })
    }

    /// Its config.
    pub fn config(&self) -> &JobsConfig {
        &self.config
    }

    /// Stores `job` with its `request` and queues it, unless that would
    /// pass one of the caps ([`StoreError::Full`]).
    pub async fn submit(self: &Arc<Self>, mut job: Job, request: Bytes) -> Result<Job, StoreError> {
        job.request_bytes = request.len() as u64;
        match &self.backend {
            Backend::Local { store, .. } => {
                let id = job.id.clone();
                let config = self.config.clone();
                let job = blocking(store, move |store| {
                    store.submit(&job, &request, &config).map(|()| job)
                })
                .await?;
                self.enqueue(id).await?;
                Ok(job)
            }
            Backend::Redis(redis) => redis.submit(&job, &request).await.map(|()| job),
        }
    }

    /// The job `id`.
    pub async fn get(self: &Arc<Self>, id: &str) -> Result<Option<Job>, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let id = id.to_owned();
                blocking(store, move |store| store.get(&id)).await
            }
            Backend::Redis(redis) => redis.get(id).await,
        }
    }

    /// Job `id`'s request.
    pub async fn request(self: &Arc<Self>, id: &str) -> Result<Option<Bytes>, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let id = id.to_owned();
                blocking(store, move |store| store.request(&id)).await
            }
            Backend::Redis(redis) => redis.payload(id, "request").await,
        }
    }

    /// `job`'s answer, once it has one.
    pub async fn answer(self: &Arc<Self>, job: &Job) -> Result<Option<JobAnswer>, StoreError> {
        let Some(status) = job.answer_status else {
            return Ok(None);
        };
        let body = match &self.backend {
            Backend::Local { store, .. } => {
                let id = job.id.clone();
                blocking(store, move |store| store.answer(&id)).await?
            }
            Backend::Redis(redis) => redis.payload(&job.id, "answer").await?,
        };
        Ok(body.map(|body| JobAnswer {
            status,
            body,
            retry_after_ms: None,
        }))
    }

    /// A page of jobs, newest first: records only.
    pub async fn page(self: &Arc<Self>, query: PageQuery) -> Result<Page, StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => blocking(store, move |store| store.page(&query)).await,
            Backend::Redis(redis) => redis.page(&query).await,
        }
    }

    /// Reads job `id`, lets `change` alter it, and writes it with nothing
    /// else written in between. Returns the job as stored after, and
    /// whether `change` changed it.
    pub(crate) async fn update(
        self: &Arc<Self>,
        id: &str,
        change: Change,
    ) -> Result<(Option<Job>, bool), StoreError> {
        match &self.backend {
            Backend::Local { store, .. } => {
                let id = id.to_owned();
                blocking(store, move |store| store.update(&id, |job| change(job))).await
            }
            Backend::Redis(redis) => redis.update(id, &*change).await,
        }
    }

    /// Cancels job `id` unless it has ended. Returns it as it is after. A
    /// job running on another instance ends its run, whose answer is
    /// dropped. Its callback, if it has one, is made like any ended job's.
    pub async fn cancel(self: &Arc<Self>, id: &str) -> Result<Option<Job>, StoreError> {
        let (job, cancelled) = self
            .update(
                id,
                Arc::new(|job: &mut Job| {
                    if job.status.is_final() {
                        return Edit::Leave;
                    }
                    job.status = JobStatus::Cancelled;
                    job.finished_ms = Some(now_ms());
                    job.owner = None;
                    Edit::Write
                }),
            )
            .await?;
        if cancelled {
            if let Some(run) = self.running.lock().expect("jobs poisoned").remove(id) {
                run.abort();
            }
            self.callbacks_waiting();
        }
        Ok(job)
    }

    /// Starts the workers (and, on this machine, the sweeper of ended
    /// jobs; Redis expires them itself). They stop with the gateway.
    /// `runner` runs each job's request; the workers stop when it is gone.
    pub fn start(self: &Arc<Self>, runner: Weak<dyn JobRunner>) {
        for _ in 0..self.config.workers {
            let (jobs, runner) = (self.clone(), runner.clone());
            tokio::spawn(async move {
                let mut worker = Worker::default();
                // `next` gives up now and then, so the workers of a gateway
                // that is gone stop.
                while runner.strong_count() > 0 {
                    let Some(delivery) = jobs.next(&mut worker).await else {
                        continue;
                    };
                    let Some(runner) = runner.upgrade() else {
                        return;
                    };
                    if jobs.run(&runner, &delivery).await {
                        jobs.done(&delivery).await;
                    }
                }
            });
        }
        if let Backend::Local { store, .. } = &self.backend {
            sweep(Arc::downgrade(store), self.config.result_ttl_s);
        }
        callback::deliver(Arc::downgrade(self));
    }

    /// Queues job `id` (again).
    async fn enqueue(self: &Arc<Self>, id: String) -> Result<(), StoreError> {
        match &self.backend {
            Backend::Local { queue, ready, .. } => {
                queue.lock().expect("jobs poisoned").push_back(id);
                ready.notify_one();
                Ok(())
            }
            Backend::Redis(redis) => redis.enqueue(&id).await,
        }
    }

    /// The next job to run, if one comes within a second or two. On Redis
    /// `conn` is the worker's own connection (its reads block), made again
    /// after a failure.
    async fn next(&self, worker: &mut Worker) -> Option<Delivery> {
        match &self.backend {
            Backend::Local { queue, ready, .. } => {
                let wait = async {
                    loop {
                        let notified = ready.notified();
                        if let Some(id) = queue.lock().expect("jobs poisoned").pop_front() {
                            return Delivery { id, entry: None };
                        }
                        notified.await;
                    }
                };
                // Cancel-safe: a job is taken only when returned.
                tokio::time::timeout(Duration::from_secs(1), wait)
                    .await
                    .ok()
            }
            Backend::Redis(redis) => {
                let Worker { conn, cursor } = worker;
                let read = match conn.as_mut() {
                    Some(c) => redis.next(c, cursor).await,
                    None => match redis.connect().await {
                        Ok(c) => redis.next(conn.insert(c), cursor).await,
                        Err(e) => Err(e),
                    },
                };
                match read {
                    Ok(entry) => entry.map(|entry| Delivery {
                        id: entry.job.clone(),
                        entry: Some(entry),
                    }),
                    Err(e) => {
                        let error = crate::error_chain::render(&e);
                        tracing::warn!(%error, "cannot read the job queue on Redis; trying again in 1 s");
                        worker.conn = None;
                        tokio::time::sleep(Duration::from_secs(1)).await;
                        None
                    }
                }
            }
        }
    }

    /// A worker is done with `delivery` (on Redis: its entry is acknowledged).
    async fn done(&self, delivery: &Delivery) {
        if let (Backend::Redis(redis), Some(entry)) = (&self.backend, &delivery.entry) {
            if let Err(e) = redis.done(entry).await {
                let error = crate::error_chain::render(&e);
                tracing::warn!(job = %delivery.id, %error, "cannot acknowledge a job on Redis; another instance may run it again");
            }
        }
    }
}

/// Runs `f` on this machine's store off the async threads (a write waits
/// for fsync).
async fn blocking<R: Send + 'static>(
    store: &Arc<JobStore>,
    f: impl FnOnce(&JobStore) -> Result<R, StoreError> + Send + 'static,
) -> Result<R, StoreError> {
    let store = store.clone();
    tokio::task::spawn_blocking(move || f(&store))
        .await
        .expect("a job store call does not panic")
}

/// Forgets this machine's ended jobs past their TTL, every minute, while
/// the store is open.
fn sweep(store: Weak<JobStore>, ttl_s: u64) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_secs(60));
        loop {
            every.tick().await;
            let Some(store) = store.upgrade() else {
                return;
            };
            let before = now_ms().saturating_sub(ttl_s * 1000);
            if let Err(e) = blocking(&store, move |s| s.forget_ended_before(before)).await {
                let error = crate::error_chain::render(&e);
                tracing::warn!(%error, "could not forget expired jobs");
            }
        }
    });
}

mod run;
