//! A policy slot: the active version of one model group's selection,
//! cooldown or fallback policy, and the versions it can switch to.
//!
//! The active version is an `ArcSwap`: a request takes a snapshot when it
//! starts and keeps it for all its attempts, so a swap never mixes two
//! versions inside one request, and in-flight requests finish on the version
//! they started with. A newly activated version that faults on too many of
//! its calls is rolled back to the one it replaced.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use serde::Serialize;

use super::{KvStore, Policy, PolicyKind};

/// When a newly activated version is rolled back automatically.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RollbackRule {
    /// The calls the fault share is measured over (the most recent ones).
    pub window_calls: usize,
    /// The share of faulted calls in the window above which it is rolled back.
    pub max_fault_ratio: f64,
}

impl Default for RollbackRule {
    fn default() -> Self {
        Self {
            window_calls: 20,
            max_fault_ratio: 0.5,
        }
    }
}

/// Where a policy version came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PolicySource {
    /// A built-in policy, by name.
    Builtin(String),
    /// A component file (as the config names it).
    File(std::path::PathBuf),
    /// A component uploaded through the admin API.
    Upload,
}

impl PolicySource {
    /// The name its calls are logged and counted under: the built-in's
    /// name, the file's path, or `upload`.
    pub fn label(&self) -> String {
        match self {
            Self::Builtin(name) => name.clone(),
            other => other.to_string(),
        }
    }
}

/// `builtin:NAME`, the file's path, or `upload`.
impl std::fmt::Display for PolicySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Builtin(name) => write!(f, "builtin:{name}"),
            Self::File(path) => write!(f, "{}", path.display()),
            Self::Upload => f.write_str("upload"),
        }
    }
}

/// One loaded version of a slot's policy.
#[derive(Debug)]
pub struct PolicyVersion {
    /// Numbered from 1 in the order versions were loaded into the slot.
    pub number: u32,
    /// The linked policy.
    pub policy: Policy,
    /// Where it came from.
    pub source: PolicySource,
    /// SHA-256 of the component, hex.
    pub sha256: String,
    /// The component, kept so that new params can be applied to it.
    pub component: Arc<[u8]>,
    /// Its params.
    pub params: serde_json::Value,
    /// When it was loaded, in Unix milliseconds.
    pub loaded_at_ms: u64,
    recent: Mutex<VecDeque<bool>>,
}

impl PolicyVersion {
    /// A version of `policy` loaded from `component`.
    pub fn new(
        policy: Policy,
        source: PolicySource,
        component: Arc<[u8]>,
        params: serde_json::Value,
    ) -> Self {
        Self {
            number: 0,
            policy,
            source,
            sha256: super::cache::sha256_hex(&component),
            component,
            params,
            loaded_at_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0),
            recent: Mutex::new(VecDeque::new()),
        }
    }
}

/// What the admin API shows of a version.
#[derive(Debug, Clone, Serialize)]
pub struct VersionInfo {
    pub version: u32,
    pub active: bool,
    pub source: String,
    pub sha256: String,
    pub bytes: usize,
    pub loaded_at_ms: u64,
    pub calls: u64,
    pub faults: u64,
    pub params: serde_json::Value,
}

/// A swap that happened, for logs and metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rollback {
    pub from: u32,
    pub to: u32,
}

/// Why a slot operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SlotError {
    #[error("no version {0} in this slot")]
    NoSuchVersion(u32),
    #[error("there is no previous version to roll back to")]
    NothingToRollBackTo,
}

#[derive(Debug)]
struct SlotState {
    versions: Vec<Arc<PolicyVersion>>,
    /// Versions that were active before the current one, most recent last.
    previous: Vec<u32>,
    next_number: u32,
}

/// Versions kept per slot; older inactive ones are dropped.
const MAX_VERSIONS: usize = 16;

/// One model group's policy of one kind.
#[derive(Debug)]
pub struct PolicySlot {
    kind: PolicyKind,
    active: ArcSwap<PolicyVersion>,
    state: Mutex<SlotState>,
    kv: Arc<KvStore>,
    rule: RollbackRule,
}

impl PolicySlot {
    /// A slot whose first version is `first`, active. `kv` is the slot's
    /// private state, shared by all its versions.
    pub fn new(
        kind: PolicyKind,
        mut first: PolicyVersion,
        kv: Arc<KvStore>,
        rule: RollbackRule,
    ) -> Self {
        first.number = 1;
        let first = Arc::new(first);
        Self {
            kind,
            active: ArcSwap::new(first.clone()),
            state: Mutex::new(SlotState {
                versions: vec![first],
                previous: Vec::new(),
                next_number: 2,
            }),
            kv,
            rule,
        }
    }

    /// Which world its policies implement.
    pub fn kind(&self) -> PolicyKind {
        self.kind
    }

    /// The slot's private key-value state, for loading new versions.
    pub fn kv(&self) -> &Arc<KvStore> {
        &self.kv
    }

    /// The active version, to keep for the whole of one request.
    pub fn current(&self) -> Arc<PolicyVersion> {
        self.active.load_full()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SlotState> {
        self.state.lock().expect("policy slot poisoned")
    }

    /// Adds a loaded version without activating it; returns its number.
    pub fn add(&self, mut version: PolicyVersion) -> u32 {
        let mut state = self.lock();
        version.number = state.next_number;
        state.next_number += 1;
        let number = version.number;
        state.versions.push(Arc::new(version));
        let active = self.active.load().number;
        while state.versions.len() > MAX_VERSIONS {
            // Drop the oldest version that is neither active nor a rollback target.
            let keep: Vec<u32> = state
                .previous
                .iter()
                .copied()
                .chain([active, number])
                .collect();
            match state
                .versions
                .iter()
                .position(|v| !keep.contains(&v.number))
            {
                Some(i) => {
                    state.versions.remove(i);
                }
                None => break,
            }
        }
        number
    }

    /// Makes version `number` the active one.
    pub fn activate(&self, number: u32) -> Result<(), SlotError> {
        let mut state = self.lock();
        let version = state
            .versions
            .iter()
            .find(|v| v.number == number)
            .cloned()
            .ok_or(SlotError::NoSuchVersion(number))?;
        let current = self.active.load().number;
        if current == number {
            return Ok(());
        }
        version.recent.lock().expect("window poisoned").clear();
        state.previous.push(current);
        // The rollback history is bounded like the versions it points at.
        if state.previous.len() > MAX_VERSIONS {
            state.previous.remove(0);
        }
        self.active.store(version);
        Ok(())
    }

    /// Goes back to the version that was active before the current one.
    pub fn rollback(&self) -> Result<Rollback, SlotError> {
        self.rollback_locked(&mut self.lock())
    }

    /// [`rollback`](Self::rollback), with the slot already locked.
    fn rollback_locked(&self, state: &mut SlotState) -> Result<Rollback, SlotError> {
        let from = self.active.load().number;
        let to = state.previous.pop().ok_or(SlotError::NothingToRollBackTo)?;
        let version = state
            .versions
            .iter()
            .find(|v| v.number == to)
            .cloned()
            .ok_or(SlotError::NoSuchVersion(to))?;
        self.active.store(version);
        Ok(Rollback { from, to })
    }

    /// Records how a call of `version` went. When a version that replaced
    /// another faults on more than the rule allows, the slot rolls back and
    /// says so.
    pub fn observe(&self, version: &PolicyVersion, faulted: bool) -> Option<Rollback> {
        let over_limit = {
            let mut recent = version.recent.lock().expect("window poisoned");
            recent.push_back(faulted);
            if recent.len() > self.rule.window_calls {
                recent.pop_front();
            }
            let faults = recent.iter().filter(|&&f| f).count();
            recent.len() >= self.rule.window_calls
                && faults as f64 > self.rule.max_fault_ratio * recent.len() as f64
        };
        if !over_limit {
            return None;
        }
        // Only the version still active, and only if it replaced another:
        // checked and swapped under one lock, so an activation or another
        // faulting call in between cannot make it roll back the wrong one.
        let mut state = self.lock();
        if self.active.load().number != version.number || state.previous.is_empty() {
            return None;
        }
        let rollback = self.rollback_locked(&mut state).ok()?;
        drop(state);
        version.recent.lock().expect("window poisoned").clear();
        Some(rollback)
    }

    /// Every version, for the admin API.
    pub fn versions(&self) -> Vec<VersionInfo> {
        let state = self.lock();
        let active = self.active.load().number;
        state
            .versions
            .iter()
            .map(|v| VersionInfo {
                version: v.number,
                active: v.number == active,
                source: v.source.to_string(),
                sha256: v.sha256.clone(),
                bytes: v.component.len(),
                loaded_at_ms: v.loaded_at_ms,
                calls: v.policy.stats().calls(),
                faults: v.policy.stats().faults(),
                params: v.params.clone(),
            })
            .collect()
    }
}
