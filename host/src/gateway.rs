//! Assembles a running gateway from a config: loads the policies, builds the
//! client pool, and serves the API.

use std::path::PathBuf;
use std::sync::Arc;

use tokio::net::TcpListener;

use crate::api::{self, AppState};
use crate::clock::SharedClock;
use crate::config::{Config, CredentialsConfig, PolicyRef};
use crate::health::DeploymentHealth;
use crate::policy::{builtin, KvStore, LoadError, Policy, PolicyKind, PolicyRuntime};
use crate::router::{Deployment, GroupPolicies, ModelGroup, Router};
use crate::upstream::{CredentialsError, Upstream};

/// Why a gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// A policy named in the config could not be loaded.
    #[error("model group `{group}`, {kind} policy `{policy}`: {source}")]
    Policy {
        group: String,
        kind: PolicyKind,
        policy: String,
        source: LoadError,
    },
    /// A built-in name that does not exist.
    #[error("model group `{group}`: no built-in {kind} policy `{name}` (built-in {kind} policies: {known})")]
    UnknownBuiltin {
        group: String,
        kind: PolicyKind,
        name: String,
        known: String,
    },
    /// A policy file could not be read.
    #[error("model group `{group}`, {kind} policy: cannot read {path}: {source}")]
    PolicyFile {
        group: String,
        kind: PolicyKind,
        path: PathBuf,
        source: std::io::Error,
    },
    /// Credentials are missing.
    #[error(transparent)]
    Credentials(#[from] CredentialsError),
    /// The policy engine could not start.
    #[error(transparent)]
    Engine(LoadError),
}

/// Where deployments without an `endpoint_url` go.
#[derive(Debug, Clone)]
pub enum Upstreams {
    /// AWS's own endpoints, with each deployment's credentials.
    Aws,
    /// A simulator at this base URL, with placeholder credentials.
    Simulator(String),
}

/// A gateway ready to serve.
pub struct Gateway {
    state: Arc<AppState>,
    max_body_bytes: usize,
    runtime: PolicyRuntime,
}

impl Gateway {
    /// Loads everything `config` names. Time for routing state comes from `clock`.
    pub fn build(
        config: &Config,
        clock: SharedClock,
        upstreams: &Upstreams,
    ) -> Result<Self, GatewayError> {
        let runtime = PolicyRuntime::new(&config.policy_runtime, clock.clone())
            .map_err(GatewayError::Engine)?;
        let mut deployments = std::collections::HashMap::new();
        for d in &config.deployments {
            let mut d = d.clone();
            let endpoint = match (upstreams, &d.endpoint_url) {
                (Upstreams::Simulator(url), None) => {
                    d.credentials = CredentialsConfig::Static {
                        access_key_id: "SIMULATOR".into(),
                        secret_access_key: "SIMULATOR".into(),
                        session_token: None,
                    };
                    Some(url.as_str())
                }
                _ => None,
            };
            let upstream = Upstream::new(&d, &config.limits, endpoint)?;
            deployments.insert(
                d.id.clone(),
                Arc::new(Deployment {
                    config: d,
                    upstream,
                    health: DeploymentHealth::default(),
                }),
            );
        }
        let mut groups = Vec::new();
        for g in &config.model_groups {
            let load = |kind: PolicyKind, slot: &PolicyRef| -> Result<Arc<Policy>, GatewayError> {
                load_policy(&runtime, &g.name, kind, slot)
            };
            let policies = GroupPolicies {
                selection: load(PolicyKind::Selection, &g.policies.selection)?,
                cooldown: load(PolicyKind::Cooldown, &g.policies.cooldown)?,
                fallback: load(PolicyKind::Fallback, &g.policies.fallback)?,
            };
            let members = g
                .deployments
                .iter()
                .map(|id| deployments[id].clone())
                .collect();
            groups.push(ModelGroup::new(g.name.clone(), members, policies));
        }
        let router = Router::new(groups, clock, config.limits.max_attempts);
        Ok(Self {
            state: Arc::new(AppState { router }),
            max_body_bytes: config.limits.max_body_bytes,
            runtime,
        })
    }

    /// The router, for inspection.
    pub fn router(&self) -> &Router {
        &self.state.router
    }

    /// The policy runtime the gateway's policies run on.
    pub fn runtime(&self) -> &PolicyRuntime {
        &self.runtime
    }

    /// The HTTP routes.
    pub fn app(&self) -> axum::Router {
        api::routes(self.state.clone(), self.max_body_bytes)
    }

    /// Serves on `listener` until the process is stopped.
    pub async fn serve(&self, listener: TcpListener) -> std::io::Result<()> {
        axum::serve(listener, self.app()).await
    }
}

fn load_policy(
    runtime: &PolicyRuntime,
    group: &str,
    kind: PolicyKind,
    slot: &PolicyRef,
) -> Result<Arc<Policy>, GatewayError> {
    let (label, bytes): (String, std::borrow::Cow<'static, [u8]>) = match (&slot.name, &slot.path) {
        (Some(name), _) => {
            let b = builtin::find(kind, name).ok_or_else(|| GatewayError::UnknownBuiltin {
                group: group.to_owned(),
                kind,
                name: name.clone(),
                known: builtin::names(kind).join(", "),
            })?;
            (b.name.to_owned(), b.component.into())
        }
        (None, Some(path)) => {
            let bytes = std::fs::read(path).map_err(|source| GatewayError::PolicyFile {
                group: group.to_owned(),
                kind,
                path: path.clone(),
                source,
            })?;
            (path.display().to_string(), bytes.into())
        }
        (None, None) => unreachable!("config validation requires a name or a path"),
    };
    let kv = Arc::new(KvStore::new(runtime.clock().clone()));
    runtime
        .load(kind, &label, &bytes, &slot.params, kv)
        .map(Arc::new)
        .map_err(|source| GatewayError::Policy {
            group: group.to_owned(),
            kind,
            policy: label,
            source,
        })
}
