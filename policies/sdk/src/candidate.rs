//! Conveniences on the contract's [`Candidate`].

use alloc::string::String;

use crate::{Candidate, Circuit, DeploymentInfo};

impl Candidate {
    /// A healthy, idle candidate: closed circuit, no cooldown, no history,
    /// weight 1. Meant for unit tests of a policy's logic, which then change
    /// the fields they care about (`Candidate { in_flight: 3, ..Candidate::new("a", 1) }`).
    pub fn new(deployment: impl Into<String>, priority: u32) -> Self {
        Self {
            deployment: deployment.into(),
            priority,
            weight: 1,
            in_flight: 0,
            cooldown_remaining_ms: 0,
            recent_throttles: 0,
            last_used_ms: None,
            last_throttle_ms: None,
            quota_used_permille: 0,
            success_permille: 1000,
            latency_ewma_ms: 0,
            circuit: Circuit::Closed,
        }
    }
}

impl Candidate {
    /// Whether it is fit to call now, by the rule the built-in selection
    /// policies share: its circuit is not open, and its cooldown has at most
    /// `skip_threshold_ms` left (a short cooldown is a hint, not a block).
    /// With a threshold of 0, any cooldown at all makes it unfit.
    pub fn is_fit(&self, skip_threshold_ms: u64) -> bool {
        self.circuit != Circuit::Open && self.cooldown_remaining_ms <= skip_threshold_ms
    }
}

impl DeploymentInfo {
    /// Where a deployment runs. Meant for unit tests of a policy's logic;
    /// at run time the host says, through [`host::describe`](crate::host::describe).
    pub fn new(
        model_id: impl Into<String>,
        region: impl Into<String>,
        account: impl Into<String>,
    ) -> Self {
        Self {
            model_id: model_id.into(),
            region: region.into(),
            account: account.into(),
        }
    }
}
