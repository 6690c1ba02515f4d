//! The synthetic input of the load check: three healthy deployments and a
//! throttled attempt, enough to exercise any policy's main path.

use super::{
    Candidate, Circuit, DeploymentInfo, DeploymentTable, Outcome, OutcomeKind, RequestInfo,
    LOAD_CHECK_REQUEST_ID,
};

const REGIONS: [&str; 3] = ["us-east-1", "us-west-2", "eu-west-1"];

pub fn candidates(now_ms: u64) -> Vec<Candidate> {
    (0..3u32)
        .map(|i| Candidate {
            deployment: format!("load-check-{i}"),
            priority: i + 1,
            weight: 1,
            in_flight: i,
            cooldown_remaining_ms: 0,
            recent_throttles: 0,
            last_used_ms: Some(now_ms.saturating_sub(u64::from(i) * 1_000)),
            last_throttle_ms: None,
            quota_used_permille: 100 * i,
            success_permille: 1000,
            latency_ewma_ms: 500,
            circuit: Circuit::Closed,
        })
        .collect()
}

/// Where the synthetic deployments run: one model in three regions.
pub fn deployments(candidates: &[Candidate]) -> DeploymentTable {
    DeploymentTable::new(candidates.iter().zip(REGIONS).map(|(c, region)| {
        (
            c.deployment.clone(),
            DeploymentInfo {
                model_id: "load-check-model".into(),
                region: region.into(),
                account: "load-check".into(),
            },
        )
    }))
}

pub fn request() -> RequestInfo {
    RequestInfo {
        request_id: LOAD_CHECK_REQUEST_ID.into(),
        user: Some("load-check".into()),
        model_group: "load-check".into(),
        attempt: 0,
        sequence: 0,
        estimated_tokens: 100,
        previous_deployment: None,
        user_last_success: None,
    }
}

pub fn outcome(now_ms: u64) -> Outcome {
    Outcome {
        deployment: "load-check-0".into(),
        kind: OutcomeKind::Throttled,
        latency_ms: 100,
        retry_after_ms: None,
        at_ms: now_ms,
    }
}
