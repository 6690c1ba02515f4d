//! Where spend is summed: named hashes of integer counters, in this process
//! or in Redis, where every instance adds to the same sums.
//!
//! Adding never waits: on Redis, a writer task takes what the requests
//! add, merges it and sends it as one pipeline of `HINCRBY`s, so a request
//! pays no round trip to be booked; what cannot be sent (Redis away) is
//! kept, merged, and sent when Redis is back. Reading (a budget check, a
//! report) is one round trip.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::state::redis::LazyConnection;

/// One addition: `delta` to `field` of `hash`, which lives `keep_ms`
/// after it was first written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Add {
    pub hash: String,
    pub field: String,
    pub delta: i64,
    pub keep_ms: u64,
}

/// A hash's counters.
pub type Sums = HashMap<String, i64>;

/// Why sums could not be read.
#[derive(Debug, thiserror::Error)]
#[error("the spend counters could not be read from Redis")]
pub struct CountersError(#[source] redis::RedisError);

/// The sums of every hash.
pub enum Counters {
    /// In this process (lost when it stops).
    Memory(Mutex<MemoryCounters>),
    /// In Redis, shared by every instance.
    Redis(RedisCounters),
}

/// Counters in this process: each hash is dropped `keep_ms` after its
/// first write, as Redis expires its own.
pub struct MemoryCounters {
    hashes: HashMap<String, Kept>,
    /// When hashes past their time are next swept out.
    next_sweep: Instant,
}

struct Kept {
    sums: Sums,
    until: Instant,
}

/// How often ended hashes are swept out of memory.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl MemoryCounters {
    fn add(&mut self, adds: Vec<Add>) {
        let now = Instant::now();
        if now >= self.next_sweep {
            self.hashes.retain(|_, kept| kept.until > now);
            self.next_sweep = now + SWEEP_EVERY;
        }
        for add in adds {
            let fresh = || Kept {
                sums: Sums::new(),
                until: now + Duration::from_millis(add.keep_ms),
            };
            let kept = self.hashes.entry(add.hash).or_insert_with(fresh);
            // Past its time but not swept yet: it starts afresh, as an
            // expired Redis hash does.
            if kept.until <= now {
                *kept = fresh();
            }
            *kept.sums.entry(add.field).or_default() += add.delta;
        }
    }

    fn read(&self, hash: &str) -> Sums {
        let now = Instant::now();
        self.hashes
            .get(hash)
            .filter(|kept| kept.until > now)
            .map(|kept| kept.sums.clone())
            .unwrap_or_default()
    }
}

/// Counters in Redis.
pub struct RedisCounters {
    conn: Arc<LazyConnection>,
    adds: mpsc::UnboundedSender<Vec<Add>>,
    /// Read calls that failed.
    errors: AtomicU64,
}

impl Counters {
    /// Counters in this process.
    pub fn memory() -> Self {
        Self::Memory(Mutex::new(MemoryCounters {
            hashes: HashMap::new(),
            next_sweep: Instant::now() + SWEEP_EVERY,
        }))
    }

    /// Counters in the Redis server `conn` talks to; starts their writer
    /// (needs a tokio runtime).
    pub fn redis(conn: Arc<LazyConnection>) -> Self {
        let (adds, pending) = mpsc::unbounded_channel();
        tokio::spawn(write(conn.clone(), pending));
        Self::Redis(RedisCounters {
            conn,
            adds,
            errors: AtomicU64::new(0),
        })
    }

    /// Adds `adds`, now (memory) or in the background (Redis).
    pub fn add(&self, adds: Vec<Add>) {
        match self {
            Self::Memory(sums) => sums.lock().expect("spend counters poisoned").add(adds),
            Self::Redis(redis) => {
                // The writer ends only with the runtime.
                let _ = redis.adds.send(adds);
            }
        }
    }

    /// The sums of each of `hashes`, in order (an unknown hash has none).
    pub async fn read(&self, hashes: &[String]) -> Result<Vec<Sums>, CountersError> {
        match self {
            Self::Memory(sums) => {
                let sums = sums.lock().expect("spend counters poisoned");
                Ok(hashes.iter().map(|h| sums.read(h)).collect())
            }
            Self::Redis(redis) => {
                let read = redis
                    .conn
                    .run(async |conn| {
                        let mut pipe = redis::pipe();
                        for hash in hashes {
                            pipe.cmd("HGETALL").arg(hash);
                        }
                        pipe.query_async::<Vec<Sums>>(conn).await
                    })
                    .await;
                read.map_err(|e| {
                    redis.errors.fetch_add(1, Ordering::Relaxed);
                    CountersError(e)
                })
            }
        }
    }
}

/// Sends what is added to Redis, merged, until the gateway stops.
async fn write(conn: Arc<LazyConnection>, mut pending: mpsc::UnboundedReceiver<Vec<Add>>) {
    let mut unsent: HashMap<(String, String), (i64, u64)> = HashMap::new();
    loop {
        if unsent.is_empty() {
            match pending.recv().await {
                Some(adds) => merge(&mut unsent, adds),
                None => return,
            }
        }
        while let Ok(adds) = pending.try_recv() {
            merge(&mut unsent, adds);
        }
        let mut pipe = redis::pipe();
        for ((hash, field), (delta, keep_ms)) in &unsent {
            pipe.cmd("HINCRBY")
                .arg(hash)
                .arg(field)
                .arg(*delta)
                .ignore();
            // A hash keeps the expiry its first write gave it.
            pipe.cmd("PEXPIRE")
                .arg(hash)
                .arg(*keep_ms)
                .arg("NX")
                .ignore();
        }
        match conn.run(async |c| pipe.query_async::<()>(c).await).await {
            Ok(()) => unsent.clear(),
            Err(e) => {
                tracing::warn!(error = %e, "spend could not be booked in Redis; kept to book again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

fn merge(unsent: &mut HashMap<(String, String), (i64, u64)>, adds: Vec<Add>) {
    for add in adds {
        let entry = unsent
            .entry((add.hash, add.field))
            .or_insert((0, add.keep_ms));
        entry.0 += add.delta;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn memory_counters_sum_what_is_added() {
        let counters = Counters::memory();
        let add = |field: &str, delta| Add {
            hash: "h".into(),
            field: field.into(),
            delta,
            keep_ms: 60_000,
        };
        counters.add(vec![add("t", 5), add("u", 7)]);
        counters.add(vec![add("t", 3)]);
        let sums = counters.read(&["h".into(), "none".into()]).await.unwrap();
        assert_eq!(sums[0].get("t"), Some(&8));
        assert_eq!(sums[0].get("u"), Some(&7));
        assert!(sums[1].is_empty());
    }

    #[tokio::test]
    async fn memory_counters_drop_a_hash_past_its_time() {
        let counters = Counters::memory();
        let add = |hash: &str, keep_ms| Add {
            hash: hash.into(),
            field: "t".into(),
            delta: 1,
            keep_ms,
        };
        counters.add(vec![add("brief", 1), add("kept", 60_000)]);
        tokio::time::sleep(Duration::from_millis(20)).await;
        let sums = counters
            .read(&["brief".into(), "kept".into()])
            .await
            .unwrap();
        assert!(sums[0].is_empty(), "{sums:?}");
        assert_eq!(sums[1].get("t"), Some(&1));
    }
}
