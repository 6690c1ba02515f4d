//! Settling an attempt once it ends: admission and health are settled, the
//! cooldown policy judges its outcome, and a success is remembered for the
//! user.

use std::sync::Arc;
use std::time::Instant;

use crate::admission::Ticket;
use crate::clock::SharedClock;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{self, CallOptions, DeploymentTable, PolicySlot, PolicyVersion};
use crate::state::Change;
use crate::upstream::{AttemptFailure, StreamEnd, TokenUsage};

use super::group::{Deployment, PolicyObserver, UserAffinity};
use super::usage_book::UsageBook;
use super::wit::candidate;
use crate::attempt::{settle, Judgement, Settled};

/// How an attempt ended.
#[derive(Debug, Clone)]
pub struct AttemptEnd {
    /// Success, or how it failed.
    pub kind: OutcomeKind,
    /// How long Bedrock asked to wait, when it did.
    pub retry_after_ms: Option<u64>,
    /// Bedrock's words for a failure, or what went wrong on the way.
    pub detail: Option<String>,
    /// Bedrock's status, when it answered with an error.
    pub upstream_status: Option<u16>,
    /// The tokens Bedrock said the attempt used.
    pub usage: Option<TokenUsage>,
}

impl AttemptEnd {
    /// A success that used `usage`, when Bedrock said.
    pub fn success(usage: Option<TokenUsage>) -> Self {
        Self {
            kind: OutcomeKind::Success,
            retry_after_ms: None,
            detail: None,
            upstream_status: None,
            usage,
        }
    }

    /// The end of an attempt that failed with `failure`.
    pub fn failed(failure: &AttemptFailure) -> Self {
        Self {
            kind: failure.kind,
            retry_after_ms: failure.retry_after_ms,
            detail: Some(failure.detail.clone()),
            upstream_status: failure.status,
            usage: None,
        }
    }

    /// How a stream ended.
    pub fn of_stream(end: StreamEnd) -> Self {
        Self {
            kind: end.kind,
            retry_after_ms: None,
            detail: end.detail,
            upstream_status: None,
            usage: end.usage,
        }
    }
}

/// Settles a successful attempt when its answer is delivered (at once for
/// a whole answer, at the end of a stream). If dropped unfinished (the
/// client went away), it settles a success: the deployment did its part.
#[must_use = "an attempt is settled when its completion is finished or dropped"]
pub struct AttemptCompletion {
    pending: Option<PendingAttempt>,
}

impl AttemptCompletion {
    pub(super) fn new(pending: PendingAttempt) -> Self {
        Self {
            pending: Some(pending),
        }
    }

    /// The attempt ended as `end` says (a success, or a failure in
    /// mid-stream).
    pub fn finish(mut self, end: AttemptEnd) {
        if let Some(pending) = self.pending.take() {
            pending.settle(end);
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
            Ok(end) => self.finish(AttemptEnd::of_stream(end)),
            Err(_) => self.finish(AttemptEnd {
                kind: OutcomeKind::ServerError,
                detail: Some("stream task failed".into()),
                ..AttemptEnd::success(None)
            }),
        }
    }
}

impl Drop for AttemptCompletion {
    fn drop(&mut self) {
        if let Some(pending) = self.pending.take() {
            pending.settle(AttemptEnd::success(None));
        }
    }
}

/// An attempt under way, with everything needed to settle it when it ends.
pub(super) struct PendingAttempt {
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
    /// What admission let the attempt take (None once settled).
    pub(super) ticket: Option<Ticket>,
    /// Where the tokens it used are booked.
    pub(super) book: UsageBook,
    /// The attempt's span (none until it starts), ended when it is settled.
    pub(super) span: tracing::Span,
}

impl Drop for PendingAttempt {
    /// Dropped unsettled: the request went away mid-attempt. Give back what
    /// the attempt held, judging nothing.
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take() {
            let now = self.clock.now_ms();
            self.deployment.admission.abandon(ticket, now);
            self.deployment.health.abandon_attempt();
        }
    }
}

impl PendingAttempt {
    /// Records how the attempt ended on its span and, for a success, on
    /// the request's (traces only).
    fn trace_end(
        &self,
        kind: OutcomeKind,
        status: Option<u16>,
        usage: Option<&TokenUsage>,
        now_ms: u64,
    ) {
        if !self.observer.traced {
            return;
        }
        let span = &self.span;
        span.record("switchyard.outcome", kind.as_str());
        span.record(
            "switchyard.latency_ms",
            now_ms.saturating_sub(self.started_ms),
        );
        if let Some(status) = status {
            span.record("http.response.status_code", status);
        }
        let request = &self.observer.span;
        if let Some(usage) = usage {
            // The input the model read, whether from the cache or not.
            let input = usage.input + usage.cache_read + usage.cache_write;
            for span in [span, request] {
                span.record("gen_ai.usage.input_tokens", input);
                span.record("gen_ai.usage.output_tokens", usage.output);
            }
        }
        if kind == OutcomeKind::Success {
            let config = &self.deployment.config;
            request.record("gen_ai.response.model", config.model_id.as_str());
            request.record("switchyard.deployment", config.id.as_str());
        } else {
            span.record("error.type", kind.as_str());
            span.record("otel.status_code", "ERROR");
        }
        // A span ends when it is last exited: a stream settles in a task of
        // its own, outside both, so enter them once more to end them now
        // rather than when the stream opened.
        let _request = request.enter();
        let _attempt = span.enter();
    }

    /// Settles the attempt as `end` says; the outcome it made.
    pub(super) fn settle(mut self, end: AttemptEnd) -> Outcome {
        let AttemptEnd {
            kind,
            retry_after_ms,
            detail,
            upstream_status,
            usage,
        } = end;
        let now = self.clock.now_ms();
        if let Some(ticket) = self.ticket.take() {
            self.deployment
                .admission
                .finish(ticket, kind, usage.map(|u| u.total()), now);
        }
        if let Some(usage) = &usage {
            self.book.book(usage);
        }
        self.trace_end(kind, upstream_status, usage.as_ref(), now);
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
        let options = CallOptions {
            request_id: Some(self.request_id.clone()),
            seed: self.seed,
            deployments: self.deployments.clone(),
        };
        let Settled {
            cooldown_ms,
            clear_history,
            judged,
        } = settle(
            &self.deployment.health,
            &before,
            &outcome,
            self.cooldown.policy.idempotent_successes(),
            |outcome, before| {
                let called = Instant::now();
                let decision = self.cooldown.policy.on_outcome(
                    &policy::Outcome::from(outcome),
                    before,
                    &options,
                );
                self.observer.observe(
                    &self.cooldown_slot,
                    &self.cooldown,
                    &decision,
                    called.elapsed(),
                    |d| {
                        format!(
                            "{}: cooldown {} ms{}",
                            outcome.kind.as_str(),
                            d.cooldown_ms,
                            if d.clear_history {
                                ", history cleared"
                            } else {
                                ""
                            }
                        )
                    },
                );
                Judgement::of(&decision, outcome)
            },
        );
        if !judged {
            self.observer.metrics.policy_call_skipped(
                &self.observer.group,
                crate::vocabulary::PolicyKind::Cooldown,
            );
        }
        if kind == OutcomeKind::Success {
            if let Some((affinity, user, member)) = &self.affinity {
                affinity.remember(user, *member, now);
            }
        }
        self.observer.metrics.attempt(
            &self.observer.group,
            &outcome.deployment,
            kind,
            self.started.elapsed().as_secs_f64(),
        );
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
