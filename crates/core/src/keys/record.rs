//! A stored API key and a team, as kept in the key store and shown by the
//! admin API. A key's secret is never kept: only its SHA-256 digest, and
//! its first characters so people can tell keys apart.

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// What a key or a team may use. Every limit left out is unlimited.
/// Budgets are counted in UTC periods: a day, a week from Monday, a month.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rpm: Option<u64>,
    /// Tokens per minute (every kind: input, output, cache reads and writes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tpm: Option<u64>,
    /// Requests running at once: a key's only (see [`Self::team_problem`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_running: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_tokens: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weekly_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_usd: Option<f64>,
}

impl Limits {
    /// Why these limits cannot be kept, naming the field.
    pub fn problem(&self) -> Option<String> {
        let counts = [
            ("rpm", self.rpm),
            ("tpm", self.tpm),
            ("daily_tokens", self.daily_tokens),
            ("weekly_tokens", self.weekly_tokens),
            ("monthly_tokens", self.monthly_tokens),
        ];
        if let Some((name, _)) = counts.iter().find(|(_, v)| *v == Some(0)) {
            return Some(format!(
                "`{name}` must be at least 1 (leave it out for no limit)"
            ));
        }
        if self.max_running == Some(0) {
            return Some("`max_running` must be at least 1 (leave it out for no limit)".into());
        }
        let dollars = [
            ("daily_usd", self.daily_usd),
            ("weekly_usd", self.weekly_usd),
            ("monthly_usd", self.monthly_usd),
        ];
        dollars
            .iter()
            .find(|(_, v)| v.is_some_and(|usd| !usd.is_finite() || usd <= 0.0))
            .map(|(name, _)| format!("`{name}` must be a positive amount of USD"))
    }

    /// Why these limits cannot be a team's: as [`Self::problem`], and
    /// `max_running`, which caps a key's requests in the fair queue and has
    /// no team-wide counterpart.
    pub fn team_problem(&self) -> Option<String> {
        if self.max_running.is_some() {
            return Some(
                "`max_running` is a key's limit, not a team's: set it on each of the team's keys"
                    .into(),
            );
        }
        self.problem()
    }

    /// Whether any token or USD budget is set.
    pub fn has_budget(&self) -> bool {
        self.daily_tokens
            .or(self.weekly_tokens)
            .or(self.monthly_tokens)
            .is_some()
            || self
                .daily_usd
                .or(self.weekly_usd)
                .or(self.monthly_usd)
                .is_some()
    }
}

/// A team: the keys of one group of people, and what they may use together.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TeamRecord {
    pub name: String,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub created_at_ms: u64,
}

/// A stored API key.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Its id (`key_...`), which the admin API and reports name it by.
    pub id: String,
    /// The SHA-256 of its secret, in hex.
    pub digest: String,
    /// The secret's first characters, to tell keys apart.
    pub prefix: String,
    pub team: String,
    /// The user it stands for, in the fair queue and in reports.
    #[serde(default)]
    pub user: Option<String>,
    /// A name for people.
    #[serde(default)]
    pub name: Option<String>,
    /// The model groups it may call (empty: all).
    #[serde(default)]
    pub model_groups: Vec<String>,
    /// Its rank in the fair queue; higher goes first.
    #[serde(default)]
    pub priority: i32,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub disabled: bool,
    pub created_at_ms: u64,
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

/// Longest name, team or user the key store takes.
pub const MAX_NAME_BYTES: usize = 128;

/// How many characters of a secret a key's `prefix` shows.
const SHOWN_PREFIX: usize = 10;

impl KeyRecord {
    /// Whether it has expired at `now_ms`.
    pub fn expired(&self, now_ms: u64) -> bool {
        self.expires_at_ms.is_some_and(|at| at <= now_ms)
    }

    /// Gives it `secret`: its digest and shown prefix.
    pub fn set_secret(&mut self, secret: &str) {
        self.digest = to_hex(&digest(secret));
        self.prefix = secret.chars().take(SHOWN_PREFIX).collect();
    }

    /// The user the fair queue caps it as: its user, else the key itself.
    pub fn queue_user(&self) -> String {
        self.user
            .clone()
            .unwrap_or_else(|| format!("key:{}", self.id))
    }
}

/// The SHA-256 of a secret.
pub fn digest(secret: &str) -> [u8; 32] {
    Sha256::digest(secret.as_bytes()).into()
}

/// Bytes in lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    bytes.iter().fold(String::new(), |mut hex, b| {
        let _ = write!(hex, "{b:02x}");
        hex
    })
}

/// A new secret: `sk-sy-` and two random v4 UUIDs in hex (244 random
/// bits from the operating system's generator).
pub fn new_secret() -> String {
    format!(
        "sk-sy-{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

/// A new key id: `key_` and 24 hex digits of a random v4 UUID.
pub fn new_key_id() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("key_{}", &random[..24])
}

/// Why `name` cannot name a team, a user or a key (`what` says which).
pub fn name_problem(what: &str, name: &str) -> Option<String> {
    if name.is_empty() || name.len() > MAX_NAME_BYTES {
        return Some(format!("`{what}` must be 1 to {MAX_NAME_BYTES} bytes"));
    }
    // Names go into Redis keys, report rows and metric labels.
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.@".contains(&b))
    {
        return Some(format!(
            "`{what}` may hold letters, digits, `-`, `_`, `.` and `@` only"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_secret_is_kept_as_its_digest_and_prefix() {
        let secret = new_secret();
        assert!(secret.starts_with("sk-sy-") && secret.len() == 6 + 64);
        let mut key = KeyRecord {
            id: new_key_id(),
            digest: String::new(),
            prefix: String::new(),
            team: "search".into(),
            user: None,
            name: None,
            model_groups: vec![],
            priority: 0,
            limits: Limits::default(),
            disabled: false,
            created_at_ms: 0,
            expires_at_ms: Some(10),
        };
        key.set_secret(&secret);
        assert_eq!(key.digest, to_hex(&digest(&secret)));
        assert!(!serde_json::to_string(&key).unwrap().contains(&secret));
        assert_eq!(key.prefix, &secret[..10]);
        assert!(!key.expired(9) && key.expired(10));
        assert_eq!(key.queue_user(), format!("key:{}", key.id));
    }

    #[test]
    fn limits_and_names_are_checked() {
        assert_eq!(Limits::default().problem(), None);
        let zero = Limits {
            rpm: Some(0),
            ..Limits::default()
        };
        assert!(zero.problem().unwrap().contains("`rpm`"));
        let negative = Limits {
            daily_usd: Some(-1.0),
            ..Limits::default()
        };
        assert!(negative.problem().unwrap().contains("`daily_usd`"));
        assert!(!Limits::default().has_budget());
        assert!(Limits {
            monthly_usd: Some(5.0),
            ..Limits::default()
        }
        .has_budget());
        assert_eq!(name_problem("team", "search-2"), None);
        assert!(name_problem("team", "a b").is_some());
        assert!(name_problem("team", "").is_some());
    }
}
