//! The one source of time for routing state: cooldowns, throttle windows and
//! what policies see through `host.now-ms`.
//!
//! Everything that decides by time reads a [`Clock`] instead of the system
//! clock, so tests (and `switchyard policy test`) can hold time still and move
//! it on by hand.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds on some fixed timeline (Unix milliseconds for the system clock).
pub trait Clock: Send + Sync + std::fmt::Debug {
    /// The current time in milliseconds.
    fn now_ms(&self) -> u64;
}

/// A shareable clock.
pub type SharedClock = Arc<dyn Clock>;

/// Unix milliseconds, read from the wall clock once at start and advanced by
/// the monotonic clock since: a wall clock stepped back (NTP, a VM resumed)
/// must neither move cooldowns and quota windows back nor freeze them until
/// the wall catches up. It drifts from the wall only by the slewing the
/// wall clock does while the process runs.
#[derive(Debug)]
pub struct SystemClock {
    wall_at_start_ms: u64,
    start: Instant,
}

impl Default for SystemClock {
    fn default() -> Self {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        Self::starting_at(wall)
    }
}

impl SystemClock {
    /// A system clock behind an `Arc`, ready to share.
    pub fn shared() -> SharedClock {
        Arc::new(Self::default())
    }

    /// A clock that reads `wall_ms` now and moves on monotonically.
    pub fn starting_at(wall_ms: u64) -> Self {
        Self {
            wall_at_start_ms: wall_ms,
            start: Instant::now(),
        }
    }
}

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        self.wall_at_start_ms + self.start.elapsed().as_millis() as u64
    }
}

/// A clock that only moves when told to. Used by tests and fixtures.
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A manual clock starting at `start_ms`.
    pub fn new(start_ms: u64) -> Arc<Self> {
        Arc::new(Self {
            now: AtomicU64::new(start_ms),
        })
    }

    /// Moves the clock forward by `ms`.
    pub fn advance(&self, ms: u64) {
        self.now.fetch_add(ms, Ordering::SeqCst);
    }

    /// Sets the clock to `ms`.
    pub fn set(&self, ms: u64) {
        self.now.store(ms, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }
}

/// Milliseconds since it was made, on tokio's clock: under
/// `#[tokio::test(start_paused = true)]` time stands still until the test
/// advances it, so admission's timers are tested without sleeping.
#[derive(Debug)]
pub struct TokioClock {
    start: tokio::time::Instant,
}

impl TokioClock {
    /// A clock at 0 now.
    pub fn new() -> Arc<Self> {
        Arc::new(Self {
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn manual_clock_moves_only_when_told() {
        let clock = ManualClock::new(1_000);
        assert_eq!(clock.now_ms(), 1_000);
        clock.advance(250);
        assert_eq!(clock.now_ms(), 1_250);
        clock.set(10);
        assert_eq!(clock.now_ms(), 10);
    }

    #[test]
    fn system_clock_is_monotonic() {
        let clock = SystemClock::default();
        let a = clock.now_ms();
        let b = clock.now_ms();
        assert!(b >= a);
        assert!(a > 1_600_000_000_000, "expected Unix milliseconds, got {a}");
    }

    #[test]
    fn system_clock_moves_with_elapsed_time_whatever_the_wall_says() {
        // Started "an hour in the future", as if the wall then stepped back.
        let ahead = SystemClock::default().now_ms() + 3_600_000;
        let clock = SystemClock::starting_at(ahead);
        let before = clock.now_ms();
        std::thread::sleep(std::time::Duration::from_millis(30));
        let after = clock.now_ms();
        assert!(
            after >= before + 30,
            "{before} -> {after}: time must not freeze"
        );
        assert!(after < before + 10_000);
    }
}
