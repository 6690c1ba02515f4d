//! The policy's private key-value state, kept by the host.
//!
//! Each call runs in a fresh instance, so memory does not survive between
//! calls; these entries do. They are private to the policy's slot in the
//! gateway config and shared by all the calls it makes, possibly concurrent
//! ones, so a read-modify-write is not atomic: store what tolerates a lost
//! update (counters, recent timestamps), not what must be exact.

use alloc::vec::Vec;

use crate::bindings::switchyard::policy::host as imports;

/// Reads the entry under `key`, or `None` when there is none (never written,
/// deleted, or expired).
pub fn get(key: &str) -> Option<Vec<u8>> {
    imports::kv_get(key)
}

/// Writes `value` under `key`. With `ttl_ms`, the entry disappears that many
/// milliseconds from now; without, it lives until deleted or overwritten.
pub fn set(key: &str, value: &[u8], ttl_ms: Option<u64>) {
    imports::kv_set(key, value, ttl_ms)
}

/// Deletes the entry under `key`, if any.
pub fn delete(key: &str) {
    imports::kv_delete(key)
}
