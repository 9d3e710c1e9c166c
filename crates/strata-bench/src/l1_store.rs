//! `strata bench --scenario l1-store`: the crates that could hold the in-process tier (L1),
//! side by side in one run, without Redis (docs/decisions/0011-l1-store.md).
//!
//! Each store holds what Strata's L1 holds: per key, a type-erased decoded value and the
//! checks a hit is judged by (logical expiry, generations), weighed as the library weighs it
//! (key + 2 × MessagePack size + 96 bytes), bounded in bytes, each entry with its own TTL. The
//! adapters here mirror the library's (`crates/strata/src/l1.rs`, crate-private there), so
//! the figures are the store's share of an L1 hit; `--scenario hit-latency` measures the whole
//! `Cache::get`.
//!
//! - **Hit latency**: every key resident; 1, 2 and 8 reader threads, each reading a key set
//!   (100 keys, which stay in the CPU's caches, and 10,000, which do not) in a Zipf order from
//!   its own place in one stream, timed per batch of gets (a single hit is shorter than the
//!   clock's own overhead): per hit = batch time / batch size, one sample per batch. A hit is
//!   what the store adds to an L1 hit of `Cache::get`: lookup, TTL check, downcast and a clone
//!   of the owned 7-field `Profile`, or of an `Arc<Profile>`. Rounds interleave the stores, the
//!   value kinds, the key sets and the thread counts, so machine noise hits them alike.
//! - **Hit ratio**: a cache-aside replay (get; on a miss, insert) of one Zipf trace over more
//!   keys than the budget holds, at two budgets, and of a trace whose hot set moves three
//!   times; the first quarter of each replay warms the store and is not counted. The largest
//!   resident weight seen (sampled through the replay) over the budget says whether the byte
//!   bound holds between maintenance runs.

use std::any::Any;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use rand::SeedableRng;
use rand::seq::SliceRandom;
use serde::Serialize;

use crate::report::{Report, round4};
use crate::runner::Zipf;
use crate::stats::{Summary, histogram, human_ns};
use crate::svg::Chart;
use crate::workload::{Profile, progress};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Key sets of the latency part: each is read in a Zipf order over its first N keys (the
    /// store holds the largest set, owned and `Arc`).
    pub key_sets: Vec<usize>,
    /// Gets per timed batch.
    pub batch: usize,
    /// Timed batches per reader thread per cell (store × value kind × thread count) per round.
    pub batches: usize,
    /// Interleaved rounds of the latency part.
    pub rounds: usize,
    /// Reader thread counts.
    pub threads: Vec<usize>,
    /// Distinct keys of the hit-ratio traces.
    pub trace_keys: u64,
    /// Requests per trace.
    pub trace_len: usize,
    /// Zipf exponent of the traces.
    pub exponent: f64,
    /// Budgets of the hit-ratio part, as fractions of the trace's whole weight.
    pub budgets: Vec<f64>,
    /// Stop the latency rounds early once this much time has passed.
    pub max_duration: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            key_sets: vec![100, 10_000],
            batch: 1_000,
            batches: 10,
            rounds: 40,
            threads: vec![1, 2, 8],
            trace_keys: 100_000,
            trace_len: 2_000_000,
            exponent: 0.99,
            budgets: vec![0.02, 0.10],
            max_duration: Duration::from_secs(120),
        }
    }
}

/// A store under test: a crate and its settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Variant {
    /// moka 0.12 `sync::Cache`, TinyLFU, per-entry TTL through `Expiry`, pending maintenance run
    /// before an insert that could cross the budget (Strata's L1 before ADR 0011).
    Moka,
    /// quick_cache 0.6 `sync::Cache` with a `Weighter` (CLOCK-PRO-like hot/cold queues and ghost
    /// keys, 97 % hot: its default); the expiry instant kept in the entry, checked on get.
    QuickCache,
    /// mini-moka 0.10 `sync::Cache` (moka's smaller sibling: TinyLFU, no per-entry TTL, so
    /// the expiry instant is kept in the entry as for quick_cache).
    MiniMoka,
    /// moka with its LRU policy (`L1Policy::Lru` before ADR 0011).
    MokaLru,
    /// quick_cache as the library sets it up for `L1Policy::Lru`: one shard (the newest entries
    /// are kept across the whole budget), a quarter of it for entries read again.
    QuickCacheLru,
}

impl Variant {
    /// The variants of the latency part (moka reads the same way under either policy).
    pub const LATENCY: [Variant; 4] = [Variant::Moka, Variant::QuickCache, Variant::MiniMoka, Variant::QuickCacheLru];
    /// The variants of the hit-ratio part.
    pub const RATIO: [Variant; 5] =
        [Variant::Moka, Variant::QuickCache, Variant::MiniMoka, Variant::QuickCacheLru, Variant::MokaLru];

    /// Its name in tables and legends.
    pub fn name(self) -> &'static str {
        match self {
            Variant::Moka => "moka",
            Variant::QuickCache => "quick_cache",
            Variant::MiniMoka => "mini-moka",
            Variant::MokaLru => "moka LRU",
            Variant::QuickCacheLru => "quick_cache LRU",
        }
    }
}

/// Which value an L1 hit hands out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ValueKind {
    /// The 7-field `Profile`, cloned out of the entry.
    Owned,
    /// `Arc<Profile>`: the hit is a reference-count increment.
    Arc,
}

/// Per-hit latency of one store, value kind and reader count.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// The store.
    pub variant: Variant,
    /// Owned or `Arc` value.
    pub value: ValueKind,
    /// Distinct keys read (in a Zipf order).
    pub keys: usize,
    /// Concurrent reader threads.
    pub threads: usize,
    /// Batch means, nanoseconds per hit.
    pub per_hit: Summary,
}

/// One cache-aside replay.
#[derive(Debug, Clone, Serialize)]
pub struct Ratio {
    /// The store.
    pub variant: Variant,
    /// `zipf` or `moving` (the hot set moves three times).
    pub trace: &'static str,
    /// The budget as a fraction of the trace's whole weight.
    pub budget_fraction: f64,
    /// The budget, bytes.
    pub budget_bytes: u64,
    /// Hits over gets, after the warm-up quarter.
    pub hit_ratio: f64,
    /// Wall time per request of the replay (get, plus insert on a miss), nanoseconds.
    pub ns_per_request: f64,
    /// The largest resident weight sampled during the replay, over the budget.
    pub peak_over_budget: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Key sets of the latency part.
    pub key_sets: Vec<usize>,
    /// Gets per timed batch.
    pub batch: usize,
    /// Latency rounds completed.
    pub rounds: usize,
    /// Serialized (MessagePack) size of a profile, bytes (the sample's).
    pub value_bytes: usize,
    /// Entry weight of a profile, bytes (the sample's).
    pub entry_weight: u64,
    /// Cores the machine has.
    pub cores: usize,
    /// Hit latencies.
    pub latency: Vec<Latency>,
    /// Distinct keys of the traces.
    pub trace_keys: u64,
    /// Requests per trace.
    pub trace_len: usize,
    /// Zipf exponent.
    pub exponent: f64,
    /// The traces' whole weight, bytes.
    pub working_set_bytes: u64,
    /// Hit ratios.
    pub ratios: Vec<Ratio>,
}

/// Runs the benchmark.
pub fn run(options: &Options) -> anyhow::Result<Figures> {
    let sample = Profile::sample(1);
    let value_bytes = rmp_serde::to_vec_named(&sample)?.len();
    let latency = latency(options)?;
    let (working_set_bytes, ratios) = ratios(options)?;
    Ok(Figures {
        key_sets: options.key_sets.clone(),
        batch: options.batch,
        rounds: latency.1,
        value_bytes,
        entry_weight: weight(&key_of("p", 1), value_bytes),
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        latency: latency.0,
        trace_keys: options.trace_keys,
        trace_len: options.trace_len,
        exponent: options.exponent,
        working_set_bytes,
        ratios,
    })
}

// ---- What L1 holds, and the stores (mirroring crates/strata/src/l1.rs) ----

type Shared = Arc<dyn Any + Send + Sync>;

/// Per-entry bookkeeping overhead counted in the weight, as in the library.
const ENTRY_OVERHEAD: u64 = 96;

/// The library's weigher: key, twice the serialized size, fixed overhead.
fn weight(key: &str, value_len: usize) -> u64 {
    key.len() as u64 + 2 * value_len as u64 + ENTRY_OVERHEAD
}

/// Stands in for the library's generation marks (same layout).
#[derive(Debug, Default)]
struct Marks {
    _created_at_ms: u64,
    _ns_gen: u64,
    _tags: Vec<(String, u64)>,
    _verified: AtomicU64,
}

/// Stands in for the library's `Checks`: logical expiry and load time, and the marks.
#[derive(Clone)]
struct Checks {
    _expires_at_ms: u64,
    _load_us: u32,
    _marks: Arc<Marks>,
}

/// Behind an `Arc` in every store, as in the library: a hit takes one reference.
struct Entry {
    /// `None`: a cached "not found".
    slot: Option<Shared>,
    checks: Checks,
    weight: u32,
    ttl: Duration,
    /// On [`coarse_now_ns`]'s clock.
    expires: u64,
}

/// The library's L1 clock (`l1::clock`, crate-private there): the kernel's coarse monotonic
/// clock.
#[cfg(target_os = "linux")]
fn coarse_now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC_COARSE)
        .map_or(u64::MAX, |t| (t.tv_sec() as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec() as u64))
}

/// Elsewhere, as the library: `Instant`.
#[cfg(not(target_os = "linux"))]
fn coarse_now_ns() -> u64 {
    static BASE: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    BASE.get_or_init(Instant::now).elapsed().as_nanos() as u64
}

struct PerEntryTtl;

impl moka::Expiry<Arc<str>, Arc<Entry>> for PerEntryTtl {
    fn expire_after_create(&self, _key: &Arc<str>, entry: &Arc<Entry>, _now: Instant) -> Option<Duration> {
        Some(entry.ttl)
    }
    fn expire_after_update(
        &self,
        _: &Arc<str>,
        entry: &Arc<Entry>,
        _: Instant,
        _: Option<Duration>,
    ) -> Option<Duration> {
        Some(entry.ttl)
    }
}

#[derive(Clone)]
struct EntryWeight;

impl quick_cache::Weighter<Arc<str>, Arc<Entry>> for EntryWeight {
    fn weight(&self, _key: &Arc<str>, entry: &Arc<Entry>) -> u64 {
        u64::from(entry.weight)
    }
}

/// With the library's hasher and the sharded read lock (crossbeam's `ShardedLock`) that L1's shards also use.
type Quick = quick_cache::sync::Cache<Arc<str>, Arc<Entry>, EntryWeight, foldhash::fast::RandomState>;

enum Store {
    Moka { cache: moka::sync::Cache<Arc<str>, Arc<Entry>>, budget: u64, unsettled: AtomicU64 },
    Quick(Quick),
    Mini(mini_moka::sync::Cache<Arc<str>, Arc<Entry>>),
}

impl Store {
    fn new(variant: Variant, budget: u64, max_entry: u64) -> Self {
        match variant {
            Variant::Moka | Variant::MokaLru => {
                let policy = if variant == Variant::Moka {
                    moka::policy::EvictionPolicy::tiny_lfu()
                } else {
                    moka::policy::EvictionPolicy::lru()
                };
                let cache = moka::sync::Cache::builder()
                    .eviction_policy(policy)
                    .max_capacity(budget)
                    .weigher(|_: &Arc<str>, e: &Arc<Entry>| e.weight)
                    .expire_after(PerEntryTtl)
                    .build();
                Store::Moka { cache, budget, unsettled: AtomicU64::new(0) }
            }
            Variant::QuickCache | Variant::QuickCacheLru => {
                // As the library does: shards hold two of the largest entries at least, up to 4
                // per core (quick_cache's default); one shard for LRU.
                let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as u64;
                let (shards, hot) = if variant == Variant::QuickCache {
                    ((4 * cores).min(budget / max_entry.max(1) / 2).max(1), 0.97)
                } else {
                    (1, 0.25)
                };
                let mut options = quick_cache::OptionsBuilder::new();
                options
                    .shards(1 << shards.ilog2())
                    .weight_capacity(budget)
                    .estimated_items_capacity((budget / 512).clamp(64, 1 << 24) as usize)
                    .hot_allocation(hot);
                let options = options.build().expect("weight and item capacities are set");
                Store::Quick(Quick::with_options(options, EntryWeight, Default::default(), Default::default()))
            }
            Variant::MiniMoka => Store::Mini(
                mini_moka::sync::Cache::builder()
                    .max_capacity(budget)
                    .weigher(|_: &Arc<str>, e: &Arc<Entry>| e.weight)
                    .build(),
            ),
        }
    }

    /// The entry of `key`, if present and not past its TTL. By `&Arc<str>` because mini-moka
    /// looks keys up only as its key type (the library has a `&str`: moka and quick_cache take
    /// that).
    #[inline]
    fn get(&self, key: &Arc<str>) -> Option<Arc<Entry>> {
        match self {
            Store::Moka { cache, .. } => cache.get(&**key),
            Store::Quick(cache) => {
                let e = cache.get(&**key)?;
                if e.expires <= coarse_now_ns() {
                    cache.remove_if(&**key, |e| e.expires <= coarse_now_ns());
                    return None;
                }
                Some(e)
            }
            Store::Mini(cache) => {
                let e = cache.get(key)?;
                if e.expires <= coarse_now_ns() {
                    cache.invalidate(key);
                    return None;
                }
                Some(e)
            }
        }
    }

    fn insert(&self, key: &Arc<str>, entry: Arc<Entry>) {
        match self {
            Store::Moka { cache, budget, unsettled } => {
                let w = u64::from(entry.weight);
                let pending = unsettled.fetch_add(w, Ordering::AcqRel) + w;
                cache.insert(key.clone(), entry);
                if cache.weighted_size() + pending > *budget {
                    cache.run_pending_tasks();
                    unsettled.store(0, Ordering::Release);
                }
            }
            Store::Quick(cache) => cache.insert(key.clone(), entry),
            Store::Mini(cache) => cache.insert(key.clone(), entry),
        }
    }

    /// The weight of the entries present (walks moka's maps; quick_cache keeps it exact).
    fn resident_bytes(&self) -> u64 {
        match self {
            Store::Moka { cache, .. } => cache.iter().map(|(_, e)| u64::from(e.weight)).sum(),
            Store::Quick(cache) => cache.weight(),
            Store::Mini(cache) => cache.iter().map(|e| u64::from(e.value().weight)).sum(),
        }
    }
}

fn key_of(kind: &str, id: u64) -> Arc<str> {
    format!("bench:v1:{kind}:{id}").into()
}

/// An entry for `value` under `key`, an hour to live.
fn entry(key: &str, value: Shared, value_len: usize) -> Arc<Entry> {
    let ttl = Duration::from_secs(3600);
    Arc::new(Entry {
        slot: Some(value),
        checks: Checks { _expires_at_ms: u64::MAX, _load_us: 1_000, _marks: Arc::new(Marks::default()) },
        weight: u32::try_from(weight(key, value_len)).unwrap_or(u32::MAX),
        ttl,
        expires: coarse_now_ns() + ttl.as_nanos() as u64,
    })
}

/// An L1 hit as the library makes it: the entry, then the value downcast and cloned out.
#[inline]
fn hit<T: Clone + 'static>(store: &Store, key: &Arc<str>) -> Option<T> {
    let entry = store.get(key)?;
    std::hint::black_box(&entry.checks);
    (entry.slot.as_ref()?.as_ref() as &dyn Any).downcast_ref::<T>().cloned()
}

// ---- Hit latency ----

fn latency(options: &Options) -> anyhow::Result<(Vec<Latency>, usize)> {
    let n = options.key_sets.iter().copied().max().unwrap_or(1).max(1) as u64;
    let owned_keys: Vec<Arc<str>> = (0..n).map(|i| key_of("profile", i)).collect();
    let arc_keys: Vec<Arc<str>> = (0..n).map(|i| key_of("profile-arc", i)).collect();
    let mut entries = Vec::with_capacity(2 * n as usize);
    for i in 0..n {
        let p = Profile::sample(i);
        let len = rmp_serde::to_vec_named(&p)?.len();
        entries.push((owned_keys[i as usize].clone(), entry(&owned_keys[i as usize], Arc::new(p.clone()), len)));
        entries.push((arc_keys[i as usize].clone(), entry(&arc_keys[i as usize], Arc::new(Arc::new(p)), len)));
    }
    let total: u64 = entries.iter().map(|(_, e)| u64::from(e.weight)).sum();
    // Everything fits, with room: the latency part measures hits, not evictions.
    let budget = total * 4;
    let stores: Vec<(Variant, Store)> = Variant::LATENCY
        .iter()
        .map(|&v| {
            let store = Store::new(v, budget, budget / 16);
            for (k, e) in &entries {
                store.insert(k, e.clone());
            }
            (v, store)
        })
        .collect();
    // Per key set, one Zipf-ordered stream of key indices; each reader starts at its own place.
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let mut orders = Vec::new();
    for &keys in &options.key_sets {
        let zipf = Zipf::new(keys as u64, options.exponent)?;
        let mut perm: Vec<u32> = (0..keys as u32).collect();
        perm.shuffle(&mut rng);
        let order: Vec<u32> = (0..1 << 16).map(|_| perm[zipf.sample(&mut rng) as usize]).collect();
        orders.push((keys, order));
    }

    let kinds = [ValueKind::Owned, ValueKind::Arc];
    let mut cells: Vec<(Variant, ValueKind, usize, usize, Histogram<u64>)> = Vec::new();
    for &(v, _) in &stores {
        for kind in kinds {
            for (keys, _) in &orders {
                for &t in &options.threads {
                    cells.push((v, kind, *keys, t, histogram()));
                }
            }
        }
    }
    let store_of = |v: Variant| &stores.iter().find(|(s, _)| *s == v).expect("every latency variant has a store").1;
    let order_of = |keys: usize| &orders.iter().find(|(k, _)| *k == keys).expect("every key set has an order").1;
    let keys_of = |kind: ValueKind| if kind == ValueKind::Owned { &owned_keys } else { &arc_keys };
    // Warm-up: caches, branch predictors, the allocator's per-thread state.
    for (v, kind, keys, _, _) in &cells {
        read_cell(store_of(*v), keys_of(*kind), order_of(*keys), 2, 2, options.batch, *kind)?;
    }
    let bar = progress(options.rounds as u64, "l1-store latency rounds");
    let started = Instant::now();
    let mut rounds = 0;
    for round in 0..options.rounds {
        // Rotate the order of the cells so that none always runs first or last.
        let len = cells.len();
        for c in 0..len {
            let (v, kind, keys, t, h) = &mut cells[(c + round) % len];
            let sample =
                read_cell(store_of(*v), keys_of(*kind), order_of(*keys), *t, options.batches, options.batch, *kind)?;
            h.add(sample)?;
        }
        rounds += 1;
        bar.inc(1);
        if started.elapsed() > options.max_duration {
            break;
        }
    }
    bar.finish_and_clear();
    let out = cells
        .into_iter()
        .map(|(variant, value, keys, threads, h)| Latency { variant, value, keys, threads, per_hit: Summary::of(&h) })
        .collect();
    Ok((out, rounds))
}

/// `threads` readers started together, each timing `batches` batches of `batch` hits.
fn read_cell(
    store: &Store,
    keys: &[Arc<str>],
    order: &[u32],
    threads: usize,
    batches: usize,
    batch: usize,
    kind: ValueKind,
) -> anyhow::Result<Histogram<u64>> {
    let barrier = Barrier::new(threads);
    let results: Vec<anyhow::Result<Histogram<u64>>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let barrier = &barrier;
                s.spawn(move || -> anyhow::Result<Histogram<u64>> {
                    let mut h = histogram();
                    let mut pos = t * order.len() / threads;
                    barrier.wait();
                    for _ in 0..batches {
                        let start = Instant::now();
                        let mut misses = 0u32;
                        for _ in 0..batch {
                            let key = &keys[order[pos] as usize];
                            pos = if pos + 1 == order.len() { 0 } else { pos + 1 };
                            let found = match kind {
                                ValueKind::Owned => std::hint::black_box(hit::<Profile>(store, key)).is_some(),
                                ValueKind::Arc => std::hint::black_box(hit::<Arc<Profile>>(store, key)).is_some(),
                            };
                            misses += u32::from(!found);
                        }
                        let ns = start.elapsed().as_nanos() as u64;
                        anyhow::ensure!(misses == 0, "{misses} reads missed: the benchmark would time misses");
                        h.record((ns / batch.max(1) as u64).max(1))?;
                    }
                    Ok(h)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_else(|_| Err(anyhow::anyhow!("a reader panicked")))).collect()
    });
    let mut all = histogram();
    for h in results {
        all.add(h?)?;
    }
    Ok(all)
}

// ---- Hit ratio ----

fn ratios(options: &Options) -> anyhow::Result<(u64, Vec<Ratio>)> {
    let k = options.trace_keys;
    let keys: Vec<Arc<str>> = (0..k).map(|i| key_of("trace", i)).collect();
    let mut values: Vec<(Shared, usize)> = Vec::with_capacity(k as usize);
    for i in 0..k {
        let p = Profile::sample(i);
        let len = rmp_serde::to_vec_named(&p)?.len();
        let value: Shared = Arc::new(p);
        values.push((value, len));
    }
    let working_set: u64 = keys.iter().zip(&values).map(|(key, (_, len))| weight(key, *len)).sum();

    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let zipf = Zipf::new(k, options.exponent)?;
    let mut perm: Vec<u32> = (0..k as u32).collect();
    perm.shuffle(&mut rng);
    let ranks: Vec<u64> = (0..options.trace_len).map(|_| zipf.sample(&mut rng)).collect();
    let still: Vec<u32> = ranks.iter().map(|&r| perm[r as usize]).collect();
    // Four phases; each moves the ranks by a quarter of the keys, so the hot set changes.
    let len = options.trace_len.max(1);
    let moving: Vec<u32> =
        ranks.iter().enumerate().map(|(i, &r)| perm[((r + (i * 4 / len) as u64 * (k / 4)) % k) as usize]).collect();

    let mut runs: Vec<(&'static str, f64, &[u32])> = options.budgets.iter().map(|&b| ("zipf", b, &still[..])).collect();
    let largest = options.budgets.iter().copied().fold(0.0, f64::max);
    runs.push(("moving", largest, &moving[..]));
    let bar = progress((runs.len() * Variant::RATIO.len()) as u64, "l1-store hit-ratio replays");
    let mut out = Vec::new();
    for (trace, fraction, requests) in runs {
        let budget = (working_set as f64 * fraction) as u64;
        for variant in Variant::RATIO {
            let store = Store::new(variant, budget, budget / 16);
            let warm = requests.len() / 4;
            let sample_every = (requests.len() / 100).max(1);
            let (mut hits, mut gets, mut peak) = (0u64, 0u64, 0u64);
            let mut sampling = Duration::ZERO;
            let started = Instant::now();
            for (i, &id) in requests.iter().enumerate() {
                let key = &keys[id as usize];
                let found = hit::<Profile>(&store, key).is_some();
                if !found {
                    let (value, len) = &values[id as usize];
                    store.insert(key, entry(key, value.clone(), *len));
                }
                if i >= warm {
                    gets += 1;
                    hits += u64::from(found);
                }
                if i % sample_every == sample_every - 1 {
                    let t = Instant::now();
                    peak = peak.max(store.resident_bytes());
                    sampling += t.elapsed();
                }
            }
            let elapsed = started.elapsed().saturating_sub(sampling);
            out.push(Ratio {
                variant,
                trace,
                budget_fraction: fraction,
                budget_bytes: budget,
                hit_ratio: round4(hits as f64 / gets.max(1) as f64),
                ns_per_request: (elapsed.as_nanos() as f64 / requests.len().max(1) as f64).round(),
                peak_over_budget: round4(peak as f64 / budget.max(1) as f64),
            });
            bar.inc(1);
        }
    }
    bar.finish_and_clear();
    Ok((working_set, out))
}

// ---- Report ----

fn trace_label(r: &Ratio) -> String {
    format!("{} {:.0}%", r.trace, r.budget_fraction * 100.0)
}

fn readers(t: usize) -> String {
    format!("{t} reader{}", if t == 1 { "" } else { "s" })
}

/// The distinct thread counts measured, ascending.
fn thread_counts(f: &Figures) -> Vec<usize> {
    let mut t: Vec<usize> = f.latency.iter().map(|l| l.threads).collect();
    t.sort_unstable();
    t.dedup();
    t
}

fn find(f: &Figures, v: Variant, kind: ValueKind, keys: usize, threads: usize) -> Option<&Latency> {
    f.latency.iter().find(|l| l.variant == v && l.value == kind && l.keys == keys && l.threads == threads)
}

/// The report: the text table, and charts of the p50s and hit ratios. Each store keeps its
/// colour in every chart (the latency variants come first in [`Variant::RATIO`]).
pub fn report(f: &Figures, command: &[String]) -> anyhow::Result<Report> {
    let mut report = Report::new("l1-store", command);
    report.figures(f)?.text(&format!(
        "The stores that could hold L1, measured without Redis. Hit latency: key sets of {:?} keys read in a Zipf ({}) order, {} B profiles as MessagePack (entry weight {} B), batches of {} gets, {} interleaved rounds, on {} cores. Hit ratio: cache-aside replays of {} requests over {} keys, working set {:.1} MB.",
        f.key_sets,
        f.exponent,
        f.value_bytes,
        f.entry_weight,
        f.batch,
        f.rounds,
        f.cores,
        f.trace_len,
        f.trace_keys,
        f.working_set_bytes as f64 / 1e6
    ));
    report.preformatted(&render(f));
    let threads = thread_counts(f);
    let categories: Vec<(usize, usize)> =
        f.key_sets.iter().flat_map(|&k| threads.iter().map(move |&t| (k, t))).collect();
    let labels: Vec<String> = categories.iter().map(|(k, t)| format!("{k} keys, {t}r")).collect();
    for kind in [ValueKind::Owned, ValueKind::Arc] {
        let series = Variant::LATENCY
            .iter()
            .map(|&v| {
                let values = categories
                    .iter()
                    .map(|&(k, t)| find(f, v, kind, k, t).map_or(f64::NAN, |l| l.per_hit.p50_ns as f64))
                    .collect();
                (v.name().to_owned(), values)
            })
            .collect();
        let title = match kind {
            ValueKind::Owned => "L1 store hit p50, owned Profile (target <= 250 ns)",
            ValueKind::Arc => "L1 store hit p50, Arc<Profile> (target <= 100 ns)",
        };
        report.bar_chart(Chart::new(title, "keys read, concurrent readers", "ns per hit"), &labels, series);
    }
    let mut traces: Vec<String> = f.ratios.iter().map(trace_label).collect();
    traces.dedup();
    let series = Variant::RATIO
        .iter()
        .map(|&v| {
            let values = traces
                .iter()
                .map(|t| {
                    f.ratios.iter().find(|r| r.variant == v && &trace_label(r) == t).map_or(f64::NAN, |r| r.hit_ratio)
                })
                .collect();
            (v.name().to_owned(), values)
        })
        .collect();
    let mut chart = Chart::new("Hit ratio, same traces", "trace and budget (share of the working set)", "hit ratio");
    chart.y_range = Some((0.0, 1.0));
    report.bar_chart(chart, &traces, series);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let threads = thread_counts(f);
    let mut out = format!(
        "l1-store: the store's share of an L1 hit, per get (batch means of {} gets), p50 / p99; {} rounds, {} cores\n",
        f.batch, f.rounds, f.cores
    );
    for &keys in &f.key_sets {
        out += &format!("\n{keys} keys, Zipf {} order\n{:<16} {:<6}", f.exponent, "store", "value");
        for &t in &threads {
            out += &format!(" {:>19}", readers(t));
        }
        out.push('\n');
        for v in Variant::LATENCY {
            for kind in [ValueKind::Owned, ValueKind::Arc] {
                out += &format!("{:<16} {:<6}", v.name(), if kind == ValueKind::Owned { "owned" } else { "Arc" });
                for &t in &threads {
                    let cell = find(f, v, kind, keys, t).map_or_else(
                        || "-".to_owned(),
                        |l| format!("{} / {}", human_ns(l.per_hit.p50_ns as f64), human_ns(l.per_hit.p99_ns as f64)),
                    );
                    out += &format!(" {cell:>19}");
                }
                out.push('\n');
            }
        }
    }
    out += &format!(
        "\nHit ratio: cache-aside replay, {} requests over {} keys (Zipf {}), working set {:.1} MB, first quarter not counted\n{:<20} {:<12} {:>10} {:>9} {:>12} {:>12}\n",
        f.trace_len,
        f.trace_keys,
        f.exponent,
        f.working_set_bytes as f64 / 1e6,
        "store",
        "trace",
        "budget",
        "hit ratio",
        "ns/request",
        "peak/budget"
    );
    for r in &f.ratios {
        out += &format!(
            "{:<20} {:<12} {:>10} {:>8.1}% {:>12.0} {:>12.3}\n",
            r.variant.name(),
            trace_label(r),
            format!("{:.2} MB", r.budget_bytes as f64 / 1e6),
            r.hit_ratio * 100.0,
            r.ns_per_request,
            r.peak_over_budget
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_run_measures_every_cell_and_holds_the_budget() -> anyhow::Result<()> {
        let options = Options {
            key_sets: vec![10, 500],
            batch: 50,
            batches: 2,
            rounds: 2,
            threads: vec![1, 2],
            trace_keys: 2_000,
            trace_len: 20_000,
            budgets: vec![0.1],
            ..Options::default()
        };
        let f = run(&options)?;
        assert_eq!(f.latency.len(), Variant::LATENCY.len() * 2 * 2 * 2);
        assert!(f.latency.iter().all(|l| l.per_hit.samples > 0));
        assert_eq!(f.ratios.len(), Variant::RATIO.len() * 2);
        for r in &f.ratios {
            assert!(r.hit_ratio > 0.2 && r.hit_ratio < 1.0, "{r:?}");
        }
        for quick in f.ratios.iter().filter(|r| matches!(r.variant, Variant::QuickCache | Variant::QuickCacheLru)) {
            assert!(quick.peak_over_budget <= 1.0, "quick_cache bounds its weight at every insert");
        }
        let text = render(&f);
        assert!(text.contains("quick_cache") && text.contains("moving"));
        let html = report(&f, &["strata".into()])?.html();
        assert!(html.contains("<svg"));
        Ok(())
    }
}
