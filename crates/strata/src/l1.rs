//! L1: the in-process tier — a moka cache bounded in bytes ([`L1`]) — and its admission rule,
//! which keeps every instance's L1 coherent with Redis ([`Coherence`]).
//!
//! Entries keep the decoded value (type-erased), so an L1 hit is a hash lookup plus a clone:
//! no deserialization. The weight of an entry is an estimate of the memory it holds: the key,
//! twice the uncompressed serialized size (which stands in for the decoded value's heap size:
//! decoded strings and vectors carry headers and spare capacity) and a fixed overhead. moka applies evictions in batches; to keep the budget strict we run its pending
//! maintenance before an insert that could cross the budget.
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
//! An instance's own write comes back to it as an invalidation too (its tracking connection is
//! not the one that wrote). To keep what it just wrote in L1, a writer registers an [`Echo`]
//! before the write and fills L1 with the ticket handed over when that echo is processed: the
//! state right after its own invalidation, so a later write by anyone still voids the fill.
//! Redis names a key once per message for all the writes of one event-loop pass, so the echo
//! may also stand for a write made after this one in the same pass (two pipelined writes of
//! one connection, or another instance's): the writer then reads the key once more and fills
//! only if Redis holds exactly what it wrote (`fill_after_write` in `cache/tiers.rs`).

use std::any::Any;
use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use moka::sync::Cache as Moka;
use tokio::sync::oneshot;

use crate::codec::Meta;
use crate::tags::Marks;

/// A decoded value, type-erased so one L1 (and one single-flight map) serves every value type.
pub(crate) type Shared = Arc<dyn Any + Send + Sync>;

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
    pub(crate) fn get(&self, key: &str) -> Option<(Slot, Checks)> {
        self.store.as_ref()?.get(key)
    }

    /// Taken before reading or writing Redis for `key`: a fill that holds it is admitted only if
    /// the key was not invalidated since.
    pub(crate) fn ticket(&self, key: &str) -> Ticket {
        self.coherence.ticket(key)
    }

    /// Puts a value read from Redis (or just written, with the ticket of its echo) in L1, unless
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
    /// Whether the key is tracked at all (see [`Coherence::covers`]).
    covered: bool,
    hash: u64,
    bucket: usize,
    generation: u64,
    epoch: u64,
}

pub(crate) struct Coherence {
    buckets: Box<[Bucket]>,
    epoch: AtomicU64,
    healthy: AtomicBool,
    hasher: std::collections::hash_map::RandomState,
    /// Keys named by invalidation messages.
    pub(crate) invalidated_keys: AtomicU64,
    /// Whole-L1 flushes: tracking lost or regained, topology changed, FLUSHALL seen.
    pub(crate) flushes: AtomicU64,
    /// The invalidation supervisor's task, stopped with the cache.
    task: std::sync::OnceLock<tokio::task::AbortHandle>,
    /// Whether invalidation messages are expected at all.
    tracked: bool,
    /// Tracked key prefixes (empty: every key); L1 holds no key outside them.
    prefixes: Vec<String>,
    /// Writers waiting for the invalidation their own write causes, by key.
    echoes: Mutex<Waiters>,
    waiting: AtomicUsize,
    next_waiter: AtomicU64,
    /// Redirects met on the data path, for the invalidation supervisor.
    pub(crate) redirects: crate::invalidation::Redirects,
}

/// Writers waiting for their echo: key → (registration id, where to hand the ticket).
type Waiters = HashMap<Box<str>, Vec<(u64, oneshot::Sender<Ticket>)>>;

/// A writer's registration for the invalidation its write will cause.
pub(crate) struct Echo {
    key: Box<str>,
    id: u64,
    rx: oneshot::Receiver<Ticket>,
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
            echoes: Mutex::new(HashMap::new()),
            waiting: AtomicUsize::new(0),
            next_waiter: AtomicU64::new(0),
            redirects: Default::default(),
            buckets: (0..BUCKETS).map(|_| Bucket::default()).collect(),
            epoch: AtomicU64::new(0),
            healthy: AtomicBool::new(!tracked),
            hasher: Default::default(),
            invalidated_keys: AtomicU64::new(0),
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

    /// Whether invalidations of `key` reach this instance, so that L1 may hold it: always
    /// without tracking (L1 is then bounded by its TTL alone), else when the key is under one of
    /// the tracked prefixes.
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
        let now = bucket.generation.load(Ordering::SeqCst);
        now.wrapping_sub(ticket.generation) <= LOG
            && (ticket.generation + 1..=now).all(|g| log[(g % LOG) as usize] != ticket.hash)
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
    fn bump(&self, key: &[u8]) -> (u64, usize, u64) {
        let (hash, bucket) = self.locate(key);
        let slot = &self.buckets[bucket];
        let mut log = slot.log.lock().unwrap_or_else(|p| p.into_inner());
        let next = slot.generation.load(Ordering::SeqCst) + 1;
        log[(next % LOG) as usize] = hash;
        slot.generation.store(next, Ordering::SeqCst);
        (hash, bucket, next)
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
        let (hash, bucket, generation) = self.bump(key);
        self.invalidated_keys.fetch_add(1, Ordering::Relaxed);
        let Ok(key) = std::str::from_utf8(key) else { return };
        if let Some(l1) = l1 {
            l1.remove(key);
        }
        if self.waiting.load(Ordering::SeqCst) > 0 {
            let waiters = self.lock_echoes().remove(key).unwrap_or_default();
            self.waiting.fetch_sub(waiters.len(), Ordering::SeqCst);
            // The state right after this invalidation: a later one of the key voids it.
            let ticket = Ticket {
                covered: self.covers(key),
                hash,
                bucket,
                generation,
                epoch: self.epoch.load(Ordering::SeqCst),
            };
            for (_, tx) in waiters {
                let _ = tx.send(ticket);
            }
        }
    }

    /// Registers for the invalidation a write of `key` is about to cause. `None` when no
    /// tracking runs, or not for this key: the writer's own pre-write ticket is then the one
    /// (which does not admit a key outside the tracked prefixes).
    pub(crate) fn expect_echo(&self, key: &str) -> Option<Echo> {
        if !self.tracked || !self.covers(key) {
            return None;
        }
        let (tx, rx) = oneshot::channel();
        let id = self.next_waiter.fetch_add(1, Ordering::Relaxed);
        self.lock_echoes().entry(key.into()).or_default().push((id, tx));
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Some(Echo { key: key.into(), id, rx })
    }

    /// After a successful write: the ticket for filling L1 with what was written — the
    /// pre-write one without tracking, else the one handed over with the write's own
    /// invalidation (`None` if it does not come within `wait`: then L1 is not filled).
    pub(crate) async fn after_write(&self, echo: Option<Echo>, before: Ticket, wait: Duration) -> Option<Ticket> {
        let Some(echo) = echo else { return Some(before) };
        if !self.is_healthy() {
            self.forget(echo);
            return None;
        }
        let Echo { key, id, rx } = echo;
        match tokio::time::timeout(wait, rx).await {
            Ok(Ok(ticket)) => Some(ticket),
            _ => {
                self.remove_waiter(&key, id);
                None
            }
        }
    }

    /// Drops a registration whose write failed.
    pub(crate) fn forget(&self, echo: Echo) {
        self.remove_waiter(&echo.key, echo.id);
    }

    fn remove_waiter(&self, key: &str, id: u64) {
        let mut echoes = self.lock_echoes();
        if let Some(waiters) = echoes.get_mut(key) {
            let before = waiters.len();
            waiters.retain(|(w, _)| *w != id);
            self.waiting.fetch_sub(before - waiters.len(), Ordering::SeqCst);
            if waiters.is_empty() {
                echoes.remove(key);
            }
        }
    }

    fn lock_echoes(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.echoes.lock().unwrap_or_else(|p| p.into_inner())
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
        if !healthy {
            // Their echoes may never come: wake them (they will not fill L1).
            let dropped: usize = self.lock_echoes().drain().map(|(_, w)| w.len()).sum();
            self.waiting.fetch_sub(dropped, Ordering::SeqCst);
        }
        if healthy {
            self.healthy.store(true, Ordering::SeqCst);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(c.expect_echo("other:v1:user:1").is_none());
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

    #[tokio::test]
    async fn a_writer_fills_with_the_state_right_after_its_own_echo() {
        let c = Coherence::new(true, Vec::new());
        c.reset(true, None);
        let reader = c.ticket("k"); // a read that began before the write
        let echo = c.expect_echo("k");
        let before = c.ticket("k");
        c.invalidate(b"k", None); // the write's own invalidation
        let ticket = c.after_write(echo, before, Duration::from_secs(1)).await.expect("echo delivered");
        assert!(c.admits(&ticket), "the writer keeps what it wrote");
        assert!(!c.admits(&reader) && !c.admits(&before), "older reads do not");
        c.invalidate(b"k", None); // someone else writes afterwards
        assert!(!c.admits(&ticket));
        assert_eq!(c.waiting.load(Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn an_echo_that_never_comes_means_no_fill_and_no_leak() {
        let c = Coherence::new(true, Vec::new());
        c.reset(true, None);
        let echo = c.expect_echo("k");
        let before = c.ticket("k");
        assert!(c.after_write(echo, before, Duration::from_millis(10)).await.is_none());
        assert_eq!(c.waiting.load(Ordering::SeqCst), 0);
        assert!(c.lock_echoes().is_empty());
    }
}
