//! The last 15 minutes, for the status page's charts: each deployment's
//! requests, throttles, latency and quota use, its cooldowns as periods,
//! the fair queue's depth and waits, and when each policy version was
//! swapped in. A sample every [`INTERVAL_MS`] (read from the counters the
//! request path keeps anyway, so it adds nothing to a request), kept in a
//! ring of [`KEPT`] samples: memory is bounded whatever the traffic.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use serde::Serialize;

use crate::admission::QueueStats;
use crate::health::CooldownPeriod;
use crate::outcome::OutcomeKind;
use crate::router::Router;
use crate::vocabulary::PolicyKind;

/// How often a sample is taken.
pub const INTERVAL_MS: u64 = 2_000;
/// Samples kept: 15 minutes.
pub const KEPT: usize = 450;
/// Cooldown periods and policy swaps kept per deployment and in all.
const EVENTS_KEPT: usize = 256;
/// Teams' spend is read every this many samples (30 s): on Redis it is a
/// round trip per team.
pub const SPEND_EVERY: u64 = 15;
/// Spend readings kept per team: 15 minutes.
const SPEND_KEPT: usize = KEPT / SPEND_EVERY as usize;

/// What one deployment did in one interval.
#[derive(Debug, Clone, Copy, Default)]
struct Point {
    /// Attempts that ended in the interval.
    requests: u64,
    throttles: u64,
    latency_p50_ms: u32,
    quota_used_permille: u32,
}

/// The queue at one sample.
#[derive(Debug, Clone, Copy, Default)]
struct QueuePoint {
    queued: u32,
    running: u32,
    wait_p95_ms: u64,
}

/// What a deployment's counters said at a sample.
#[derive(Debug, Clone, Copy)]
struct Reading {
    /// Attempts ended since the start.
    attempts: u64,
    /// Of which throttled.
    throttled: u64,
    latency_p50_ms: u32,
    quota_used_permille: u32,
    last_cooldown: Option<CooldownPeriod>,
}

#[derive(Debug, Default)]
struct DeploymentHistory {
    /// One per sample, aligned with [`Inner::times`].
    points: VecDeque<Point>,
    cooldowns: VecDeque<CooldownPeriod>,
    /// The counters at the last sample.
    attempts: u64,
    throttled: u64,
}

/// A policy version that became active.
#[derive(Debug, Clone, Serialize)]
struct Swap {
    group: String,
    kind: PolicyKind,
    name: String,
    version: u32,
    /// When the sampler first saw it active (the gateway's start for the
    /// versions it started with).
    since_ms: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// When each sample was taken, on the gateway's clock.
    times: VecDeque<u64>,
    deployments: BTreeMap<String, DeploymentHistory>,
    queue: VecDeque<QueuePoint>,
    /// The active version of each slot, at the last sample.
    active: HashMap<(String, PolicyKind), u32>,
    swaps: VecDeque<Swap>,
    /// Each team's spend this UTC day, in USD, when it was read.
    team_spend: BTreeMap<String, VecDeque<(u64, f64)>>,
}

/// The recorded history; [`History::sample`] adds to it.
#[derive(Debug, Default)]
pub struct History {
    inner: Mutex<Inner>,
}

fn push_bounded<T>(ring: &mut VecDeque<T>, value: T, kept: usize) {
    if ring.len() == kept {
        ring.pop_front();
    }
    ring.push_back(value);
}

impl Inner {
    /// Adds the sample taken at `now_ms`: the queue's state, and each
    /// deployment's counters, turned into what changed since the last.
    fn record(&mut self, now_ms: u64, queue: QueuePoint, readings: BTreeMap<&str, Reading>) {
        push_bounded(&mut self.times, now_ms, KEPT);
        push_bounded(&mut self.queue, queue, KEPT);
        let samples = self.times.len();
        for (id, reading) in readings {
            let entry = self.deployments.entry(id.to_owned()).or_default();
            // The counters count from the start, as the sampler does.
            let point = Point {
                requests: reading.attempts.saturating_sub(entry.attempts),
                throttles: reading.throttled.saturating_sub(entry.throttled),
                latency_p50_ms: reading.latency_p50_ms,
                quota_used_permille: reading.quota_used_permille,
            };
            entry.attempts = reading.attempts;
            entry.throttled = reading.throttled;
            // Points line up with the times from the newest back.
            while entry.points.len() + 1 < samples {
                entry.points.push_back(Point::default());
            }
            push_bounded(&mut entry.points, point, KEPT);
            if let Some(period) = reading.last_cooldown {
                match entry.cooldowns.back_mut() {
                    Some(last) if last.from_ms == period.from_ms => *last = period,
                    _ => push_bounded(&mut entry.cooldowns, period, EVENTS_KEPT),
                }
            }
        }
    }
}

impl History {
    /// Takes a sample of `router`'s deployments and policies and of the
    /// fair queue (`queue`) at `now_ms`.
    pub fn sample(&self, router: &Router, queue: &QueueStats, now_ms: u64) {
        // Each deployment once, though several groups may share it.
        let mut readings: BTreeMap<&str, Reading> = BTreeMap::new();
        for deployment in router.groups().flat_map(|g| g.members.iter()) {
            readings
                .entry(deployment.config.id.as_str())
                .or_insert_with(|| {
                    let health = deployment.health.snapshot(now_ms);
                    Reading {
                        attempts: health.total_attempts,
                        throttled: health.throttled_attempts,
                        latency_p50_ms: health.latency_p50_ms,
                        quota_used_permille: deployment
                            .admission
                            .snapshot(now_ms)
                            .quota_used_permille,
                        last_cooldown: health.last_cooldown,
                    }
                });
        }
        let queue = QueuePoint {
            queued: queue.queued,
            running: queue.running,
            wait_p95_ms: queue.wait_ms.p95,
        };
        let mut inner = self.inner.lock().expect("history poisoned");
        inner.record(now_ms, queue, readings);
        let inner = &mut *inner;
        for group in router.groups() {
            for kind in PolicyKind::ALL {
                let version = group.slots.get(kind).current();
                let key = (group.name.clone(), kind);
                if inner.active.get(&key) != Some(&version.number) {
                    inner.active.insert(key, version.number);
                    push_bounded(
                        &mut inner.swaps,
                        Swap {
                            group: group.name.clone(),
                            kind,
                            name: version.policy.name().to_owned(),
                            version: version.number,
                            since_ms: now_ms,
                        },
                        EVENTS_KEPT,
                    );
                }
            }
        }
    }

    /// Records what `team` had spent this UTC day (USD) at `now_ms`.
    pub fn record_spend(&self, team: &str, now_ms: u64, usd_today: f64) {
        let mut inner = self.inner.lock().expect("history poisoned");
        let readings = inner.team_spend.entry(team.to_owned()).or_default();
        push_bounded(readings, (now_ms, usd_today), SPEND_KEPT);
    }

    /// The history as the status page reads it: columns of numbers, one
    /// value per sample, with `t` the samples' times.
    pub fn report(&self, now_ms: u64) -> HistoryReport {
        let inner = self.inner.lock().expect("history poisoned");
        let oldest = inner.times.front().copied().unwrap_or(now_ms);
        let deployments = inner
            .deployments
            .iter()
            .map(|(id, h)| {
                let column = |f: &dyn Fn(&Point) -> u64| h.points.iter().map(f).collect();
                let report = DeploymentSeries {
                    requests: column(&|p| p.requests),
                    throttles: column(&|p| p.throttles),
                    latency_p50_ms: column(&|p| u64::from(p.latency_p50_ms)),
                    quota_used_permille: column(&|p| u64::from(p.quota_used_permille)),
                    cooldowns: h
                        .cooldowns
                        .iter()
                        .filter(|c| c.until_ms >= oldest)
                        .map(|c| CooldownSpan {
                            from_ms: c.from_ms,
                            until_ms: c.until_ms,
                            reason: c.reason,
                        })
                        .collect(),
                };
                (id.clone(), report)
            })
            .collect();
        let queue = QueueSeries {
            queued: inner.queue.iter().map(|q| q.queued).collect(),
            running: inner.queue.iter().map(|q| q.running).collect(),
            wait_p95_ms: inner.queue.iter().map(|q| q.wait_p95_ms).collect(),
        };
        let team_spend_today_usd = inner
            .team_spend
            .iter()
            .map(|(team, readings)| {
                let series = SpendSeries {
                    t: readings.iter().map(|(t, _)| *t).collect(),
                    usd: readings.iter().map(|(_, usd)| *usd).collect(),
                };
                (team.clone(), series)
            })
            .collect();
        HistoryReport {
            now_ms,
            interval_ms: INTERVAL_MS,
            t: inner.times.iter().copied().collect(),
            deployments,
            queue,
            policy_swaps: inner.swaps.iter().cloned().collect(),
            team_spend_today_usd,
        }
    }
}

/// `GET /status_history`.
#[derive(Debug, Serialize)]
pub struct HistoryReport {
    pub now_ms: u64,
    pub interval_ms: u64,
    /// When each sample was taken (ms on the gateway's clock).
    pub t: Vec<u64>,
    pub deployments: BTreeMap<String, DeploymentSeries>,
    pub queue: QueueSeries,
    /// Each policy version as it became active, oldest first.
    policy_swaps: Vec<Swap>,
    /// Each team's spend this UTC day, read every 30 s.
    pub team_spend_today_usd: BTreeMap<String, SpendSeries>,
}

/// A team's spend readings: when, and USD spent this UTC day by then.
#[derive(Debug, Serialize)]
pub struct SpendSeries {
    pub t: Vec<u64>,
    pub usd: Vec<f64>,
}

/// One deployment's columns, one value per sample.
#[derive(Debug, Serialize)]
pub struct DeploymentSeries {
    /// Attempts that ended in the interval before the sample.
    pub requests: Vec<u64>,
    pub throttles: Vec<u64>,
    pub latency_p50_ms: Vec<u64>,
    pub quota_used_permille: Vec<u64>,
    /// Its cooldowns that overlap the window.
    pub cooldowns: Vec<CooldownSpan>,
}

/// A cooldown, from start to end.
#[derive(Debug, Serialize)]
pub struct CooldownSpan {
    pub from_ms: u64,
    pub until_ms: u64,
    pub reason: OutcomeKind,
}

/// The fair queue's columns.
#[derive(Debug, Serialize)]
pub struct QueueSeries {
    pub queued: Vec<u32>,
    pub running: Vec<u32>,
    /// The 95th percentile of the recent waits, ms.
    pub wait_p95_ms: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(attempts: u64, throttled: u64) -> Reading {
        Reading {
            attempts,
            throttled,
            latency_p50_ms: 10,
            quota_used_permille: 0,
            last_cooldown: None,
        }
    }

    /// Past a full window, each sample still moves every series on.
    #[test]
    fn the_window_slides_once_full() {
        let history = History::default();
        let mut inner = history.inner.lock().unwrap();
        for i in 0..(KEPT as u64 + 50) {
            let readings = BTreeMap::from([("a", reading(i * 3, i))]);
            inner.record(i * INTERVAL_MS, QueuePoint::default(), readings);
        }
        let a = &inner.deployments["a"];
        assert_eq!(inner.times.len(), KEPT);
        assert_eq!(a.points.len(), KEPT);
        assert_eq!(
            *inner.times.back().unwrap(),
            (KEPT as u64 + 49) * INTERVAL_MS
        );
        let last = a.points.back().unwrap();
        assert_eq!((last.requests, last.throttles), (3, 1));
        drop(inner);
        let report = history.report((KEPT as u64 + 49) * INTERVAL_MS);
        assert_eq!(report.t.len(), report.deployments["a"].requests.len());
    }

    /// A cooldown set again while it runs is one period; a new one after
    /// it ended is another.
    #[test]
    fn cooldowns_are_periods() {
        let history = History::default();
        let mut inner = history.inner.lock().unwrap();
        let period = |from_ms, until_ms| CooldownPeriod {
            from_ms,
            until_ms,
            reason: OutcomeKind::Throttled,
        };
        for (at, cooldown) in [
            (0, period(0, 5_000)),
            (2_000, period(0, 9_000)),
            (20_000, period(20_000, 21_000)),
        ] {
            let readings = BTreeMap::from([(
                "a",
                Reading {
                    last_cooldown: Some(cooldown),
                    ..reading(0, 0)
                },
            )]);
            inner.record(at, QueuePoint::default(), readings);
        }
        let cooldowns: Vec<_> = inner.deployments["a"].cooldowns.iter().copied().collect();
        assert_eq!(cooldowns, vec![period(0, 9_000), period(20_000, 21_000)]);
    }
}
