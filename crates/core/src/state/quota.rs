//! A deployment's RPM or TPM quota as a token bucket whose tokens come back
//! one window (a minute) after they were spent.
//!
//! Bedrock counts a quota per minute. A classic bucket (capacity N, refilled
//! continuously at N per minute) lets up to 2N through in the first minute
//! after an idle spell, and an upstream that counts a rolling minute throttles
//! the second half. Returning each spent token exactly one window later never
//! lets more than N through in any window, so the gateway stays under the
//! quota whether Bedrock counts a rolling minute or refills a bucket.
//!
//! A reservation takes tokens when an attempt starts (TPM: input tokens plus
//! `maxTokens`) and is settled to the real amount when the attempt ends, as
//! Bedrock does: the difference comes back at once, or more is taken.

use std::collections::VecDeque;

/// A quota of `limit` tokens per `window_ms`.
#[derive(Debug)]
pub struct RollingQuota {
    limit: u64,
    window_ms: u64,
    /// Tokens spent, oldest first: (when, how many, reservation id).
    spent: VecDeque<Spend>,
    in_use: u64,
    next_id: u64,
}

#[derive(Debug, Clone, Copy)]
struct Spend {
    at_ms: u64,
    amount: u64,
    id: u64,
}

/// Tokens taken from a quota, to be settled when the attempt ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reservation {
    id: u64,
    /// How many tokens it holds.
    pub amount: u64,
}

impl RollingQuota {
    /// A full quota of `limit` per `window_ms`.
    pub fn new(limit: u64, window_ms: u64) -> Self {
        Self {
            limit,
            window_ms: window_ms.max(1),
            spent: VecDeque::new(),
            in_use: 0,
            next_id: 0,
        }
    }

    /// The configured limit per window.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    fn refill(&mut self, now_ms: u64) {
        while let Some(front) = self.spent.front() {
            if front.at_ms + self.window_ms > now_ms {
                break;
            }
            self.in_use -= front.amount;
            self.spent.pop_front();
        }
    }

    /// Tokens available now.
    pub fn available(&mut self, now_ms: u64) -> u64 {
        self.refill(now_ms);
        self.limit.saturating_sub(self.in_use)
    }

    /// Share of the quota in use now, in thousandths.
    pub fn used_permille(&mut self, now_ms: u64) -> u32 {
        self.refill(now_ms);
        if self.limit == 0 {
            return 1000;
        }
        ((self.in_use.min(self.limit) * 1000) / self.limit) as u32
    }

    /// Takes `amount` tokens, or says in how many ms they will be there. A
    /// request larger than the whole limit is let through when the quota is
    /// untouched, so it is not refused forever (Bedrock would judge it).
    pub fn try_reserve(&mut self, amount: u64, now_ms: u64) -> Result<Reservation, u64> {
        self.refill(now_ms);
        let fits = self.in_use + amount <= self.limit || (self.in_use == 0 && amount > self.limit);
        if !fits {
            return Err(self.wait_for(amount, now_ms));
        }
        Ok(self.force_reserve(amount, now_ms))
    }

    /// Takes `amount` tokens even past the limit: they were spent already
    /// (through another instance's books, or before an outage).
    pub fn force_reserve(&mut self, amount: u64, now_ms: u64) -> Reservation {
        self.refill(now_ms);
        let id = self.next_id;
        self.next_id += 1;
        self.spent.push_back(Spend {
            at_ms: now_ms,
            amount,
            id,
        });
        self.in_use += amount;
        Reservation { id, amount }
    }

    /// Milliseconds until `amount` tokens are available (0 if they are).
    pub fn wait_for(&mut self, amount: u64, now_ms: u64) -> u64 {
        self.refill(now_ms);
        let need = (self.in_use + amount.min(self.limit)).saturating_sub(self.limit);
        if need == 0 {
            return 0;
        }
        let mut freed = 0;
        for s in &self.spent {
            freed += s.amount;
            if freed >= need {
                return (s.at_ms + self.window_ms).saturating_sub(now_ms).max(1);
            }
        }
        self.window_ms
    }

    /// Settles `reservation` to what the attempt really used: the difference
    /// comes back now, or more is taken (even past the limit: it was spent).
    /// A reservation whose window has passed is already back in full.
    pub fn settle(&mut self, reservation: Reservation, actual: u64, now_ms: u64) {
        self.refill(now_ms);
        // Ids grow with each reservation and leave from the front, so the
        // queue is sorted by id: at 1,000 calls a second a minute's window
        // holds 60,000 of them, too many to scan on every settle.
        if let Ok(i) = self.spent.binary_search_by_key(&reservation.id, |s| s.id) {
            let s = &mut self.spent[i];
            self.in_use = self.in_use - s.amount + actual;
            s.amount = actual;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, TokioClock};
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn tokens_come_back_one_window_after_they_were_spent() {
        let clock = TokioClock::new();
        let mut q = RollingQuota::new(3, 60_000);
        for _ in 0..3 {
            q.try_reserve(1, clock.now_ms()).unwrap();
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        // At t=30 s the three are spent at 0, 10 and 20 s.
        assert_eq!(q.available(clock.now_ms()), 0);
        assert_eq!(q.try_reserve(1, clock.now_ms()), Err(30_000));
        assert_eq!(q.used_permille(clock.now_ms()), 1000);
        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(
            q.available(clock.now_ms()),
            1,
            "the first came back at 60 s"
        );
        tokio::time::advance(Duration::from_secs(20)).await;
        assert_eq!(q.available(clock.now_ms()), 3);
        assert_eq!(q.used_permille(clock.now_ms()), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn never_more_than_the_limit_in_any_window() {
        let clock = TokioClock::new();
        let mut q = RollingQuota::new(60, 60_000);
        let mut starts = Vec::new();
        for _ in 0..(5 * 60 * 10) {
            if q.try_reserve(1, clock.now_ms()).is_ok() {
                starts.push(clock.now_ms());
            }
            tokio::time::advance(Duration::from_millis(100)).await;
        }
        for (i, &t) in starts.iter().enumerate() {
            let in_window = starts[i..].iter().take_while(|&&s| s < t + 60_000).count();
            assert!(in_window <= 60, "{in_window} starts in the minute from {t}");
        }
        assert!(
            starts.len() >= 5 * 60 - 1,
            "the quota is used: {}",
            starts.len()
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_tpm_reservation_settles_to_the_real_usage() {
        let clock = TokioClock::new();
        let mut q = RollingQuota::new(10_000, 60_000);
        // 1000 input tokens + maxTokens 4000 reserved at the start.
        let r = q.try_reserve(5_000, clock.now_ms()).unwrap();
        assert_eq!(q.available(clock.now_ms()), 5_000);
        assert!(q.try_reserve(6_000, clock.now_ms()).is_err());
        tokio::time::advance(Duration::from_secs(2)).await;
        // It used 1000 + 300: the rest comes back at once.
        q.settle(r, 1_300, clock.now_ms());
        assert_eq!(q.available(clock.now_ms()), 8_700);
        q.try_reserve(6_000, clock.now_ms()).unwrap();
        // The settled tokens return one window after the attempt started.
        tokio::time::advance(Duration::from_secs(58)).await;
        assert_eq!(q.available(clock.now_ms()), 4_000);
    }

    #[test]
    fn an_oversized_request_passes_an_untouched_quota() {
        let mut q = RollingQuota::new(100, 60_000);
        assert!(q.try_reserve(500, 0).is_ok());
        assert!(q.try_reserve(1, 1).is_err());
    }

    #[test]
    fn a_settle_finds_its_reservation_among_many_and_skips_one_gone() {
        let mut q = RollingQuota::new(1_000_000, 60_000);
        // One reservation of 10 each ms for two minutes: the first minute's
        // have left the window by the end.
        let held: Vec<Reservation> = (0..120_000)
            .map(|ms| q.try_reserve(10, ms).unwrap())
            .collect();
        let now = 120_000;
        // Those after 60 s are in the window: 59,999 of them.
        let before = q.available(now);
        assert_eq!(before, 1_000_000 - 59_999 * 10);
        q.settle(held[100_000], 3, now);
        assert_eq!(q.available(now), before + 7);
        q.settle(held[119_999], 25, now);
        assert_eq!(q.available(now), before + 7 - 15);
        // Back in full already: settling it changes nothing.
        q.settle(held[10], 1_000, now);
        assert_eq!(q.available(now), before + 7 - 15);
    }
}
