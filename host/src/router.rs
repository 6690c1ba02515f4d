//! The attempt loop: the only place that sequences a request.
//!
//! ```text
//! order = selection.select(request, candidates)
//! for each deployment in order:
//!     outcome = upstream call
//!     health.record(outcome); cooldown.on-outcome(outcome) -> health
//!     success -> return; client error -> stop
//!     order = fallback.next(request, outcome, untried)
//! ```
//! Policies decide; the router only sequences. A policy fault never fails
//! the request: the router uses the safe order (configured priority) for
//! that call instead.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use crate::admission::{DeploymentAdmission, Permit, Refusal, Ticket};
use crate::attempt::{AfterFailure, AttemptPlan};
use crate::clock::SharedClock;
use crate::config::DeploymentConfig;
use crate::health::breaker::BreakerState;
use crate::health::{DeploymentHealth, HealthSnapshot};
use crate::metrics::Metrics;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{
    self, CallOptions, DeploymentTable, PolicyFault, PolicyKind, PolicySlot, PolicyVersion,
};
use crate::state::Change;
use crate::upstream::{AttemptFailure, Upstream};

/// One upstream target and everything the gateway knows of it.
#[derive(Debug)]
pub struct Deployment {
    /// Its config.
    pub config: DeploymentConfig,
    /// Its pooled client.
    pub upstream: Upstream,
    /// Its health.
    pub health: DeploymentHealth,
    /// Its quotas, concurrency limit and circuit breaker.
    pub admission: DeploymentAdmission,
}

/// The policy slots of one model group.
#[derive(Debug, Clone)]
pub struct GroupSlots {
    pub selection: Arc<PolicySlot>,
    pub cooldown: Arc<PolicySlot>,
    pub fallback: Arc<PolicySlot>,
}

impl GroupSlots {
    /// The slot of `kind`.
    pub fn get(&self, kind: PolicyKind) -> &Arc<PolicySlot> {
        match kind {
            PolicyKind::Selection => &self.selection,
            PolicyKind::Cooldown => &self.cooldown,
            PolicyKind::Fallback => &self.fallback,
        }
    }
}

/// Counts a policy call, logs a fault, and rolls a faulty new version back.
#[derive(Clone)]
struct PolicyObserver {
    group: String,
    request_id: String,
    metrics: Arc<Metrics>,
}

impl PolicyObserver {
    fn observe<T>(
        &self,
        slot: &PolicySlot,
        version: &PolicyVersion,
        result: &Result<T, PolicyFault>,
        elapsed: Duration,
    ) {
        let fault = result.as_ref().err();
        self.metrics.policy_call(
            &self.group,
            slot.kind(),
            elapsed,
            fault.map(PolicyFault::code),
        );
        if let Some(fault) = fault {
            tracing::warn!(
                request_id = %self.request_id,
                group = %self.group,
                kind = %slot.kind(),
                policy = version.policy.name(),
                version = version.number,
                fault = fault.code(),
                error = %fault,
                "policy call faulted; using the safe order"
            );
        }
        if let Some(rollback) = slot.observe(version, fault.is_some()) {
            self.metrics
                .policy_swap(&self.group, slot.kind(), "auto_rollback");
            tracing::error!(
                group = %self.group,
                kind = %slot.kind(),
                from = rollback.from,
                to = rollback.to,
                "policy version faulted too often; rolled back"
            );
        }
    }
}

/// A name clients ask for, and the deployments behind it.
#[derive(Debug)]
pub struct ModelGroup {
    /// What clients ask for.
    pub name: String,
    /// Its deployments, in the safe order (configured priority, then config order).
    pub members: Vec<Arc<Deployment>>,
    /// Its policy slots.
    pub slots: GroupSlots,
    /// Each member's priority, by index, for the attempt plan's safe order.
    priorities: Vec<u32>,
    /// Where its deployments run, for `host.describe`.
    deployments: DeploymentTable,
    sequence: AtomicU64,
    affinity: Arc<UserAffinity>,
}

impl ModelGroup {
    /// A group over `members`, which are put into the safe order here.
    pub fn new(name: String, mut members: Vec<Arc<Deployment>>, slots: GroupSlots) -> Self {
        members.sort_by_key(|d| d.config.priority);
        let deployments = deployment_table(members.iter().map(|d| &d.config));
        Self {
            name,
            priorities: members.iter().map(|d| d.config.priority).collect(),
            members,
            slots,
            deployments,
            sequence: AtomicU64::new(0),
            affinity: Arc::new(UserAffinity::default()),
        }
    }
}

/// Where each user's requests last succeeded, for sticky strategies. Bounded:
/// past [`UserAffinity::MAX_USERS`] users the oldest entries are forgotten.
#[derive(Debug, Default)]
pub struct UserAffinity {
    users: std::sync::Mutex<HashMap<String, policy::LastSuccess>>,
}

impl UserAffinity {
    /// Most users remembered per model group.
    pub const MAX_USERS: usize = 100_000;

    /// Where `user` last succeeded.
    pub fn last_success(&self, user: &str) -> Option<policy::LastSuccess> {
        self.users
            .lock()
            .expect("affinity poisoned")
            .get(user)
            .cloned()
    }

    fn record(&self, user: &str, deployment: &str, at_ms: u64) {
        let mut users = self.users.lock().expect("affinity poisoned");
        if users.len() >= Self::MAX_USERS && !users.contains_key(user) {
            // Forget the older half: cheap, rare, and keeps memory bounded.
            let mut times: Vec<u64> = users.values().map(|s| s.at_ms).collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            users.retain(|_, s| s.at_ms > cutoff);
        }
        users.insert(
            user.to_owned(),
            policy::LastSuccess {
                deployment: deployment.to_owned(),
                at_ms,
            },
        );
    }
}

/// A client request on its way to a model group.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    pub request_id: String,
    pub user: Option<String>,
    pub estimated_tokens: u32,
    pub body: Bytes,
    /// Until when the request may wait for capacity before its first
    /// attempt; past it, it fails with `retry-after` instead.
    pub deadline: tokio::time::Instant,
}

/// One attempt, as reported to the client when all fail.
#[derive(Debug, Clone, Serialize)]
pub struct AttemptRecord {
    pub deployment: String,
    pub outcome: OutcomeKind,
    pub latency_ms: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Why a request ended without an answer.
#[derive(Debug)]
pub enum RouteError {
    /// No such model group.
    UnknownGroup(String),
    /// Nothing could take the request before its deadline: every deployment
    /// is cooling down, out of quota or open-circuited (or the selection
    /// policy chose none).
    NothingAvailable { retry_after_ms: u64 },
    /// Every attempt failed.
    AttemptsFailed {
        attempts: Vec<AttemptRecord>,
        retry_after_ms: Option<u64>,
    },
    /// Bedrock refused the request itself; no other deployment would accept it.
    Rejected {
        status: u16,
        detail: String,
        attempts: Vec<AttemptRecord>,
    },
}

/// A successful attempt, not yet recorded: the caller finishes it when the
/// answer has been delivered (at once for Converse, at the end for a stream).
pub struct Routed<T> {
    pub value: T,
    pub deployment: String,
    pub attempts: Vec<AttemptRecord>,
    pub completion: AttemptCompletion,
}

/// Records how a successful attempt finally ended. If dropped unfinished (the
/// client went away), it records a success: the deployment did its part.
pub struct AttemptCompletion {
    recorder: Option<Recorder>,
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
struct Recorder {
    deployment: Arc<Deployment>,
    cooldown_slot: Arc<PolicySlot>,
    cooldown: Arc<PolicyVersion>,
    observer: PolicyObserver,
    clock: SharedClock,
    started: Instant,
    /// When it started on the gateway's clock, which its latency is
    /// judged by (so a manual clock replays it exactly).
    started_ms: u64,
    /// The request's policy seed.
    seed: Option<u64>,
    request_id: String,
    deployments: DeploymentTable,
    /// The group's affinity and the request's user, to remember a success.
    affinity: Option<(Arc<UserAffinity>, String)>,
    /// What admission let the attempt take (None once recorded).
    ticket: Option<Ticket>,
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
    fn record(
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
            if let Some((affinity, user)) = &self.affinity {
                affinity.record(user, &outcome.deployment, now);
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
        let decision = self
            .cooldown
            .policy
            .on_outcome(&wit_outcome(&outcome), &before, &options);
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

/// What a policy sees of an attempt's outcome.
pub fn wit_outcome(o: &Outcome) -> policy::Outcome {
    policy::Outcome {
        deployment: o.deployment.clone(),
        kind: match o.kind {
            OutcomeKind::Success => policy::OutcomeKind::Success,
            OutcomeKind::Throttled => policy::OutcomeKind::Throttled,
            OutcomeKind::Unavailable => policy::OutcomeKind::Unavailable,
            OutcomeKind::Timeout => policy::OutcomeKind::Timeout,
            OutcomeKind::ClientError => policy::OutcomeKind::ClientError,
            OutcomeKind::ServerError => policy::OutcomeKind::ServerError,
        },
        latency_ms: o.latency_ms,
        retry_after_ms: o.retry_after_ms,
        at_ms: o.at_ms,
    }
}

/// What a policy sees of `deployment` at `now_ms`.
pub fn candidate(deployment: &Deployment, now_ms: u64) -> policy::Candidate {
    let admission = deployment.admission.snapshot(now_ms);
    policy::Candidate {
        quota_used_permille: admission.quota_used_permille,
        circuit: match admission.circuit {
            BreakerState::Closed => policy::Circuit::Closed,
            BreakerState::Open => policy::Circuit::Open,
            BreakerState::HalfOpen => policy::Circuit::HalfOpen,
        },
        ..wit_candidate(&deployment.config, &deployment.health.snapshot(now_ms))
    }
}

/// What a policy sees of a deployment with config `config` and health `h`,
/// with no quota used and a closed circuit (admission's part is added by
/// [`candidate`]).
pub fn wit_candidate(config: &DeploymentConfig, h: &HealthSnapshot) -> policy::Candidate {
    policy::Candidate {
        deployment: config.id.clone(),
        priority: config.priority,
        weight: config.weight,
        in_flight: h.in_flight,
        cooldown_remaining_ms: h.cooldown_remaining_ms,
        recent_throttles: h.recent_throttles,
        last_used_ms: h.last_used_ms,
        last_throttle_ms: h.last_throttle_ms,
        quota_used_permille: 0,
        success_permille: h.success_permille,
        latency_ewma_ms: h.latency_ewma_ms,
        circuit: policy::Circuit::Closed,
    }
}

/// Where the deployments of `configs` run, as `host.describe` tells a policy.
pub fn deployment_table<'a>(
    configs: impl IntoIterator<Item = &'a DeploymentConfig>,
) -> DeploymentTable {
    DeploymentTable::new(configs.into_iter().map(|c| {
        (
            c.id.clone(),
            policy::DeploymentInfo {
                model_id: c.model_id.clone(),
                region: c.region.clone(),
                account: c.account.clone(),
            },
        )
    }))
}

/// Routes requests to model groups.
pub struct Router {
    groups: HashMap<String, ModelGroup>,
    clock: SharedClock,
    max_attempts: u32,
    /// Policy calls' randomness is seeded with this XOR the request's
    /// sequence number (None: fresh randomness).
    seed: Option<u64>,
    metrics: Arc<Metrics>,
}

impl Router {
    /// A router over `groups`; `max_attempts` of 0 means one per deployment;
    /// `seed` fixes the policies' randomness per request.
    pub fn new(
        groups: Vec<ModelGroup>,
        clock: SharedClock,
        max_attempts: u32,
        seed: Option<u64>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
            clock,
            max_attempts,
            seed,
            metrics,
        }
    }

    /// The metrics routing reports to.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// The model group `name`.
    pub fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.get(name)
    }

    /// All model groups.
    pub fn groups(&self) -> impl Iterator<Item = &ModelGroup> {
        self.groups.values()
    }

    /// The clock routing decisions run on.
    pub fn clock(&self) -> &SharedClock {
        &self.clock
    }

    /// Runs the attempt loop for `request` on group `group_name`, calling
    /// `attempt` once per deployment tried. `slot` is the request's place
    /// in the fair queue: it is given back while the request waits for a
    /// deployment's capacity, and taken again before the next pass.
    pub async fn route<T, F, Fut>(
        &self,
        group_name: &str,
        request: &RouteRequest,
        slot: &mut Permit,
        attempt: F,
    ) -> Result<Routed<T>, RouteError>
    where
        F: Fn(Upstream, Bytes) -> Fut,
        Fut: Future<Output = Result<T, AttemptFailure>>,
    {
        // One span per request: every line it logs carries its id and group.
        let span = tracing::info_span!(
            "request",
            request_id = %request.request_id,
            group = %group_name
        );
        self.route_in_span(group_name, request, slot, attempt)
            .instrument(span)
            .await
    }

    async fn route_in_span<T, F, Fut>(
        &self,
        group_name: &str,
        request: &RouteRequest,
        slot: &mut Permit,
        attempt: F,
    ) -> Result<Routed<T>, RouteError>
    where
        F: Fn(Upstream, Bytes) -> Fut,
        Fut: Future<Output = Result<T, AttemptFailure>>,
    {
        let group = self
            .groups
            .get(group_name)
            .ok_or_else(|| RouteError::UnknownGroup(group_name.to_owned()))?;
        // One snapshot of the policies for the whole request: a swap in the
        // middle must not mix two versions inside one request.
        let slots = &group.slots;
        let policies = Policies {
            selection: slots.selection.current(),
            cooldown: slots.cooldown.current(),
            fallback: slots.fallback.current(),
        };
        // Until a deployment takes the request: when none can (cooling
        // down, out of quota, circuit open), wait for the earliest recovery
        // if it comes before the deadline.
        loop {
            let blocked = match self.try_route(group, &policies, request, &attempt).await {
                Pass::Done(result) => return result,
                Pass::NoCapacity(blocked) => blocked,
            };
            let tokens = u64::from(request.estimated_tokens);
            let soonest = capacity_wait_ms(group, tokens, self.clock.now_ms());
            let now = tokio::time::Instant::now();
            let wait_ms = match (blocked, soonest) {
                // Only concurrency stood in the way (with or without other
                // limits): a slot can free at any moment, so wait for one
                // until the deadline, and for the first recovery too.
                (Blocked::ByAdmission { concurrency: true }, 0) => CONCURRENCY_RECHECK_MS,
                (Blocked::ByAdmission { concurrency: true }, ms) => ms.min(CONCURRENCY_RECHECK_MS),
                // Quotas, cooldowns or circuits refused them all: try again
                // when the first recovers.
                (Blocked::ByAdmission { concurrency: false }, ms) => ms.max(10),
                // The selection policy chose none although nothing is
                // cooling down or out of quota: its choice, not capacity;
                // waiting would not change it.
                (Blocked::BySelection, 0) => 0,
                (Blocked::BySelection, ms) => ms,
            };
            let for_a_slot = matches!(blocked, Blocked::ByAdmission { concurrency: true });
            let wake = now + Duration::from_millis(wait_ms);
            let too_late = if for_a_slot {
                now >= request.deadline
            } else {
                wait_ms == 0 || wake > request.deadline
            };
            if too_late {
                tracing::info!(
                    retry_after_ms = wait_ms,
                    "no deployment can take the request before its deadline"
                );
                return Err(RouteError::NothingAvailable {
                    retry_after_ms: wait_ms.max(1_000),
                });
            }
            tracing::debug!(wait_ms, for_a_slot, "waiting for capacity");
            let wake = wake.min(request.deadline);
            let capacity = async {
                if for_a_slot {
                    let freed = futures::future::select_all(
                        group
                            .members
                            .iter()
                            .map(|d| Box::pin(d.admission.capacity_freed())),
                    );
                    tokio::select! {
                        _ = freed => {}
                        _ = tokio::time::sleep_until(wake) => {}
                    }
                } else {
                    tokio::time::sleep_until(wake).await;
                }
            };
            if let Err(e) = slot.step_aside_while(capacity, request.deadline).await {
                tracing::info!(error = %e, "no turn in the queue again after waiting for capacity");
                return Err(RouteError::NothingAvailable {
                    retry_after_ms: 1_000,
                });
            }
        }
    }

    /// One pass of selection and attempts.
    async fn try_route<T, F, Fut>(
        &self,
        group: &ModelGroup,
        policies: &Policies,
        request: &RouteRequest,
        attempt: &F,
    ) -> Pass<T>
    where
        F: Fn(Upstream, Bytes) -> Fut,
        Fut: Future<Output = Result<T, AttemptFailure>>,
    {
        let slots = &group.slots;
        let Policies {
            selection,
            cooldown,
            fallback,
        } = policies;
        let observer = PolicyObserver {
            group: group.name.clone(),
            request_id: request.request_id.clone(),
            metrics: self.metrics.clone(),
        };
        let now = self.clock.now_ms();
        let mut info = policy::RequestInfo {
            request_id: request.request_id.clone(),
            user: request.user.clone(),
            model_group: group.name.clone(),
            attempt: 0,
            sequence: group.sequence.fetch_add(1, Ordering::Relaxed),
            estimated_tokens: request.estimated_tokens,
            previous_deployment: None,
            user_last_success: request
                .user
                .as_deref()
                .and_then(|u| group.affinity.last_success(u)),
        };
        let options = CallOptions {
            request_id: Some(request.request_id.clone()),
            seed: self.seed.map(|seed| seed ^ info.sequence),
            deployments: group.deployments.clone(),
        };
        let candidates: Vec<_> = group.members.iter().map(|d| candidate(d, now)).collect();
        let called = Instant::now();
        let selected = selection.policy.select(&info, &candidates, &options);
        observer.observe(&slots.selection, selection, &selected, called.elapsed());
        let selection_order = selected.ok().map(|(order, _)| order);
        let mut plan =
            AttemptPlan::new(group.priorities.clone(), self.max_attempts, selection_order);
        if plan.chose_none() {
            tracing::info!("no deployment fit to call");
            return Pass::NoCapacity(Blocked::BySelection);
        }
        tracing::info!(
            order = ?plan.order().map(|i| group.members[i].config.id.as_str()).collect::<Vec<_>>(),
            "request will try deployments"
        );
        let tokens = u64::from(request.estimated_tokens);
        let mut refused_for_concurrency = false;
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        while let Some(index) = plan.next_attempt() {
            let deployment = &group.members[index];
            let ticket = match deployment
                .admission
                .try_start(tokens, self.clock.now_ms())
                .await
            {
                Ok(ticket) => ticket,
                Err(refusal) => {
                    refused_for_concurrency |= refusal == Refusal::Concurrency;
                    tracing::debug!(deployment = %deployment.config.id, ?refusal, "skipped by admission");
                    self.metrics
                        .skip(&group.name, &deployment.config.id, refusal);
                    plan.refused(index);
                    continue;
                }
            };
            info.attempt = attempts.len() as u32;
            tracing::info!(deployment = %deployment.config.id, attempt = info.attempt, "attempting");
            deployment.health.begin_attempt(self.clock.now_ms());
            let recorder = Recorder {
                deployment: deployment.clone(),
                cooldown_slot: slots.cooldown.clone(),
                cooldown: cooldown.clone(),
                observer: observer.clone(),
                clock: self.clock.clone(),
                started: Instant::now(),
                started_ms: self.clock.now_ms(),
                seed: options.seed,
                request_id: request.request_id.clone(),
                deployments: group.deployments.clone(),
                affinity: request.user.clone().map(|u| (group.affinity.clone(), u)),
                ticket: Some(ticket),
            };
            let attempt_span = tracing::info_span!(
                "attempt",
                deployment = %deployment.config.id,
                attempt = info.attempt
            );
            let result = attempt(deployment.upstream.clone(), request.body.clone())
                .instrument(attempt_span)
                .await;
            let failure = match result {
                Ok(value) => {
                    tracing::info!(deployment = %deployment.config.id, "succeeded");
                    return Pass::Done(Ok(Routed {
                        value,
                        deployment: deployment.config.id.clone(),
                        attempts,
                        completion: AttemptCompletion {
                            recorder: Some(recorder),
                        },
                    }));
                }
                Err(failure) => failure,
            };
            let outcome = recorder.record(
                failure.kind,
                failure.retry_after_ms,
                Some(failure.detail.clone()),
                failure.status,
                None,
            );
            tracing::info!(deployment = %deployment.config.id, outcome = ?failure.kind, detail = %failure.detail, "attempt failed");
            attempts.push(AttemptRecord {
                deployment: outcome.deployment.clone(),
                outcome: outcome.kind,
                latency_ms: outcome.latency_ms,
                retry_after_ms: outcome.retry_after_ms,
                detail: outcome.detail.clone(),
            });
            if failure.kind == OutcomeKind::ClientError {
                return Pass::Done(Err(RouteError::Rejected {
                    status: failure.status.unwrap_or(400),
                    detail: failure.detail,
                    attempts,
                }));
            }
            let AfterFailure::AskFallback { tried, remaining } = plan.failed(failure.kind) else {
                break;
            };
            info.attempt = attempts.len() as u32;
            info.previous_deployment = Some(deployment.config.id.clone());
            let now = self.clock.now_ms();
            let candidates_of = |indices: &[usize]| -> Vec<policy::Candidate> {
                indices
                    .iter()
                    .map(|&i| candidate(&group.members[i], now))
                    .collect()
            };
            let called = Instant::now();
            let next = fallback.policy.next(
                &info,
                &wit_outcome(&outcome),
                &candidates_of(&tried),
                &candidates_of(&remaining),
                &options,
            );
            observer.observe(&slots.fallback, fallback, &next, called.elapsed());
            plan.fallback(&remaining, next.ok().map(|(order, _)| order));
        }
        if attempts.is_empty() {
            return Pass::NoCapacity(Blocked::ByAdmission {
                concurrency: refused_for_concurrency,
            });
        }
        let retry_after_ms = attempts.iter().filter_map(|a| a.retry_after_ms).min();
        Pass::Done(Err(RouteError::AttemptsFailed {
            attempts,
            retry_after_ms,
        }))
    }
}

/// The policy versions one request runs with, start to end.
struct Policies {
    selection: Arc<PolicyVersion>,
    cooldown: Arc<PolicyVersion>,
    fallback: Arc<PolicyVersion>,
}

/// How one pass of selection and attempts ended.
// Only ever returned, never stored: boxing the large variant would cost an
// allocation per request for nothing.
#[allow(clippy::large_enum_variant)]
enum Pass<T> {
    /// With an answer or a final error.
    Done(Result<Routed<T>, RouteError>),
    /// No attempt could start.
    NoCapacity(Blocked),
}

/// Why no attempt could start.
#[derive(Debug, Clone, Copy)]
enum Blocked {
    /// The selection policy chose no deployment.
    BySelection,
    /// Admission refused every deployment the policies chose; `concurrency`:
    /// at least one because its attempts in flight were at its limit.
    ByAdmission { concurrency: bool },
}

/// While a request waits for a concurrency slot, it is woken by the slot's
/// release; it also looks again this often, in case that signal went to a
/// request that then left.
const CONCURRENCY_RECHECK_MS: u64 = 100;

/// How long until some deployment of `group` could take a request of
/// `tokens`: the soonest, over its deployments, of the later of its cooldown's
/// end and its admission limits' recovery (0: one could now, as far as
/// cooldowns and quotas go).
fn capacity_wait_ms(group: &ModelGroup, tokens: u64, now_ms: u64) -> u64 {
    group
        .members
        .iter()
        .map(|d| {
            let cooldown = d.health.snapshot(now_ms).cooldown_remaining_ms;
            cooldown.max(d.admission.wait_ms(tokens, now_ms))
        })
        .min()
        .unwrap_or(1_000)
}
