//! L1: the in-process tier — a store bounded in bytes ([`L1`], on quick_cache behind
//! [`L1Store`]: docs/decisions/0011-l1-store.md) — and its admission rule, which keeps every
//! instance's L1 coherent with Redis ([`Coherence`]).
//!
//! Entries keep the decoded value (type-erased), so an L1 hit is a hash lookup plus a clone:
//! no deserialization. The weight of an entry is an estimate of the memory it holds: the key,
//! twice the uncompressed serialized size (which stands in for the decoded value's heap size:
//! decoded strings and vectors carry headers and spare capacity) and a fixed overhead. Every
//! entry has its own TTL, at most what is left of the Redis copy's.
//!
//! ## Admission
//!
//! Invalidation messages (see [`invalidation`](crate::invalidation)) remove keys from L1, but a
//! removal alone loses a race: a reader that fetched `v1` from Redis before `v2` was written may
//! insert `v1` into L1 *after* the invalidation for `v2` was processed, and then serve it until
//! the L1 TTL. So every L1 fill carries a [`Ticket`] taken before its Redis round trip, and is
//! admitted only if nothing that could concern the key happened since:
//!
//! - no invalidation of that key since (a generation counter per bucket of keys, with a short log
//!   of which keys bumped it, so that writes to other keys of the bucket rarely refuse a fill);
//! - no change of the tracking health (the epoch counter), and tracking is healthy now: while an
//!   invalidation connection is down, or the topology changes, L1 is flushed and nothing enters.
//!
//! The fill inserts first and re-checks afterwards (removing what it inserted on a change):
//! with the invalidation side bumping the counter *before* removing, one of the two always sees
//! the other, so a stale insert cannot survive.
//!
//! An instance's own writes do not come back to it: its tracking connections are opened with
//! `NOLOOP`, and the writes whose value it keeps go over them (see
//! [`invalidation`](crate::invalidation)). A writer instead voids every ticket of the key once
//! Redis has taken its write, and fills L1 with the ticket that leaves it
//! ([`Coherence::after_own_write`]): a reader that read the value the write replaced cannot put
//! it back, and a change by anyone after the tracked read that follows the write (its read-back,
//! or the fill script's own PTTL) still voids the fill.

use std::any::Any;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use crossbeam_utils::sync::{ShardedLock, ShardedLockReadGuard, ShardedLockWriteGuard};

use crate::codec::Meta;
use crate::tags::Marks;

/// A decoded value, type-erased so one L1 (and one single-flight map) serves every value type.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

/// Per-entry bookkeeping overhead counted in the weight (key Arc, the store's node and index).
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

/// What a store keeps for a key, behind one `Arc`: a hit takes one reference, not one per
/// part.
pub(crate) struct Entry {
    pub(crate) slot: Slot,
    /// What a hit is checked against: logical expiry (freshness) and generations (stamps).
    pub(crate) checks: Checks,
    /// The weight counted against the budget (see [`Store::insert`]).
    weight: u32,
    /// From this reading of [`clock::now_ns`] on, the entry is not served: its insertion plus
    /// its TTL (see [`Fill::ttl`]), less the clock's resolution.
    expires: u64,
}

/// The clock of L1 entries' lifetimes: every hit reads it. On Linux the kernel's coarse
/// monotonic clock, which reads in half the time of `Instant::now` (measured: 11 against 23 ns)
/// and moves in ticks of a few ms; elsewhere, or where the kernel refuses it, `Instant` (chosen
/// once). Deadlines are set one tick early ([`deadline`](clock::deadline)): an entry is dropped
/// up to two ticks before its TTL, and not served past it as long as the ticks come on time (a
/// tick that comes late, a VM's CPU descheduled, holds the clock back by as much). A TTL of one
/// tick or less is not kept at all.
pub(crate) mod clock {
    use std::sync::OnceLock;
    use std::time::{Duration, Instant};

    /// The coarse clock's resolution, when it is the clock in use.
    fn coarse() -> Option<u64> {
        static COARSE: OnceLock<Option<u64>> = OnceLock::new();
        *COARSE.get_or_init(|| {
            #[cfg(target_os = "linux")]
            {
                use nix::time::{ClockId, clock_getres, clock_gettime};
                let id = ClockId::CLOCK_MONOTONIC_COARSE;
                if let (Ok(resolution), Ok(_)) = (clock_getres(id), clock_gettime(id)) {
                    return Some(nanos(resolution.tv_sec(), resolution.tv_nsec()));
                }
            }
            None
        })
    }

    fn nanos(sec: i64, nsec: i64) -> u64 {
        u64::try_from(sec).unwrap_or(0).saturating_mul(1_000_000_000).saturating_add(u64::try_from(nsec).unwrap_or(0))
    }

    /// Nanoseconds on the clock.
    pub(crate) fn now_ns() -> u64 {
        #[cfg(target_os = "linux")]
        if coarse().is_some() {
            return match nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE) {
                Ok(t) => nanos(t.tv_sec(), t.tv_nsec()),
                // It worked when chosen. Should it fail now: the end of time, so that every
                // entry reads as expired (a miss) rather than kept past its TTL.
                Err(_) => u64::MAX,
            };
        }
        static BASE: OnceLock<Instant> = OnceLock::new();
        u64::try_from(BASE.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// How far the clock may lag behind real time when its ticks come on time.
    pub(crate) fn resolution() -> Duration {
        Duration::from_nanos(coarse().unwrap_or(0))
    }

    /// The reading from which something that may live `ttl` from now is over.
    pub(crate) fn deadline(ttl: Duration) -> u64 {
        let ttl = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
        now_ns().saturating_add(ttl.saturating_sub(coarse().unwrap_or(0)))
    }

    /// What is left until `deadline`.
    #[cfg(test)]
    pub(crate) fn left(deadline: u64) -> Duration {
        Duration::from_nanos(deadline.saturating_sub(now_ns()))
    }
}

/// How L1 chooses what to keep when it is full.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum L1Policy {
    /// Frequency first: most of the budget holds entries read again since they came in; a new
    /// entry waits in a small probation queue and stays only if it is read before it reaches
    /// that queue's end (quick_cache's CLOCK-PRO-like queues with remembered evicted keys,
    /// 97 % for the proven entries; see docs/decisions/0011-l1-store.md). Best hit ratio on
    /// skewed, stable workloads, and a burst of keys read once does not flush the hot ones; a
    /// key read once may not be kept.
    #[default]
    TinyLfu,
    /// Recency first: three quarters of the budget are a queue of the newest entries, every new
    /// entry is admitted, and entries read while in it move to the protected quarter. Better
    /// when recent keys are the hot ones (sessions, feeds). One lock for the whole store (the
    /// default shards by key): reads under many threads cost a little more.
    Lru,
}

/// The storage under L1, one implementation per crate measured: the rest of L1 sees only this,
/// so the crate is chosen in one place ([`Chosen`]; docs/decisions/0011-l1-store.md). Entries
/// are weighed by [`Entry::weight`]; the sum stays within the budget.
pub(crate) trait L1Store: Send + Sync + Sized {
    /// A store of at most `budget` bytes (of weights) whose entries weigh at most `max_entry`.
    fn with_budget(budget: u64, max_entry: u64, policy: L1Policy) -> Self;
    /// The entry of `key`, unless absent or past its [`Entry::expires`].
    fn get(&self, key: &str) -> Option<Arc<Entry>>;
    /// What `f` makes of the entry of `key` (as [`get`](Self::get) finds it), lent to `f`
    /// instead of cloned where the store can: a hit then takes no reference to the entry, whose
    /// count every core reading the key would otherwise write in turn. `f` runs under the
    /// store's read lock: it must not block nor call the store.
    fn read<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        self.get(key).map(|entry| f(&entry))
    }
    /// Stores `entry`, replacing any older one, evicting to stay within the budget. A store may
    /// refuse an entry that would take too large a share of it (quick_cache: more than its
    /// protected share of a shard); the older copy is then gone too.
    fn insert(&self, key: &Arc<str>, entry: Arc<Entry>);
    fn remove(&self, key: &str);
    fn clear(&self);
    /// (entries, weighted bytes), settled.
    fn usage(&self) -> (u64, u64);
    /// Sum of the weights of the entries present now, settled or not.
    fn resident_bytes(&self) -> u64;
}

/// The store L1 uses.
pub(crate) type Chosen = QuickStore;

/// [`L1Store`] on quick_cache: its single-threaded `unsync::Cache` per shard of keys, each
/// behind a [`ShardedLock`] (a read lock per core, so readers on different cores do not write
/// one lock word) — what quick_cache's own `sync::Cache` is with its `sharded-lock` feature,
/// except that a hit can be read under the lock ([`L1Store::read`]) rather than cloned out of
/// it. Each shard is bounded by its share of the budget at every insert (no maintenance lag).
/// It has no expiry of its own: an entry past its [`Entry::expires`] is not served, and the
/// reader that finds it removes it; one never read again leaves through eviction like any
/// entry not read.
pub(crate) struct QuickStore {
    shards: Box<[ShardedLock<QuickShard>]>,
    /// Chooses a key's shard (seeded apart from the shards' own hashers).
    hasher: foldhash::fast::RandomState,
}

type QuickShard = quick_cache::unsync::Cache<Arc<str>, Arc<Entry>, ByWeight, foldhash::fast::RandomState>;

#[derive(Clone)]
struct ByWeight;

impl quick_cache::Weighter<Arc<str>, Arc<Entry>> for ByWeight {
    fn weight(&self, _key: &Arc<str>, entry: &Arc<Entry>) -> u64 {
        u64::from(entry.weight)
    }
}

impl QuickStore {
    fn shard(&self, key: &str) -> &ShardedLock<QuickShard> {
        // High bits: the shards' maps index by the low ones (of their own hash).
        let hash = self.hasher.hash_one(key);
        &self.shards[(hash >> 32) as usize & (self.shards.len() - 1)]
    }

    fn reading(&self, key: &str) -> ShardedLockReadGuard<'_, QuickShard> {
        // A panic under the lock (none is known) leaves a shard whose entries are whole.
        self.shard(key).read().unwrap_or_else(PoisonError::into_inner)
    }

    fn writing(&self, key: &str) -> ShardedLockWriteGuard<'_, QuickShard> {
        self.shard(key).write().unwrap_or_else(PoisonError::into_inner)
    }

    /// An entry found past its expiry goes, unless a fresh copy replaced it meanwhile.
    fn expired(&self, key: &str) {
        self.writing(key).remove_if(key, |e| e.expires <= clock::now_ns());
    }
}

impl L1Store for QuickStore {
    fn with_budget(budget: u64, max_entry: u64, policy: L1Policy) -> Self {
        let budget = budget.max(1);
        let (shards, hot) = match policy {
            // Each shard is bounded by its share of the budget and refuses an entry heavier than
            // its share for proven entries: shards hold two of the largest entries at least,
            // up to quick_cache's own default of 4 per core.
            L1Policy::TinyLfu => {
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                ((4 * cores).min(budget / max_entry.max(1) / 2).max(1), 0.97)
            }
            // The newest entries are kept across the whole budget, not per shard of keys.
            L1Policy::Lru => (1, RECENCY_HOT_ALLOCATION),
        };
        let shards = 1u64 << shards.ilog2();
        let shard_budget = (budget / shards).max(1);
        let shards = (0..shards)
            .map(|_| {
                let mut options = quick_cache::OptionsBuilder::new();
                options
                    .weight_capacity(shard_budget)
                    // Sizes the map and the memory of evicted keys; any order of magnitude will do.
                    .estimated_items_capacity((shard_budget / 512).clamp(64, 1 << 24) as usize)
                    .hot_allocation(hot);
                let options = options.build().unwrap_or_else(|_| unreachable!("both capacities are set"));
                ShardedLock::new(QuickShard::with_options(options, ByWeight, Default::default(), Default::default()))
            })
            .collect();
        Self { shards, hasher: Default::default() }
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.read(key, Arc::clone)
    }

    fn read<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        let shard = self.reading(key);
        let entry = shard.get(key)?;
        if entry.expires <= clock::now_ns() {
            drop(shard);
            self.expired(key);
            return None;
        }
        Some(f(entry))
    }

    fn insert(&self, key: &Arc<str>, entry: Arc<Entry>) {
        self.writing(key).insert(key.clone(), entry);
    }

    fn remove(&self, key: &str) {
        self.writing(key).remove(key);
    }

    fn clear(&self) {
        for shard in &self.shards {
            shard.write().unwrap_or_else(PoisonError::into_inner).clear();
        }
    }

    fn usage(&self) -> (u64, u64) {
        self.shards.iter().fold((0, 0), |(n, w), shard| {
            let shard = shard.read().unwrap_or_else(PoisonError::into_inner);
            (n + shard.len() as u64, w + shard.weight())
        })
    }

    fn resident_bytes(&self) -> u64 {
        self.usage().1
    }
}

/// The share of the budget for entries read again under [`L1Policy::Lru`]: the rest is the
/// queue of the newest entries.
const RECENCY_HOT_ALLOCATION: f64 = 0.25;

/// [`L1Store`] on moka 0.12's `sync::Cache` (L1's store before docs/decisions/0011-l1-store.md),
/// kept so that the contract tests hold for both and switching back is [`Chosen`] plus moka
/// back in the dependencies. moka applies evictions in batches; to keep the budget strict its
/// pending maintenance runs before an insert that could cross the budget.
#[cfg(test)]
pub(crate) struct MokaStore {
    cache: moka::sync::Cache<Arc<str>, Arc<Entry>>,
    budget: u64,
    /// Weight inserted since moka last ran its maintenance (its own size lags behind).
    unsettled: AtomicU64,
}

#[cfg(test)]
struct UntilExpiry;

#[cfg(test)]
impl moka::Expiry<Arc<str>, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(&self, _key: &Arc<str>, entry: &Arc<Entry>, _now: std::time::Instant) -> Option<Duration> {
        Some(clock::left(entry.expires))
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        entry: &Arc<Entry>,
        _: std::time::Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(clock::left(entry.expires))
    }
}

#[cfg(test)]
impl L1Store for MokaStore {
    fn with_budget(budget: u64, _max_entry: u64, policy: L1Policy) -> Self {
        let policy = match policy {
            L1Policy::TinyLfu => moka::policy::EvictionPolicy::tiny_lfu(),
            L1Policy::Lru => moka::policy::EvictionPolicy::lru(),
        };
        let cache = moka::sync::Cache::builder()
            .eviction_policy(policy)
            .max_capacity(budget)
            .weigher(|_k: &Arc<str>, e: &Arc<Entry>| e.weight)
            .expire_after(UntilExpiry)
            .build();
        Self { cache, budget, unsettled: AtomicU64::new(0) }
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.cache.get(key)
    }

    fn insert(&self, key: &Arc<str>, entry: Arc<Entry>) {
        let weight = u64::from(entry.weight);
        let pending = self.unsettled.fetch_add(weight, Ordering::AcqRel) + weight;
        self.cache.insert(key.clone(), entry);
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

    fn usage(&self) -> (u64, u64) {
        self.cache.run_pending_tasks();
        self.unsettled.store(0, Ordering::Release);
        (self.cache.entry_count(), self.cache.weighted_size())
    }

    fn resident_bytes(&self) -> u64 {
        self.cache.iter().map(|(_, e)| u64::from(e.weight)).sum()
    }
}

/// The longest an entry is kept, whatever it is given: far beyond any TTL, and `Instant`
/// arithmetic cannot overflow with it.
const FOREVER: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// L1's store: the byte budget and the weighing, over the [`L1Store`] in use.
struct Store<S: L1Store = Chosen> {
    inner: S,
    budget: u64,
    max_entry: u64,
}

impl<S: L1Store> Store<S> {
    fn new(budget_bytes: u64, max_entry_bytes: u64, policy: L1Policy) -> Self {
        Self {
            inner: S::with_budget(budget_bytes, max_entry_bytes, policy),
            budget: budget_bytes,
            max_entry: max_entry_bytes,
        }
    }

    fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.inner.get(key)
    }

    fn read<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        self.inner.read(key, f)
    }

    /// Stores a value for at most `ttl`. `value_len` is its uncompressed serialized size.
    fn insert(&self, key: &Arc<str>, slot: Slot, checks: Checks, value_len: usize, ttl: Duration) {
        let weight = key.len() as u64 + 2 * value_len as u64 + ENTRY_OVERHEAD;
        if ttl <= clock::resolution() || weight > self.max_entry {
            // Nothing to keep (no TTL, or none the clock can measure), or too big for this
            // tier: an older copy must not be served instead.
            self.inner.remove(key);
            return;
        }
        let weight = u32::try_from(weight).unwrap_or(u32::MAX);
        let expires = clock::deadline(ttl.min(FOREVER));
        self.inner.insert(key, Arc::new(Entry { slot, checks, weight, expires }));
    }

    fn remove(&self, key: &str) {
        self.inner.remove(key);
    }

    fn clear(&self) {
        self.inner.clear();
    }

    /// (entries, weighted bytes), settled.
    fn usage(&self) -> (u64, u64) {
        self.inner.usage()
    }

    /// Sum of the weights of the entries actually present (for tests/inspection).
    fn resident_bytes(&self) -> u64 {
        self.inner.resident_bytes()
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
/// stay ([`Coherence`]: tickets, tracking health). Every L1 read and write goes through
/// here.
pub(crate) struct L1 {
    store: Option<Store>,
    coherence: Coherence,
    max_ttl: Duration,
    /// The longest a value loaded while Redis was unreachable stays (see [`L1::fill_loaded`]).
    loaded_ttl: Duration,
}

impl L1 {
    /// `None` budget: L1 off (every method is then a no-op and every lookup a miss).
    /// `loaded_ttl`: the longest a value loaded while Redis was unreachable stays.
    pub(crate) fn new(
        budget: Option<(u64, u64, L1Policy)>,
        (max_ttl, loaded_ttl): (Duration, Duration),
        coherence: Coherence,
    ) -> Self {
        let store = budget.map(|(bytes, max_entry, policy)| Store::new(bytes, max_entry, policy));
        Self { store, coherence, max_ttl, loaded_ttl }
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
    pub(crate) fn get(&self, key: &str) -> Option<Arc<Entry>> {
        self.store.as_ref()?.get(key)
    }

    /// What `f` makes of the entry of `key`, unchecked like [`get`](Self::get), lent rather
    /// than cloned (see [`L1Store::read`]): `f` must not block nor call L1.
    pub(crate) fn read<R>(&self, key: &str, f: impl FnOnce(&Arc<Entry>) -> R) -> Option<R> {
        self.store.as_ref()?.read(key, f)
    }

    /// Taken before reading or writing Redis for `key`: a fill that holds it is admitted only if
    /// the key was not invalidated since.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        self.coherence.ticket(key)
    }

    /// Puts a value read from Redis (or just written, with the ticket of [`after_own_write`](Self::after_own_write)) in L1, unless
    /// the key may have changed since `ticket` was taken (see [`crate::l1`]).
    pub(crate) fn fill(&self, key: &Arc<str>, fill: Fill, ticket: &Ticket) {
        self.fill_if(key, fill, || self.coherence.admits(ticket));
    }

    /// [`fill`](Self::fill) for a value fresh from the loader that Redis could not take: it
    /// stands in while Redis is away, so the source is not hammered, unless the key was
    /// invalidated since the load began. For one heartbeat interval at most: when Redis comes
    /// back, this instance may not know at once (its breaker still open, its tracking not yet
    /// reconnected, so no invalidation reaches it), while other instances write again; a copy
    /// kept longer could outlive the staleness bound.
    pub(crate) fn fill_loaded(&self, key: &Arc<str>, mut fill: Fill, ticket: &Ticket) {
        fill.ttl = fill.ttl.min(self.loaded_ttl);
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

    /// After this instance's write of `key` (see [`Coherence::after_own_write`]): its L1 copy
    /// goes, and the ticket to fill L1 with what was written, if `before` still holds.
    pub(crate) fn after_own_write(&self, key: &str, before: &Ticket) -> Option<Ticket> {
        let ticket = self.coherence.after_own_write(key, before);
        self.remove(key);
        ticket
    }

    /// A guard for writes about to be sent: unless [`settled`](Unsettled::settled), dropping it
    /// (the caller gave up while the writes may already be on their way) voids the keys' L1
    /// copies and tickets, as settling them would have (see [`after_own_write`](Self::after_own_write)).
    pub(crate) fn unsettled<'a>(&'a self, keys: Vec<&'a str>) -> Unsettled<'a> {
        Unsettled { l1: self, keys }
    }

    pub(crate) fn remove(&self, key: &str) {
        if let Some(store) = &self.store {
            store.remove(key);
        }
    }

    /// A write or delete of `key` through this instance is about to be sent: its L1 copy goes,
    /// and every ticket taken before is void for it now, without waiting for the write's
    /// invalidation message — a load that began before, and a fill that read before, cannot
    /// be served after the write returns (see `Inner::join_or_load`).
    pub(crate) fn invalidate_local(&self, key: &str) {
        self.coherence.bump(key.as_bytes());
        self.remove(key);
    }

    pub(crate) fn clear(&self) {
        if let Some(store) = &self.store {
            store.clear();
        }
    }

    /// An invalidation message named `key`.
    pub(crate) fn invalidate(&self, key: &[u8]) {
        self.coherence.invalidate(key, self.store.as_ref());
    }

    /// Tracking went down or came back, or L1 must be flushed (see [`Coherence::reset`]).
    pub(crate) fn reset(&self, healthy: bool) {
        self.coherence.reset(healthy, self.store.as_ref());
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

/// Whether `ticket`'s key is absent from a bucket's log between the ticket's generation and
/// `now` (the bucket's, read under the log's lock); unsure (the log no longer reaches back)
/// counts as changed.
fn unchanged_in(log: &[u64; LOG as usize], now: u64, ticket: &Ticket) -> bool {
    now == ticket.generation
        || (now.wrapping_sub(ticket.generation) <= LOG
            && (ticket.generation + 1..=now).all(|g| log[(g % LOG) as usize] != ticket.hash))
}

/// See [`L1::unsettled`].
pub(crate) struct Unsettled<'a> {
    l1: &'a L1,
    keys: Vec<&'a str>,
}

impl Unsettled<'_> {
    /// The writes' outcomes are in hand: whoever has them settles the keys.
    pub(crate) fn settled(mut self) {
        self.keys.clear();
    }
}

impl Drop for Unsettled<'_> {
    fn drop(&mut self) {
        for key in &self.keys {
            self.l1.invalidate_local(key);
        }
    }
}

/// Downcasts a shared value to `T` and clones it out.
pub(crate) fn typed<T: Clone + 'static>(shared: &Shared) -> Option<T> {
    (shared.as_ref() as &dyn Any).downcast_ref::<T>().cloned()
}

/// Generation buckets: more buckets, fewer fills refused because unrelated keys changed.
const BUCKETS: usize = 2048;
/// Invalidations a bucket remembers by key: a fill is refused only when its own key changed,
/// or when more than this many changes hit its bucket during its round trip.
const LOG: u64 = 8;

#[derive(Default)]
struct Bucket {
    generation: AtomicU64,
    /// Hashes of the keys behind the last `LOG` generations (index: generation % LOG). The
    /// generation only moves under this lock, after the log entry is written.
    log: Mutex<[u64; LOG as usize]>,
}

/// What a reader saw before its Redis round trip.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ticket {
    /// Whether L1 may keep the key at all (see [`Coherence::covers`]); false too once voided.
    covered: bool,
    hash: u64,
    bucket: usize,
    generation: u64,
    epoch: u64,
}

impl Ticket {
    /// Makes a fill that holds it refused: the answer it stands for came over a connection that
    /// does not tell this instance of later changes (see `Inner::call_tracked`).
    pub(crate) fn void(&mut self) {
        self.covered = false;
    }

    /// Whether a fill holding it could be admitted at all (a key L1 keeps, not voided).
    pub(crate) fn is_covered(&self) -> bool {
        self.covered
    }
}

pub(crate) struct Coherence {
    buckets: Box<[Bucket]>,
    epoch: AtomicU64,
    healthy: AtomicBool,
    hasher: std::collections::hash_map::RandomState,
    /// Keys named by invalidation messages.
    pub(crate) invalidated_keys: AtomicU64,
    /// Of those, keys Strata keeps for coordination (leases, write-behind entries).
    pub(crate) internal_keys: AtomicU64,
    /// Whole-L1 flushes: tracking lost or regained, topology changed, FLUSHALL seen.
    pub(crate) flushes: AtomicU64,
    /// The invalidation supervisor's task, stopped with the cache.
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Whether invalidation messages are expected at all.
    tracked: bool,
    /// The prefixes of the keys L1 keeps (empty: every key); see [`Invalidation::prefixes`](crate::Invalidation::prefixes).
    prefixes: Vec<String>,
    /// The tracking connections as the data path uses them, and the redirects it meets.
    pub(crate) tracking: crate::invalidation::Tracking,
}

impl Drop for Coherence {
    fn drop(&mut self) {
        if let Some(task) = self.task.get() {
            task.abort();
        }
    }
}

impl Coherence {
    /// `tracked`: invalidation messages will arrive; L1 then starts closed until tracking is up.
    pub(crate) fn new(tracked: bool, prefixes: Vec<String>) -> Self {
        Self {
            tracked,
            prefixes,
            tracking: Default::default(),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            epoch: AtomicU64::new(0),
            healthy: AtomicBool::new(!tracked),
            hasher: Default::default(),
            invalidated_keys: AtomicU64::new(0),
            internal_keys: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            task: std::sync::OnceLock::new(),
        }
    }

    /// Hands over the invalidation supervisor's task, to stop it when the cache goes.
    pub(crate) fn set_task(&self, task: tokio::task::AbortHandle) {
        let _ = self.task.set(task);
    }

    fn locate(&self, key: &[u8]) -> (u64, usize) {
        let hash = self.hasher.hash_one(key);
        (hash, (hash % BUCKETS as u64) as usize)
    }

    /// Taken before reading or writing Redis for `key`.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        let (hash, bucket) = self.locate(key.as_bytes());
        Ticket {
            covered: self.covers(key),
            hash,
            bucket,
            epoch: self.epoch.load(Ordering::SeqCst),
            generation: self.buckets[bucket].generation.load(Ordering::SeqCst),
        }
    }

    /// Whether L1 may hold `key`: always without tracking (L1 is then bounded by its TTL
    /// alone), else when the key is under one of the configured prefixes.
    fn covers(&self, key: &str) -> bool {
        !self.tracked || self.prefixes.is_empty() || self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    /// Whether the ticket's key has not been invalidated since the ticket was taken.
    fn unchanged(&self, ticket: &Ticket) -> bool {
        let bucket = &self.buckets[ticket.bucket];
        if bucket.generation.load(Ordering::SeqCst) == ticket.generation {
            return true;
        }
        let log = bucket.log.lock().unwrap_or_else(|p| p.into_inner());
        unchanged_in(&log, bucket.generation.load(Ordering::SeqCst), ticket)
    }

    /// Whether a fill holding `ticket` may stay in L1 now.
    pub(crate) fn admits(&self, ticket: &Ticket) -> bool {
        ticket.covered
            && self.healthy.load(Ordering::SeqCst)
            && self.epoch.load(Ordering::SeqCst) == ticket.epoch
            && self.unchanged(ticket)
    }

    /// Whether a value that came from the loader while Redis was unreachable may stay in L1:
    /// tracking is probably down too, and that is accepted (nobody can write Redis either, and
    /// recovery flushes L1), but a key invalidated since the load started still is not kept.
    pub(crate) fn admits_loaded(&self, ticket: &Ticket) -> bool {
        ticket.covered && self.unchanged(ticket)
    }

    /// Whether invalidation messages are expected at all (a supervisor runs).
    pub(crate) fn is_tracking(&self) -> bool {
        self.tracked
    }

    /// Whether L1 is serving: tracking (if any) is up on every node.
    pub(crate) fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::SeqCst)
    }

    /// An invalidation message named `key`. A hot key's copy changed is its key changed: a read
    /// of the copy may have filled the key's L1 entry (see [`crate::HotKeys`]), and a writer
    /// updates the copies after the key itself, so the key's own invalidation can come before
    /// the copy a reader is about to read has the new value.
    fn invalidate(&self, key: &[u8], l1: Option<&Store>) {
        if let Some(of) = std::str::from_utf8(key).ok().and_then(crate::hot::hot_copy_of) {
            self.invalidate_one(of.as_bytes(), l1);
        }
        self.invalidate_one(key, l1);
    }

    /// Records that `key` changed: every ticket taken before is void for it.
    fn bump(&self, key: &[u8]) {
        let (hash, bucket) = self.locate(key);
        let slot = &self.buckets[bucket];
        let mut log = slot.log.lock().unwrap_or_else(|p| p.into_inner());
        let next = slot.generation.load(Ordering::SeqCst) + 1;
        log[(next % LOG) as usize] = hash;
        slot.generation.store(next, Ordering::SeqCst);
    }

    /// Whether `key` (of both tickets) changed after `earlier` was taken and before `later`
    /// was: a load that began at `earlier` may then be older than a write this instance had
    /// seen at `later`. Unsure (the bucket's log no longer reaches back, or tracking was reset
    /// in between) counts as changed.
    pub(crate) fn changed_between(&self, earlier: &Ticket, later: &Ticket) -> bool {
        if later.epoch != earlier.epoch {
            return later.epoch > earlier.epoch;
        }
        if later.generation <= earlier.generation {
            return false;
        }
        let bucket = &self.buckets[earlier.bucket];
        let log = bucket.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = bucket.generation.load(Ordering::SeqCst);
        now.wrapping_sub(earlier.generation) > LOG
            || (earlier.generation + 1..=later.generation).any(|g| log[(g % LOG) as usize] == earlier.hash)
    }

    fn invalidate_one(&self, key: &[u8], l1: Option<&Store>) {
        self.bump(key);
        self.invalidated_keys.fetch_add(1, Ordering::Relaxed);
        if let (Some(l1), Ok(key)) = (l1, std::str::from_utf8(key)) {
            l1.remove(key);
        }
    }

    /// After this instance's write of `key` has been taken by Redis: voids every ticket of the
    /// key (a reader that read the replaced value must not fill L1 with it; the write's own
    /// invalidation does not come back, see [`crate::l1`]) and returns the ticket right after
    /// that, for filling L1 with what was written — `None` if the key changed since `before`
    /// was taken, before the write was sent: that change may be newer than the write.
    pub(crate) fn after_own_write(&self, key: &str, before: &Ticket) -> Option<Ticket> {
        let (hash, bucket) = self.locate(key.as_bytes());
        let slot = &self.buckets[bucket];
        let mut log = slot.log.lock().unwrap_or_else(|p| p.into_inner());
        let now = slot.generation.load(Ordering::SeqCst);
        let unchanged = unchanged_in(&log, now, before);
        let next = now + 1;
        log[(next % LOG) as usize] = hash;
        slot.generation.store(next, Ordering::SeqCst);
        (unchanged && before.covered).then_some(Ticket { generation: next, ..*before })
    }

    /// Moves to `healthy` and flushes L1 (on every transition, and when asked to with the same
    /// state, as after FLUSHALL or a topology change). Tickets taken before are void.
    fn reset(&self, healthy: bool, l1: Option<&Store>) {
        if !healthy {
            self.healthy.store(false, Ordering::SeqCst);
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(l1) = l1 {
            l1.clear();
        }
        self.flushes.fetch_add(1, Ordering::Relaxed);
        if healthy {
            self.healthy.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The [`L1Store`] contract, through [`Store`] (which weighs entries and turns away those
    /// that may not stay), for one implementation.
    mod contract {
        use super::*;

        const BUDGET: u64 = 64 * 1024;
        const MAX_ENTRY: u64 = BUDGET / 16;
        const HOUR: Duration = Duration::from_secs(3600);

        fn checks(load_us: u32) -> Checks {
            Checks::new(Meta { expires_at_ms: u64::MAX, load_us }, Marks::unknown())
        }

        fn value(i: u32) -> Slot {
            Slot::Present(Arc::new(i))
        }

        fn read<S: L1Store>(store: &Store<S>, key: &str) -> Option<u32> {
            let entry = store.get(key)?;
            match &entry.slot {
                Slot::Present(v) => {
                    let v = typed::<u32>(v).expect("a u32");
                    assert_eq!(entry.checks.meta.load_us, v, "the checks stored with the value come back with it");
                    Some(v)
                }
                Slot::Absent => None,
            }
        }

        fn key(i: u32) -> Arc<str> {
            format!("app:v1:item:{i}").into()
        }

        /// Bounded in bytes after every insert, by the weights `Store` computes, whatever the
        /// policy; and well used.
        pub(super) fn budget_in_bytes<S: L1Store>() {
            for policy in [L1Policy::TinyLfu, L1Policy::Lru] {
                let store = Store::<S>::new(BUDGET, MAX_ENTRY, policy);
                for i in 0..2_000u32 {
                    // Weights from about 130 B to 3.3 KB: 50 times the budget in all.
                    let len = [10, 200, 1_600][(i % 3) as usize];
                    store.insert(&key(i), value(i), checks(i), len, HOUR);
                    let resident = store.resident_bytes();
                    assert!(resident <= BUDGET, "{policy:?}: after insert {i}, {resident} B > {BUDGET}");
                }
                let (entries, bytes) = store.usage();
                assert!(bytes <= BUDGET && bytes > BUDGET / 2, "{policy:?}: {bytes} B of {BUDGET} used");
                assert!(entries > 10, "{policy:?}: {entries} entries");
                // The weight is what Store computes: key + 2 × value + overhead.
                let one = Store::<S>::new(BUDGET, MAX_ENTRY, policy);
                one.insert(&key(1), value(1), checks(1), 100, HOUR);
                assert_eq!(one.usage(), (1, key(1).len() as u64 + 200 + ENTRY_OVERHEAD));
                // Replacing an entry replaces its weight.
                one.insert(&key(1), value(2), checks(2), 300, HOUR);
                assert_eq!(one.usage(), (1, key(1).len() as u64 + 600 + ENTRY_OVERHEAD));
                assert_eq!(read(&one, &key(1)), Some(2));
            }
        }

        /// Entries heavier than the largest allowed, or with no time to live, are not kept, and
        /// take any older copy with them.
        pub(super) fn too_big_or_no_ttl_drops_the_older_copy<S: L1Store>() {
            let store = Store::<S>::new(BUDGET, MAX_ENTRY, L1Policy::default());
            store.insert(&key(1), value(1), checks(1), 10, HOUR);
            store.insert(&key(1), value(2), checks(2), MAX_ENTRY as usize, HOUR);
            assert_eq!(read(&store, &key(1)), None, "too big: not kept, nor the older copy");
            store.insert(&key(1), value(3), checks(3), 10, HOUR);
            store.insert(&key(1), value(4), checks(4), 10, Duration::ZERO);
            assert_eq!(read(&store, &key(1)), None, "no TTL: not kept, nor the older copy");
            assert_eq!(store.usage(), (0, 0));
        }

        /// Each entry lives its own TTL (a replacement's own, shorter or longer), never longer.
        pub(super) fn per_entry_ttl<S: L1Store>() {
            let store = Store::<S>::new(BUDGET, MAX_ENTRY, L1Policy::default());
            let short = Duration::from_millis(150);
            store.insert(&key(1), value(1), checks(1), 10, short);
            store.insert(&key(2), value(2), checks(2), 10, HOUR);
            store.insert(&key(3), value(3), checks(3), 10, HOUR);
            // Replaced with a shorter TTL: the replacement's holds.
            store.insert(&key(3), value(4), checks(4), 10, short);
            let negative = key(5);
            store.insert(&negative, Slot::Absent, checks(0), 0, short);
            assert_eq!(read(&store, &key(1)), Some(1));
            assert!(
                matches!(store.get(&negative).map(|e| e.slot.clone()), Some(Slot::Absent)),
                "a cached not-found is an entry"
            );
            std::thread::sleep(short + Duration::from_millis(100));
            assert_eq!(read(&store, &key(1)), None, "past its TTL");
            assert_eq!(read(&store, &key(3)), None, "past its replacement's TTL");
            assert!(store.get(&negative).is_none());
            assert_eq!(read(&store, &key(2)), Some(2), "another entry's TTL is its own");
        }

        pub(super) fn remove_and_clear<S: L1Store>() {
            let store = Store::<S>::new(BUDGET, MAX_ENTRY, L1Policy::default());
            for i in 0..10 {
                store.insert(&key(i), value(i), checks(i), 10, HOUR);
            }
            store.remove(&key(3));
            store.remove("app:v1:item:absent");
            assert_eq!(read(&store, &key(3)), None);
            assert_eq!(read(&store, &key(4)), Some(4));
            assert_eq!(store.usage().0, 9);
            store.clear();
            assert_eq!(store.usage(), (0, 0));
            assert_eq!(store.resident_bytes(), 0);
            assert!((0..10).all(|i| read(&store, &key(i)).is_none()));
        }

        /// Under either policy, keys read again and again stay while others stream through.
        pub(super) fn read_keys_stay<S: L1Store>() {
            for policy in [L1Policy::TinyLfu, L1Policy::Lru] {
                let store = Store::<S>::new(BUDGET, MAX_ENTRY, policy);
                let hot: Vec<Arc<str>> = (0..5).map(|i| format!("app:v1:hot:{i}").into()).collect();
                for (i, k) in hot.iter().enumerate() {
                    store.insert(k, value(i as u32), checks(i as u32), 100, HOUR);
                }
                for i in 0..3_000u32 {
                    for (h, k) in hot.iter().enumerate() {
                        if read(&store, k).is_none() {
                            // Cache-aside: a miss fills again.
                            store.insert(k, value(h as u32), checks(h as u32), 100, HOUR);
                        }
                    }
                    store.insert(&key(i), value(i), checks(i), 400, HOUR);
                }
                for k in &hot {
                    assert!(store.get(k).is_some(), "{policy:?}: {k} is read all the time");
                }
            }
        }
    }

    macro_rules! store_contract {
        ($($name:ident: $store:ty),*) => {$(
            mod $name {
                use super::*;
                #[test]
                fn budget_in_bytes() { contract::budget_in_bytes::<$store>() }
                #[test]
                fn too_big_or_no_ttl_drops_the_older_copy() { contract::too_big_or_no_ttl_drops_the_older_copy::<$store>() }
                #[test]
                fn per_entry_ttl() { contract::per_entry_ttl::<$store>() }
                #[test]
                fn remove_and_clear() { contract::remove_and_clear::<$store>() }
                #[test]
                fn read_keys_stay() { contract::read_keys_stay::<$store>() }
            }
        )*};
    }

    store_contract!(quick_store: QuickStore, moka_store: MokaStore);

    /// The coarse clock's deadlines are a tick early: set one resolution before `now + ttl`,
    /// so that a clock lagging real time by up to one tick still ends the entry within its TTL.
    /// Once the clock has moved `ttl` past the insert, the entry is gone; a TTL the clock cannot
    /// measure is not kept. (Judged on the clock itself: a sleep measured in real time would
    /// make the test depend on the kernel's ticks coming on time.)
    #[test]
    fn an_entry_is_never_served_past_its_ttl() {
        let store = Store::<Chosen>::new(1 << 20, 1 << 16, L1Policy::default());
        let checks = || Checks::new(Meta { expires_at_ms: u64::MAX, load_us: 0 }, Marks::unknown());
        let resolution = clock::resolution().as_nanos() as u64;
        for ttl_ms in [1, 3, 5, 9, 12, 20, 30] {
            let ttl = Duration::from_millis(ttl_ms);
            let deadline = clock::deadline(ttl);
            let after = clock::now_ns();
            let early = (ttl.as_nanos() as u64).max(resolution) - resolution;
            assert!(deadline <= after + early, "{ttl_ms} ms: a tick early");
            let key: Arc<str> = Arc::from(format!("app:v1:item:{ttl_ms}"));
            let inserted = clock::now_ns();
            store.insert(&key, Slot::Present(Arc::new(1u32)), checks(), 10, ttl);
            if ttl <= clock::resolution() {
                assert!(store.get(&key).is_none(), "a {ttl_ms} ms TTL is not kept");
                continue;
            }
            while clock::now_ns() < inserted + ttl.as_nanos() as u64 {
                std::thread::sleep(Duration::from_millis(1));
            }
            assert!(store.get(&key).is_none(), "served past a {ttl_ms} ms TTL");
        }
    }

    #[test]
    fn a_change_between_two_tickets_is_seen_from_the_earlier_one_only() {
        let c = Coherence::new(false, Vec::new());
        let key = "app:v1:user:1";
        let early = c.ticket(key);
        let same = c.ticket(key);
        assert!(!c.changed_between(&early, &same));
        c.bump(key.as_bytes());
        let late = c.ticket(key);
        assert!(c.changed_between(&early, &late), "changed after early, before late");
        assert!(!c.changed_between(&late, &early), "nothing is between a later and an earlier ticket");
        // Past the log's reach: unsure, so changed.
        let old = c.ticket(key);
        let (_, b) = c.locate(key.as_bytes());
        for i in 0.. {
            let other = format!("same-bucket-{i}");
            if c.locate(other.as_bytes()).1 == b {
                for _ in 0..LOG + 1 {
                    c.bump(other.as_bytes());
                }
                break;
            }
        }
        assert!(c.changed_between(&old, &c.ticket(key)), "the log no longer reaches back");
    }

    #[test]
    fn an_invalidation_voids_earlier_tickets_of_that_key_only_by_bucket() {
        let c = Coherence::new(false, Vec::new());
        let t = c.ticket("app:v1:user:1");
        assert!(c.admits(&t));
        c.invalidate(b"app:v1:user:1", None);
        assert!(!c.admits(&t), "a fill that read before the invalidation must be refused");
        assert!(c.admits(&c.ticket("app:v1:user:1")), "a read after it is fine");
    }

    #[test]
    fn other_keys_of_the_bucket_refuse_a_fill_only_past_the_log() {
        let c = Coherence::new(false, Vec::new());
        let t = c.ticket("mine");
        // Keys that share the ticket's bucket.
        let others: Vec<String> = (0..100_000)
            .map(|i| format!("other{i}"))
            .filter(|k| c.locate(k.as_bytes()).1 == t.bucket)
            .take(LOG as usize + 1)
            .collect();
        for k in &others[..LOG as usize] {
            c.invalidate(k.as_bytes(), None);
        }
        assert!(c.admits(&t), "{LOG} changes of other keys are told apart");
        c.invalidate(others[LOG as usize].as_bytes(), None);
        assert!(!c.admits(&t), "beyond the log: refused, to be safe");
    }

    #[test]
    fn keys_outside_the_tracked_prefixes_never_enter_l1() {
        let c = Coherence::new(true, vec!["app:".into()]);
        c.reset(true, None);
        assert!(c.admits(&c.ticket("app:v1:user:1")));
        let outside = c.ticket("other:v1:user:1");
        assert!(!c.admits(&outside) && !c.admits_loaded(&outside));
        assert!(c.after_own_write("other:v1:user:1", &outside).is_none());
        let untracked = Coherence::new(false, vec!["app:".into()]);
        assert!(untracked.admits(&untracked.ticket("other:v1:user:1")), "no tracking: TTLs bound L1");
    }

    #[test]
    fn losing_or_regaining_tracking_voids_every_ticket() {
        let c = Coherence::new(false, Vec::new());
        let t = c.ticket("k");
        c.reset(false, None);
        let during = c.ticket("k");
        assert!(!c.admits(&t) && !c.admits(&during), "nothing enters L1 while tracking is down");
        c.reset(true, None);
        assert!(!c.admits(&during), "a read made while tracking was down must not be kept");
        assert!(c.admits(&c.ticket("k")));
        assert_eq!(c.flushes.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_writer_fills_with_the_ticket_right_after_its_own_write() {
        let c = Coherence::new(true, Vec::new());
        c.reset(true, None);
        let reader = c.ticket("k"); // a read that began before the write was taken
        let before = c.ticket("k");
        let ticket = c.after_own_write("k", &before).expect("nothing changed the key meanwhile");
        assert!(c.admits(&ticket), "the writer keeps what it wrote");
        assert!(!c.admits(&reader) && !c.admits(&before), "older reads do not");
        c.invalidate(b"k", None); // someone else writes afterwards
        assert!(!c.admits(&ticket));
        let before = c.ticket("k");
        c.invalidate(b"k", None); // a change between the ticket and the write's reply
        assert!(c.after_own_write("k", &before).is_none(), "that change may be newer than the write");
    }
}
