//! The model of a gateway's routing: deployments, the model groups that
//! hold them in the safe order, their policy slots, and where each user was
//! last served.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use crate::admission::DeploymentAdmission;
use crate::config::DeploymentConfig;
use crate::health::DeploymentHealth;
use crate::metrics::Metrics;
use crate::policy::{self, DeploymentTable, PolicyFault, PolicyKind, PolicySlot, PolicyVersion};
use crate::upstream::Upstream;

use super::wit::deployment_table;

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
pub(super) struct PolicyObserver {
    pub(super) group: String,
    pub(super) request_id: String,
    pub(super) metrics: Arc<Metrics>,
}

impl PolicyObserver {
    pub(super) fn observe<T>(
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
    pub(super) priorities: Arc<[u32]>,
    /// Where its deployments run, for `host.describe`.
    pub(super) deployments: DeploymentTable,
    pub(super) sequence: AtomicU64,
    pub(super) affinity: Arc<UserAffinity>,
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

    pub(super) fn record(&self, user: &str, deployment: &str, at_ms: u64) {
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
