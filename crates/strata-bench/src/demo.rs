//! `strata demo`: cache-aside over a slow source, with and without the cache, on a local cluster.
//!
//! The source stands in for a database: a map of user profiles behind a fixed delay per query
//! (default 2 ms, like an indexed query on a busy database). The workload is the seed's: 80 %
//! reads and 20 % writes, keys drawn from a Zipf(0.99) distribution, a fixed number of
//! operations split over concurrent workers. Writes update the source, then delete the cached
//! key (cache-aside invalidation). The same operation sequence runs twice: against the source
//! alone, then through Strata.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use rand_distr::{Distribution, Zipf};
use serde::Serialize;
use strata::{Cache, KeySchema, Ttl};

use crate::stats::{Summary, histogram, human_ns};
use crate::workload::{Profile, Target, progress};

/// Settings of the demo workload.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct users.
    pub users: u64,
    /// Operations per pass.
    pub operations: u64,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Latency of one source query.
    pub source_delay: Duration,
    /// Fraction of operations that are reads.
    pub read_ratio: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            users: 10_000,
            operations: 40_000,
            concurrency: 32,
            source_delay: Duration::from_millis(2),
            read_ratio: 0.8,
        }
    }
}

/// The slow source: profiles behind a delay, with a query counter.
struct Source {
    rows: Mutex<HashMap<u64, Profile>>,
    delay: Duration,
    queries: AtomicU64,
}

impl Source {
    async fn read(&self, id: u64) -> Option<Profile> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        self.rows.lock().unwrap_or_else(|p| p.into_inner()).get(&id).cloned()
    }

    async fn write(&self, id: u64) {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(self.delay).await;
        let mut rows = self.rows.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = rows.get_mut(&id) {
            p.version += 1;
        }
    }
}

/// One pass's results.
#[derive(Debug, Clone, Serialize)]
pub struct Pass {
    /// Read latency.
    pub reads: Summary,
    /// Operations per second.
    pub throughput: f64,
    /// Queries that reached the source.
    pub source_queries: u64,
}

/// The demo's results.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Source alone.
    pub direct: Pass,
    /// Through Strata.
    pub cached: Pass,
    /// Fraction of cached reads answered by L1 or L2.
    pub hit_ratio: f64,
    /// L1 hits.
    pub l1_hits: u64,
    /// L2 hits.
    pub l2_hits: u64,
    /// Loader calls.
    pub loader_calls: u64,
    /// 1 - p50 cached / p50 direct.
    pub latency_reduction_p50: f64,
    /// 1 - p99 cached / p99 direct.
    pub latency_reduction_p99: f64,
}

#[derive(Clone, Copy)]
enum Op {
    Read(u64),
    Write(u64),
}

fn operations(options: &Options) -> anyhow::Result<Vec<Op>> {
    let zipf = Zipf::new(options.users as f64, 0.99)?;
    let mut rng = StdRng::seed_from_u64(42);
    Ok((0..options.operations)
        .map(|_| {
            let id = zipf.sample(&mut rng) as u64;
            if rand::Rng::random_bool(&mut rng, options.read_ratio) { Op::Read(id) } else { Op::Write(id) }
        })
        .collect())
}

/// Runs the demo against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Report> {
    let ops = Arc::new(operations(options)?);
    let source = || {
        Arc::new(Source {
            rows: Mutex::new((1..=options.users).map(|id| (id, Profile::sample(id))).collect()),
            delay: options.source_delay,
            queries: AtomicU64::new(0),
        })
    };
    let direct_source = source();
    let direct = pass(&ops, options.concurrency, "source only", None, direct_source.clone()).await?;
    let cache = target.cache_builder().require_redis(true).build().await?;
    let cached_source = source();
    let cached = pass(&ops, options.concurrency, "through strata", Some(cache.clone()), cached_source).await?;
    let total = cache.metrics().total();
    Ok(Report {
        latency_reduction_p50: 1.0 - cached.reads.p50_ns as f64 / direct.reads.p50_ns as f64,
        latency_reduction_p99: 1.0 - cached.reads.p99_ns as f64 / direct.reads.p99_ns as f64,
        direct,
        cached,
        hit_ratio: total.hit_ratio(),
        l1_hits: total.l1_hits,
        l2_hits: total.l2_hits,
        loader_calls: total.loader_calls,
    })
}

async fn pass(
    ops: &Arc<Vec<Op>>,
    concurrency: usize,
    label: &'static str,
    cache: Option<Cache>,
    source: Arc<Source>,
) -> anyhow::Result<Pass> {
    let bar = progress(ops.len() as u64, label);
    let next = Arc::new(AtomicU64::new(0));
    let schema = KeySchema::new("demo", 1)?;
    let started = Instant::now();
    let workers = (0..concurrency).map(|_| {
        let (ops, next, cache, source, schema, bar) =
            (ops.clone(), next.clone(), cache.clone(), source.clone(), schema.clone(), bar.clone());
        tokio::spawn(async move {
            let mut reads = histogram();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                let Some(op) = ops.get(i).copied() else { break };
                match (op, &cache) {
                    (Op::Read(id), None) => {
                        let t = Instant::now();
                        std::hint::black_box(source.read(id).await);
                        reads.record(t.elapsed().as_nanos() as u64)?;
                    }
                    (Op::Read(id), Some(cache)) => {
                        let key = schema.key("user", &id.to_string())?;
                        let t = Instant::now();
                        let src = source.clone();
                        let v = cache
                            .get_or_set_optional(&key, Ttl::Medium, || async move {
                                Ok::<_, std::io::Error>(src.read(id).await)
                            })
                            .await?;
                        reads.record(t.elapsed().as_nanos() as u64)?;
                        std::hint::black_box(v);
                    }
                    (Op::Write(id), None) => source.write(id).await,
                    (Op::Write(id), Some(cache)) => {
                        source.write(id).await;
                        cache.delete(&schema.key("user", &id.to_string())?).await?;
                    }
                }
                bar.inc(1);
            }
            anyhow::Ok(reads)
        })
    });
    let mut reads = histogram();
    for worker in futures::future::join_all(workers).await {
        reads.add(worker??)?;
    }
    let elapsed = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    Ok(Pass {
        reads: Summary::of(&reads),
        throughput: ops.len() as f64 / elapsed,
        source_queries: source.queries.load(Ordering::Relaxed),
    })
}

/// The report as a table.
pub fn render(r: &Report) -> String {
    let row = |name: &str, p: &Pass| {
        format!(
            "{name:<16} {:>10} {:>10} {:>10} {:>12.0} {:>14}\n",
            human_ns(p.reads.p50_ns as f64),
            human_ns(p.reads.p95_ns as f64),
            human_ns(p.reads.p99_ns as f64),
            p.throughput,
            p.source_queries
        )
    };
    let mut out = format!(
        "{:<16} {:>10} {:>10} {:>10} {:>12} {:>14}\n",
        "read latency", "p50", "p95", "p99", "ops/s", "source queries"
    );
    out += &row("source only", &r.direct);
    out += &row("through strata", &r.cached);
    out += &format!(
        "\nhit ratio {:.1} % (L1 hits {}, L2 hits {}), loader calls {}\nread latency reduction: p50 {:.1} %, p99 {:.1} %\n",
        r.hit_ratio * 100.0,
        r.l1_hits,
        r.l2_hits,
        r.loader_calls,
        r.latency_reduction_p50 * 100.0,
        r.latency_reduction_p99 * 100.0
    );
    out
}
