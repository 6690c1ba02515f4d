//! Account budgets on Redis: a take is one atomic script (`budget.lua`) on
//! the account's day and week hashes; settling is written afterwards with
//! the other pending writes. While Redis is unreachable the local books,
//! holding `budget / instances`, decide, as they do for quotas.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::LazyLock;

use redis::Script;

use super::super::budget::{self, BudgetGrant, BudgetSpec, BudgetUse, Spent, Window};
use super::{link, Shared};
use crate::vocabulary::Refusal;

static TAKE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("budget.lua")));
pub(super) static SETTLE: LazyLock<Script> =
    LazyLock::new(|| Script::new(include_str!("budget_settle.lua")));

/// A period's hash outlives the period by a day, so late settlements land.
const KEEP_AFTER_MS: u64 = 86_400_000;

/// Budget this instance spent on its own while Redis was away, by account
/// and period, to add to Redis's sums when the link is back.
#[derive(Debug, Default)]
pub(super) struct OutageBudget {
    spends: HashMap<Periods, OutageSpent>,
}

/// An account's day and week.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Periods {
    account: String,
    day: u64,
    week: u64,
}

/// What was spent in them, and how long to keep their sums, in ms.
#[derive(Debug, Clone, Copy)]
struct OutageSpent {
    tokens: i64,
    requests: i64,
    keep_day_ms: u64,
    keep_week_ms: u64,
}

impl OutageBudget {
    /// Adds a spend (or a settlement's correction) of `grant`'s periods,
    /// made at `now_ms` on the gateway's clock.
    pub(super) fn add(
        &mut self,
        account: &str,
        grant: &BudgetGrant,
        tokens: i64,
        requests: i64,
        now_ms: u64,
    ) {
        let keep = |window: Window, period: u64| {
            window.end_ms(period).saturating_sub(now_ms) + KEEP_AFTER_MS
        };
        let periods = Periods {
            account: account.to_owned(),
            day: grant.day,
            week: grant.week,
        };
        let spent = self.spends.entry(periods).or_insert(OutageSpent {
            tokens: 0,
            requests: 0,
            keep_day_ms: keep(Window::Day, grant.day),
            keep_week_ms: keep(Window::Week, grant.week),
        });
        spent.tokens += tokens;
        spent.requests += requests;
    }

    /// Adds every spend to `pipe`.
    pub(super) fn book(&self, keys: &super::keys::Keys, pipe: &mut redis::Pipeline) {
        for (periods, spent) in &self.spends {
            for (key, keep) in [
                (
                    keys.budget(&periods.account, Window::Day, periods.day),
                    spent.keep_day_ms,
                ),
                (
                    keys.budget(&periods.account, Window::Week, periods.week),
                    spent.keep_week_ms,
                ),
            ] {
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg("t")
                    .arg(spent.tokens)
                    .ignore();
                pipe.cmd("HINCRBY")
                    .arg(&key)
                    .arg("r")
                    .arg(spent.requests)
                    .ignore();
                // A sum a take made keeps its expiry; a new one gets one.
                pipe.cmd("PEXPIRE").arg(&key).arg(keep).arg("NX").ignore();
            }
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.spends.is_empty()
    }

    /// Adds `other`'s spends to these (a booking that did not go through).
    pub(super) fn merge(&mut self, other: OutageBudget) {
        for (periods, spent) in other.spends {
            let entry = self.spends.entry(periods).or_insert(OutageSpent {
                tokens: 0,
                requests: 0,
                ..spent
            });
            entry.tokens += spent.tokens;
            entry.requests += spent.requests;
        }
    }
}

/// What was last seen of an account's day and week.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct SeenBudget {
    day: Spent,
    week: Spent,
}

impl Shared {
    pub(super) async fn take_budget_shared(
        &self,
        spec: &BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<BudgetGrant, Refusal> {
        let current = self.conn.load_full();
        let Some(conn) = &current else {
            return self.budget_locally(spec, tokens, now_ms);
        };
        let (day, week) = (Window::Day.index(now_ms), Window::Week.index(now_ms));
        let budget = |b: Option<u64>| b.map_or(-1, |b| b as i64);
        let keep = |window: Window, period: u64| {
            window.end_ms(period).saturating_sub(now_ms) + KEEP_AFTER_MS
        };
        let mut invocation = TAKE.prepare_invoke();
        invocation
            .key(self.keys.budget(&spec.account, Window::Day, day))
            .key(self.keys.budget(&spec.account, Window::Week, week))
            .arg(tokens)
            .arg(budget(spec.daily_tokens))
            .arg(budget(spec.daily_requests))
            .arg(budget(spec.weekly_tokens))
            .arg(budget(spec.weekly_requests))
            .arg(keep(Window::Day, day))
            .arg(keep(Window::Week, week));
        let mut conn = (**conn).clone();
        let answer =
            tokio::time::timeout(self.timeout, invocation.invoke_async::<Vec<i64>>(&mut conn))
                .await;
        let reply = match answer {
            Ok(Ok(reply)) if reply.len() == 7 => reply,
            Ok(Err(e)) if link::is_link_error(&e) => {
                self.went_down(&current, &e.to_string());
                return self.budget_locally(spec, tokens, now_ms);
            }
            other => {
                // A wrong reply, an error from Redis, or a slow answer:
                // this request decides locally; the link stays.
                self.errors.fetch_add(1, Ordering::Relaxed);
                tracing::warn!(?other, "a budget take failed on Redis; decided locally");
                return self.budget_locally(spec, tokens, now_ms);
            }
        };
        let spent = |period: u64, tokens: i64, requests: i64| Spent {
            period,
            tokens: tokens.max(0) as u64,
            requests: requests.max(0) as u64,
        };
        let seen = SeenBudget {
            day: spent(day, reply[3], reply[4]),
            week: spent(week, reply[5], reply[6]),
        };
        self.seen_budgets
            .lock()
            .expect("seen budgets poisoned")
            .insert(spec.account.clone(), seen);
        if reply[0] == 0 {
            let wait_ms = [(Window::Day, day, reply[1]), (Window::Week, week, reply[2])]
                .into_iter()
                .filter(|(_, _, spent)| *spent == 1)
                .map(|(window, period, _)| window.end_ms(period).saturating_sub(now_ms))
                .max()
                .unwrap_or(0)
                .max(1);
            return Err(Refusal::Budget { wait_ms });
        }
        // The local books follow this instance's spends, for an outage.
        self.local.record_budget_spend(spec, tokens, now_ms);
        Ok(BudgetGrant {
            day,
            week,
            tokens,
            shared: true,
        })
    }

    fn budget_locally(
        &self,
        spec: &BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> Result<BudgetGrant, Refusal> {
        self.local_decisions.fetch_add(1, Ordering::Relaxed);
        let grant = self.local.take_budget_now(spec, tokens, now_ms)?;
        self.outage_budget
            .lock()
            .expect("outage budget poisoned")
            .add(&spec.account, &grant, tokens as i64, 1, now_ms);
        Ok(grant)
    }

    /// `spec`'s account as last seen on Redis (or in the local books while
    /// Redis is away).
    pub(super) fn budget_seen(&self, spec: &BudgetSpec, now_ms: u64) -> BudgetUse {
        if self.degraded.load(Ordering::Relaxed) {
            return self.local.budget_use_local(spec, now_ms);
        }
        let seen = self
            .seen_budgets
            .lock()
            .expect("seen budgets poisoned")
            .get(&spec.account)
            .copied()
            .unwrap_or_default();
        // A period that has turned since is all unspent.
        let current = |window: Window, spent: Spent| {
            let period = window.index(now_ms);
            if spent.period == period {
                spent
            } else {
                Spent {
                    period,
                    ..Spent::default()
                }
            }
        };
        budget::usage(
            spec,
            current(Window::Day, seen.day),
            current(Window::Week, seen.week),
            now_ms,
        )
    }
}
