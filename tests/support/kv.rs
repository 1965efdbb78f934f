//! `MemKv`: the in-memory `fermyon:spin/key-value` store of the test host.
//!
//! One `MemKv` is an `Arc` handle: clones share the same data, so state persists across
//! requests and across `TestApp`s built with the same store, like Spin's `default` store
//! persists across component instances.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use super::spin::kv_bindings::Error as KvError;

/// Spin / Fermyon Cloud key-value limit: maximum key size in bytes.
pub const MAX_KEY_BYTES: usize = 255;
/// Spin / Fermyon Cloud key-value limit: maximum value size in bytes (1 MiB).
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;
/// The message carried by `error::other` for injected failures.
pub const INJECTED_FAILURE: &str = "injected failure";

/// Counters of the operations the *guest* performed (host-side accessors are not counted).
/// Failed operations (limits, injected failures) are counted too.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KvStats {
    pub opens: u64,
    pub gets: u64,
    pub sets: u64,
    pub deletes: u64,
    pub exists: u64,
    pub get_keys: u64,
    /// Operations that returned an error to the guest (any cause).
    pub errors: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Get,
    Set,
    Delete,
}

#[derive(Debug)]
struct FailRule {
    op: Op,
    /// `None`: any key.
    prefix: Option<String>,
    remaining: usize,
}

#[derive(Default)]
struct Inner {
    data: BTreeMap<String, Vec<u8>>,
    rules: Vec<FailRule>,
    stats: KvStats,
    /// Simulated network latency of every guest operation (a remote store, as on Fermyon
    /// Cloud), applied by the host before the operation takes effect.
    latency: std::time::Duration,
    /// Fermyon Cloud's key cap (1,024 keys per store): a `set` of a new key beyond it fails.
    max_keys: Option<usize>,
    /// The most keys the store ever held at once.
    peak_keys: usize,
    /// The largest value ever stored.
    peak_value_bytes: usize,
}

/// In-memory Spin key-value store shared by every instance that uses it. Cheap to clone.
#[derive(Clone, Default)]
pub struct MemKv {
    inner: Arc<Mutex<Inner>>,
}

impl std::fmt::Debug for MemKv {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let inner = self.lock();
        f.debug_struct("MemKv")
            .field("keys", &inner.data.keys().collect::<Vec<_>>())
            .field("stats", &inner.stats)
            .finish()
    }
}

impl MemKv {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking test thread must not poison the store for the other tests' assertions.
        self.inner
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Every later guest get/set/delete/exists/get-keys waits a random time up to this long
    /// before it takes effect, which opens the race windows a remote store has.
    pub fn set_latency(&self, latency: std::time::Duration) {
        self.lock().latency = latency;
    }

    pub fn latency(&self) -> std::time::Duration {
        self.lock().latency
    }

    /// Caps the store at `max` keys, as Fermyon Cloud does (1,024): a guest `set` of a new key
    /// beyond the cap fails; overwriting an existing key still works.
    pub fn set_max_keys(&self, max: usize) {
        self.lock().max_keys = Some(max);
    }

    /// The most keys the store held at once, and the largest value it stored.
    pub fn peaks(&self) -> (usize, usize) {
        let inner = self.lock();
        (inner.peak_keys, inner.peak_value_bytes)
    }

    // ----- failure injection -------------------------------------------------------------

    /// The next `count` guest `set`s whose key starts with `prefix` fail with
    /// `error::other("injected failure")` (nothing is stored).
    pub fn fail_sets_matching(&self, prefix: &str, count: usize) {
        self.add_rule(Op::Set, Some(prefix), count);
    }

    /// The next `n` guest `set`s (any key) fail with `error::other("injected failure")`.
    pub fn fail_next_sets(&self, n: usize) {
        self.add_rule(Op::Set, None, n);
    }

    /// The next `count` guest `get`s whose key starts with `prefix` fail.
    pub fn fail_gets_matching(&self, prefix: &str, count: usize) {
        self.add_rule(Op::Get, Some(prefix), count);
    }

    /// The next `n` guest `get`s (any key) fail.
    pub fn fail_next_gets(&self, n: usize) {
        self.add_rule(Op::Get, None, n);
    }

    /// The next `count` guest `delete`s whose key starts with `prefix` fail.
    pub fn fail_deletes_matching(&self, prefix: &str, count: usize) {
        self.add_rule(Op::Delete, Some(prefix), count);
    }

    /// Drops every pending failure rule.
    pub fn clear_failures(&self) {
        self.lock().rules.clear();
    }

    /// Injected failures not yet consumed (sum over all rules).
    pub fn pending_failures(&self) -> usize {
        self.lock().rules.iter().map(|r| r.remaining).sum()
    }

    fn add_rule(&self, op: Op, prefix: Option<&str>, count: usize) {
        if count == 0 {
            return;
        }
        self.lock().rules.push(FailRule {
            op,
            prefix: prefix.map(str::to_owned),
            remaining: count,
        });
    }

    // ----- host-side accessors (for seeding and assertions; not counted, no limits) ------

    pub fn get(&self, key: &str) -> Option<Vec<u8>> {
        self.lock().data.get(key).cloned()
    }

    pub fn get_string(&self, key: &str) -> Option<String> {
        self.get(key).map(|v| {
            String::from_utf8(v).unwrap_or_else(|e| panic!("kv value of {key:?} is not UTF-8: {e}"))
        })
    }

    /// The value of `key` parsed as JSON; panics (with the raw value) if it is not JSON.
    pub fn get_json(&self, key: &str) -> Option<serde_json::Value> {
        self.get(key).map(|v| {
            serde_json::from_slice(&v).unwrap_or_else(|e| {
                panic!(
                    "kv value of {key:?} is not JSON ({e}): {}",
                    String::from_utf8_lossy(&v)
                )
            })
        })
    }

    pub fn set(&self, key: &str, value: impl Into<Vec<u8>>) {
        self.lock().data.insert(key.to_owned(), value.into());
    }

    pub fn set_json(&self, key: &str, value: &serde_json::Value) {
        self.set(
            key,
            serde_json::to_vec(value).expect("serialising a serde_json::Value"),
        );
    }

    /// Removes `key`; returns whether it existed.
    pub fn delete(&self, key: &str) -> bool {
        self.lock().data.remove(key).is_some()
    }

    pub fn contains(&self, key: &str) -> bool {
        self.lock().data.contains_key(key)
    }

    /// All keys, sorted.
    pub fn keys(&self) -> Vec<String> {
        self.lock().data.keys().cloned().collect()
    }

    /// Keys starting with `prefix`, sorted.
    pub fn keys_with_prefix(&self, prefix: &str) -> Vec<String> {
        self.lock()
            .data
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect()
    }

    pub fn len(&self) -> usize {
        self.lock().data.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Removes every key (stats and failure rules are kept).
    pub fn clear(&self) {
        self.lock().data.clear();
    }

    // ----- counters ----------------------------------------------------------------------

    pub fn stats(&self) -> KvStats {
        self.lock().stats
    }

    /// Number of guest `get` calls so far.
    pub fn gets(&self) -> u64 {
        self.stats().gets
    }

    /// Number of guest `set` calls so far.
    pub fn sets(&self) -> u64 {
        self.stats().sets
    }

    pub fn reset_stats(&self) {
        self.lock().stats = KvStats::default();
    }

    // ----- guest operations (called by the fermyon:spin/key-value host impl) -------------

    pub(crate) fn guest_open(&self, label: &str) -> Result<(), KvError> {
        let mut inner = self.lock();
        inner.stats.opens += 1;
        if label == "default" {
            Ok(())
        } else {
            inner.stats.errors += 1;
            Err(KvError::NoSuchStore)
        }
    }

    pub(crate) fn guest_get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        let mut inner = self.lock();
        inner.stats.gets += 1;
        let result = check_key(key)
            .and_then(|()| inner.take_injected(Op::Get, key))
            .map(|()| inner.data.get(key).cloned());
        inner.count_error(result)
    }

    pub(crate) fn guest_set(&self, key: &str, value: Vec<u8>) -> Result<(), KvError> {
        let mut inner = self.lock();
        inner.stats.sets += 1;
        let full = inner
            .max_keys
            .is_some_and(|max| inner.data.len() >= max && !inner.data.contains_key(key));
        let result = check_key(key)
            .and_then(|()| check_value(&value))
            .and_then(|()| {
                if full {
                    Err(KvError::Other("too many keys in the store".to_owned()))
                } else {
                    Ok(())
                }
            })
            .and_then(|()| inner.take_injected(Op::Set, key))
            .map(|()| {
                inner.peak_value_bytes = inner.peak_value_bytes.max(value.len());
                inner.data.insert(key.to_owned(), value);
                inner.peak_keys = inner.peak_keys.max(inner.data.len());
            });
        inner.count_error(result)
    }

    pub(crate) fn guest_delete(&self, key: &str) -> Result<(), KvError> {
        let mut inner = self.lock();
        inner.stats.deletes += 1;
        let result = check_key(key)
            .and_then(|()| inner.take_injected(Op::Delete, key))
            .map(|()| {
                inner.data.remove(key);
            });
        inner.count_error(result)
    }

    pub(crate) fn guest_exists(&self, key: &str) -> Result<bool, KvError> {
        let mut inner = self.lock();
        inner.stats.exists += 1;
        let result = check_key(key).map(|()| inner.data.contains_key(key));
        inner.count_error(result)
    }

    pub(crate) fn guest_get_keys(&self) -> Result<Vec<String>, KvError> {
        let mut inner = self.lock();
        inner.stats.get_keys += 1;
        Ok(inner.data.keys().cloned().collect())
    }
}

impl Inner {
    fn take_injected(&mut self, op: Op, key: &str) -> Result<(), KvError> {
        let hit = self.rules.iter_mut().find(|r| {
            r.op == op && r.remaining > 0 && r.prefix.as_deref().is_none_or(|p| key.starts_with(p))
        });
        match hit {
            Some(rule) => {
                rule.remaining -= 1;
                self.rules.retain(|r| r.remaining > 0);
                Err(KvError::Other(INJECTED_FAILURE.to_owned()))
            }
            None => Ok(()),
        }
    }

    fn count_error<T>(&mut self, result: Result<T, KvError>) -> Result<T, KvError> {
        if result.is_err() {
            self.stats.errors += 1;
        }
        result
    }
}

fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Other(format!(
            "key too long: {} bytes (maximum {MAX_KEY_BYTES})",
            key.len()
        )));
    }
    Ok(())
}

fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::Other(format!(
            "value too large: {} bytes (maximum {MAX_VALUE_BYTES})",
            value.len()
        )));
    }
    Ok(())
}
