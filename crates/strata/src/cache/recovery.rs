//! Auto-recovery: invalidations (and lease releases) Redis could not take, queued in the
//! instance and replayed when it is back ([`AutoRecovery`]).
//!
//! A `delete`, a `set`, a write-through's store or an `invalidate_namespace` / `invalidate_tag`
//! that fails because Redis is unhealthy (unreachable, timing out, failing over, breaker open)
//! would otherwise leave the previous value in Redis until its TTL. Instead:
//!
//! - **What is queued is a removal**: the key's `DEL` (with its coordination keys and hot
//!   copies, as `delete` sends it), or a stamp's bump. A `set` whose value Redis could not take
//!   queues its key's removal, not its value: a value replayed later could overwrite a newer
//!   one another instance wrote meanwhile, while a removal can only cost a miss.
//! - **The call still fails**, with [`Error::is_queued`](crate::Error::is_queued): it has not
//!   completed (another instance may read the old value from Redis until the replay, and the
//!   consistency drill counts only completed writes), but nothing is left stale for good.
//! - **One entry per key, newest wins, bounded**: a key (or stamp) queued again keeps one entry,
//!   moved to the back. Past [`AutoRecovery::capacity`] entries nothing more is queued: the call
//!   fails as it did before auto-recovery, and the drop is counted.
//! - **Replayed in order** by a task of the cache, as soon as Redis takes calls again (it
//!   retries with a back-off up to [`AutoRecovery::max_backoff`]; each replay goes through the
//!   breaker, so an open breaker is probed by it). An entry leaves the queue once its replay
//!   succeeded, or once a later write or delete of the same key through this instance did.
//! - **Held back meanwhile**: until then this instance reads the key neither from L1 nor from
//!   Redis (which may still hold the value being replaced): `get` misses, `get_or_set` calls its
//!   loader and caches nothing, and no L1 fill of the key is admitted. Values that carry a
//!   queued stamp's mark (its namespace or tag) are not served either.
//!
//! - **Leases too**: a load whose store and lease release both fail (the cluster went down an
//!   instant after the lease was taken) queues the release. Without it, once the cluster is
//!   back, every caller of the key in every instance would wait for the orphaned lease until
//!   its TTL (10 s by default): the 2-8 s calls `strata drill failover` found. A release is
//!   token-checked, so replaying it late is harmless; it does not hold the key back.
//!
//! Other instances are not told: while Redis is down they could not be (their L1 closes on
//! losing their tracking connections); after it is back they may read the old value from Redis
//! until the replay, which comes within the back-off (at most `max_backoff`) of the first call
//! Redis takes again. A process that dies with entries queued loses them: the values expire by
//! their TTL, as without auto-recovery.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::Notify;

use super::Inner;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::lease_key;
use crate::tags::{stamp_id, stamp_key};

/// Settings of auto-recovery ([`CacheBuilder::auto_recovery`](crate::CacheBuilder::auto_recovery)):
/// invalidations Redis could not take are queued in the instance and replayed when it is back.
/// On by default.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct AutoRecovery {
    /// Queue invalidations at all (default true). Off: a `delete` or invalidation Redis cannot
    /// take fails all the same, and the old value stays in Redis until its TTL.
    pub enabled: bool,
    /// Most keys and stamps queued at once (default 10,000). Past it, a failed invalidation is
    /// not queued (its error is not [`is_queued`](crate::Error::is_queued)) and
    /// `strata_recovery_dropped_total` counts it.
    pub capacity: usize,
    /// Longest wait between two replay rounds while Redis keeps failing (default 500 ms; the
    /// first retry comes after 25 ms, and each failed round doubles the wait).
    pub max_backoff: Duration,
    /// Replicas that must confirm each invalidation (a `delete`'s `DEL`, a stamp's bump) before
    /// it counts as done (`WAIT`; default 0: no wait). Replication is asynchronous: a master that
    /// dies right after taking a `DEL` can lose it in the failover, and the old value serves again
    /// from the promoted replica. With a confirmation, an invalidation fewer replicas confirmed
    /// within [`wait_timeout`](Self::wait_timeout) fails and is queued for replay like one Redis
    /// could not take. Costs: the `WAIT` round trip on every invalidation, and it holds the
    /// connection it runs on (this instance's plain connection to that master) meanwhile.
    pub wait_replicas: u32,
    /// How long a confirmation may take (default 50 ms); shorter than the cache's `op_timeout`.
    pub wait_timeout: Duration,
}

impl Default for AutoRecovery {
    fn default() -> Self {
        Self {
            enabled: true,
            capacity: 10_000,
            max_backoff: Duration::from_millis(500),
            wait_replicas: 0,
            wait_timeout: Duration::from_millis(50),
        }
    }
}

impl AutoRecovery {
    /// Auto-recovery off: failed invalidations are errors only.
    pub fn disabled() -> Self {
        Self { enabled: false, ..Self::default() }
    }

    /// The default settings with another capacity.
    pub fn with_capacity(capacity: usize) -> Self {
        Self { capacity, ..Self::default() }
    }

    /// The default settings, with every invalidation confirmed by `replicas` replicas within
    /// `timeout` ([`wait_replicas`](Self::wait_replicas)).
    pub fn wait_for_replicas(mut self, replicas: u32, timeout: Duration) -> Self {
        self.wait_replicas = replicas;
        self.wait_timeout = timeout;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if self.enabled && self.capacity == 0 {
            return Err(Error::config("auto_recovery capacity must be at least 1 (or disable it)"));
        }
        if self.max_backoff.is_zero() {
            return Err(Error::config("auto_recovery max_backoff must be positive"));
        }
        if self.wait_replicas > 0 && self.wait_timeout.is_zero() {
            return Err(Error::config("auto_recovery wait_timeout must be positive"));
        }
        Ok(())
    }
}

/// What a queued entry removes.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// A key: `DEL` of it, its coordination keys and its hot copies.
    Key(Key),
    /// A stamp key (`{NS}:stamp`, `{APP:tag:NAME}:stamp`): raised.
    Stamp(String),
    /// A key's lease held by `token`, which a load could not give back: released if `token`
    /// still holds it. Not a removal of the key: its reads are not held back.
    Lease { key: Key, token: Box<str> },
}

impl Target {
    /// The Redis key the entry changes: one entry per name.
    fn name(&self) -> String {
        match self {
            Self::Key(key) => key.as_str().to_owned(),
            Self::Stamp(stamp) => stamp.clone(),
            Self::Lease { key, .. } => String::from_utf8_lossy(&lease_key(key.as_str())).into_owned(),
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Self::Key(_) => "key removal",
            Self::Stamp(_) => "stamp bump",
            Self::Lease { .. } => "lease release",
        }
    }
}

#[derive(Default)]
struct Queue {
    next: u64,
    /// Entries in replay order, by sequence number.
    order: BTreeMap<u64, Target>,
    /// Each queued name's sequence number.
    by_name: HashMap<Box<str>, u64>,
}

/// The queue and its counters, shared by the cache and its replay task.
pub(crate) struct Recovery {
    config: AutoRecovery,
    queue: Mutex<Queue>,
    /// Entries queued now (read without the lock on every L2 read and ticket).
    len: AtomicUsize,
    /// Of them, stamps (read on every stamp verdict that is not settled).
    stamps: AtomicUsize,
    wake: Notify,
    pub(crate) queued_total: AtomicU64,
    pub(crate) replayed_total: AtomicU64,
    pub(crate) dropped_total: AtomicU64,
}

/// Which entry [`Recovery::settle`] removes.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Settle {
    /// The entry replayed, if it was not queued again since.
    Exactly(u64),
    /// One queued before [`Recovery::mark`] returned this (a write sent after it succeeded).
    Before(u64),
}

/// A copy of the counters, for [`MetricsSnapshot`](crate::MetricsSnapshot).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct RecoveryCounts {
    pub(crate) queue_len: u64,
    pub(crate) queued: u64,
    pub(crate) replayed: u64,
    pub(crate) dropped: u64,
}

impl Recovery {
    pub(crate) fn new(config: AutoRecovery) -> Self {
        Self {
            config,
            queue: Mutex::default(),
            len: AtomicUsize::new(0),
            stamps: AtomicUsize::new(0),
            wake: Notify::new(),
            queued_total: AtomicU64::new(0),
            replayed_total: AtomicU64::new(0),
            dropped_total: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Queue> {
        self.queue.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `target` (newest wins: an entry for the same name moves to the back). False when
    /// auto-recovery is off or the queue is full (counted as a drop).
    pub(crate) fn push(&self, target: Target) -> bool {
        if !self.config.enabled {
            return false;
        }
        let name = target.name();
        let mut queue = self.lock();
        let previous = queue.by_name.get(name.as_str()).copied();
        if previous.is_none() && queue.order.len() >= self.config.capacity {
            drop(queue);
            self.dropped_total.fetch_add(1, Ordering::Relaxed);
            tracing::error!(key = name, what = target.what(), "auto-recovery queue full: not queued");
            return false;
        }
        let seq = queue.next;
        queue.next += 1;
        match previous {
            Some(old) => {
                queue.order.remove(&old);
            }
            None => {
                self.len.fetch_add(1, Ordering::AcqRel);
                if matches!(target, Target::Stamp(_)) {
                    self.stamps.fetch_add(1, Ordering::AcqRel);
                }
            }
        }
        queue.by_name.insert(name.into_boxed_str(), seq);
        queue.order.insert(seq, target);
        drop(queue);
        self.queued_total.fetch_add(1, Ordering::Relaxed);
        self.wake.notify_one();
        true
    }

    /// Whether a removal of the key (or stamp key) `name` is queued.
    pub(crate) fn holds(&self, name: &str) -> bool {
        self.len.load(Ordering::Acquire) > 0 && self.lock().by_name.contains_key(name)
    }

    /// Whether a bump of the stamp of `id` (a namespace or `APP:tag:NAME`) is queued.
    pub(crate) fn holds_stamp(&self, id: &str) -> bool {
        self.stamps.load(Ordering::Acquire) > 0 && self.holds(stamp_key(id).as_str())
    }

    /// Whether any stamp bump is queued.
    pub(crate) fn any_stamp(&self) -> bool {
        self.stamps.load(Ordering::Acquire) > 0
    }

    /// Taken before a write is sent: entries numbered below it were queued before the write,
    /// so its success makes them moot ([`Settle::Before`]).
    pub(crate) fn mark(&self) -> u64 {
        if self.len.load(Ordering::Acquire) == 0 { 0 } else { self.lock().next }
    }

    /// Removes the entry of `name` if `which` says so: its replay succeeded (the entry is still
    /// the one replayed), or a write through this instance sent after it was queued succeeded.
    pub(crate) fn settle(&self, name: &str, which: Settle) -> bool {
        if self.len.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut queue = self.lock();
        let Some(&current) = queue.by_name.get(name) else { return false };
        let matches = match which {
            Settle::Exactly(seq) => seq == current,
            Settle::Before(mark) => current < mark,
        };
        if !matches {
            return false;
        }
        queue.by_name.remove(name);
        if let Some(target) = queue.order.remove(&current)
            && matches!(target, Target::Stamp(_))
        {
            self.stamps.fetch_sub(1, Ordering::AcqRel);
        }
        self.len.fetch_sub(1, Ordering::AcqRel);
        true
    }

    /// Whether `name`'s entry is still the one numbered `seq`.
    fn current(&self, name: &str, seq: u64) -> bool {
        self.lock().by_name.get(name) == Some(&seq)
    }

    /// Entries queued now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Acquire)
    }

    pub(crate) fn counts(&self) -> RecoveryCounts {
        RecoveryCounts {
            queue_len: self.len() as u64,
            queued: self.queued_total.load(Ordering::Relaxed),
            replayed: self.replayed_total.load(Ordering::Relaxed),
            dropped: self.dropped_total.load(Ordering::Relaxed),
        }
    }

    fn snapshot(&self) -> Vec<(u64, Target)> {
        self.lock().order.iter().map(|(seq, target)| (*seq, target.clone())).collect()
    }

    /// Starts the replay task on the current runtime (none outside one: entries then wait for
    /// [`Inner::replay_queued`]). It stops when the cache is dropped.
    pub(crate) fn start(inner: &Arc<Inner>) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if !inner.recovery.config.enabled {
            return;
        }
        let (recovery, cache) = (Arc::clone(&inner.recovery), Arc::downgrade(inner));
        runtime.spawn(replay_loop(recovery, cache));
    }
}

/// The replay task: waits for entries, then replays rounds with a growing back-off until the
/// queue is empty.
async fn replay_loop(recovery: Arc<Recovery>, cache: Weak<Inner>) {
    const FIRST: Duration = Duration::from_millis(25);
    let mut backoff = FIRST;
    loop {
        if recovery.len() == 0 {
            backoff = FIRST;
            // Woken by a push; the timeout only notices a dropped cache.
            let _ = tokio::time::timeout(Duration::from_secs(1), recovery.wake.notified()).await;
            if cache.strong_count() == 0 {
                return;
            }
            continue;
        }
        // Redis just refused these: give it a moment before the first try.
        tokio::time::sleep(backoff).await;
        let progressed = replay_round(&recovery, &cache).await;
        backoff = if progressed { FIRST } else { (backoff * 2).min(recovery.config.max_backoff) };
    }
}

/// Entries replayed per hold of the cache: a dropped cache is released within one batch.
const BATCH: usize = 32;
/// Consecutive slow failures (a timeout, replicas that do not confirm) that end a round early:
/// the rest waits for the next round rather than each entry waiting its timeout. A breaker's
/// rejection costs nothing and does not count, so entries behind a dead master's still go.
const GIVE_UP_AFTER: usize = 8;

/// One replay round: every queued entry, in order, in batches. Whether any succeeded (or the
/// queue is empty).
async fn replay_round(recovery: &Recovery, cache: &Weak<Inner>) -> bool {
    let (mut progressed, mut failures) = (false, 0);
    for batch in recovery.snapshot().chunks(BATCH) {
        let Some(inner) = cache.upgrade() else { return true };
        for (seq, target) in batch {
            match inner.replay(*seq, target).await {
                Replayed::Done => (progressed, failures) = (true, 0),
                Replayed::Failed { slow: true } => failures += 1,
                Replayed::Failed { slow: false } | Replayed::Skipped => {}
            }
            if failures >= GIVE_UP_AFTER {
                return progressed;
            }
        }
    }
    progressed || recovery.len() == 0
}

/// What one replay did.
enum Replayed {
    /// Redis took it (or refused it for good: it was dropped).
    Done,
    /// Redis still cannot take it; `slow` unless the breaker rejected it at once.
    Failed { slow: bool },
    /// Settled, or queued again, since the round's snapshot.
    Skipped,
}

impl Inner {
    /// After an invalidation Redis could not take because it is unhealthy: queues its replay.
    /// Whether it was queued.
    pub(crate) fn queue_removal(&self, target: Target, err: &Error) -> bool {
        if !(err.is_unhealthy() || err.is_circuit_open()) {
            return false;
        }
        let stamp = match &target {
            Target::Stamp(stamp) => stamp_id(stamp).map(str::to_owned),
            Target::Key(_) | Target::Lease { .. } => None,
        };
        let what = target.what();
        let queued = self.recovery.push(target);
        if queued {
            tracing::warn!(error = %err, what, "redis could not take it: queued for replay");
            if let Some(id) = stamp {
                // Values verified against the stamp before it was queued are checked again.
                self.stamps.forget(Some(&id));
            }
        }
        queued
    }

    /// `invalidate_namespace` / `invalidate_tag`: the stamp's bump, or its queued replay.
    pub(crate) async fn invalidate_stamp(&self, stamp: &str) -> Result<()> {
        let mark = self.recovery.mark();
        match self.bump(stamp).await {
            Ok(_) => {
                self.recovery.settle(stamp, Settle::Before(mark));
                Ok(())
            }
            Err(err) if self.queue_removal(Target::Stamp(stamp.to_owned()), &err) => Err(err.queued()),
            Err(err) => Err(err),
        }
    }

    /// Replays one entry.
    async fn replay(&self, seq: u64, target: &Target) -> Replayed {
        let name = target.name();
        if !self.recovery.current(&name, seq) {
            return Replayed::Skipped;
        }
        let replayed = match target {
            Target::Key(key) => self.delete_now(key).await.map(drop),
            Target::Stamp(stamp) => self.bump(stamp).await.map(drop),
            Target::Lease { key, token } => self.release_now(key, token).await,
        };
        match replayed {
            Ok(()) => {
                if self.recovery.settle(&name, Settle::Exactly(seq)) {
                    self.recovery.replayed_total.fetch_add(1, Ordering::Relaxed);
                }
                tracing::info!(key = name, what = target.what(), "queued for replay: done");
                Replayed::Done
            }
            Err(err) if err.is_unhealthy() || err.is_circuit_open() => {
                tracing::debug!(key = name, what = target.what(), error = %err, "queued for replay: not yet");
                Replayed::Failed { slow: !err.is_circuit_open() }
            }
            Err(err) => {
                // Redis answered and refused it (NOPERM...): retrying will not help.
                if self.recovery.settle(&name, Settle::Exactly(seq)) {
                    self.recovery.dropped_total.fetch_add(1, Ordering::Relaxed);
                }
                tracing::error!(key = name, what = target.what(), error = %err, "queued for replay: refused by redis, dropped");
                Replayed::Done
            }
        }
    }

    /// `(replicas, timeout in ms)` every invalidation waits for, if any
    /// ([`AutoRecovery::wait_replicas`]).
    pub(crate) fn confirmation(&self) -> Option<(u32, u64)> {
        let config = &self.recovery.config;
        (config.wait_replicas > 0).then(|| (config.wait_replicas, (config.wait_timeout.as_millis() as u64).max(1)))
    }

    /// Whether this instance holds `key` back (a removal of it is queued): it reads it neither
    /// from L1 nor from Redis.
    pub(crate) fn held_back(&self, key: &str) -> bool {
        self.recovery.holds(key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(id: &str) -> Key {
        crate::KeySchema::new("app", 1).and_then(|s| s.key("user", id)).expect("a valid key")
    }

    #[test]
    fn one_entry_per_key_newest_last_and_bounded() {
        let r = Recovery::new(AutoRecovery::with_capacity(2));
        assert!(r.push(Target::Key(key("1"))));
        assert!(r.push(Target::Key(key("2"))));
        assert!(r.push(Target::Key(key("1"))), "a key already queued is re-queued even when full");
        assert!(!r.push(Target::Key(key("3"))), "full");
        assert_eq!(r.len(), 2);
        assert_eq!(r.dropped_total.load(Ordering::Relaxed), 1);
        let order: Vec<String> = r.snapshot().into_iter().map(|(_, t)| t.name()).collect();
        assert_eq!(order, ["app:v1:user:2", "app:v1:user:1"]);
        assert!(r.holds("app:v1:user:1") && !r.holds("app:v1:user:3"));
    }

    #[test]
    fn a_settle_with_a_stale_sequence_number_leaves_the_newer_entry() {
        let r = Recovery::new(AutoRecovery::default());
        r.push(Target::Key(key("1")));
        let (old, _) = r.snapshot()[0].clone();
        r.push(Target::Key(key("1")));
        assert!(!r.settle("app:v1:user:1", Settle::Exactly(old)), "re-queued since: the newer entry stays");
        assert!(r.holds("app:v1:user:1"));
        let mark = r.mark();
        r.push(Target::Key(key("2")));
        assert!(!r.settle("app:v1:user:2", Settle::Before(mark)), "queued after the write was sent: it stays");
        assert!(r.settle("app:v1:user:1", Settle::Before(mark)));
        assert_eq!(r.len(), 1);
        assert!(!r.holds("app:v1:user:1"));
    }

    #[test]
    fn stamps_are_found_by_id() {
        let r = Recovery::new(AutoRecovery::default());
        let stamp = stamp_key("app:v1:user");
        r.push(Target::Stamp(stamp.as_str().to_owned()));
        assert!(r.any_stamp() && r.holds_stamp("app:v1:user") && !r.holds_stamp("app:v1:order"));
        assert!(r.settle(stamp.as_str(), Settle::Before(r.mark())));
        assert!(!r.any_stamp());
    }

    #[test]
    fn disabled_queues_nothing() {
        let r = Recovery::new(AutoRecovery::disabled());
        assert!(!r.push(Target::Key(key("1"))));
        assert_eq!((r.len(), r.dropped_total.load(Ordering::Relaxed)), (0, 0));
    }
}
