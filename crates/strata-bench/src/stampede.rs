//! `strata bench --scenario stampede`: a hot key is gone (expired) while N callers ask for it
//! at the same moment, and the source is slow. Two variants, rounds interleaved:
//!
//! - **strata**: `get_or_set` through several cache instances (standing in for processes):
//!   single-flight in each, and the lease in Redis across them, so the source is asked once
//!   per expiry.
//! - **naive**: cache-aside with raw redis-rs: GET, and on a miss, load and SET. Every caller
//!   that misses before the first SET lands asks the source.
//!
//! Each round starts with the key absent, which is what a reader sees right after an expiry
//! (each round uses a new key, so no round sees another's value). The callers meet at a barrier
//! and call at once. `strata drill stampede` runs the same race across real processes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use strata::{Cache, KeySchema, Ttl};
use tokio::sync::Barrier;

use crate::hit_latency::raw_connection;
use crate::report::{Report, ms, round4};
use crate::runner::Clock;
use crate::stats::{Summary, histogram};
use crate::workload::{Layout, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Concurrent callers per round.
    pub callers: usize,
    /// Cache instances the Strata callers are spread over.
    pub instances: usize,
    /// How long one load of the source takes.
    pub load_time: Duration,
    /// Stop starting rounds after this long (at least one round per variant runs).
    pub duration: Duration,
    /// Most rounds per variant.
    pub max_rounds: usize,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            callers: 1000,
            instances: 4,
            load_time: Duration::from_millis(100),
            duration: Duration::from_secs(30),
            max_rounds: 1000,
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// Expiries (rounds) survived.
    pub rounds: usize,
    /// Source loads in total.
    pub loader_calls: u64,
    /// Mean source loads per expiry (1 is the goal).
    pub loader_calls_per_expiry: f64,
    /// Most source loads in one expiry.
    pub max_loader_calls_per_expiry: u64,
    /// Callers that got an error or a wrong value.
    pub errors: u64,
    /// Median caller latency, ms.
    pub p50_ms: f64,
    /// 99th percentile caller latency, ms.
    pub p99_ms: f64,
    /// Slowest caller, ms.
    pub max_ms: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Where Redis ran.
    pub layout: Layout,
    /// Callers per expiry.
    pub callers: usize,
    /// Cache instances of the Strata variant.
    pub instances: usize,
    /// Source latency, ms.
    pub load_ms: u64,
    /// Strata: single-flight and leases.
    pub strata: Variant,
    /// Raw redis-rs GET/SET cache-aside.
    pub naive: Variant,
    /// Naive source loads per Strata source load.
    pub loader_call_ratio: f64,
}

/// Figures and the latency histograms behind them.
#[derive(Debug, Clone)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    /// Caller latencies, Strata.
    pub strata_latency: Histogram<u64>,
    /// Caller latencies, naive.
    pub naive_latency: Histogram<u64>,
}

struct Tally {
    rounds: usize,
    loads: Vec<u64>,
    errors: u64,
    latency: Histogram<u64>,
}

impl Tally {
    fn new() -> Self {
        Self { rounds: 0, loads: Vec::new(), errors: 0, latency: histogram() }
    }

    fn variant(&self) -> Variant {
        let s = Summary::of(&self.latency);
        let total: u64 = self.loads.iter().sum();
        Variant {
            rounds: self.rounds,
            loader_calls: total,
            loader_calls_per_expiry: round4(total as f64 / self.rounds.max(1) as f64),
            max_loader_calls_per_expiry: self.loads.iter().copied().max().unwrap_or(0),
            errors: self.errors,
            p50_ms: ms(s.p50_ns),
            p99_ms: ms(s.p99_ns),
            max_ms: ms(s.max_ns),
        }
    }
}

const VALUE: &str = "the hot value";

/// Runs the scenario against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    anyhow::ensure!(options.callers >= 1 && options.instances >= 1, "need at least one caller and one instance");
    let mut caches = Vec::new();
    for _ in 0..options.instances {
        caches.push(target.cache_builder().require_redis(true).build().await.context("connecting the cache")?);
    }
    let raw = raw_connection(target).await?;
    let schema = KeySchema::new("strata-bench", 1)?;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let clock = Clock::start(options.duration + options.load_time * 2);
    let (mut strata, mut naive) = (Tally::new(), Tally::new());
    let started = Instant::now();
    let mut used_keys = Vec::new();
    for round in 0..options.max_rounds {
        if round > 0 && started.elapsed() >= options.duration {
            break;
        }
        clock.phase(format!("stampede round {}", round + 1));
        let key = schema.key("stampede", &format!("{nonce}-{round}"))?;
        let raw_key = format!("strata-bench:naive-stampede:{nonce}:{round}");
        // Alternate which variant goes first, so neither always runs on a warmer machine.
        for step in 0..2 {
            if (round + step) % 2 == 0 {
                strata_round(&caches, &key, options, &mut strata).await;
            } else {
                naive_round(&raw, &raw_key, options, &mut naive).await;
            }
        }
        used_keys.push((key, raw_key));
    }
    drop(clock);
    // Leave nothing behind on the operator's deployment.
    let mut con = raw.clone();
    for (key, raw_key) in used_keys {
        let _ = caches[0].delete(&key).await;
        let _: redis::RedisResult<i64> = redis::cmd("DEL").arg(&raw_key).query_async(&mut con).await;
    }
    let (s, n) = (strata.variant(), naive.variant());
    let ratio = round4(n.loader_calls as f64 / s.loader_calls.max(1) as f64);
    Ok(Run {
        figures: Figures {
            layout: target.layout,
            callers: options.callers,
            instances: options.instances,
            load_ms: options.load_time.as_millis() as u64,
            strata: s,
            naive: n,
            loader_call_ratio: ratio,
        },
        strata_latency: strata.latency,
        naive_latency: naive.latency,
    })
}

async fn strata_round(caches: &[Cache], key: &strata::Key, options: &Options, tally: &mut Tally) {
    let loads = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(options.callers));
    let load_time = options.load_time;
    let calls: Vec<_> = (0..options.callers)
        .map(|i| {
            let (cache, key, loads, barrier) =
                (caches[i % caches.len()].clone(), key.clone(), loads.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let got = cache
                    .get_or_set(&key, Ttl::Short, || async move {
                        loads.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(load_time).await;
                        Ok::<_, std::io::Error>(VALUE.to_owned())
                    })
                    .await;
                (got.is_ok_and(|v| v == VALUE), t.elapsed())
            })
        })
        .collect();
    collect(calls, tally).await;
    tally.loads.push(loads.load(Ordering::Relaxed));
}

async fn naive_round(raw: &crate::hit_latency::RawConn, key: &str, options: &Options, tally: &mut Tally) {
    let loads = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(options.callers));
    let load_time = options.load_time;
    let calls: Vec<_> = (0..options.callers)
        .map(|_| {
            let (mut con, key, loads, barrier) = (raw.clone(), key.to_owned(), loads.clone(), barrier.clone());
            tokio::spawn(async move {
                barrier.wait().await;
                let t = Instant::now();
                let got: redis::RedisResult<String> = async {
                    let cached: Option<String> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
                    if let Some(v) = cached {
                        return Ok(v);
                    }
                    loads.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(load_time).await;
                    let () = redis::cmd("SET").arg(&key).arg(VALUE).arg("PX").arg(60_000).query_async(&mut con).await?;
                    Ok(VALUE.to_owned())
                }
                .await;
                (got.is_ok_and(|v| v == VALUE), t.elapsed())
            })
        })
        .collect();
    collect(calls, tally).await;
    tally.loads.push(loads.load(Ordering::Relaxed));
}

async fn collect(calls: Vec<tokio::task::JoinHandle<(bool, Duration)>>, tally: &mut Tally) {
    for call in futures_util::future::join_all(calls).await {
        match call {
            Ok((true, took)) => {
                let _ = tally.latency.record((took.as_nanos() as u64).max(1));
            }
            _ => tally.errors += 1,
        }
    }
    tally.rounds += 1;
}

/// The report: figures, a table and the latency CDF of both variants.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("stampede", command);
    report.figures(f)?.text(&format!(
        "{} callers ask for one absent key at once, {} ms source latency; Strata spreads them over {} cache instances. {} rounds per variant, interleaved.",
        f.callers, f.load_ms, f.instances, f.strata.rounds
    ));
    report.table("Figures", &["variant", "loader calls / expiry", "max / expiry", "errors", "p50", "p99", "max"], {
        [("strata", &f.strata), ("naive redis-rs", &f.naive)]
            .iter()
            .map(|(name, v)| {
                vec![
                    (*name).to_owned(),
                    format!("{}", v.loader_calls_per_expiry),
                    v.max_loader_calls_per_expiry.to_string(),
                    v.errors.to_string(),
                    format!("{:.2} ms", v.p50_ms),
                    format!("{:.2} ms", v.p99_ms),
                    format!("{:.2} ms", v.max_ms),
                ]
            })
            .collect()
    });
    report
        .cdf("Caller latency on an expired hot key", &[("strata", &run.strata_latency), ("naive", &run.naive_latency)]);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let row = |name: &str, v: &Variant| {
        format!(
            "{name:<8} {:>14} {:>10} {:>7} {:>10.2} {:>10.2}\n",
            v.loader_calls_per_expiry, v.max_loader_calls_per_expiry, v.errors, v.p50_ms, v.p99_ms
        )
    };
    let mut out = format!(
        "stampede on {:?} Redis: {} callers per expiry, {} ms loads, {} rounds\n\n{:<8} {:>14} {:>10} {:>7} {:>10} {:>10}\n",
        f.layout, f.callers, f.load_ms, f.strata.rounds, "variant", "loads/expiry", "max", "errors", "p50 ms", "p99 ms"
    );
    out += &row("strata", &f.strata);
    out += &row("naive", &f.naive);
    out += &format!("\nthe naive cache-aside asked the source {}x as often\n", f.loader_call_ratio);
    out
}
