//! The limits every policy call runs under: a deadline on the CPU time it
//! uses, enforced with epoch interruption, and a linear-memory cap.
//!
//! A deadline is turned into epoch ticks here and nowhere else.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use wasmtime::{Engine, ResourceLimiter, UpdateDeadline};

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

/// How long a call may wait for a core, in all, before it is stopped even
/// though it has not used its CPU budget: a machine that busy is better
/// served by the safe order than by a request that waits on a policy.
const MAX_WAIT_FOR_CPU: Duration = Duration::from_millis(100);

/// What a call may spend: `budget` of CPU time, checked every `ticks`,
/// at most `max_checks` times (the wait cap).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CallDeadline {
    budget: Duration,
    ticks: u64,
    max_checks: u32,
}

impl CallDeadline {
    /// A deadline of `budget` for an engine whose epoch advances every `tick`.
    pub fn new(budget: Duration, tick: Duration) -> Self {
        let windows = MAX_WAIT_FOR_CPU.as_nanos() / budget.as_nanos().max(1);
        Self {
            budget,
            ticks: ticks_for(budget, tick),
            max_checks: u32::try_from(windows).unwrap_or(u32::MAX).max(2),
        }
    }

    /// The epoch ticks from the start of a call (or the last check) to the
    /// next check.
    pub fn ticks(self) -> u64 {
        self.ticks
    }
}

/// Judges a call each time it reaches its epoch deadline. The epoch counts
/// wall time, and a call whose thread lost its core (two cores, a burst of
/// requests) would be stopped for the machine's business rather than its
/// own: so a call is stopped only once it has burnt most of its budget of
/// CPU time since the previous check. A runaway is stopped within about two
/// budgets of wall time; a call that merely waited runs on.
#[derive(Debug)]
pub struct CpuWatch {
    deadline: CallDeadline,
    /// The thread's CPU time at the previous check (none before the first).
    checked_at: Option<Duration>,
    /// Checks left before the call is stopped regardless.
    checks_left: u32,
}

impl CpuWatch {
    /// A watch for a call that starts now.
    pub fn new(deadline: CallDeadline) -> Self {
        Self {
            deadline,
            checked_at: None,
            checks_left: deadline.max_checks,
        }
    }

    /// The call reached its epoch deadline; its thread has used `cpu` in
    /// all (`None`: unreadable). Interrupt it, or let it run to the next
    /// check.
    pub fn on_deadline(&mut self, cpu: Option<Duration>) -> UpdateDeadline {
        // Without the thread's CPU time, the wall-time deadline holds.
        let Some(cpu) = cpu else {
            return UpdateDeadline::Interrupt;
        };
        let used = self.checked_at.map(|at| cpu.saturating_sub(at));
        self.checked_at = Some(cpu);
        self.checks_left = self.checks_left.saturating_sub(1);
        // The first check has no earlier reading: the call has had at least
        // its budget of wall time, and gets one more window to show whether
        // it runs (a runaway) or waits.
        let running = used.is_some_and(|u| u >= self.deadline.budget * 3 / 4);
        if running || self.checks_left == 0 {
            UpdateDeadline::Interrupt
        } else {
            UpdateDeadline::Continue(self.deadline.ticks)
        }
    }
}

/// The CPU time the calling thread has used, if the kernel says.
pub fn thread_cpu_time() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid timespec to write to; the clock id is a
    // constant every Linux supports.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return None;
    }
    let secs = u64::try_from(ts.tv_sec).ok()?;
    let nanos = u32::try_from(ts.tv_nsec).ok()?;
    Some(Duration::new(secs, nanos))
}

/// Ticks without a new call after which the ticker parks (1 ms at the
/// default tick). Short on purpose: every tick wakes a thread, and traffic
/// comes in bursts (a client's many connections, a batch), so a ticker that
/// kept ticking for 100 ms after each burst spent a tenth of the gateway's
/// CPU at 1 000 req/s (BENCHMARKS.md, "Overhead under many connections").
/// Waking a parked ticker costs the first call of a burst one `unpark`.
const IDLE_TICKS_BEFORE_PARKING: u32 = 2;

/// A thread that advances the engine's epoch every `tick` while policy calls
/// happen, and parks once two ticks pass without one: an idle gateway costs
/// no CPU, and calls closer together than that make no extra system call
/// (the first call after an idle spell wakes the ticker with an `unpark`).
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

    fn interrupted(update: UpdateDeadline) -> bool {
        matches!(update, UpdateDeadline::Interrupt)
    }

    #[test]
    fn a_call_that_burns_its_cpu_budget_is_stopped_at_the_second_check() {
        let deadline = CallDeadline::new(Duration::from_millis(1), Duration::from_micros(500));
        let mut watch = CpuWatch::new(deadline);
        let ms = Duration::from_millis;
        assert!(matches!(
            watch.on_deadline(Some(ms(1))),
            UpdateDeadline::Continue(3)
        ));
        assert!(interrupted(watch.on_deadline(Some(ms(2)))));
    }

    #[test]
    fn without_the_threads_cpu_time_the_wall_time_deadline_holds() {
        let deadline = CallDeadline::new(Duration::from_millis(1), Duration::from_micros(500));
        assert!(interrupted(CpuWatch::new(deadline).on_deadline(None)));
    }

    #[test]
    fn a_call_that_waits_for_a_core_runs_on_until_the_wait_cap() {
        let deadline = CallDeadline::new(Duration::from_millis(1), Duration::from_micros(500));
        let mut watch = CpuWatch::new(deadline);
        let us = Duration::from_micros;
        // 100 µs of CPU a window: it is mostly waiting.
        let stopped_at = (1..=200)
            .find(|i| interrupted(watch.on_deadline(Some(us(100 * i)))))
            .unwrap();
        assert_eq!(
            u128::from(stopped_at as u32),
            MAX_WAIT_FOR_CPU.as_nanos() / deadline.budget.as_nanos()
        );
    }

    #[test]
    fn thread_cpu_time_moves_with_work_not_with_sleep() {
        let cpu = || thread_cpu_time().expect("Linux reports a thread's CPU time");
        let start = cpu();
        std::thread::sleep(Duration::from_millis(50));
        let slept = cpu() - start;
        assert!(slept < Duration::from_millis(25), "{slept:?}");
        // Work moves it: spinning reaches 5 ms of CPU (however busy the
        // machine, within far less than the 10 s bound).
        let mut x = 0u64;
        let spin = std::time::Instant::now();
        while cpu() - start < Duration::from_millis(5) {
            assert!(
                spin.elapsed() < Duration::from_secs(10),
                "CPU time never moved"
            );
            x = std::hint::black_box(x.wrapping_add(1));
        }
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
