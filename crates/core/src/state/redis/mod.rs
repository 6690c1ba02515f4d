//! State shared through a Redis server by every gateway instance that points
//! at it with the same `key_prefix`.
//!
//! - **Quotas**: a reservation is one atomic Lua script on Redis's clock
//!   (`reserve.lua`), the request's only round trip; settling it is written
//!   afterwards, pipelined with whatever else is pending.
//! - **Cooldowns, circuits, policy key-value entries**: each instance keeps
//!   them locally (policies read them with no network in the way) and
//!   broadcasts every change on a pub/sub channel; the siblings apply it as
//!   it arrives. The latest cooldowns and circuits are also kept in hashes,
//!   for an instance that (re)connects.
//! - **Per-user in-flight counts**: each instance writes its own to a hash and
//!   reads the others' every [`link::HEARTBEAT`].
//!
//! While Redis is unreachable, quotas are decided on local books holding
//! `limit / instances`, which also record this instance's shared spends, so
//! an outage never lets an instance spend more than its share. Those spends
//! are pushed to Redis when it returns ([`link`]).

mod budget;
mod keys;
mod lazy;
pub use lazy::LazyConnection;
mod link;

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock, Weak};
use std::time::{Duration, Instant};

use arc_swap::ArcSwapOption;
use redis::aio::MultiplexedConnection;
use tokio::sync::mpsc;

use super::memory::MemoryState;
use super::{
    BoxFuture, BudgetBooks, BudgetGrant, BudgetSpec, BudgetUse, Change, ChangeBroadcast,
    ChangeSink, GrantSource, QuotaBooks, QuotaGrant, QuotaSpec, QuotaView, StateBackend,
    StateConfig, StateError, StateStatus, UserPresence,
};
use crate::vocabulary::Refusal;
use keys::Keys;

/// Quota taken on local books while Redis was unreachable.
#[derive(Debug, Clone)]
struct OutageSpend {
    /// The quota pool it was spent from.
    pool: String,
    at: Instant,
    /// It took a request from an RPM quota.
    rpm: bool,
    /// It took these tokens from a TPM quota.
    tokens: Option<u64>,
}

/// A shared quota pool as the last reservation saw it.
#[derive(Debug, Clone, Copy, Default)]
struct SeenQuota {
    rpm_used: u64,
    tpm_used: u64,
    /// Until when (local ms) the last refusal said to wait.
    refused_until_ms: u64,
}

/// Something to write to Redis after the fact.
#[derive(Debug)]
enum Write {
    Settle {
        quota: QuotaSpec,
        id: u64,
        /// (reserved, used) of the RPM quota, if it has one.
        rpm: Option<(u64, u64)>,
        /// (reserved, used) of the TPM quota, if it has one.
        tpm: Option<(u64, u64)>,
    },
    Change(Change),
    Running {
        user: String,
        running: u32,
    },
    /// An account's day and week sums, corrected once an attempt is over.
    SettleBudget {
        account: String,
        day: u64,
        week: u64,
        tokens: i64,
        requests: i64,
    },
}

/// What the request path and the link task share.
struct Shared {
    keys: Keys,
    instance: String,
    instances: u32,
    timeout: Duration,
    window_ms: u64,
    /// One spec per quota pool, by pool.
    quotas: HashMap<String, QuotaSpec>,
    /// Every deployment, whose cooldowns and circuits a resync merges.
    deployments: Vec<String>,
    /// The pools with a limit, whose use the heartbeat reads.
    limited: Vec<QuotaSpec>,
    /// The connection, while Redis answers.
    conn: ArcSwapOption<MultiplexedConnection>,
    reserve: redis::Script,
    /// Books of `limit / instances`: the deciders during an outage.
    local: MemoryState,
    /// The next reservation's number on this instance.
    next_grant: AtomicU64,
    /// By quota pool.
    seen: Mutex<HashMap<String, SeenQuota>>,
    /// By account.
    seen_budgets: Mutex<HashMap<String, budget::SeenBudget>>,
    /// Budget spent on local decisions during an outage, to book on re-sync.
    outage_budget: Mutex<budget::OutageBudget>,
    /// Spends decided locally while degraded, to book in Redis on re-sync.
    outage_spends: Mutex<VecDeque<OutageSpend>>,
    /// The gateway attached its mirror: pull the siblings' state into it.
    resync_wanted: AtomicBool,
    degraded: AtomicBool,
    errors: AtomicU64,
    local_decisions: AtomicU64,
    resyncs: AtomicU64,
    changes_received: AtomicU64,
    writes: mpsc::UnboundedSender<Write>,
    sink: OnceLock<Weak<dyn ChangeSink>>,
    running_here: Mutex<HashMap<String, u32>>,
    running_elsewhere: RwLock<HashMap<String, u32>>,
}

impl Shared {
    /// The Redis member id of this instance's reservation `id`: unique
    /// across instances and across Redis restarts.
    fn member(&self, id: u64) -> String {
        format!("{}.{id}", self.instance)
    }

    /// Where the siblings' changes go, while the gateway lives.
    fn sink(&self) -> Option<Arc<dyn ChangeSink>> {
        self.sink.get().and_then(Weak::upgrade)
    }

    /// Records what a reservation (or a peek) saw of a quota in use.
    fn saw(&self, quota: &QuotaSpec, rpm_used: i64, tpm_used: i64) {
        let mut seen = self.seen.lock().expect("seen quotas poisoned");
        let seen = seen.entry(quota.pool.clone()).or_default();
        seen.rpm_used = rpm_used.max(0) as u64;
        seen.tpm_used = tpm_used.max(0) as u64;
    }

    /// The link to Redis broke (`failed` is the connection that failed):
    /// decide locally until it is back. A late failure of an older
    /// connection does not take down a newer one.
    fn went_down(&self, failed: &Option<Arc<MultiplexedConnection>>, why: &str) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        self.conn.compare_and_swap(failed, None);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(
                error = why,
                share = format!("1/{}", self.instances),
                "shared state unreachable: deciding on local state with each quota divided by the instance count"
            );
        }
        // The siblings' in-flight counts can no longer be refreshed: a user
        // must not stay held back by counts from before the outage.
        let had_counts = {
            let mut elsewhere = self.running_elsewhere.write().expect("running poisoned");
            let had = !elsewhere.is_empty();
            elsewhere.clear();
            had
        };
        if had_counts {
            if let Some(sink) = self.sink() {
                sink.running_elsewhere_changed();
            }
        }
    }

    fn decide_locally(
        &self,
        quota: &QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<QuotaGrant, Refusal> {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        let grant = self.local.reserve_now(quota, tokens, now_ms)?;
        let window = Duration::from_millis(self.window_ms);
        let mut spends = self.outage_spends.lock().expect("outage spends poisoned");
        // Spends older than a window need no booking: they are back already.
        while spends.front().is_some_and(|s| s.at.elapsed() >= window) {
            spends.pop_front();
        }
        spends.push_back(OutageSpend {
            pool: quota.pool.clone(),
            at: Instant::now(),
            rpm: quota.rpm.is_some(),
            tokens: quota.tpm.map(|_| tokens),
        });
        Ok(grant)
    }

    async fn reserve_shared(
        &self,
        quota: &QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<QuotaGrant, Refusal> {
        let current = self.conn.load_full();
        let Some(conn) = &current else {
            return self.decide_locally(quota, tokens, now_ms);
        };
        let mut conn = (**conn).clone();
        let limit = |l: Option<u64>| l.map_or(-1, |l| l as i64);
        let id = self.next_grant.fetch_add(1, Ordering::Relaxed);
        let mut invocation = self.reserve.prepare_invoke();
        invocation
            .key(self.keys.spends(quota, "rpm"))
            .key(self.keys.spends(quota, "tpm"))
            .key(self.keys.sums(quota))
            .arg(limit(quota.rpm))
            .arg(limit(quota.tpm))
            .arg(tokens)
            .arg(self.window_ms)
            .arg("take")
            .arg(self.member(id));
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        let reply = match answer {
            Ok(Ok(reply)) if reply.len() == 5 => reply,
            Ok(Ok(reply)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?reply, "unexpected reply to a reservation; decided locally");
                return self.decide_locally(quota, tokens, now_ms);
            }
            Ok(Err(e)) if link::is_link_error(&e) => {
                self.went_down(&current, &e.to_string());
                return self.decide_locally(quota, tokens, now_ms);
            }
            Ok(Err(e)) => {
                // Redis answered, with an error (out of memory, say): this
                // request decides locally; the link stays.
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(error = %e, "a reservation failed on Redis; decided locally");
                return self.decide_locally(quota, tokens, now_ms);
            }
            Err(_) => {
                // Slow, not gone: only this request decides locally.
                self.errors.fetch_add(1, Ordering::Relaxed);
                return self.decide_locally(quota, tokens, now_ms);
            }
        };
        self.saw(quota, reply[3], reply[4]);
        let refused_until = |until: u64| {
            if let Some(seen) = self
                .seen
                .lock()
                .expect("seen quotas poisoned")
                .get_mut(&quota.pool)
            {
                seen.refused_until_ms = until;
            }
        };
        if reply[0] == 0 {
            let wait_ms = (reply[2].max(0) as u64).max(1);
            refused_until(now_ms + wait_ms);
            return Err(match reply[1] {
                1 => Refusal::RequestQuota { wait_ms },
                _ => Refusal::TokenQuota { wait_ms },
            });
        }
        refused_until(0);
        Ok(QuotaGrant {
            source: GrantSource::Shared,
            id,
            mirror: self.local.record_spend(quota, tokens, now_ms),
            rpm: quota.rpm.is_some(),
            tpm: quota.tpm.is_some(),
            tokens: if quota.tpm.is_some() { tokens } else { 0 },
        })
    }
}

/// The Redis backend. Dropping it stops its link task.
pub struct RedisState {
    shared: Arc<Shared>,
    link: tokio::task::JoinHandle<()>,
}

impl Drop for RedisState {
    fn drop(&mut self) {
        self.link.abort();
    }
}

impl RedisState {
    /// Starts connecting to `config.url` in the background (needs a tokio
    /// runtime). Until connected, quotas are decided locally.
    pub fn start(
        config: &StateConfig,
        quotas: &[QuotaSpec],
        window_ms: u64,
    ) -> Result<Self, StateError> {
        let url = config.url.as_deref().unwrap_or_default();
        let client = redis::Client::open(url).map_err(|source| StateError::bad_url(url, source))?;
        let (writes, pending) = mpsc::unbounded_channel();
        let pools: HashMap<String, QuotaSpec> =
            quotas.iter().map(|q| (q.pool.clone(), q.clone())).collect();
        let shared = Arc::new(Shared {
            keys: Keys::new(&config.key_prefix),
            instance: uuid::Uuid::new_v4().simple().to_string(),
            instances: config.instances,
            timeout: Duration::from_millis(config.timeout_ms),
            window_ms,
            quotas: pools.clone(),
            deployments: quotas.iter().map(|q| q.deployment.clone()).collect(),
            limited: pools
                .into_values()
                .filter(|q| q.rpm.is_some() || q.tpm.is_some())
                .collect(),
            conn: ArcSwapOption::empty(),
            reserve: redis::Script::new(include_str!("reserve.lua")),
            local: MemoryState::new(quotas, config.instances, window_ms),
            next_grant: AtomicU64::new(0),
            seen: Mutex::new(HashMap::new()),
            seen_budgets: Mutex::new(HashMap::new()),
            outage_budget: Mutex::new(budget::OutageBudget::default()),
            outage_spends: Mutex::new(VecDeque::new()),
            resync_wanted: AtomicBool::new(false),
            degraded: AtomicBool::new(true),
            errors: AtomicU64::new(0),
            local_decisions: AtomicU64::new(0),
            resyncs: AtomicU64::new(0),
            changes_received: AtomicU64::new(0),
            writes,
            sink: OnceLock::new(),
            running_here: Mutex::new(HashMap::new()),
            running_elsewhere: RwLock::new(HashMap::new()),
        });
        let handle = tokio::runtime::Handle::try_current().map_err(StateError::NoRuntime)?;
        let link = handle.spawn(link::run(shared.clone(), client, pending));
        Ok(Self { shared, link })
    }
}

impl ChangeBroadcast for RedisState {
    fn publish(&self, change: Change) {
        let _ = self.shared.writes.send(Write::Change(change));
    }
}

impl QuotaBooks for RedisState {
    fn reserve<'a>(
        &'a self,
        quota: &'a QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<QuotaGrant, Refusal>> {
        if quota.rpm.is_none() && quota.tpm.is_none() {
            return Box::pin(std::future::ready(
                self.shared.local.reserve_now(quota, tokens, now_ms),
            ));
        }
        Box::pin(self.shared.reserve_shared(quota, tokens, now_ms))
    }

    fn settle(
        &self,
        quota: &QuotaSpec,
        grant: QuotaGrant,
        request: bool,
        used_tokens: u64,
        now_ms: u64,
    ) {
        let s = &self.shared;
        match grant.source {
            GrantSource::Local => {
                s.local
                    .settle_local(quota, grant.id, request, used_tokens, now_ms)
            }
            GrantSource::Shared => {
                if let Some(mirror) = grant.mirror {
                    s.local
                        .settle_local(quota, mirror, request, used_tokens, now_ms);
                }
                let rpm = grant.rpm.then_some((1, u64::from(request)));
                let tpm = grant.tpm.then_some((grant.tokens, used_tokens));
                // Nothing changes for a request that used what it reserved.
                if rpm.is_some_and(|(r, u)| r != u) || tpm.is_some_and(|(r, u)| r != u) {
                    let _ = s.writes.send(Write::Settle {
                        quota: quota.clone(),
                        id: grant.id,
                        rpm,
                        tpm,
                    });
                }
            }
        }
    }

    fn quota_view(&self, quota: &QuotaSpec, now_ms: u64) -> QuotaView {
        let s = &self.shared;
        if s.degraded.load(Ordering::Relaxed) {
            return s.local.quota_view(quota, now_ms);
        }
        let seen = s
            .seen
            .lock()
            .expect("seen quotas poisoned")
            .get(&quota.pool)
            .copied()
            .unwrap_or_default();
        let permille = |used: u64, limit: Option<u64>| {
            // A zero quota is all used.
            limit.map_or(0, |l| {
                (used.min(l) * 1000)
                    .checked_div(l)
                    .map_or(1000, |p| p as u32)
            })
        };
        QuotaView {
            rpm_limit: quota.rpm,
            rpm_available: quota.rpm.map(|l| l.saturating_sub(seen.rpm_used)),
            tpm_limit: quota.tpm,
            tpm_available: quota.tpm.map(|l| l.saturating_sub(seen.tpm_used)),
            used_permille: permille(seen.rpm_used, quota.rpm)
                .max(permille(seen.tpm_used, quota.tpm)),
        }
    }

    fn quota_wait_ms(&self, quota: &QuotaSpec, tokens: u64, now_ms: u64) -> u64 {
        let s = &self.shared;
        if s.degraded.load(Ordering::Relaxed) {
            return s.local.quota_wait_ms(quota, tokens, now_ms);
        }
        let Some(seen) = s
            .seen
            .lock()
            .expect("seen quotas poisoned")
            .get(&quota.pool)
            .copied()
        else {
            return 0;
        };
        // What was last seen in use leaves room: worth asking now.
        let room = |limit: Option<u64>, used: u64, want: u64| {
            limit.is_none_or(|l| used + want.min(l) <= l)
        };
        if room(quota.rpm, seen.rpm_used, 1) && room(quota.tpm, seen.tpm_used, tokens) {
            return 0;
        }
        seen.refused_until_ms.saturating_sub(now_ms).max(1)
    }
}

impl BudgetBooks for RedisState {
    fn take_budget<'a>(
        &'a self,
        budget: &'a BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<BudgetGrant, Refusal>> {
        Box::pin(self.shared.take_budget_shared(budget, tokens, now_ms))
    }

    fn settle_budget(
        &self,
        budget: &BudgetSpec,
        grant: BudgetGrant,
        request: bool,
        used_tokens: u64,
    ) {
        let s = &self.shared;
        s.local
            .settle_budget_local(budget, &grant, request, used_tokens);
        let tokens = used_tokens as i64 - grant.tokens as i64;
        let requests = if request { 0 } else { -1 };
        if !grant.shared {
            // Decided here during an outage: its booking is corrected too.
            s.outage_budget.lock().expect("outage budget poisoned").add(
                &budget.account,
                &grant,
                tokens,
                requests,
                grant.day_start_ms(),
            );
        }
        if grant.shared && (tokens != 0 || requests != 0) {
            let _ = s.writes.send(Write::SettleBudget {
                account: budget.account.clone(),
                day: grant.day,
                week: grant.week,
                tokens,
                requests,
            });
        }
    }

    fn budget_use(&self, budget: &BudgetSpec, now_ms: u64) -> BudgetUse {
        self.shared.budget_seen(budget, now_ms)
    }
}

impl UserPresence for RedisState {
    fn user_running(&self, user: &str, running: u32) {
        let mut here = self.shared.running_here.lock().expect("running poisoned");
        if running == 0 {
            here.remove(user);
        } else {
            here.insert(user.to_owned(), running);
        }
        let _ = self.shared.writes.send(Write::Running {
            user: user.to_owned(),
            running,
        });
    }

    fn running_elsewhere(&self, user: &str) -> u32 {
        self.shared
            .running_elsewhere
            .read()
            .expect("running poisoned")
            .get(user)
            .copied()
            .unwrap_or(0)
    }
}

impl StateBackend for RedisState {
    fn attach(&self, sink: &Arc<dyn ChangeSink>) {
        let _ = self.shared.sink.set(Arc::downgrade(sink));
        self.shared.resync_wanted.store(true, Ordering::Relaxed);
    }

    fn status(&self) -> StateStatus {
        let s = &self.shared;
        StateStatus {
            backend: "redis".into(),
            instance: s.instance.clone(),
            degraded: s.degraded.load(Ordering::Relaxed),
            errors: s.errors.load(Ordering::Relaxed),
            local_decisions: s.local_decisions.load(Ordering::Relaxed),
            resyncs: s.resyncs.load(Ordering::Relaxed),
            changes_received: s.changes_received.load(Ordering::Relaxed),
        }
    }
}
