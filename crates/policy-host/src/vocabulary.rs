//! The words several layers of the gateway speak: admission's refusals,
//! the changes instances share (and where they go), and
//! the kinds of policy. A leaf: it depends on no other module of the
//! gateway but [`crate::outcome`], so admission, state, the policy runtime
//! and the config can all use it without depending on one another.

use serde::{Deserialize, Serialize};

use crate::outcome::OutcomeKind;

/// Why an attempt may not start on a deployment now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "reason")]
pub enum Refusal {
    /// Its requests-per-minute quota is spent; back in `wait_ms`.
    RequestQuota { wait_ms: u64 },
    /// Its tokens-per-minute quota cannot hold this request; back in `wait_ms`.
    TokenQuota { wait_ms: u64 },
    /// As many attempts as its concurrency limit are in flight.
    Concurrency,
    /// Its circuit is open; a probe goes through in `wait_ms`.
    CircuitOpen { wait_ms: u64 },
    /// Its account's daily or weekly budget is spent; it renews in `wait_ms`.
    Budget { wait_ms: u64 },
}

impl Refusal {
    /// When it may be worth asking again, in ms (concurrency: soon).
    pub fn wait_ms(self) -> u64 {
        match self {
            Self::RequestQuota { wait_ms }
            | Self::TokenQuota { wait_ms }
            | Self::CircuitOpen { wait_ms }
            | Self::Budget { wait_ms } => wait_ms,
            Self::Concurrency => 10,
        }
    }
}

/// A change one instance made that the others must see.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change {
    /// A cooldown policy's decision (0: the cooldown ended).
    Cooldown {
        deployment: String,
        remaining_ms: u64,
        cause: OutcomeKind,
        clear_history: bool,
    },
    /// A circuit breaker opened for `remaining_ms`.
    CircuitOpened {
        deployment: String,
        remaining_ms: u64,
    },
    /// A circuit breaker closed after a successful probe.
    CircuitClosed { deployment: String },
    /// A policy stored an entry.
    KvSet {
        slot: SlotId,
        key: String,
        value: Vec<u8>,
        ttl_ms: Option<u64>,
    },
    /// A policy removed an entry.
    KvDeleted { slot: SlotId, key: String },
}

/// Where changes of shared state go: the sibling instances, through the
/// state backend (nowhere, on one machine). Policies' kv writes are
/// broadcast through it.
pub trait ChangeBroadcast: Send + Sync {
    /// Tells the sibling instances about `change`.
    fn publish(&self, change: Change);
}

/// The three questions a policy can answer.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum PolicyKind {
    /// In which order should a new request try the deployments?
    Selection,
    /// How long should a deployment cool down after an attempt?
    Cooldown,
    /// In which order should a failed request try what is left?
    Fallback,
}

impl PolicyKind {
    /// Every kind.
    pub const ALL: [PolicyKind; 3] = [Self::Selection, Self::Cooldown, Self::Fallback];

    /// The WIT world a policy of this kind implements.
    pub fn world(self) -> &'static str {
        match self {
            Self::Selection => "selection",
            Self::Cooldown => "cooldown",
            Self::Fallback => "fallback",
        }
    }

    /// The function the world exports.
    pub fn export(self) -> &'static str {
        match self {
            Self::Selection => "select",
            Self::Cooldown => "on-outcome",
            Self::Fallback => "next",
        }
    }
}

impl std::fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.world())
    }
}

/// A policy slot: one model group's policy of one kind. Written
/// `group/kind` in logs, Redis keys and shared changes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub struct SlotId {
    pub group: String,
    pub kind: PolicyKind,
}

impl SlotId {
    /// The slot of `group`'s `kind` policy.
    pub fn new(group: impl Into<String>, kind: PolicyKind) -> Self {
        Self {
            group: group.into(),
            kind,
        }
    }
}

impl std::fmt::Display for SlotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.group, self.kind)
    }
}

impl From<SlotId> for String {
    fn from(slot: SlotId) -> Self {
        slot.to_string()
    }
}

impl TryFrom<String> for SlotId {
    type Error = String;

    /// `group/kind`; the group may itself hold a `/`.
    fn try_from(text: String) -> Result<Self, Self::Error> {
        let (group, kind) = text
            .rsplit_once('/')
            .ok_or_else(|| format!("`{text}` is not a policy slot (group/kind)"))?;
        let kind = PolicyKind::ALL
            .into_iter()
            .find(|k| k.world() == kind)
            .ok_or_else(|| format!("`{kind}` in `{text}` is not a policy kind"))?;
        Ok(Self::new(group, kind))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_id_is_written_and_read_as_group_slash_kind() {
        let slot = SlotId::new("claude/fast", PolicyKind::Cooldown);
        assert_eq!(slot.to_string(), "claude/fast/cooldown");
        assert_eq!(SlotId::try_from(slot.to_string()), Ok(slot.clone()));
        let json = serde_json::to_string(&slot).unwrap();
        assert_eq!(json, "\"claude/fast/cooldown\"");
        assert!(SlotId::try_from("claude".to_owned()).is_err());
        assert!(SlotId::try_from("claude/nope".to_owned()).is_err());
    }
}
