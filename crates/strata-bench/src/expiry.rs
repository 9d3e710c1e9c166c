//! `strata bench --scenario expiry`: a hot key read in a tight loop by several tasks across its
//! expiry, with a slow loader, for two variants measured in one run, rounds interleaved:
//!
//! - **plain**: `get_or_set` on a cache without freshness settings. At expiry the L1 copy and
//!   the Redis copy vanish, and every reader waits for the one (single-flight) reload.
//! - **refresh**: `get_or_refresh` on a cache with XFetch (beta 1) and stale-while-revalidate
//!   (one TTL): the value is refreshed in the background shortly before expiry (or, failing that,
//!   served stale while it is), so no reader should wait on the loader.
//!
//! Each round loads a new key per variant, then the tasks read it from half a TTL before its
//! expiry to half a TTL after. Reads starting within `window` of the expiry are "around expiry",
//! the others "steady". A read slower than half the load time is counted as having waited on the
//! loader (a cache read, even through Redis, is far faster here).

use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use strata::{Cache, Freshness, Key, KeySchema, Ttl};

use crate::stats::{Summary, histogram, human_ns};
use crate::workload::{Layout, Profile, Target, progress};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Rounds; each round crosses one expiry per variant.
    pub rounds: usize,
    /// Concurrent reader tasks.
    pub tasks: usize,
    /// Logical TTL of the hot key (exact, no jitter).
    pub ttl: Duration,
    /// How long the loader takes.
    pub load_time: Duration,
    /// Half-width of the "around expiry" window.
    pub window: Duration,
    /// Stop early (after the current round) once this much time has passed.
    pub max_duration: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rounds: 6,
            tasks: 4,
            ttl: Duration::from_secs(1),
            load_time: Duration::from_millis(50),
            window: Duration::from_millis(100),
            max_duration: Duration::from_secs(120),
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone, Serialize)]
pub struct VariantReport {
    /// `plain` or `refresh`.
    pub name: &'static str,
    /// Reads starting within the window around an expiry.
    pub around_expiry: Summary,
    /// The other reads.
    pub steady: Summary,
    /// Reads around expiry slower than half the load time: they waited on the loader.
    pub waited_around_expiry: u64,
    /// Steady reads that slow: machine noise (preemption), the baseline for the figure above.
    pub slow_steady: u64,
    /// 99.99th percentile of the reads around expiry (a wait on the loader shows here first: a
    /// few reads per expiry among hundreds of thousands).
    pub around_expiry_p9999_ns: u64,
    /// Same for the steady reads.
    pub steady_p9999_ns: u64,
    /// Loader calls, including the first load of each round.
    pub loader_calls: u64,
    /// Background refreshes started by XFetch.
    pub early_refreshes: u64,
    /// Background refreshes started by a stale read.
    pub stale_refreshes: u64,
    /// Loads that callers waited for, beyond each round's initial load: loader calls minus
    /// rounds minus background refreshes. Exact, unlike the latency-based `slow` counts.
    pub foreground_reloads: u64,
    /// Reads answered with a stale value.
    pub stale_served: u64,
}

/// What the run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Where Redis ran.
    pub layout: Layout,
    /// Rounds completed.
    pub rounds: usize,
    /// Reader tasks.
    pub tasks: usize,
    /// TTL of the hot key, in milliseconds.
    pub ttl_ms: u64,
    /// Load time, in milliseconds.
    pub load_ms: u64,
    /// Half-width of the around-expiry window, in milliseconds.
    pub window_ms: u64,
    /// One entry per variant.
    pub variants: Vec<VariantReport>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Variant {
    Plain,
    Refresh,
}

/// Latencies of one variant: around expiry, steady, and slow-read count.
struct Acc {
    around: Histogram<u64>,
    steady: Histogram<u64>,
    slow_around: u64,
    slow_steady: u64,
}

impl Acc {
    fn new() -> Self {
        Self { around: histogram(), steady: histogram(), slow_around: 0, slow_steady: 0 }
    }

    fn merge(&mut self, other: &Acc) -> anyhow::Result<()> {
        self.around.add(&other.around)?;
        self.steady.add(&other.steady)?;
        self.slow_around += other.slow_around;
        self.slow_steady += other.slow_steady;
        Ok(())
    }
}

/// Runs the benchmark against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.tasks > 0 && !options.ttl.is_zero(), "need at least one task and a positive TTL");
    let plain = target.cache_builder().require_redis(true).build().await.context("connecting the cache")?;
    let freshness = Freshness::new().early_refresh(1.0).stale_while_revalidate(options.ttl);
    let refresh = target.cache_builder().require_redis(true).freshness(freshness).build().await?;
    let schema = KeySchema::new("bench", 1)?;
    let (mut plain_acc, mut refresh_acc) = (Acc::new(), Acc::new());
    let bar = progress(options.rounds as u64, "expiry rounds");
    let started = Instant::now();
    let mut rounds = 0;
    for round in 0..options.rounds {
        // Alternate which variant goes first, so neither always runs on a warmer machine.
        let order =
            if round % 2 == 0 { [Variant::Plain, Variant::Refresh] } else { [Variant::Refresh, Variant::Plain] };
        for variant in order {
            let (cache, acc, name) = match variant {
                Variant::Plain => (&plain, &mut plain_acc, "plain"),
                Variant::Refresh => (&refresh, &mut refresh_acc, "refresh"),
            };
            let key = schema.key("expiry", &format!("{name}-{round}"))?;
            acc.merge(&cross_expiry(cache, variant, &key, options).await?)?;
        }
        rounds += 1;
        bar.inc(1);
        if started.elapsed() > options.max_duration {
            break;
        }
    }
    bar.finish_and_clear();
    let report = |name, cache: &Cache, acc: &Acc| {
        let stats = cache.metrics().total();
        let background = stats.early_refreshes + stats.stale_refreshes;
        VariantReport {
            name,
            around_expiry: Summary::of(&acc.around),
            steady: Summary::of(&acc.steady),
            waited_around_expiry: acc.slow_around,
            slow_steady: acc.slow_steady,
            around_expiry_p9999_ns: acc.around.value_at_quantile(0.9999),
            steady_p9999_ns: acc.steady.value_at_quantile(0.9999),
            loader_calls: stats.loader_calls,
            early_refreshes: stats.early_refreshes,
            stale_refreshes: stats.stale_refreshes,
            foreground_reloads: stats.loader_calls.saturating_sub(rounds as u64 + background),
            stale_served: stats.stale_served,
        }
    };
    Ok(Report {
        layout: target.layout,
        rounds,
        tasks: options.tasks,
        ttl_ms: options.ttl.as_millis() as u64,
        load_ms: options.load_time.as_millis() as u64,
        window_ms: options.window.as_millis() as u64,
        variants: vec![report("plain", &plain, &plain_acc), report("refresh", &refresh, &refresh_acc)],
    })
}

/// One expiry of one variant: load the key, wait until half a TTL before it expires, then read it
/// from every task until half a TTL after.
async fn cross_expiry(cache: &Cache, variant: Variant, key: &Key, options: &Options) -> anyhow::Result<Acc> {
    read(cache, variant, key, options).await?;
    let expiry = Instant::now() + options.ttl;
    tokio::time::sleep(options.ttl / 2).await;
    let end = expiry + options.ttl / 2;
    let tasks: Vec<_> = (0..options.tasks)
        .map(|_| {
            let (cache, key, options) = (cache.clone(), key.clone(), options.clone());
            tokio::spawn(async move {
                let mut acc = Acc::new();
                let slow = (options.load_time / 2).as_nanos() as u64;
                while Instant::now() < end {
                    let t = Instant::now();
                    std::hint::black_box(read(&cache, variant, &key, &options).await?);
                    let ns = (t.elapsed().as_nanos() as u64).max(1);
                    let distance = t.saturating_duration_since(expiry).max(expiry.saturating_duration_since(t));
                    let (h, slow_count) = if distance <= options.window {
                        (&mut acc.around, &mut acc.slow_around)
                    } else {
                        (&mut acc.steady, &mut acc.slow_steady)
                    };
                    h.record(ns)?;
                    *slow_count += u64::from(ns >= slow);
                    // A server interleaves requests; without this, readers would starve the
                    // background refresh on a small machine.
                    tokio::task::yield_now().await;
                }
                anyhow::Ok(acc)
            })
        })
        .collect();
    let mut total = Acc::new();
    for task in tasks {
        total.merge(&task.await??)?;
    }
    Ok(total)
}

async fn read(cache: &Cache, variant: Variant, key: &Key, options: &Options) -> anyhow::Result<Profile> {
    let load_time = options.load_time;
    let loader = move || async move {
        tokio::time::sleep(load_time).await;
        Ok::<_, std::io::Error>(Profile::sample(1))
    };
    let ttl = Ttl::Exact(options.ttl);
    Ok(match variant {
        Variant::Plain => cache.get_or_set(key, ttl, loader).await?,
        Variant::Refresh => cache.get_or_refresh(key, ttl, loader).await?,
    })
}

/// The report as a table.
pub fn render(report: &Report) -> String {
    let mut out = format!(
        "hot key across expiry on {:?} Redis: {} rounds, {} reader tasks, TTL {} ms, loader {} ms, window ±{} ms\n\n",
        report.layout, report.rounds, report.tasks, report.ttl_ms, report.load_ms, report.window_ms
    );
    out += &format!(
        "{:<8} {:<7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>6}   {:>6} {:>6} {:>6} {:>6}\n",
        "variant", "phase", "p50", "p99", "p99.99", "max", "reads", "slow", "loads", "reload", "early", "stale"
    );
    for v in &report.variants {
        let phases = [
            ("expiry", &v.around_expiry, v.around_expiry_p9999_ns, v.waited_around_expiry),
            ("steady", &v.steady, v.steady_p9999_ns, v.slow_steady),
        ];
        for (phase, s, p9999, slow) in phases {
            out += &format!(
                "{:<8} {:<7} {:>9} {:>9} {:>10} {:>10} {:>9} {:>6}",
                v.name,
                phase,
                human_ns(s.p50_ns as f64),
                human_ns(s.p99_ns as f64),
                human_ns(p9999 as f64),
                human_ns(s.max_ns as f64),
                s.samples,
                slow
            );
            if phase == "expiry" {
                out += &format!(
                    "   {:>6} {:>6} {:>6} {:>6}",
                    v.loader_calls, v.foreground_reloads, v.early_refreshes, v.stale_served
                );
            }
            out.push('\n');
        }
    }
    out += "\nslow: reads slower than half the load time (around expiry: waited on the loader, or noise like the\nsteady ones); loads: loader calls, one initial load per round included; reload: loads that
callers waited for after the initial one (loads - rounds - background refreshes); early: XFetch
refreshes; stale: reads served a stale value\n";
    out
}
