//! The gateway's one TOML file: where it listens, which deployments exist,
//! how they are grouped, which policies route each group, and the limits.
//!
//! Parsing is strict (unknown keys are errors) and validation names the key
//! at fault, so a typo fails at start instead of silently routing wrong.

pub mod preset;
pub mod show;
mod validate;

pub use preset::Preset;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Why a config could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config {path}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    /// The TOML is malformed or has a key of the wrong type or name.
    #[error("invalid config {path}: {message}")]
    Parse { path: String, message: String },
    /// A key has a value that cannot work.
    #[error("invalid config: `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

fn invalid(key: impl Into<String>, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        problem: problem.into(),
    }
}

/// The whole config file.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The preset whose defaults this config starts from (`--preset`
    /// overrides it); keys written here win over the preset's.
    #[serde(default)]
    pub preset: Option<Preset>,
    /// `[logging]`: level and format.
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Address the gateway listens on (`--listen` overrides it).
    #[serde(default = "default_listen")]
    pub listen: SocketAddr,
    /// Request and attempt limits.
    #[serde(default)]
    pub limits: Limits,
    /// `[http]`: client timeouts, the connection cap, the shutdown grace.
    #[serde(default)]
    pub http: crate::edge::HttpConfig,
    /// `[observability]`: who may read the stats routes.
    #[serde(default)]
    pub observability: ObservabilityConfig,
    /// Limits every policy call runs under.
    #[serde(default)]
    pub policy_runtime: PolicyRuntimeConfig,
    /// The upstream targets.
    #[serde(default)]
    pub deployments: Vec<DeploymentConfig>,
    /// The names clients ask for, each mapping to deployments.
    #[serde(default)]
    pub model_groups: Vec<ModelGroupConfig>,
    /// The admin API (`/admin`).
    #[serde(default)]
    pub admin: AdminConfig,
    /// Admission control: the fair queue, waiting for capacity, adaptive
    /// concurrency and circuit breakers.
    #[serde(default)]
    pub admission: crate::admission::AdmissionConfig,
    /// Client API keys. With none, the gateway runs open.
    #[serde(default)]
    pub api_keys: Vec<ApiKeyConfig>,
    /// `[jobs]`: async jobs (`/v1/jobs`); without the table they are off.
    #[serde(default)]
    pub jobs: Option<crate::jobs::JobsConfig>,
    /// `[[accounts]]`: budgets beyond a minute for the deployments that
    /// share an `account`.
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// The built-in Bedrock simulator's table, used by `switchyard sim` and
    /// `serve --simulate`. The simulator is not part of the gateway, so the
    /// gateway keeps the table as written and the command that starts the
    /// simulator reads it (and refuses it when it is wrong).
    #[serde(default)]
    pub simulator: Option<toml::Table>,
    /// Where quotas, cooldowns, circuits, policy entries and per-user
    /// in-flight counts live: this process, or a Redis server shared by
    /// several instances.
    #[serde(default)]
    pub state: crate::state::StateConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

/// One client API key and who it belongs to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret the client sends (at least 16 characters).
    pub key: String,
    /// The user its requests belong to (their share of the fair queue, and stats).
    pub user: String,
    /// Its rank in the fair queue; higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// Its cap of requests running at once, instead of `admission.max_per_user`.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
}

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
    pub fn budget(&self) -> crate::state::BudgetSpec {
        crate::state::BudgetSpec {
            account: self.name.clone(),
            daily_tokens: self.daily_tokens,
            weekly_tokens: self.weekly_tokens,
            daily_requests: self.daily_requests,
            weekly_requests: self.weekly_requests,
        }
    }
}

/// `[logging]`: what the gateway logs and how. `RUST_LOG` wins over
/// `level` and `--log-format` over `format`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LoggingConfig {
    /// A tracing filter: a level (`info`) or directives
    /// (`warn,switchyard_core=debug`).
    pub level: String,
    /// `text`, or `json`: one object a line.
    pub format: LogFormat,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".to_owned(),
            format: LogFormat::Text,
        }
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    /// For people: one line an event.
    #[default]
    Text,
    /// For log pipelines: one JSON object a line.
    Json,
}

/// The admin API.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token `/admin` requires. Without one, `/admin` is off.
    #[serde(default)]
    pub token: Option<String>,
    /// Check the policy files named in the config every this many
    /// milliseconds, and reload one when it changes (0 = never).
    #[serde(default = "default_watch_ms")]
    pub watch_interval_ms: u64,
}

fn default_watch_ms() -> u64 {
    1_000
}

/// Request-level limits.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request body accepted, in bytes.
    pub max_body_bytes: usize,
    /// Most attempts one request may make (0 = one per deployment in its group).
    pub max_attempts: u32,
    /// Time to connect to Bedrock.
    pub connect_timeout_ms: u64,
    /// Time for one attempt to produce its response headers (Converse: the
    /// whole answer; ConverseStream: the first byte).
    pub attempt_timeout_ms: u64,
    /// Longest silence allowed between two events of a stream.
    pub stream_idle_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_body_bytes: 4 * 1024 * 1024,
            max_attempts: 0,
            connect_timeout_ms: 3_000,
            attempt_timeout_ms: 300_000,
            stream_idle_timeout_ms: 60_000,
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

/// `[observability]`: who may read the gateway's stats.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// `/metrics`, `/model_stats`, `/cooldowns`, `/queue_stats`,
    /// `/state_stats` and the status page need a client API key or the
    /// admin token (they name users, deployments and accounts).
    pub require_key: bool,
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

/// A name clients ask for, and the deployments behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    /// What clients put in the model id.
    pub name: String,
    /// Deployment ids, in any order (priority decides the safe order).
    pub deployments: Vec<String>,
    /// The group's policies; each defaults to the built-in one.
    #[serde(default)]
    pub policies: GroupPolicies,
    /// Identical non-streaming requests in flight at once share one
    /// upstream call (a request can also ask with `x-switchyard-coalesce:
    /// true`). A change needs a restart.
    #[serde(default)]
    pub coalesce: bool,
}

impl ModelGroupConfig {
    /// The policy configured for `kind`.
    pub fn policies_of(&self, kind: crate::vocabulary::PolicyKind) -> &PolicyRef {
        use crate::vocabulary::PolicyKind;
        match kind {
            PolicyKind::Selection => &self.policies.selection,
            PolicyKind::Cooldown => &self.policies.cooldown,
            PolicyKind::Fallback => &self.policies.fallback,
        }
    }
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

impl Config {
    /// Reads, parses and validates a config file. Relative policy paths are
    /// resolved against the file's folder.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        Self::load_with(path, None)
    }

    /// [`load`](Self::load), starting from `preset` instead of the one the
    /// file names (if any).
    pub fn load_with(path: &Path, preset: Option<Preset>) -> Result<Self, ConfigError> {
        let text = read(path)?;
        let mut config = Self::parse_with(&text, &path.display().to_string(), preset)?;
        let base = path.parent().unwrap_or(Path::new("."));
        for group in &mut config.model_groups {
            for slot in [
                &mut group.policies.selection,
                &mut group.policies.cooldown,
                &mut group.policies.fallback,
            ] {
                if let Some(p) = &slot.path {
                    if p.is_relative() {
                        slot.path = Some(base.join(p));
                    }
                }
            }
        }
        Ok(config)
    }

    /// Parses and validates config text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Self, ConfigError> {
        Self::parse_with(text, origin, None)
    }

    /// [`parse`](Self::parse), starting from `preset` instead of the one the
    /// text names (if any). The text's keys win over the preset's.
    pub fn parse_with(
        text: &str,
        origin: &str,
        preset: Option<Preset>,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_owned(),
            message,
        };
        let file: toml::Table = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let config: Config = match preset.map_or_else(|| named_preset(&file), |p| Ok(Some(p))) {
            Err(unknown) => return Err(parse_error(unknown.to_string())),
            // Straight from the text, so errors keep their line and column.
            Ok(None) => toml::from_str(text).map_err(|e| parse_error(e.to_string()))?,
            Ok(Some(preset)) => {
                let mut layered = preset::layer(preset.values(), &file);
                layered.insert("preset".into(), preset.name().into());
                toml::Value::Table(layered)
                    .try_into()
                    .map_err(|e: toml::de::Error| parse_error(e.to_string()))?
            }
        };
        config.validate()?;
        Ok(config)
    }

    /// Deployments by id.
    pub fn deployments_by_id(&self) -> BTreeMap<&str, &DeploymentConfig> {
        self.deployments
            .iter()
            .map(|d| (d.id.as_str(), d))
            .collect()
    }
}

/// The text of the config file at `path`.
fn read(path: &Path) -> Result<String, ConfigError> {
    std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })
}

/// The preset a config file names with `preset = "..."`, if any.
fn named_preset(file: &toml::Table) -> Result<Option<Preset>, preset::UnknownPreset> {
    match file.get("preset") {
        None => Ok(None),
        Some(toml::Value::String(name)) => name.parse().map(Some),
        Some(other) => Err(preset::UnknownPreset(other.to_string())),
    }
}

#[cfg(test)]
mod tests;
