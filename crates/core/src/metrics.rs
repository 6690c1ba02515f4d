//! The gateway's Prometheus metrics. One registry per gateway (no globals),
//! so several gateways in one process, as in the tests, keep apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use crate::outcome::OutcomeKind;
use crate::upstream::TokenUsage;
use crate::vocabulary::{PolicyKind, Refusal};

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct GroupLabels {
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    group: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct AttemptLabels {
    group: String,
    deployment: String,
    outcome: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TokenLabels {
    group: String,
    deployment: String,
    /// input, output, cache_read or cache_write.
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamTokenLabels {
    team: String,
    group: String,
    /// input, output, cache_read or cache_write.
    kind: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct TeamLabels {
    team: String,
    group: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeploymentLabels {
    deployment: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SkipLabels {
    group: String,
    deployment: String,
    reason: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyLabels {
    group: String,
    kind: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PolicyFaultLabels {
    group: String,
    kind: String,
    fault: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SwapLabels {
    group: String,
    kind: String,
    reason: String,
}

/// Every metric the gateway exports.
pub struct Metrics {
    registry: Registry,
    requests: RequestMetrics,
    policies: PolicyMetrics,
    deployments: DeploymentMetrics,
    shared: StateMetrics,
    traces: TraceMetrics,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics")
    }
}

fn attempt_histogram() -> Histogram {
    // 1 ms to about 4.5 minutes.
    Histogram::new(exponential_buckets(0.001, 2.0, 19))
}

fn policy_call_histogram() -> Histogram {
    // 1 µs to about 1 s.
    Histogram::new(exponential_buckets(1e-6, 2.0, 21))
}

/// Raises `counter` to `total`, a count kept elsewhere since the start
/// (read at scrape time).
fn catch_up(counter: &Counter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

fn outcome_label(kind: OutcomeKind) -> String {
    kind.as_str().to_owned()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
        let requests = RequestMetrics::register(&mut registry);
        let policies = PolicyMetrics::register(&mut registry);
        let deployments = DeploymentMetrics::register(&mut registry);
        let shared = StateMetrics::register(&mut registry);
        let traces = TraceMetrics::register(&mut registry);
        Self {
            registry,
            requests,
            policies,
            deployments,
            shared,
            traces,
        }
    }
}

/// What clients asked and what it took: requests, attempts, admission and the queue.
struct RequestMetrics {
    requests: Family<RequestLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Family<DeploymentLabels, Histogram>,
    tokens: Family<TokenLabels, Counter>,
    team_tokens: Family<TeamTokenLabels, Counter>,
    spend_usd: Family<TeamLabels, Counter<f64, AtomicU64>>,
    admission_skips: Family<SkipLabels, Counter>,
    queue_rejections: Family<RequestLabels, Counter>,
    coalesced: Family<GroupLabels, Counter>,
    queue_waiting: Gauge,
    queue_running: Gauge,
}

impl RequestMetrics {
    fn register(registry: &mut Registry) -> Self {
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "requests",
            "Client requests by model group and how they ended",
            requests.clone(),
        );
        let attempts = Family::<AttemptLabels, Counter>::default();
        registry.register(
            "attempts",
            "Upstream attempts by deployment and outcome",
            attempts.clone(),
        );
        let attempt_seconds = Family::<DeploymentLabels, Histogram>::new_with_constructor(
            attempt_histogram as fn() -> Histogram,
        );
        registry.register(
            "attempt_duration_seconds",
            "Latency of upstream attempts",
            attempt_seconds.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Tokens Bedrock's answers said they used, by deployment and kind (input, output, cache_read, cache_write)",
            tokens.clone(),
        );
        let team_tokens = Family::<TeamTokenLabels, Counter>::default();
        registry.register(
            "team_tokens",
            "Tokens used by each team's keys, by model group and kind (team \"\": calls without a team's key)",
            team_tokens.clone(),
        );
        let spend_usd = Family::<TeamLabels, Counter<f64, AtomicU64>>::default();
        registry.register(
            "spend_usd",
            "What answers cost at the price table's on-demand prices, in USD, by team and model group",
            spend_usd.clone(),
        );
        let admission_skips = Family::<SkipLabels, Counter>::default();
        registry.register(
            "admission_skips",
            "Deployments skipped for an attempt without calling Bedrock, by reason (request_quota, token_quota, concurrency, circuit_open, budget)",
            admission_skips.clone(),
        );
        let queue_rejections = Family::<RequestLabels, Counter>::default();
        registry.register(
            "queue_rejections",
            "Requests the fair queue turned away (queue_full, deadline_in_queue)",
            queue_rejections.clone(),
        );
        let coalesced = Family::<GroupLabels, Counter>::default();
        registry.register(
            "coalesced_requests",
            "Requests answered with an identical request's answer instead of an upstream call of their own",
            coalesced.clone(),
        );
        let queue_waiting = Gauge::default();
        registry.register(
            "queue_waiting",
            "Requests waiting in the fair queue",
            queue_waiting.clone(),
        );
        let queue_running = Gauge::default();
        registry.register(
            "queue_running",
            "Requests admitted by the fair queue and still running",
            queue_running.clone(),
        );
        Self {
            requests,
            attempts,
            attempt_seconds,
            tokens,
            team_tokens,
            spend_usd,
            admission_skips,
            queue_rejections,
            coalesced,
            queue_waiting,
            queue_running,
        }
    }
}

/// Policy calls, their faults and the versions swapped in.
struct PolicyMetrics {
    policy_calls: Family<PolicyLabels, Counter>,
    policy_calls_skipped: Family<PolicyLabels, Counter>,
    policy_call_seconds: Family<PolicyLabels, Histogram>,
    policy_faults: Family<PolicyFaultLabels, Counter>,
    policy_swaps: Family<SwapLabels, Counter>,
}

impl PolicyMetrics {
    fn register(registry: &mut Registry) -> Self {
        let policy_calls = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_calls",
            "Policy calls by model group and kind",
            policy_calls.clone(),
        );
        let policy_calls_skipped = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_calls_skipped",
            "Cooldown policy calls not made: a success after a success, off cooldown and unthrottled, for a policy that declared such successes idempotent",
            policy_calls_skipped.clone(),
        );
        let policy_call_seconds = Family::<PolicyLabels, Histogram>::new_with_constructor(
            policy_call_histogram as fn() -> Histogram,
        );
        registry.register(
            "policy_call_duration_seconds",
            "Time of a policy call, instantiation included (the decision latency)",
            policy_call_seconds.clone(),
        );
        let policy_faults = Family::<PolicyFaultLabels, Counter>::default();
        registry.register(
            "policy_faults",
            "Policy calls that faulted (the safe order was used instead)",
            policy_faults.clone(),
        );
        let policy_swaps = Family::<SwapLabels, Counter>::default();
        registry.register(
            "policy_swaps",
            "Policy versions activated at run time, by reason (activate, rollback, auto_rollback, reload)",
            policy_swaps.clone(),
        );
        Self {
            policy_calls,
            policy_calls_skipped,
            policy_call_seconds,
            policy_faults,
            policy_swaps,
        }
    }
}

/// Each deployment's cooldown, circuit and quota use.
struct DeploymentMetrics {
    cooldown_seconds: Family<DeploymentLabels, Gauge<f64, AtomicU64>>,
    circuit_state: Family<DeploymentLabels, Gauge>,
    quota_used_ratio: Family<DeploymentLabels, Gauge<f64, AtomicU64>>,
}

impl DeploymentMetrics {
    fn register(registry: &mut Registry) -> Self {
        let cooldown_seconds = Family::<DeploymentLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "deployment_cooldown_seconds",
            "Cooldown left on each deployment (0: not cooling down)",
            cooldown_seconds.clone(),
        );
        let circuit_state = Family::<DeploymentLabels, Gauge>::default();
        registry.register(
            "deployment_circuit_state",
            "Each deployment's circuit breaker: 0 closed, 1 half-open, 2 open",
            circuit_state.clone(),
        );
        let quota_used_ratio = Family::<DeploymentLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "deployment_quota_used_ratio",
            "Share of each deployment's fuller quota (RPM or TPM) in use",
            quota_used_ratio.clone(),
        );
        Self {
            cooldown_seconds,
            circuit_state,
            quota_used_ratio,
        }
    }
}

/// The shared state backend's link.
struct StateMetrics {
    state_degraded: Gauge,
    state_errors: Counter,
    state_local_decisions: Counter,
    state_resyncs: Counter,
    state_changes_received: Counter,
}

impl StateMetrics {
    fn register(registry: &mut Registry) -> Self {
        let state_degraded = Gauge::default();
        registry.register(
            "state_degraded",
            "1 while the shared state backend (Redis) is unreachable and local state, with quotas divided by the instance count, decides",
            state_degraded.clone(),
        );
        let state_errors = Counter::default();
        registry.register(
            "state_errors",
            "Calls to the shared state backend that failed or timed out",
            state_errors.clone(),
        );
        let state_local_decisions = Counter::default();
        registry.register(
            "state_local_decisions",
            "Quota decisions taken on local state because the shared backend was unreachable",
            state_local_decisions.clone(),
        );
        let state_resyncs = Counter::default();
        registry.register(
            "state_resyncs",
            "Times this instance (re)connected to the shared backend and re-synced",
            state_resyncs.clone(),
        );
        let state_changes_received = Counter::default();
        registry.register(
            "state_changes_received",
            "Cooldown, circuit and policy entry changes received from sibling instances",
            state_changes_received.clone(),
        );
        Self {
            state_degraded,
            state_errors,
            state_local_decisions,
            state_resyncs,
            state_changes_received,
        }
    }
}

/// What became of the spans traces export (all 0 when traces are off).
struct TraceMetrics {
    exported: Counter,
    dropped: Counter,
    failed: Counter,
    untraced: Counter,
    collector_reachable: Gauge,
}

impl TraceMetrics {
    fn register(registry: &mut Registry) -> Self {
        let metrics = Self {
            exported: Counter::default(),
            dropped: Counter::default(),
            failed: Counter::default(),
            untraced: Counter::default(),
            collector_reachable: Gauge::default(),
        };
        registry.register(
            "trace_spans_exported",
            "Spans the OTLP collector accepted",
            metrics.exported.clone(),
        );
        registry.register(
            "trace_spans_dropped",
            "Spans dropped because the export queue was full (the collector is slower than the traffic)",
            metrics.dropped.clone(),
        );
        registry.register(
            "trace_spans_failed",
            "Spans lost because the collector was unreachable or refused them",
            metrics.failed.clone(),
        );
        registry.register(
            "trace_requests_untraced",
            "Model calls made while the trace collector was unreachable, when no spans are made (sampled or not)",
            metrics.untraced.clone(),
        );
        registry.register(
            "trace_collector_reachable",
            "1 while traces are exported and the collector took the last export; 0 when traces are off or it is unreachable",
            metrics.collector_reachable.clone(),
        );
        metrics
    }
}

impl Metrics {
    /// The text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)
            .expect("writing to a String cannot fail");
        out
    }

    /// Admission skipped `deployment` for an attempt.
    pub fn skip(&self, group: &str, deployment: &str, refusal: Refusal) {
        let reason = match refusal {
            Refusal::RequestQuota { .. } => "request_quota",
            Refusal::TokenQuota { .. } => "token_quota",
            Refusal::Concurrency => "concurrency",
            Refusal::CircuitOpen { .. } => "circuit_open",
            Refusal::Budget { .. } => "budget",
        };
        self.requests
            .admission_skips
            .get_or_create(&SkipLabels {
                group: group.to_owned(),
                deployment: deployment.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The fair queue turned a request for `group` away, for `reason`.
    pub fn queue_rejection(&self, group: &str, reason: &str) {
        self.requests
            .queue_rejections
            .get_or_create(&RequestLabels {
                group: group.to_owned(),
                outcome: reason.to_owned(),
            })
            .inc();
    }

    /// A request was answered with an identical request's answer.
    pub fn coalesced(&self, group: &str) {
        self.requests
            .coalesced
            .get_or_create(&GroupLabels {
                group: group.to_owned(),
            })
            .inc();
    }

    /// A request ended; `outcome` is `success` or an error code.
    pub fn request(&self, group: &str, outcome: &str) {
        self.requests
            .requests
            .get_or_create(&RequestLabels {
                group: group.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// An upstream call on `deployment` used `usage`.
    pub fn tokens(&self, group: &str, deployment: &str, usage: &TokenUsage) {
        for (kind, count) in usage.kinds() {
            // A kind never used has no series, as a group never asked has none.
            if count == 0 {
                continue;
            }
            self.requests
                .tokens
                .get_or_create(&TokenLabels {
                    group: group.to_owned(),
                    deployment: deployment.to_owned(),
                    kind,
                })
                .inc_by(count);
        }
    }

    /// A call of `team`'s key (`""`: none) on `group` used `usage`,
    /// which cost `usd`.
    pub fn team_spend(&self, team: &str, group: &str, usage: &TokenUsage, usd: f64) {
        for (kind, count) in usage.kinds() {
            if count == 0 {
                continue;
            }
            self.requests
                .team_tokens
                .get_or_create(&TeamTokenLabels {
                    team: team.to_owned(),
                    group: group.to_owned(),
                    kind,
                })
                .inc_by(count);
        }
        if usd > 0.0 {
            self.requests
                .spend_usd
                .get_or_create(&TeamLabels {
                    team: team.to_owned(),
                    group: group.to_owned(),
                })
                .inc_by(usd);
        }
    }

    /// An attempt ended.
    pub fn attempt(&self, group: &str, deployment: &str, kind: OutcomeKind, seconds: f64) {
        self.requests
            .attempts
            .get_or_create(&AttemptLabels {
                group: group.to_owned(),
                deployment: deployment.to_owned(),
                outcome: outcome_label(kind),
            })
            .inc();
        self.requests
            .attempt_seconds
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_owned(),
            })
            .observe(seconds);
    }

    /// A policy call was not made (see `policy_calls_skipped`).
    pub fn policy_call_skipped(&self, group: &str, kind: PolicyKind) {
        self.policies
            .policy_calls_skipped
            .get_or_create(&PolicyLabels {
                group: group.to_owned(),
                kind: kind.to_string(),
            })
            .inc();
    }

    /// A policy was called and took `elapsed`; `fault` names the fault when
    /// it faulted.
    pub fn policy_call(
        &self,
        group: &str,
        kind: PolicyKind,
        elapsed: Duration,
        fault: Option<&str>,
    ) {
        let labels = PolicyLabels {
            group: group.to_owned(),
            kind: kind.to_string(),
        };
        self.policies.policy_calls.get_or_create(&labels).inc();
        self.policies
            .policy_call_seconds
            .get_or_create(&labels)
            .observe(elapsed.as_secs_f64());
        if let Some(fault) = fault {
            self.policies
                .policy_faults
                .get_or_create(&PolicyFaultLabels {
                    group: group.to_owned(),
                    kind: kind.to_string(),
                    fault: fault.to_owned(),
                })
                .inc();
        }
    }

    /// Sets the gauges that describe the present: one deployment's cooldown
    /// left, circuit and quota use. Called for each deployment at scrape time.
    pub fn deployment_state(
        &self,
        deployment: &str,
        cooldown_remaining_ms: u64,
        circuit: crate::health::breaker::BreakerState,
        quota_used_permille: u32,
    ) {
        use crate::health::breaker::BreakerState;
        let labels = DeploymentLabels {
            deployment: deployment.to_owned(),
        };
        self.deployments
            .cooldown_seconds
            .get_or_create(&labels)
            .set(cooldown_remaining_ms as f64 / 1000.0);
        self.deployments
            .circuit_state
            .get_or_create(&labels)
            .set(match circuit {
                BreakerState::Closed => 0,
                BreakerState::HalfOpen => 1,
                BreakerState::Open => 2,
            });
        self.deployments
            .quota_used_ratio
            .get_or_create(&labels)
            .set(f64::from(quota_used_permille) / 1000.0);
    }

    /// Sets the fair queue's gauges, at scrape time.
    pub fn queue_state(&self, waiting: u32, running: u32) {
        self.requests.queue_waiting.set(i64::from(waiting));
        self.requests.queue_running.set(i64::from(running));
    }

    /// Sets the shared state's metrics from its status, at scrape time.
    pub fn shared_state(&self, status: &crate::state::StateStatus) {
        self.shared.state_degraded.set(i64::from(status.degraded));
        catch_up(&self.shared.state_errors, status.errors);
        catch_up(&self.shared.state_local_decisions, status.local_decisions);
        catch_up(&self.shared.state_resyncs, status.resyncs);
        catch_up(&self.shared.state_changes_received, status.changes_received);
    }

    /// Sets the trace export's counters, at scrape time.
    pub fn traces(&self, counts: &crate::telemetry::SpanCounts) {
        use std::sync::atomic::Ordering::Relaxed;
        catch_up(&self.traces.exported, counts.exported.load(Relaxed));
        catch_up(&self.traces.dropped, counts.dropped.load(Relaxed));
        catch_up(&self.traces.failed, counts.failed.load(Relaxed));
        catch_up(&self.traces.untraced, counts.untraced.load(Relaxed));
        self.traces
            .collector_reachable
            .set(i64::from(crate::telemetry::enabled()));
    }

    /// A slot's active version changed.
    pub fn policy_swap(&self, group: &str, kind: PolicyKind, reason: &str) {
        self.policies
            .policy_swaps
            .get_or_create(&SwapLabels {
                group: group.to_owned(),
                kind: kind.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
