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

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::config::ApiKeyConfig;
use crate::service::{Caller, ErrorCode, GatewayError};

/// The configured keys.
#[derive(Debug, Default)]
pub struct ApiKeys {
    by_digest: HashMap<[u8; 32], Caller>,
}

fn digest(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl ApiKeys {
    /// The keys of the config (validated there: unique, long enough).
    pub fn new(keys: &[ApiKeyConfig]) -> Self {
        Self {
            by_digest: keys
                .iter()
                .map(|k| {
                    (
                        digest(&k.key),
                        Caller::keyed(k.user.clone(), k.priority, k.max_concurrent),
                    )
                })
                .collect(),
        }
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
    /// caller otherwise, or 401 without a key or with an unknown one.
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
        self.by_digest
            .get(&digest(key))
            .cloned()
            .map(Some)
            .ok_or_else(|| {
                GatewayError::refused(ErrorCode::InvalidApiKey, "the API key is not known")
            })
    }
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
            user: "alice".into(),
            priority: 2,
            max_concurrent: Some(4),
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
}
