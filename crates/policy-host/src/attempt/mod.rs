//! One request's way through a model group's deployments, decided apart
//! from any I/O: which deployment to try next, what is left for the
//! fallback policy after a failure, and the safe order that stands in when
//! a policy faults.
//!
//! The gateway's router, `switchyard policy simulate` and the lab each
//! step an [`AttemptRun`] (the plan, the policy calls and the per-attempt
//! updates, in `run`) and none decides a step of its own, so a policy
//! tested offline orders, cools down and falls back exactly as it will in
//! production. The drivers own the rest: admission, the upstream call (or
//! its simulation) and time.
//!
//! Deployments are named by their index in the group, whose members are
//! in the safe order (by priority, ties in configured order).

mod run;

pub use run::{settle, AttemptRun, Judgement, RunContext, RunPolicies, Settled};

use std::collections::VecDeque;
use std::sync::Arc;

use crate::outcome::{Outcome, OutcomeKind};

/// The gateway's safe order of `indices`: by priority, a stable sort so
/// ties keep their configured order. Stands in for a policy that faulted.
pub fn safe_order(priorities: &[u32], mut indices: Vec<usize>) -> Vec<usize> {
    indices.sort_by_key(|&i| priorities[i]);
    indices
}

/// The cooldown used when the cooldown policy faults: conservative and simple.
pub fn safe_cooldown(outcome: &Outcome) -> (u64, bool) {
    match outcome.kind {
        OutcomeKind::Success => (0, true),
        OutcomeKind::ClientError => (0, false),
        OutcomeKind::Throttled => (outcome.retry_after_ms.unwrap_or(10_000), false),
        OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => {
            (5_000, false)
        }
    }
}

/// What to do after an attempt failed.
#[must_use]
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterFailure {
    /// The request is over: the failure was the client's, no deployment is
    /// left, or the attempt limit is reached.
    Stop,
    /// Ask the fallback policy to order `remaining` (indices into the group)
    /// after the attempts on `tried`, then hand its answer to
    /// [`AttemptPlan::fallback`].
    AskFallback {
        tried: Vec<usize>,
        remaining: Vec<usize>,
    },
}

/// The attempts of one pass over a group: the order still to try, what was
/// tried and what admission refused.
#[derive(Debug, Clone)]
pub struct AttemptPlan {
    /// Each member's priority, by index: the safe order sorts by it
    /// (shared: the group's, made once).
    priorities: Arc<[u32]>,
    queue: VecDeque<usize>,
    tried: Vec<usize>,
    /// Refused by admission in this pass: not attempts, and not offered to
    /// the fallback policy again.
    refused: Vec<usize>,
    max_attempts: usize,
}

impl AttemptPlan {
    /// A pass over a group whose members have `priorities`, at most
    /// `max_attempts` attempts (0: one per member). `selection` is the
    /// selection policy's order, or `None` when it faulted (the safe order
    /// over every member stands in).
    pub fn new(
        priorities: impl Into<Arc<[u32]>>,
        max_attempts: u32,
        selection: Option<Vec<usize>>,
    ) -> Self {
        let priorities = priorities.into();
        let members = priorities.len();
        let order = selection.unwrap_or_else(|| safe_order(&priorities, (0..members).collect()));
        Self {
            priorities,
            queue: order.into(),
            tried: Vec::new(),
            refused: Vec::new(),
            max_attempts: match max_attempts {
                0 => members,
                n => n as usize,
            },
        }
    }

    /// What is still to try, in order.
    pub fn order(&self) -> impl Iterator<Item = usize> + '_ {
        self.queue.iter().copied()
    }

    /// Whether the selection chose nothing (and nothing was tried yet).
    pub fn chose_none(&self) -> bool {
        self.queue.is_empty() && self.tried.is_empty() && self.refused.is_empty()
    }

    /// The deployment to try next, counted as an attempt (unless handed
    /// back with [`refused`](Self::refused)); `None` when nothing is left or
    /// the attempt limit is reached.
    pub fn next_attempt(&mut self) -> Option<usize> {
        if self.tried.len() >= self.max_attempts {
            return None;
        }
        let next = self.queue.pop_front()?;
        self.tried.push(next);
        Some(next)
    }

    /// Admission refused `deployment`, the one [`next_attempt`](Self::next_attempt) just
    /// gave: it was no attempt.
    pub fn refused(&mut self, deployment: usize) {
        if self.tried.last() == Some(&deployment) {
            self.tried.pop();
        }
        self.refused.push(deployment);
    }

    /// The last attempt failed as `kind`. What is left for the fallback
    /// policy is the selection's remaining order first, then the members
    /// it left out in the safe order, so a fallback can still reach them
    /// (as `wit/policy.wit` documents for `remaining`).
    pub fn failed(&mut self, kind: OutcomeKind) -> AfterFailure {
        if !kind.worth_falling_back() || self.tried.len() >= self.max_attempts {
            return AfterFailure::Stop;
        }
        let mut remaining: Vec<usize> = self.queue.iter().copied().collect();
        for member in 0..self.priorities.len() {
            let seen = self.tried.contains(&member)
                || self.refused.contains(&member)
                || remaining.contains(&member);
            if !seen {
                remaining.push(member);
            }
        }
        if remaining.is_empty() {
            return AfterFailure::Stop;
        }
        AfterFailure::AskFallback {
            tried: self.tried.clone(),
            remaining,
        }
    }

    /// The fallback policy's answer for `remaining` (indices into it), or
    /// `None` when it faulted: the safe order of `remaining` stands in.
    pub fn fallback(&mut self, remaining: &[usize], answer: Option<Vec<usize>>) {
        self.queue = match answer {
            Some(order) => order.into_iter().map(|k| remaining[k]).collect(),
            None => safe_order(&self.priorities, remaining.to_vec()).into(),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(plan: &mut AttemptPlan) -> Vec<usize> {
        std::iter::from_fn(|| plan.next_attempt()).collect()
    }

    #[test]
    fn a_faulted_selection_tries_every_member_in_priority_order() {
        let mut plan = AttemptPlan::new(vec![2, 1, 1, 3], 0, None);
        assert_eq!(drain(&mut plan), [1, 2, 0, 3]);
    }

    #[test]
    fn the_fallback_is_offered_the_selections_leftovers_then_what_it_left_out() {
        // Priorities 1, 2, 3, 4; the selection chose 2 then 0, and left out
        // 1 and 3.
        let mut plan = AttemptPlan::new(vec![1, 2, 3, 4], 0, Some(vec![2, 0]));
        assert_eq!(plan.next_attempt(), Some(2));
        assert_eq!(
            plan.failed(OutcomeKind::Throttled),
            AfterFailure::AskFallback {
                tried: vec![2],
                remaining: vec![0, 1, 3],
            }
        );
        // The fallback puts 3 first and drops the rest.
        plan.fallback(&[0, 1, 3], Some(vec![2]));
        assert_eq!(drain(&mut plan), [3]);
    }

    #[test]
    fn a_faulted_fallback_leaves_the_safe_order_of_what_remains() {
        let mut plan = AttemptPlan::new(vec![3, 1, 2], 0, Some(vec![2]));
        assert_eq!(plan.next_attempt(), Some(2));
        let AfterFailure::AskFallback { remaining, .. } = plan.failed(OutcomeKind::Unavailable)
        else {
            panic!("something is left")
        };
        assert_eq!(remaining, [0, 1]);
        plan.fallback(&remaining, None);
        assert_eq!(drain(&mut plan), [1, 0]);
    }

    #[test]
    fn refused_members_are_no_attempts_and_not_offered_again() {
        let mut plan = AttemptPlan::new(vec![1, 2, 3], 0, Some(vec![0, 1, 2]));
        assert_eq!(plan.next_attempt(), Some(0));
        plan.refused(0);
        assert_eq!(plan.next_attempt(), Some(1));
        assert_eq!(
            plan.failed(OutcomeKind::ServerError),
            AfterFailure::AskFallback {
                tried: vec![1],
                remaining: vec![2],
            }
        );
    }

    #[test]
    fn a_client_error_or_the_attempt_limit_stops_the_request() {
        let mut plan = AttemptPlan::new(vec![1, 2, 3], 0, Some(vec![0, 1, 2]));
        plan.next_attempt();
        assert_eq!(plan.failed(OutcomeKind::ClientError), AfterFailure::Stop);

        let mut plan = AttemptPlan::new(vec![1, 2, 3], 2, Some(vec![0, 1, 2]));
        plan.next_attempt();
        assert!(matches!(
            plan.failed(OutcomeKind::Throttled),
            AfterFailure::AskFallback { .. }
        ));
        plan.next_attempt();
        assert_eq!(plan.failed(OutcomeKind::Throttled), AfterFailure::Stop);
        assert_eq!(plan.next_attempt(), None);
    }

    #[test]
    fn an_empty_selection_chose_none() {
        let plan = AttemptPlan::new(vec![1, 2], 0, Some(vec![]));
        assert!(plan.chose_none());
    }
}
