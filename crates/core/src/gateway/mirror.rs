//! This instance's copy of the shared state: where the siblings' changes
//! land (cooldowns and circuits of its deployments, its policies' entries,
//! its fair queue), and what it tells Redis when it re-syncs.

use std::collections::HashMap;
use std::sync::Arc;

use crate::admission::FairQueue;
use crate::clock::SharedClock;
use crate::outcome::OutcomeKind;
use crate::policy::KvStore;
use crate::router::Deployment;
use crate::state::{Change, ChangeSink, SlotId};

/// A gateway's deployments, policy stores and queue, by their shared names.
pub struct GatewayMirror {
    pub clock: SharedClock,
    pub deployments: HashMap<String, Arc<Deployment>>,
    /// Policy stores by slot.
    pub kv: HashMap<SlotId, Arc<KvStore>>,
    pub queue: FairQueue,
}

impl ChangeSink for GatewayMirror {
    fn apply(&self, change: &Change) {
        let now = self.clock.now_ms();
        let deployment = |id: &str| self.deployments.get(id);
        match change {
            Change::Cooldown {
                deployment: id,
                remaining_ms,
                cause,
                clear_history,
            } => {
                if let Some(d) = deployment(id) {
                    d.health
                        .apply_cooldown(now, *remaining_ms, *clear_history, *cause);
                }
            }
            Change::CircuitOpened {
                deployment: id,
                remaining_ms,
            } => {
                if let Some(d) = deployment(id) {
                    d.admission.open_circuit(*remaining_ms, now);
                }
            }
            Change::CircuitClosed { deployment: id } => {
                if let Some(d) = deployment(id) {
                    d.admission.close_circuit();
                }
            }
            Change::KvSet {
                slot,
                key,
                value,
                ttl_ms,
            } => {
                if let Some(kv) = self.kv.get(slot) {
                    kv.apply_set(key.clone(), value.clone(), *ttl_ms);
                }
            }
            Change::KvDeleted { slot, key } => {
                if let Some(kv) = self.kv.get(slot) {
                    kv.apply_delete(key);
                }
            }
        }
    }

    fn current(&self) -> Vec<Change> {
        let now = self.clock.now_ms();
        let mut changes = Vec::new();
        for (id, d) in &self.deployments {
            let health = d.health.snapshot(now);
            if health.cooldown_remaining_ms > 0 {
                changes.push(Change::Cooldown {
                    deployment: id.clone(),
                    remaining_ms: health.cooldown_remaining_ms,
                    cause: health.cooldown_reason.unwrap_or(OutcomeKind::Throttled),
                    clear_history: false,
                });
            }
            let admission = d.admission.snapshot(now);
            if admission.circuit_open_remaining_ms > 0 {
                changes.push(Change::CircuitOpened {
                    deployment: id.clone(),
                    remaining_ms: admission.circuit_open_remaining_ms,
                });
            }
        }
        changes
    }

    fn running_elsewhere_changed(&self) {
        self.queue.recheck();
    }

    fn kv_slots(&self) -> Vec<SlotId> {
        self.kv.keys().cloned().collect()
    }
}
