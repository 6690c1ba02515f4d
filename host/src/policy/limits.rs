//! The limits every policy call runs under: a wall-time deadline enforced
//! with epoch interruption, and a linear-memory cap.
//!
//! A deadline is turned into epoch ticks here and nowhere else.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch advances for a given call deadline: a quarter of the
/// deadline (so a call overruns by at most a quarter), clamped so the ticker
/// thread neither spins nor sleeps for long.
pub fn tick_for(deadline: Duration) -> Duration {
    (deadline / 4).clamp(Duration::from_micros(50), Duration::from_millis(50))
}

/// The epoch deadline, in ticks beyond the current epoch, for a call that
/// may run for `deadline`. The current tick is partly spent already, hence the +1.
pub fn ticks_for(deadline: Duration, tick: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(ticks).unwrap_or(u64::MAX - 1) + 1
}

/// A thread that advances the engine's epoch every `tick` until dropped.
#[derive(Debug)]
pub struct EpochTicker {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub fn start(engine: Engine, tick: Duration) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    std::thread::sleep(tick);
                    engine.increment_epoch();
                }
            })
            .expect("spawning the epoch thread");
        Self {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Caps linear memory and remembers whether a growth was refused, so a trap
/// that follows can be reported as out-of-memory rather than a plain trap.
#[derive(Debug)]
pub struct MemoryCap {
    limit_bytes: usize,
    /// A `memory.grow` past the cap was refused during this call.
    pub refused: bool,
    /// The largest linear memory seen during this call.
    pub peak_bytes: usize,
}

impl MemoryCap {
    /// A cap of `limit_bytes`.
    pub fn new(limit_bytes: usize) -> Self {
        Self {
            limit_bytes,
            refused: false,
            peak_bytes: 0,
        }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(
        &mut self,
        current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > self.limit_bytes {
            self.refused = true;
            return Ok(false);
        }
        self.peak_bytes = self.peak_bytes.max(desired).max(current);
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(desired <= 100_000)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_millisecond_deadline_ticks_every_250_microseconds() {
        let deadline = Duration::from_millis(1);
        let tick = tick_for(deadline);
        assert_eq!(tick, Duration::from_micros(250));
        assert_eq!(ticks_for(deadline, tick), 5);
    }

    #[test]
    fn tiny_and_huge_deadlines_are_clamped() {
        assert_eq!(
            tick_for(Duration::from_micros(10)),
            Duration::from_micros(50)
        );
        assert_eq!(tick_for(Duration::from_secs(10)), Duration::from_millis(50));
        assert_eq!(
            ticks_for(Duration::from_micros(10), Duration::from_micros(50)),
            2
        );
    }

    #[test]
    fn memory_cap_refuses_growth_past_the_limit() {
        let mut cap = MemoryCap::new(1 << 20);
        assert!(cap.memory_growing(0, 1 << 20, None).unwrap());
        assert!(!cap.refused);
        assert!(!cap.memory_growing(1 << 20, 2 << 20, None).unwrap());
        assert!(cap.refused);
        assert_eq!(cap.peak_bytes, 1 << 20);
    }
}
