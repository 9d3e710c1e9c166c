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

use std::time::{Duration, Instant};

use anyhow::Context;
use redis::aio::ConnectionLike;
use serde::Serialize;
use strata::{KeySchema, Ttl};

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
    /// Stop early (after the current round) once this much time has passed.
    pub max_duration: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self { rounds: 30, ops_per_round: 1000, l1_batch: 1000, max_duration: Duration::from_secs(120) }
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

    let (l1_hit, l2_hit, raw_get) = (Summary::of(&l1_h), Summary::of(&l2_h), Summary::of(&raw_h));
    let paired_median = median(&mut pair_ratios);
    let on_median = median(&mut on_ratios);
    Ok(Report {
        layout: target.layout,
        rounds,
        value_bytes: stored.len(),
        l1_hit,
        l1_hit_arc: Summary::of(&l1_arc_h),
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
    out += &row("L2 hit", &report.l2_hit);
    out += &row("L2 L1-on", &report.l2_hit_l1_on);
    out += &row("raw GET", &report.raw_get);
    out += &format!(
        "\nL2-hit overhead over raw GET: paired median {:+.1} %; p50 {:+.1} %, mean {:+.1} %, p99 {:+.1} % (target: <= +10 %)\nL1-miss path of an L1-enabled cache (GET+PTTL, L1 insert) over raw GET: paired median {:+.1} %\n",
        report.l2_overhead_paired_median * 100.0,
        report.l2_overhead_p50 * 100.0,
        report.l2_overhead_mean * 100.0,
        report.l2_overhead_p99 * 100.0,
        report.l2_l1_on_overhead_paired_median * 100.0
    );
    out
}
