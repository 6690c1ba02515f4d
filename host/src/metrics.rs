//! The gateway's Prometheus metrics. One registry per gateway (no globals),
//! so several gateways in one process, as in the tests, keep apart.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::outcome::OutcomeKind;
use crate::policy::PolicyKind;

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
    requests: Family<RequestLabels, Counter>,
    attempts: Family<AttemptLabels, Counter>,
    attempt_seconds: Family<DeploymentLabels, Histogram>,
    admission_skips: Family<SkipLabels, Counter>,
    queue_rejections: Family<RequestLabels, Counter>,
    policy_calls: Family<PolicyLabels, Counter>,
    policy_faults: Family<PolicyFaultLabels, Counter>,
    policy_swaps: Family<SwapLabels, Counter>,
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

fn outcome_label(kind: OutcomeKind) -> String {
    serde_json::to_value(kind)
        .ok()
        .and_then(|v| v.as_str().map(str::to_owned))
        .unwrap_or_default()
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard");
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
        let admission_skips = Family::<SkipLabels, Counter>::default();
        registry.register(
            "admission_skips",
            "Deployments skipped for an attempt without calling Bedrock, by reason (request_quota, token_quota, concurrency, circuit_open)",
            admission_skips.clone(),
        );
        let queue_rejections = Family::<RequestLabels, Counter>::default();
        registry.register(
            "queue_rejections",
            "Requests the fair queue turned away (queue_full, deadline_in_queue)",
            queue_rejections.clone(),
        );
        let policy_calls = Family::<PolicyLabels, Counter>::default();
        registry.register(
            "policy_calls",
            "Policy calls by model group and kind",
            policy_calls.clone(),
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
            registry,
            requests,
            attempts,
            attempt_seconds,
            admission_skips,
            queue_rejections,
            policy_calls,
            policy_faults,
            policy_swaps,
        }
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
    pub fn skip(&self, group: &str, deployment: &str, refusal: crate::admission::Refusal) {
        let reason = match refusal {
            crate::admission::Refusal::RequestQuota { .. } => "request_quota",
            crate::admission::Refusal::TokenQuota { .. } => "token_quota",
            crate::admission::Refusal::Concurrency => "concurrency",
            crate::admission::Refusal::CircuitOpen { .. } => "circuit_open",
        };
        self.admission_skips
            .get_or_create(&SkipLabels {
                group: group.to_owned(),
                deployment: deployment.to_owned(),
                reason: reason.to_owned(),
            })
            .inc();
    }

    /// The fair queue turned a request for `group` away, for `reason`.
    pub fn queue_rejection(&self, group: &str, reason: &str) {
        self.queue_rejections
            .get_or_create(&RequestLabels {
                group: group.to_owned(),
                outcome: reason.to_owned(),
            })
            .inc();
    }

    /// A request ended; `outcome` is `success` or an error code.
    pub fn request(&self, group: &str, outcome: &str) {
        self.requests
            .get_or_create(&RequestLabels {
                group: group.to_owned(),
                outcome: outcome.to_owned(),
            })
            .inc();
    }

    /// An attempt ended.
    pub fn attempt(&self, group: &str, deployment: &str, kind: OutcomeKind, seconds: f64) {
        self.attempts
            .get_or_create(&AttemptLabels {
                group: group.to_owned(),
                deployment: deployment.to_owned(),
                outcome: outcome_label(kind),
            })
            .inc();
        self.attempt_seconds
            .get_or_create(&DeploymentLabels {
                deployment: deployment.to_owned(),
            })
            .observe(seconds);
    }

    /// A policy was called; `fault` names the fault when it faulted.
    pub fn policy_call(&self, group: &str, kind: PolicyKind, fault: Option<&str>) {
        self.policy_calls
            .get_or_create(&PolicyLabels {
                group: group.to_owned(),
                kind: kind.to_string(),
            })
            .inc();
        if let Some(fault) = fault {
            self.policy_faults
                .get_or_create(&PolicyFaultLabels {
                    group: group.to_owned(),
                    kind: kind.to_string(),
                    fault: fault.to_owned(),
                })
                .inc();
        }
    }

    /// A slot's active version changed.
    pub fn policy_swap(&self, group: &str, kind: PolicyKind, reason: &str) {
        self.policy_swaps
            .get_or_create(&SwapLabels {
                group: group.to_owned(),
                kind: kind.to_string(),
                reason: reason.to_owned(),
            })
            .inc();
    }
}
