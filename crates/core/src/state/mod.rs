//! Routing state that several gateway instances may share: quotas, cooldowns,
//! circuit breakers, policy key-value entries and per-user in-flight counts.
//!
//! Quotas belong to the AWS account, not to one process: three gateways each
//! enforcing 120 RPM on their own let 360 through. A [`StateBackend`] is where
//! that state lives:
//!
//! - [`memory::MemoryState`] (the default) keeps it in this process.
//! - [`redis::RedisState`] shares it through a Redis server. Quota
//!   reservations are atomic Lua scripts (one round trip per attempt); every
//!   other change is written after the fact, pipelined, and broadcast on a
//!   pub/sub channel, so the siblings' local mirrors follow within
//!   milliseconds. Nothing touches the network while a policy runs: policies
//!   read the local mirror.
//!
//! While Redis is unreachable the Redis backend decides on local state with
//! every limit divided by the configured instance count, counts the
//! degradation, and re-syncs when Redis is back. No request fails because
//! Redis is down.

pub use switchyard_policy_host::budget;
pub mod memory;
pub mod quota;
pub mod redis;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::vocabulary::Refusal;
pub use crate::vocabulary::{Change, ChangeBroadcast, SlotId};
pub use budget::{BudgetGrant, BudgetSpec, BudgetUse};

/// The `[state]` table.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StateConfig {
    /// `memory` (this process only) or `redis` (shared by every instance
    /// pointing at the same server and `key_prefix`).
    pub backend: BackendKind,
    /// The Redis server, as a `redis://` URL. Required with `backend = "redis"`.
    pub url: Option<String>,
    /// A file holding `url` instead, for a URL with a password in it (such
    /// as a mounted Kubernetes Secret). Relative to the config's folder.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url_file: Option<std::path::PathBuf>,
    /// How many gateway instances share the state. While Redis is down each
    /// instance enforces `quota / instances` on its own.
    pub instances: u32,
    /// Prefix of every key and channel, so several fleets can share a server.
    pub key_prefix: String,
    /// A Redis call slower than this, in ms, counts as an outage for the
    /// request that made it (which goes on with local state).
    pub timeout_ms: u64,
}

impl Default for StateConfig {
    fn default() -> Self {
        Self {
            backend: BackendKind::Memory,
            url: None,
            url_file: None,
            instances: 1,
            key_prefix: "switchyard".into(),
            timeout_ms: 50,
        }
    }
}

impl StateConfig {
    /// The key that makes this table unusable, and why.
    pub fn problem(&self) -> Option<(&'static str, String)> {
        match self.backend {
            BackendKind::Redis if self.url.is_none() => {
                Some(("state.url", "required with backend = \"redis\"".into()))
            }
            BackendKind::Redis if !self.url.as_deref().is_some_and(is_redis_url) => Some((
                "state.url",
                "must be a redis:// URL, such as redis://127.0.0.1:6379/".into(),
            )),
            _ if self.instances == 0 => Some(("state.instances", "must be at least 1".into())),
            _ if self.timeout_ms == 0 => Some(("state.timeout_ms", "must be at least 1".into())),
            _ => None,
        }
    }
}

fn is_redis_url(url: &str) -> bool {
    url.starts_with("redis://") || url.starts_with("redis+unix://") || url.starts_with("unix://")
}

/// Where shared state lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// In this process.
    Memory,
    /// In a Redis server, shared by every instance.
    Redis,
}

/// What is known of a deployment's quotas now, without a round trip.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct QuotaView {
    pub rpm_limit: Option<u64>,
    pub rpm_available: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub tpm_available: Option<u64>,
    /// The fuller of the two, in thousandths.
    pub used_permille: u32,
}

/// How the backend is doing, for metrics and `/state_stats`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct StateStatus {
    pub backend: String,
    /// This instance's id among its siblings.
    pub instance: String,
    /// Redis is unreachable and local state, scaled down, is deciding.
    pub degraded: bool,
    /// Redis calls that failed or timed out.
    pub errors: u64,
    /// Quota decisions taken locally because Redis was unreachable.
    pub local_decisions: u64,
    /// Times the state was re-synced after an outage (or at the first connect).
    pub resyncs: u64,
    /// Changes received from sibling instances.
    pub changes_received: u64,
}

/// Applies changes from sibling instances to this one's state.
pub trait ChangeSink: Send + Sync {
    /// Another instance made `change`.
    fn apply(&self, change: &Change);
    /// The cooldowns and open circuits this instance knows of now, for a re-sync.
    fn current(&self) -> Vec<Change>;
    /// Other instances' in-flight counts changed: let waiting requests re-check.
    fn running_elsewhere_changed(&self);
    /// The names of its policy key-value stores (`group/kind`).
    fn kv_slots(&self) -> Vec<SlotId>;
}

/// A future the backend answers later.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The quotas of one deployment, as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSpec {
    /// The deployment's id, the same on every instance (its circuit's name).
    pub deployment: String,
    /// The books its quota is kept in, the same on every instance:
    /// deployments of one account, region and model share them, as
    /// Bedrock's quota is theirs together.
    pub pool: String,
    /// Requests per minute.
    pub rpm: Option<u64>,
    /// Tokens per minute.
    pub tpm: Option<u64>,
}

/// Quota an attempt holds, to be settled when it ends. It carries all
/// that settling needs, so the backends keep no table of open grants.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaGrant {
    /// Which books it is in.
    pub(crate) source: GrantSource,
    /// Its id in those books (shared: with the instance's id in front).
    pub(crate) id: u64,
    /// Its copy in this instance's local books (shared grants).
    pub(crate) mirror: Option<u64>,
    /// Whether it took a request from an RPM quota.
    pub(crate) rpm: bool,
    /// Whether it took `tokens` from a TPM quota.
    pub(crate) tpm: bool,
    /// The tokens reserved against the TPM quota (0 without one).
    pub tokens: u64,
}

/// Whose books a grant is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum GrantSource {
    /// This process's.
    Local,
    /// The shared store's.
    Shared,
}

/// Deployments' RPM and TPM books.
pub trait QuotaBooks: Send + Sync {
    /// Takes a request (RPM) and `tokens` (TPM) from `quota`, or says why not
    /// and for how long. At most one round trip to a shared store.
    fn reserve<'a>(
        &'a self,
        quota: &'a QuotaSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<QuotaGrant, Refusal>>;

    /// The attempt holding `grant` is over: it used `request` (whether the
    /// request counts against RPM) and `used_tokens` of the TPM reservation.
    fn settle(
        &self,
        quota: &QuotaSpec,
        grant: QuotaGrant,
        request: bool,
        used_tokens: u64,
        now_ms: u64,
    );

    /// `quota` as last seen, without a round trip.
    fn quota_view(&self, quota: &QuotaSpec, now_ms: u64) -> QuotaView;

    /// Milliseconds until `tokens` could be reserved on `quota`, as last seen.
    fn quota_wait_ms(&self, quota: &QuotaSpec, tokens: u64, now_ms: u64) -> u64;
}

/// Accounts' daily and weekly budgets.
pub trait BudgetBooks: Send + Sync {
    /// Takes a request and `tokens` from the budgets of `budget`'s account,
    /// or says which is spent and until when. At most one round trip.
    fn take_budget<'a>(
        &'a self,
        budget: &'a BudgetSpec,
        tokens: u64,
        now_ms: u64,
    ) -> BoxFuture<'a, Result<BudgetGrant, Refusal>>;

    /// The attempt holding `grant` is over: it counted as a request or not
    /// and used `used_tokens` of the tokens it took.
    fn settle_budget(
        &self,
        budget: &BudgetSpec,
        grant: BudgetGrant,
        request: bool,
        used_tokens: u64,
    );

    /// `budget`'s account as last seen, without a round trip.
    fn budget_use(&self, budget: &BudgetSpec, now_ms: u64) -> BudgetUse;
}

/// Who runs what on the other instances, for the fair queue's per-user caps.
pub trait UserPresence: Send + Sync {
    /// This instance now runs `running` requests of `user`.
    fn user_running(&self, user: &str, running: u32);

    /// Requests of `user` running on the other instances, as last seen.
    fn running_elsewhere(&self, user: &str) -> u32;
}

/// Where routing state lives: the quota and budget books, who runs what
/// on the other instances, and the changes siblings share, each a trait of
/// its own so a caller takes only what it uses. Every method but
/// [`QuotaBooks::reserve`] and [`BudgetBooks::take_budget`] returns at once:
/// writes to a shared store happen in the background.
pub trait StateBackend:
    QuotaBooks + BudgetBooks + UserPresence + ChangeBroadcast + Send + Sync + 'static
{
    /// Where remote changes go; set once the gateway is assembled. The
    /// backend keeps a weak reference: the gateway owns its mirror.
    fn attach(&self, sink: &Arc<dyn ChangeSink>);

    /// How it is doing.
    fn status(&self) -> StateStatus;
}

/// Why the shared state backend could not start.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The `[state]` table cannot work as written.
    #[error("{key}: {problem}")]
    Config { key: &'static str, problem: String },
    /// The Redis URL does not parse.
    #[error("state.url: `{url}` is not a usable Redis URL")]
    Url {
        url: String,
        #[source]
        source: ::redis::RedisError,
    },
    /// The Redis backend's link runs as tasks on the caller's runtime.
    #[error("the Redis backend needs a tokio runtime")]
    NoRuntime(#[source] tokio::runtime::TryCurrentError),
}

impl StateError {
    /// The Redis URL `url` does not parse; the error names it without the
    /// password it may hold (`url_file` is for such URLs).
    pub fn bad_url(url: &str, source: ::redis::RedisError) -> Self {
        let shown = match url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}"),
                None => url.to_owned(),
            },
            None => url.to_owned(),
        };
        StateError::Url { url: shown, source }
    }
}

/// The backend `config` asks for, holding `quotas` (every deployment's,
/// limited or not), whose spent tokens come back `window_ms` later. A Redis
/// backend connects in the background; until it has, it decides locally
/// (degraded).
pub fn backend(
    config: &StateConfig,
    quotas: &[QuotaSpec],
    window_ms: u64,
) -> Result<Arc<dyn StateBackend>, StateError> {
    if let Some((key, problem)) = config.problem() {
        return Err(StateError::Config { key, problem });
    }
    Ok(match config.backend {
        BackendKind::Memory => Arc::new(memory::MemoryState::new(quotas, 1, window_ms)),
        BackendKind::Redis => Arc::new(redis::RedisState::start(config, quotas, window_ms)?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bad_redis_url_is_named_without_its_password() {
        let source = ::redis::Client::open("redis://:secret@[::1").unwrap_err();
        let shown = StateError::bad_url("redis://:secret@[::1", source).to_string();
        assert!(
            !shown.contains("secret") && shown.contains("***@"),
            "{shown}"
        );
    }

    #[test]
    fn a_redis_backend_needs_a_redis_url() {
        let mut c = StateConfig {
            backend: BackendKind::Redis,
            ..StateConfig::default()
        };
        assert_eq!(c.problem().unwrap().0, "state.url");
        c.url = Some("http://localhost".into());
        assert!(c.problem().unwrap().1.contains("redis://"));
        c.url = Some("redis://127.0.0.1:6379/".into());
        assert_eq!(c.problem(), None);
        c.instances = 0;
        assert_eq!(c.problem().unwrap().0, "state.instances");
    }
}
