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
use crate::policy::{
    self, CallReport, DeploymentTable, PolicyFault, PolicyKind, PolicySlot, PolicyVersion,
};
use crate::telemetry::DECISIONS;
use crate::upstream::Upstream;

use switchyard_policy_host::candidate::deployment_table;

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
    /// The request's span, which each decision is an event of.
    pub(super) span: tracing::Span,
    /// Whether the request is traced (its span exported).
    pub(super) traced: bool,
}

impl PolicyObserver {
    pub(super) fn observe<T>(
        &self,
        slot: &PolicySlot,
        version: &PolicyVersion,
        result: &Result<(T, CallReport), PolicyFault>,
        elapsed: Duration,
        decision: impl FnOnce(&T) -> String,
    ) {
        let fault = result.as_ref().err();
        // A traced call's decisions are its span's events. Logs show the
        // others' at debug, unless traces are configured: then an untraced
        // call's are not worth formatting.
        let logged = !crate::telemetry::configured()
            && tracing::enabled!(target: DECISIONS, tracing::Level::DEBUG);
        if self.traced || logged {
            let (decision, fuel) = match result {
                Ok((value, report)) => (decision(value), report.fuel_used),
                Err(fault) => (format!("fault: {}", fault.code()), None),
            };
            tracing::event!(
                target: DECISIONS,
                parent: &self.span,
                tracing::Level::DEBUG,
                policy.kind = %slot.kind(),
                policy.name = version.policy.name(),
                policy.version = version.number,
                policy.decision = %decision,
                policy.fuel = fuel,
                policy.duration_us = elapsed.as_micros() as u64,
                "policy decision"
            );
        }
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
        let affinity = UserAffinity::new(members.iter().map(|d| d.config.id.clone()));
        Self {
            name,
            priorities: members.iter().map(|d| d.config.priority).collect(),
            members,
            slots,
            deployments,
            sequence: AtomicU64::new(0),
            affinity: Arc::new(affinity),
        }
    }
}

/// Where each user's requests last succeeded, for sticky strategies.
///
/// Compact on purpose: it remembers every user it has seen (up to
/// [`UserAffinity::MAX_USERS`] a group, then the older half is forgotten),
/// so an entry is a 64-bit keyed hash of the user's name and the index of
/// the member that served them, about 30 bytes, where the names themselves
/// took ~350 bytes a user. Two names whose hashes collide (odds of about
/// 1e-10 at the bound) would share a sticky deployment, which costs nothing
/// but a less even spread.
#[derive(Debug)]
pub struct UserAffinity {
    /// The group's members' ids, by index.
    members: Box<[String]>,
    /// Keyed per process, so names chosen to collide cannot be precomputed.
    hasher: std::collections::hash_map::RandomState,
    users: std::sync::Mutex<HashMap<u64, Served>>,
}

/// Which member served a user last, and when.
#[derive(Debug, Clone, Copy)]
struct Served {
    member: u32,
    at_ms: u64,
}

impl UserAffinity {
    /// Most users remembered per model group.
    pub const MAX_USERS: usize = 100_000;

    /// Remembers users of a group whose members have these ids.
    pub fn new(members: impl IntoIterator<Item = String>) -> Self {
        Self {
            members: members.into_iter().collect(),
            hasher: Default::default(),
            users: Default::default(),
        }
    }

    fn key(&self, user: &str) -> u64 {
        std::hash::BuildHasher::hash_one(&self.hasher, user)
    }

    /// Where `user` last succeeded.
    pub fn last_success(&self, user: &str) -> Option<policy::LastSuccess> {
        let key = self.key(user);
        let served = *self.users.lock().expect("affinity poisoned").get(&key)?;
        Some(policy::LastSuccess {
            deployment: self.members.get(served.member as usize)?.clone(),
            at_ms: served.at_ms,
        })
    }

    /// How many users it remembers.
    pub fn len(&self) -> usize {
        self.users.lock().expect("affinity poisoned").len()
    }

    /// Whether it remembers no user.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Remembers that `user` succeeded on the group's member at index
    /// `member` (its place in `ModelGroup::members`).
    pub(super) fn remember(&self, user: &str, member: usize, at_ms: u64) {
        if member >= self.members.len() {
            return;
        }
        let member = u32::try_from(member).expect("a group has fewer than 2^32 members");
        let key = self.key(user);
        let mut users = self.users.lock().expect("affinity poisoned");
        if users.len() >= Self::MAX_USERS && !users.contains_key(&key) {
            // Forget the older half: cheap, rare, and keeps memory bounded.
            let mut times: Vec<u64> = users.values().map(|s| s.at_ms).collect();
            times.sort_unstable();
            let cutoff = times[times.len() / 2];
            users.retain(|_, s| s.at_ms > cutoff);
        }
        users.insert(key, Served { member, at_ms });
    }
}

#[cfg(test)]
mod tests {
    use super::UserAffinity;

    #[test]
    fn remembers_each_users_last_success_by_member() {
        let affinity = UserAffinity::new(["a".to_owned(), "b".to_owned()]);
        affinity.remember("alice", 1, 10);
        affinity.remember("bob", 0, 20);
        affinity.remember("alice", 0, 30);
        let alice = affinity.last_success("alice").unwrap();
        assert_eq!((alice.deployment.as_str(), alice.at_ms), ("a", 30));
        assert_eq!(affinity.last_success("bob").unwrap().deployment, "a");
        assert!(affinity.last_success("carol").is_none());
        // A member the group does not have is not remembered.
        affinity.remember("carol", 2, 40);
        assert!(affinity.last_success("carol").is_none());
        assert_eq!(affinity.len(), 2);
    }

    #[test]
    fn past_the_bound_the_older_half_is_forgotten() {
        let affinity = UserAffinity::new(["a".to_owned()]);
        for i in 0..UserAffinity::MAX_USERS as u64 {
            affinity.remember(&format!("user-{i}"), 0, i);
        }
        assert_eq!(affinity.len(), UserAffinity::MAX_USERS);
        affinity.remember("newcomer", 0, u64::MAX);
        assert!(affinity.len() <= UserAffinity::MAX_USERS / 2 + 1);
        assert!(affinity.last_success("newcomer").is_some());
        assert!(affinity.last_success("user-0").is_none());
        let newest = format!("user-{}", UserAffinity::MAX_USERS - 1);
        assert!(affinity.last_success(&newest).is_some());
    }
}
