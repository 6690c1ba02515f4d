//! `hybrid`: quota headroom and recency, with jitter and a share of LRU picks.
//!
//! Each fit deployment (circuit not open, at most `skip_threshold_ms` of
//! cooldown left) gets a score, the field notes' formula:
//!
//! ```text
//! score   = w_quota · (1 − quota used) + w_recency · recency
//! recency = max(0, 1 − age / recency_horizon_ms)     age = now − last-used-ms
//! ```
//!
//! Recency is 1 for a deployment used just now and 0 for one idle for the
//! whole horizon or never used: it favours deployments in use (their prompt
//! caches are warm, and traffic stays concentrated while the quota term says
//! there is headroom), and works *against* idle ones. What keeps an idle
//! deployment from starving is the second rule, as in the notes:
//!
//! - with probability `lru_share` (10%), the request starts on the least
//!   recently used fit deployment (never used first), whatever its score;
//! - otherwise it starts on the best of the `top_k` (3) highest scores, each
//!   multiplied by a random factor in `1 ± jitter` (±5%), so near-equal
//!   deployments share the load instead of one taking it all.
//!
//! The other fit deployments follow by score, the fallback order.
//!
//! Params (all optional): `{"w_quota": 0.6, "w_recency": 0.4,
//! "recency_horizon_ms": 86400000, "top_k": 3, "jitter": 0.05,
//! "lru_share": 0.1, "skip_threshold_ms": 2000}`. The weights must not be
//! negative nor both 0, `recency_horizon_ms` and `top_k` must be above 0,
//! `jitter` below 1 and `lru_share` at most 1.
//!
//! Choose it to rotate across accounts or regions with separate quotas: it
//! leans on the one with headroom, spreads near-ties, and never lets one go
//! unused (the notes measured fairness with a Gini coefficient).
#![cfg_attr(not(test), no_std)]

use core::cmp::Ordering;

use switchyard_policy::prelude::*;
use switchyard_policy::serde::Deserialize;
use switchyard_policy::{host, pick, ParamsError, PolicyParams};

/// The policy's params.
#[derive(Debug, Deserialize)]
#[serde(crate = "switchyard_policy::serde", default, deny_unknown_fields)]
struct Params {
    /// Weight of the quota headroom in the score.
    w_quota: f64,
    /// Weight of the recency in the score.
    w_recency: f64,
    /// The age at which recency reaches 0, in milliseconds.
    recency_horizon_ms: u64,
    /// How many of the best scores a request may start on.
    top_k: u32,
    /// Each of those scores is multiplied by a random factor in `1 ± jitter`.
    jitter: f64,
    /// The share of requests that start on the least recently used deployment.
    lru_share: f64,
    /// A deployment whose cooldown has more than this left is not tried.
    skip_threshold_ms: u64,
}

impl Default for Params {
    fn default() -> Self {
        Self {
            w_quota: 0.6,
            w_recency: 0.4,
            recency_horizon_ms: 86_400_000,
            top_k: 3,
            jitter: 0.05,
            lru_share: 0.1,
            skip_threshold_ms: 2000,
        }
    }
}

impl PolicyParams for Params {
    fn validate(&self) -> Result<(), ParamsError> {
        let share = |name: &str, value: f64, max_ok: bool| {
            if (0.0..=1.0).contains(&value) && (max_ok || value < 1.0) {
                Ok(())
            } else {
                Err(ParamsError::invalid(
                    name,
                    format!(
                        "must be from 0 to {}, not {value}",
                        if max_ok { "1" } else { "below 1" }
                    ),
                ))
            }
        };
        if self.w_quota < 0.0 {
            return Err(ParamsError::invalid("w_quota", "must not be negative"));
        }
        if self.w_recency < 0.0 {
            return Err(ParamsError::invalid("w_recency", "must not be negative"));
        }
        if self.w_quota + self.w_recency <= 0.0 {
            return Err(ParamsError::invalid(
                "w_quota",
                "must be above 0 when `w_recency` is 0",
            ));
        }
        if self.recency_horizon_ms == 0 {
            return Err(ParamsError::invalid(
                "recency_horizon_ms",
                "must be above 0",
            ));
        }
        if self.top_k == 0 {
            return Err(ParamsError::invalid("top_k", "must be at least 1"));
        }
        share("jitter", self.jitter, false)?;
        share("lru_share", self.lru_share, true)
    }
}

struct Hybrid;

impl Selection for Hybrid {
    fn select(_req: RequestInfo, candidates: Vec<Candidate>) -> Vec<u32> {
        let params: Params = switchyard_policy::params_or_reject();
        order(&candidates, host::now_ms(), &params, host::random_u64)
    }
}

switchyard_policy::export_selection!(Hybrid);

/// max(0, 1 − age / horizon); 0 for a deployment never used.
fn recency(last_used_ms: Option<u64>, now_ms: u64, horizon_ms: u64) -> f64 {
    match last_used_ms {
        None => 0.0,
        Some(at) => {
            let age = now_ms.saturating_sub(at) as f64;
            (1.0 - age / horizon_ms as f64).max(0.0)
        }
    }
}

fn score(c: &Candidate, now_ms: u64, p: &Params) -> f64 {
    let used = f64::from(c.quota_used_permille.min(1000)) / 1000.0;
    p.w_quota * (1.0 - used) + p.w_recency * recency(c.last_used_ms, now_ms, p.recency_horizon_ms)
}

/// The first pick (LRU, or the best jittered of the top k), then the other
/// fit candidates by score.
fn order(
    candidates: &[Candidate],
    now_ms: u64,
    p: &Params,
    mut random: impl FnMut() -> u64,
) -> Vec<u32> {
    let fit = pick::fit(candidates, p.skip_threshold_ms);
    if fit.is_empty() {
        return fit;
    }
    let scores: Vec<f64> = candidates.iter().map(|c| score(c, now_ms, p)).collect();
    let mut by_score = fit.clone();
    // Stable: equal scores keep the group's order.
    by_score.sort_by(|&a, &b| {
        scores[b as usize]
            .partial_cmp(&scores[a as usize])
            .unwrap_or(Ordering::Equal)
    });
    let first = if pick::chance(random(), p.lru_share) {
        *fit.iter()
            .min_by_key(|&&i| candidates[i as usize].last_used_ms)
            .expect("not empty")
    } else {
        let top = &by_score[..by_score.len().min(p.top_k as usize)];
        let jittered: Vec<(u32, f64)> = top
            .iter()
            .map(|&i| {
                let factor = 1.0 - p.jitter + 2.0 * p.jitter * pick::unit(random());
                (i, scores[i as usize] * factor)
            })
            .collect();
        // The first of equal maxima, so a tie goes to the better-ranked.
        jittered
            .iter()
            .fold(None::<(u32, f64)>, |best, &(i, s)| match best {
                Some((_, b)) if b >= s => best,
                _ => Some((i, s)),
            })
            .expect("not empty")
            .0
    };
    by_score.retain(|&i| i != first);
    by_score.insert(0, first);
    by_score
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str, quota: u32, last_used: Option<u64>) -> Candidate {
        Candidate {
            quota_used_permille: quota,
            last_used_ms: last_used,
            ..Candidate::new(name, 1)
        }
    }

    #[test]
    fn the_field_notes_formula() {
        let p = Params::default();
        let day = 86_400_000;
        assert_eq!(recency(None, day, day), 0.0);
        assert_eq!(recency(Some(day), day, day), 1.0);
        assert_eq!(recency(Some(day / 2), day, day), 0.5);
        assert_eq!(recency(Some(0), 2 * day, day), 0.0);
        let c = account("a", 250, Some(day / 2));
        assert!((score(&c, day, &p) - (0.6 * 0.75 + 0.4 * 0.5)).abs() < 1e-12);
    }

    #[test]
    fn without_jitter_nor_lru_the_best_score_leads() {
        let p = Params {
            jitter: 0.0,
            lru_share: 0.0,
            ..Params::default()
        };
        let cs = [
            account("a", 900, Some(1_000)),
            account("b", 0, Some(1_000)),
            account("c", 500, None),
        ];
        assert_eq!(order(&cs, 1_000, &p, || u64::MAX / 2), [1, 0, 2]);
    }

    #[test]
    fn the_lru_share_forces_the_least_recently_used() {
        let p = Params {
            lru_share: 1.0,
            ..Params::default()
        };
        let cs = [
            account("a", 0, Some(1_000)),
            account("b", 0, Some(500)),
            account("c", 999, Some(100)),
        ];
        assert_eq!(order(&cs, 1_000, &p, || 0)[0], 2);
    }

    #[test]
    fn bad_params_are_named() {
        for (json, param) in [
            (r#"{"jitter": 1.0}"#, "jitter"),
            (r#"{"lru_share": -0.1}"#, "lru_share"),
            (r#"{"top_k": 0}"#, "top_k"),
            (r#"{"w_quota": 0, "w_recency": 0}"#, "w_quota"),
            (r#"{"recency_horizon_ms": "a day"}"#, "recency_horizon_ms"),
        ] {
            let err = switchyard_policy::parse_params::<Params>(json).unwrap_err();
            assert_eq!(err.param(), Some(param), "{json}: {err}");
        }
    }
}
