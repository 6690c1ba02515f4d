//! What policies see of a gateway deployment: its health and its
//! admission's state (quota used, the circuit), in the WIT interface's
//! types (the conversions live in the policy host's `candidate`).

use crate::policy;
use switchyard_policy_host::candidate::wit_candidate;

use super::group::Deployment;

/// What a policy sees of `deployment` at `now_ms`.
pub fn candidate(deployment: &Deployment, now_ms: u64) -> policy::Candidate {
    let admission = deployment.admission.snapshot(now_ms);
    policy::Candidate {
        quota_used_permille: admission.quota_used_permille,
        circuit: admission.circuit.into(),
        ..wit_candidate(&deployment.config, &deployment.health.candidate(now_ms))
    }
}
