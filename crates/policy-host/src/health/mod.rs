//! Per-deployment health: counters, latency, recent throttles, and the
//! cooldown clock. The router records outcomes here; policies see snapshots.
//!
//! A cooldown is a hint, not a block: the selection policy decides whether a
//! deployment that is cooling down is still worth trying.

pub mod breaker;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::outcome::{Outcome, OutcomeKind};

/// The window `recent-throttles` counts over.
pub const THROTTLE_WINDOW_MS: u64 = 60_000;
/// How many recent outcomes the success rate is computed over.
const OUTCOME_WINDOW: usize = 100;
/// Weight of a new latency sample in the moving average.
const LATENCY_EWMA_ALPHA: f64 = 0.2;

/// What the health board knows of one deployment at one instant.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct HealthSnapshot {
    pub in_flight: u32,
    pub cooldown_remaining_ms: u64,
    pub cooldown_reason: Option<OutcomeKind>,
    pub recent_throttles: u32,
    pub last_used_ms: Option<u64>,
    pub last_throttle_ms: Option<u64>,
    pub success_permille: u32,
    pub latency_ewma_ms: u32,
    /// Median latency of the last 100 attempts, in ms (0 with none).
    pub latency_p50_ms: u32,
    /// 95th percentile latency of the last 100 attempts, in ms (0 with none).
    pub latency_p95_ms: u32,
    pub total_attempts: u64,
    pub successful_attempts: u64,
    /// Attempts that were throttled, since the start.
    pub throttled_attempts: u64,
    /// When the current (or last) cooldown started and ends, on the
    /// gateway's clock; a cooldown lifted early ends when it was lifted.
    pub last_cooldown: Option<CooldownPeriod>,
}

/// What a policy's candidate shows of a deployment's health: the fields of
/// a [`HealthSnapshot`] a policy reads, made without the latency
/// percentiles (a sort of the last 100 latencies) that only the status
/// page shows. Built for every member of a group on every request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CandidateHealth {
    pub in_flight: u32,
    pub cooldown_remaining_ms: u64,
    pub recent_throttles: u32,
    pub last_used_ms: Option<u64>,
    pub last_throttle_ms: Option<u64>,
    pub success_permille: u32,
    pub latency_ewma_ms: u32,
}

/// One cooldown, from its start to its end (ms on the gateway's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct CooldownPeriod {
    pub from_ms: u64,
    pub until_ms: u64,
    pub reason: OutcomeKind,
}

#[derive(Debug, Default)]
struct HealthState {
    cooldown_until_ms: u64,
    cooldown_reason: Option<OutcomeKind>,
    throttles: VecDeque<u64>,
    last_used_ms: Option<u64>,
    last_throttle_ms: Option<u64>,
    recent_outcomes: VecDeque<bool>,
    /// The successes among `recent_outcomes`.
    recent_successes: u32,
    recent_latencies: VecDeque<u32>,
    latency_ewma_ms: Option<f64>,
    total_attempts: u64,
    successful_attempts: u64,
    throttled_attempts: u64,
    last_cooldown: Option<CooldownPeriod>,
    /// The policy (by [`Policy::id`](crate::policy::Policy::id)) that
    /// judged the last success here, when nothing but successes without a
    /// cooldown happened since.
    success_judged_by: Option<u64>,
}

impl HealthState {
    fn prune(&mut self, now_ms: u64) {
        while self
            .throttles
            .front()
            .is_some_and(|&t| t + THROTTLE_WINDOW_MS <= now_ms)
        {
            self.throttles.pop_front();
        }
    }

    /// What a candidate shows, the throttle window pruned to `now_ms`.
    fn candidate(&mut self, now_ms: u64, in_flight: u32) -> CandidateHealth {
        self.prune(now_ms);
        let success_permille = match self.recent_outcomes.len() {
            0 => 1000,
            n => self.recent_successes * 1000 / n as u32,
        };
        CandidateHealth {
            in_flight,
            cooldown_remaining_ms: self.cooldown_until_ms.saturating_sub(now_ms),
            recent_throttles: self.throttles.len() as u32,
            last_used_ms: self.last_used_ms,
            last_throttle_ms: self.last_throttle_ms,
            success_permille,
            latency_ewma_ms: self.latency_ewma_ms.map(|l| l.round() as u32).unwrap_or(0),
        }
    }
}

/// The health of one deployment.
#[derive(Debug, Default)]
pub struct DeploymentHealth {
    in_flight: AtomicU32,
    state: Mutex<HealthState>,
}

impl DeploymentHealth {
    fn lock(&self) -> std::sync::MutexGuard<'_, HealthState> {
        self.state.lock().expect("health state poisoned")
    }

    /// Its state now.
    pub fn snapshot(&self, now_ms: u64) -> HealthSnapshot {
        let mut s = self.lock();
        let c = s.candidate(now_ms, self.in_flight.load(Ordering::Relaxed));
        let mut latencies: Vec<u32> = s.recent_latencies.iter().copied().collect();
        latencies.sort_unstable();
        let percentile = |q: f64| {
            latencies
                .get(((latencies.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        HealthSnapshot {
            in_flight: c.in_flight,
            cooldown_remaining_ms: c.cooldown_remaining_ms,
            cooldown_reason: if c.cooldown_remaining_ms > 0 {
                s.cooldown_reason
            } else {
                None
            },
            recent_throttles: c.recent_throttles,
            last_used_ms: c.last_used_ms,
            last_throttle_ms: c.last_throttle_ms,
            success_permille: c.success_permille,
            latency_ewma_ms: c.latency_ewma_ms,
            latency_p50_ms: percentile(0.5),
            latency_p95_ms: percentile(0.95),
            total_attempts: s.total_attempts,
            successful_attempts: s.successful_attempts,
            throttled_attempts: s.throttled_attempts,
            last_cooldown: s.last_cooldown,
        }
    }

    /// What a policy's candidate shows of it now: no allocation, no sort.
    pub fn candidate(&self, now_ms: u64) -> CandidateHealth {
        self.lock()
            .candidate(now_ms, self.in_flight.load(Ordering::Relaxed))
    }

    /// An attempt starts.
    pub fn begin_attempt(&self, now_ms: u64) {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.lock().last_used_ms = Some(now_ms);
    }

    /// An attempt was abandoned before it ended: it is no longer in flight,
    /// and says nothing of the deployment.
    pub fn abandon_attempt(&self) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
    }

    /// An attempt ended with `outcome`.
    pub fn end_attempt(&self, outcome: &Outcome) {
        self.in_flight.fetch_sub(1, Ordering::Relaxed);
        let mut s = self.lock();
        s.total_attempts += 1;
        let ok = outcome.kind == OutcomeKind::Success;
        if ok {
            s.successful_attempts += 1;
        }
        // A client error says nothing about the deployment's health.
        if outcome.kind != OutcomeKind::ClientError {
            if s.recent_outcomes.len() == OUTCOME_WINDOW
                && s.recent_outcomes.pop_front() == Some(true)
            {
                s.recent_successes -= 1;
            }
            s.recent_outcomes.push_back(ok);
            s.recent_successes += u32::from(ok);
        }
        if outcome.kind == OutcomeKind::Throttled {
            s.throttled_attempts += 1;
            s.throttles.push_back(outcome.at_ms);
            s.last_throttle_ms = Some(outcome.at_ms);
            s.prune(outcome.at_ms);
        }
        if s.recent_latencies.len() == OUTCOME_WINDOW {
            s.recent_latencies.pop_front();
        }
        s.recent_latencies.push_back(outcome.latency_ms);
        let sample = f64::from(outcome.latency_ms);
        s.latency_ewma_ms = Some(match s.latency_ewma_ms {
            None => sample,
            Some(avg) => avg + LATENCY_EWMA_ALPHA * (sample - avg),
        });
    }

    /// Applies a cooldown policy's decision made at `now_ms` after `cause`.
    pub fn apply_cooldown(
        &self,
        now_ms: u64,
        cooldown_ms: u64,
        clear_history: bool,
        cause: OutcomeKind,
    ) {
        let mut s = self.lock();
        if cooldown_ms == 0 {
            // Lifted early: the period ends now.
            if let Some(last) = s.last_cooldown.as_mut().filter(|c| c.until_ms > now_ms) {
                last.until_ms = now_ms;
            }
            s.cooldown_until_ms = 0;
            s.cooldown_reason = None;
        } else {
            let until_ms = now_ms.saturating_add(cooldown_ms);
            // A cooldown set again while one runs extends that period.
            let from_ms = match s.last_cooldown {
                Some(last) if last.until_ms > now_ms => last.from_ms,
                _ => now_ms,
            };
            s.last_cooldown = Some(CooldownPeriod {
                from_ms,
                until_ms,
                reason: cause,
            });
            s.cooldown_until_ms = until_ms;
            s.cooldown_reason = Some(cause);
        }
        if clear_history {
            s.throttles.clear();
        }
        // Any other outcome or any cooldown, judged here or by a sibling,
        // makes the next success one to judge.
        if cooldown_ms > 0 || cause != OutcomeKind::Success {
            s.success_judged_by = None;
        }
    }

    /// Records that the policy `policy_id` judged a success here and set no
    /// cooldown (see `attempt::run::settle`).
    pub fn success_judged(&self, policy_id: u64) {
        self.lock().success_judged_by = Some(policy_id);
    }

    /// The policy that judged the last success here, if nothing but
    /// successes without a cooldown happened since.
    pub fn success_judged_by(&self) -> Option<u64> {
        self.lock().success_judged_by
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(kind: OutcomeKind, at_ms: u64, latency_ms: u32) -> Outcome {
        Outcome {
            deployment: "a".into(),
            kind,
            latency_ms,
            retry_after_ms: None,
            at_ms,
            detail: None,
            upstream_status: None,
        }
    }

    #[test]
    fn cooldown_counts_down_on_the_clock() {
        let h = DeploymentHealth::default();
        h.apply_cooldown(1_000, 10_000, false, OutcomeKind::Throttled);
        let s = h.snapshot(6_000);
        assert_eq!(s.cooldown_remaining_ms, 5_000);
        assert_eq!(s.cooldown_reason, Some(OutcomeKind::Throttled));
        let s = h.snapshot(11_000);
        assert_eq!(s.cooldown_remaining_ms, 0);
        assert_eq!(s.cooldown_reason, None);
    }

    #[test]
    fn throttles_are_counted_over_a_minute_and_cleared_on_request() {
        let h = DeploymentHealth::default();
        for at in [0, 10_000, 20_000] {
            h.begin_attempt(at);
            h.end_attempt(&outcome(OutcomeKind::Throttled, at, 5));
        }
        assert_eq!(h.snapshot(20_000).recent_throttles, 3);
        assert_eq!(h.snapshot(60_000).recent_throttles, 2);
        h.apply_cooldown(60_000, 0, true, OutcomeKind::Success);
        assert_eq!(h.snapshot(60_000).recent_throttles, 0);
    }

    #[test]
    fn success_rate_and_latency_follow_outcomes() {
        let h = DeploymentHealth::default();
        assert_eq!(h.snapshot(0).success_permille, 1000);
        h.begin_attempt(0);
        h.end_attempt(&outcome(OutcomeKind::Success, 0, 100));
        h.begin_attempt(0);
        h.end_attempt(&outcome(OutcomeKind::Unavailable, 0, 200));
        h.begin_attempt(0);
        h.end_attempt(&outcome(OutcomeKind::ClientError, 0, 100));
        let s = h.snapshot(0);
        assert_eq!(s.success_permille, 500);
        assert_eq!(s.total_attempts, 3);
        assert_eq!(s.successful_attempts, 1);
        assert_eq!(s.in_flight, 0);
        // 100, then 100 + 0.2 × (200 − 100) = 120, then 120 + 0.2 × (100 − 120) = 116.
        assert_eq!(s.latency_ewma_ms, 116);
        assert_eq!((s.latency_p50_ms, s.latency_p95_ms), (100, 200));
    }

    #[test]
    fn the_success_rate_counts_the_last_hundred_outcomes_only() {
        let h = DeploymentHealth::default();
        // 100 failures, then 30 successes push 30 of them out of the window.
        for (kind, n) in [(OutcomeKind::ServerError, 100), (OutcomeKind::Success, 30)] {
            for _ in 0..n {
                h.begin_attempt(0);
                h.end_attempt(&outcome(kind, 0, 10));
            }
        }
        assert_eq!(h.candidate(0).success_permille, 300);
        // Then 100 more successes leave nothing but successes.
        for _ in 0..100 {
            h.begin_attempt(0);
            h.end_attempt(&outcome(OutcomeKind::Success, 0, 10));
        }
        assert_eq!(h.candidate(0).success_permille, 1000);
    }

    #[test]
    fn a_candidate_shows_what_the_snapshot_shows() {
        let h = DeploymentHealth::default();
        h.begin_attempt(1_000);
        h.end_attempt(&outcome(OutcomeKind::Throttled, 1_000, 40));
        h.apply_cooldown(1_000, 5_000, false, OutcomeKind::Throttled);
        h.begin_attempt(2_000);
        h.end_attempt(&outcome(OutcomeKind::Success, 2_000, 80));
        h.begin_attempt(2_500);
        assert_eq!(h.candidate(2_500).in_flight, 1);
        assert_eq!(h.candidate(2_500).recent_throttles, 1);
        // Time only moves forward: the throttle window is pruned as it goes.
        for now in [2_500, 4_000, 61_500] {
            let (c, s) = (h.candidate(now), h.snapshot(now));
            assert_eq!(
                c,
                CandidateHealth {
                    in_flight: s.in_flight,
                    cooldown_remaining_ms: s.cooldown_remaining_ms,
                    recent_throttles: s.recent_throttles,
                    last_used_ms: s.last_used_ms,
                    last_throttle_ms: s.last_throttle_ms,
                    success_permille: s.success_permille,
                    latency_ewma_ms: s.latency_ewma_ms,
                },
                "at {now}"
            );
        }
        assert_eq!(h.candidate(61_500).recent_throttles, 0);
    }

    #[test]
    fn a_cooldown_is_one_period_from_its_start_to_its_end_or_its_lifting() {
        let h = DeploymentHealth::default();
        let period = |from_ms, until_ms| {
            Some(CooldownPeriod {
                from_ms,
                until_ms,
                reason: OutcomeKind::Throttled,
            })
        };
        h.apply_cooldown(1_000, 5_000, false, OutcomeKind::Throttled);
        assert_eq!(h.snapshot(1_000).last_cooldown, period(1_000, 6_000));
        // Set again while it runs: the same period, longer.
        h.apply_cooldown(3_000, 10_000, false, OutcomeKind::Throttled);
        assert_eq!(h.snapshot(3_000).last_cooldown, period(1_000, 13_000));
        // Lifted early: it ends then.
        h.apply_cooldown(4_000, 0, false, OutcomeKind::Success);
        assert_eq!(h.snapshot(4_000).last_cooldown, period(1_000, 4_000));
        // After it ended, a new one is a new period.
        h.apply_cooldown(20_000, 1_000, false, OutcomeKind::Throttled);
        assert_eq!(h.snapshot(20_000).last_cooldown, period(20_000, 21_000));
        h.end_attempt(&outcome(OutcomeKind::Throttled, 20_000, 5));
        assert_eq!(h.snapshot(20_000).throttled_attempts, 1);
    }
}
