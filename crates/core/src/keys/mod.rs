//! API keys and teams as data: made, disabled, rotated and limited through
//! the admin API while the gateway serves, kept in a [`store::KeyStore`]
//! (the embedded store by default, Redis when state is shared) that every
//! instance reads within a second of a change. Keys in the config file
//! work beside them.

pub mod record;
pub mod store;

use std::sync::Arc;

pub use record::{KeyRecord, Limits, TeamRecord};
pub use store::{KeyStore, KeyStoreError, Stored};

/// The key a call came with, as limits and spend know it: the key's id and
/// limits, its team's name and limits, and the user it stands for. Looked
/// up once when the call comes in, so one call sees one set of limits.
#[derive(Debug, Clone, PartialEq)]
pub struct Tenant {
    /// The key's id (`key_...`; `config:<user>` for a key of the config file).
    pub key_id: String,
    /// Its team (empty: none).
    pub team: String,
    /// The user it stands for, when it names one.
    pub user: Option<String>,
    /// The model groups it may call (empty: all).
    pub model_groups: Vec<String>,
    pub key_limits: Limits,
    pub team_limits: Limits,
}

impl Tenant {
    /// Whether it may call `group`.
    pub fn may_call(&self, group: &str) -> bool {
        self.model_groups.is_empty() || self.model_groups.iter().any(|g| g == group)
    }

    /// Whether any limit applies to its calls.
    pub fn is_limited(&self) -> bool {
        self.key_limits != Limits::default() || self.team_limits != Limits::default()
    }
}

/// A shared [`Tenant`].
pub type SharedTenant = Arc<Tenant>;
