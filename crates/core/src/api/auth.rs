//! Client API keys: who a request belongs to.
//!
//! With `[[api_keys]]` in the config, every client route needs one, sent as
//! `authorization: Bearer <key>` (what OpenAI clients and AWS SDKs with a
//! Bedrock API key send) or `x-api-key: <key>`; the key names the user, its
//! priority in the fair queue and its own cap. Without keys the gateway runs
//! open, and the user comes from `x-switchyard-user` (or OpenAI's `user`).
//!
//! Keys are held as SHA-256 digests, so a lookup does not compare the
//! presented key with stored ones byte by byte.

use std::collections::HashMap;
use std::sync::Arc;

use axum::http::HeaderMap;

use crate::config::{ApiKeyConfig, TeamConfig};
use crate::keys::record::{digest, to_hex};
use crate::keys::{Limits, Stored, Tenant};
use crate::service::{Caller, ErrorCode, GatewayError};

/// The keys the gateway knows: the config's and the key store's.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], KeyEntry>,
    /// Each key's digest by its id, for work a key left to run later (jobs).
    by_id: HashMap<String, [u8; 32]>,
}

/// What a key grants, and whether it still may.
#[derive(Debug)]
struct KeyEntry {
    caller: Caller,
    disabled: bool,
    expires_at_ms: Option<u64>,
}

impl ApiKeys {
    /// The keys of the config (validated there: unique, long enough).
    pub fn new(keys: &[ApiKeyConfig]) -> Self {
        Self::build(keys, &[], &Stored::default())
    }

    /// The config's keys and the stored ones, with the teams of both
    /// (a stored team wins over a config team of the same name).
    pub fn build(keys: &[ApiKeyConfig], teams: &[TeamConfig], stored: &Stored) -> Self {
        let mut team_limits: HashMap<&str, &Limits> =
            teams.iter().map(|t| (t.name.as_str(), &t.limits)).collect();
        team_limits.extend(stored.teams.iter().map(|t| (t.name.as_str(), &t.limits)));
        let limits_of = |team: &str| {
            team_limits
                .get(team)
                .map_or_else(Limits::default, |l| (*l).clone())
        };
        let mut by_digest = HashMap::new();
        let mut by_id = HashMap::new();
        for k in keys {
            let team = k.team.clone().unwrap_or_default();
            let key_digest = digest(&k.key);
            let key_id = config_key_id(&k.user, &key_digest);
            let tenant = Tenant {
                key_id: key_id.clone(),
                team_limits: limits_of(&team),
                team,
                user: Some(k.user.clone()),
                model_groups: Vec::new(),
                key_limits: Limits {
                    max_running: k.max_concurrent,
                    ..Limits::default()
                },
            };
            let caller = Caller::keyed(k.user.clone(), k.priority, k.max_concurrent)
                .with_tenant(Arc::new(tenant));
            by_id.insert(key_id, key_digest);
            by_digest.insert(
                key_digest,
                KeyEntry {
                    caller,
                    disabled: false,
                    expires_at_ms: None,
                },
            );
        }
        for k in &stored.keys {
            let Some(key_digest) = parse_digest(&k.digest) else {
                tracing::warn!(key = %k.id, "a stored key's digest does not parse; it is ignored");
                continue;
            };
            let tenant = Tenant {
                key_id: k.id.clone(),
                team: k.team.clone(),
                user: k.user.clone(),
                model_groups: k.model_groups.clone(),
                key_limits: k.limits.clone(),
                team_limits: limits_of(&k.team),
            };
            let caller = Caller::keyed(k.queue_user(), k.priority, k.limits.max_running)
                .with_tenant(Arc::new(tenant));
            by_id.insert(k.id.clone(), key_digest);
            by_digest.insert(
                key_digest,
                KeyEntry {
                    caller,
                    disabled: k.disabled,
                    expires_at_ms: k.expires_at_ms,
                },
            );
        }
        Self { by_digest, by_id }
    }

    /// Whether keys are required.
    pub fn enabled(&self) -> bool {
        !self.by_digest.is_empty()
    }

    /// Whether `key` is a client key.
    pub fn is_client_key(&self, key: &str) -> bool {
        self.by_digest.contains_key(&digest(key))
    }

    /// The caller of a request: `None` when the gateway runs open, the key's
    /// caller otherwise, or 401 without a key, with an unknown one, or
    /// with one disabled or expired.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Option<Caller>, GatewayError> {
        if !self.enabled() {
            return Ok(None);
        }
        let Some(key) = presented_key(headers) else {
            return Err(GatewayError::refused(
                ErrorCode::MissingApiKey,
                "this gateway needs an API key: send `authorization: Bearer <key>` or `x-api-key: <key>`",
            ));
        };
        let Some(entry) = self.by_digest.get(&digest(key)) else {
            return Err(GatewayError::refused(
                ErrorCode::InvalidApiKey,
                "the API key is not known",
            ));
        };
        entry.usable("the API key").map(Some)
    }

    /// The caller of key `key_id` now, for work it submitted earlier (a
    /// job): 401 when the key has since been disabled or has expired, so
    /// revoking a key also stops what it left queued; 503 (try later) when
    /// this instance does not know the key, as when its key store has not
    /// been read yet after a start, or another instance made the key a
    /// moment ago. A deleted key's work ends after its runs are spent.
    pub fn caller_of_key(&self, key_id: &str) -> Result<Caller, GatewayError> {
        let entry = self.by_id.get(key_id).and_then(|d| self.by_digest.get(d));
        let Some(entry) = entry else {
            return Err(GatewayError::refused(
                ErrorCode::KeyStoreUnavailable,
                format!("the API key `{key_id}` that submitted this is not known here (deleted, or not yet read from the key store)"),
            ));
        };
        entry.usable(&format!("the API key `{key_id}` that submitted this"))
    }
}

impl KeyEntry {
    /// Its caller, unless the key is disabled or has expired (`what` names
    /// the key in the refusal).
    fn usable(&self, what: &str) -> Result<Caller, GatewayError> {
        if self.disabled {
            return Err(GatewayError::refused(
                ErrorCode::InvalidApiKey,
                format!("{what} is disabled"),
            ));
        }
        let now_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        if self.expires_at_ms.is_some_and(|at| at <= now_ms) {
            return Err(GatewayError::refused(
                ErrorCode::InvalidApiKey,
                format!("{what} has expired"),
            ));
        }
        Ok(self.caller.clone())
    }
}

/// A config key's id: `config:<user>:<8 hex digits of its digest>`, so two
/// keys of one user (a rotation in progress) stay apart in the usage report
/// and in the jobs they submit. The digits tell nothing of the secret.
fn config_key_id(user: &str, key_digest: &[u8; 32]) -> String {
    format!("config:{user}:{}", to_hex(&key_digest[..4]))
}

fn parse_digest(hex: &str) -> Option<[u8; 32]> {
    let mut out = [0u8; 32];
    if hex.len() != 64 {
        return None;
    }
    for (i, byte) in out.iter_mut().enumerate() {
        *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

/// Whether `given` is `expected`, in a time that does not tell where they differ.
pub fn same_secret(given: &str, expected: &str) -> bool {
    given.len() == expected.len()
        && given
            .bytes()
            .zip(expected.bytes())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b))
            == 0
}

/// The key a browser presents for the status page and the stats it reads:
/// the password of HTTP Basic authentication (any user name), which the
/// browser asks for when a page answers 401 with `www-authenticate: Basic`
/// and then sends with the page's own requests. Otherwise as
/// [`presented_key`].
pub fn presented_observer_key(headers: &HeaderMap) -> Option<String> {
    use base64::Engine;
    let basic = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            // The scheme is case-insensitive (RFC 7617).
            let (scheme, rest) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("basic").then_some(rest)
        })
        .and_then(|b64| {
            base64::engine::general_purpose::STANDARD
                .decode(b64.trim())
                .ok()
        })
        .and_then(|pair| String::from_utf8(pair).ok())
        .and_then(|pair| {
            pair.split_once(':')
                .map(|(_, password)| password.to_owned())
        })
        .filter(|k| !k.is_empty());
    basic.or_else(|| presented_key(headers).map(str::to_owned))
}

/// The key a request presents: a bearer token, or `x-api-key`.
pub fn presented_key(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> ApiKeys {
        ApiKeys::new(&[ApiKeyConfig {
            key: "sk-alice-0123456789abcdef".into(),
            key_file: None,
            user: "alice".into(),
            priority: 2,
            max_concurrent: Some(4),
            team: None,
        }])
    }

    fn headers(name: &str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            axum::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
        h
    }

    #[test]
    fn a_known_key_names_its_caller() {
        let caller = keys()
            .authenticate(&headers(
                "authorization",
                "Bearer sk-alice-0123456789abcdef",
            ))
            .unwrap()
            .unwrap();
        assert_eq!(caller.user.as_deref(), Some("alice"));
        assert_eq!(caller.priority, 2);
        let by_header = keys().authenticate(&headers("x-api-key", "sk-alice-0123456789abcdef"));
        assert_eq!(by_header.unwrap().unwrap().max_concurrent, Some(4));
    }

    #[test]
    fn a_missing_or_unknown_key_is_401() {
        let e = keys().authenticate(&HeaderMap::new()).unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (401, ErrorCode::MissingApiKey)
        );
        let e = keys()
            .authenticate(&headers("x-api-key", "sk-nope"))
            .unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (401, ErrorCode::InvalidApiKey)
        );
    }

    #[test]
    fn without_keys_the_gateway_is_open() {
        assert_eq!(
            ApiKeys::default().authenticate(&HeaderMap::new()).unwrap(),
            None
        );
    }

    #[test]
    fn two_config_keys_of_one_user_are_two_keys_to_the_work_they_leave() {
        let key = |secret: &str, priority| ApiKeyConfig {
            key: secret.into(),
            key_file: None,
            user: "alice".into(),
            priority,
            max_concurrent: None,
            team: None,
        };
        let keys = ApiKeys::new(&[
            key("sk-alice-old-0123456789", 1),
            key("sk-alice-new-0123456789", 5),
        ]);
        let id_of = |secret: &str| {
            let caller = keys
                .authenticate(&headers("x-api-key", secret))
                .unwrap()
                .unwrap();
            caller.tenant.unwrap().key_id.clone()
        };
        let (old, new) = (
            id_of("sk-alice-old-0123456789"),
            id_of("sk-alice-new-0123456789"),
        );
        assert_ne!(old, new);
        assert!(old.starts_with("config:alice:"), "{old}");
        assert_eq!(keys.caller_of_key(&old).unwrap().priority, 1);
        assert_eq!(keys.caller_of_key(&new).unwrap().priority, 5);
        let e = keys.caller_of_key("config:bob:00000000").unwrap_err();
        assert_eq!(
            (e.status().as_u16(), e.code()),
            (503, ErrorCode::KeyStoreUnavailable),
            "not known here yet: a job tries again later"
        );
    }
}
