//! Policy-private key-value state, kept by the host so that a policy can
//! remember across calls although each call runs in a fresh instance.
//!
//! Reads are always local. With a shared state backend, every write is also
//! told to the sibling instances (after the call, off its path), which apply
//! it to their own copy.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::SharedClock;
use crate::vocabulary::{Change, ChangeBroadcast, SlotId};

/// Most entries one policy slot may hold; a runaway policy must not eat the gateway's memory.
pub const MAX_ENTRIES: usize = 100_000;
/// Largest key plus value, in bytes.
pub const MAX_ENTRY_BYTES: usize = 64 * 1024;
/// Most bytes (keys plus values) one policy slot may hold.
pub const MAX_SLOT_BYTES: usize = 16 * 1024 * 1024;

#[derive(Debug)]
struct Entry {
    value: Vec<u8>,
    expires_at_ms: Option<u64>,
}

impl Entry {
    fn bytes(&self, key: &str) -> usize {
        key.len() + self.value.len()
    }
}

/// A slot's entries and the bytes they hold.
#[derive(Debug, Default)]
struct Entries {
    map: HashMap<String, Entry>,
    bytes: usize,
}

impl Entries {
    fn remove(&mut self, key: &str) -> bool {
        match self.map.remove_entry(key) {
            Some((key, entry)) => {
                self.bytes -= entry.bytes(&key);
                true
            }
            None => false,
        }
    }

    fn drop_expired(&mut self, now: u64) {
        let bytes = &mut self.bytes;
        self.map.retain(|key, e| {
            let live = e.expires_at_ms.is_none_or(|t| t > now);
            if !live {
                *bytes -= e.bytes(key);
            }
            live
        });
    }
}

/// The entries of one policy slot (a model group's selection, cooldown or fallback).
pub struct KvStore {
    clock: SharedClock,
    entries: Mutex<Entries>,
    /// Where writes are told to sibling instances, and this slot's name there.
    shared: Option<(Arc<dyn ChangeBroadcast>, SlotId)>,
}

impl std::fmt::Debug for KvStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KvStore")
            .field("slot", &self.shared.as_ref().map(|(_, slot)| slot))
            .finish_non_exhaustive()
    }
}

impl KvStore {
    /// An empty store whose TTLs run on `clock`.
    pub fn new(clock: SharedClock) -> Self {
        Self {
            clock,
            entries: Mutex::new(Entries::default()),
            shared: None,
        }
    }

    /// An empty store whose writes are shared, as slot `slot`, through `state`.
    pub fn shared(clock: SharedClock, state: Arc<dyn ChangeBroadcast>, slot: SlotId) -> Self {
        Self {
            shared: Some((state, slot)),
            ..Self::new(clock)
        }
    }

    /// The live value under `key`.
    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock().expect("kv store poisoned");
        match entries.map.get(key) {
            Some(e) if e.expires_at_ms.is_some_and(|t| t <= now) => {
                entries.remove(key);
                None
            }
            Some(e) => Some(e.value.clone()),
            None => None,
        }
    }

    /// Stores `value` under `key`, for `ttl_ms` if given, and tells the
    /// sibling instances. Returns false when the entry is too large or the
    /// store is full.
    pub fn set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        let Some((state, slot)) = &self.shared else {
            return self.apply_set(key, value, ttl_ms);
        };
        let change = Change::KvSet {
            slot: slot.clone(),
            key: key.clone(),
            value: value.clone(),
            ttl_ms,
        };
        let stored = self.apply_set(key, value, ttl_ms);
        if stored {
            state.publish(change);
        }
        stored
    }

    /// Removes `key` and tells the sibling instances (if it was there:
    /// policies delete on every success, and most find nothing).
    pub fn delete(&self, key: &str) {
        if !self.apply_delete(key) {
            return;
        }
        if let Some((state, slot)) = &self.shared {
            state.publish(Change::KvDeleted {
                slot: slot.clone(),
                key: key.to_owned(),
            });
        }
    }

    /// Stores an entry a sibling instance stored (or this one, unshared).
    /// Refused when it is too large, or would take the slot past
    /// [`MAX_ENTRIES`] or [`MAX_SLOT_BYTES`] once expired entries are gone.
    pub fn apply_set(&self, key: String, value: Vec<u8>, ttl_ms: Option<u64>) -> bool {
        let size = key.len() + value.len();
        if size > MAX_ENTRY_BYTES {
            return false;
        }
        let now = self.clock.now_ms();
        let mut entries = self.entries.lock().expect("kv store poisoned");
        let replaced = entries.map.get(&key).map_or(0, |e| e.bytes(&key));
        let fits = |e: &Entries| {
            (e.map.len() < MAX_ENTRIES || e.map.contains_key(&key))
                && e.bytes - replaced + size <= MAX_SLOT_BYTES
        };
        if !fits(&entries) {
            entries.drop_expired(now);
            let replaced_now = entries.map.get(&key).map_or(0, |e| e.bytes(&key));
            if replaced_now != replaced || !fits(&entries) {
                return false;
            }
        }
        let expires_at_ms = ttl_ms.map(|ttl| now.saturating_add(ttl));
        entries.remove(&key);
        entries.bytes += size;
        entries.map.insert(
            key,
            Entry {
                value,
                expires_at_ms,
            },
        );
        true
    }

    /// Removes an entry a sibling instance removed; says whether it was there.
    pub fn apply_delete(&self, key: &str) -> bool {
        self.entries.lock().expect("kv store poisoned").remove(key)
    }

    /// Bytes (keys plus values) held, live or expired-but-not-yet-collected.
    pub fn bytes(&self) -> usize {
        self.entries.lock().expect("kv store poisoned").bytes
    }

    /// Number of entries, live or expired-but-not-yet-collected.
    pub fn len(&self) -> usize {
        self.entries.lock().expect("kv store poisoned").map.len()
    }

    /// Whether it holds no entries.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::ManualClock;

    #[test]
    fn entries_expire_on_the_clock() {
        let clock = ManualClock::new(0);
        let kv = KvStore::new(clock.clone());
        assert!(kv.set("a".into(), vec![1], Some(100)));
        assert!(kv.set("b".into(), vec![2], None));
        clock.advance(99);
        assert_eq!(kv.get("a"), Some(vec![1]));
        clock.advance(1);
        assert_eq!(kv.get("a"), None);
        assert_eq!(kv.get("b"), Some(vec![2]));
        kv.delete("b");
        assert_eq!(kv.get("b"), None);
    }

    #[test]
    fn a_slot_holds_at_most_its_byte_budget() {
        let clock = ManualClock::new(0);
        let kv = KvStore::new(clock.clone());
        let value = vec![0; MAX_ENTRY_BYTES - 16];
        let mut stored = 0;
        for i in 0.. {
            if !kv.set(format!("key-{i:08}"), value.clone(), Some(1_000)) {
                break;
            }
            stored += 1;
        }
        assert!(kv.bytes() <= MAX_SLOT_BYTES);
        assert_eq!(stored, MAX_SLOT_BYTES / (MAX_ENTRY_BYTES - 4));
        // Overwriting an entry reuses its bytes; expired ones make room.
        assert!(kv.set("key-00000000".into(), vec![1; 10], None));
        assert!(kv.set("key-00000000".into(), vec![2; 20], None));
        // Once the others expire, they make room.
        clock.advance(1_000);
        assert!(kv.set("fresh-1".into(), value.clone(), None));
        assert!(kv.set("fresh-2".into(), value.clone(), None));
        assert_eq!(
            kv.bytes(),
            "key-00000000".len() + 20 + 2 * ("fresh-1".len() + value.len())
        );
    }

    #[test]
    fn oversized_entries_are_refused() {
        let kv = KvStore::new(ManualClock::new(0));
        assert!(!kv.set("k".into(), vec![0; MAX_ENTRY_BYTES], None));
        assert!(kv.is_empty());
    }
}
