//! `strata drill coherence`: how long a write takes to reach every instance's L1, and whether
//! any instance still serves the old value after that delay.
//!
//! `instances` independent caches (each with its own connections and tracking, as separate
//! application processes would have) share a few keys, and every reader holds them in L1. The
//! drill then changes a key, alternately through instance 0 and with a plain Redis client (bytes
//! copied from a scratch key, as another application or `redis-cli` would write), and the other
//! instances read it in a tight loop until they return the new value: the time from the write's
//! return to that read is the invalidation delay. One more read after `bound` counts as a
//! stale read if it still returns the old value. Bounded in writes and time; keys removed at the
//! end.

use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use strata::{Cache, Invalidation, Key, KeySchema, Ttl};

use crate::stats;

/// Settings of the drill.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cache instances: one writer, the rest readers (at least 2).
    pub instances: usize,
    /// Writes in total, half through the writer instance, half with a plain client.
    pub writes: usize,
    /// A read later than this after the write must return the new value.
    pub bound: Duration,
    /// Upper bound on the whole drill.
    pub timeout: Duration,
    /// Run without invalidation (to show what it prevents).
    pub without_invalidation: bool,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            instances: 3,
            writes: 1000,
            bound: Duration::from_millis(100),
            timeout: Duration::from_secs(120),
            without_invalidation: false,
        }
    }
}

/// What the drill observed (the first four field names are a contract).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Writes made.
    pub writes: usize,
    /// Reads later than `bound_ms` after a write that still returned the old value.
    pub stale_reads_after_delay: usize,
    /// Median time from a write's return to a reader's first read of the new value.
    pub invalidation_delay_ms_p50: f64,
    /// 99th percentile of the same (readers that never saw it count as `bound_ms`).
    pub invalidation_delay_ms_p99: f64,
    /// Largest delay observed.
    pub invalidation_delay_ms_max: f64,
    /// The bound after which a read must be fresh.
    pub bound_ms: u64,
    /// Cache instances (one writer).
    pub instances: usize,
    /// Writes made with a plain client rather than through Strata.
    pub plain_client_writes: usize,
    /// Reads served from L1 by the readers (shows L1 was in play).
    pub reader_l1_hits: u64,
}

const KEYS: usize = 16;

/// Runs the drill against `urls` (one URL: standalone; several: cluster seeds).
pub async fn run(urls: &[String], options: &Options, progress: bool) -> anyhow::Result<Report> {
    anyhow::ensure!(options.instances >= 2, "need a writer and at least one reader instance");
    anyhow::ensure!(options.writes >= 1, "need at least one write");
    let started = Instant::now();
    let mut caches = Vec::new();
    for _ in 0..options.instances {
        let builder =
            if urls.len() > 1 { Cache::builder().cluster(urls.to_vec()) } else { Cache::builder().redis_url(&urls[0]) };
        let invalidation =
            if options.without_invalidation { Invalidation::disabled() } else { Invalidation::default() };
        let cache =
            builder.l1_max_ttl(Duration::from_secs(600)).invalidation(invalidation).require_redis(true).build().await?;
        caches.push(cache);
    }
    let (writer, readers) = caches.split_first().context("no instances")?;
    let schema = KeySchema::new("strata-drill", 1)?;
    let run_id = format!("{}-{}", std::process::id(), started.elapsed().as_nanos());
    let keys: Vec<Key> =
        (0..KEYS).map(|k| schema.key("coherence", &format!("{run_id}-{k}"))).collect::<Result<_, _>>()?;
    let scratch = schema.key("coherence", &format!("{run_id}-scratch"))?;
    let mut plain = PlainClient::connect(urls).await?;
    let mut rig = Rig { writer, readers, keys: &keys, scratch: &scratch, plain: &mut plain };
    let result = drive(&mut rig, options, started, progress).await;
    let mut all = keys.clone();
    all.push(scratch);
    for key in &all {
        writer.delete(key).await.with_context(|| format!("removing {key}"))?;
    }
    let stamp = strata::namespace_stamp_key(scratch_namespace(&all))?;
    plain.delete(&stamp).await?;
    result
}

/// What the drill drives: the writing instance, the reading ones, the keys, the scratch key a
/// plain client copies from, and that client.
struct Rig<'a> {
    writer: &'a Cache,
    readers: &'a [Cache],
    keys: &'a [Key],
    scratch: &'a Key,
    plain: &'a mut PlainClient,
}

async fn drive(rig: &mut Rig<'_>, options: &Options, started: Instant, progress: bool) -> anyhow::Result<Report> {
    let Rig { writer, readers, keys, scratch, plain } = rig;
    let (writer, readers, keys, scratch) = (*writer, *readers, *keys, *scratch);
    for key in keys {
        writer.set(key, &"initial".to_owned(), Ttl::Long).await?;
        for reader in readers {
            reader.get::<String>(key).await?;
        }
    }
    let l1_hits_before: u64 = readers.iter().map(|r| r.metrics().total().l1_hits).sum();
    let bar =
        if progress { indicatif::ProgressBar::new(options.writes as u64) } else { indicatif::ProgressBar::hidden() };
    let mut delays = stats::histogram();
    let (mut stale, mut plain_writes) = (0, 0);
    for i in 0..options.writes {
        anyhow::ensure!(started.elapsed() < options.timeout, "the drill ran out of time after {i} writes");
        let key = &keys[i % KEYS];
        let value = format!("w{i}");
        if i % 2 == 0 {
            writer.set(key, &value, Ttl::Long).await?;
        } else {
            writer.set(scratch, &value, Ttl::Long).await?;
            plain.copy(scratch.as_str(), key.as_str()).await?;
            plain_writes += 1;
        }
        let seen =
            futures_util::future::join_all(readers.iter().map(|r| first_fresh_read(r, key, &value, options.bound)));
        for (delay, fresh_after_bound) in seen.await {
            delays.record(delay.as_micros().max(1) as u64)?;
            stale += usize::from(!fresh_after_bound);
        }
        bar.inc(1);
    }
    bar.finish_and_clear();
    let l1_hits: u64 = readers.iter().map(|r| r.metrics().total().l1_hits).sum::<u64>() - l1_hits_before;
    let ms = |us: u64| us as f64 / 1000.0;
    Ok(Report {
        writes: options.writes,
        stale_reads_after_delay: stale,
        invalidation_delay_ms_p50: ms(delays.value_at_quantile(0.50)),
        invalidation_delay_ms_p99: ms(delays.value_at_quantile(0.99)),
        invalidation_delay_ms_max: ms(delays.max()),
        bound_ms: options.bound.as_millis() as u64,
        instances: readers.len() + 1,
        plain_client_writes: plain_writes,
        reader_l1_hits: l1_hits,
    })
}

/// The drill's namespace (every key shares it).
fn scratch_namespace(keys: &[Key]) -> &str {
    keys.first().map_or("strata-drill:v1:coherence", Key::namespace)
}

/// Reads until `want` comes back or `bound` passes: (time to the fresh read, or `bound`;
/// whether a read made at or after `bound` returned `want`).
async fn first_fresh_read(reader: &Cache, key: &Key, want: &str, bound: Duration) -> (Duration, bool) {
    let start = Instant::now();
    loop {
        let fresh = matches!(reader.get::<String>(key).await, Ok(Some(v)) if v == want);
        let elapsed = start.elapsed();
        if fresh {
            return (elapsed.min(bound), true);
        }
        if elapsed >= bound {
            return (bound, false);
        }
        tokio::task::yield_now().await;
    }
}

/// Another application's connection: not Strata, no L1.
pub(crate) enum PlainClient {
    Single(redis::aio::MultiplexedConnection),
    Cluster(redis::cluster_async::ClusterConnection),
}

impl PlainClient {
    pub(crate) async fn connect(urls: &[String]) -> anyhow::Result<Self> {
        Ok(if urls.len() > 1 {
            PlainClient::Cluster(redis::cluster::ClusterClient::new(urls.to_vec())?.get_async_connection().await?)
        } else {
            PlainClient::Single(redis::Client::open(urls[0].as_str())?.get_multiplexed_async_connection().await?)
        })
    }

    pub(crate) async fn delete(&mut self, key: &str) -> anyhow::Result<()> {
        self.query(redis::cmd("DEL").arg(key)).await
    }

    /// DEL of `key` and its coordination keys, in one command (same slot): what a writer outside
    /// Strata must do so that a load or a versioned write running meanwhile cannot store what
    /// it read before the write (see `strata::coordination_keys`).
    pub(crate) async fn delete_with_coordination(&mut self, key: &str) -> anyhow::Result<()> {
        self.query(redis::cmd("DEL").arg(key).arg(&strata::coordination_keys(key)[..])).await
    }

    /// GET `from`, SET `to` to the same bytes (with a TTL, as any cache writer should).
    async fn copy(&mut self, from: &str, to: &str) -> anyhow::Result<()> {
        let bytes: Vec<u8> = self.query(redis::cmd("GET").arg(from)).await?;
        self.query(redis::cmd("SET").arg(to).arg(bytes).arg("EX").arg(3600)).await
    }

    async fn query<T: redis::FromRedisValue>(&mut self, cmd: &redis::Cmd) -> anyhow::Result<T> {
        Ok(match self {
            PlainClient::Single(c) => cmd.query_async(c).await?,
            PlainClient::Cluster(c) => cmd.query_async(c).await?,
        })
    }
}
