//! Bedrock-like quotas: requests and tokens per rolling 60-second window.

use std::collections::VecDeque;

/// The rolling window, in milliseconds.
pub const WINDOW_MS: u64 = 60_000;

/// Which quota refused a call; Bedrock words the 429 differently for each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaRefusal {
    Requests,
    Tokens,
}

impl QuotaRefusal {
    /// Bedrock's message for this refusal.
    pub fn message(self) -> &'static str {
        match self {
            QuotaRefusal::Requests => "Too many requests, please wait before trying again.",
            QuotaRefusal::Tokens => "Too many tokens, please wait before trying again.",
        }
    }
}

/// Admitted calls in the current window.
#[derive(Debug, Default)]
pub struct RollingQuota {
    rpm: Option<u32>,
    tpm: Option<u32>,
    /// (start time, tokens charged) of each admitted call, oldest first.
    admitted: VecDeque<(u64, u64)>,
}

impl RollingQuota {
    /// A quota with the given limits (`None` = unlimited).
    pub fn new(rpm: Option<u32>, tpm: Option<u32>) -> Self {
        Self {
            rpm,
            tpm,
            admitted: VecDeque::new(),
        }
    }

    fn expire(&mut self, now_ms: u64) {
        while let Some(&(at, _)) = self.admitted.front() {
            if at + WINDOW_MS <= now_ms {
                self.admitted.pop_front();
            } else {
                break;
            }
        }
    }

    /// Admits a call that may use up to `tokens`, or says which quota refuses it.
    pub fn try_admit(&mut self, now_ms: u64, tokens: u64) -> Result<(), QuotaRefusal> {
        self.expire(now_ms);
        if let Some(rpm) = self.rpm {
            if self.admitted.len() as u64 >= u64::from(rpm) {
                return Err(QuotaRefusal::Requests);
            }
        }
        if let Some(tpm) = self.tpm {
            let used: u64 = self.admitted.iter().map(|&(_, t)| t).sum();
            if used + tokens > u64::from(tpm) {
                return Err(QuotaRefusal::Tokens);
            }
        }
        self.admitted.push_back((now_ms, tokens));
        Ok(())
    }

    /// How full the fuller of the two quotas is now, in thousandths (0 with
    /// no quota).
    pub fn used_permille(&mut self, now_ms: u64) -> u32 {
        self.expire(now_ms);
        let share = |used: u64, limit: u32| (used * 1000 / u64::from(limit).max(1)).min(1000);
        let requests = self
            .rpm
            .map_or(0, |rpm| share(self.admitted.len() as u64, rpm));
        let tokens = self.tpm.map_or(0, |tpm| {
            share(self.admitted.iter().map(|&(_, t)| t).sum(), tpm)
        });
        requests.max(tokens) as u32
    }

    /// Milliseconds until the oldest admitted call leaves the window.
    pub fn retry_after_ms(&self, now_ms: u64) -> u64 {
        self.admitted
            .front()
            .map(|&(at, _)| (at + WINDOW_MS).saturating_sub(now_ms))
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_per_minute_roll_over() {
        let mut q = RollingQuota::new(Some(2), None);
        assert!(q.try_admit(0, 1).is_ok());
        assert!(q.try_admit(10_000, 1).is_ok());
        assert_eq!(q.try_admit(20_000, 1), Err(QuotaRefusal::Requests));
        assert_eq!(q.retry_after_ms(20_000), 40_000);
        // The first call leaves the window at exactly 60 s.
        assert!(q.try_admit(60_000, 1).is_ok());
        assert_eq!(q.try_admit(60_001, 1), Err(QuotaRefusal::Requests));
    }

    #[test]
    fn the_fuller_quota_sets_the_share_used() {
        let mut q = RollingQuota::new(Some(4), Some(1000));
        assert_eq!(q.used_permille(0), 0);
        q.try_admit(0, 100).unwrap();
        assert_eq!(q.used_permille(1), 250);
        q.try_admit(1, 700).unwrap();
        assert_eq!(q.used_permille(2), 800);
        assert_eq!(q.used_permille(60_001), 0);
    }

    #[test]
    fn tokens_per_minute_count_input_and_output() {
        let mut q = RollingQuota::new(None, Some(100));
        assert!(q.try_admit(0, 60).is_ok());
        assert_eq!(q.try_admit(1, 41), Err(QuotaRefusal::Tokens));
        assert!(q.try_admit(1, 40).is_ok());
        assert!(q.try_admit(60_000, 60).is_ok());
    }
}
