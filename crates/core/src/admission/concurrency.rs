//! Adaptive concurrency (AIMD) per deployment: how many attempts may be in
//! flight on it at once. The limit grows by one for each full limit's worth
//! of successes (additive increase) and halves on a throttle (multiplicative
//! decrease), within `[min, max]`. Started at the configured value, it finds
//! the real quota when the configured one is wrong.

/// An AIMD concurrency limit and the attempts holding it.
#[derive(Debug)]
pub struct AimdLimit {
    limit: f64,
    min: f64,
    max: f64,
    in_flight: u32,
}

impl AimdLimit {
    /// Starts at `initial`, kept within `[min, max]` (min at least 1).
    pub fn new(initial: u32, min: u32, max: u32) -> Self {
        let min = f64::from(min.max(1));
        let max = f64::from(max).max(min);
        Self {
            limit: f64::from(initial).clamp(min, max),
            min,
            max,
            in_flight: 0,
        }
    }

    /// The whole number of attempts allowed at once now.
    pub fn limit(&self) -> u32 {
        self.limit.floor() as u32
    }

    /// Attempts in flight.
    pub fn in_flight(&self) -> u32 {
        self.in_flight
    }

    /// Takes a slot if one is free.
    pub fn try_acquire(&mut self) -> bool {
        if self.in_flight < self.limit() {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// Gives a slot back after a success: the limit grows by 1/limit.
    pub fn on_success(&mut self) {
        self.release();
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// Gives a slot back after a throttle: the limit halves.
    pub fn on_throttle(&mut self) {
        self.release();
        self.limit = (self.limit / 2.0).max(self.min);
    }

    /// Gives a slot back without judging the limit (other failures).
    pub fn release(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_by_one_per_window_of_successes_and_halves_on_a_throttle() {
        let mut l = AimdLimit::new(4, 1, 64);
        assert_eq!(l.limit(), 4);
        // Four successes at a limit of 4 add about one.
        for _ in 0..4 {
            assert!(l.try_acquire());
            l.on_success();
        }
        assert_eq!(l.limit(), 4, "4.9: not yet 5");
        assert!(l.try_acquire());
        l.on_success();
        assert_eq!(l.limit(), 5);
        assert!(l.try_acquire());
        l.on_throttle();
        assert_eq!(l.limit(), 2);
        assert_eq!(l.in_flight(), 0);
    }

    #[test]
    fn stays_within_min_and_max() {
        let mut l = AimdLimit::new(2, 2, 3);
        for _ in 0..5 {
            l.try_acquire();
            l.on_throttle();
        }
        assert_eq!(l.limit(), 2);
        for _ in 0..100 {
            l.try_acquire();
            l.on_success();
        }
        assert_eq!(l.limit(), 3);
    }

    #[test]
    fn refuses_past_the_limit() {
        let mut l = AimdLimit::new(2, 1, 8);
        assert!(l.try_acquire());
        assert!(l.try_acquire());
        assert!(!l.try_acquire());
        l.release();
        assert!(l.try_acquire());
    }
}
