//! Who may use the gateway: the client API keys, the admin token and
//! whether the stats routes need a key. Read on every request and swapped
//! whole by a reload, so a request sees one consistent set and a changed
//! key, token or `require_key` takes effect without a restart.

use std::sync::Arc;

use arc_swap::ArcSwap;

use super::auth::ApiKeys;
use crate::config::Config;

/// The access rules of one config.
#[derive(Debug, Default)]
pub struct AccessRules {
    /// The client API keys (none: the gateway runs open).
    pub keys: ApiKeys,
    /// The bearer token `/admin` requires; `None` turns `/admin` off.
    pub admin_token: Option<String>,
    /// Whether the stats routes and the status page need a key.
    pub require_key: bool,
}

impl AccessRules {
    /// The rules `config` sets.
    pub fn of(config: &Config) -> Self {
        Self {
            keys: ApiKeys::new(&config.api_keys),
            admin_token: config.admin.token.clone(),
            require_key: config.observability.require_key,
        }
    }

    /// Whether `given` is the admin token, compared in constant time.
    pub fn is_admin_token(&self, given: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|token| !token.is_empty() && super::auth::same_secret(given, token))
    }
}

/// The rules in force now.
#[derive(Debug)]
pub struct Access {
    current: ArcSwap<AccessRules>,
}

impl Access {
    pub fn new(rules: AccessRules) -> Self {
        Self {
            current: ArcSwap::from_pointee(rules),
        }
    }

    /// The rules in force now, for the length of one request.
    pub fn rules(&self) -> arc_swap::Guard<Arc<AccessRules>> {
        self.current.load()
    }

    /// Puts `rules` in force for every request from now on.
    pub fn replace(&self, rules: AccessRules) {
        self.current.store(Arc::new(rules));
    }
}
