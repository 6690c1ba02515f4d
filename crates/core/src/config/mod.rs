//! The gateway's one TOML file: where it listens, which deployments exist,
//! how they are grouped, which policies route each group, and the limits.
//!
//! Parsing is strict (unknown keys are errors) and validation names the key
//! at fault, so a typo fails at start instead of silently routing wrong.

pub mod changes;
mod jobs;
pub mod preset;
mod secret_files;
pub mod show;
mod validate;

pub use jobs::{JobLimit, JobUsage, JobsConfig};
pub use preset::Preset;
pub use switchyard_policy_host::settings::{
    default_account, default_priority, default_region, default_weight, AccountConfig,
    AssumeRoleConfig, CredentialsConfig, DeploymentConfig, GroupPolicies, PolicyRef,
    PolicyRuntimeConfig,
};

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
    pub jobs: Option<JobsConfig>,
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
    /// `[[teams]]`: teams and their limits.
    #[serde(default)]
    pub teams: Vec<TeamConfig>,
    /// `[prices."<model id>"]`: USD per million tokens, over the built-in
    /// on-demand prices.
    #[serde(default)]
    pub prices: std::collections::BTreeMap<String, PriceConfig>,
    /// `[key_store]`: where stored keys live without Redis.
    #[serde(default)]
    pub key_store: KeyStoreConfig,
}

fn default_listen() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 4000))
}

/// One client API key and who it belongs to.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKeyConfig {
    /// The secret the client sends (at least 16 characters).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub key: String,
    /// A file holding `key` instead (such as a mounted Kubernetes Secret),
    /// read at start and at each reload. Relative to the config's folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// The user its requests belong to (their share of the fair queue, and stats).
    pub user: String,
    /// Its rank in the fair queue; higher goes first.
    #[serde(default)]
    pub priority: i32,
    /// Its cap of requests running at once, instead of `admission.max_per_user`.
    #[serde(default)]
    pub max_concurrent: Option<u32>,
    /// The team it belongs to: its spend is booked there, and the team's
    /// limits (`[[teams]]` or the admin API) apply to it.
    #[serde(default)]
    pub team: Option<String>,
}

/// A `[[teams]]` entry: a team and its limits, beside those the admin API
/// keeps (a stored team of the same name wins).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TeamConfig {
    pub name: String,
    #[serde(default)]
    pub limits: crate::keys::Limits,
}

/// A `[prices."<model id>"]` table: USD per million tokens. Cache prices
/// left out cost nothing (models without prompt caching).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    pub input: f64,
    pub output: f64,
    #[serde(default)]
    pub cache_read: f64,
    #[serde(default)]
    pub cache_write: f64,
}

impl PriceConfig {
    /// Why it is not a price, naming the field.
    pub fn problem(&self) -> Option<String> {
        let prices = [
            ("input", self.input),
            ("output", self.output),
            ("cache_read", self.cache_read),
            ("cache_write", self.cache_write),
        ];
        prices
            .iter()
            .find(|(_, usd)| !usd.is_finite() || !(0.0..=1_000_000.0).contains(usd))
            .map(|(name, _)| {
                format!("`{name}` must be a price in USD per million tokens, from 0 to 1000000")
            })
    }
}

/// `[key_store]`: where keys and teams made through the admin API are kept
/// when state is not shared (with `[state] backend = "redis"` they live in Redis).
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KeyStoreConfig {
    /// The folder of `keys.redb` (default: the jobs' folder,
    /// `$XDG_DATA_HOME/switchyard` or `~/.local/share/switchyard`).
    pub data_dir: Option<std::path::PathBuf>,
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
    /// A file holding `token` instead (such as a mounted Kubernetes
    /// Secret), read at start and at each reload. Relative to the config's
    /// folder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
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

/// `[observability]`: who may read the gateway's stats.
#[derive(Debug, Clone, Default, serde::Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ObservabilityConfig {
    /// `/metrics`, `/model_stats`, `/status_history`, `/team_stats`, `/cooldowns`, `/queue_stats`,
    /// `/state_stats` and the status page need a client API key or the
    /// admin token (they name users, deployments and accounts).
    pub require_key: bool,
    /// `[observability.otlp]`: traces over OpenTelemetry (off when unset
    /// and no `OTEL_EXPORTER_OTLP_*ENDPOINT` is set). Needs a restart.
    pub otlp: crate::telemetry::OtlpConfig,
}

/// A name clients ask for, and the deployments behind it.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ModelGroupConfig {
    /// What clients put in the model id.
    pub name: String,
    /// Other names clients may use for it: the model ids their tools send
    /// unchanged (Claude Code's defaults, inference-profile ids and ARNs).
    #[serde(default)]
    pub aliases: Vec<String>,
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
        let base = path.parent().unwrap_or(Path::new("."));
        Self::parse_in(&text, &path.display().to_string(), preset, base)
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
        Self::parse_in(text, origin, preset, Path::new("."))
    }

    /// Parses config text whose relative paths (policies, secret files)
    /// are relative to `base`, reads its secret files and validates it.
    fn parse_in(
        text: &str,
        origin: &str,
        preset: Option<Preset>,
        base: &Path,
    ) -> Result<Self, ConfigError> {
        let parse_error = |message: String| ConfigError::Parse {
            path: origin.to_owned(),
            message,
        };
        let file: toml::Table = toml::from_str(text).map_err(|e| parse_error(e.to_string()))?;
        let mut config: Config = match preset.map_or_else(|| named_preset(&file), |p| Ok(Some(p))) {
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
        config.resolve_policy_paths(base);
        config.read_secret_files(base)?;
        config.validate()?;
        Ok(config)
    }

    fn resolve_policy_paths(&mut self, base: &Path) {
        for group in &mut self.model_groups {
            for slot in [
                &mut group.policies.selection,
                &mut group.policies.cooldown,
                &mut group.policies.fallback,
            ] {
                if let Some(p) = slot.path.as_mut().filter(|p| p.is_relative()) {
                    *p = base.join(&*p);
                }
            }
        }
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
