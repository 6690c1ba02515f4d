//! Who may use the gateway: the client API keys (the config's and the key
//! store's, with their teams), the admin token and whether the stats
//! routes need a key. Read on every request and swapped whole when the
//! config is reloaded or the key store changes, so a request sees one
//! consistent set and a change takes effect without a restart.

use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

use super::auth::ApiKeys;
use crate::config::{ApiKeyConfig, Config, TeamConfig};
use crate::keys::Stored;

/// The access rules in force.
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
    /// Whether `given` is the admin token, compared in constant time.
    pub fn is_admin_token(&self, given: &str) -> bool {
        self.admin_token
            .as_deref()
            .is_some_and(|token| !token.is_empty() && super::auth::same_secret(given, token))
    }
}

/// What of the config the rules are made of.
#[derive(Debug, Clone, Default)]
struct AccessConfig {
    keys: Vec<ApiKeyConfig>,
    teams: Vec<TeamConfig>,
    admin_token: Option<String>,
    require_key: bool,
}

impl AccessConfig {
    fn of(config: &Config) -> Self {
        Self {
            keys: config.api_keys.clone(),
            teams: config.teams.clone(),
            admin_token: config.admin.token.clone(),
            require_key: config.observability.require_key,
        }
    }

    fn rules(&self, stored: &Stored) -> AccessRules {
        AccessRules {
            keys: ApiKeys::build(&self.keys, &self.teams, stored),
            admin_token: self.admin_token.clone(),
            require_key: self.require_key,
        }
    }
}

/// The rules in force now, and what they are made of.
#[derive(Debug)]
pub struct Access {
    current: ArcSwap<AccessRules>,
    inputs: Mutex<(AccessConfig, Arc<Stored>)>,
}

impl Access {
    /// The rules of `config`, before the key store is read.
    pub fn new(config: &Config) -> Self {
        let inputs = (AccessConfig::of(config), Arc::new(Stored::default()));
        Self {
            current: ArcSwap::from_pointee(inputs.0.rules(&inputs.1)),
            inputs: Mutex::new(inputs),
        }
    }

    /// The rules in force now, for the length of one request.
    pub fn rules(&self) -> arc_swap::Guard<Arc<AccessRules>> {
        self.current.load()
    }

    /// The keys and teams of the key store, as last read.
    pub fn stored(&self) -> Arc<Stored> {
        self.inputs.lock().expect("access poisoned").1.clone()
    }

    /// Puts the rules of a reloaded `config` in force.
    pub fn apply_config(&self, config: &Config) {
        let mut inputs = self.inputs.lock().expect("access poisoned");
        inputs.0 = AccessConfig::of(config);
        self.current.store(Arc::new(inputs.0.rules(&inputs.1)));
    }

    /// Puts the key store's keys and teams in force (unless they are what
    /// is in force already).
    pub fn apply_stored(&self, stored: Stored) {
        let mut inputs = self.inputs.lock().expect("access poisoned");
        if *inputs.1 == stored {
            return;
        }
        inputs.1 = Arc::new(stored);
        self.current.store(Arc::new(inputs.0.rules(&inputs.1)));
    }
}
