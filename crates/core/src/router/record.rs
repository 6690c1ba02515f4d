//! Recording an attempt's outcome: admission and health are settled, the
//! cooldown policy judges it, and a success is remembered for the user.

use std::sync::Arc;
use std::time::Instant;

use crate::admission::Ticket;
use crate::clock::SharedClock;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{self, CallOptions, DeploymentTable, PolicySlot, PolicyVersion};
use crate::state::Change;

use super::group::{Deployment, PolicyObserver, UserAffinity};
use super::wit::candidate;

/// Records how a successful attempt finally ended. If dropped unfinished (the
/// client went away), it records a success: the deployment did its part.
#[must_use = "an attempt is recorded when its completion is finished or dropped"]
pub struct AttemptCompletion {
    recorder: Option<Recorder>,
}

impl AttemptCompletion {
    pub(super) fn new(recorder: Recorder) -> Self {
        Self {
            recorder: Some(recorder),
        }
    }
}

impl AttemptCompletion {
    /// The attempt ended as `kind` (success, or a failure in mid-stream),
    /// having used `used_tokens` (input plus output) when Bedrock said.
    pub fn finish(mut self, kind: OutcomeKind, detail: Option<String>, used_tokens: Option<u64>) {
        if let Some(r) = self.recorder.take() {
            r.record(kind, None, detail, None, used_tokens);
        }
    }
}

impl AttemptCompletion {
    /// Records how a stream ended, once its follower task says (a task that
    /// died is a server error), settling its tokens with the usage of the
    /// stream's metadata event.
    pub async fn finish_when_ended(
        self,
        finished: tokio::task::JoinHandle<crate::upstream::StreamEnd>,
    ) {
        match finished.await {
            Ok(end) => self.finish(end.kind, end.detail, end.used_tokens),
            Err(_) => self.finish(
                OutcomeKind::ServerError,
                Some("stream task failed".into()),
                None,
            ),
        }
    }
}

impl Drop for AttemptCompletion {
    fn drop(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.record(OutcomeKind::Success, None, None, None, None);
        }
    }
}

/// Everything needed to record one attempt's outcome.
pub(super) struct Recorder {
    pub(super) deployment: Arc<Deployment>,
    pub(super) cooldown_slot: Arc<PolicySlot>,
    pub(super) cooldown: Arc<PolicyVersion>,
    pub(super) observer: PolicyObserver,
    pub(super) clock: SharedClock,
    pub(super) started: Instant,
    /// When it started on the gateway's clock, which its latency is
    /// judged by (so a manual clock replays it exactly).
    pub(super) started_ms: u64,
    /// The request's policy seed.
    pub(super) seed: Option<u64>,
    pub(super) request_id: String,
    pub(super) deployments: DeploymentTable,
    /// The group's affinity, the request's user and the deployment's index
    /// among the group's members, to remember a success.
    pub(super) affinity: Option<(Arc<UserAffinity>, String, usize)>,
    /// What admission let the attempt take (None once recorded).
    pub(super) ticket: Option<Ticket>,
}

impl Drop for Recorder {
    /// Dropped unrecorded: the request went away mid-attempt. Give back what
    /// the attempt held, judging nothing.
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let now = self.clock.now_ms();
            self.deployment.admission.abandon(ticket, now);
            self.deployment.health.abandon_attempt();
        }
    }
}

impl Recorder {
    pub(super) fn record(
        mut self,
        kind: OutcomeKind,
        retry_after_ms: Option<u64>,
        detail: Option<String>,
        upstream_status: Option<u16>,
        used_tokens: Option<u64>,
    ) -> Outcome {
        let now = self.clock.now_ms();
        if let Some(ticket) = self.ticket.take() {
            self.deployment
                .admission
                .finish(ticket, kind, used_tokens, now);
        }
        let outcome = Outcome {
            deployment: self.deployment.config.id.clone(),
            kind,
            latency_ms: u32::try_from(now.saturating_sub(self.started_ms)).unwrap_or(u32::MAX),
            retry_after_ms,
            at_ms: now,
            detail,
            upstream_status,
        };
        let before = candidate(&self.deployment, now);
        self.deployment.health.end_attempt(&outcome);
        if kind == OutcomeKind::Success {
            if let Some((affinity, user, member)) = &self.affinity {
                affinity.record(user, *member, now);
            }
        }
        let options = CallOptions {
            request_id: Some(self.request_id.clone()),
            seed: self.seed,
            deployments: self.deployments.clone(),
        };
        self.observer.metrics.attempt(
            &self.observer.group,
            &outcome.deployment,
            kind,
            self.started.elapsed().as_secs_f64(),
        );
        let called = Instant::now();
        let decision =
            self.cooldown
                .policy
                .on_outcome(&policy::Outcome::from(&outcome), &before, &options);
        self.observer.observe(
            &self.cooldown_slot,
            &self.cooldown,
            &decision,
            called.elapsed(),
        );
        let (cooldown_ms, clear_history) = match decision {
            Ok((d, _)) => (d.cooldown_ms, d.clear_history),
            Err(_) => safe_cooldown(&outcome),
        };
        self.deployment
            .health
            .apply_cooldown(now, cooldown_ms, clear_history, kind);
        // Siblings hear of a cooldown that starts or ends, not of every success.
        if cooldown_ms > 0 || before.cooldown_remaining_ms > 0 {
            self.deployment.admission.state().publish(Change::Cooldown {
                deployment: outcome.deployment.clone(),
                remaining_ms: cooldown_ms,
                cause: kind,
                clear_history,
            });
        }
        if cooldown_ms > 0 {
            tracing::info!(
                request_id = %self.request_id,
                deployment = %outcome.deployment,
                cooldown_ms,
                cause = ?kind,
                "deployment cooling down"
            );
        }
        outcome
    }
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
