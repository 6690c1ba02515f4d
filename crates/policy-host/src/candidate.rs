//! What policies see: outcomes, deployments and their health in the WIT
//! interface's types. Every conversion lives here; the gateway adds what
//! admission knows (quota used, the circuit) to a candidate.

use crate::health::breaker::BreakerState;
use crate::health::CandidateHealth;
use crate::outcome::{Outcome, OutcomeKind};
use crate::policy::{self, DeploymentTable};
use crate::settings::DeploymentConfig;

/// What a policy sees of an attempt's ending.
impl From<OutcomeKind> for policy::OutcomeKind {
    fn from(kind: OutcomeKind) -> Self {
        match kind {
            OutcomeKind::Success => Self::Success,
            OutcomeKind::Throttled => Self::Throttled,
            OutcomeKind::Unavailable => Self::Unavailable,
            OutcomeKind::Timeout => Self::Timeout,
            OutcomeKind::ClientError => Self::ClientError,
            OutcomeKind::ServerError => Self::ServerError,
        }
    }
}

/// What a policy sees of an attempt's outcome.
impl From<&Outcome> for policy::Outcome {
    fn from(o: &Outcome) -> Self {
        Self {
            deployment: o.deployment.clone(),
            kind: o.kind.into(),
            latency_ms: o.latency_ms,
            retry_after_ms: o.retry_after_ms,
            at_ms: o.at_ms,
        }
    }
}

/// What a policy sees of a circuit breaker's state.
impl From<BreakerState> for policy::Circuit {
    fn from(state: BreakerState) -> Self {
        match state {
            BreakerState::Closed => Self::Closed,
            BreakerState::Open => Self::Open,
            BreakerState::HalfOpen => Self::HalfOpen,
        }
    }
}

/// What a policy sees of a deployment with config `config` and health `h`
/// (from [`DeploymentHealth::candidate`](crate::health::DeploymentHealth::candidate)),
/// with no quota used and a closed circuit (the gateway adds admission's part).
pub fn wit_candidate(config: &DeploymentConfig, h: &CandidateHealth) -> policy::Candidate {
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
