//! Admission control: what may start, and when. Fixed host code; policies
//! see its state (quota used, in flight, circuit) through their candidates
//! but do not implement it.
//!
//! - [`queue`]: the fair queue in front of the router (global and per-user
//!   caps, priorities, fair share, bounded, deadlines).
//! - Per deployment, [`DeploymentAdmission`]: RPM and TPM quotas
//!   ([`quota`]), an adaptive concurrency limit ([`concurrency`]) and the
//!   circuit breaker (`health::breaker`). An attempt starts only when all
//!   of them let it; otherwise the deployment is skipped for that attempt
//!   without calling Bedrock, and the router moves on or waits.

pub mod concurrency;
pub mod queue;
pub mod stats;

use std::sync::{Arc, Mutex};

use tokio::sync::futures::Notified;
use tokio::sync::Notify;

use serde::{Deserialize, Serialize};

use crate::health::breaker::{BreakerConfig, BreakerState, CircuitBreaker};
use crate::outcome::OutcomeKind;
use crate::state::memory::MemoryState;
use crate::state::{BudgetGrant, BudgetSpec, BudgetUse, StateBackend};
use crate::state::{QuotaGrant, QuotaSpec};
use crate::vocabulary::Change;
pub use crate::vocabulary::Refusal;
use concurrency::AimdLimit;

pub use queue::{AdmitError, FairQueue, Permit, QueueConfig, QueueStats};

/// Bedrock's quota window.
const QUOTA_WINDOW_MS: u64 = 60_000;

/// The `[admission]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdmissionConfig {
    /// The fair queue's caps.
    #[serde(flatten)]
    pub queue: QueueConfig,
    /// How long a request may wait, in the queue and for capacity, before its
    /// first attempt starts, in ms. A client may ask for less with the
    /// `x-switchyard-max-wait-ms` header.
    pub max_wait_ms: u64,
    /// Spent quota comes back this long after Bedrock's minute, in ms: the
    /// gateway's clock and Bedrock's never agree to the millisecond.
    pub quota_margin_ms: u64,
    /// Adaptive concurrency per deployment.
    pub concurrency: ConcurrencyConfig,
    /// The circuit breaker of each deployment.
    pub breaker: BreakerConfig,
}

impl AdmissionConfig {
    /// How long after it was spent a quota's token comes back, in ms.
    pub fn quota_window_ms(&self) -> u64 {
        QUOTA_WINDOW_MS + self.quota_margin_ms
    }
}

impl Default for AdmissionConfig {
    fn default() -> Self {
        Self {
            queue: QueueConfig::default(),
            max_wait_ms: 30_000,
            quota_margin_ms: 1_000,
            concurrency: ConcurrencyConfig::default(),
            breaker: BreakerConfig::default(),
        }
    }
}

/// Bounds of the AIMD concurrency limit of each deployment.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConcurrencyConfig {
    /// The limit a deployment starts with.
    pub initial: u32,
    /// It never halves below this.
    pub min: u32,
    /// It never grows above this.
    pub max: u32,
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            initial: 32,
            min: 1,
            max: 256,
        }
    }
}

/// What an attempt holds while it runs; hand it back with
/// [`DeploymentAdmission::finish`].
#[derive(Debug)]
pub struct Ticket {
    grant: QuotaGrant,
    /// What it took from its account's budgets, when the account has any.
    budget: Option<BudgetGrant>,
}

/// What admission knows of one deployment now, for policies and stats.
#[derive(Debug, Clone, Serialize)]
pub struct AdmissionSnapshot {
    /// The fullest of its RPM and TPM quotas and its account's daily and
    /// weekly budgets, in thousandths: what policies see, so those that
    /// spread by quota use also rotate accounts by budget use.
    pub quota_used_permille: u32,
    /// Its account's budgets and what is spent of them, when it has any.
    pub budget: Option<BudgetUse>,
    pub rpm_limit: Option<u64>,
    pub rpm_available: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub tpm_available: Option<u64>,
    pub concurrency_limit: u32,
    pub in_flight: u32,
    pub circuit: BreakerState,
    /// How long an open circuit stays open, in ms.
    pub circuit_open_remaining_ms: u64,
}

/// Quota `try_start` reserved, given back on drop unless the attempt
/// goes ahead.
struct QuotaHold<'a> {
    admission: &'a DeploymentAdmission,
    grant: Option<QuotaGrant>,
    now_ms: u64,
}

impl QuotaHold<'_> {
    /// The attempt goes ahead with it.
    fn keep(mut self) -> QuotaGrant {
        self.grant.take().expect("held until kept or dropped")
    }
}

impl Drop for QuotaHold<'_> {
    fn drop(&mut self) {
        if let Some(grant) = self.grant.take() {
            let a = self.admission;
            a.state.settle(&a.quota, grant, false, 0, self.now_ms);
        }
    }
}

/// A concurrency slot taken by `try_start`, given back on drop unless the
/// attempt went ahead.
struct ConcurrencySlot<'a> {
    admission: &'a DeploymentAdmission,
    held: bool,
}

impl ConcurrencySlot<'_> {
    /// Gives the slot back without waking a waiter: the request that took
    /// it is refused and will wait itself, so a wakeup would only wake it.
    fn return_quietly(mut self) {
        self.held = false;
        self.admission.lock().concurrency.release();
    }
}

impl Drop for ConcurrencySlot<'_> {
    fn drop(&mut self) {
        if self.held {
            self.admission.lock().concurrency.release();
            self.admission.freed.notify_one();
        }
    }
}

/// The limits kept in this process: concurrency is per instance by nature,
/// and the breaker is mirrored from the siblings' changes.
struct Limits {
    concurrency: AimdLimit,
    breaker: CircuitBreaker,
}

/// Admission state of one deployment. Its quotas live in the state backend,
/// which may share them with other instances.
pub struct DeploymentAdmission {
    quota: QuotaSpec,
    /// Its account's budgets beyond a minute, if it has any.
    budget: Option<BudgetSpec>,
    state: Arc<dyn StateBackend>,
    limits: Mutex<Limits>,
    /// Signalled when an attempt gives its slot back or the circuit closes:
    /// requests refused for concurrency wait on it instead of polling.
    freed: Notify,
}

impl std::fmt::Debug for DeploymentAdmission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeploymentAdmission")
            .field("quota", &self.quota)
            .finish_non_exhaustive()
    }
}

impl DeploymentAdmission {
    /// Limits for the deployment `quota` describes, its quotas kept in `state`.
    pub fn new(quota: QuotaSpec, state: Arc<dyn StateBackend>, config: &AdmissionConfig) -> Self {
        let c = &config.concurrency;
        Self {
            quota,
            budget: None,
            state,
            limits: Mutex::new(Limits {
                concurrency: AimdLimit::new(c.initial, c.min, c.max),
                breaker: CircuitBreaker::new(config.breaker.clone()),
            }),
            freed: Notify::new(),
        }
    }

    /// Limits for a deployment with these quotas, kept in this process alone.
    pub fn local(rpm: Option<u32>, tpm: Option<u32>, config: &AdmissionConfig) -> Self {
        let quota = QuotaSpec {
            deployment: String::new(),
            pool: String::new(),
            rpm: rpm.map(u64::from),
            tpm: tpm.map(u64::from),
        };
        let state = Arc::new(MemoryState::new(
            std::slice::from_ref(&quota),
            1,
            config.quota_window_ms(),
        ));
        Self::new(quota, state, config)
    }

    /// Also holds its attempts to `budget` (its account's, shared with the
    /// account's other deployments through the state backend).
    pub fn with_budget(mut self, budget: BudgetSpec) -> Self {
        self.budget = budget.is_limited().then_some(budget);
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Limits> {
        self.limits.lock().expect("admission state poisoned")
    }

    /// Where its quotas and shared changes go.
    pub fn state(&self) -> &Arc<dyn StateBackend> {
        &self.state
    }

    /// Starts an attempt that may use `tokens` (input plus `maxTokens`), if
    /// every limit lets it; takes nothing when one refuses. Local limits are
    /// checked first, so a refused attempt costs no round trip.
    pub async fn try_start(&self, tokens: u64, now_ms: u64) -> Result<Ticket, Refusal> {
        let mut slot = {
            let mut l = self.lock();
            let open_ms = l.breaker.open_remaining_ms(now_ms);
            if open_ms > 0 {
                return Err(Refusal::CircuitOpen { wait_ms: open_ms });
            }
            if !l.concurrency.try_acquire() {
                return Err(Refusal::Concurrency);
            }
            ConcurrencySlot {
                admission: self,
                held: true,
            }
        };
        // Dropped while it waits (the client left): the slot comes back.
        let grant = match self.state.reserve(&self.quota, tokens, now_ms).await {
            Ok(grant) => grant,
            Err(refusal) => {
                slot.return_quietly();
                return Err(refusal);
            }
        };
        // Dropped while the budget is asked (the client left) or refused by
        // it: the quota goes back, counting no request.
        let held = QuotaHold {
            admission: self,
            grant: Some(grant),
            now_ms,
        };
        let budget = match &self.budget {
            None => None,
            Some(spec) => match self.state.take_budget(spec, tokens, now_ms).await {
                Ok(taken) => Some(taken),
                Err(refusal) => {
                    drop(held);
                    slot.return_quietly();
                    return Err(refusal);
                }
            },
        };
        let grant = held.keep();
        if !self.lock().breaker.try_pass(now_ms) {
            self.state.settle(&self.quota, grant, false, 0, now_ms);
            self.settle_budget(budget, false, 0);
            slot.return_quietly();
            // Half-open with its probes out: a probe's end frees the way.
            return Err(Refusal::Concurrency);
        }
        slot.held = false;
        Ok(Ticket { grant, budget })
    }

    fn settle_budget(&self, taken: Option<BudgetGrant>, request: bool, used_tokens: u64) {
        if let (Some(spec), Some(taken)) = (&self.budget, taken) {
            self.state.settle_budget(spec, taken, request, used_tokens);
        }
    }

    /// Admits one more upstream call inside an attempt that holds its own
    /// ticket (an embeddings batch makes many): the call takes its own share
    /// of the quotas (a request and `tokens`) and budgets, but no place of
    /// concurrency (the attempt's lanes are its places; see
    /// [`Self::try_lane`]). Hand it back with [`Self::finish_call`].
    pub async fn try_start_call(&self, tokens: u64, now_ms: u64) -> Result<Ticket, Refusal> {
        let open_ms = self.lock().breaker.open_remaining_ms(now_ms);
        if open_ms > 0 {
            return Err(Refusal::CircuitOpen { wait_ms: open_ms });
        }
        let grant = self.state.reserve(&self.quota, tokens, now_ms).await?;
        let held = QuotaHold {
            admission: self,
            grant: Some(grant),
            now_ms,
        };
        let budget = match &self.budget {
            None => None,
            Some(spec) => Some(self.state.take_budget(spec, tokens, now_ms).await?),
        };
        Ok(Ticket {
            grant: held.keep(),
            budget,
        })
    }

    /// A call [`Self::try_start_call`] admitted has ended, having used
    /// `used_tokens` when known (`None` on a failure: nothing, on a
    /// success: the whole reservation). Its attempt judges the deployment.
    pub fn finish_call(
        &self,
        ticket: Ticket,
        success: bool,
        used_tokens: Option<u64>,
        now_ms: u64,
    ) {
        let actual = |reserved: u64| match success {
            true => used_tokens.unwrap_or(reserved),
            false => used_tokens.unwrap_or(0),
        };
        let reserved = ticket.grant.tokens;
        self.state
            .settle(&self.quota, ticket.grant, true, actual(reserved), now_ms);
        if let Some(taken) = ticket.budget {
            let tokens = actual(taken.tokens);
            self.settle_budget(Some(taken), true, tokens);
        }
    }

    /// Takes one more place of concurrency for an attempt that runs several
    /// calls at once, if one is free now (never waits). Give it back with
    /// [`Self::release_lane`].
    pub fn try_lane(&self) -> bool {
        self.lock().concurrency.try_acquire()
    }

    /// Gives back a place [`Self::try_lane`] took.
    pub fn release_lane(&self) {
        self.lock().concurrency.release();
        self.freed.notify_one();
    }

    /// Resolves when capacity may have come back: an attempt on it ended or
    /// its circuit closed. One release wakes one waiter, in the order they
    /// began to wait; a release while nobody waits is kept for the next
    /// waiter, so none is lost between a refused try and the wait.
    pub fn capacity_freed(&self) -> Notified<'_> {
        self.freed.notified()
    }

    /// The attempt holding `ticket` was abandoned before it ended (the
    /// request was dropped mid-call): its slot comes back, its quota stays
    /// spent (Bedrock may have served it), and it judges nothing.
    pub fn abandon(&self, ticket: Ticket, now_ms: u64) {
        let reserved = ticket.grant.tokens;
        self.state
            .settle(&self.quota, ticket.grant, true, reserved, now_ms);
        if let Some(taken) = ticket.budget {
            let reserved = taken.tokens;
            self.settle_budget(Some(taken), true, reserved);
        }
        let mut l = self.lock();
        l.concurrency.release();
        l.breaker.record(OutcomeKind::ClientError, now_ms);
        drop(l);
        self.freed.notify_one();
    }

    /// The attempt holding `ticket` ended as `kind`, having used
    /// `used_tokens` when known. A refused call used no tokens; a success
    /// whose usage is unknown keeps its whole reservation. A circuit that
    /// opens or closes is told to the sibling instances.
    pub fn finish(&self, ticket: Ticket, kind: OutcomeKind, used_tokens: Option<u64>, now_ms: u64) {
        let reserved = ticket.grant.tokens;
        let actual = match kind {
            OutcomeKind::Success => used_tokens.unwrap_or(reserved),
            _ => used_tokens.unwrap_or(0),
        };
        self.state
            .settle(&self.quota, ticket.grant, true, actual, now_ms);
        if let Some(taken) = ticket.budget {
            // Without a TPM quota the grant reserved no tokens: the
            // budget's own reservation is the estimate to fall back on.
            let actual = match kind {
                OutcomeKind::Success => used_tokens.unwrap_or(taken.tokens),
                _ => used_tokens.unwrap_or(0),
            };
            self.settle_budget(Some(taken), true, actual);
        }
        let mut l = self.lock();
        match kind {
            OutcomeKind::Success => l.concurrency.on_success(),
            OutcomeKind::Throttled => l.concurrency.on_throttle(),
            _ => l.concurrency.release(),
        }
        let before = l.breaker.state(now_ms);
        l.breaker.record(kind, now_ms);
        let after = l.breaker.state(now_ms);
        let remaining_ms = l.breaker.open_remaining_ms(now_ms);
        drop(l);
        self.freed.notify_one();
        let deployment = self.quota.deployment.clone();
        match (before, after) {
            (b, BreakerState::Open) if b != BreakerState::Open => {
                self.state.publish(Change::CircuitOpened {
                    deployment,
                    remaining_ms,
                });
            }
            (b, BreakerState::Closed) if b != BreakerState::Closed => {
                self.state.publish(Change::CircuitClosed { deployment });
            }
            _ => {}
        }
    }

    /// A sibling instance's breaker opened for `remaining_ms`.
    pub fn open_circuit(&self, remaining_ms: u64, now_ms: u64) {
        self.lock()
            .breaker
            .force_open(now_ms.saturating_add(remaining_ms));
    }

    /// A sibling instance's breaker closed.
    pub fn close_circuit(&self) {
        self.lock().breaker.force_close();
        self.freed.notify_waiters();
    }

    /// Milliseconds until an attempt of `tokens` could start (0: now).
    pub fn wait_ms(&self, tokens: u64, now_ms: u64) -> u64 {
        let quota = self.state.quota_wait_ms(&self.quota, tokens, now_ms);
        let budget = self.budget.as_ref().map_or(0, |spec| {
            let used = self.state.budget_use(spec, now_ms);
            crate::state::budget::wait_for(spec, used.day, used.week, tokens, now_ms)
        });
        let open = self.lock().breaker.open_remaining_ms(now_ms);
        quota.max(budget).max(open)
    }

    /// Its state now.
    pub fn snapshot(&self, now_ms: u64) -> AdmissionSnapshot {
        let quota = self.state.quota_view(&self.quota, now_ms);
        let budget = self
            .budget
            .as_ref()
            .map(|spec| self.state.budget_use(spec, now_ms));
        let mut l = self.lock();
        AdmissionSnapshot {
            quota_used_permille: quota
                .used_permille
                .max(budget.map_or(0, |b| b.used_permille)),
            budget,
            rpm_limit: quota.rpm_limit,
            rpm_available: quota.rpm_available,
            tpm_limit: quota.tpm_limit,
            tpm_available: quota.tpm_available,
            concurrency_limit: l.concurrency.limit(),
            in_flight: l.concurrency.in_flight(),
            circuit: l.breaker.state(now_ms),
            circuit_open_remaining_ms: l.breaker.open_remaining_ms(now_ms),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> AdmissionConfig {
        AdmissionConfig {
            quota_margin_ms: 0,
            concurrency: ConcurrencyConfig {
                initial: 2,
                min: 1,
                max: 8,
            },
            ..AdmissionConfig::default()
        }
    }

    #[tokio::test]
    async fn an_empty_request_quota_refuses_with_the_wait() {
        let a = DeploymentAdmission::local(Some(2), None, &config());
        let t1 = a.try_start(10, 0).await.unwrap();
        a.finish(t1, OutcomeKind::Success, None, 100);
        let t2 = a.try_start(10, 1_000).await.unwrap();
        a.finish(t2, OutcomeKind::Success, None, 1_100);
        assert_eq!(
            a.try_start(10, 2_000).await.unwrap_err(),
            Refusal::RequestQuota { wait_ms: 58_000 }
        );
        assert_eq!(a.wait_ms(10, 2_000), 58_000);
        assert_eq!(a.snapshot(2_000).quota_used_permille, 1000);
        assert!(a.try_start(10, 60_000).await.is_ok());
    }

    #[tokio::test]
    async fn tokens_are_reserved_then_settled_to_the_usage() {
        let a = DeploymentAdmission::local(None, Some(10_000), &config());
        let t = a.try_start(6_000, 0).await.unwrap();
        assert!(matches!(
            a.try_start(6_000, 0).await,
            Err(Refusal::TokenQuota { .. })
        ));
        a.finish(t, OutcomeKind::Success, Some(1_000), 10);
        assert_eq!(a.snapshot(10).tpm_available, Some(9_000));
        // A throttled attempt used nothing.
        let t = a.try_start(6_000, 20).await.unwrap();
        a.finish(t, OutcomeKind::Throttled, None, 30);
        assert_eq!(a.snapshot(30).tpm_available, Some(9_000));
    }

    #[tokio::test]
    async fn a_request_refused_for_concurrency_is_woken_by_the_release() {
        use futures::FutureExt;
        let a = DeploymentAdmission::local(None, Some(100), &config());
        let t1 = a.try_start(1, 0).await.unwrap();
        let _t2 = a.try_start(1, 0).await.unwrap();
        assert_eq!(a.try_start(1, 0).await.unwrap_err(), Refusal::Concurrency);
        let mut woken = Box::pin(a.capacity_freed());
        assert!(woken.as_mut().now_or_never().is_none(), "nothing freed yet");
        a.finish(t1, OutcomeKind::Success, None, 10);
        assert!(woken.now_or_never().is_some(), "the release wakes it");
        // A refusal by quota gives its slot back without a wakeup: the
        // refused request would only wake itself.
        let t3 = a.try_start(1, 10).await.unwrap();
        assert!(matches!(
            a.try_start(500, 10).await,
            Err(Refusal::Concurrency)
        ));
        a.finish(t3, OutcomeKind::Success, Some(1), 20);
        assert!(a.capacity_freed().now_or_never().is_some());
        assert!(matches!(
            a.try_start(500, 20).await,
            Err(Refusal::TokenQuota { .. })
        ));
        assert!(a.capacity_freed().now_or_never().is_none());
    }

    #[tokio::test]
    async fn concurrency_and_an_open_circuit_refuse() {
        let a = DeploymentAdmission::local(None, None, &config());
        let t1 = a.try_start(1, 0).await.unwrap();
        let _t2 = a.try_start(1, 0).await.unwrap();
        assert_eq!(a.try_start(1, 0).await.unwrap_err(), Refusal::Concurrency);
        a.finish(t1, OutcomeKind::Throttled, None, 0);
        // Halved to 1, with one still in flight.
        assert_eq!(a.snapshot(0).concurrency_limit, 1);
        assert_eq!(a.try_start(1, 0).await.unwrap_err(), Refusal::Concurrency);

        let b = DeploymentAdmission::local(None, None, &config());
        for _ in 0..5 {
            let t = b.try_start(1, 0).await.unwrap();
            b.finish(t, OutcomeKind::Unavailable, None, 0);
        }
        assert_eq!(
            b.try_start(1, 0).await.unwrap_err(),
            Refusal::CircuitOpen { wait_ms: 30_000 }
        );
        assert_eq!(b.snapshot(0).circuit, BreakerState::Open);
    }
}
