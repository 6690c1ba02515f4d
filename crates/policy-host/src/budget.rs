//! Account budgets beyond a minute: tokens and requests an account may
//! spend in a UTC day and in a week (Monday to Sunday, UTC), on top of
//! Bedrock's per-minute quotas. An account is what deployments share with
//! `account = "..."`; its budgets cover all of them together.
//!
//! [`BudgetBook`] is the arithmetic, without IO: the memory backend keeps
//! one per account, the Redis backend's script does the same sums on the
//! server, and the lab keeps one per simulated account.

use serde::Serialize;

use crate::vocabulary::Refusal;

const DAY_MS: u64 = 86_400_000;

/// One account's budgets, as configured. A budget left out is unlimited.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BudgetSpec {
    /// The account, as deployments name it.
    pub account: String,
    pub daily_tokens: Option<u64>,
    pub weekly_tokens: Option<u64>,
    pub daily_requests: Option<u64>,
    pub weekly_requests: Option<u64>,
}

impl BudgetSpec {
    /// Whether any budget is set.
    pub fn is_limited(&self) -> bool {
        self.daily_tokens
            .or(self.weekly_tokens)
            .or(self.daily_requests)
            .or(self.weekly_requests)
            .is_some()
    }

    /// The same budgets, each divided among `instances` (at least 1 each):
    /// what one instance may decide alone while the shared store is away.
    pub fn share(&self, instances: u64) -> Self {
        let share = |b: Option<u64>| b.map(|b| (b / instances.max(1)).max(1));
        Self {
            account: self.account.clone(),
            daily_tokens: share(self.daily_tokens),
            weekly_tokens: share(self.weekly_tokens),
            daily_requests: share(self.daily_requests),
            weekly_requests: share(self.weekly_requests),
        }
    }

    fn limits(&self, window: Window) -> (Option<u64>, Option<u64>) {
        match window {
            Window::Day => (self.daily_tokens, self.daily_requests),
            Window::Week => (self.weekly_tokens, self.weekly_requests),
        }
    }
}

/// The periods budgets are counted in, on the gateway's clock (UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Window {
    /// A calendar day, from 00:00 UTC.
    Day,
    /// A week, from Monday 00:00 UTC.
    Week,
}

impl Window {
    /// Both, day first.
    pub const ALL: [Window; 2] = [Window::Day, Window::Week];

    /// The number of the period `now_ms` falls in.
    pub fn index(self, now_ms: u64) -> u64 {
        let day = now_ms / DAY_MS;
        match self {
            Window::Day => day,
            // 1970-01-01 was a Thursday: Monday 1970-01-05 begins week 1.
            Window::Week => (day + 3) / 7,
        }
    }

    /// When period `index` ends, in ms.
    pub fn end_ms(self, index: u64) -> u64 {
        match self {
            Window::Day => (index + 1) * DAY_MS,
            Window::Week => ((index + 1) * 7 - 3) * DAY_MS,
        }
    }

    /// A short name, for keys and reports.
    pub fn name(self) -> &'static str {
        match self {
            Window::Day => "day",
            Window::Week => "week",
        }
    }
}

/// What one account spent in one period.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct Spent {
    /// Which period (see [`Window::index`]).
    pub period: u64,
    pub tokens: u64,
    pub requests: u64,
}

/// What an attempt took from its account's budgets, settled when it ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BudgetGrant {
    /// The day and the week it was taken in.
    pub day: u64,
    pub week: u64,
    /// The tokens taken (the request's estimate).
    pub tokens: u64,
    /// Taken from the shared store's books (else this process's).
    pub shared: bool,
}

/// An account's budgets and what is spent of them now.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BudgetUse {
    pub day: Spent,
    pub week: Spent,
    /// The fullest of its budgets, in thousandths.
    pub used_permille: u32,
    /// Milliseconds until a budget that is spent renews (0: none is spent).
    pub wait_ms: u64,
}

impl BudgetGrant {
    /// When the day it was taken in began, in ms.
    pub fn day_start_ms(&self) -> u64 {
        self.day * DAY_MS
    }
}

/// One account's spending in its current day and week.
#[derive(Debug, Clone)]
pub struct BudgetBook {
    spec: BudgetSpec,
    day: Spent,
    week: Spent,
}

impl BudgetBook {
    pub fn new(spec: BudgetSpec) -> Self {
        Self {
            spec,
            day: Spent::default(),
            week: Spent::default(),
        }
    }

    /// Its budgets.
    pub fn spec(&self) -> &BudgetSpec {
        &self.spec
    }

    /// Takes a request and `tokens`, or says which budget is spent and
    /// until when.
    pub fn take(&mut self, tokens: u64, now_ms: u64) -> Result<BudgetGrant, Refusal> {
        self.roll(now_ms);
        let wait_ms = self.wait_for(tokens, now_ms);
        if wait_ms > 0 {
            return Err(Refusal::Budget { wait_ms });
        }
        Ok(self.force_take(tokens, now_ms))
    }

    /// Takes them whether or not they fit (they were spent elsewhere).
    pub fn force_take(&mut self, tokens: u64, now_ms: u64) -> BudgetGrant {
        self.roll(now_ms);
        for spent in [&mut self.day, &mut self.week] {
            spent.tokens += tokens;
            spent.requests += 1;
        }
        BudgetGrant {
            day: self.day.period,
            week: self.week.period,
            tokens,
            shared: false,
        }
    }

    /// The attempt holding `grant` ended: it counted as a request or not,
    /// and used `used_tokens`. A period that has ended is not revised.
    pub fn settle(&mut self, grant: &BudgetGrant, request: bool, used_tokens: u64) {
        for (spent, period) in [(&mut self.day, grant.day), (&mut self.week, grant.week)] {
            if spent.period != period {
                continue;
            }
            spent.tokens = (spent.tokens + used_tokens).saturating_sub(grant.tokens);
            if !request {
                spent.requests = spent.requests.saturating_sub(1);
            }
        }
    }

    /// What is spent now, and how full the fullest budget is.
    pub fn usage(&mut self, now_ms: u64) -> BudgetUse {
        self.roll(now_ms);
        usage(&self.spec, self.day, self.week, now_ms)
    }

    /// Milliseconds until a request of `tokens` fits every budget.
    fn wait_for(&self, tokens: u64, now_ms: u64) -> u64 {
        wait_for(&self.spec, self.day, self.week, tokens, now_ms)
    }

    /// Starts the day or week afresh once it has turned.
    fn roll(&mut self, now_ms: u64) {
        for (window, spent) in [(Window::Day, &mut self.day), (Window::Week, &mut self.week)] {
            let period = window.index(now_ms);
            if spent.period != period {
                *spent = Spent {
                    period,
                    ..Spent::default()
                };
            }
        }
    }
}

/// Milliseconds until a request of `tokens` fits `spec`'s budgets, given
/// what is spent in the current day and week (0: it fits now).
pub fn wait_for(spec: &BudgetSpec, day: Spent, week: Spent, tokens: u64, now_ms: u64) -> u64 {
    let mut wait = 0;
    for (window, spent) in [(Window::Day, day), (Window::Week, week)] {
        let (token_limit, request_limit) = spec.limits(window);
        let over = token_limit.is_some_and(|l| spent.tokens + tokens > l)
            || request_limit.is_some_and(|l| spent.requests + 1 > l);
        if over {
            wait = wait.max(window.end_ms(spent.period).saturating_sub(now_ms).max(1));
        }
    }
    wait
}

/// `spec`'s use, given what is spent in the current day and week.
pub fn usage(spec: &BudgetSpec, day: Spent, week: Spent, now_ms: u64) -> BudgetUse {
    let permille = |used: u64, limit: Option<u64>| {
        limit.map_or(0, |l| {
            (used.min(l) * 1000)
                .checked_div(l)
                .map_or(1000, |p| p as u32)
        })
    };
    let mut used_permille = 0;
    let mut wait_ms = 0;
    for (window, spent) in [(Window::Day, day), (Window::Week, week)] {
        let (tokens, requests) = spec.limits(window);
        let used = permille(spent.tokens, tokens).max(permille(spent.requests, requests));
        used_permille = used_permille.max(used);
        if used >= 1000 {
            wait_ms = wait_ms.max(window.end_ms(spent.period).saturating_sub(now_ms));
        }
    }
    BudgetUse {
        day,
        week,
        used_permille,
        wait_ms,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Monday 2026-11-30 00:00 UTC.
    const MONDAY_MS: u64 = 1_795_996_800_000;

    fn spec() -> BudgetSpec {
        BudgetSpec {
            account: "a".into(),
            daily_requests: Some(2),
            weekly_tokens: Some(1_000),
            ..BudgetSpec::default()
        }
    }

    #[test]
    fn weeks_begin_on_monday_and_days_at_midnight_utc() {
        let monday = Window::Week.index(MONDAY_MS);
        assert_eq!(
            Window::Week.index(MONDAY_MS - 1),
            monday - 1,
            "Sunday night"
        );
        assert_eq!(Window::Week.index(MONDAY_MS + 7 * DAY_MS - 1), monday);
        assert_eq!(Window::Week.end_ms(monday), MONDAY_MS + 7 * DAY_MS);
        let day = Window::Day.index(MONDAY_MS + 5);
        assert_eq!(Window::Day.end_ms(day), MONDAY_MS + DAY_MS);
    }

    #[test]
    fn a_spent_daily_budget_refuses_until_midnight_and_then_renews() {
        let mut book = BudgetBook::new(spec());
        let noon = MONDAY_MS + DAY_MS / 2;
        book.take(10, noon).unwrap();
        book.take(10, noon).unwrap();
        assert_eq!(
            book.take(10, noon).unwrap_err(),
            Refusal::Budget {
                wait_ms: DAY_MS / 2
            }
        );
        assert_eq!(book.usage(noon).used_permille, 1000);
        book.take(10, MONDAY_MS + DAY_MS).unwrap();
        assert_eq!(book.usage(MONDAY_MS + DAY_MS).week.tokens, 30);
    }

    #[test]
    fn settling_counts_what_was_used_and_a_refused_call_is_no_request() {
        let mut book = BudgetBook::new(spec());
        let grant = book.take(400, MONDAY_MS).unwrap();
        book.settle(&grant, true, 100);
        assert_eq!(book.usage(MONDAY_MS).week.tokens, 100);
        let grant = book.take(400, MONDAY_MS).unwrap();
        book.settle(&grant, false, 0);
        let usage = book.usage(MONDAY_MS);
        assert_eq!((usage.day.requests, usage.week.tokens), (1, 100));
        // The weekly token budget: 100 spent, 901 do not fit, 900 do.
        assert!(book.take(901, MONDAY_MS).is_err());
        book.take(900, MONDAY_MS).unwrap();
        assert_eq!(book.usage(MONDAY_MS).used_permille, 1000);
    }

    #[test]
    fn a_grant_of_a_period_that_ended_does_not_revise_the_new_one() {
        let mut book = BudgetBook::new(spec());
        let grant = book.take(500, MONDAY_MS + DAY_MS - 1).unwrap();
        book.take(10, MONDAY_MS + DAY_MS).unwrap();
        book.settle(&grant, false, 0);
        let usage = book.usage(MONDAY_MS + DAY_MS);
        assert_eq!(usage.day.requests, 1, "today's request stays");
        assert_eq!(usage.week.tokens, 10, "the week's tokens are settled");
    }
}
