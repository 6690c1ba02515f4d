//! What calls cost and who may spend more: the price table, key and team
//! limits (RPM, TPM and token and USD budgets), and the books spend is
//! kept in, for budgets, the usage report and the metrics.
//!
//! A call is admitted by [`Spending::admit`] before it waits for its turn:
//! its key's and team's budgets are read (one round trip, only when a
//! budget is set), and a request and its estimated tokens are taken from
//! their RPM and TPM quotas (the same books, and on Redis the same
//! scripts, as deployments' quotas). What it gets is a [`Bill`]: every
//! upstream call the request makes books its usage there, priced, and the
//! bill settles the quotas to what was used when its last holder (a
//! stream's end, for one) lets go of it.

pub mod counters;
pub mod ledger;
pub mod period;
pub mod prices;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use crate::clock::SharedClock;
use crate::keys::{Limits, Tenant};
use crate::metrics::Metrics;
use crate::state::{QuotaBooks, QuotaGrant, QuotaSpec};
use crate::upstream::TokenUsage;
use counters::{Add, Counters, Sums};
use ledger::{Ledger, Row};
use period::Period;
use prices::{nano_usd, usd, PriceTable};

/// How long a day's usage is kept for reports: 400 days, so a year can be
/// compared with the one before.
const USAGE_KEPT_MS: u64 = 400 * 86_400_000;
/// A budget period's sums outlive it by a day, so late bookings land.
const SPEND_KEPT_AFTER_MS: u64 = 86_400_000;

/// Prices, limits and the books of spend.
pub struct Spending {
    prices: ArcSwap<PriceTable>,
    counters: Counters,
    ledger: Ledger,
    quotas: Arc<dyn QuotaBooks>,
    clock: SharedClock,
    metrics: Arc<Metrics>,
}

/// Whose limits refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holder {
    Key,
    Team,
}

/// Which limit refused it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Requests or tokens per minute.
    Rate,
    /// A token or USD budget of a day, a week or a month.
    Budget,
}

/// A call refused by its key's or its team's limits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct OverLimit {
    pub holder: Holder,
    pub limit: Limit,
    pub message: String,
    /// When the limit lets the call through again.
    pub retry_after_ms: u64,
}

impl Spending {
    pub fn new(
        prices: PriceTable,
        counters: Counters,
        prefix: &str,
        quotas: Arc<dyn QuotaBooks>,
        clock: SharedClock,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            prices: ArcSwap::from_pointee(prices),
            counters,
            ledger: Ledger::new(prefix),
            quotas,
            clock,
            metrics,
        }
    }

    /// Prices every booking from now on with `prices`.
    pub fn set_prices(&self, prices: PriceTable) {
        self.prices.store(Arc::new(prices));
    }

    /// The price table in force.
    pub fn prices(&self) -> Arc<PriceTable> {
        self.prices.load_full()
    }

    /// Admits a call of `tenant` (`None`: without a key) to `group` with
    /// `estimated_tokens`, or refuses it with 429 and when to retry.
    pub async fn admit(
        self: &Arc<Self>,
        tenant: Option<&Arc<Tenant>>,
        group: &str,
        estimated_tokens: u64,
    ) -> Result<Bill, OverLimit> {
        let mut grants = Vec::new();
        if let Some(tenant) = tenant.filter(|t| t.is_limited()) {
            let now_ms = self.clock.now_ms();
            self.check_budgets(tenant, now_ms).await?;
            for (holder, subject, limits) in subjects(tenant) {
                let Some(quota) = quota_of(&subject, limits) else {
                    continue;
                };
                match self.quotas.reserve(&quota, estimated_tokens, now_ms).await {
                    Ok(grant) => grants.push((quota, grant)),
                    Err(refusal) => {
                        // What the key took, the team's refusal gives back.
                        for (quota, grant) in grants {
                            self.quotas.settle(&quota, grant, false, 0, now_ms);
                        }
                        return Err(rate_limited(holder, &subject, refusal.wait_ms()));
                    }
                }
            }
        }
        Ok(Bill(Arc::new(BillInner {
            spending: self.clone(),
            tenant: tenant.cloned(),
            group: group.to_owned(),
            grants: Mutex::new(grants),
            used_tokens: AtomicU64::new(0),
            counted: AtomicBool::new(false),
        })))
    }

    /// Refuses a call whose key or team has spent a budget.
    async fn check_budgets(&self, tenant: &Tenant, now_ms: u64) -> Result<(), OverLimit> {
        let budgeted: Vec<_> = subjects(tenant)
            .into_iter()
            .filter(|(_, _, limits)| limits.has_budget())
            .collect();
        if budgeted.is_empty() {
            return Ok(());
        }
        let hashes: Vec<String> = budgeted
            .iter()
            .flat_map(|(_, subject, _)| {
                Period::ALL.map(|p| self.ledger.spend_hash(subject, p, now_ms))
            })
            .collect();
        let sums = match self.counters.read(&hashes).await {
            Ok(sums) => sums,
            Err(e) => {
                // A budget is not worth failing every request over: the
                // call goes on, and is booked when the store is back.
                tracing::warn!(error = %crate::error_chain::render(&e), "budgets could not be read; the call goes on unchecked");
                return Ok(());
            }
        };
        let mut sums = sums.into_iter();
        for (holder, subject, limits) in &budgeted {
            for period in Period::ALL {
                let spent = sums.next().unwrap_or_default();
                if let Some(what) = spent_budget(limits, period, &spent) {
                    let retry_after_ms = period.end_ms(now_ms).saturating_sub(now_ms).max(1);
                    return Err(budget_exhausted(
                        *holder,
                        subject,
                        period,
                        &what,
                        retry_after_ms,
                    ));
                }
            }
        }
        Ok(())
    }

    /// What `subject` (`key:<id>` | `team:<name>`) spent in the current
    /// day, week and month: (tokens, nano-USD) each.
    pub async fn spent(
        &self,
        subject: &str,
    ) -> Result<[(Period, u64, u64); 3], counters::CountersError> {
        let now_ms = self.clock.now_ms();
        let hashes = Period::ALL.map(|p| self.ledger.spend_hash(subject, p, now_ms));
        let sums = self.counters.read(&hashes).await?;
        let of = |s: &Sums, f: &str| s.get(f).copied().unwrap_or(0).max(0) as u64;
        Ok([0, 1, 2].map(|i| (Period::ALL[i], of(&sums[i], "t"), of(&sums[i], "u"))))
    }

    /// Each day's usage from day `from` to day `to`, inclusive.
    pub async fn usage(
        &self,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Sums)>, counters::CountersError> {
        let days: Vec<u64> = (from..=to).collect();
        let hashes: Vec<String> = days.iter().map(|d| self.ledger.usage_hash(*d)).collect();
        let sums = self.counters.read(&hashes).await?;
        Ok(days.into_iter().zip(sums).collect())
    }

    /// Today's day number on the gateway's clock.
    pub fn today(&self) -> u64 {
        self.clock.now_ms() / 86_400_000
    }
}

/// The key and the team of `tenant`, as spend subjects, with their limits.
fn subjects(tenant: &Tenant) -> Vec<(Holder, String, &Limits)> {
    let mut subjects = vec![(
        Holder::Key,
        format!("key:{}", tenant.key_id),
        &tenant.key_limits,
    )];
    if !tenant.team.is_empty() {
        subjects.push((
            Holder::Team,
            format!("team:{}", tenant.team),
            &tenant.team_limits,
        ));
    }
    subjects
}

/// The quota books of a subject's RPM and TPM, when it has either.
fn quota_of(subject: &str, limits: &Limits) -> Option<QuotaSpec> {
    (limits.rpm.is_some() || limits.tpm.is_some()).then(|| QuotaSpec {
        deployment: subject.to_owned(),
        pool: subject.to_owned(),
        rpm: limits.rpm,
        tpm: limits.tpm,
    })
}

/// The token and USD budgets `limits` set for `period`.
pub fn budgets(limits: &Limits, period: Period) -> (Option<u64>, Option<f64>) {
    match period {
        Period::Day => (limits.daily_tokens, limits.daily_usd),
        Period::Week => (limits.weekly_tokens, limits.weekly_usd),
        Period::Month => (limits.monthly_tokens, limits.monthly_usd),
    }
}

/// Which budget of `period` is spent, described for people.
fn spent_budget(limits: &Limits, period: Period, spent: &Sums) -> Option<String> {
    let (tokens, dollars) = budgets(limits, period);
    let of = |f: &str| spent.get(f).copied().unwrap_or(0).max(0) as u64;
    if let Some(budget) = tokens.filter(|b| of("t") >= *b) {
        return Some(format!("{budget} tokens"));
    }
    dollars
        .filter(|b| of("u") >= nano_usd(*b))
        .map(|b| format!("${b:.2}"))
}

fn rate_limited(holder: Holder, subject: &str, wait_ms: u64) -> OverLimit {
    OverLimit {
        holder,
        limit: Limit::Rate,
        message: format!(
            "{} is over its requests or tokens per minute; retry in {} s",
            describe(subject),
            wait_ms.div_ceil(1000)
        ),
        retry_after_ms: wait_ms.max(1),
    }
}

fn budget_exhausted(
    holder: Holder,
    subject: &str,
    period: Period,
    what: &str,
    retry_after_ms: u64,
) -> OverLimit {
    OverLimit {
        holder,
        limit: Limit::Budget,
        message: format!(
            "{} has spent its {} budget of {what}; it renews at the start of the next UTC {}",
            describe(subject),
            period.name(),
            period.name()
        ),
        retry_after_ms,
    }
}

/// `key:<id>` as "key `<id>`", `team:<name>` as "team `<name>`".
fn describe(subject: &str) -> String {
    match subject.split_once(':') {
        Some((kind, name)) => format!("{kind} `{name}`"),
        None => subject.to_owned(),
    }
}

/// What one call may spend, and what it did: cloned into every upstream
/// call of the request, settled when the last clone goes.
#[derive(Clone)]
pub struct Bill(Arc<BillInner>);

struct BillInner {
    spending: Arc<Spending>,
    tenant: Option<Arc<Tenant>>,
    group: String,
    /// The key's and team's RPM/TPM quota it holds.
    grants: Mutex<Vec<(QuotaSpec, QuotaGrant)>>,
    /// Every token its calls used, to settle the TPM quotas with.
    used_tokens: AtomicU64,
    /// Whether it has been counted as a request in the books.
    counted: AtomicBool,
}

impl std::fmt::Debug for Bill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bill")
            .field("tenant", &self.0.tenant)
            .field("group", &self.0.group)
            .finish_non_exhaustive()
    }
}

impl Bill {
    /// One upstream call on `deployment` (which calls `model` under
    /// `account`) used `usage`: priced and booked to the key, its team and
    /// user, the model group, the deployment and the account.
    pub fn book(&self, deployment: &str, account: &str, model: &str, usage: &TokenUsage) {
        let bill = &self.0;
        let spending = &bill.spending;
        bill.used_tokens.fetch_add(usage.total(), Ordering::Relaxed);
        let cost = spending.prices.load().cost_nano_usd(model, usage);
        let tenant = bill.tenant.as_deref();
        let team = tenant.map_or("", |t| t.team.as_str());
        spending
            .metrics
            .team_spend(team, &bill.group, usage, usd(cost));
        let row = Row {
            team: team.to_owned(),
            key: tenant.map_or_else(String::new, |t| t.key_id.clone()),
            user: tenant.and_then(|t| t.user.clone()).unwrap_or_default(),
            group: bill.group.clone(),
            deployment: deployment.to_owned(),
            account: account.to_owned(),
            model: model.to_owned(),
        };
        let first = !bill.counted.swap(true, Ordering::Relaxed);
        let now_ms = spending.clock.now_ms();
        let day_hash = spending.ledger.usage_hash(now_ms / 86_400_000);
        let mut adds = Vec::with_capacity(12);
        let quantities = [
            (ledger::REQUESTS, u64::from(first)),
            (ledger::INPUT, usage.input),
            (ledger::OUTPUT, usage.output),
            (ledger::CACHE_READ, usage.cache_read),
            (ledger::CACHE_WRITE, usage.cache_write),
            (ledger::NANO_USD, cost),
        ];
        for (quantity, count) in quantities.into_iter().filter(|(_, n)| *n > 0) {
            adds.push(Add {
                hash: day_hash.clone(),
                field: Ledger::usage_field(quantity, &row),
                delta: count as i64,
                keep_ms: USAGE_KEPT_MS,
            });
        }
        if let Some(tenant) = tenant {
            for (_, subject, _) in subjects(tenant) {
                for period in Period::ALL {
                    let hash = spending.ledger.spend_hash(&subject, period, now_ms);
                    let keep_ms = period.end_ms(now_ms) - now_ms + SPEND_KEPT_AFTER_MS;
                    for (field, count) in
                        [("t", usage.total()), ("u", cost), ("r", u64::from(first))]
                    {
                        if count > 0 {
                            adds.push(Add {
                                hash: hash.clone(),
                                field: field.to_owned(),
                                delta: count as i64,
                                keep_ms,
                            });
                        }
                    }
                }
            }
        }
        spending.counters.add(adds);
    }
}

impl Drop for BillInner {
    fn drop(&mut self) {
        let grants = std::mem::take(self.grants.get_mut().expect("bill grants poisoned"));
        if grants.is_empty() {
            return;
        }
        let used = self.used_tokens.load(Ordering::Relaxed);
        let now_ms = self.spending.clock.now_ms();
        for (quota, grant) in grants {
            self.spending
                .quotas
                .settle(&quota, grant, true, used, now_ms);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::memory::MemoryState;

    fn spending(clock: SharedClock) -> Arc<Spending> {
        Arc::new(Spending::new(
            PriceTable::default(),
            Counters::memory(),
            "t",
            Arc::new(MemoryState::new(&[], 1, 60_000)),
            clock,
            Arc::new(Metrics::default()),
        ))
    }

    fn tenant(key_limits: Limits, team_limits: Limits) -> Arc<Tenant> {
        Arc::new(Tenant {
            key_id: "key_1".into(),
            team: "search".into(),
            user: Some("alice".into()),
            model_groups: vec![],
            key_limits,
            team_limits,
        })
    }

    const SONNET: &str = "us.anthropic.claude-sonnet-4-5-20250929-v1:0";

    #[tokio::test]
    async fn a_team_is_stopped_at_its_usd_budget_until_the_next_utc_day() {
        let clock: SharedClock = crate::clock::ManualClock::new(86_400_000 * 20_000 + 3_600_000);
        let spending = spending(clock.clone());
        let tenant = tenant(
            Limits::default(),
            Limits {
                daily_usd: Some(0.01),
                ..Limits::default()
            },
        );
        // 1,000 output tokens of Sonnet 4.5: $0.015, past the budget.
        let bill = spending.admit(Some(&tenant), "claude", 10).await.unwrap();
        bill.book(
            "d1",
            "acct",
            SONNET,
            &TokenUsage {
                output: 1_000,
                ..TokenUsage::default()
            },
        );
        drop(bill);
        let e = match spending.admit(Some(&tenant), "claude", 10).await {
            Err(e) => e,
            Ok(_) => panic!("the team's budget is spent"),
        };
        assert_eq!((e.holder, e.limit), (Holder::Team, Limit::Budget));
        assert_eq!(e.retry_after_ms, 23 * 3_600_000);
        let [(_, tokens, nano), ..] = spending.spent("team:search").await.unwrap();
        assert_eq!((tokens, nano), (1_000, 15_000_000));
    }

    #[tokio::test]
    async fn a_keys_rpm_refuses_with_the_wait() {
        let clock: SharedClock = crate::clock::ManualClock::new(1_000);
        let spending = spending(clock.clone());
        let tenant = tenant(
            Limits {
                rpm: Some(2),
                ..Limits::default()
            },
            Limits::default(),
        );
        for _ in 0..2 {
            drop(spending.admit(Some(&tenant), "claude", 10).await.unwrap());
        }
        let e = match spending.admit(Some(&tenant), "claude", 10).await {
            Err(e) => e,
            Ok(_) => panic!("the key's RPM is spent"),
        };
        assert_eq!((e.holder, e.limit), (Holder::Key, Limit::Rate));
        assert!(e.retry_after_ms > 0);
    }

    #[tokio::test]
    async fn what_the_key_took_the_teams_refusal_gives_back() {
        let clock: SharedClock = crate::clock::ManualClock::new(1_000);
        let spending = spending(clock.clone());
        let rpm = |n| Limits {
            rpm: Some(n),
            ..Limits::default()
        };
        let tenant = tenant(rpm(2), rpm(1));
        drop(spending.admit(Some(&tenant), "claude", 10).await.unwrap());
        let e = match spending.admit(Some(&tenant), "claude", 10).await {
            Err(e) => e,
            Ok(_) => panic!("the team's RPM is spent"),
        };
        assert_eq!((e.holder, e.limit), (Holder::Team, Limit::Rate));
        // The same key in a team without limits: the key's second request
        // of the minute is still there, given back by the team's refusal.
        let mut elsewhere = (*tenant).clone();
        elsewhere.team = "unlimited".into();
        elsewhere.team_limits = Limits::default();
        let elsewhere = Arc::new(elsewhere);
        drop(
            spending
                .admit(Some(&elsewhere), "claude", 10)
                .await
                .unwrap(),
        );
        let e = match spending.admit(Some(&elsewhere), "claude", 10).await {
            Err(e) => e,
            Ok(_) => panic!("the key's RPM is spent"),
        };
        assert_eq!((e.holder, e.limit), (Holder::Key, Limit::Rate));
    }
}
