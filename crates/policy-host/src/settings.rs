//! The settings the policy host reads from a gateway's config: deployments
//! (what policies see of them), a group's policies, the runtime's limits
//! and accounts' budgets. The gateway's config embeds them as they are, and
//! the authoring kit and the lab declare deployments with the same types.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// An account's budgets beyond Bedrock's per-minute quotas: what all the
/// deployments naming it with `account` may spend together in a UTC day and
/// in a week (from Monday 00:00 UTC). A budget left out is unlimited.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AccountConfig {
    /// The account, as deployments name it.
    pub name: String,
    #[serde(default)]
    pub daily_tokens: Option<u64>,
    #[serde(default)]
    pub weekly_tokens: Option<u64>,
    #[serde(default)]
    pub daily_requests: Option<u64>,
    #[serde(default)]
    pub weekly_requests: Option<u64>,
}

impl AccountConfig {
    /// The first budget set to 0, which no request could fit (a budget is
    /// left out for none).
    pub fn zero_budget(&self) -> Option<&'static str> {
        [
            ("daily_tokens", self.daily_tokens),
            ("weekly_tokens", self.weekly_tokens),
            ("daily_requests", self.daily_requests),
            ("weekly_requests", self.weekly_requests),
        ]
        .into_iter()
        .find_map(|(field, budget)| (budget == Some(0)).then_some(field))
    }

    /// Its budgets, as the state backends keep them.
    pub fn budget(&self) -> crate::budget::BudgetSpec {
        crate::budget::BudgetSpec {
            account: self.name.clone(),
            daily_tokens: self.daily_tokens,
            weekly_tokens: self.weekly_tokens,
            daily_requests: self.daily_requests,
            weekly_requests: self.weekly_requests,
        }
    }
}

/// Limits on each policy call.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyRuntimeConfig {
    /// CPU-time budget of one policy call, in microseconds (time its thread
    /// spends waiting for a core does not count, up to 100 ms).
    pub call_deadline_us: u64,
    /// Linear memory a policy instance may grow to, in MiB.
    pub memory_limit_mib: u32,
    /// How many policy instances may exist at once (the pool's size).
    pub max_concurrent_calls: u32,
    /// Keep compiled policies on disk, so a restart skips compilation.
    pub compile_cache: bool,
    /// Where; by default `$XDG_CACHE_HOME/switchyard/policies` or
    /// `~/.cache/switchyard/policies`.
    pub cache_dir: Option<PathBuf>,
    /// A version activated at run time is rolled back when more than this
    /// share of its last `rollback_window_calls` calls faulted.
    pub rollback_fault_ratio: f64,
    /// The calls the fault share is measured over.
    pub rollback_window_calls: u32,
    /// Count the WebAssembly instructions (fuel) each call executes, as
    /// `switchyard policy test` reports them. Not a gateway setting: counting
    /// costs a little on every call, and the deadline already bounds a call.
    #[serde(skip)]
    pub meter_fuel: bool,
    /// Seeds each policy call's randomness with this number XOR the
    /// request's sequence number in its group, so a run can be replayed
    /// decision for decision (`policy simulate` seeds the same way, with 0).
    /// Unset: fresh randomness for every call.
    pub seed: Option<u64>,
}

impl Default for PolicyRuntimeConfig {
    fn default() -> Self {
        Self {
            call_deadline_us: 1_000,
            memory_limit_mib: 16,
            max_concurrent_calls: 256,
            compile_cache: true,
            cache_dir: None,
            rollback_fault_ratio: 0.5,
            rollback_window_calls: 20,
            meter_fuel: false,
            seed: None,
        }
    }
}

/// One upstream target: a Bedrock model id in one region under one set of credentials.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeploymentConfig {
    /// Unique name, used in stats, headers and policies.
    pub id: String,
    /// Bedrock model id or inference profile.
    pub model_id: String,
    /// AWS region.
    #[serde(default = "default_region")]
    pub region: String,
    /// The AWS account (or other quota owner) it runs under. Bedrock's
    /// quotas belong to an account, a region and a model, so deployments
    /// that share all three share one set of `rpm`/`tpm` books. Policies
    /// see it too, to spread load over accounts. Free text.
    #[serde(default = "default_account")]
    pub account: String,
    /// Lower is preferred; 1 is the primary.
    #[serde(default = "default_priority")]
    pub priority: u32,
    /// Weight for weighted strategies.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// Where Bedrock is; unset means AWS's own endpoint for the region (or
    /// the in-process simulator under `serve --simulate`).
    #[serde(default)]
    pub endpoint_url: Option<String>,
    /// Where the credentials come from.
    #[serde(default)]
    pub credentials: CredentialsConfig,
    /// Assume this role with `credentials` before calling Bedrock.
    #[serde(default)]
    pub assume_role: Option<AssumeRoleConfig>,
    /// Requests per minute its quota pool (account, region and model) is
    /// allowed; unset: not limited by the gateway.
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Tokens per minute its quota pool is allowed.
    #[serde(default)]
    pub tpm: Option<u32>,
}

impl DeploymentConfig {
    /// The quota books it spends from: Bedrock keeps one quota per account,
    /// region and model, whichever deployment (or model group) calls it.
    pub fn quota_pool(&self) -> String {
        format!("{}/{}/{}", self.account, self.region, self.model_id)
    }
}

// A deployment's defaults, public so that the lab's scenarios declare
// deployments with the same ones.

/// The region a deployment without `region` calls.
pub fn default_region() -> String {
    "us-east-1".to_owned()
}
/// The account a deployment without `account` belongs to.
pub fn default_account() -> String {
    "default".to_owned()
}
/// The priority of a deployment without `priority` (1 goes first).
pub fn default_priority() -> u32 {
    1
}
/// The weight of a deployment without `weight`.
pub fn default_weight() -> u32 {
    1
}

/// Where a deployment's AWS credentials come from. Every source but
/// `static` is read through aws-config and refreshed before it expires.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(tag = "source", rename_all = "snake_case", deny_unknown_fields)]
pub enum CredentialsConfig {
    /// aws-config's default chain, as every AWS SDK reads it: environment,
    /// shared config and credentials files (SSO, `role_arn`/`source_profile`,
    /// `credential_process`), web identity (IRSA), ECS container, EC2 IMDS.
    #[default]
    Chain,
    /// Only `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and `AWS_SESSION_TOKEN`.
    Env,
    /// Keys written in the config (fine for the simulator, not for production).
    Static {
        access_key_id: String,
        secret_access_key: String,
        #[serde(default)]
        session_token: Option<String>,
    },
    /// A named profile of the shared config and credentials files, with
    /// anything a profile may hold (keys, SSO, a role, a process).
    Profile {
        #[serde(default = "default_profile")]
        name: String,
    },
}

/// An STS AssumeRole a deployment makes with its `credentials`, so one
/// process can call Bedrock in several accounts.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AssumeRoleConfig {
    /// The role to assume.
    pub role_arn: String,
    /// The external id the role's trust policy asks for, if any.
    #[serde(default)]
    pub external_id: Option<String>,
    /// The session name CloudTrail shows.
    #[serde(default = "default_session_name")]
    pub session_name: String,
}

fn default_session_name() -> String {
    "switchyard".to_owned()
}

fn default_profile() -> String {
    "default".to_owned()
}

/// The three policy slots of a model group.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GroupPolicies {
    /// Orders the deployments for a new request.
    pub selection: PolicyRef,
    /// Decides how long a deployment cools down after an attempt.
    pub cooldown: PolicyRef,
    /// Orders what is left after a failed attempt.
    pub fallback: PolicyRef,
}

impl Default for GroupPolicies {
    fn default() -> Self {
        Self {
            selection: PolicyRef::builtin("priority"),
            cooldown: PolicyRef::builtin("adaptive"),
            fallback: PolicyRef::builtin("cascade"),
        }
    }
}

/// A built-in policy by name, or a component file by path, with its params.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyRef {
    /// Name of a built-in policy.
    #[serde(default)]
    pub name: Option<String>,
    /// Path of a `.wasm` component (relative to the config file).
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Params handed to the policy as JSON.
    #[serde(default = "empty_params")]
    pub params: serde_json::Value,
}

fn empty_params() -> serde_json::Value {
    serde_json::Value::Object(Default::default())
}

impl PolicyRef {
    /// The built-in policy `name` with no params.
    pub fn builtin(name: &str) -> Self {
        Self {
            name: Some(name.to_owned()),
            path: None,
            params: empty_params(),
        }
    }
}
