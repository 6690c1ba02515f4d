//! Jobs shared by every instance on one Redis (`[state] backend = "redis"`),
//! under the fleet's key prefix:
//!
//! - `jobrec:{id}`: a hash of the job's `record` (JSON), `request` and
//!   `answer` (bytes). Every record expires: an ended one `result_ttl_s`
//!   after it ended, an unfinished one `max_age_s + result_ttl_s` after its
//!   last change (by then a worker has failed it as too old).
//! - `jobs:by_time` and `jobs:by_user:{user}`: sorted sets of ids by
//!   submission time, for pages of everyone's or one user's jobs.
//! - `jobs:forget`: ids by when their record expires; `jobs:sizes` (id to
//!   bytes and user) and `jobs:usage`, `jobs:totals` (what each user and the
//!   fleet keep). Submitting first forgets what is due, so the counts the
//!   caps read are current.
//! - `jobs:queue`: the queue, a stream read by one consumer group, so any
//!   instance runs any job. An entry is acknowledged when its job has
//!   ended; one whose consumer stopped answering (the instance died) is
//!   claimed by another after `jobs.claim_after_ms`, while a live runner
//!   keeps its claim fresh.
//! - `jobs:callbacks`: the callback outbox, ids by when a try is due.

use std::sync::LazyLock;
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{AsyncCommands, Script};

use super::record::Job;
use super::store::{Page, PageQuery, StoreError};
use super::{now_ms, Edit};
use crate::config::{JobLimit, JobsConfig};

const GROUP: &str = "workers";

static SUBMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(concat!(
        include_str!("lua/trim.lua"),
        include_str!("lua/submit.lua")
    ))
});
static UPDATE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("lua/update.lua")));
static TAKE_CALLBACKS: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("lua/take_callbacks.lua")));

/// How long a connection may take to open, and a call to answer (the
/// blocking read asks for 2 s; it gets that on top).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// How many times a change of one job is tried again when others changed
/// it meanwhile.
const CAS_TRIES: u32 = 5;

/// Where a worker is in the stream of pending entries it may claim.
#[derive(Debug)]
pub struct Cursor(String);

impl Default for Cursor {
    fn default() -> Self {
        Self("0-0".into())
    }
}

/// A job taken from the stream.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The stream entry's id.
    pub id: String,
    /// The job it names.
    pub job: String,
}

/// The Redis side of the jobs of one fleet (one key prefix).
pub struct RedisJobs {
    client: redis::Client,
    /// For everything but the blocking reads, which each worker makes on a
    /// connection of its own.
    conn: tokio::sync::Mutex<Option<MultiplexedConnection>>,
    prefix: String,
    /// This instance's name in the consumer group (random; never the job
    /// token, which Redis would show to whoever reads it).
    consumer: String,
    claim_after_ms: u64,
    config: JobsConfig,
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(Box::new(e))
}

impl RedisJobs {
    pub fn new(
        url: &str,
        prefix: &str,
        consumer: String,
        config: &JobsConfig,
    ) -> Result<Self, StoreError> {
        let client = redis::Client::open(url).map_err(|e| StoreError::Open {
            path: url.into(),
            source: Box::new(e),
        })?;
        Ok(Self {
            client,
            conn: tokio::sync::Mutex::new(None),
            prefix: prefix.to_owned(),
            consumer,
            claim_after_ms: config.claim_after_ms,
            config: config.clone(),
        })
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:jobrec:{id}", self.prefix)
    }

    /// How long `job`'s record lives from now, in ms.
    fn ttl_ms(&self, job: &Job) -> u64 {
        let result_ttl_ms = self.config.result_ttl_s.saturating_mul(1000).max(1);
        match job.status.is_final() {
            true => result_ttl_ms,
            false => self.config.max_age_s.saturating_mul(1000) + result_ttl_ms,
        }
    }

    fn stream(&self) -> String {
        format!("{}:jobs:queue", self.prefix)
    }

    /// The shared connection, made (again) when there is none.
    async fn conn(&self) -> Result<MultiplexedConnection, StoreError> {
        let mut conn = self.conn.lock().await;
        if let Some(c) = conn.as_ref() {
            return Ok(c.clone());
        }
        let made = self.connect().await?;
        *conn = Some(made.clone());
        Ok(made)
    }

    /// A new connection, with the consumer group made if it is not yet.
    pub async fn connect(&self) -> Result<MultiplexedConnection, StoreError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CONNECT_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT);
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(redis_error)?;
        let made: Result<(), _> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream())
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match made {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(redis_error(e)),
            _ => {}
        }
        Ok(conn)
    }

    /// Runs `f` on the shared connection; a failed call drops it, so the
    /// next makes a new one.
    async fn with_conn<R>(
        &self,
        f: impl AsyncFnOnce(&mut MultiplexedConnection) -> redis::RedisResult<R>,
    ) -> Result<R, StoreError> {
        let mut conn = self.conn().await?;
        let result = f(&mut conn).await;
        if result.is_err() {
            *self.conn.lock().await = None;
        }
        result.map_err(redis_error)
    }

    /// Reads job `id`, lets `change` alter it, and writes it only if nobody
    /// wrote it meanwhile (else reads again and retries). Returns the job as
    /// stored after, and whether it was changed.
    pub async fn update(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Job) -> Edit + Send + Sync),
    ) -> Result<(Option<Job>, bool), StoreError> {
        let key = self.record_key(id);
        for _ in 0..CAS_TRIES {
            let read: Option<String> = self
                .with_conn(async |conn| conn.hget(&key, "record").await)
                .await?;
            let Some(read) = read else {
                return Ok((None, false));
            };
            let before: Job =
                serde_json::from_str(&read).map_err(|_| StoreError::Unreadable(id.to_owned()))?;
            let mut job = before.clone();
            let answer = match change(&mut job) {
                Edit::Leave => return Ok((Some(before), false)),
                Edit::Write => None,
                Edit::WriteAnswer(answer) => Some(answer),
            };
            let json = serde_json::to_string(&job).expect("a job serializes");
            let ttl = self.ttl_ms(&job);
            let ends_with_callback =
                job.status.is_final() && !before.status.is_final() && job.callback_url.is_some();
            let callback_due = ends_with_callback.then(now_ms);
            let written: i64 = self
                .with_conn(async |conn| {
                    UPDATE
                        .arg(&self.prefix)
                        .arg(id)
                        .arg(&read)
                        .arg(&json)
                        .arg(ttl)
                        .arg(now_ms() + ttl)
                        .arg(answer.as_deref().unwrap_or_default())
                        .arg(if answer.is_some() { "1" } else { "0" })
                        .arg(job.bytes())
                        .arg(job.user_key())
                        .arg(callback_due.map_or(String::new(), |due| due.to_string()))
                        .invoke_async(conn)
                        .await
                })
                .await?;
            if written == 1 {
                return Ok((Some(job), true));
            }
        }
        Err(StoreError::Contended(id.to_owned()))
    }

    /// Writes a new `job` with its `request` and queues it, together,
    /// unless it would pass a cap.
    pub async fn submit(&self, job: &Job, request: &[u8]) -> Result<(), StoreError> {
        let json = serde_json::to_string(job).expect("a job serializes");
        let ttl = self.ttl_ms(job);
        let now = now_ms();
        // The group is made before the first entry, so none is missed.
        self.conn().await?;
        let c = &self.config;
        let refused: i64 = self
            .with_conn(async |conn| {
                SUBMIT
                    .arg(&self.prefix)
                    .arg(&job.id)
                    .arg(&json)
                    .arg(request)
                    .arg(job.user_key())
                    .arg(job.bytes())
                    .arg(job.created_ms)
                    .arg(now)
                    .arg(ttl)
                    .arg(now + ttl)
                    .arg(c.max_jobs_per_user)
                    .arg(c.max_bytes_per_user)
                    .arg(c.max_jobs)
                    .arg(c.max_bytes)
                    .invoke_async(conn)
                    .await
            })
            .await?;
        match refused {
            0 => Ok(()),
            1 => Err(StoreError::Full(JobLimit::UserJobs(c.max_jobs_per_user))),
            2 => Err(StoreError::Full(JobLimit::UserBytes(c.max_bytes_per_user))),
            3 => Err(StoreError::Full(JobLimit::Jobs(c.max_jobs))),
            _ => Err(StoreError::Full(JobLimit::Bytes(c.max_bytes))),
        }
    }

    /// Queues job `id` again (a run the gateway answered "try later").
    pub async fn enqueue(&self, id: &str) -> Result<(), StoreError> {
        let stream = self.stream();
        self.with_conn(async |conn| {
            conn.xadd::<_, _, _, _, ()>(&stream, "*", &[("job", id)])
                .await
        })
        .await
    }

    pub async fn get(&self, id: &str) -> Result<Option<Job>, StoreError> {
        let key = self.record_key(id);
        let json: Option<String> = self
            .with_conn(async |conn| conn.hget(&key, "record").await)
            .await?;
        json.map(|j| serde_json::from_str(&j).map_err(|_| StoreError::Unreadable(id.to_owned())))
            .transpose()
    }

    /// Job `id`'s `request` or `answer`.
    pub async fn payload(&self, id: &str, field: &str) -> Result<Option<Bytes>, StoreError> {
        let key = self.record_key(id);
        let bytes: Option<Vec<u8>> = self
            .with_conn(async |conn| conn.hget(&key, field).await)
            .await?;
        Ok(bytes.map(Bytes::from))
    }

    /// A page of jobs, newest first: records only.
    pub async fn page(&self, query: &PageQuery) -> Result<Page, StoreError> {
        let index = match &query.user {
            Some(user) => format!(
                "{}:jobs:by_user:{}",
                self.prefix,
                user.as_deref().unwrap_or("")
            ),
            None => format!("{}:jobs:by_time", self.prefix),
        };
        let first = match &query.after {
            Some(after) => {
                let rank: Option<isize> = self
                    .with_conn(async |conn| conn.zrevrank(&index, after).await)
                    .await?;
                match rank {
                    Some(rank) => rank + 1,
                    None => return Ok(Page::default()),
                }
            }
            None => 0,
        };
        let last = first + query.limit as isize;
        let ids: Vec<String> = self
            .with_conn(async |conn| conn.zrevrange(&index, first, last).await)
            .await?;
        let has_more = ids.len() > query.limit;
        let ids = &ids[..ids.len().min(query.limit)];
        if ids.is_empty() {
            return Ok(Page::default());
        }
        let mut pipe = redis::pipe();
        for id in ids {
            pipe.hget(self.record_key(id), "record");
        }
        let records: Vec<Option<String>> = self
            .with_conn(async |conn| pipe.query_async(conn).await)
            .await?;
        // A record that has expired is left out (the next submission
        // forgets it); another version's record is shown as unreadable.
        let jobs = ids
            .iter()
            .zip(records)
            .filter_map(|(id, record)| {
                record.map(|r| {
                    serde_json::from_str(&r).map_err(|_| StoreError::Unreadable(id.clone()))
                })
            })
            .collect::<Result<Vec<Job>, _>>()?;
        Ok(Page { jobs, has_more })
    }

    /// The callbacks due by `now_ms` (at most `limit`), each due again at
    /// `retry_at_ms`.
    pub async fn take_due_callbacks(
        &self,
        now_ms: u64,
        retry_at_ms: u64,
        limit: usize,
    ) -> Result<Vec<String>, StoreError> {
        self.with_conn(async |conn| {
            TAKE_CALLBACKS
                .arg(&self.prefix)
                .arg(now_ms)
                .arg(retry_at_ms)
                .arg(limit)
                .invoke_async(conn)
                .await
        })
        .await
    }

    /// Job `id`'s callback is due at `at_ms`.
    pub async fn callback_due(&self, id: &str, at_ms: u64) -> Result<(), StoreError> {
        let key = format!("{}:jobs:callbacks", self.prefix);
        self.with_conn(async |conn| conn.zadd::<_, _, _, ()>(&key, id, at_ms).await)
            .await
    }

    /// Job `id`'s callback is done with.
    pub async fn callback_done(&self, id: &str) -> Result<(), StoreError> {
        let key = format!("{}:jobs:callbacks", self.prefix);
        self.with_conn(async |conn| conn.zrem::<_, _, ()>(&key, id).await)
            .await
    }

    /// The next entry for this instance: one a dead consumer left (idle
    /// past the claim timeout), else a new one, waiting up to 2 s.
    pub async fn next(
        &self,
        conn: &mut MultiplexedConnection,
        cursor: &mut Cursor,
    ) -> Result<Option<Entry>, StoreError> {
        // The cursor walks the pending entries across calls (each call
        // looks at a few), back to the start when it reaches the end.
        let claimed: StreamAutoClaimReply = redis::cmd("XAUTOCLAIM")
            .arg(self.stream())
            .arg(GROUP)
            .arg(&self.consumer)
            .arg(self.claim_after_ms)
            .arg(&cursor.0)
            .arg("COUNT")
            .arg(1)
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        cursor.0 = claimed.next_stream_id.clone();
        if let Some(entry) = claimed.claimed.first().and_then(entry_of) {
            tracing::warn!(job = %entry.job, "claimed a job whose instance stopped answering; it runs again");
            return Ok(Some(entry));
        }
        let read: Option<StreamReadReply> = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(GROUP)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(2_000)
            .arg("STREAMS")
            .arg(self.stream())
            .arg(">")
            .query_async(conn)
            .await
            .map_err(redis_error)?;
        Ok(read.and_then(|r| {
            r.keys
                .into_iter()
                .flat_map(|k| k.ids)
                .find_map(|id| entry_of(&id))
        }))
    }

    /// Tells the group this instance still runs `entry` (resets its idle time).
    pub async fn keep(&self, entry: &Entry) -> Result<(), StoreError> {
        let stream = self.stream();
        self.with_conn(async |conn| {
            redis::cmd("XCLAIM")
                .arg(&stream)
                .arg(GROUP)
                .arg(&self.consumer)
                .arg(0)
                .arg(&entry.id)
                .arg("JUSTID")
                .query_async::<()>(conn)
                .await
        })
        .await
    }

    /// `entry` is done with.
    pub async fn done(&self, entry: &Entry) -> Result<(), StoreError> {
        let stream = self.stream();
        self.with_conn(async |conn| {
            redis::pipe()
                .cmd("XACK")
                .arg(&stream)
                .arg(GROUP)
                .arg(&entry.id)
                .cmd("XDEL")
                .arg(&stream)
                .arg(&entry.id)
                .query_async::<()>(conn)
                .await
        })
        .await
    }

    /// How often a runner refreshes its claim.
    pub fn keep_every(&self) -> std::time::Duration {
        std::time::Duration::from_millis((self.claim_after_ms / 3).max(100))
    }
}

fn entry_of(id: &redis::streams::StreamId) -> Option<Entry> {
    let job: String = id.get("job")?;
    Some(Entry {
        id: id.id.clone(),
        job,
    })
}
