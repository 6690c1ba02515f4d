//! Recent wait times of the fair queue, for `/queue_stats`.

use std::collections::VecDeque;

use serde::Serialize;

/// How many recent waits are kept.
const KEPT: usize = 1_024;

/// The waits of the requests admitted most recently.
#[derive(Debug, Default)]
pub struct WaitStats {
    recent: VecDeque<u64>,
    total: u64,
}

/// Percentiles of the recent waits, in ms.
#[derive(Debug, Clone, Default, Serialize)]
pub struct WaitSummary {
    /// Requests admitted since start.
    pub admitted: u64,
    pub p50: u64,
    pub p95: u64,
    pub max: u64,
}

impl WaitStats {
    /// A request was admitted after `ms` in the queue.
    pub fn record(&mut self, ms: u64) {
        if self.recent.len() == KEPT {
            self.recent.pop_front();
        }
        self.recent.push_back(ms);
        self.total += 1;
    }

    /// Percentiles over the kept waits.
    pub fn summary(&self) -> WaitSummary {
        let mut sorted: Vec<u64> = self.recent.iter().copied().collect();
        sorted.sort_unstable();
        let at = |q: f64| {
            sorted
                .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
                .copied()
                .unwrap_or(0)
        };
        WaitSummary {
            admitted: self.total,
            p50: at(0.5),
            p95: at(0.95),
            max: sorted.last().copied().unwrap_or(0),
        }
    }
}
