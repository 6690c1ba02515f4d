//! State in this process only: the default backend, and the Redis backend's
//! stand-in while Redis is unreachable (with its limits divided by the
//! instance count).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::budget::BudgetBook;
use super::quota::{Reservation, RollingQuota};
use super::{
    BoxFuture, BudgetBooks, BudgetGrant, BudgetSpec, BudgetUse, Change, ChangeBroadcast,
    ChangeSink, GrantSource, QuotaBooks, QuotaGrant, QuotaSpec, QuotaView, StateBackend,
    StateStatus, UserPresence,
};
use crate::vocabulary::Refusal;

/// One deployment's quotas and the reservations still open against them.
#[derive(Debug)]
struct LocalQuotas {
    rpm: Option<RollingQuota>,
    tpm: Option<RollingQuota>,
    open: HashMap<u64, (Option<Reservation>, Option<Reservation>)>,
    next_grant: u64,
}

impl LocalQuotas {
    fn new(spec: &QuotaSpec, divisor: u64, window_ms: u64) -> Self {
        // Each of `divisor` instances gets its share, and at least one.
        let share = |limit: u64| RollingQuota::new((limit / divisor).max(1), window_ms);
        Self {
            rpm: spec.rpm.map(share),
            tpm: spec.tpm.map(share),
            open: HashMap::new(),
            next_grant: 0,
        }
    }

    fn reserve(&mut self, tokens: u64, now_ms: u64) -> Result<QuotaGrant, Refusal> {
        if let Some(rpm) = self.rpm.as_mut() {
            let wait_ms = rpm.wait_for(1, now_ms);
            if wait_ms > 0 {
                return Err(Refusal::RequestQuota { wait_ms });
            }
        }
        if let Some(tpm) = self.tpm.as_mut() {
            let wait_ms = tpm.wait_for(tokens, now_ms);
            if wait_ms > 0 {
                return Err(Refusal::TokenQuota { wait_ms });
            }
        }
        Ok(self.take(tokens, now_ms))
    }

    /// Takes the tokens whether or not they fit (they were spent elsewhere).
    fn take(&mut self, tokens: u64, now_ms: u64) -> QuotaGrant {
        let rpm = self.rpm.as_mut().map(|q| q.force_reserve(1, now_ms));
        let tpm = self.tpm.as_mut().map(|q| q.force_reserve(tokens, now_ms));
        let id = self.next_grant;
        self.next_grant += 1;
        if rpm.is_some() || tpm.is_some() {
            self.open.insert(id, (rpm, tpm));
        }
        QuotaGrant {
            source: GrantSource::Local,
            id,
            mirror: None,
            rpm: rpm.is_some(),
            tpm: tpm.is_some(),
            tokens: if tpm.is_some() { tokens } else { 0 },
        }
    }

    fn settle(&mut self, id: u64, request: bool, used_tokens: u64, now_ms: u64) {
        let Some((rpm, tpm)) = self.open.remove(&id) else {
            return;
        };
        if let (Some(r), Some(q), false) = (rpm, self.rpm.as_mut(), request) {
            q.settle(r, 0, now_ms);
        }
        if let (Some(r), Some(q)) = (tpm, self.tpm.as_mut()) {
            q.settle(r, used_tokens, now_ms);
        }
    }

    fn view(&mut self, now_ms: u64) -> QuotaView {
        let rpm_used = self.rpm.as_mut().map_or(0, |q| q.used_permille(now_ms));
        let tpm_used = self.tpm.as_mut().map_or(0, |q| q.used_permille(now_ms));
        QuotaView {
            rpm_limit: self.rpm.as_ref().map(RollingQuota::limit),
            rpm_available: self.rpm.as_mut().map(|q| q.available(now_ms)),
            tpm_limit: self.tpm.as_ref().map(RollingQuota::limit),
            tpm_available: self.tpm.as_mut().map(|q| q.available(now_ms)),
            used_permille: rpm_used.max(tpm_used),
        }
    }

    fn wait_ms(&mut self, tokens: u64, now_ms: u64) -> u64 {
        let rpm = self.rpm.as_mut().map_or(0, |q| q.wait_for(1, now_ms));
        let tpm = self.tpm.as_mut().map_or(0, |q| q.wait_for(tokens, now_ms));
        rpm.max(tpm)
    }
}

/// Books made after the start: (rpm, tpm) limits and the books.
type AddedQuotas = HashMap<String, ((Option<u64>, Option<u64>), LocalQuotas)>;

/// Quotas kept in this process; nothing is shared.
#[derive(Debug)]
pub struct MemoryState {
    quotas: HashMap<String, Mutex<LocalQuotas>>,
    /// Keys' and teams' books, by pool, with the limits they were made for.
    added: Mutex<AddedQuotas>,
    window_ms: u64,
    /// By account, made at its first request.
    budgets: Mutex<HashMap<String, BudgetBook>>,
    divisor: u64,
}

impl MemoryState {
    /// Books for `quotas`, each limit divided by `divisor` (the instance
    /// count when this stands in for a shared store; 1 otherwise). Spent
    /// quota comes back `window_ms` after it was spent.
    pub fn new(quotas: &[QuotaSpec], divisor: u32, window_ms: u64) -> Self {
        let divisor = u64::from(divisor.max(1));
        Self {
            quotas: quotas
                .iter()
                .map(|q| {
                    let books = LocalQuotas::new(q, divisor, window_ms);
                    (q.pool.clone(), Mutex::new(books))
                })
                .collect(),
            budgets: Mutex::new(HashMap::new()),
            added: Mutex::new(HashMap::new()),
            window_ms,
            divisor,
        }
    }

    /// Runs `f` on the books of `budget`'s account (each budget divided by
    /// the divisor, as quotas are).
    fn with_budget<R>(&self, budget: &BudgetSpec, f: impl FnOnce(&mut BudgetBook) -> R) -> R {
        let mut books = self.budgets.lock().expect("budget books poisoned");
        // Looked up first: this runs for every attempt and every candidate
        // snapshot, and only an account's first request needs its name copied.
        if !books.contains_key(&budget.account) {
            let book = BudgetBook::new(budget.share(self.divisor));
            books.insert(budget.account.clone(), book);
        }
        f(books
            .get_mut(&budget.account)
            .expect("inserted above when missing"))
    }

    /// Takes from `budget`'s account at once, or says why not.
    pub fn take_budget_now(
        &self,
        budget: &BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<BudgetGrant, Refusal> {
        self.with_budget(budget, |b| b.take(tokens, now_ms))
    }

    /// Books a budget spend made through another store.
    pub fn record_budget_spend(&self, budget: &BudgetSpec, tokens: u64, now_ms: u64) {
        self.with_budget(budget, |b| b.force_take(tokens, now_ms));
    }

    /// Settles `grant` in these books.
    pub fn settle_budget_local(
        &self,
        budget: &BudgetSpec,
        grant: &BudgetGrant,
        request: bool,
        used_tokens: u64,
    ) {
        self.with_budget(budget, |b| b.settle(grant, request, used_tokens));
    }

    /// `budget`'s account in these books.
    pub fn budget_use_local(&self, budget: &BudgetSpec, now_ms: u64) -> BudgetUse {
        self.with_budget(budget, |b| b.usage(now_ms))
    }

    /// Runs `f` on `quota`'s books: a deployment's, made at the start, or
    /// a key's or a team's, made at its first request and made again when
    /// its limits change. `None`: the quota is not limited.
    fn with_books<R>(&self, quota: &QuotaSpec, f: impl FnOnce(&mut LocalQuotas) -> R) -> Option<R> {
        if let Some(books) = self.quotas.get(&quota.pool) {
            return Some(f(&mut books.lock().expect("quota books poisoned")));
        }
        if quota.rpm.is_none() && quota.tpm.is_none() {
            return None;
        }
        let mut added = self.added.lock().expect("quota books poisoned");
        let books = match added.get_mut(&quota.pool) {
            Some((limits, books)) if *limits == (quota.rpm, quota.tpm) => books,
            _ => {
                let books = LocalQuotas::new(quota, self.divisor, self.window_ms);
                added.insert(quota.pool.clone(), ((quota.rpm, quota.tpm), books));
                &mut added.get_mut(&quota.pool).expect("inserted above").1
            }
        };
        Some(f(books))
    }

    /// Takes the quota at once, or says why not.
    pub fn reserve_now(
        &self,
        quota: &QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<QuotaGrant, Refusal> {
        match self.with_books(quota, |books| books.reserve(tokens, now_ms)) {
            Some(answer) => answer,
            None => Ok(QuotaGrant {
                source: GrantSource::Local,
                id: u64::MAX,
                mirror: None,
                rpm: false,
                tpm: false,
                tokens: 0,
            }),
        }
    }

    /// Books a spend made through another store, so these books stay a
    /// conservative picture of this instance's own use.
    pub fn record_spend(&self, quota: &QuotaSpec, tokens: u64, now_ms: u64) -> Option<u64> {
        self.with_books(quota, |b| b.take(tokens, now_ms).id)
    }

    /// Settles grant `id` of these books.
    pub fn settle_local(
        &self,
        quota: &QuotaSpec,
        id: u64,
        request: bool,
        used_tokens: u64,
        now_ms: u64,
    ) {
        self.with_books(quota, |books| {
            books.settle(id, request, used_tokens, now_ms)
        });
    }
}

/// One machine: nobody to tell.
impl ChangeBroadcast for MemoryState {
    fn publish(&self, _change: Change) {}
}

impl QuotaBooks for MemoryState {
    fn reserve<'a>(
        &'a self,
        quota: &'a QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<QuotaGrant, Refusal>> {
        let answer = self.reserve_now(quota, tokens, now_ms);
        Box::pin(std::future::ready(answer))
    }

    fn settle(
        &self,
        quota: &QuotaSpec,
        grant: QuotaGrant,
        request: bool,
        used_tokens: u64,
        now_ms: u64,
    ) {
        self.settle_local(quota, grant.id, request, used_tokens, now_ms);
    }

    fn quota_view(&self, quota: &QuotaSpec, now_ms: u64) -> QuotaView {
        self.with_books(quota, |b| b.view(now_ms))
            .unwrap_or_default()
    }

    fn quota_wait_ms(&self, quota: &QuotaSpec, tokens: u64, now_ms: u64) -> u64 {
        self.with_books(quota, |b| b.wait_ms(tokens, now_ms))
            .unwrap_or(0)
    }
}

impl BudgetBooks for MemoryState {
    fn take_budget<'a>(
        &'a self,
        budget: &'a BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<BudgetGrant, Refusal>> {
        Box::pin(std::future::ready(
            self.take_budget_now(budget, tokens, now_ms),
        ))
    }

    fn settle_budget(
        &self,
        budget: &BudgetSpec,
        grant: BudgetGrant,
        request: bool,
        used_tokens: u64,
    ) {
        self.settle_budget_local(budget, &grant, request, used_tokens);
    }

    fn budget_use(&self, budget: &BudgetSpec, now_ms: u64) -> BudgetUse {
        self.budget_use_local(budget, now_ms)
    }
}

impl UserPresence for MemoryState {
    fn user_running(&self, _user: &str, _running: u32) {}

    fn running_elsewhere(&self, _user: &str) -> u32 {
        0
    }
}

impl StateBackend for MemoryState {
    fn attach(&self, _sink: &Arc<dyn ChangeSink>) {}

    fn status(&self) -> StateStatus {
        StateStatus {
            backend: "memory".into(),
            instance: "local".into(),
            ..StateStatus::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(rpm: Option<u64>, tpm: Option<u64>) -> QuotaSpec {
        QuotaSpec {
            deployment: "a".into(),
            pool: "default/us-east-1/a".into(),
            rpm,
            tpm,
        }
    }

    #[test]
    fn an_empty_request_quota_refuses_with_the_wait() {
        let q = spec(Some(2), None);
        let m = MemoryState::new(std::slice::from_ref(&q), 1, 60_000);
        let g = m.reserve_now(&q, 10, 0).unwrap();
        m.settle(&q, g, true, 0, 100);
        let g = m.reserve_now(&q, 10, 1_000).unwrap();
        m.settle(&q, g, true, 0, 1_100);
        assert_eq!(
            m.reserve_now(&q, 10, 2_000).unwrap_err(),
            Refusal::RequestQuota { wait_ms: 58_000 }
        );
        assert_eq!(m.quota_wait_ms(&q, 10, 2_000), 58_000);
        assert_eq!(m.quota_view(&q, 2_000).used_permille, 1000);
        assert!(m.reserve_now(&q, 10, 60_000).is_ok());
    }

    #[test]
    fn tokens_are_reserved_then_settled_to_the_usage() {
        let q = spec(None, Some(10_000));
        let m = MemoryState::new(std::slice::from_ref(&q), 1, 60_000);
        let g = m.reserve_now(&q, 6_000, 0).unwrap();
        assert!(matches!(
            m.reserve_now(&q, 6_000, 0),
            Err(Refusal::TokenQuota { .. })
        ));
        m.settle(&q, g, true, 1_000, 10);
        assert_eq!(m.quota_view(&q, 10).tpm_available, Some(9_000));
        // A throttled attempt used nothing.
        let g = m.reserve_now(&q, 6_000, 20).unwrap();
        m.settle(&q, g, false, 0, 30);
        assert_eq!(m.quota_view(&q, 30).tpm_available, Some(9_000));
    }

    #[test]
    fn a_share_is_the_limit_divided_by_the_instances() {
        let q = spec(Some(120), Some(90_000));
        let m = MemoryState::new(std::slice::from_ref(&q), 3, 60_000);
        let view = m.quota_view(&q, 0);
        assert_eq!((view.rpm_limit, view.tpm_limit), (Some(40), Some(30_000)));
    }
}
