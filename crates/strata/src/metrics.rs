//! Counters kept by the cache, per namespace and global, readable through
//! [`Cache::metrics`](crate::Cache::metrics). Prometheus export builds on these snapshots.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use std::time::Duration;

use crate::breaker::{BreakerState, Breakers};
use crate::latency::{Histogram, L2_BUCKETS_MICROS, LOADER_BUCKETS_MICROS, LatencySnapshot};

/// Distinct namespaces tracked individually; further ones are counted under [`OTHER_NAMESPACE`]
/// so that keys from untrusted input cannot grow the metrics without bound.
pub const MAX_NAMESPACES: usize = 512;
/// The bucket for namespaces past [`MAX_NAMESPACES`].
pub const OTHER_NAMESPACE: &str = "_other";

macro_rules! counters {
    ($(#[$doc:meta] $name:ident),* $(,)?) => {
        #[derive(Debug, Default)]
        pub(crate) struct NsCounters {
            /// Reads answered by the in-process tier (see [`Striped`]).
            pub(crate) l1_hits: Striped,
            $(pub(crate) $name: AtomicU64,)*
            loader_latency: LoaderLatency,
            /// What the namespace's recent L1 misses found in Redis.
            pub(crate) outlook: MissOutlook,
        }

        /// Counters for one namespace (or the sum of all, from [`MetricsSnapshot::total`]).
        #[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct NamespaceStats {
            /// Reads answered by the in-process tier.
            pub l1_hits: u64,
            $(#[$doc] pub $name: u64,)*
            /// How long loads took (each loader call that returned or timed out).
            pub loader_duration: LatencySnapshot,
        }

        impl NsCounters {
            fn snapshot(&self) -> NamespaceStats {
                NamespaceStats {
                    l1_hits: self.l1_hits.load(),
                    $($name: self.$name.load(Ordering::Relaxed),)*
                    loader_duration: self.loader_latency.0.snapshot(),
                }
            }
        }

        impl std::ops::AddAssign for NamespaceStats {
            fn add_assign(&mut self, other: Self) {
                self.l1_hits += other.l1_hits;
                $(self.$name += other.$name;)*
                self.loader_duration += other.loader_duration;
            }
        }
    };
}

counters! {
    /// Reads the in-process tier could not answer.
    l1_misses,
    /// Reads answered by Redis.
    l2_hits,
    /// Reads Redis could not answer (absent key, or Redis unavailable).
    l2_misses,
    /// Reads answered by a cached "not found".
    negative_hits,
    /// Loader invocations (one per single-flight group).
    loader_calls,
    /// Loader invocations that returned an error.
    loader_errors,
    /// Total time spent in loaders, in microseconds.
    loader_micros,
    /// Values written to Redis.
    sets,
    /// Misses that waited for another process's load (distributed single-flight).
    lease_waits,
    /// Loaded values not stored because an invalidation (or a lease takeover) happened during the load.
    stale_writes_refused,
    /// Keys deleted.
    deletes,
    /// Undecodable values found in Redis (each one was treated as a miss and removed).
    corrupt,
    /// Values of a sensitive namespace that did not decrypt and authenticate (unknown key id, wrong key, tampered, moved from another key, or stored unencrypted): each one was treated as a miss and removed.
    decrypt_failures,
    /// Valid values of another type (another application version?): a miss, left in place.
    type_mismatches,
    /// Loaded values that could not be cached, too large or unserializable (returned, not stored).
    uncacheable,
    /// L2 reads of a hot key answered by one of its copies (also counted in `l2_hits`).
    hot_copy_hits,
    /// Reads answered with a value past its logical expiry (stale-while-revalidate, or fail-safe after a failed or slow load; see [`Freshness`](crate::Freshness)).
    stale_served,
    /// Background refreshes started by XFetch before the value expired.
    early_refreshes,
    /// Background refreshes started by a stale-while-revalidate read.
    stale_refreshes,
    /// Background refreshes whose loader failed or timed out (the old value stays).
    refresh_errors,
    /// Loads that passed a soft or hard timeout.
    loader_timeouts,
    /// Writes made with [`set_through`](crate::Cache::set_through) that reached the cache.
    writes_through,
    /// Values found in either tier but not served: their namespace or a tag was invalidated after they were produced (a miss; removed).
    invalidated,
    /// Invalidations of the namespace made through this instance (`invalidate_namespace`).
    invalidations,
}

/// Something [`NsCounters::inc`] counts in.
pub(crate) trait Counter {
    fn add_one(&self);
}

impl Counter for AtomicU64 {
    fn add_one(&self) {
        self.fetch_add(1, Ordering::Relaxed);
    }
}

/// A counter each thread increments on a cache line of its own, summed when read. For what
/// every L1 hit counts: threads hitting L1 on several cores at once would otherwise take turns
/// owning one shared word (measured with `--scenario hit-latency`, two reader threads: an
/// `Arc` hit cost 248 ns against 86 ns for one thread).
#[derive(Debug, Default)]
pub(crate) struct Striped([Padded; STRIPES]);

/// One stripe, alone on its cache line (128 bytes: adjacent lines are fetched in pairs).
#[derive(Debug, Default)]
#[repr(align(128))]
struct Padded(AtomicU64);

const STRIPES: usize = 8;

impl Striped {
    fn load(&self) -> u64 {
        self.0.iter().map(|p| p.0.load(Ordering::Relaxed)).sum()
    }
}

impl Counter for Striped {
    fn add_one(&self) {
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        thread_local!(static STRIPE: usize = NEXT.fetch_add(1, Ordering::Relaxed) % STRIPES);
        let stripe = STRIPE.try_with(|s| *s).unwrap_or(0);
        self.0[stripe].0.fetch_add(1, Ordering::Relaxed);
    }
}

impl NsCounters {
    pub(crate) fn inc(counter: &impl Counter) {
        counter.add_one();
    }

    /// Records one load's duration (in `loader_micros` and the loader histogram); returns it in
    /// microseconds, saturated, as the value envelope stores it.
    pub(crate) fn record_load(&self, elapsed: Duration) -> u32 {
        let micros = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        self.loader_micros.fetch_add(u64::from(micros), Ordering::Relaxed);
        self.loader_latency.0.record(elapsed);
        micros
    }
}

/// Whether the next L1 miss of a namespace is more likely an L2 miss than an L2 hit, from the
/// recent ones: a score that an L2 hit raises and an L2 miss lowers, within ±[`Self::BOUND`]
/// (so it follows a change of workload within a few dozen reads). It picks the first read of a
/// load (see `cache/load.rs`): with misses likely, the lease attempt rides along with the GET.
#[derive(Debug, Default)]
pub(crate) struct MissOutlook(AtomicI32);

impl MissOutlook {
    const BOUND: i32 = 16;

    /// Whether L2 misses have been the more frequent lately.
    pub(crate) fn misses_likely(&self) -> bool {
        self.0.load(Ordering::Relaxed) < 0
    }

    /// What one L1 miss found in Redis.
    pub(crate) fn record(&self, l2_hit: bool) {
        let step = if l2_hit { 1 } else { -1 };
        let _ = self.0.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |score| {
            let next = (score + step).clamp(-Self::BOUND, Self::BOUND);
            (next != score).then_some(next)
        });
    }
}

#[derive(Debug)]
struct LoaderLatency(Histogram);

impl Default for LoaderLatency {
    fn default() -> Self {
        Self(Histogram::new(&LOADER_BUCKETS_MICROS))
    }
}

/// Durations of Redis calls made through the breaker.
#[derive(Debug)]
pub(crate) struct L2Latency(pub(crate) Histogram);

impl Default for L2Latency {
    fn default() -> Self {
        Self(Histogram::new(&L2_BUCKETS_MICROS))
    }
}

/// Global counters (not tied to a namespace).
#[derive(Debug, Default)]
pub(crate) struct Globals {
    pub(crate) l2_errors: AtomicU64,
    /// Shared with the L2 client, which also retries calls made outside the breaker.
    pub(crate) l2_retries: Arc<AtomicU64>,
    pub(crate) l2_timeouts: AtomicU64,
    pub(crate) breaker_rejections: AtomicU64,
    pub(crate) l2_latency: L2Latency,
}

#[derive(Debug, Default)]
pub(crate) struct Metrics {
    namespaces: Namespaces,
    /// Shared with the L2 tier, which counts its calls.
    pub(crate) globals: Arc<Globals>,
}

impl Metrics {
    /// The counters of `namespace`, created on first use.
    pub(crate) fn ns(&self, namespace: &str) -> &NsCounters {
        self.namespaces.get(namespace)
    }

    pub(crate) fn snapshot(
        &self,
        breakers: &Breakers,
        l1: (u64, u64),
        coherence: (u64, u64, u64, bool),
        recovery: crate::cache::RecoveryCounts,
    ) -> MetricsSnapshot {
        let namespaces = self.namespaces.iter().map(|(k, v)| (k.to_owned(), v.snapshot())).collect();
        let g = &self.globals;
        MetricsSnapshot {
            namespaces,
            l2_errors: g.l2_errors.load(Ordering::Relaxed),
            l2_retries: g.l2_retries.load(Ordering::Relaxed),
            l2_timeouts: g.l2_timeouts.load(Ordering::Relaxed),
            breaker_rejections: g.breaker_rejections.load(Ordering::Relaxed),
            l2_duration: g.l2_latency.0.snapshot(),
            breaker_state: breakers.state(),
            breaker_opens: breakers.opens(),
            breakers_open: breakers.open_now(),
            l1_entries: l1.0,
            l1_bytes: l1.1,
            invalidation_messages: coherence.0,
            invalidation_messages_internal: coherence.1,
            l1_flushes: coherence.2,
            l1_coherent: coherence.3,
            recovery_queue: recovery.queue_len,
            recovery_queued: recovery.queued,
            recovery_replayed: recovery.replayed,
            recovery_dropped: recovery.dropped,
        }
    }
}

/// Slots of the namespace table: twice the namespaces it holds (and [`OTHER_NAMESPACE`]), so
/// that probes stay short.
const SLOTS: usize = 2 * (MAX_NAMESPACES + 1);

/// The counters of each namespace, found without a lock or a reference count: every read of
/// the cache counts in one, so the lookup is on the L1 hit path. A fixed open-addressing table
/// whose slots are set once (under `adding`) and never cleared.
struct Namespaces {
    slots: Box<[OnceLock<Box<Named>>]>,
    adding: Mutex<usize>,
}

impl Default for Namespaces {
    fn default() -> Self {
        Self { slots: (0..SLOTS).map(|_| OnceLock::new()).collect(), adding: Mutex::new(0) }
    }
}

impl std::fmt::Debug for Namespaces {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|(name, _)| name)).finish()
    }
}

impl Namespaces {
    fn get(&self, namespace: &str) -> &NsCounters {
        match self.find(namespace) {
            Ok(counters) => counters,
            Err(_) => self.add(namespace),
        }
    }

    /// The namespace's counters, or the free slot where its probe ended.
    fn find(&self, namespace: &str) -> Result<&NsCounters, usize> {
        let start =
            std::hash::BuildHasher::hash_one(&foldhash::fast::FixedState::with_seed(0), namespace) as usize % SLOTS;
        for i in 0..SLOTS {
            let slot = (start + i) % SLOTS;
            match self.slots[slot].get() {
                Some(entry) if &*entry.0 == namespace => return Ok(&entry.1),
                Some(_) => {}
                None => return Err(slot),
            }
        }
        Err(SLOTS)
    }

    fn add(&self, namespace: &str) -> &NsCounters {
        let mut added = self.adding.lock().unwrap_or_else(|p| p.into_inner());
        // Past the limit, new names count under one more.
        let name = if *added >= MAX_NAMESPACES { OTHER_NAMESPACE } else { namespace };
        match self.find(name) {
            Ok(counters) => counters,
            Err(slot) => {
                // The table has room for every name it may hold: a free slot is always found.
                let entry = self.slots[slot % SLOTS].get_or_init(|| Box::new((name.into(), NsCounters::default())));
                if name != OTHER_NAMESPACE {
                    *added += 1;
                }
                &entry.1
            }
        }
    }

    fn iter(&self) -> impl Iterator<Item = (&str, &NsCounters)> {
        self.slots.iter().filter_map(|s| s.get()).map(|entry| (&*entry.0, &entry.1))
    }
}

/// A namespace's name and counters.
type Named = (Box<str>, NsCounters);

/// A point-in-time copy of every counter.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Counters per namespace (`app:vN:entity`).
    pub namespaces: BTreeMap<String, NamespaceStats>,
    /// Redis calls that failed (excluding timeouts).
    pub l2_errors: u64,
    /// Redis calls attempted again after a reply meaning "not executed, try again shortly"
    /// (`LOADING`, `TRYAGAIN`, `CLUSTERDOWN`, `MASTERDOWN`, or `READONLY` through Sentinel), one
    /// per extra attempt, on standalone and Sentinel connections. The Cluster client's own
    /// retries are not counted. A call that succeeds after retries is not an error.
    pub l2_retries: u64,
    /// Redis calls that timed out.
    pub l2_timeouts: u64,
    /// Redis calls skipped because the breaker was open.
    pub breaker_rejections: u64,
    /// How long Redis calls made through the breaker took, retries included (failures and
    /// timeouts too).
    pub l2_duration: LatencySnapshot,
    /// The worst breaker state now: `Open` when any part of the keyspace is skipped (on a
    /// cluster there is one breaker per range of 256 hash slots).
    pub breaker_state: BreakerState,
    /// How many times a breaker has opened.
    pub breaker_opens: u64,
    /// Breakers within their open period now: the whole-Redis breaker and, on a cluster, one
    /// per range of 256 hash slots.
    pub breakers_open: usize,
    /// Entries in the in-process tier.
    pub l1_entries: u64,
    /// Weighted bytes in the in-process tier.
    pub l1_bytes: u64,
    /// Keys named by client-tracking invalidation messages from Redis (each evicted from L1 if
    /// present). Not to be confused with the per-namespace `invalidations` (namespace stamps).
    pub invalidation_messages: u64,
    /// Of `invalidation_messages`, keys Strata keeps for coordination (leases, write-behind
    /// entries): Redis tracks only the keys an instance reads for its L1 (values, stamps, hot
    /// keys' copies), so these should stay 0 (docs/decisions/0013-default-mode-tracking.md).
    pub invalidation_messages_internal: u64,
    /// Times the whole L1 was dropped because an invalidation could have been missed
    /// (tracking connection lost or regained, topology change, FLUSHALL).
    pub l1_flushes: u64,
    /// Whether L1 is serving now: every tracking connection is up (always true with
    /// invalidation off, or on Sentinel).
    pub l1_coherent: bool,
    /// Invalidations (key removals, stamp bumps) queued now for replay because Redis could not
    /// take them ([`AutoRecovery`](crate::AutoRecovery)).
    pub recovery_queue: u64,
    /// Invalidations queued for replay since start (a key queued again counts again).
    pub recovery_queued: u64,
    /// Queued invalidations replayed.
    pub recovery_replayed: u64,
    /// Invalidations not queued because the queue was full, or dropped because Redis refused
    /// their replay (not a failure of Redis: `NOPERM`, ...). Each leaves a value that may be
    /// stale until its TTL.
    pub recovery_dropped: u64,
}

impl MetricsSnapshot {
    /// The sum over all namespaces.
    pub fn total(&self) -> NamespaceStats {
        let mut total = NamespaceStats::default();
        for stats in self.namespaces.values() {
            total += *stats;
        }
        total
    }

    /// Counters of one namespace (zero when it has seen no traffic).
    pub fn namespace(&self, namespace: &str) -> NamespaceStats {
        self.namespaces.get(namespace).copied().unwrap_or_default()
    }
}

impl NamespaceStats {
    /// Fraction of reads answered by either tier (including cached "not found").
    pub fn hit_ratio(&self) -> f64 {
        let hits = self.l1_hits + self.l2_hits;
        let reads = self.l1_hits + self.l1_misses;
        if reads == 0 { 0.0 } else { hits as f64 / reads as f64 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_striped_counter_sums_every_thread() {
        let counter = Striped::default();
        std::thread::scope(|scope| {
            for _ in 0..12 {
                scope.spawn(|| (0..1000).for_each(|_| NsCounters::inc(&counter)));
            }
        });
        assert_eq!(counter.load(), 12_000);
    }

    #[test]
    fn the_outlook_follows_the_recent_reads() {
        let outlook = MissOutlook::default();
        assert!(!outlook.misses_likely(), "starts expecting hits: an L2 hit then costs no script");
        outlook.record(false);
        assert!(outlook.misses_likely());
        for _ in 0..100 {
            outlook.record(false);
        }
        // Saturated: as many hits as the bound bring it back, not a hundred.
        for _ in 0..MissOutlook::BOUND {
            outlook.record(true);
        }
        assert!(!outlook.misses_likely());
    }

    #[test]
    fn each_namespace_has_its_counters_up_to_the_limit_then_one_more_for_the_rest() {
        let table = Namespaces::default();
        let first = table.get("app:v1:user") as *const NsCounters;
        assert_eq!(first, table.get("app:v1:user") as *const NsCounters, "found again, not added twice");
        for i in 1..MAX_NAMESPACES {
            NsCounters::inc(&table.get(&format!("app:v1:e{i}")).sets);
        }
        let other = table.get("app:v1:one-too-many");
        assert_eq!(other as *const NsCounters, table.get("app:v1:another") as *const NsCounters);
        NsCounters::inc(&other.sets);
        let names: Vec<&str> = table.iter().map(|(name, _)| name).collect();
        assert_eq!(names.len(), MAX_NAMESPACES + 1);
        assert!(names.contains(&OTHER_NAMESPACE) && names.contains(&"app:v1:e1"));
        assert_eq!(table.get(OTHER_NAMESPACE).sets.load(Ordering::Relaxed), 1);
    }
}
