//! Hot swapping: every change to a running gateway's policies goes through
//! here, and through the same validation gate as a policy loaded at start
//! (compile, world and version, link, load-check call with its params).
//! A policy that fails the gate is refused and the active one stays.

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use crate::config::{Config, PolicyRef};
use switchyard_policy_host::resolve::ResolveError;

use crate::policy::{
    LoadError, PolicyKind, PolicyRuntime, PolicySlot, PolicySource, PolicyVersion, SlotError,
};
use crate::router::Router;

/// Why a change was refused.
#[derive(Debug, thiserror::Error)]
pub enum SwapError {
    /// No such model group.
    #[error("no model group `{0}`")]
    UnknownGroup(String),
    /// The component failed the validation gate.
    #[error(transparent)]
    Invalid(#[from] LoadError),
    /// No such version, or nothing to roll back to.
    #[error(transparent)]
    Slot(#[from] SlotError),
    /// The reference names no component (an unknown built-in, a file
    /// that cannot be read).
    #[error(transparent)]
    Resolve(#[from] ResolveError),
}

/// The component and source a config's policy reference names.
pub fn resolve(
    kind: PolicyKind,
    policy: &PolicyRef,
) -> Result<(PolicySource, Arc<[u8]>), SwapError> {
    Ok(switchyard_policy_host::resolve::resolve(kind, policy)?)
}

/// Runs the validation gate on `component` and returns the version it makes.
pub fn load_version(
    runtime: &PolicyRuntime,
    slot: &PolicySlot,
    source: PolicySource,
    component: Arc<[u8]>,
    params: serde_json::Value,
) -> Result<PolicyVersion, LoadError> {
    let label = source.label();
    let policy = runtime.load(slot.kind(), &label, &component, &params, slot.kv().clone())?;
    Ok(PolicyVersion::new(policy, source, component, params))
}

/// The result of an upload.
#[derive(Debug, Serialize)]
pub struct Uploaded {
    pub version: u32,
    pub sha256: String,
    pub active: bool,
}

/// What changed on a config reload.
#[derive(Debug, Default, Serialize)]
pub struct ReloadReport {
    /// Slots that got a new active version, as `group/kind`.
    pub swapped: Vec<String>,
    /// Slots whose new policy was refused, with why.
    pub refused: Vec<String>,
    /// Other settings that changed and now apply (client keys, the admin
    /// token, `observability`).
    pub applied: Vec<String>,
    /// Settings that changed and need a restart to take effect; the
    /// gateway runs on with their old values.
    pub needs_restart: Vec<String>,
}

/// Changes the policies of a running router.
pub struct Swapper<'a> {
    pub router: &'a Router,
    pub runtime: &'a PolicyRuntime,
}

impl Swapper<'_> {
    fn slot(&self, group: &str, kind: PolicyKind) -> Result<&Arc<PolicySlot>, SwapError> {
        self.router
            .group(group)
            .map(|g| g.slots.get(kind))
            .ok_or_else(|| SwapError::UnknownGroup(group.to_owned()))
    }

    fn swapped(&self, group: &str, kind: PolicyKind, reason: &str, version: u32) {
        self.router.metrics().policy_swap(group, kind, reason);
        tracing::info!(group, %kind, version, reason, "policy version activated");
    }

    /// Validates `component` with the slot's current params and adds it;
    /// activates it when asked.
    pub fn upload(
        &self,
        group: &str,
        kind: PolicyKind,
        component: Vec<u8>,
        params: Option<serde_json::Value>,
        activate: bool,
    ) -> Result<Uploaded, SwapError> {
        let slot = self.slot(group, kind)?;
        // A new policy often takes params the active one would refuse.
        let params = params.unwrap_or_else(|| slot.current().params.clone());
        let version = load_version(
            self.runtime,
            slot,
            PolicySource::Upload,
            component.into(),
            params,
        )?;
        let sha256 = version.sha256.clone();
        let number = slot.add(version);
        if activate {
            slot.activate(number)?;
            self.swapped(group, kind, "upload", number);
        }
        Ok(Uploaded {
            version: number,
            sha256,
            active: activate,
        })
    }

    /// Makes an added version active.
    pub fn activate(&self, group: &str, kind: PolicyKind, version: u32) -> Result<(), SwapError> {
        self.slot(group, kind)?.activate(version)?;
        self.swapped(group, kind, "activate", version);
        Ok(())
    }

    /// Goes back to the previously active version.
    pub fn rollback(&self, group: &str, kind: PolicyKind) -> Result<u32, SwapError> {
        let rollback = self.slot(group, kind)?.rollback()?;
        self.swapped(group, kind, "rollback", rollback.to);
        Ok(rollback.to)
    }

    /// Applies new params to the active component, through the gate.
    pub fn set_params(
        &self,
        group: &str,
        kind: PolicyKind,
        params: serde_json::Value,
    ) -> Result<u32, SwapError> {
        let slot = self.slot(group, kind)?;
        let current = slot.current();
        let version = load_version(
            self.runtime,
            slot,
            current.source.clone(),
            current.component.clone(),
            params,
        )?;
        let number = slot.add(version);
        slot.activate(number)?;
        self.swapped(group, kind, "params", number);
        Ok(number)
    }

    /// Applies the policies of a re-read config to the groups that run:
    /// those whose component or params changed are swapped in through the
    /// gate. (Anything else that changed is the reload's to report.)
    pub fn reload(&self, config: &Config) -> ReloadReport {
        let mut report = ReloadReport::default();
        for group in &config.model_groups {
            if self.router.group(&group.name).is_none() {
                continue;
            }
            for kind in PolicyKind::ALL {
                let key = crate::vocabulary::SlotId::new(&group.name, kind).to_string();
                match self.reload_slot(&group.name, kind, group.policies_of(kind)) {
                    Ok(true) => report.swapped.push(key),
                    Ok(false) => {}
                    Err(e) => {
                        let error = crate::error_chain::render(&e);
                        tracing::error!(slot = %key, %error, "reload refused; the active policy stays");
                        report.refused.push(format!("{key}: {error}"));
                    }
                }
            }
        }
        report
    }

    /// Swaps one slot to what `policy` names if that differs from the
    /// active version. Returns whether it swapped.
    pub fn reload_slot(
        &self,
        group: &str,
        kind: PolicyKind,
        policy: &PolicyRef,
    ) -> Result<bool, SwapError> {
        let slot = self.slot(group, kind)?;
        let (source, component) = resolve(kind, policy)?;
        let current = slot.current();
        if current.component[..] == component[..] && current.params == policy.params {
            return Ok(false);
        }
        let version = load_version(self.runtime, slot, source, component, policy.params.clone())?;
        let number = slot.add(version);
        slot.activate(number)?;
        self.swapped(group, kind, "reload", number);
        Ok(true)
    }
}

/// The files a config's policies are loaded from, to watch.
pub fn policy_files(config: &Config) -> Vec<(String, PolicyKind, std::path::PathBuf)> {
    let mut files = Vec::new();
    for g in &config.model_groups {
        for (kind, p) in [
            (PolicyKind::Selection, &g.policies.selection),
            (PolicyKind::Cooldown, &g.policies.cooldown),
            (PolicyKind::Fallback, &g.policies.fallback),
        ] {
            if let Some(path) = &p.path {
                files.push((g.name.clone(), kind, path.clone()));
            }
        }
    }
    files
}

/// A file's identity for change detection: modification time and size.
pub fn file_stamp(path: &Path) -> Option<(std::time::SystemTime, u64)> {
    let meta = std::fs::metadata(path).ok()?;
    Some((meta.modified().ok()?, meta.len()))
}
