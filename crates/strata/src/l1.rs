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

use crate::codec::Meta;
use crate::coherence::{Coherence, Echo, Ticket};
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

/// What L1 keeps next to a value to decide, on a hit, whether it may still serve it.
#[derive(Clone)]
pub(crate) struct Checks {
    /// Logical expiry and load time, for freshness decisions.
    pub(crate) meta: Meta,
    /// The generations the value was produced under: an L1 hit is checked against stamps too.
    pub(crate) marks: Arc<Marks>,
}

impl Checks {
    pub(crate) fn new(meta: Meta, marks: Arc<Marks>) -> Self {
        Self { meta, marks }
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

struct Store {
    cache: Moka<Arc<str>, Entry>,
    budget: u64,
    max_entry: u64,
    /// Weight inserted since moka last ran its maintenance (its own size lags behind).
    unsettled: AtomicU64,
}

impl Store {
    fn new(budget_bytes: u64, max_entry_bytes: u64, policy: L1Policy) -> Self {
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

    fn get(&self, key: &str) -> Option<(Slot, Checks)> {
        self.cache.get(key).map(|e| (e.slot, e.checks))
    }

    /// Stores a value for at most `ttl`. `value_len` is its uncompressed serialized size.
    fn insert(&self, key: &Arc<str>, slot: Slot, checks: Checks, value_len: usize, ttl: Duration) {
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

    fn remove(&self, key: &str) {
        self.cache.invalidate(key);
    }

    fn clear(&self) {
        self.cache.invalidate_all();
    }

    /// (entries, weighted bytes) after applying pending maintenance.
    fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        self.unsettled.store(0, Ordering::Release);
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    /// Sum of the weights of the entries actually present (walks the cache; for tests/inspection).
    fn resident_bytes(&self) -> u64 {
        self.cache.iter().map(|(_, e)| u64::from(e.weight)).sum()
    }
}

/// What goes into L1 for one key: the value, what a hit is checked against, its size and how
/// long it may live.
pub(crate) struct Fill {
    pub(crate) slot: Slot,
    pub(crate) checks: Checks,
    /// The uncompressed serialized size, the basis of the entry's weight.
    pub(crate) value_len: usize,
    /// What is left of the Redis copy (L1 keeps it no longer, nor past `l1_max_ttl`).
    pub(crate) ttl: Duration,
}

/// The L1 tier: the store (none when L1 is off) and the rules that decide what may enter it and
/// stay ([`Coherence`]: tickets, echoes, tracking health). Every L1 read and write goes through
/// here.
pub(crate) struct L1 {
    store: Option<Store>,
    coherence: Coherence,
    max_ttl: Duration,
}

impl L1 {
    /// `None` budget: L1 off (every method is then a no-op and every lookup a miss).
    pub(crate) fn new(budget: Option<(u64, u64, L1Policy)>, max_ttl: Duration, coherence: Coherence) -> Self {
        let store = budget.map(|(bytes, max_entry, policy)| Store::new(bytes, max_entry, policy));
        Self { store, coherence, max_ttl }
    }

    /// Whether L1 is on.
    pub(crate) fn is_on(&self) -> bool {
        self.store.is_some()
    }

    /// The admission rules, for the invalidation supervisor.
    pub(crate) fn coherence(&self) -> &Coherence {
        &self.coherence
    }

    /// The entry of `key`, unchecked: stamps and expiry are the caller's to judge.
    pub(crate) fn get(&self, key: &str) -> Option<(Slot, Checks)> {
        self.store.as_ref()?.get(key)
    }

    /// Taken before reading or writing Redis for `key`: a fill that holds it is admitted only if
    /// the key was not invalidated since.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        self.coherence.ticket(key)
    }

    /// Puts a value read from Redis (or just written, with the ticket of its echo) in L1, unless
    /// the key may have changed since `ticket` was taken (see [`crate::coherence`]).
    pub(crate) fn fill(&self, key: &Arc<str>, fill: Fill, ticket: &Ticket) {
        self.fill_if(key, fill, || self.coherence.admits(ticket));
    }

    /// [`fill`](Self::fill) for a value fresh from the loader that Redis could not take: kept
    /// while Redis is away (so the source is not hammered) unless the key was invalidated.
    pub(crate) fn fill_loaded(&self, key: &Arc<str>, fill: Fill, ticket: &Ticket) {
        self.fill_if(key, fill, || self.coherence.admits_loaded(ticket));
    }

    fn fill_if(&self, key: &Arc<str>, fill: Fill, admits: impl Fn() -> bool) {
        let Some(store) = &self.store else { return };
        if !admits() {
            return;
        }
        store.insert(key, fill.slot, fill.checks, fill.value_len, fill.ttl.min(self.max_ttl));
        // Insert, then re-check: an invalidation processed in between is caught here.
        if !admits() {
            store.remove(key);
        }
    }

    /// Registers for the invalidation a write of `key` is about to cause (see
    /// [`Coherence::expect_echo`]).
    pub(crate) fn expect_echo(&self, key: &str) -> Option<Echo> {
        self.coherence.expect_echo(key)
    }

    /// After a successful write: the ticket to fill L1 with (see [`Coherence::after_write`]).
    pub(crate) async fn after_write(&self, echo: Option<Echo>, before: Ticket, wait: Duration) -> Option<Ticket> {
        self.coherence.after_write(echo, before, wait).await
    }

    /// Drops a registration whose write failed or stored nothing.
    pub(crate) fn forget(&self, echo: Option<Echo>) {
        if let Some(echo) = echo {
            self.coherence.forget(echo);
        }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(store) = &self.store {
            store.remove(key);
        }
    }

    pub(crate) fn clear(&self) {
        if let Some(store) = &self.store {
            store.clear();
        }
    }

    /// An invalidation message named `key`.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.coherence.invalidate(key, self.store.as_ref().map(|s| s as &dyn Evict));
    }

    /// Tracking went down or came back, or L1 must be flushed (see [`Coherence::reset`]).
    pub(crate) fn reset(&self, healthy: bool) {
        self.coherence.reset(healthy, self.store.as_ref().map(|s| s as &dyn Evict));
    }

    /// (entries, weighted bytes), after pending maintenance.
    pub(crate) fn usage(&self) -> (u64, u64) {
        self.store.as_ref().map(Store::usage).unwrap_or_default()
    }

    pub(crate) fn resident_bytes(&self) -> u64 {
        self.store.as_ref().map_or(0, Store::resident_bytes)
    }

    pub(crate) fn budget(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.budget)
    }
}

/// What [`Coherence`] may do to the store: evict one key, or all.
pub(crate) trait Evict {
    fn evict(&self, key: &str);
    fn evict_all(&self);
}

impl Evict for Store {
    fn evict(&self, key: &str) {
        self.remove(key);
    }
    fn evict_all(&self) {
        self.clear();
    }
}

/// Downcasts a shared value to `T` and clones it out.
pub(crate) fn typed<T: Clone + 'static>(shared: &Shared) -> Option<T> {
    (shared.as_ref() as &dyn Any).downcast_ref::<T>().cloned()
}
