//! The lab's scenario file (TOML): deployments with Bedrock's quotas and
//! latency, users with arrival patterns, and the policy combinations to
//! compare. `examples/scenarios/` has annotated ones.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use switchyard_policy_host::offline::OfflineLoadError;
use switchyard_policy_host::policy::PolicyKind;
use switchyard_policy_host::settings::{AccountConfig, DeploymentConfig, GroupPolicies, PolicyRef};

/// A whole scenario.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// What it shows, for the report's title.
    pub name: String,
    /// Simulated length of the run, in seconds.
    pub duration_s: u64,
    /// Seeds arrival jitter and the policies' randomness: the same seed, the
    /// same run.
    #[serde(default)]
    pub seed: u64,
    /// Width of one bar of the chart and of the per-deployment time series,
    /// in seconds.
    #[serde(default = "default_bucket_s")]
    pub bucket_s: u64,
    /// The size of every request.
    #[serde(default)]
    pub request: RequestShape,
    /// How long Bedrock takes to answer a throttled call, in milliseconds.
    #[serde(default = "default_throttle_latency_ms")]
    pub throttle_latency_ms: u64,
    /// The model group's deployments, as Bedrock serves them.
    pub deployments: Vec<LabDeployment>,
    /// Budgets beyond a minute of the accounts deployments name, as the
    /// gateway's `[[accounts]]` (enforced as the gateway's admission does).
    #[serde(default)]
    pub accounts: Vec<AccountConfig>,
    /// Who sends requests, and when.
    pub users: Vec<LabUser>,
    /// The policy combinations to compare, each run on the same arrivals.
    pub policies: Vec<Contender>,
}

fn default_bucket_s() -> u64 {
    10
}

fn default_throttle_latency_ms() -> u64 {
    50
}

/// Tokens per request: they count against TPM quotas and set how long an
/// answer streams.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestShape {
    pub input_tokens: u32,
    pub output_tokens: u32,
}

impl Default for RequestShape {
    fn default() -> Self {
        Self {
            input_tokens: 500,
            output_tokens: 300,
        }
    }
}

impl RequestShape {
    /// What one request charges against a TPM quota.
    pub fn total_tokens(&self) -> u64 {
        u64::from(self.input_tokens) + u64::from(self.output_tokens)
    }
}

/// A deployment as the simulator serves it: quotas over a rolling minute
/// (429 beyond them) and a latency of `ttft_ms` plus the output at
/// `tokens_per_s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabDeployment {
    pub id: String,
    #[serde(default = "default_model_id")]
    pub model_id: String,
    #[serde(default = "switchyard_policy_host::settings::default_region")]
    pub region: String,
    #[serde(default = "switchyard_policy_host::settings::default_account")]
    pub account: String,
    /// Lower is preferred (1 = primary).
    #[serde(default = "switchyard_policy_host::settings::default_priority")]
    pub priority: u32,
    #[serde(default = "switchyard_policy_host::settings::default_weight")]
    pub weight: u32,
    /// Bedrock's requests-per-minute quota (none: unlimited).
    #[serde(default)]
    pub rpm: Option<u32>,
    /// Bedrock's tokens-per-minute quota (none: unlimited).
    #[serde(default)]
    pub tpm: Option<u32>,
    /// Time to first token, in milliseconds.
    #[serde(default = "default_ttft_ms")]
    pub ttft_ms: u64,
    /// Output speed; 0 means the whole answer at once.
    #[serde(default = "default_tokens_per_s")]
    pub tokens_per_s: u32,
}

fn default_model_id() -> String {
    "anthropic.claude-3-5-sonnet-20240620-v1:0".into()
}

fn default_ttft_ms() -> u64 {
    500
}

fn default_tokens_per_s() -> u32 {
    100
}

impl LabDeployment {
    /// How long a successful call takes, in milliseconds.
    pub fn latency_ms(&self, shape: &RequestShape) -> u64 {
        let streaming = match self.tokens_per_s {
            0 => 0,
            tps => u64::from(shape.output_tokens) * 1000 / u64::from(tps),
        };
        self.ttft_ms + streaming
    }

    /// Requests it can answer per minute, given both quotas (`None`:
    /// unlimited).
    pub fn requests_per_minute(&self, shape: &RequestShape) -> Option<u64> {
        let by_tokens = self
            .tpm
            .map(|tpm| u64::from(tpm) / shape.total_tokens().max(1));
        match (self.rpm.map(u64::from), by_tokens) {
            (Some(r), Some(t)) => Some(r.min(t)),
            (r, t) => r.or(t),
        }
    }

    /// The gateway's view of it, which the policies see.
    pub fn gateway_config(&self) -> DeploymentConfig {
        DeploymentConfig {
            id: self.id.clone(),
            model_id: self.model_id.clone(),
            region: self.region.clone(),
            account: self.account.clone(),
            priority: self.priority,
            weight: self.weight,
            endpoint_url: None,
            credentials: Default::default(),
            assume_role: None,
            rpm: None,
            tpm: None,
        }
    }
}

/// A user and when its requests arrive.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LabUser {
    pub name: String,
    /// Requests at an even pace.
    #[serde(default)]
    pub steady: Option<Steady>,
    /// Requests all at once, now and then.
    #[serde(default)]
    pub bursts: Option<Bursts>,
    /// Requests at a pace that rises and falls like a day.
    #[serde(default)]
    pub diurnal: Option<Diurnal>,
}

/// `per_min` requests a minute, evenly spaced, from `start_s` to `until_s`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Steady {
    pub per_min: f64,
    #[serde(default)]
    pub start_s: f64,
    #[serde(default)]
    pub until_s: Option<f64>,
}

/// `size` requests within `spread_ms` of each other, every `every_s` seconds
/// from `start_s` (once, without `every_s`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Bursts {
    pub size: u32,
    #[serde(default)]
    pub start_s: f64,
    #[serde(default)]
    pub every_s: Option<f64>,
    #[serde(default = "default_spread_ms")]
    pub spread_ms: u64,
}

fn default_spread_ms() -> u64 {
    1_000
}

/// A pace that swings between `low_per_min` and `high_per_min` along a sine
/// of period `period_s`, starting at the low point.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Diurnal {
    pub low_per_min: f64,
    pub high_per_min: f64,
    pub period_s: f64,
}

/// One policy combination to run.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contender {
    /// Its label in the table and the chart.
    pub name: String,
    /// Each defaults to the gateway's built-in default.
    #[serde(default)]
    pub selection: Option<PolicyRef>,
    #[serde(default)]
    pub cooldown: Option<PolicyRef>,
    #[serde(default)]
    pub fallback: Option<PolicyRef>,
}

impl Contender {
    /// Its policies as a model group of the gateway config would have them.
    pub fn group_policies(&self) -> GroupPolicies {
        let defaults = GroupPolicies::default();
        GroupPolicies {
            selection: self.selection.clone().unwrap_or(defaults.selection),
            cooldown: self.cooldown.clone().unwrap_or(defaults.cooldown),
            fallback: self.fallback.clone().unwrap_or(defaults.fallback),
        }
    }
}

/// A finite number above zero (TOML allows `nan` and `inf`).
fn positive(x: f64) -> bool {
    x.is_finite() && x > 0.0
}

/// Why a scenario cannot run.
#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("cannot read scenario {}", .path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The file is not a scenario (TOML syntax, an unknown key, a wrong type).
    #[error("{} is not a valid scenario", .path.display())]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    /// The scenario does not make sense (what TOML's types cannot say).
    #[error("invalid scenario: {0}")]
    Invalid(String),
    /// A contender's policy could not be found or loaded.
    #[error("contender `{contender}`")]
    Policy {
        contender: String,
        #[source]
        source: OfflineLoadError,
    },
}

impl Scenario {
    /// Reads and checks a scenario file; policy paths in it are relative to
    /// its folder.
    pub fn load(path: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_owned(),
            source,
        })?;
        let mut scenario: Scenario =
            toml::from_str(&text).map_err(|source| ScenarioError::Parse {
                path: path.to_owned(),
                source,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        for contender in &mut scenario.policies {
            for kind in PolicyKind::ALL {
                let policy = match kind {
                    PolicyKind::Selection => &mut contender.selection,
                    PolicyKind::Cooldown => &mut contender.cooldown,
                    PolicyKind::Fallback => &mut contender.fallback,
                };
                if let Some(p) = policy
                    .as_mut()
                    .and_then(|p| p.path.as_mut())
                    .filter(|p| p.is_relative())
                {
                    *p = base.join(&*p);
                }
            }
        }
        scenario.validate()?;
        Ok(scenario)
    }

    /// Each `[[accounts]]` entry names an account of a deployment, once,
    /// with budgets above zero.
    fn validate_accounts(&self) -> Result<(), ScenarioError> {
        let used: std::collections::HashSet<&str> = self
            .deployments
            .iter()
            .map(|d| d.account.as_str())
            .collect();
        let mut named = std::collections::HashSet::new();
        for a in &self.accounts {
            let problem = if !named.insert(a.name.as_str()) {
                "is listed twice"
            } else if !used.contains(a.name.as_str()) {
                "is the account of no deployment"
            } else if a.zero_budget().is_some() {
                "has a budget of 0 (leave it out for none)"
            } else {
                continue;
            };
            return Err(ScenarioError::Invalid(format!(
                "account `{}` {problem}",
                a.name
            )));
        }
        Ok(())
    }

    /// The accounts deployments name, in the order of their first deployment.
    pub fn account_names(&self) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for d in &self.deployments {
            if !names.contains(&d.account) {
                names.push(d.account.clone());
            }
        }
        names
    }

    /// Checks what TOML's types cannot.
    pub fn validate(&self) -> Result<(), ScenarioError> {
        let invalid = |m: String| Err(ScenarioError::Invalid(m));
        if self.duration_s == 0 {
            return invalid("duration_s must be above 0".into());
        }
        if self.bucket_s == 0 || self.bucket_s > self.duration_s {
            return invalid("bucket_s must be between 1 and duration_s".into());
        }
        if self.deployments.is_empty() {
            return invalid("no [[deployments]]".into());
        }
        let mut ids = std::collections::HashSet::new();
        for d in &self.deployments {
            if !ids.insert(d.id.as_str()) {
                return invalid(format!("deployment `{}` is listed twice", d.id));
            }
        }
        self.validate_accounts()?;
        if self.users.is_empty() {
            return invalid("no [[users]]".into());
        }
        for u in &self.users {
            if u.steady.is_none() && u.bursts.is_none() && u.diurnal.is_none() {
                return invalid(format!(
                    "user `{}` sends nothing: give it `steady`, `bursts` or `diurnal`",
                    u.name
                ));
            }
            if let Some(s) = &u.steady {
                if !positive(s.per_min) {
                    return invalid(format!("user `{}`: steady.per_min must be above 0", u.name));
                }
            }
            if let Some(b) = &u.bursts {
                if b.every_s.is_some_and(|e| !positive(e)) {
                    return invalid(format!("user `{}`: bursts.every_s must be above 0", u.name));
                }
            }
            if let Some(d) = &u.diurnal {
                if !positive(d.period_s) || d.low_per_min < 0.0 || d.high_per_min < d.low_per_min {
                    return invalid(format!(
                        "user `{}`: diurnal needs period_s > 0 and 0 <= low_per_min <= high_per_min",
                        u.name
                    ));
                }
            }
        }
        if self.policies.is_empty() {
            return invalid("no [[policies]] to compare".into());
        }
        Ok(())
    }

    /// The most requests the deployments' quotas allow over the run (`None`
    /// if one is unlimited).
    pub fn capacity(&self) -> Option<u64> {
        let minutes = self.duration_s as f64 / 60.0;
        self.deployments
            .iter()
            .map(|d| d.requests_per_minute(&self.request))
            .sum::<Option<u64>>()
            .map(|per_min| (per_min as f64 * minutes).round() as u64)
    }
}
