//! Bringing Redis and this instance back in line after a (re)connect: the
//! quota spent locally during an outage is booked, this instance's
//! in-flight counts rewritten, and cooldowns, circuits and policy entries
//! merged both ways.

use std::sync::atomic::Ordering;

use redis::aio::MultiplexedConnection;
use redis::RedisResult;

use super::super::{Shared, Write};
use super::{add, is_link_error, send, StoredCooldown, SPEND};
use crate::outcome::OutcomeKind;
use crate::state::{Change, ChangeSink};

/// Books in Redis the quota this instance spent on its own while Redis was
/// unreachable. Put back if the link breaks on the way.
pub(super) async fn book_outage_spends(
    shared: &Shared,
    conn: &mut MultiplexedConnection,
) -> RedisResult<()> {
    book_outage_budget(shared, conn).await?;
    let spends = std::mem::take(&mut *shared.outage_spends.lock().expect("spends poisoned"));
    if spends.is_empty() {
        return Ok(());
    }
    let keys = &shared.keys;
    let mut pipe = redis::pipe();
    for spend in &spends {
        let Some(quota) = shared.quotas.get(&spend.pool) else {
            continue;
        };
        let ago = spend.at.elapsed().as_millis() as u64;
        let amounts = [("rpm", spend.rpm.then_some(1)), ("tpm", spend.tokens)];
        for (field, amount) in amounts {
            let Some(amount) = amount else { continue };
            let id = shared.next_grant.fetch_add(1, Ordering::Relaxed);
            pipe.cmd("EVALSHA")
                .arg(SPEND.get_hash())
                .arg(2)
                .arg(keys.spends(quota, field))
                .arg(keys.sums(quota))
                .arg(ago)
                .arg(amount)
                .arg(field)
                .arg(shared.window_ms)
                .arg(shared.member(id))
                .ignore();
        }
    }
    match pipe.query_async::<()>(conn).await {
        Err(e) if is_link_error(&e) => {
            let mut kept = shared.outage_spends.lock().expect("spends poisoned");
            for spend in spends.into_iter().rev() {
                kept.push_front(spend);
            }
            Err(e)
        }
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "Redis refused the outage's spends; they are not booked");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Adds to Redis's day and week sums the budget this instance spent on its
/// own while Redis was unreachable. If the link breaks on the way they are
/// kept to book again: a budget had rather count a spend twice than not
/// at all.
async fn book_outage_budget(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let outage = std::mem::take(&mut *shared.outage_budget.lock().expect("outage budget poisoned"));
    if outage.is_empty() {
        return Ok(());
    }
    let mut pipe = redis::pipe();
    outage.book(&shared.keys, &mut pipe);
    match pipe.query_async::<()>(conn).await {
        Err(e) if is_link_error(&e) => {
            shared
                .outage_budget
                .lock()
                .expect("outage budget poisoned")
                .merge(outage);
            Err(e)
        }
        Err(e) => {
            shared.errors.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(error = %e, "Redis refused the budget spent during the outage; it is not booked");
            Ok(())
        }
        Ok(()) => Ok(()),
    }
}

/// Brings Redis and this instance back in line after a (re)connect: books
/// the quota spent locally during the outage, rewrites this instance's
/// in-flight counts, and merges cooldowns, circuits and policy entries
/// ([`pull`]).
pub(super) async fn resync(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    book_outage_spends(shared, conn).await?;
    let running_key = shared.keys.running(&shared.instance);
    let mut running = redis::pipe();
    // Atomic, so a sibling never reads the counts half rewritten.
    running.atomic().cmd("DEL").arg(&running_key).ignore();
    for (user, n) in shared.running_here.lock().expect("running poisoned").iter() {
        running
            .cmd("HSET")
            .arg(&running_key)
            .arg(user)
            .arg(*n)
            .ignore();
    }
    running.query_async::<()>(conn).await?;
    shared.resync_wanted.store(false, Ordering::Relaxed);
    pull(shared, conn).await
}

/// How much longer this instance's cooldown (or open circuit) must last
/// than Redis's for the merge to tell Redis. Within this, the two are the
/// same one seen at slightly different moments, typically one this
/// instance got from the channel a moment ago. Pushing it back would
/// publish a stale copy that can land after a sibling has lifted it, and
/// put it back on everywhere.
const SAME_WITHIN_MS: u64 = 1_000;

/// Merges what Redis holds with this instance's state: a cooldown or an
/// open circuit that lasts longer on one side wins on both; Redis's policy
/// entries are taken.
pub(super) async fn pull(shared: &Shared, conn: &mut MultiplexedConnection) -> RedisResult<()> {
    let Some(sink) = shared.sink() else {
        return Ok(());
    };
    let keys = &shared.keys;
    let deployments = &shared.deployments;
    let mut read = redis::pipe();
    for d in deployments {
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
            } if deployment == d => Some(*remaining_ms),
            _ => None,
        });
        let mine_circuit = local_remaining(&|c| match c {
            Change::CircuitOpened {
                deployment,
                remaining_ms,
            } if deployment == d => Some(*remaining_ms),
            _ => None,
        });
        if remote_cooldown > mine_cooldown {
            let cause = stored
                .and_then(|s| serde_json::from_slice::<StoredCooldown>(&s).ok())
                .map_or(OutcomeKind::Throttled, |s| s.cause);
            sink.apply(&Change::Cooldown {
                deployment: d.clone(),
                remaining_ms: remote_cooldown,
                cause,
                clear_history: false,
            });
        } else if mine_cooldown > remote_cooldown + SAME_WITHIN_MS {
            let change = local
                .iter()
                .find(|c| matches!(c, Change::Cooldown { deployment, .. } if deployment == d));
            if let Some(change) = change {
                add(shared, &mut push, Write::Change(change.clone()));
                pushed += 1;
            }
        }
        if remote_circuit > mine_circuit {
            sink.apply(&Change::CircuitOpened {
                deployment: d.clone(),
                remaining_ms: remote_circuit,
            });
        } else if mine_circuit > remote_circuit + SAME_WITHIN_MS {
            add(
                shared,
                &mut push,
                Write::Change(Change::CircuitOpened {
                    deployment: d.clone(),
                    remaining_ms: mine_circuit,
                }),
            );
            pushed += 1;
        }
    }
    if pushed > 0 {
        send(shared, conn, &push).await?;
    }
    pull_entries(shared, sink.as_ref(), conn).await
}

/// Takes Redis's policy entries into this instance's stores.
async fn pull_entries(
    shared: &Shared,
    sink: &dyn ChangeSink,
    conn: &mut MultiplexedConnection,
) -> RedisResult<()> {
    for slot in sink.kv_slots() {
        let prefix = shared.keys.kv(&slot, "");
        let pattern = format!("{}*", glob_escape(&prefix));
        let mut cursor: u64 = 0;
        loop {
            let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(1_000)
                .query_async(conn)
                .await?;
            if !found.is_empty() {
                let mut read = redis::pipe();
                for key in &found {
                    read.cmd("GET").arg(key).cmd("PTTL").arg(key);
                }
                let answers: Vec<redis::Value> = read.query_async(conn).await?;
                for (key, answer) in found.iter().zip(answers.chunks(2)) {
                    let value: Option<Vec<u8>> =
                        redis::from_redis_value(&answer[0]).unwrap_or(None);
                    let ttl: i64 = redis::from_redis_value(&answer[1]).unwrap_or(-2);
                    let (Some(value), Some(entry)) = (value, key.strip_prefix(&prefix)) else {
                        continue;
                    };
                    if ttl == -2 || ttl == 0 {
                        continue; // gone meanwhile
                    }
                    sink.apply(&Change::KvSet {
                        slot: slot.clone(),
                        key: entry.to_owned(),
                        value,
                        ttl_ms: (ttl > 0).then_some(ttl as u64),
                    });
                }
            }
            if next == 0 {
                break;
            }
            cursor = next;
        }
    }
    Ok(())
}

/// `text` with the characters SCAN's MATCH treats as a pattern escaped.
fn glob_escape(text: &str) -> String {
    let mut escaped = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            escaped.push('\\');
        }
        escaped.push(c);
    }
    escaped
}
