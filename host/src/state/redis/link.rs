//! The background task that keeps an instance linked to Redis: connects,
//! re-syncs, writes what the request path queued (pipelined), applies the
//! siblings' changes from the pub/sub channel, and beats its heart. Any
//! failure drops the link; the instance decides locally until it is back.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, RedisResult, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

use super::{Shared, Write};
use crate::outcome::OutcomeKind;
use crate::state::Change;

/// How often an instance says it is alive and reads the others' in-flight counts.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// An instance silent for longer than this is gone.
const ALIVE_MS: u64 = 3_000;
/// The pause between attempts to reconnect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Most queued writes sent in one pipeline.
const MAX_BATCH: usize = 512;

static SETTLE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("settle.lua")));
static SPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("spend.lua")));

/// A change on the channel, with who made it.
#[derive(Debug, Serialize, Deserialize)]
struct Envelope {
    from: String,
    #[serde(flatten)]
    change: Change,
}

/// A cooldown as kept in Redis (its time left is the key's TTL).
#[derive(Debug, Serialize, Deserialize)]
struct StoredCooldown {
    cause: OutcomeKind,
}

/// Keeps the link up until the backend is dropped.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: redis::Client,
    mut pending: UnboundedReceiver<Write>,
) {
    loop {
        match session(&shared, &client, &mut pending).await {
            Ok(()) => return,
            Err(e) => shared.went_down(&e.to_string()),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
        // What was queued while down is in the local state already; the
        // re-sync pushes what must survive (cooldowns, circuits, spends,
        // in-flight counts).
        while pending.try_recv().is_ok() {}
    }
}

/// One connected spell. Ok: the backend is gone; Err: the link broke.
async fn session(
    shared: &Arc<Shared>,
    client: &redis::Client,
    pending: &mut UnboundedReceiver<Write>,
) -> RedisResult<()> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(shared.timeout.max(Duration::from_millis(200)))
        .set_response_timeout(shared.timeout.max(Duration::from_millis(200)));
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pubsub = client.get_async_pubsub().await?;
    pubsub.subscribe(shared.keys.changes()).await?;
    let mut messages = pubsub.into_on_message();
    shared.reserve.load_async(&mut conn).await?;
    SETTLE.load_async(&mut conn).await?;
    SPEND.load_async(&mut conn).await?;
    resync(shared, &mut conn).await?;
    shared.conn.store(Some(Arc::new(conn.clone())));
    if shared.degraded.swap(false, Ordering::Relaxed) {
        tracing::info!(instance = %shared.instance, "shared state on Redis: connected and in sync");
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    loop {
        tokio::select! {
            message = messages.next() => match message {
                Some(message) => receive(shared, &message),
                None => return Err(closed("the pub/sub connection closed")),
            },
            write = pending.recv() => match write {
                Some(first) => flush(shared, &mut conn, first, pending).await?,
                None => return Ok(()),
            },
            _ = heartbeat.tick() => beat(shared, &mut conn).await?,
        }
        // The request path saw Redis fail: start over, with a re-sync.
        if shared.conn.load().is_none() {
            return Err(closed("a reservation failed"));
        }
    }
}

fn closed(why: &'static str) -> redis::RedisError {
    redis::RedisError::from((redis::ErrorKind::IoError, why))
}

fn receive(shared: &Shared, message: &redis::Msg) {
    let Ok(payload) = message.get_payload::<Vec<u8>>() else {
        return;
    };
    let envelope: Envelope = match serde_json::from_slice(&payload) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(error = %e, "ignored a change on the channel that is not one of ours");
            return;
        }
    };
    if envelope.from == shared.instance {
        return;
    }
    shared.changes_received.fetch_add(1, Ordering::Relaxed);
    if let Some(sink) = shared.sink() {
        sink.apply(&envelope.change);
    }
}

/// Writes `first` and whatever else is queued, in one pipeline.
async fn flush(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    first: Write,
    pending: &mut UnboundedReceiver<Write>,
) -> RedisResult<()> {
    let mut pipe = redis::pipe();
    add(shared, &mut pipe, first);
    for _ in 1..MAX_BATCH {
        match pending.try_recv() {
            Ok(write) => add(shared, &mut pipe, write),
            Err(_) => break,
        }
    }
    pipe.query_async::<()>(conn).await
}

fn add(shared: &Shared, pipe: &mut redis::Pipeline, write: Write) {
    let keys = &shared.keys;
    match write {
        Write::Settle {
            quota,
            id,
            rpm,
            tpm,
        } => {
            let sums = keys.sums(&quota);
            for (field, amounts) in [("rpm", rpm), ("tpm", tpm)] {
                let Some((reserved, used)) = amounts else {
                    continue;
                };
                if reserved == used {
                    continue;
                }
                pipe.cmd("EVALSHA")
                    .arg(SETTLE.get_hash())
                    .arg(2)
                    .arg(keys.spends(&quota, field))
                    .arg(&sums)
                    .arg(id)
                    .arg(reserved)
                    .arg(used)
                    .arg(field)
                    .ignore();
            }
        }
        Write::Change(change) => {
            store(keys, pipe, &change);
            let envelope = Envelope {
                from: shared.instance.clone(),
                change,
            };
            let payload = serde_json::to_vec(&envelope).expect("a change serializes");
            pipe.cmd("PUBLISH")
                .arg(keys.changes())
                .arg(payload)
                .ignore();
        }
        Write::Running { user, running } => {
            let key = keys.running(&shared.instance);
            if running == 0 {
                pipe.cmd("HDEL").arg(key).arg(user).ignore();
            } else {
                pipe.cmd("HSET").arg(key).arg(user).arg(running).ignore();
            }
        }
    }
}

/// Keeps the latest state a change leaves, for instances that (re)connect.
fn store(keys: &super::Keys, pipe: &mut redis::Pipeline, change: &Change) {
    match change {
        Change::Cooldown {
            deployment,
            remaining_ms,
            cause,
            ..
        } => {
            let key = keys.cooldown(deployment);
            if *remaining_ms == 0 {
                pipe.cmd("DEL").arg(key).ignore();
            } else {
                let value = serde_json::to_vec(&StoredCooldown { cause: *cause })
                    .expect("a cooldown serializes");
                pipe.cmd("SET")
                    .arg(key)
                    .arg(value)
                    .arg("PX")
                    .arg(*remaining_ms)
                    .ignore();
            }
        }
        Change::CircuitOpened {
            deployment,
            remaining_ms,
        } => {
            pipe.cmd("SET")
                .arg(keys.circuit(deployment))
                .arg("open")
                .arg("PX")
                .arg((*remaining_ms).max(1))
                .ignore();
        }
        Change::CircuitClosed { deployment } => {
            pipe.cmd("DEL").arg(keys.circuit(deployment)).ignore();
        }
        Change::KvSet {
            slot,
            key,
            value,
            ttl_ms,
        } => {
            let cmd = pipe
                .cmd("SET")
                .arg(keys.kv(slot, key))
                .arg(value.as_slice());
            if let Some(ttl) = ttl_ms {
                cmd.arg("PX").arg((*ttl).max(1));
            }
            cmd.ignore();
        }
        Change::KvDeleted { slot, key } => {
            pipe.cmd("DEL").arg(keys.kv(slot, key)).ignore();
        }
    }
}

fn wall_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Says this instance is alive, reads the others' in-flight counts, and
/// reads what is in use of each quota (so an idle instance's policies see
/// the quota others spend, and see it come back).
async fn beat(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let keys = &shared.keys;
    if !shared.limited.is_empty() {
        let mut peek = redis::pipe();
        let limit = |l: Option<u64>| l.map_or(-1, |l| l as i64);
        for quota in &shared.limited {
            peek.cmd("EVALSHA")
                .arg(shared.reserve.get_hash())
                .arg(3)
                .arg(keys.spends(quota, "rpm"))
                .arg(keys.spends(quota, "tpm"))
                .arg(keys.sums(quota))
                .arg(limit(quota.rpm))
                .arg(limit(quota.tpm))
                .arg(0)
                .arg(shared.window_ms)
                .arg("peek");
        }
        let seen: Vec<Vec<i64>> = peek.query_async(conn).await?;
        for (quota, reply) in shared.limited.iter().zip(seen) {
            if reply.len() == 5 {
                shared.saw(quota, reply[3], reply[4]);
            }
        }
    }
    let now = wall_ms();
    let (instances,): (Vec<String>,) = redis::pipe()
        .cmd("ZADD")
        .arg(keys.instances())
        .arg(now)
        .arg(&shared.instance)
        .ignore()
        .cmd("ZREMRANGEBYSCORE")
        .arg(keys.instances())
        .arg("-inf")
        .arg(now.saturating_sub(ALIVE_MS))
        .ignore()
        .cmd("PEXPIRE")
        .arg(keys.running(&shared.instance))
        .arg(ALIVE_MS)
        .ignore()
        .cmd("ZRANGE")
        .arg(keys.instances())
        .arg(0)
        .arg(-1)
        .query_async(conn)
        .await?;
    let others: Vec<&String> = instances
        .iter()
        .filter(|i| **i != shared.instance)
        .collect();
    let mut elsewhere: HashMap<String, u32> = HashMap::new();
    if !others.is_empty() {
        let mut pipe = redis::pipe();
        for other in &others {
            pipe.cmd("HGETALL").arg(keys.running(other));
        }
        let counts: Vec<HashMap<String, u32>> = pipe.query_async(conn).await?;
        for (user, n) in counts.into_iter().flatten() {
            *elsewhere.entry(user).or_default() += n;
        }
    }
    let changed = {
        let mut current = shared.running_elsewhere.write().expect("running poisoned");
        let changed = *current != elsewhere;
        if changed {
            *current = elsewhere;
        }
        changed
    };
    if changed {
        if let Some(sink) = shared.sink() {
            sink.running_elsewhere_changed();
        }
    }
    Ok(())
}

/// Brings Redis and this instance back in line after a (re)connect: pushes
/// the quota spent locally during the outage, this instance's in-flight
/// counts, and its cooldowns and open circuits where they last longer than
/// Redis's; takes Redis's where they last longer than its own.
async fn resync(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let keys = &shared.keys;
    let spends = std::mem::take(&mut *shared.outage_spends.lock().expect("spends poisoned"));
    let mut pipe = redis::pipe();
    for (deployment, at, tokens) in &spends {
        let Some(quota) = shared.quotas.get(deployment) else {
            continue;
        };
        let (field, amount) = match tokens {
            None => ("rpm", 1),
            Some(t) => ("tpm", *t),
        };
        pipe.cmd("EVALSHA")
            .arg(SPEND.get_hash())
            .arg(2)
            .arg(keys.spends(quota, field))
            .arg(keys.sums(quota))
            .arg(at.elapsed().as_millis() as u64)
            .arg(amount)
            .arg(field)
            .arg(shared.window_ms)
            .ignore();
    }
    let running_key = keys.running(&shared.instance);
    pipe.cmd("DEL").arg(&running_key).ignore();
    for (user, n) in shared.running_here.lock().expect("running poisoned").iter() {
        pipe.cmd("HSET")
            .arg(&running_key)
            .arg(user)
            .arg(*n)
            .ignore();
    }
    pipe.query_async::<()>(conn).await?;

    let Some(sink) = shared.sink() else {
        shared.resyncs.fetch_add(1, Ordering::Relaxed);
        return Ok(());
    };
    let deployments: Vec<&String> = shared.quotas.keys().collect();
    let mut read = redis::pipe();
    for d in &deployments {
        read.cmd("GET").arg(keys.cooldown(d));
        read.cmd("PTTL").arg(keys.cooldown(d));
        read.cmd("PTTL").arg(keys.circuit(d));
    }
    let answers: Vec<redis::Value> = read.query_async(conn).await?;
    let local = sink.current();
    let local_remaining = |wanted: &dyn Fn(&Change) -> Option<u64>| -> u64 {
        local.iter().filter_map(wanted).max().unwrap_or(0)
    };
    let mut push = redis::pipe();
    let mut pushed = 0;
    for (d, answer) in deployments.iter().zip(answers.chunks(3)) {
        let ttl = |v: &redis::Value| redis::from_redis_value::<i64>(v).unwrap_or(-2).max(0) as u64;
        let stored: Option<Vec<u8>> = redis::from_redis_value(&answer[0]).unwrap_or(None);
        let remote_cooldown = ttl(&answer[1]);
        let remote_circuit = ttl(&answer[2]);
        let mine_cooldown = local_remaining(&|c| match c {
            Change::Cooldown {
                deployment,
                remaining_ms,
                ..
            } if deployment == *d => Some(*remaining_ms),
            _ => None,
        });
        let mine_circuit = local_remaining(&|c| match c {
            Change::CircuitOpened {
                deployment,
                remaining_ms,
            } if deployment == *d => Some(*remaining_ms),
            _ => None,
        });
        if remote_cooldown > mine_cooldown {
            let cause = stored
                .and_then(|s| serde_json::from_slice::<StoredCooldown>(&s).ok())
                .map_or(OutcomeKind::Throttled, |s| s.cause);
            sink.apply(&Change::Cooldown {
                deployment: (*d).clone(),
                remaining_ms: remote_cooldown,
                cause,
                clear_history: false,
            });
        } else if mine_cooldown > remote_cooldown {
            let change = local
                .iter()
                .find(|c| matches!(c, Change::Cooldown { deployment, .. } if deployment == *d));
            if let Some(change) = change {
                add(shared, &mut push, Write::Change(change.clone()));
                pushed += 1;
            }
        }
        if remote_circuit > mine_circuit {
            sink.apply(&Change::CircuitOpened {
                deployment: (*d).clone(),
                remaining_ms: remote_circuit,
            });
        } else if mine_circuit > remote_circuit {
            add(
                shared,
                &mut push,
                Write::Change(Change::CircuitOpened {
                    deployment: (*d).clone(),
                    remaining_ms: mine_circuit,
                }),
            );
            pushed += 1;
        }
    }
    if pushed > 0 {
        push.query_async::<()>(conn).await?;
    }
    shared.resyncs.fetch_add(1, Ordering::Relaxed);
    Ok(())
}
