//! Jobs shared by every instance on one Redis (`[state] backend = "redis"`):
//! records as JSON strings, an index by submission time, and the queue as a
//! stream read by one consumer group, so any instance runs any job. An
//! entry is acknowledged when its job has ended; one whose consumer stopped
//! answering (the instance died) is claimed by another after
//! `jobs.claim_after_ms`, while a live runner keeps its claim fresh.

use std::sync::LazyLock;
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::streams::{StreamAutoClaimReply, StreamReadReply};
use redis::{AsyncCommands, Script};

use super::record::Job;
use super::store::StoreError;

const GROUP: &str = "workers";

static CAS: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("job_cas.lua")));

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
    result_ttl_ms: u64,
}

fn redis_error(e: redis::RedisError) -> StoreError {
    StoreError::Redis(Box::new(e))
}

impl RedisJobs {
    pub fn new(
        url: &str,
        prefix: &str,
        consumer: String,
        claim_after_ms: u64,
        result_ttl_s: u64,
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
            claim_after_ms,
            result_ttl_ms: result_ttl_s * 1000,
        })
    }

    fn record_key(&self, id: &str) -> String {
        format!("{}:job:{id}", self.prefix)
    }

    fn index(&self) -> String {
        format!("{}:jobs:index", self.prefix)
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
    /// wrote it meanwhile (else reads again and retries); `change` returns
    /// false to leave it as it is. Returns the job as stored after, and
    /// whether it was changed.
    pub async fn update(
        &self,
        id: &str,
        change: &(dyn Fn(&mut Job) -> bool + Send + Sync),
    ) -> Result<(Option<Job>, bool), StoreError> {
        let key = self.record_key(id);
        for _ in 0..CAS_TRIES {
            let read: Option<String> = self.with_conn(async |conn| conn.get(&key).await).await?;
            let Some(read) = read else {
                return Ok((None, false));
            };
            let mut job: Job =
                serde_json::from_str(&read).map_err(|_| StoreError::Unreadable(id.to_owned()))?;
            if !change(&mut job) {
                return Ok((Some(job), false));
            }
            let json = serde_json::to_string(&job).expect("a job serializes");
            let ttl = if job.status.is_final() {
                self.result_ttl_ms.max(1)
            } else {
                0
            };
            let written: i64 = self
                .with_conn(async |conn| {
                    CAS.key(&key)
                        .arg(&read)
                        .arg(&json)
                        .arg(ttl)
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

    /// Writes a new `job` and queues it, together; forgets index entries of
    /// jobs that must have expired.
    pub async fn submit(&self, job: &Job) -> Result<(), StoreError> {
        let json = serde_json::to_string(job).expect("a job serializes");
        let (key, index, stream) = (self.record_key(&job.id), self.index(), self.stream());
        let expired_before = job
            .created_ms
            .saturating_sub(self.result_ttl_ms + 86_400_000);
        // The group is made before the first entry, so none is missed.
        self.conn().await?;
        self.with_conn(async |conn| {
            redis::pipe()
                .atomic()
                .cmd("SET")
                .arg(&key)
                .arg(&json)
                .cmd("ZADD")
                .arg(&index)
                .arg(job.created_ms)
                .arg(&job.id)
                .cmd("XADD")
                .arg(&stream)
                .arg("*")
                .arg("job")
                .arg(&job.id)
                .cmd("ZREMRANGEBYSCORE")
                .arg(&index)
                .arg("-inf")
                .arg(format!("({expired_before}"))
                .query_async::<()>(conn)
                .await
        })
        .await
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
        let json: Option<String> = self.with_conn(async |conn| conn.get(&key).await).await?;
        json.map(|j| serde_json::from_str(&j).map_err(|_| StoreError::Unreadable(id.to_owned())))
            .transpose()
    }

    /// The `limit` most recent jobs, oldest first; forgets index entries
    /// whose record has expired.
    pub async fn recent(&self, limit: usize) -> Result<Vec<Job>, StoreError> {
        let index = self.index();
        let ids: Vec<String> = self
            .with_conn(async |conn| conn.zrevrange(&index, 0, limit as isize - 1).await)
            .await?;
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = ids.iter().map(|id| self.record_key(id)).collect();
        let records: Vec<Option<String>> =
            self.with_conn(async |conn| conn.mget(&keys).await).await?;
        let mut jobs = Vec::new();
        let mut gone = Vec::new();
        for (id, record) in ids.iter().zip(records) {
            match record.map(|r| serde_json::from_str::<Job>(&r)) {
                Some(Ok(job)) => jobs.push(job),
                // Another version's record: not shown, not forgotten.
                Some(Err(_)) => {}
                None => gone.push(id.clone()),
            }
        }
        if !gone.is_empty() {
            self.with_conn(async |conn| conn.zrem::<_, _, ()>(&index, &gone).await)
                .await?;
        }
        jobs.reverse();
        Ok(jobs)
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
