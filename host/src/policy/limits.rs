//! The limits every policy call runs under: a wall-time deadline enforced
//! with epoch interruption, and a linear-memory cap.
//!
//! A deadline is turned into epoch ticks here and nowhere else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter};

/// How often the epoch advances for a given call deadline: half the
/// deadline (so a call overruns by at most half), clamped so the ticker
/// thread neither spins nor sleeps for long. Every tick wakes a thread: at a
/// quarter of the default deadline, those wakeups were a tenth of the
/// gateway's CPU under load (BENCHMARKS.md).
pub fn tick_for(deadline: Duration) -> Duration {
    (deadline / 2).clamp(Duration::from_micros(100), Duration::from_millis(50))
}

/// The epoch deadline, in ticks beyond the current epoch, for a call that
/// may run for `deadline`. The current tick is partly spent already, hence the +1.
pub fn ticks_for(deadline: Duration, tick: Duration) -> u64 {
    let ticks = deadline.as_nanos().div_ceil(tick.as_nanos().max(1));
    u64::try_from(ticks).unwrap_or(u64::MAX - 1) + 1
}

/// Idle ticks after which the ticker parks: about 100 ms at the default tick.
const IDLE_TICKS_BEFORE_PARKING: u32 = 200;

/// A thread that advances the engine's epoch every `tick` while policy calls
/// happen, and sleeps without waking when none have for a while: an idle
/// gateway costs no CPU, and a busy one makes no extra system call per
/// call (a call only wakes the ticker after an idle spell).
#[derive(Debug)]
pub struct EpochTicker {
    shared: Arc<TickerState>,
    thread: Option<std::thread::JoinHandle<()>>,
}

#[derive(Debug, Default)]
struct TickerState {
    stop: AtomicBool,
    /// Calls started so far; the ticker watches it move.
    calls: AtomicU64,
    /// Calls in progress: the ticker never parks under one (it may be a
    /// runaway that only the epoch can stop).
    active: AtomicU64,
    /// The ticker is parked (or about to be) until a call wakes it.
    parked: AtomicBool,
}

impl EpochTicker {
    /// Starts ticking `engine`.
    pub fn start(engine: Engine, tick: Duration) -> Self {
        let shared = Arc::new(TickerState::default());
        let state = shared.clone();
        let thread = std::thread::Builder::new()
            .name("policy-epoch".into())
            .spawn(move || state.run(&engine, tick))
            .expect("spawning the epoch thread");
        Self {
            shared,
            thread: Some(thread),
        }
    }

    /// Tells the ticker a call is starting, waking it if it is parked. Call
    /// before the call's epoch deadline is set, and keep the guard until the
    /// call has ended.
    pub fn call_starting(&self) -> CallInProgress {
        let s = &self.shared;
        s.active.fetch_add(1, Ordering::SeqCst);
        s.calls.fetch_add(1, Ordering::SeqCst);
        if s.parked.load(Ordering::SeqCst) && s.parked.swap(false, Ordering::SeqCst) {
            if let Some(t) = &self.thread {
                t.thread().unpark();
            }
        }
        CallInProgress(s.clone())
    }
}

/// A policy call in progress, as the epoch ticker counts it; ends when dropped.
#[derive(Debug)]
pub struct CallInProgress(Arc<TickerState>);

impl Drop for CallInProgress {
    fn drop(&mut self) {
        self.0.active.fetch_sub(1, Ordering::SeqCst);
    }
}

impl TickerState {
    fn run(&self, engine: &Engine, tick: Duration) {
        let mut seen = self.calls.load(Ordering::SeqCst);
        let mut idle_ticks = 0;
        while !self.stop.load(Ordering::SeqCst) {
            std::thread::sleep(tick);
            engine.increment_epoch();
            let calls = self.calls.load(Ordering::SeqCst);
            if calls != seen {
                seen = calls;
                idle_ticks = 0;
                continue;
            }
            idle_ticks += 1;
            if idle_ticks < IDLE_TICKS_BEFORE_PARKING || self.active.load(Ordering::SeqCst) > 0 {
                continue;
            }
            // Announce the park, then look again: a call that started in
            // between either sees `parked` (and unparks us) or is seen here.
            self.parked.store(true, Ordering::SeqCst);
            if self.calls.load(Ordering::SeqCst) == seen && !self.stop.load(Ordering::SeqCst) {
                while self.parked.load(Ordering::SeqCst) && !self.stop.load(Ordering::SeqCst) {
                    std::thread::park();
                }
            }
            self.parked.store(false, Ordering::SeqCst);
            idle_ticks = 0;
        }
    }
}

impl Drop for EpochTicker {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
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
    fn one_millisecond_deadline_ticks_every_500_microseconds() {
        let deadline = Duration::from_millis(1);
        let tick = tick_for(deadline);
        assert_eq!(tick, Duration::from_micros(500));
        assert_eq!(ticks_for(deadline, tick), 3);
    }

    #[test]
    fn tiny_and_huge_deadlines_are_clamped() {
        assert_eq!(
            tick_for(Duration::from_micros(10)),
            Duration::from_micros(100)
        );
        assert_eq!(tick_for(Duration::from_secs(10)), Duration::from_millis(50));
        assert_eq!(
            ticks_for(Duration::from_micros(10), Duration::from_micros(100)),
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

    #[test]
    fn the_ticker_parks_when_idle_and_a_call_wakes_it() {
        let engine = Engine::default();
        let tick = Duration::from_micros(100);
        let ticker = EpochTicker::start(engine, tick);
        let parked = |t: &EpochTicker| t.shared.parked.load(Ordering::SeqCst);
        let wait_until = |t: &EpochTicker, want: bool| {
            let until = std::time::Instant::now() + Duration::from_secs(10);
            while parked(t) != want {
                assert!(
                    std::time::Instant::now() < until,
                    "parked never became {want}"
                );
                std::thread::sleep(Duration::from_millis(1));
            }
        };
        // No calls: parked after its idle spell.
        wait_until(&ticker, true);
        // A call wakes it, and it does not park while the call lasts.
        let call = ticker.call_starting();
        assert!(!parked(&ticker));
        std::thread::sleep(tick * (IDLE_TICKS_BEFORE_PARKING + 50));
        assert!(!parked(&ticker), "parked under a call in progress");
        drop(call);
        wait_until(&ticker, true);
        // Dropping a parked ticker stops its thread.
        drop(ticker);
    }
}
