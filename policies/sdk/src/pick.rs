//! Helpers for the common patterns of selection and fallback policies:
//! filtering by fitness, and random choices from the host's generator.
//!
//! The random helpers take their random numbers as an argument (`r`, or a
//! `random` function to call), so a policy passes
//! [`host::random_u64`](crate::host::random_u64) and its unit tests pass a
//! fixed sequence.

use alloc::vec::Vec;

use crate::Candidate;

/// Indices of the candidates that are [fit](Candidate::is_fit) under
/// `skip_threshold_ms`, in their given order.
pub fn fit(candidates: &[Candidate], skip_threshold_ms: u64) -> Vec<u32> {
    (0u32..)
        .zip(candidates)
        .filter(|(_, c)| c.is_fit(skip_threshold_ms))
        .map(|(i, _)| i)
        .collect()
}

/// Indices of the [fit](Candidate::is_fit) candidates, sorted by `key`,
/// smallest first; the sort is stable, so ties keep their given order. The
/// shape of most selection policies: "the fit ones, best first".
pub fn fit_sorted_by_key<K: Ord>(
    candidates: &[Candidate],
    skip_threshold_ms: u64,
    mut key: impl FnMut(&Candidate) -> K,
) -> Vec<u32> {
    let mut order = fit(candidates, skip_threshold_ms);
    order.sort_by_key(|&i| key(&candidates[i as usize]));
    order
}

/// Every index, sorted by `score`, highest first; ties keep their given
/// order, and a NaN score sorts last. For policies that weigh several
/// signals into one number.
pub fn by_score(candidates: &[Candidate], mut score: impl FnMut(&Candidate) -> f64) -> Vec<u32> {
    let scores: Vec<f64> = candidates.iter().map(&mut score).collect();
    let mut order: Vec<u32> = (0u32..).take(candidates.len()).collect();
    order.sort_by(|&a, &b| {
        let (a, b) = (scores[a as usize], scores[b as usize]);
        // Highest first; NaN below everything.
        match (a.is_nan(), b.is_nan()) {
            (true, true) => core::cmp::Ordering::Equal,
            (true, false) => core::cmp::Ordering::Greater,
            (false, true) => core::cmp::Ordering::Less,
            (false, false) => b.partial_cmp(&a).expect("not NaN"),
        }
    });
    order
}

/// The fallback order `cascade` uses, and others build on: the fit
/// deployments (see [`fit`]) by priority or, when none is fit, all of them by
/// (cooldown left, priority), so a request never runs out of deployments
/// while any is left. Both sorts are stable: ties keep their order.
pub fn fit_by_priority_never_empty(remaining: &[Candidate], skip_threshold_ms: u64) -> Vec<u32> {
    let mut picked = fit(remaining, skip_threshold_ms);
    if picked.is_empty() {
        picked = (0u32..).take(remaining.len()).collect();
        picked.sort_by_key(|&i| {
            let c = &remaining[i as usize];
            (c.cooldown_remaining_ms, c.priority)
        });
    } else {
        picked.sort_by_key(|&i| remaining[i as usize].priority);
    }
    picked
}

/// `r` as a number in `[0, 1)`, with the 53 bits an `f64` holds.
pub fn unit(r: u64) -> f64 {
    (r >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
}

/// `r` mapped onto `0..n` without the bias of `r % n` (0 when `n` is 0).
pub fn below(r: u64, n: u64) -> u64 {
    ((u128::from(r) * u128::from(n)) >> 64) as u64
}

/// Whether an event of probability `share` (0 to 1) happens, for `r`.
pub fn chance(r: u64, share: f64) -> bool {
    unit(r) < share
}

/// The index drawn for `r` when each index is as likely as its weight, or
/// `None` when every weight is 0.
pub fn weighted_index(weights: &[u64], r: u64) -> Option<usize> {
    let total: u128 = weights.iter().map(|&w| u128::from(w)).sum();
    if total == 0 {
        return None;
    }
    let mut point = (u128::from(r) * total) >> 64;
    for (i, &w) in weights.iter().enumerate() {
        if point < u128::from(w) {
            return Some(i);
        }
        point -= u128::from(w);
    }
    unreachable!("the point is below the total")
}

/// Every index, drawn one after another without replacement, each draw as
/// likely as the weights left; indices of weight 0 come last, in order. The
/// first index is what a single weighted pick would give, and the rest make a
/// fallback order that follows the weights too.
pub fn weighted_order(weights: &[u64], mut random: impl FnMut() -> u64) -> Vec<usize> {
    let mut left: Vec<u64> = weights.to_vec();
    let mut order = Vec::with_capacity(weights.len());
    while left.iter().any(|&w| w > 0) {
        let i = weighted_index(&left, random()).expect("a weight is left");
        order.push(i);
        left[i] = 0;
    }
    order.extend((0..weights.len()).filter(|&i| weights[i] == 0));
    order
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Circuit;

    #[test]
    fn fit_skips_open_circuits_and_long_cooldowns() {
        let cs = [
            Candidate::new("a", 1),
            Candidate {
                cooldown_remaining_ms: 2001,
                ..Candidate::new("b", 1)
            },
            Candidate {
                cooldown_remaining_ms: 2000,
                circuit: Circuit::HalfOpen,
                ..Candidate::new("c", 1)
            },
            Candidate {
                circuit: Circuit::Open,
                ..Candidate::new("d", 1)
            },
        ];
        assert_eq!(fit(&cs, 2000), [0, 2]);
        assert_eq!(fit(&cs, 0), [0]);
    }

    #[test]
    fn fit_sorted_by_key_keeps_ties_in_order() {
        let cs = [
            Candidate {
                in_flight: 2,
                ..Candidate::new("a", 1)
            },
            Candidate {
                in_flight: 1,
                ..Candidate::new("b", 1)
            },
            Candidate {
                circuit: Circuit::Open,
                ..Candidate::new("c", 1)
            },
            Candidate {
                in_flight: 1,
                ..Candidate::new("d", 1)
            },
        ];
        assert_eq!(fit_sorted_by_key(&cs, 0, |c| c.in_flight), [1, 3, 0]);
    }

    #[test]
    fn by_score_puts_the_highest_first_and_nan_last() {
        let cs = [
            Candidate::new("a", 1),
            Candidate::new("b", 2),
            Candidate::new("c", 3),
        ];
        let order = by_score(&cs, |c| match c.priority {
            1 => f64::NAN,
            2 => 0.5,
            _ => 0.9,
        });
        assert_eq!(order, [2, 1, 0]);
    }

    #[test]
    fn numbers_stay_in_range() {
        assert_eq!(unit(0), 0.0);
        assert!(unit(u64::MAX) < 1.0);
        assert_eq!(below(u64::MAX, 3), 2);
        assert_eq!(below(0, 3), 0);
        assert_eq!(below(5, 0), 0);
        assert!(chance(0, 0.1) && !chance(u64::MAX, 0.1) && !chance(0, 0.0));
    }

    #[test]
    fn weighted_index_follows_the_weights() {
        let w = [1, 0, 3];
        assert_eq!(weighted_index(&w, 0), Some(0));
        assert_eq!(weighted_index(&w, u64::MAX / 4 - 1), Some(0));
        assert_eq!(weighted_index(&w, u64::MAX / 4 + 1), Some(2));
        assert_eq!(weighted_index(&w, u64::MAX), Some(2));
        assert_eq!(weighted_index(&[0, 0], 7), None);
        assert_eq!(weighted_index(&[], 7), None);
    }

    #[test]
    fn weighted_order_draws_without_replacement_and_puts_zeros_last() {
        let mut r = [u64::MAX, 0, 0].into_iter();
        assert_eq!(
            weighted_order(&[1, 0, 3, 1], || r.next().unwrap()),
            [3, 0, 2, 1]
        );
    }
}
