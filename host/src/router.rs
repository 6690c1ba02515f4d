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
use std::time::Instant;

use bytes::Bytes;
use serde::Serialize;

use crate::clock::SharedClock;
use crate::config::DeploymentConfig;
use crate::health::{DeploymentHealth, HealthSnapshot};
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{self, CallOptions, Policy, PolicyFault};
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
}

/// The policies that route one model group.
#[derive(Debug, Clone)]
pub struct GroupPolicies {
    pub selection: Arc<Policy>,
    pub cooldown: Arc<Policy>,
    pub fallback: Arc<Policy>,
}

/// A name clients ask for, and the deployments behind it.
#[derive(Debug)]
pub struct ModelGroup {
    /// What clients ask for.
    pub name: String,
    /// Its deployments, in the safe order (configured priority, then config order).
    pub members: Vec<Arc<Deployment>>,
    /// Its policies.
    pub policies: GroupPolicies,
    sequence: AtomicU64,
}

impl ModelGroup {
    /// A group over `members`, which are put into the safe order here.
    pub fn new(name: String, mut members: Vec<Arc<Deployment>>, policies: GroupPolicies) -> Self {
        members.sort_by_key(|d| d.config.priority);
        Self {
            name,
            members,
            policies,
            sequence: AtomicU64::new(0),
        }
    }
}

/// A client request on its way to a model group.
#[derive(Debug, Clone)]
pub struct RouteRequest {
    pub request_id: String,
    pub user: Option<String>,
    pub estimated_tokens: u32,
    pub body: Bytes,
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
    /// The selection policy found nothing fit to call (everything cooling down).
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
    /// The attempt ended as `kind` (success, or a failure in mid-stream).
    pub fn finish(mut self, kind: OutcomeKind, detail: Option<String>) {
        if let Some(r) = self.recorder.take() {
            r.record(kind, None, detail, None);
        }
    }
}

impl Drop for AttemptCompletion {
    fn drop(&mut self) {
        if let Some(r) = self.recorder.take() {
            r.record(OutcomeKind::Success, None, None, None);
        }
    }
}

/// Everything needed to record one attempt's outcome.
struct Recorder {
    deployment: Arc<Deployment>,
    cooldown: Arc<Policy>,
    clock: SharedClock,
    started: Instant,
    request_id: String,
}

impl Recorder {
    fn record(
        self,
        kind: OutcomeKind,
        retry_after_ms: Option<u64>,
        detail: Option<String>,
        upstream_status: Option<u16>,
    ) -> Outcome {
        let now = self.clock.now_ms();
        let outcome = Outcome {
            deployment: self.deployment.config.id.clone(),
            kind,
            latency_ms: u32::try_from(self.started.elapsed().as_millis()).unwrap_or(u32::MAX),
            retry_after_ms,
            at_ms: now,
            detail,
            upstream_status,
        };
        let before = candidate(&self.deployment, now);
        self.deployment.health.end_attempt(&outcome);
        let options = CallOptions {
            request_id: Some(self.request_id.clone()),
            seed: None,
        };
        let (cooldown_ms, clear_history) =
            match self
                .cooldown
                .on_outcome(&wit_outcome(&outcome), &before, &options)
            {
                Ok((d, _)) => (d.cooldown_ms, d.clear_history),
                Err(fault) => {
                    log_fault(&self.cooldown, &fault, &self.request_id);
                    safe_cooldown(&outcome)
                }
            };
        self.deployment
            .health
            .apply_cooldown(now, cooldown_ms, clear_history, kind);
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
fn safe_cooldown(outcome: &Outcome) -> (u64, bool) {
    match outcome.kind {
        OutcomeKind::Success => (0, true),
        OutcomeKind::ClientError => (0, false),
        OutcomeKind::Throttled => (outcome.retry_after_ms.unwrap_or(10_000), false),
        OutcomeKind::Unavailable | OutcomeKind::Timeout | OutcomeKind::ServerError => {
            (5_000, false)
        }
    }
}

fn log_fault(policy: &Policy, fault: &PolicyFault, request_id: &str) {
    tracing::warn!(
        request_id,
        policy = policy.name(),
        kind = %policy.kind(),
        fault = fault.code(),
        error = %fault,
        "policy call faulted; using the safe order"
    );
}

fn wit_outcome(o: &Outcome) -> policy::Outcome {
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
    wit_candidate(&deployment.config, &deployment.health.snapshot(now_ms))
}

fn wit_candidate(config: &DeploymentConfig, h: &HealthSnapshot) -> policy::Candidate {
    policy::Candidate {
        deployment: config.id.clone(),
        model_id: config.model_id.clone(),
        region: config.region.clone(),
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

/// Routes requests to model groups.
pub struct Router {
    groups: HashMap<String, ModelGroup>,
    clock: SharedClock,
    max_attempts: u32,
}

impl Router {
    /// A router over `groups`; `max_attempts` of 0 means one per deployment.
    pub fn new(groups: Vec<ModelGroup>, clock: SharedClock, max_attempts: u32) -> Self {
        Self {
            groups: groups.into_iter().map(|g| (g.name.clone(), g)).collect(),
            clock,
            max_attempts,
        }
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
    /// `attempt` once per deployment tried.
    pub async fn route<T, F, Fut>(
        &self,
        group_name: &str,
        request: &RouteRequest,
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
        let policies = group.policies.clone();
        let now = self.clock.now_ms();
        let mut info = policy::RequestInfo {
            request_id: request.request_id.clone(),
            user: request.user.clone(),
            model_group: group.name.clone(),
            attempt: 0,
            sequence: group.sequence.fetch_add(1, Ordering::Relaxed),
            estimated_tokens: request.estimated_tokens,
            previous_deployment: None,
        };
        let options = CallOptions {
            request_id: Some(request.request_id.clone()),
            seed: None,
        };
        let candidates: Vec<_> = group.members.iter().map(|d| candidate(d, now)).collect();
        let order = match policies.selection.select(&info, &candidates, &options) {
            Ok((order, _)) => order,
            Err(fault) => {
                log_fault(&policies.selection, &fault, &request.request_id);
                (0..group.members.len()).collect()
            }
        };
        if order.is_empty() {
            let retry_after_ms = candidates
                .iter()
                .map(|c| c.cooldown_remaining_ms)
                .filter(|&ms| ms > 0)
                .min()
                .unwrap_or(1_000);
            tracing::info!(request_id = %request.request_id, group = %group.name, retry_after_ms, "no deployment fit to call");
            return Err(RouteError::NothingAvailable { retry_after_ms });
        }
        let mut queue: Vec<Arc<Deployment>> =
            order.iter().map(|&i| group.members[i].clone()).collect();
        tracing::info!(
            request_id = %request.request_id,
            group = %group.name,
            order = ?queue.iter().map(|d| d.config.id.as_str()).collect::<Vec<_>>(),
            "request will try deployments"
        );
        let mut tried: Vec<Arc<Deployment>> = Vec::new();
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        let max_attempts = match self.max_attempts {
            0 => group.members.len(),
            n => n as usize,
        };
        while !queue.is_empty() && attempts.len() < max_attempts {
            let deployment = queue.remove(0);
            tried.push(deployment.clone());
            info.attempt = attempts.len() as u32;
            tracing::info!(request_id = %request.request_id, deployment = %deployment.config.id, attempt = info.attempt, "attempting");
            deployment.health.begin_attempt(self.clock.now_ms());
            let recorder = Recorder {
                deployment: deployment.clone(),
                cooldown: policies.cooldown.clone(),
                clock: self.clock.clone(),
                started: Instant::now(),
                request_id: request.request_id.clone(),
            };
            let result = attempt(deployment.upstream.clone(), request.body.clone()).await;
            let failure = match result {
                Ok(value) => {
                    tracing::info!(request_id = %request.request_id, deployment = %deployment.config.id, "succeeded");
                    return Ok(Routed {
                        value,
                        deployment: deployment.config.id.clone(),
                        attempts,
                        completion: AttemptCompletion {
                            recorder: Some(recorder),
                        },
                    });
                }
                Err(failure) => failure,
            };
            let outcome = recorder.record(
                failure.kind,
                failure.retry_after_ms,
                Some(failure.detail.clone()),
                failure.status,
            );
            tracing::info!(request_id = %request.request_id, deployment = %deployment.config.id, outcome = ?failure.kind, detail = %failure.detail, "attempt failed");
            attempts.push(AttemptRecord {
                deployment: outcome.deployment.clone(),
                outcome: outcome.kind,
                latency_ms: outcome.latency_ms,
                retry_after_ms: outcome.retry_after_ms,
                detail: outcome.detail.clone(),
            });
            if failure.kind == OutcomeKind::ClientError {
                return Err(RouteError::Rejected {
                    status: failure.status.unwrap_or(400),
                    detail: failure.detail,
                    attempts,
                });
            }
            // What is left: the selection's order first, then deployments it
            // left out, in the safe order, so a fallback can still reach them.
            let mut remaining = queue.clone();
            for d in &group.members {
                let untried = !tried.iter().any(|t| Arc::ptr_eq(t, d));
                if untried && !remaining.iter().any(|r| Arc::ptr_eq(r, d)) {
                    remaining.push(d.clone());
                }
            }
            if remaining.is_empty() {
                break;
            }
            info.attempt = attempts.len() as u32;
            info.previous_deployment = Some(deployment.config.id.clone());
            let now = self.clock.now_ms();
            let remaining_candidates: Vec<_> =
                remaining.iter().map(|d| candidate(d, now)).collect();
            queue = match policies.fallback.next(
                &info,
                &wit_outcome(&outcome),
                &remaining_candidates,
                &options,
            ) {
                Ok((order, _)) => order.iter().map(|&i| remaining[i].clone()).collect(),
                Err(fault) => {
                    log_fault(&policies.fallback, &fault, &request.request_id);
                    let mut safe = remaining;
                    safe.sort_by_key(|d| d.config.priority);
                    safe
                }
            };
        }
        let retry_after_ms = attempts.iter().filter_map(|a| a.retry_after_ms).min();
        Err(RouteError::AttemptsFailed {
            attempts,
            retry_after_ms,
        })
    }
}
