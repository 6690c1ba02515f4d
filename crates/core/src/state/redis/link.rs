//! The background task that keeps an instance linked to Redis: connects,
//! re-syncs, writes what the request path queued (pipelined), applies the
//! siblings' changes from the pub/sub channel, and beats its heart. Any
//! failure drops the link; the instance decides locally until it is back.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures::StreamExt;
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, ErrorKind, RedisError, RedisResult, Script};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::UnboundedReceiver;

mod resync;

use super::{Shared, Write};
use crate::outcome::OutcomeKind;
use crate::state::Change;
use resync::{book_outage_spends, pull, resync};

/// How often an instance says it is alive and reads the others' in-flight counts.
pub const HEARTBEAT: Duration = Duration::from_millis(100);
/// An instance silent for longer than this is gone.
const ALIVE_MS: u64 = 3_000;
/// The pause between attempts to reconnect.
const RECONNECT_PAUSE: Duration = Duration::from_millis(250);
/// Most queued writes sent in one pipeline.
const MAX_BATCH: usize = 512;
/// Most writes kept while the link is down, to send once it is back (the
/// oldest go first).
const MAX_BACKLOG: usize = 10_000;

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

/// Whether `e` means the link is broken (rather than Redis answering with
/// an error).
pub(super) fn is_link_error(e: &RedisError) -> bool {
    e.is_io_error() || e.is_connection_dropped() || e.is_connection_refusal() || e.is_timeout()
}

/// Keeps the link up until the backend is dropped.
pub(super) async fn run(
    shared: Arc<Shared>,
    client: redis::Client,
    mut pending: UnboundedReceiver<Write>,
) {
    let mut backlog = VecDeque::new();
    loop {
        match session(&shared, &client, &mut pending, &mut backlog).await {
            Ok(()) => return,
            Err(e) => shared.went_down(&shared.conn.load_full(), &e.to_string()),
        }
        tokio::time::sleep(RECONNECT_PAUSE).await;
        while let Ok(write) = pending.try_recv() {
            keep(&mut backlog, write);
        }
    }
}

/// Keeps `write` to send after the next re-sync. Cooldowns and open
/// circuits are left out: the re-sync merges them (the longer wins).
fn keep(backlog: &mut VecDeque<Write>, write: Write) {
    if matches!(
        write,
        Write::Change(Change::Cooldown { .. } | Change::CircuitOpened { .. })
    ) {
        return;
    }
    if backlog.len() == MAX_BACKLOG {
        backlog.pop_front();
    }
    backlog.push_back(write);
}

/// `future`, or a timeout error after `limit`.
async fn within<T>(
    limit: Duration,
    future: impl std::future::Future<Output = RedisResult<T>>,
) -> RedisResult<T> {
    tokio::time::timeout(limit, future)
        .await
        .unwrap_or_else(|_| Err(closed("Redis did not answer in time")))
}

/// One connected spell. Ok: the backend is gone; Err: the link broke.
async fn session(
    shared: &Arc<Shared>,
    client: &redis::Client,
    pending: &mut UnboundedReceiver<Write>,
    backlog: &mut VecDeque<Write>,
) -> RedisResult<()> {
    let limit = shared.timeout.max(Duration::from_millis(200));
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(limit)
        .set_response_timeout(limit);
    let mut conn = client
        .get_multiplexed_async_connection_with_config(&config)
        .await?;
    let mut pubsub = within(limit, client.get_async_pubsub()).await?;
    within(limit, pubsub.subscribe(shared.keys.changes())).await?;
    let mut messages = pubsub.into_on_message();
    load_scripts(shared, &mut conn).await?;
    resync(shared, &mut conn).await?;
    shared.conn.store(Some(Arc::new(conn.clone())));
    // Spends decided locally while the re-sync ran.
    book_outage_spends(shared, &mut conn).await?;
    if shared.degraded.swap(false, Ordering::Relaxed) {
        tracing::info!(instance = %shared.instance, "shared state on Redis: connected and in sync");
    }
    shared.resyncs.fetch_add(1, Ordering::Relaxed);
    while !backlog.is_empty() {
        let mut pipe = redis::pipe();
        for write in backlog.drain(..backlog.len().min(MAX_BATCH)) {
            add(shared, &mut pipe, write);
        }
        send(shared, &mut conn, &pipe).await?;
    }
    let mut heartbeat = tokio::time::interval(HEARTBEAT);
    heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
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
        // The request path saw the link break: start over, with a re-sync.
        if shared.conn.load().is_none() {
            return Err(closed("a reservation lost the connection"));
        }
        // The gateway attached its mirror after the link came up.
        if shared.resync_wanted.swap(false, Ordering::Relaxed) {
            pull(shared, &mut conn).await?;
        }
    }
}

async fn load_scripts(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    shared.reserve.load_async(conn).await?;
    SETTLE.load_async(conn).await?;
    super::budget::SETTLE.load_async(conn).await?;
    SPEND.load_async(conn).await?;
    Ok(())
}

/// Sends `pipe`. An error Redis answers with (out of memory, a script it
/// lost) costs what the pipeline held, not the link; a broken link is
/// returned.
async fn send(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
    pipe: &redis::Pipeline,
) -> RedisResult<()> {
    match pipe.query_async::<()>(conn).await {
        Err(e) if is_link_error(&e) => Err(e),
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "Redis refused a write; it is lost");
            if e.kind() == ErrorKind::NoScriptError {
                load_scripts(shared, conn).await?;
            }
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

fn closed(why: &'static str) -> RedisError {
    RedisError::from((ErrorKind::IoError, why))
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
    // Two instances changing the same entry or cooldown at once must end
    // with the same value: each applies its own change again when it comes
    // back, so all of them end in the channel's order. (A breaker's own
    // transitions are its own state machine's; they are not replayed.)
    let own = envelope.from == shared.instance;
    let replayed = matches!(
        envelope.change,
        Change::KvSet { .. } | Change::KvDeleted { .. } | Change::Cooldown { .. }
    );
    if own && !replayed {
        return;
    }
    if !own {
        shared.changes_received.fetch_add(1, Ordering::Relaxed);
    }
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
    send(shared, conn, &pipe).await
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
                    .arg(shared.member(id))
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
        Write::SettleBudget {
            account,
            day,
            week,
            tokens,
            requests,
        } => {
            use crate::state::budget::Window;
            pipe.cmd("EVALSHA")
                .arg(super::budget::SETTLE.get_hash())
                .arg(2)
                .arg(keys.budget(&account, Window::Day, day))
                .arg(keys.budget(&account, Window::Week, week))
                .arg(tokens)
                .arg(requests)
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

/// Redis's clock, in ms: the one clock every instance agrees on.
async fn redis_ms(conn: &mut MultiplexedConnection) -> RedisResult<u64> {
    let (seconds, micros): (u64, u64) = redis::cmd("TIME").query_async(conn).await?;
    Ok(seconds * 1_000 + micros / 1_000)
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
                .arg("peek")
                .arg("-");
        }
        match peek.query_async::<Vec<Vec<i64>>>(conn).await {
            Ok(seen) => {
                for (quota, reply) in shared.limited.iter().zip(seen) {
                    if reply.len() == 5 {
                        shared.saw(quota, reply[3], reply[4]);
                    }
                }
            }
            Err(e) if is_link_error(&e) => return Err(e),
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                if e.kind() == ErrorKind::NoScriptError {
                    load_scripts(shared, conn).await?;
                }
            }
        }
    }
    let now = redis_ms(conn).await?;
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
