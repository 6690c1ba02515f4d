//! A model group's three policies run off the request path, on a manual
//! clock: what `switchyard policy simulate` and `switchyard lab` share.
//!
//! Each question is answered the way the gateway answers it, including when
//! the policy faults: the safe cooldown stands in (and the attempt plan's
//! safe order for an order), and the fault is written down instead of
//! failing the run.

use std::collections::BTreeMap;
use std::sync::Arc;

use switchyard_clock::SharedClock;

use crate::attempt::Judgement;
use crate::outcome::Outcome;
use crate::policy::{
    CallOptions, Candidate, KvStore, LoadError, Policy, PolicyKind, PolicyRuntime, RequestInfo,
};
use crate::resolve::{resolve, ResolveError};
use crate::settings::{GroupPolicies, PolicyRef, PolicyRuntimeConfig};

/// A policy that could not be found or loaded.
#[derive(Debug, thiserror::Error)]
#[error("{kind} policy")]
pub struct OfflineLoadError {
    pub kind: PolicyKind,
    #[source]
    pub source: OfflineLoadCause,
}

/// Why a policy could not be had.
#[derive(Debug, thiserror::Error)]
pub enum OfflineLoadCause {
    /// Its reference names no component.
    #[error(transparent)]
    Resolve(#[from] ResolveError),
    /// Its component failed the validation gate (or the runtime could not start).
    #[error(transparent)]
    Invalid(#[from] LoadError),
}

/// The three policies of one group, loaded on their own runtime.
pub struct OfflinePolicies {
    selection: Policy,
    cooldown: Policy,
    fallback: Policy,
    /// Where each came from, by world name (`selection`, ...).
    pub names: BTreeMap<String, String>,
}

impl OfflinePolicies {
    /// Loads `policies` (each kind in `overrides` taking precedence) on a
    /// runtime reading `clock`. Calls get a generous deadline: a run is about
    /// what a policy decides, not about this machine's scheduling.
    pub fn load(
        clock: &SharedClock,
        policies: &GroupPolicies,
        overrides: &BTreeMap<PolicyKind, PolicyRef>,
    ) -> Result<Self, OfflineLoadError> {
        let config = PolicyRuntimeConfig {
            call_deadline_us: 1_000_000,
            max_concurrent_calls: 4,
            ..PolicyRuntimeConfig::default()
        };
        let runtime = PolicyRuntime::new(&config, clock.clone()).map_err(|e| OfflineLoadError {
            kind: PolicyKind::Selection,
            source: e.into(),
        })?;
        let mut names = BTreeMap::new();
        let mut load = |kind: PolicyKind| {
            let configured = match kind {
                PolicyKind::Selection => &policies.selection,
                PolicyKind::Cooldown => &policies.cooldown,
                PolicyKind::Fallback => &policies.fallback,
            };
            let policy_ref = overrides.get(&kind).unwrap_or(configured);
            let error = |source: OfflineLoadCause| OfflineLoadError { kind, source };
            let (source, bytes) = resolve(kind, policy_ref).map_err(|e| error(e.into()))?;
            names.insert(kind.world().to_owned(), source.to_string());
            runtime
                .load(
                    kind,
                    &source.label(),
                    &bytes,
                    &policy_ref.params,
                    Arc::new(KvStore::new(clock.clone())),
                )
                .map_err(|e| error(e.into()))
        };
        let selection = load(PolicyKind::Selection)?;
        let cooldown = load(PolicyKind::Cooldown)?;
        let fallback = load(PolicyKind::Fallback)?;
        Ok(Self {
            selection,
            cooldown,
            fallback,
            names,
        })
    }

    /// The selection policy's order of `candidates` (indices into it), or
    /// `None` when it faulted (the attempt plan's safe order stands in).
    pub fn order(
        &self,
        req: &RequestInfo,
        candidates: &[Candidate],
        options: &CallOptions,
        faults: &mut Vec<String>,
    ) -> Option<Vec<usize>> {
        match self.selection.select(req, candidates, options) {
            Ok((order, _)) => Some(order),
            Err(fault) => {
                faults.push(format!("selection: {fault}"));
                None
            }
        }
    }

    /// Whether the cooldown policy declared idempotent successes: settling
    /// skips it for a success that could change nothing, as the gateway does.
    pub fn idempotent_successes(&self) -> Option<u64> {
        self.cooldown.idempotent_successes()
    }

    /// The cooldown policy's decision on `outcome`, given what the deployment
    /// looked like when it ended.
    pub fn judge(
        &self,
        outcome: &Outcome,
        before: &Candidate,
        options: &CallOptions,
        faults: &mut Vec<String>,
    ) -> Judgement {
        let call =
            self.cooldown
                .on_outcome(&crate::policy::Outcome::from(outcome), before, options);
        if let Err(fault) = &call {
            faults.push(format!("cooldown: {fault}"));
        }
        Judgement::of(&call, outcome)
    }

    /// The fallback policy's order of `remaining`, what is left after
    /// `failed` (indices into `remaining`), or `None` when it faulted.
    pub fn next(
        &self,
        req: &RequestInfo,
        failed: &Outcome,
        tried: &[Candidate],
        remaining: &[Candidate],
        options: &CallOptions,
        faults: &mut Vec<String>,
    ) -> Option<Vec<usize>> {
        match self.fallback.next(
            req,
            &crate::policy::Outcome::from(failed),
            tried,
            remaining,
            options,
        ) {
            Ok((next, _)) => Some(next),
            Err(fault) => {
                faults.push(format!("fallback: {fault}"));
                None
            }
        }
    }
}

/// A group's offline policies as an [`AttemptRun`](crate::attempt::AttemptRun)
/// calls them, writing each fault down in `faults`.
pub struct OfflineCalls<'a> {
    pub policies: &'a OfflinePolicies,
    pub faults: &'a mut Vec<String>,
}

impl crate::attempt::RunPolicies for OfflineCalls<'_> {
    fn select(
        &mut self,
        info: &RequestInfo,
        candidates: &[Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>> {
        self.policies.order(info, candidates, options, self.faults)
    }

    fn fall_back(
        &mut self,
        info: &RequestInfo,
        failed: &Outcome,
        tried: &[Candidate],
        remaining: &[Candidate],
        options: &CallOptions,
    ) -> Option<Vec<usize>> {
        self.policies
            .next(info, failed, tried, remaining, options, self.faults)
    }
}
