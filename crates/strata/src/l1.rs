//! L1: the in-process tier, a moka cache bounded in bytes.
//!
//! Entries keep the decoded value (type-erased), so an L1 hit is a hash lookup plus a clone:
//! no deserialization. The weight of an entry is an estimate of the memory it holds: the key,
//! twice the uncompressed serialized size (which stands in for the decoded value's heap size:
//! decoded strings and vectors carry headers and spare capacity) and a fixed overhead. moka applies evictions in batches; to keep the budget strict we run its pending
//! maintenance before an insert that could cross the budget.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;

use crate::flight::Shared;
use crate::tags::Marks;

/// Per-entry bookkeeping overhead counted in the weight (key Arc, moka node, timers).
const ENTRY_OVERHEAD: u64 = 96;

#[derive(Clone)]
pub(crate) enum Slot {
    Present(Shared),
    /// A cached "not found".
    Absent,
}

/// When an entry's value stops being fresh and how long it took to load: what freshness
/// decisions (early refresh, serving stale) need on an L1 hit without asking Redis.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Stamp {
    /// Logical expiry, Unix milliseconds (the entry may live on past it, as a stale copy).
    pub(crate) expires_at_ms: u64,
    /// Load time of the value in microseconds (0 when written by `set`).
    pub(crate) load_us: u32,
}

impl From<crate::codec::Meta> for Stamp {
    fn from(meta: crate::codec::Meta) -> Self {
        Self { expires_at_ms: meta.expires_at_ms, load_us: meta.load_us }
    }
}

/// What L1 keeps next to a value to decide, on a hit, whether it may still serve it.
#[derive(Clone)]
pub(crate) struct Checks {
    /// Logical expiry and load time, for freshness decisions.
    pub(crate) stamp: Stamp,
    /// The generations the value was produced under: an L1 hit is checked against stamps too.
    pub(crate) marks: Arc<Marks>,
}

impl Checks {
    pub(crate) fn new(meta: crate::codec::Meta, marks: Arc<Marks>) -> Self {
        Self { stamp: meta.into(), marks }
    }
}

#[derive(Clone)]
pub(crate) struct Entry {
    pub(crate) slot: Slot,
    /// What a hit is checked against: logical expiry (freshness) and generations (stamps).
    pub(crate) checks: Checks,
    weight: u32,
    ttl: Duration,
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Entry> for PerEntryTtl {
    fn expire_after_create(&self, _key: &Arc<str>, entry: &Entry, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _k: &Arc<str>,
        entry: &Entry,
        _now: Instant,
        _left: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

/// How L1 chooses what to keep when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum L1Policy {
    /// moka's TinyLFU: admits a new entry only if it is used more often than the entry it would
    /// evict. Best hit ratio on skewed, stable workloads; a key read once may not be kept.
    #[default]
    TinyLfu,
    /// Least recently used: every new entry is admitted. Better when recent keys are the hot
    /// ones (sessions, feeds).
    Lru,
}

pub(crate) struct L1 {
    cache: Moka<Arc<str>, Entry>,
    pub(crate) budget: u64,
    max_entry: u64,
    /// Weight inserted since moka last ran its maintenance (its own size lags behind).
    unsettled: AtomicU64,
}

impl L1 {
    pub(crate) fn new(budget_bytes: u64, max_entry_bytes: u64, policy: L1Policy) -> Self {
        let policy = match policy {
            L1Policy::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
            L1Policy::Lru => moka::policy::EvictionPolicy::lru(),
        };
        let cache = Moka::builder()
            .eviction_policy(policy)
            .max_capacity(budget_bytes)
            .weigher(|_k: &Arc<str>, e: &Entry| e.weight)
            .expire_after(PerEntryTtl)
            .build();
        Self { cache, budget: budget_bytes, max_entry: max_entry_bytes, unsettled: AtomicU64::new(0) }
    }

    pub(crate) fn get(&self, key: &str) -> Option<(Slot, Checks)> {
        self.cache.get(key).map(|e| (e.slot, e.checks))
    }

    /// Stores a value for at most `ttl`. `value_len` is its uncompressed serialized size.
    pub(crate) fn insert(&self, key: &Arc<str>, slot: Slot, checks: Checks, value_len: usize, ttl: Duration) {
        let weight = key.len() as u64 + 2 * value_len as u64 + ENTRY_OVERHEAD;
        if ttl.is_zero() {
            // Nothing to keep, and an older copy must not be served instead.
            self.cache.invalidate(key);
            return;
        }
        if weight > self.max_entry {
            // Too big for this tier: drop any older copy so it cannot be served instead.
            self.cache.invalidate(key);
            return;
        }
        let pending = self.unsettled.fetch_add(weight, Ordering::AcqRel) + weight;
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        self.cache.insert(key.clone(), Entry { slot, checks, weight, ttl });
        if self.cache.weighted_size() + pending > self.budget {
            self.cache.run_pending_tasks();
            self.unsettled.store(0, Ordering::Release);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    pub(crate) fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// (entries, weighted bytes) after applying pending maintenance.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        self.unsettled.store(0, Ordering::Release);
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Sum of the weights of the entries actually present (walks the cache; for tests/inspection).
    pub(crate) fn resident_bytes(&self) -> u64 {
        self.cache.iter().map(|(_, e)| u64::from(e.weight)).sum()
    }
}

/// Downcasts a shared value to `T` and clones it out.
pub(crate) fn typed<T: Clone + 'static>(shared: &Shared) -> Option<T> {
    (shared.as_ref() as &dyn Any).downcast_ref::<T>().cloned()
}
