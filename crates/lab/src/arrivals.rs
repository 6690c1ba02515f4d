//! When each user's requests arrive, from the scenario's patterns. Every
//! contender is run on the same arrivals, and the same seed gives the same
//! arrivals.

use super::scenario::{Bursts, Diurnal, LabUser, Steady};

/// One request arriving: when (ms since the start) and from which user
/// (index into the scenario's users).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Arrival {
    pub at_ms: u64,
    pub user: usize,
}

/// All arrivals of the run, in time order.
pub fn arrivals(users: &[LabUser], duration_s: u64, seed: u64) -> Vec<Arrival> {
    let end_ms = duration_s * 1000;
    let mut all = Vec::new();
    for (index, user) in users.iter().enumerate() {
        // Each user its own stream, so adding a user leaves the others' as they were.
        let mut rng = fastrand::Rng::with_seed(seed ^ (index as u64).wrapping_mul(0x9E37_79B9));
        let mut times = Vec::new();
        if let Some(s) = &user.steady {
            steady(s, end_ms, &mut rng, &mut times);
        }
        if let Some(b) = &user.bursts {
            bursts(b, end_ms, &mut rng, &mut times);
        }
        if let Some(d) = &user.diurnal {
            diurnal(d, end_ms, &mut rng, &mut times);
        }
        all.extend(
            times
                .into_iter()
                .map(|at_ms| Arrival { at_ms, user: index }),
        );
    }
    all.sort_unstable();
    all
}

fn ms(seconds: f64) -> u64 {
    (seconds * 1000.0).max(0.0) as u64
}

fn steady(s: &Steady, end_ms: u64, rng: &mut fastrand::Rng, out: &mut Vec<u64>) {
    let interval = 60_000.0 / s.per_min;
    let until = s.until_s.map_or(end_ms, |u| ms(u).min(end_ms)) as f64;
    // A random phase, so steady users do not all arrive on the same millisecond.
    let mut at = s.start_s * 1000.0 + rng.f64() * interval;
    while at < until {
        out.push(at as u64);
        at += interval;
    }
}

fn bursts(b: &Bursts, end_ms: u64, rng: &mut fastrand::Rng, out: &mut Vec<u64>) {
    let mut start = ms(b.start_s);
    while start < end_ms {
        for _ in 0..b.size {
            let at = start + rng.u64(0..=b.spread_ms);
            if at < end_ms {
                out.push(at);
            }
        }
        match b.every_s {
            Some(every) => start += ms(every).max(1),
            None => break,
        }
    }
}

/// The pace rises from `low` to `high` and back along a sine; arrivals fall
/// where the expected count crosses a whole number (from a random phase).
fn diurnal(d: &Diurnal, end_ms: u64, rng: &mut fastrand::Rng, out: &mut Vec<u64>) {
    const STEP_MS: u64 = 100;
    let mut expected = rng.f64();
    let mut t = 0;
    while t < end_ms {
        let phase = (t as f64 / 1000.0) / d.period_s * std::f64::consts::TAU;
        let per_min = d.low_per_min + (d.high_per_min - d.low_per_min) * (1.0 - phase.cos()) / 2.0;
        expected += per_min / 60_000.0 * STEP_MS as f64;
        while expected >= 1.0 {
            out.push(t);
            expected -= 1.0;
        }
        t += STEP_MS;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn user(steady: Option<Steady>, bursts: Option<Bursts>, diurnal: Option<Diurnal>) -> LabUser {
        LabUser {
            name: "u".into(),
            steady,
            bursts,
            diurnal,
        }
    }

    #[test]
    fn steady_sends_its_rate() {
        let u = user(
            Some(Steady {
                per_min: 12.0,
                start_s: 0.0,
                until_s: None,
            }),
            None,
            None,
        );
        let a = arrivals(&[u], 300, 1);
        assert_eq!(a.len(), 60);
        assert!(a.windows(2).all(|w| w[1].at_ms - w[0].at_ms == 5_000));
    }

    #[test]
    fn bursts_repeat_within_their_spread() {
        let u = user(
            None,
            Some(Bursts {
                size: 10,
                start_s: 30.0,
                every_s: Some(60.0),
                spread_ms: 500,
            }),
            None,
        );
        let a = arrivals(&[u], 160, 1);
        assert_eq!(a.len(), 30);
        for (k, burst) in a.chunks(10).enumerate() {
            let start = 30_000 + 60_000 * k as u64;
            assert!(burst
                .iter()
                .all(|x| (start..=start + 500).contains(&x.at_ms)));
        }
    }

    #[test]
    fn diurnal_averages_between_low_and_high() {
        let u = user(
            None,
            None,
            Some(Diurnal {
                low_per_min: 0.0,
                high_per_min: 20.0,
                period_s: 600.0,
            }),
        );
        let a = arrivals(&[u], 600, 1);
        // The mean of the sine is the midpoint: 10 a minute for 10 minutes.
        assert!((99..=101).contains(&a.len()), "{}", a.len());
        // Quiet at the start, busy in the middle.
        let first_minute = a.iter().filter(|x| x.at_ms < 60_000).count();
        let middle_minute = a
            .iter()
            .filter(|x| (270_000..330_000).contains(&x.at_ms))
            .count();
        assert!(
            first_minute < 3 && middle_minute > 17,
            "{first_minute} {middle_minute}"
        );
    }

    #[test]
    fn the_same_seed_gives_the_same_arrivals() {
        let users = [
            user(
                Some(Steady {
                    per_min: 7.0,
                    start_s: 0.0,
                    until_s: None,
                }),
                None,
                None,
            ),
            user(
                None,
                Some(Bursts {
                    size: 5,
                    start_s: 10.0,
                    every_s: None,
                    spread_ms: 2000,
                }),
                None,
            ),
        ];
        assert_eq!(arrivals(&users, 120, 9), arrivals(&users, 120, 9));
        assert_ne!(arrivals(&users, 120, 9), arrivals(&users, 120, 10));
    }
}
