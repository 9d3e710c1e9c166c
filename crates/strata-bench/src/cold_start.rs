//! `strata bench --scenario cold-start`: an empty cache put under load, twice:
//!
//! - **cold**: the load starts on an empty cache; every first read of a key goes to the source.
//! - **warmed**: `get_or_set_many` loads the top-K keys first (in batches: one source query per
//!   batch, like `WHERE id IN (...)`), then the same load starts.
//!
//! Keys are drawn from Zipf(0.99); the source answers after a fixed delay and counts queries.
//! Each variant uses its own key names and a new cache instance, so both start empty. The
//! report gives the hit ratio over time, the time until it stays at or above 90 %, and the
//! source queries in the first seconds. The keys expire a minute after the run.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use serde::Serialize;
use strata::{Key, KeySchema, Ttl};

use crate::report::{Report, ms, round4};
use crate::runner::{Clock, Load, Outcome, Zipf, closed_loop};
use crate::stats::Summary;
use crate::svg::{Chart, Series};
use crate::workload::{Layout, Profile, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct keys.
    pub keys: u64,
    /// Zipf exponent.
    pub exponent: f64,
    /// Keys loaded before the load in the warmed variant (the most popular ones).
    pub warm_keys: u64,
    /// Keys per warming batch.
    pub warm_batch: usize,
    /// Latency of one source query.
    pub source_delay: Duration,
    /// Source queries are counted over this first part of each load.
    pub window: Duration,
    /// Both variants together (half each), calls bound and workers.
    pub load: Load,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keys: 10_000,
            exponent: 0.99,
            warm_keys: 5_000,
            warm_batch: 500,
            source_delay: Duration::from_millis(1),
            window: Duration::from_secs(5),
            load: Load { duration: Duration::from_secs(30), max_ops: 10_000_000, concurrency: 32 },
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `cold` or `warmed`.
    pub name: &'static str,
    /// Source queries spent on warming.
    pub warm_queries: u64,
    /// Time spent warming, ms.
    pub warm_ms: f64,
    /// Calls under load.
    pub ops: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Hit ratio over the whole load.
    pub hit_ratio: f64,
    /// Seconds from the start of the load until the hit ratio stays at or above 0.9 (null: never).
    pub seconds_to_90: Option<f64>,
    /// Source queries during the first `window_s` seconds of the load.
    pub source_queries_in_window: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Where Redis ran.
    pub layout: Layout,
    /// Distinct keys.
    pub keys: u64,
    /// Keys warmed.
    pub warm_keys: u64,
    /// Source latency, ms.
    pub source_delay_ms: f64,
    /// The window of `source_queries_in_window`, seconds.
    pub window_s: f64,
    /// Concurrent workers.
    pub concurrency: usize,
    /// Cold, then warmed.
    pub variants: Vec<Variant>,
}

/// Figures and the timelines behind them.
#[derive(Debug, Clone)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    /// One per variant.
    pub curves: Vec<Curve>,
}

/// What one variant's load looked like over time.
#[derive(Debug, Clone)]
pub struct Curve {
    /// The variant.
    pub name: &'static str,
    /// (seconds since the load started, hit ratio) per time bucket.
    pub hit_ratio: Vec<(f64, f64)>,
    /// Read latency.
    pub latency: Histogram<u64>,
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let schema = KeySchema::new("strata-bench", 1)?;
    let nonce = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_millis();
    let zipf = Zipf::new(options.keys, options.exponent)?;
    let phase = options.load.duration / 2;
    let bucket = (phase / 40).clamp(Duration::from_millis(100), Duration::from_secs(1));
    // Long enough that nothing expires during the run, short enough that the keys do not
    // linger on a deployment given by --url.
    let ttl = Ttl::from(options.load.duration + Duration::from_secs(60));
    let clock = Clock::start(options.load.duration);
    let mut variants = Vec::new();
    let mut curves = Vec::new();
    for name in ["cold", "warmed"] {
        clock.phase(format!("cold-start {name}"));
        let keys: Arc<Vec<Key>> = Arc::new(
            (0..options.keys)
                .map(|i| schema.key("coldstart", &format!("{nonce}-{name}-{i}")))
                .collect::<strata::Result<_>>()?,
        );
        // A patient timeout for both variants: a 500-key warming batch on a busy machine would
        // pass the default one and leave the cache cold.
        let cache = target
            .cache_builder()
            .require_redis(true)
            .op_timeout(Duration::from_secs(2))
            .build()
            .await
            .context("connecting the cache")?;
        let (mut warm_queries, mut warm_time) = (0, Duration::ZERO);
        if name == "warmed" {
            let t = Instant::now();
            let top = options.warm_keys.min(options.keys) as usize;
            let batch = options.warm_batch.max(1);
            for (c, chunk) in keys[..top].chunks(batch).enumerate() {
                let delay = options.source_delay;
                let index: HashMap<&Key, u64> = chunk.iter().zip((c * batch) as u64..).collect();
                let _: Vec<Option<Profile>> = cache
                    .get_or_set_many(chunk, ttl, |missing| async move {
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::io::Error>(
                            missing
                                .into_iter()
                                .map(|k| {
                                    let id = index.get(&k).copied().unwrap_or(0);
                                    (k, Profile::sample(id))
                                })
                                .collect(),
                        )
                    })
                    .await?;
                warm_queries += 1;
            }
            warm_time = t.elapsed();
        }
        let queries = Arc::new(AtomicU64::new(0));
        let (c, q, k, delay) = (cache.clone(), queries.clone(), keys.clone(), options.source_delay);
        let load = Load {
            duration: phase.saturating_sub(warm_time).max(phase / 2),
            max_ops: options.load.max_ops / 2,
            ..options.load
        };
        let out: Outcome = closed_loop(load, bucket, move |worker, seq| {
            let (cache, queries, keys) = (c.clone(), q.clone(), k.clone());
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seq ^ ((worker as u64) << 40));
                let rank = zipf.sample(&mut rng);
                let loaded = AtomicBool::new(false);
                let v: Profile = cache
                    .get_or_set(&keys[rank as usize], ttl, || async {
                        loaded.store(true, Ordering::Relaxed);
                        queries.fetch_add(1, Ordering::Relaxed);
                        tokio::time::sleep(delay).await;
                        Ok::<_, std::io::Error>(Profile::sample(rank))
                    })
                    .await?;
                anyhow::ensure!(v.id == rank, "wrong value for key {rank}");
                Ok(!loaded.load(Ordering::Relaxed))
            }
        })
        .await;
        let s = Summary::of(&out.latency);
        variants.push(Variant {
            name,
            warm_queries,
            warm_ms: ms(warm_time.as_nanos() as u64),
            ops: out.ops,
            errors: out.errors,
            hit_ratio: round4(out.hit_ratio()),
            seconds_to_90: out.timeline.time_to_reach(0.9).map(round4),
            source_queries_in_window: out.timeline.misses_within(options.window),
            p50_ms: ms(s.p50_ns),
            p99_ms: ms(s.p99_ns),
        });
        curves.push(Curve { name, hit_ratio: out.timeline.hit_ratio_points(), latency: out.latency });
    }
    drop(clock);
    Ok(Run {
        figures: Figures {
            layout: target.layout,
            keys: options.keys,
            warm_keys: options.warm_keys,
            source_delay_ms: ms(options.source_delay.as_nanos() as u64),
            window_s: options.window.as_secs_f64(),
            concurrency: options.load.concurrency,
            variants,
        },
        curves,
    })
}

/// The report: figures, hit ratio over time, latency CDFs.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("cold-start", command);
    report.figures(f)?.text(&format!(
        "{} keys, Zipf(0.99), {} ms source, {} workers; the warmed variant loads the top {} keys with get_or_set_many first.",
        f.keys, f.source_delay_ms, f.concurrency, f.warm_keys
    ));
    let rows = f
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.to_owned(),
                format!("{} queries, {:.0} ms", v.warm_queries, v.warm_ms),
                format!("{:.1} %", v.hit_ratio * 100.0),
                v.seconds_to_90.map_or("never".to_owned(), |s| format!("{s:.2} s")),
                v.source_queries_in_window.to_string(),
                format!("{:.3} ms", v.p50_ms),
                format!("{:.3} ms", v.p99_ms),
            ]
        })
        .collect();
    let window = format!("source queries, first {} s", f.window_s);
    report.table("Figures", &["variant", "warming", "hit ratio", "time to 90 %", &window, "p50", "p99"], rows);
    let mut chart = Chart::new("Hit ratio over time", "seconds since the load started", "hit ratio");
    chart.y_range = Some((0.0, 1.0));
    report.line_chart(chart, run.curves.iter().map(|c| Series::new(c.name, c.hit_ratio.clone())).collect());
    let hists: Vec<(&str, &Histogram<u64>)> = run.curves.iter().map(|c| (c.name, &c.latency)).collect();
    report.cdf("Read latency", &hists);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "cold-start on {:?} Redis: {} keys, {} warmed, {} ms source, {} workers\n\n{:<8} {:>16} {:>10} {:>12} {:>16} {:>10}\n",
        f.layout,
        f.keys,
        f.warm_keys,
        f.source_delay_ms,
        f.concurrency,
        "variant",
        "warming",
        "hit ratio",
        "to 90 %",
        format!("queries {}s", f.window_s),
        "p99 ms"
    );
    for v in &f.variants {
        out += &format!(
            "{:<8} {:>16} {:>9.1}% {:>12} {:>16} {:>10.3}\n",
            v.name,
            format!("{} q / {:.0} ms", v.warm_queries, v.warm_ms),
            v.hit_ratio * 100.0,
            v.seconds_to_90.map_or("never".to_owned(), |s| format!("{s:.2} s")),
            v.source_queries_in_window,
            v.p99_ms
        );
    }
    out
}
