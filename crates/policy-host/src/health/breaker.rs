//! A deployment's circuit breaker, as an explicit state machine.
//!
//! - **Closed**: calls flow. It opens after `consecutive_failures` failures
//!   in a row, or when more than `failure_rate` of the last `window` calls
//!   failed (once `window` calls are known).
//! - **Open**: calls are refused without reaching Bedrock, for `open_ms`.
//! - **Half-open**: up to `half_open_probes` calls at a time are let through.
//!   A success closes it; a failure opens it again.
//!
//! Failures are outages and server errors (`unavailable`, `timeout`,
//! `server-error`). Throttles count toward the cooldown, not toward the
//! breaker, and a client error says nothing about the deployment.

use std::collections::VecDeque;

use serde::{Deserialize, Serialize};

use crate::outcome::OutcomeKind;

/// When a breaker opens and how it recovers.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Open after this many failures in a row.
    pub consecutive_failures: u32,
    /// Open when more than this share of the last `window` calls failed.
    pub failure_rate: f64,
    /// The calls `failure_rate` is measured over.
    pub window: u32,
    /// How long it stays open before probing, in milliseconds.
    pub open_ms: u64,
    /// Calls let through at once while half-open.
    pub half_open_probes: u32,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_rate: 0.5,
            window: 20,
            open_ms: 30_000,
            half_open_probes: 1,
        }
    }
}

/// The state a breaker is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BreakerState {
    /// Calls flow.
    Closed,
    /// Calls are refused.
    Open,
    /// A few probes are let through.
    HalfOpen,
}

#[derive(Debug)]
enum State {
    Closed {
        consecutive: u32,
        recent: VecDeque<bool>,
    },
    Open {
        until_ms: u64,
    },
    HalfOpen {
        probes: u32,
    },
}

/// One deployment's breaker.
#[derive(Debug)]
pub struct CircuitBreaker {
    config: BreakerConfig,
    state: State,
}

impl CircuitBreaker {
    /// A closed breaker.
    pub fn new(config: BreakerConfig) -> Self {
        Self {
            config,
            state: Self::closed(),
        }
    }

    fn closed() -> State {
        State::Closed {
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    /// Its state at `now_ms` (an open breaker whose time is up is half-open).
    pub fn state(&mut self, now_ms: u64) -> BreakerState {
        if let State::Open { until_ms } = self.state {
            if now_ms >= until_ms {
                self.state = State::HalfOpen { probes: 0 };
            }
        }
        match self.state {
            State::Closed { .. } => BreakerState::Closed,
            State::Open { .. } => BreakerState::Open,
            State::HalfOpen { .. } => BreakerState::HalfOpen,
        }
    }

    /// Milliseconds until an open breaker lets a probe through (0 otherwise).
    pub fn open_remaining_ms(&mut self, now_ms: u64) -> u64 {
        self.state(now_ms);
        match self.state {
            State::Open { until_ms } => until_ms - now_ms,
            _ => 0,
        }
    }

    /// Whether a call may go through now; a half-open breaker counts it as a probe.
    pub fn try_pass(&mut self, now_ms: u64) -> bool {
        self.state(now_ms);
        match &mut self.state {
            State::Closed { .. } => true,
            State::Open { .. } => false,
            State::HalfOpen { probes } if *probes < self.config.half_open_probes => {
                *probes += 1;
                true
            }
            State::HalfOpen { .. } => false,
        }
    }

    /// Opens it until `until_ms`, as a sibling instance's breaker did.
    pub fn force_open(&mut self, until_ms: u64) {
        self.state = State::Open { until_ms };
    }

    /// Closes it, as a sibling instance's successful probe did.
    pub fn force_close(&mut self) {
        self.state = Self::closed();
    }

    /// A call that went through ended as `kind` at `now_ms`.
    pub fn record(&mut self, kind: OutcomeKind, now_ms: u64) {
        let failed = match kind {
            OutcomeKind::Success => false,
            OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => true,
            // Neither judges the deployment's health; a probe is given back.
            OutcomeKind::Throttled | OutcomeKind::ClientError => {
                if let State::HalfOpen { probes } = &mut self.state {
                    *probes = probes.saturating_sub(1);
                }
                return;
            }
        };
        let open = State::Open {
            until_ms: now_ms + self.config.open_ms,
        };
        match &mut self.state {
            State::HalfOpen { .. } => {
                self.state = if failed { open } else { Self::closed() };
            }
            // A call let through before the breaker opened: it changes nothing.
            State::Open { .. } => {}
            State::Closed {
                consecutive,
                recent,
            } => {
                *consecutive = if failed { *consecutive + 1 } else { 0 };
                let window = self.config.window.max(1) as usize;
                if recent.len() == window {
                    recent.pop_front();
                }
                recent.push_back(failed);
                let failures = recent.iter().filter(|&&f| f).count();
                let rate_tripped = recent.len() == window
                    && failures as f64 > self.config.failure_rate * window as f64;
                if *consecutive >= self.config.consecutive_failures || rate_tripped {
                    self.state = open;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::{Clock, TokioClock};
    use std::time::Duration;

    fn breaker() -> CircuitBreaker {
        CircuitBreaker::new(BreakerConfig {
            consecutive_failures: 3,
            failure_rate: 0.5,
            window: 10,
            open_ms: 30_000,
            half_open_probes: 1,
        })
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_then_probes_and_closes() {
        let clock = TokioClock::new();
        let mut b = breaker();
        for _ in 0..2 {
            assert!(b.try_pass(clock.now_ms()));
            b.record(OutcomeKind::Unavailable, clock.now_ms());
        }
        assert_eq!(b.state(clock.now_ms()), BreakerState::Closed);
        b.record(OutcomeKind::ServerError, clock.now_ms());
        assert_eq!(b.state(clock.now_ms()), BreakerState::Open);
        assert!(!b.try_pass(clock.now_ms()));
        assert_eq!(b.open_remaining_ms(clock.now_ms()), 30_000);

        tokio::time::advance(Duration::from_secs(30)).await;
        assert_eq!(b.state(clock.now_ms()), BreakerState::HalfOpen);
        assert!(b.try_pass(clock.now_ms()), "one probe");
        assert!(!b.try_pass(clock.now_ms()), "only one at a time");
        b.record(OutcomeKind::Success, clock.now_ms());
        assert_eq!(b.state(clock.now_ms()), BreakerState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_failed_probe_opens_it_again() {
        let clock = TokioClock::new();
        let mut b = breaker();
        for _ in 0..3 {
            b.record(OutcomeKind::Timeout, clock.now_ms());
        }
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(b.try_pass(clock.now_ms()));
        b.record(OutcomeKind::Unavailable, clock.now_ms());
        assert_eq!(b.state(clock.now_ms()), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.state(clock.now_ms()), BreakerState::Open);
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.state(clock.now_ms()), BreakerState::HalfOpen);
    }

    #[test]
    fn opens_on_the_failure_rate_over_the_window() {
        let mut b = breaker();
        // Alternating: never 3 in a row, but 6 of the last 10 failed.
        for i in 0..10 {
            let kind = if i % 5 == 4 || i % 2 == 0 {
                OutcomeKind::Unavailable
            } else {
                OutcomeKind::Success
            };
            b.record(kind, 0);
        }
        assert_eq!(b.state(0), BreakerState::Open);
    }

    #[test]
    fn throttles_and_client_errors_do_not_count() {
        let mut b = breaker();
        for _ in 0..20 {
            b.record(OutcomeKind::Throttled, 0);
            b.record(OutcomeKind::ClientError, 0);
        }
        assert_eq!(b.state(0), BreakerState::Closed);
    }
}
