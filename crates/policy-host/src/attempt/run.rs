//! One request's pass over a model group, with every decision and every
//! per-attempt update made here, once, for all three drivers: the
//! gateway's router, `switchyard policy simulate` and the lab. A driver
//! does only what is its own (admission, the upstream call or its
//! simulation, and time) and steps the run:
//!
//! ```text
//! let mut run = AttemptRun::start(.., &mut context, &mut policies);
//! while let Some(member) = run.next_attempt() {
//!     if admission refuses member { run.refused(member); continue }
//!     run.begin(&context, member, now);
//!     outcome = the call (or its simulation)
//!     run.settle(&mut context, member, &outcome, judge)   // health, cooldown policy
//!     if outcome is a success { break }
//!     if !run.fall_back(&mut context, &mut policies, &outcome) { break }
//! }
//! ```
//!
//! The lab runs many requests in simulated time, so a run is a value it
//! keeps between events rather than a loop that owns the thread; the
//! router settles a success only when its answer is delivered, so
//! [`settle`] is also a function of its own.

use crate::health::DeploymentHealth;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{CallOptions, Candidate, CooldownDecision, RequestInfo};

use super::{AfterFailure, AttemptPlan};

/// What a run reads of the group it runs over.
pub trait RunContext {
    /// The group's members, in the safe order.
    fn members(&self) -> usize;
    /// What policies see of member `member` now. (`&mut`: the lab's quota
    /// books move their window on when read.)
    fn candidate(&mut self, member: usize) -> Candidate;
    /// Member `member`'s health.
    fn health(&self, member: usize) -> &DeploymentHealth;
}

/// The order-deciding policy calls of a run, made as its driver makes
/// them: the gateway observes each call (metrics, faults, rollback), the
/// offline drivers write faults down. `None`: the policy faulted, and the
/// safe order stands in.
pub trait RunPolicies {
    /// The selection policy's order of `candidates` (indices into it).
    fn select(
        &mut self,
        info: &RequestInfo,
        candidates: &[Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>>;

    /// The fallback policy's order of `remaining` (indices into it) after
    /// `failed`, the attempts on `tried` made.
    fn fall_back(
        &mut self,
        info: &RequestInfo,
        failed: &Outcome,
        tried: &[Candidate],
        remaining: &[Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>>;
}

/// What settling an attempt decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Settled {
    /// How long the deployment cools down, in ms (0: not at all).
    pub cooldown_ms: u64,
    /// Whether its throttle history was cleared.
    pub clear_history: bool,
    /// Whether the cooldown policy was called; a policy that declares
    /// idempotent successes is not, for a success that could change nothing.
    pub judged: bool,
}

/// A cooldown decision, and whether the policy made it (`false`: its call
/// faulted and the safe decision stands in).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Judgement {
    pub cooldown_ms: u64,
    pub clear_history: bool,
    pub by_policy: bool,
}

impl Judgement {
    /// The judgement of a cooldown call that ended as `call` on `outcome`:
    /// the policy's decision, or the safe one when it faulted.
    pub fn of<R, F>(call: &Result<(CooldownDecision, R), F>, outcome: &Outcome) -> Self {
        match call {
            Ok((d, _)) => Self {
                cooldown_ms: d.cooldown_ms,
                clear_history: d.clear_history,
                by_policy: true,
            },
            Err(_) => {
                let (cooldown_ms, clear_history) = super::safe_cooldown(outcome);
                Self {
                    cooldown_ms,
                    clear_history,
                    by_policy: false,
                }
            }
        }
    }
}

/// Settles an attempt's `outcome` on `health`: the health counts it, the
/// cooldown policy judges it (`judge`, which sees the deployment as it was
/// just before: `before`), and the decision is applied at `outcome.at_ms`.
/// Every driver settles through here.
///
/// `idempotent` is the policy's [`id`](crate::policy::Policy::id) when it
/// declares idempotent successes. A success is then not judged if this
/// same policy judged the last one here, nothing else happened since, and
/// the deployment is neither cooling down nor throttled lately: the policy
/// said its decision would change nothing.
pub fn settle(
    health: &DeploymentHealth,
    before: &Candidate,
    outcome: &Outcome,
    idempotent: Option<u64>,
    judge: impl FnOnce(&Outcome, &Candidate) -> Judgement,
) -> Settled {
    let unchanged = outcome.kind == OutcomeKind::Success
        && before.cooldown_remaining_ms == 0
        && before.recent_throttles == 0
        && idempotent.is_some_and(|id| health.success_judged_by() == Some(id));
    health.end_attempt(outcome);
    if unchanged {
        return Settled {
            cooldown_ms: 0,
            clear_history: false,
            judged: false,
        };
    }
    let judgement = judge(outcome, before);
    health.apply_cooldown(
        outcome.at_ms,
        judgement.cooldown_ms,
        judgement.clear_history,
        outcome.kind,
    );
    if let Some(id) = idempotent {
        if judgement.by_policy && outcome.kind == OutcomeKind::Success && judgement.cooldown_ms == 0
        {
            health.success_judged(id);
        }
    }
    Settled {
        cooldown_ms: judgement.cooldown_ms,
        clear_history: judgement.clear_history,
        judged: true,
    }
}

/// One pass of a request over a group: its attempt plan, the request as
/// policies see it, and the options of its policy calls.
#[derive(Debug, Clone)]
pub struct AttemptRun {
    plan: AttemptPlan,
    info: RequestInfo,
    options: CallOptions,
}

impl AttemptRun {
    /// Starts a pass: the selection policy orders the group's members as
    /// `context` shows them now. `priorities` and `max_attempts` are the
    /// attempt plan's (see [`AttemptPlan::new`]).
    pub fn start(
        priorities: impl Into<std::sync::Arc<[u32]>>,
        max_attempts: u32,
        info: RequestInfo,
        options: CallOptions,
        context: &mut impl RunContext,
        policies: &mut impl RunPolicies,
    ) -> Self {
        let candidates: Vec<Candidate> = (0..context.members())
            .map(|member| context.candidate(member))
            .collect();
        let order = policies.select(&info, &candidates, &options);
        Self {
            plan: AttemptPlan::new(priorities, max_attempts, order),
            info,
            options,
        }
    }

    /// The attempt plan: what is still to try, in order.
    pub fn plan(&self) -> &AttemptPlan {
        &self.plan
    }

    /// The options of the run's policy calls.
    pub fn options(&self) -> &CallOptions {
        &self.options
    }

    /// The member to try next; `None` when nothing is left or the attempt
    /// limit is reached.
    pub fn next_attempt(&mut self) -> Option<usize> {
        self.plan.next_attempt()
    }

    /// Admission refused `member`, the one [`next_attempt`](Self::next_attempt)
    /// just gave: it was no attempt, and is not offered to the fallback.
    pub fn refused(&mut self, member: usize) {
        self.plan.refused(member);
    }

    /// The attempt on `member` starts at `now_ms`.
    pub fn begin(&self, context: &impl RunContext, member: usize, now_ms: u64) {
        context.health(member).begin_attempt(now_ms);
    }

    /// Settles the attempt on `member` that ended as `outcome` (see
    /// [`settle`]), the cooldown policy called through `judge`.
    pub fn settle(
        &self,
        context: &mut impl RunContext,
        member: usize,
        outcome: &Outcome,
        idempotent: Option<u64>,
        judge: impl FnOnce(&Outcome, &Candidate, &CallOptions) -> Judgement,
    ) -> Settled {
        let before = context.candidate(member);
        settle(
            context.health(member),
            &before,
            outcome,
            idempotent,
            |o, b| judge(o, b, &self.options),
        )
    }

    /// The last attempt failed as `failed` says: asks the fallback policy
    /// to order what is left (seen as `context` shows it now). Returns
    /// whether anything is left to try.
    pub fn fall_back(
        &mut self,
        context: &mut impl RunContext,
        policies: &mut impl RunPolicies,
        failed: &Outcome,
    ) -> bool {
        let AfterFailure::AskFallback { tried, remaining } = self.plan.failed(failed.kind) else {
            return false;
        };
        self.info.attempt = tried.len() as u32;
        self.info.previous_deployment = Some(failed.deployment.clone());
        let mut candidates = |members: &[usize]| -> Vec<Candidate> {
            members.iter().map(|&m| context.candidate(m)).collect()
        };
        let (tried_now, remaining_now) = (candidates(&tried), candidates(&remaining));
        let next = policies.fall_back(
            &self.info,
            failed,
            &tried_now,
            &remaining_now,
            &self.options,
        );
        self.plan.fallback(&remaining, next);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::Circuit;

    fn candidate(health: &DeploymentHealth, now_ms: u64) -> Candidate {
        let s = health.snapshot(now_ms);
        Candidate {
            deployment: "a".into(),
            priority: 1,
            weight: 1,
            in_flight: 0,
            cooldown_remaining_ms: s.cooldown_remaining_ms,
            recent_throttles: s.recent_throttles,
            last_used_ms: None,
            last_throttle_ms: None,
            quota_used_permille: 0,
            success_permille: 1000,
            latency_ewma_ms: 0,
            circuit: Circuit::Closed,
        }
    }

    fn outcome(kind: OutcomeKind, at_ms: u64) -> Outcome {
        Outcome {
            deployment: "a".into(),
            kind,
            latency_ms: 5,
            retry_after_ms: None,
            at_ms,
            detail: None,
            upstream_status: None,
        }
    }

    /// Settles `kind` at `at_ms` with policy `id` (declaring idempotent
    /// successes) answering `cooldown_ms`, or faulting; whether it was called.
    fn settled(
        health: &DeploymentHealth,
        kind: OutcomeKind,
        at_ms: u64,
        id: u64,
        answer: Option<u64>,
    ) -> bool {
        let before = candidate(health, at_ms);
        settle(health, &before, &outcome(kind, at_ms), Some(id), |_, _| {
            Judgement {
                cooldown_ms: answer.unwrap_or(0),
                clear_history: kind == OutcomeKind::Success,
                by_policy: answer.is_some(),
            }
        })
        .judged
    }

    #[test]
    fn only_a_success_after_a_success_the_same_policy_judged_is_skipped() {
        use OutcomeKind::{Success, Throttled};
        let h = DeploymentHealth::default();
        assert!(
            settled(&h, Success, 1_000, 7, Some(0)),
            "the first success is judged"
        );
        assert!(
            !settled(&h, Success, 2_000, 7, Some(0)),
            "the second is not"
        );
        assert!(
            settled(&h, Success, 3_000, 8, Some(0)),
            "another version judges its own first"
        );

        // A throttle, and the cooldown it set, make successes count again
        // (once the cooldown is over and the throttle out of the window).
        assert!(settled(&h, Throttled, 4_000, 8, Some(10_000)));
        assert!(settled(&h, Success, 70_000, 8, Some(0)));
        assert!(!settled(&h, Success, 71_000, 8, Some(0)));

        // A sibling's cooldown, mirrored here, does too.
        h.apply_cooldown(72_000, 5_000, false, Throttled);
        assert!(settled(&h, Success, 78_000, 8, Some(0)));

        // A faulted call on a success decides nothing: the next is judged.
        let h = DeploymentHealth::default();
        assert!(settled(&h, Success, 1_000, 7, None));
        assert!(settled(&h, Success, 2_000, 7, Some(0)));
        assert!(!settled(&h, Success, 3_000, 7, Some(0)));

        // Without the declaration every success is judged.
        let before = candidate(&h, 4_000);
        let judged = settle(&h, &before, &outcome(Success, 4_000), None, |_, _| {
            Judgement {
                cooldown_ms: 0,
                clear_history: true,
                by_policy: true,
            }
        });
        assert!(judged.judged);
    }
}
