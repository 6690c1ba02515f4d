//! The attempt loop's driver: the only place that runs a request against
//! Bedrock.
//!
//! ```text
//! order = selection.select(request, candidates)
//! for each deployment the attempt plan gives:
//!     admission refuses -> skip it; else outcome = upstream call
//!     health.record(outcome); cooldown.on-outcome(outcome) -> health
//!     success -> return; client error -> stop
//!     order = fallback.next(request, outcome, tried, remaining)
//! ```
//! Policies decide and [`crate::attempt::AttemptRun`] sequences and settles
//! (the same run drives `policy simulate` and the lab); this module does
//! the I/O: admission, the upstream call, waiting for capacity. A policy
//! fault never fails the request: the safe order (configured priority) or
//! the safe cooldown stands in for that call.
//!
//! `group` holds the model (deployments, groups, policy slots), `record` what
//! an attempt's end changes, and `wit` what policies see of it all.

mod group;
mod more_calls;
mod record;
mod usage_book;
mod wit;

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tracing::Instrument;

use crate::admission::{Permit, Refusal};
use crate::attempt::{AttemptRun, RunContext, RunPolicies};
use crate::clock::SharedClock;
use crate::metrics::Metrics;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{self, CallOptions, PolicyVersion};
use crate::upstream::{AttemptFailure, Upstream};

pub use crate::attempt::safe_cooldown;
pub use group::{Deployment, GroupSlots, ModelGroup, UserAffinity};
pub use more_calls::{CallGrant, Lanes, MoreCalls};
pub use record::{AttemptCompletion, AttemptEnd};
pub use switchyard_policy_host::candidate::{deployment_table, wit_candidate};
pub use wit::candidate;

use group::PolicyObserver;
use record::PendingAttempt;
use usage_book::UsageBook;

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
    /// Where its calls' usage is priced and booked (`None`: metrics only).
    pub bill: Option<crate::spend::Bill>,
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

impl AttemptRecord {
    /// The record of a failed attempt's `outcome`.
    fn of(outcome: &Outcome) -> Self {
        Self {
            deployment: outcome.deployment.clone(),
            outcome: outcome.kind,
            latency_ms: outcome.latency_ms,
            retry_after_ms: outcome.retry_after_ms,
            detail: outcome.detail.clone(),
        }
    }
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

/// Routes requests to model groups.
pub struct Router {
    groups: HashMap<String, ModelGroup>,
    /// Other names of the groups: alias to group name.
    aliases: HashMap<String, String>,
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
            aliases: HashMap::new(),
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

    /// Gives groups other names: `(alias, group name)`.
    pub fn with_aliases(mut self, aliases: impl IntoIterator<Item = (String, String)>) -> Self {
        self.aliases.extend(aliases);
        self
    }

    /// The model group `name`.
    pub fn group(&self, name: &str) -> Option<&ModelGroup> {
        self.groups.get(name)
    }

    /// The model group a client's model id names: a group's name or alias;
    /// for an ARN (`arn:aws:bedrock:...:inference-profile/ID`), also the id
    /// after its last `/`.
    pub fn resolve(&self, model: &str) -> Option<&ModelGroup> {
        let named = |name: &str| {
            self.groups.get(name).or_else(|| {
                self.aliases
                    .get(name)
                    .and_then(|group| self.groups.get(group))
            })
        };
        named(model).or_else(|| {
            let (_, id) = model.strip_prefix("arn:")?.rsplit_once('/')?;
            named(id)
        })
    }

    /// The aliases of group `name`, sorted.
    pub fn aliases_of(&self, name: &str) -> Vec<&str> {
        let mut aliases: Vec<&str> = self
            .aliases
            .iter()
            .filter(|(_, group)| *group == name)
            .map(|(alias, _)| alias.as_str())
            .collect();
        aliases.sort_unstable();
        aliases
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
    /// `attempt` once per deployment tried (with what it needs to make more
    /// calls to that deployment, if it makes several). `permit` is the request's place
    /// in the fair queue: it is given back while the request waits for a
    /// deployment's capacity, and taken again before the next pass.
    pub async fn route<T, F, Fut>(
        &self,
        group_name: &str,
        request: &RouteRequest,
        permit: &mut Permit,
        attempt: F,
    ) -> Result<Routed<T>, RouteError>
    where
        F: Fn(Upstream, Bytes, MoreCalls) -> Fut,
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
                // limits): a place can free at any moment, so wait for one
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
            let for_concurrency = matches!(blocked, Blocked::ByAdmission { concurrency: true });
            let wake = now + Duration::from_millis(wait_ms);
            let too_late = if for_concurrency {
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
            tracing::debug!(wait_ms, for_concurrency, "waiting for capacity");
            let wake = wake.min(request.deadline);
            let capacity = async {
                if for_concurrency {
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
            if let Err(e) = permit.step_aside_while(capacity, request.deadline).await {
                tracing::info!(error = %e, "no turn in the queue again after waiting for capacity");
                return Err(RouteError::NothingAvailable {
                    retry_after_ms: 1_000,
                });
            }
        }
    }

    /// The request as one pass's policy calls see it, and their options
    /// (each pass is a new sequence number, so a new seed).
    fn policy_view(
        &self,
        group: &ModelGroup,
        request: &RouteRequest,
    ) -> (policy::RequestInfo, CallOptions) {
        let info = policy::RequestInfo {
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
        (info, options)
    }

    /// The attempt on the group's member at index `member` (`deployment`)
    /// that `ticket` admitted, to settle when it ends.
    fn pending_attempt(
        &self,
        calls: &ObservedPolicies<'_>,
        seed: Option<u64>,
        member: usize,
        deployment: &Arc<Deployment>,
        request: &RouteRequest,
        ticket: crate::admission::Ticket,
    ) -> PendingAttempt {
        let group = calls.group;
        PendingAttempt {
            deployment: deployment.clone(),
            cooldown_slot: group.slots.cooldown.clone(),
            cooldown: calls.policies.cooldown.clone(),
            observer: calls.observer.clone(),
            clock: self.clock.clone(),
            started: Instant::now(),
            started_ms: self.clock.now_ms(),
            seed,
            request_id: request.request_id.clone(),
            deployments: group.deployments.clone(),
            affinity: request
                .user
                .clone()
                .map(|u| (group.affinity.clone(), u, member)),
            ticket: Some(ticket),
            book: UsageBook::new(
                self.metrics.clone(),
                group.name.clone(),
                deployment.clone(),
                request.bill.clone(),
            ),
            span: tracing::Span::none(),
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
        F: Fn(Upstream, Bytes, MoreCalls) -> Fut,
        Fut: Future<Output = Result<T, AttemptFailure>>,
    {
        let (info, options) = self.policy_view(group, request);
        let mut calls = ObservedPolicies {
            group,
            policies,
            observer: PolicyObserver {
                group: group.name.clone(),
                request_id: request.request_id.clone(),
                metrics: self.metrics.clone(),
                traced: crate::telemetry::is_traced(&tracing::Span::current()),
                span: tracing::Span::current(),
            },
        };
        let now = || Members {
            group,
            now_ms: self.clock.now_ms(),
        };
        let mut run = AttemptRun::start(
            group.priorities.clone(),
            self.max_attempts,
            info,
            options,
            &mut now(),
            &mut calls,
        );
        if run.plan().chose_none() {
            tracing::info!("no deployment fit to call");
            return Pass::NoCapacity(Blocked::BySelection);
        }
        tracing::info!(
            order = ?run.plan().order().map(|i| group.members[i].config.id.as_str()).collect::<Vec<_>>(),
            "request will try deployments"
        );
        let tokens = u64::from(request.estimated_tokens);
        let mut refused_for_concurrency = false;
        let mut attempts: Vec<AttemptRecord> = Vec::new();
        while let Some(index) = run.next_attempt() {
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
                    run.refused(index);
                    continue;
                }
            };
            let attempt_number = attempts.len();
            tracing::info!(deployment = %deployment.config.id, attempt = attempt_number, "attempting");
            let members = now();
            run.begin(&members, index, members.now_ms);
            let seed = run.options().seed;
            let mut pending =
                self.pending_attempt(&calls, seed, index, deployment, request, ticket);
            let attempt_span = attempt_span(
                deployment,
                attempt_number,
                &request.request_id,
                calls.observer.traced,
            );
            pending.span = attempt_span.clone();
            let more = MoreCalls::new(
                deployment.clone(),
                self.clock.clone(),
                request.deadline,
                pending.book.clone(),
            );
            let result = attempt(deployment.upstream.clone(), request.body.clone(), more)
                .instrument(attempt_span)
                .await;
            let failure = match result {
                Ok(value) => {
                    tracing::info!(deployment = %deployment.config.id, "succeeded");
                    return Pass::Done(Ok(Routed {
                        value,
                        deployment: deployment.config.id.clone(),
                        attempts,
                        completion: AttemptCompletion::new(pending),
                    }));
                }
                Err(failure) => failure,
            };
            let outcome = pending.settle(AttemptEnd::failed(&failure));
            tracing::info!(deployment = %deployment.config.id, outcome = ?failure.kind, detail = %failure.detail, "attempt failed");
            attempts.push(AttemptRecord::of(&outcome));
            if failure.kind == OutcomeKind::ClientError {
                return Pass::Done(Err(RouteError::Rejected {
                    status: failure.status.unwrap_or(400),
                    detail: failure.detail,
                    attempts,
                }));
            }
            if !run.fall_back(&mut now(), &mut calls, &outcome) {
                break;
            }
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

/// A group's members as a pass sees them at one instant: their health and
/// admission, in the WIT types.
struct Members<'a> {
    group: &'a ModelGroup,
    now_ms: u64,
}

impl RunContext for Members<'_> {
    fn members(&self) -> usize {
        self.group.members.len()
    }

    fn candidate(&mut self, member: usize) -> policy::Candidate {
        candidate(&self.group.members[member], self.now_ms)
    }

    fn health(&self, member: usize) -> &crate::health::DeploymentHealth {
        &self.group.members[member].health
    }
}

/// The gateway's order-deciding policy calls: each one observed (counted,
/// its faults logged, a version that faults too often rolled back).
struct ObservedPolicies<'a> {
    group: &'a ModelGroup,
    policies: &'a Policies,
    observer: PolicyObserver,
}

impl RunPolicies for ObservedPolicies<'_> {
    fn select(
        &mut self,
        info: &policy::RequestInfo,
        candidates: &[policy::Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>> {
        let selection = &self.policies.selection;
        let called = Instant::now();
        let selected = selection.policy.select(info, candidates, options);
        self.observer.observe(
            &self.group.slots.selection,
            selection,
            &selected,
            called.elapsed(),
            |order| order_of(order, candidates),
        );
        selected.ok().map(|(order, _)| order)
    }

    fn fall_back(
        &mut self,
        info: &policy::RequestInfo,
        failed: &Outcome,
        tried: &[policy::Candidate],
        remaining: &[policy::Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>> {
        let fallback = &self.policies.fallback;
        let called = Instant::now();
        let next = fallback.policy.next(
            info,
            &policy::Outcome::from(failed),
            tried,
            remaining,
            options,
        );
        self.observer.observe(
            &self.group.slots.fallback,
            fallback,
            &next,
            called.elapsed(),
            |order| order_of(order, remaining),
        );
        next.ok().map(|(order, _)| order)
    }
}

/// The span of attempt number `number` (from 0) on `deployment` (exported
/// when the call is `traced`): its outcome, status and tokens are recorded
/// when it is settled.
fn attempt_span(
    deployment: &Deployment,
    number: usize,
    request_id: &str,
    traced: bool,
) -> tracing::Span {
    let config = &deployment.config;
    if !traced {
        return tracing::info_span!("attempt", deployment = %config.id, attempt = number);
    }
    let empty = tracing::field::Empty;
    tracing::info_span!(
        target: crate::telemetry::TRACED,
        "attempt",
        otel.name = format!("attempt {}", config.id),
        otel.kind = "client",
        otel.status_code = empty,
        request_id = %request_id,
        deployment = %config.id,
        attempt = number,
        switchyard.account = %config.account,
        cloud.region = %config.region,
        gen_ai.request.model = %config.model_id,
        switchyard.outcome = empty,
        http.response.status_code = empty,
        error.type = empty,
        switchyard.latency_ms = empty,
        gen_ai.usage.input_tokens = empty,
        gen_ai.usage.output_tokens = empty,
    )
}

/// A policy's order as the deployments' ids, for its decision event.
fn order_of(order: &[usize], candidates: &[policy::Candidate]) -> String {
    let ids: Vec<&str> = order
        .iter()
        .filter_map(|&i| candidates.get(i).map(|c| c.deployment.as_str()))
        .collect();
    format!("[{}]", ids.join(", "))
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

/// While a request waits for a deployment's concurrency to free, it is woken by the
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

#[cfg(test)]
mod tests;
