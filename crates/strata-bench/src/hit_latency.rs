//! `strata bench --scenario hit-latency`: the cost of a cache hit in each tier, against a raw
//! redis-rs GET of the same bytes, measured in one run with the variants interleaved.
//!
//! - **L1 hit**: `Cache::get` of a key held in the in-process tier. Timed in batches (one
//!   `Instant` pair per batch) because a single hit is shorter than the clock's own overhead.
//!   Measured for an owned `Profile` (the hit clones it: a handful of allocations) and for
//!   `Arc<Profile>` (the hit is a reference-count increment).
//! - **L2 hit**: `Cache::get` on a cache with L1 disabled: GET, envelope check, decode.
//! - **L2 hit, L1 on**: the L1-miss path of a cache with L1 enabled: GET and PTTL in one
//!   pipeline (PTTL bounds the L1 copy's lifetime), decode, L1 insert. L1 is cleared before each
//!   timed call, outside the timing.
//! - **raw GET**: redis-rs's multiplexed connection (cluster connection on a cluster) fetching
//!   the same stored bytes, no decoding: the floor any Redis cache sits on.
//!
//! L2 and raw GETs are measured in pairs, back to back, alternating which goes first, so drift in
//! machine load affects both alike; the overhead is reported as ratios of the two distributions
//! and as the median of the per-pair ratios.
//!
//! **Throughput** (after the latency rounds): `tasks` concurrent tokio tasks in this process read
//! `keys` distinct keys in turn for a fixed time, first through `Cache::get` on the L1-less cache
//! (every call an L2 hit), then as raw redis-rs GETs of the same keys on one shared connection of
//! the same type (cluster connection on a cluster, multiplexed otherwise); rounds alternate which
//! goes first. Then `redis-benchmark -c 50 -t get` runs against the same deployment: the ceiling
//! of the deployment seen from this machine (see [`crate::redis_benchmark`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionLike;
use serde::Serialize;
use strata::{Cache, Key, KeySchema, Ttl};

use crate::redis_benchmark;

use crate::stats::{Summary, histogram};
use crate::workload::{Layout, Profile, Target, progress};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Interleaved rounds.
    pub rounds: usize,
    /// Timed Redis GETs per variant per round.
    pub ops_per_round: usize,
    /// L1 hits per timed batch.
    pub l1_batch: usize,
    /// Reader thread counts of the concurrent L1-hit figures (empty: none).
    pub l1_readers: Vec<usize>,
    /// Stop early (after the current round) once this much time has passed.
    pub max_duration: Duration,
    /// The throughput variant.
    pub throughput: ThroughputOptions,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 30,
            ops_per_round: 1000,
            l1_batch: 1000,
            l1_readers: vec![1, 2, 8],
            max_duration: Duration::from_secs(120),
            throughput: ThroughputOptions::default(),
        }
    }
}

/// Settings of the throughput variant.
#[derive(Debug, Clone)]
pub struct ThroughputOptions {
    /// Rounds, each one phase of Strata and one of raw GETs (0: no throughput variant).
    pub rounds: usize,
    /// Length of one phase.
    pub phase: Duration,
    /// Concurrent tasks.
    pub tasks: usize,
    /// Distinct keys the tasks read in turn.
    pub keys: usize,
    /// Run `redis-benchmark -c 50 -t get` after the rounds.
    pub redis_benchmark: bool,
}

impl Default for ThroughputOptions {
    fn default() -> Self {
        Self { rounds: 4, phase: Duration::from_secs(3), tasks: 64, keys: 1000, redis_benchmark: true }
    }
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where Redis ran.
    pub layout: Layout,
    /// Rounds completed.
    pub rounds: usize,
    /// Size of the stored envelope, in bytes.
    pub value_bytes: usize,
    /// Per-hit latency of L1 for an owned value (batch means).
    pub l1_hit: Summary,
    /// Per-hit latency of L1 for an `Arc` value (batch means).
    pub l1_hit_arc: Summary,
    /// L1 hits with concurrent reader threads, per value kind and thread count.
    pub l1_concurrent: Vec<L1Concurrent>,
    /// The machine's cores (more reader threads than cores take turns).
    pub cores: usize,
    /// Per-call latency of an L2 hit.
    pub l2_hit: Summary,
    /// Per-call latency of an L2 hit on a cache with L1 on (the L1-miss path).
    pub l2_hit_l1_on: Summary,
    /// Per-call latency of a raw redis-rs GET.
    pub raw_get: Summary,
    /// L2-hit p50 over raw-GET p50, minus one (0.05 = 5 % slower).
    pub l2_overhead_p50: f64,
    /// Same, on the means.
    pub l2_overhead_mean: f64,
    /// Same, on p99.
    pub l2_overhead_p99: f64,
    /// Median over all pairs of (L2-hit time / raw-GET time) - 1: the least noise-sensitive figure.
    pub l2_overhead_paired_median: f64,
    /// Same pairing for the L1-miss path of an L1-enabled cache.
    pub l2_l1_on_overhead_paired_median: f64,
    /// L2-hit throughput against raw GETs (absent when its rounds are 0).
    pub throughput: Option<Throughput>,
}

/// L1 hits of `Cache::get` from concurrent threads.
#[derive(Debug, Clone, Serialize)]
pub struct L1Concurrent {
    /// Reader threads, started together.
    pub readers: usize,
    /// `owned` (the 7-field profile, cloned) or `arc` (`Arc<Profile>`).
    pub value: &'static str,
    /// Per hit (batch means, every thread's batches).
    pub per_hit: Summary,
}

/// Distinct keys the concurrent readers read in turn (each thread from its own place).
const L1_READER_KEYS: usize = 100;

/// Timed batches per reader thread per cell of the concurrent L1-hit figures.
const L1_READER_BATCHES: usize = 200;

/// The concurrent L1-hit figures: for each thread count, owned then `Arc`, every thread on its
/// own current-thread runtime (an L1 hit does not wait), timing batches of `batch` gets.
fn l1_concurrent(
    cache: &Cache,
    owned: &[Key],
    arc: &[Key],
    readers: &[usize],
    batch: usize,
) -> anyhow::Result<Vec<L1Concurrent>> {
    let mut out = Vec::new();
    for &threads in readers {
        for (value, keys) in [("owned", owned), ("arc", arc)] {
            let before = cache.metrics().total();
            // A spinning barrier: threads woken from a sleeping one start up to a millisecond
            // apart, and would not read at once.
            let arrived = std::sync::atomic::AtomicUsize::new(0);
            let barrier = || {
                arrived.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
                while arrived.load(std::sync::atomic::Ordering::Acquire) < threads {
                    std::thread::yield_now();
                }
            };
            let samples = std::thread::scope(|scope| {
                let handles: Vec<_> = (0..threads)
                    .map(|t| {
                        let (barrier, cache) = (&barrier, cache.clone());
                        scope.spawn(move || -> anyhow::Result<Vec<u64>> {
                            pin_to_core(t);
                            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build();
                            // Every thread reaches the barrier, or the others would wait forever.
                            let rt = rt.inspect_err(|_| {
                                barrier();
                            })?;
                            rt.block_on(async {
                                let mut pos = t * keys.len() / threads;
                                let mut samples = Vec::with_capacity(L1_READER_BATCHES);
                                barrier();
                                for _ in 0..L1_READER_BATCHES {
                                    let started = Instant::now();
                                    for _ in 0..batch {
                                        let key = &keys[pos % keys.len()];
                                        pos += 1;
                                        let hit = if value == "arc" {
                                            cache.get::<Arc<Profile>>(key).await?.is_some()
                                        } else {
                                            cache.get::<Profile>(key).await?.is_some()
                                        };
                                        anyhow::ensure!(hit, "an L1 read missed: the figure would measure Redis");
                                    }
                                    samples.push((started.elapsed().as_nanos() as u64 / batch.max(1) as u64).max(1));
                                }
                                Ok(samples)
                            })
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().map_err(|_| anyhow::anyhow!("an L1 reader panicked"))?)
                    .collect::<anyhow::Result<Vec<_>>>()
            })?;
            // `get` falls through to Redis on an L1 miss: only L1's own counters tell.
            let after = cache.metrics().total();
            let expected = (threads * L1_READER_BATCHES * batch) as u64;
            anyhow::ensure!(
                after.l1_misses == before.l1_misses && after.l1_hits - before.l1_hits == expected,
                "{} L1 misses and {} hits of {expected} reads: the figure would not be L1's",
                after.l1_misses - before.l1_misses,
                after.l1_hits - before.l1_hits
            );
            let mut h = histogram();
            for sample in samples.into_iter().flatten() {
                h.record(sample)?;
            }
            out.push(L1Concurrent { readers: threads, value, per_hit: Summary::of(&h) });
        }
    }
    Ok(out)
}

/// Pins reader thread `t` to core `t` modulo the cores this process may use, so that N readers
/// run on N cores at once where there are N (the scheduler could otherwise put two on one core
/// in turn, and the figure would not show what reading one key from two cores costs). Best
/// effort: where pinning is refused, the thread runs wherever the scheduler puts it.
fn pin_to_core(t: usize) {
    #[cfg(target_os = "linux")]
    {
        use nix::sched::{CpuSet, sched_getaffinity, sched_setaffinity};
        use nix::unistd::Pid;
        let Ok(allowed) = sched_getaffinity(Pid::from_raw(0)) else { return };
        let cores: Vec<usize> = (0..CpuSet::count()).filter(|&c| allowed.is_set(c).unwrap_or(false)).collect();
        if cores.is_empty() {
            return;
        }
        let mut one = CpuSet::new();
        if one.set(cores[t % cores.len()]).is_ok() {
            let _ = sched_setaffinity(Pid::from_raw(0), &one);
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = t;
}

/// L2-hit throughput (L1 off) against raw redis-rs GETs, concurrent tasks in one process.
#[derive(Debug, Clone, Serialize)]
pub struct Throughput {
    /// Concurrent tasks.
    pub tasks: usize,
    /// Distinct keys read.
    pub keys: usize,
    /// Length of one phase, in seconds.
    pub phase_seconds: f64,
    /// Each round's figures, in order.
    pub rounds: Vec<ThroughputRound>,
    /// Strata L2 hits per second over all rounds (calls / time).
    pub strata_ops_per_sec: f64,
    /// Raw GETs per second over all rounds.
    pub raw_ops_per_sec: f64,
    /// `strata_ops_per_sec / raw_ops_per_sec`.
    pub ratio: f64,
    /// Median of the per-round ratios.
    pub ratio_median: f64,
    /// On a cluster, raw GETs per second over one multiplexed connection per master, each key
    /// sent to its master's: the connection type Strata's L2 hits take there (its own
    /// connection to each master, rather than redis-rs's cluster connection).
    pub raw_masters_ops_per_sec: Option<f64>,
    /// `strata_ops_per_sec / raw_masters_ops_per_sec`.
    pub ratio_masters: Option<f64>,
    /// The target for `ratio` (issue 16).
    pub target_ratio: f64,
    /// `redis-benchmark -c 50 -t get` on the same deployment (absent when not asked for).
    pub redis_benchmark: Option<redis_benchmark::Outcome>,
}

/// One round of the throughput variant.
#[derive(Debug, Clone, Serialize)]
pub struct ThroughputRound {
    /// Which phase ran first: "strata" or "raw".
    pub first: &'static str,
    /// Strata L2 hits per second in this round.
    pub strata_ops_per_sec: f64,
    /// Raw GETs per second in this round.
    pub raw_ops_per_sec: f64,
    /// Their ratio.
    pub ratio: f64,
    /// Raw GETs per second over per-master connections in this round (cluster only; this phase
    /// runs third in every round).
    pub raw_masters_ops_per_sec: Option<f64>,
}

/// Runs the benchmark against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Report> {
    let key = KeySchema::new("bench", 1)?.key("profile", "1")?;
    let value = Profile::sample(1);
    let with_l1 = target
        .cache_builder()
        .require_redis(true)
        .l1_max_ttl(Duration::from_secs(3600))
        .build()
        .await
        .context("connecting the cache")?;
    let l2_only = target.cache_builder().require_redis(true).l1_capacity_bytes(0).build().await?;
    with_l1.set(&key, &value, Ttl::Long).await?;
    let arc_key = KeySchema::new("bench", 1)?.key("profile", "arc")?;
    with_l1.set(&arc_key, &std::sync::Arc::new(value.clone()), Ttl::Long).await?;
    let mut raw = raw_connection(target).await?;
    let stored: Vec<u8> = redis::cmd("GET").arg(key.as_str()).query_async(&mut raw).await?;

    // Warm-up: connections, caches, allocator, branch predictors.
    for _ in 0..2000 {
        let _: Option<Profile> = with_l1.get(&key).await?;
        let _: Option<Profile> = l2_only.get(&key).await?;
        let _: Vec<u8> = redis::cmd("GET").arg(key.as_str()).query_async(&mut raw).await?;
    }

    let (mut l1_h, mut l1_arc_h, mut l2_h, mut raw_h) = (histogram(), histogram(), histogram(), histogram());
    let mut l2_on_h = histogram();
    let mut pair_ratios = Vec::with_capacity(options.rounds * options.ops_per_round);
    let mut on_ratios = Vec::with_capacity(options.rounds * options.ops_per_round);
    let l1_miss = target.cache_builder().require_redis(true).build().await?;
    let bar = progress(options.rounds as u64, "hit-latency rounds");
    let started = Instant::now();
    let mut rounds = 0;
    let batches = options.ops_per_round / options.l1_batch.max(1) + 1;
    for _ in 0..options.rounds {
        for _ in 0..batches {
            let t = Instant::now();
            for _ in 0..options.l1_batch {
                std::hint::black_box(with_l1.get::<Profile>(&key).await?);
            }
            l1_h.record((t.elapsed().as_nanos() as u64 / options.l1_batch.max(1) as u64).max(1))?;
            let t = Instant::now();
            for _ in 0..options.l1_batch {
                std::hint::black_box(with_l1.get::<std::sync::Arc<Profile>>(&arc_key).await?);
            }
            l1_arc_h.record((t.elapsed().as_nanos() as u64 / options.l1_batch.max(1) as u64).max(1))?;
        }
        for i in 0..options.ops_per_round {
            let mut ns = [0u64; 3];
            // Rotate which variant goes first so none always runs on a warmer path.
            for step in 0..3 {
                let variant = (i + step) % 3;
                if variant == 2 {
                    l1_miss.clear_l1();
                }
                let t = Instant::now();
                match variant {
                    0 => {
                        let v: Option<Profile> = l2_only.get(&key).await?;
                        anyhow::ensure!(v.is_some(), "the L2 read missed: the benchmark would measure the wrong path");
                    }
                    1 => {
                        let v: Vec<u8> = redis::cmd("GET").arg(key.as_str()).query_async(&mut raw).await?;
                        std::hint::black_box(v);
                    }
                    _ => {
                        let v: Option<Profile> = l1_miss.get(&key).await?;
                        anyhow::ensure!(v.is_some(), "the L2 read missed");
                    }
                }
                ns[variant] = t.elapsed().as_nanos() as u64;
            }
            l2_h.record(ns[0])?;
            raw_h.record(ns[1])?;
            l2_on_h.record(ns[2])?;
            pair_ratios.push(ns[0] as f64 / ns[1].max(1) as f64);
            on_ratios.push(ns[2] as f64 / ns[1].max(1) as f64);
        }
        rounds += 1;
        bar.inc(1);
        if started.elapsed() > options.max_duration {
            break;
        }
    }
    bar.finish_and_clear();
    let misses = l2_only.metrics().total().l2_misses;
    anyhow::ensure!(misses == 0, "{misses} L2 reads missed during the run");

    let l1_concurrent = if options.l1_readers.is_empty() {
        Vec::new()
    } else {
        let schema = KeySchema::new("bench", 1)?;
        let (mut owned, mut arc) = (Vec::new(), Vec::new());
        for i in 0..L1_READER_KEYS {
            let (o, a) = (schema.key("profile", &format!("l1-{i}"))?, schema.key("profile", &format!("l1-arc-{i}"))?);
            let p = Profile::sample(i as u64);
            with_l1.set(&o, &p, Ttl::Long).await?;
            with_l1.set(&a, &Arc::new(p), Ttl::Long).await?;
            owned.push(o);
            arc.push(a);
        }
        let cache = with_l1.clone();
        let (readers, batch) = (options.l1_readers.clone(), options.l1_batch);
        tokio::task::spawn_blocking(move || l1_concurrent(&cache, &owned, &arc, &readers, batch)).await??
    };
    let (l1_hit, l2_hit, raw_get) = (Summary::of(&l1_h), Summary::of(&l2_h), Summary::of(&raw_h));
    let paired_median = median(&mut pair_ratios);
    let on_median = median(&mut on_ratios);
    let throughput = if options.throughput.rounds == 0 {
        None
    } else {
        Some(throughput(target, &l2_only, &raw, &value, stored.len(), &options.throughput).await?)
    };
    Ok(Report {
        throughput,
        layout: target.layout,
        rounds,
        value_bytes: stored.len(),
        l1_hit,
        l1_hit_arc: Summary::of(&l1_arc_h),
        l1_concurrent,
        cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
        l2_overhead_paired_median: paired_median - 1.0,
        l2_l1_on_overhead_paired_median: on_median - 1.0,
        l2_hit_l1_on: Summary::of(&l2_on_h),
        l2_hit,
        raw_get,
        l2_overhead_p50: l2_hit.p50_ns as f64 / raw_get.p50_ns as f64 - 1.0,
        l2_overhead_mean: l2_hit.mean_ns / raw_get.mean_ns - 1.0,
        l2_overhead_p99: l2_hit.p99_ns as f64 / raw_get.p99_ns as f64 - 1.0,
    })
}

/// The throughput variant: alternating timed phases of Strata L2 hits and raw GETs, then
/// `redis-benchmark`.
async fn throughput(
    target: &Target,
    cache: &Cache,
    raw: &RawConn,
    value: &Profile,
    value_bytes: usize,
    options: &ThroughputOptions,
) -> anyhow::Result<Throughput> {
    let schema = KeySchema::new("bench", 1)?;
    let keys: Vec<Key> =
        (0..options.keys.max(1)).map(|i| schema.key("profile", &format!("tp-{i}"))).collect::<Result<_, _>>()?;
    for key in &keys {
        cache.set(key, value, Ttl::Long).await?;
    }
    let masters = raw_masters(target, raw, &keys).await?;
    let keys = Arc::new(keys);
    let errors_before = cache.metrics().l2_errors;
    let short = options.phase.min(Duration::from_millis(500));
    // Warm-up: every task's first calls, connections to every node.
    phase(Reader::Strata(cache.clone()), &keys, options.tasks, short).await?;
    phase(Reader::Raw(raw.clone()), &keys, options.tasks, short).await?;
    if let Some(m) = &masters {
        phase(Reader::RawMasters(m.clone()), &keys, options.tasks, short).await?;
    }

    let bar = progress(options.rounds as u64, "L2 throughput rounds");
    let mut rounds = Vec::with_capacity(options.rounds);
    let (mut strata_total, mut raw_total) = ((0u64, Duration::ZERO), (0u64, Duration::ZERO));
    let mut masters_total = (0u64, Duration::ZERO);
    let rate = |(ops, t): (u64, Duration)| ops as f64 / t.as_secs_f64().max(1e-9);
    for round in 0..options.rounds {
        let strata_first = round % 2 == 0;
        let mut got = [(0u64, Duration::ZERO); 2];
        for step in 0..2 {
            let strata = (step == 0) == strata_first;
            let reader = if strata { Reader::Strata(cache.clone()) } else { Reader::Raw(raw.clone()) };
            got[usize::from(!strata)] = phase(reader, &keys, options.tasks, options.phase).await?;
        }
        let on_masters = match &masters {
            Some(m) => Some(phase(Reader::RawMasters(m.clone()), &keys, options.tasks, options.phase).await?),
            None => None,
        };
        let (s, r) = (rate(got[0]), rate(got[1]));
        rounds.push(ThroughputRound {
            first: if strata_first { "strata" } else { "raw" },
            strata_ops_per_sec: s,
            raw_ops_per_sec: r,
            ratio: s / r.max(1e-9),
            raw_masters_ops_per_sec: on_masters.map(rate),
        });
        strata_total = (strata_total.0 + got[0].0, strata_total.1 + got[0].1);
        raw_total = (raw_total.0 + got[1].0, raw_total.1 + got[1].1);
        if let Some((ops, t)) = on_masters {
            masters_total = (masters_total.0 + ops, masters_total.1 + t);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let errors = cache.metrics().l2_errors - errors_before;
    anyhow::ensure!(errors == 0, "{errors} Strata L2 reads failed during the throughput phases");

    let strata_ops_per_sec = strata_total.0 as f64 / strata_total.1.as_secs_f64().max(1e-9);
    let raw_ops_per_sec = raw_total.0 as f64 / raw_total.1.as_secs_f64().max(1e-9);
    let redis_benchmark = if options.redis_benchmark {
        let spinner = crate::workload::spinner("redis-benchmark -c 50 -t get");
        // About one phase long at the rate this process reached (redis-benchmark is usually faster).
        let requests = ((raw_ops_per_sec * options.phase.as_secs_f64() * 1.5) as u64).clamp(10_000, 5_000_000);
        let outcome = redis_benchmark::run_get(
            target,
            &redis_benchmark::Options {
                clients: 50,
                requests,
                keys: options.keys as u64,
                value_bytes,
                timeout: options.phase * 10 + Duration::from_secs(30),
            },
        )
        .await;
        spinner.finish_and_clear();
        Some(outcome)
    } else {
        None
    };
    let mut ratios: Vec<f64> = rounds.iter().map(|r| r.ratio).collect();
    let raw_masters_ops_per_sec = masters.is_some().then(|| rate(masters_total));
    Ok(Throughput {
        raw_masters_ops_per_sec,
        ratio_masters: raw_masters_ops_per_sec.map(|m| strata_ops_per_sec / m.max(1e-9)),
        tasks: options.tasks,
        keys: keys.len(),
        phase_seconds: options.phase.as_secs_f64(),
        ratio: strata_ops_per_sec / raw_ops_per_sec.max(1e-9),
        ratio_median: median(&mut ratios),
        strata_ops_per_sec,
        raw_ops_per_sec,
        rounds,
        target_ratio: 0.95,
        redis_benchmark,
    })
}

/// What one throughput phase reads through.
#[derive(Clone)]
enum Reader {
    Strata(Cache),
    Raw(RawConn),
    /// Key `i`'s master's connection at `i`.
    RawMasters(Arc<Vec<redis::aio::MultiplexedConnection>>),
}

/// On a cluster, a multiplexed connection to the master of each of `keys` (one per master,
/// shared), found once with `CLUSTER SLOTS` and `CLUSTER KEYSLOT`; `None` elsewhere.
async fn raw_masters(
    target: &Target,
    raw: &RawConn,
    keys: &[Key],
) -> anyhow::Result<Option<Arc<Vec<redis::aio::MultiplexedConnection>>>> {
    let RawConn::Cluster(cluster) = raw else { return Ok(None) };
    // Each master is reached as the first seed is: its credentials, TLS or not.
    let seed = target.urls().into_iter().next().context("no seed url")?;
    let seed = redis::IntoConnectionInfo::into_connection_info(seed.as_str())?;
    let mut cluster = cluster.clone();
    let slots: Vec<Vec<redis::Value>> = redis::cmd("CLUSTER").arg("SLOTS").query_async(&mut cluster).await?;
    // (first slot, last slot, host, port) of each range's master.
    let mut ranges = Vec::new();
    for range in slots {
        let [first, last, master, ..] = range.as_slice() else { anyhow::bail!("CLUSTER SLOTS: a short entry") };
        let (first, last): (u16, u16) = (redis::from_redis_value_ref(first)?, redis::from_redis_value_ref(last)?);
        let (host, port): (String, u16) = match redis::from_redis_value_ref::<Vec<redis::Value>>(master)?.as_slice() {
            [host, port, ..] => (redis::from_redis_value_ref(host)?, redis::from_redis_value_ref(port)?),
            _ => anyhow::bail!("CLUSTER SLOTS: a master without an address"),
        };
        ranges.push((first, last, host, port));
    }
    let mut conns: std::collections::HashMap<(String, u16), redis::aio::MultiplexedConnection> = Default::default();
    let mut out = Vec::with_capacity(keys.len());
    for key in keys {
        let slot: u16 = redis::cmd("CLUSTER").arg("KEYSLOT").arg(key.as_str()).query_async(&mut cluster).await?;
        let (_, _, host, port) = ranges
            .iter()
            .find(|(first, last, ..)| (*first..=*last).contains(&slot))
            .with_context(|| format!("no master serves slot {slot}"))?;
        let node = (host.clone(), *port);
        if !conns.contains_key(&node) {
            let addr = match seed.addr() {
                redis::ConnectionAddr::TcpTls { insecure, tls_params, .. } => redis::ConnectionAddr::TcpTls {
                    host: host.clone(),
                    port: *port,
                    insecure: *insecure,
                    tls_params: tls_params.clone(),
                },
                _ => redis::ConnectionAddr::Tcp(host.clone(), *port),
            };
            let conn = redis::Client::open(seed.clone().set_addr(addr))?.get_multiplexed_async_connection().await?;
            conns.insert(node.clone(), conn);
        }
        out.push(conns[&node].clone());
    }
    Ok(Some(Arc::new(out)))
}

/// `tasks` tasks reading `keys` in turn through `reader` for `length`: (calls completed, wall
/// time from the start until the last task has finished its last call). A miss or an error
/// fails the phase: it would measure another path.
async fn phase(
    reader: Reader,
    keys: &Arc<Vec<Key>>,
    tasks: usize,
    length: Duration,
) -> anyhow::Result<(u64, Duration)> {
    let started = Instant::now();
    let deadline = started + length;
    let handles: Vec<_> = (0..tasks.max(1))
        .map(|task| {
            let (mut reader, keys) = (reader.clone(), Arc::clone(keys));
            tokio::spawn(async move {
                let (mut ops, mut i) = (0u64, task);
                while Instant::now() < deadline {
                    let key = &keys[i % keys.len()];
                    let hit = match &mut reader {
                        Reader::Strata(cache) => cache.get::<Profile>(key).await?.is_some(),
                        Reader::Raw(conn) => {
                            let v: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query_async(conn).await?;
                            std::hint::black_box(v).is_some()
                        }
                        Reader::RawMasters(conns) => {
                            let mut conn = conns[i % keys.len()].clone();
                            let v: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query_async(&mut conn).await?;
                            std::hint::black_box(v).is_some()
                        }
                    };
                    anyhow::ensure!(hit, "{key} missed: the throughput phase would measure the wrong path");
                    ops += 1;
                    i += tasks;
                }
                anyhow::Ok(ops)
            })
        })
        .collect();
    let mut ops = 0;
    for handle in handles {
        ops += handle.await??;
    }
    Ok((ops, started.elapsed()))
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}

/// The raw redis-rs connection: multiplexed for one server, the cluster connection for a cluster.
pub(crate) async fn raw_connection(target: &Target) -> anyhow::Result<RawConn> {
    Ok(match &target.topology {
        strata::Topology::Cluster(seeds) => {
            RawConn::Cluster(redis::cluster::ClusterClient::new(seeds.clone())?.get_async_connection().await?)
        }
        _ => {
            let url = target.urls().into_iter().next().context("no url")?;
            RawConn::Single(redis::Client::open(url)?.get_multiplexed_async_connection().await?)
        }
    })
}

/// A cloneable raw redis-rs connection (clones share the multiplexed connection).
#[derive(Clone)]
pub(crate) enum RawConn {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl ConnectionLike for RawConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a redis::Cmd) -> redis::RedisFuture<'a, redis::Value> {
        match self {
            RawConn::Single(c) => c.req_packed_command(cmd),
            RawConn::Cluster(c) => c.req_packed_command(cmd),
        }
    }
    fn req_packed_commands<'a>(
        &'a mut self,
        p: &'a redis::Pipeline,
        offset: usize,
        count: usize,
    ) -> redis::RedisFuture<'a, Vec<redis::Value>> {
        match self {
            RawConn::Single(c) => c.req_packed_commands(p, offset, count),
            RawConn::Cluster(c) => c.req_packed_commands(p, offset, count),
        }
    }
    fn get_db(&self) -> i64 {
        0
    }
}

/// The report as a table.
pub fn render(report: &Report) -> String {
    use crate::stats::human_ns;
    let row = |name: &str, s: &Summary| {
        format!(
            "{name:<10} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
            human_ns(s.mean_ns),
            human_ns(s.p50_ns as f64),
            human_ns(s.p95_ns as f64),
            human_ns(s.p99_ns as f64),
            s.samples
        )
    };
    let mut out = format!(
        "hit latency on {:?} Redis, {} interleaved rounds, {}-byte value\n\n{:<10} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
        report.layout, report.rounds, report.value_bytes, "variant", "mean", "p50", "p95", "p99", "samples"
    );
    out += &row("L1 hit", &report.l1_hit);
    out += &row("L1 hit Arc", &report.l1_hit_arc);
    for c in &report.l1_concurrent {
        let name = format!("L1 {}{}t", if c.value == "arc" { "Arc " } else { "" }, c.readers);
        out += &row(&name, &c.per_hit);
    }
    out += &row("L2 hit", &report.l2_hit);
    out += &row("L2 L1-on", &report.l2_hit_l1_on);
    out += &row("raw GET", &report.raw_get);
    if !report.l1_concurrent.is_empty() {
        out += &format!(
            "L1 Nt: Cache::get from N reader threads at once, thread i pinned to core i mod {} (more threads than cores take turns)\n",
            report.cores
        );
    }
    out += &format!(
        "\nL2-hit overhead over raw GET: paired median {:+.1} %; p50 {:+.1} %, mean {:+.1} %, p99 {:+.1} % (target: <= +5 %)\nL1-miss path of an L1-enabled cache (GET+PTTL, L1 insert) over raw GET: paired median {:+.1} %\n",
        report.l2_overhead_paired_median * 100.0,
        report.l2_overhead_p50 * 100.0,
        report.l2_overhead_mean * 100.0,
        report.l2_overhead_p99 * 100.0,
        report.l2_l1_on_overhead_paired_median * 100.0
    );
    if let Some(t) = &report.throughput {
        out += &render_throughput(t);
    }
    out
}

/// The throughput variant as text: one line per round, the totals and the ratio, and
/// redis-benchmark's figure (or why there is none).
fn render_throughput(t: &Throughput) -> String {
    let mut out = format!(
        "\nL2-hit throughput, L1 off, {} tasks, {} keys, {} rounds of {:.1} s per variant\n{:<7} {:>6} {:>14} {:>14} {:>7}\n",
        t.tasks,
        t.keys,
        t.rounds.len(),
        t.phase_seconds,
        "round",
        "first",
        "Strata ops/s",
        "raw GET ops/s",
        "ratio"
    );
    if t.raw_masters_ops_per_sec.is_some() {
        out = out.trim_end().to_owned() + &format!(" {:>18}\n", "raw, per master");
    }
    for (i, r) in t.rounds.iter().enumerate() {
        out += &format!(
            "{:<7} {:>6} {:>14.0} {:>14.0} {:>6.3}x",
            i + 1,
            r.first,
            r.strata_ops_per_sec,
            r.raw_ops_per_sec,
            r.ratio
        );
        if let Some(m) = r.raw_masters_ops_per_sec {
            out += &format!(" {m:>18.0}");
        }
        out += "\n";
    }
    let ceiling = match &t.redis_benchmark {
        None => "redis-benchmark: not run".to_owned(),
        Some(rb) => match (rb.requests_per_sec, &rb.error) {
            (Some(rps), _) => format!(
                "redis-benchmark -c 50 GET: {rps:.0} req/s (p50 {:.3} ms, p99 {:.3} ms, {} hits; the deployment's ceiling without pipelining)",
                rb.p50_ms.unwrap_or(f64::NAN),
                rb.p99_ms.unwrap_or(f64::NAN),
                rb.hit_ratio.map_or("unknown".to_owned(), |h| format!("{:.1} %", h * 100.0))
            ),
            (None, Some(why)) => format!("redis-benchmark: {why}"),
            (None, None) => "redis-benchmark: no figure".to_owned(),
        },
    };
    out += &format!(
        "L2-hit throughput: Strata {:.0} ops/s, raw redis-rs GET {:.0} ops/s, ratio {:.3}x (median of rounds {:.3}x; target >= {:.2}x); {ceiling}\n",
        t.strata_ops_per_sec, t.raw_ops_per_sec, t.ratio, t.ratio_median, t.target_ratio
    );
    if let (Some(m), Some(ratio)) = (t.raw_masters_ops_per_sec, t.ratio_masters) {
        out += &format!(
            "Raw GETs over one connection per master (the connection type Strata's L2 hit uses on a cluster): {m:.0} ops/s; Strata / that: {ratio:.3}x\n"
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small() -> Options {
        Options {
            rounds: 1,
            ops_per_round: 20,
            l1_batch: 10,
            l1_readers: vec![1, 2],
            max_duration: Duration::from_secs(30),
            throughput: ThroughputOptions {
                rounds: 2,
                phase: Duration::from_millis(200),
                tasks: 8,
                keys: 16,
                redis_benchmark: true,
            },
        }
    }

    fn installed(program: &str) -> bool {
        std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
    }

    /// The throughput rounds alternate, count calls of both variants, and redis-benchmark either
    /// reads keys that exist or says why it did not run.
    async fn check(target: &Target) {
        let report = run(target, &small()).await.expect("hit-latency");
        let t = report.throughput.as_ref().expect("throughput rounds were asked for");
        assert_eq!(t.rounds.iter().map(|r| r.first).collect::<Vec<_>>(), ["strata", "raw"]);
        assert!(t.strata_ops_per_sec > 0.0 && t.raw_ops_per_sec > 0.0, "{t:?}");
        assert!((t.ratio - t.strata_ops_per_sec / t.raw_ops_per_sec).abs() < 1e-9);
        let cluster = matches!(target.topology, strata::Topology::Cluster(_));
        assert_eq!(t.raw_masters_ops_per_sec.is_some_and(|m| m > 0.0), cluster, "{t:?}");
        assert_eq!(t.rounds.iter().all(|r| r.raw_masters_ops_per_sec.is_some()), cluster, "{t:?}");
        let rb = t.redis_benchmark.as_ref().expect("redis-benchmark was asked for");
        if installed(redis_benchmark::PROGRAM) {
            assert!(rb.requests_per_sec.is_some_and(|r| r > 0.0), "{rb:?}");
            assert!(rb.hit_ratio.is_some_and(|h| h > 0.9), "its GETs find the keys it wrote: {rb:?}");
            assert!(rb.command.contains("-c 50") && rb.command.contains("-t get"), "{}", rb.command);
        } else {
            assert!(rb.error.as_deref().is_some_and(|e| e.contains("not installed")), "{rb:?}");
        }
        let cells: Vec<(usize, &str, u64)> =
            report.l1_concurrent.iter().map(|c| (c.readers, c.value, c.per_hit.samples)).collect();
        let batches = L1_READER_BATCHES as u64;
        assert_eq!(
            cells,
            [(1, "owned", batches), (1, "arc", batches), (2, "owned", 2 * batches), (2, "arc", 2 * batches)]
        );
        let text = render(&report);
        assert!(text.contains("L1 Arc 2t"), "{text}");
        assert!(text.contains("L2-hit throughput: Strata"), "{text}");
        assert!(text.contains("redis-benchmark"), "{text}");
        let json = serde_json::to_value(&report).expect("json");
        assert!(json["throughput"]["ratio"].is_number(), "{json}");
        assert!(json["throughput"]["redis_benchmark"].is_object(), "{json}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_on_a_standalone_server() {
        let redis = strata_cluster::RedisServer::start().expect("redis-server");
        check(&Target::external(vec![redis.url()]).expect("target")).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn throughput_on_a_cluster() {
        let cluster = strata_cluster::RedisCluster::start(3, 0).expect("cluster");
        let target = Target::external(cluster.seed_urls()).expect("target");
        assert_eq!(target.layout, crate::workload::Layout::Cluster);
        check(&target).await;
    }

    #[tokio::test]
    async fn no_throughput_rounds_no_throughput() {
        let redis = strata_cluster::RedisServer::start().expect("redis-server");
        let target = Target::external(vec![redis.url()]).expect("target");
        let options = Options { throughput: ThroughputOptions { rounds: 0, ..small().throughput }, ..small() };
        let report = run(&target, &options).await.expect("hit-latency");
        assert!(report.throughput.is_none());
        assert!(!render(&report).contains("L2-hit throughput"));
    }
}
