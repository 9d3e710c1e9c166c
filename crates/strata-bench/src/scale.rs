//! `strata bench --scenario scale`: a fixed offered load (open loop: calls are scheduled at a
//! rate, whatever the latency) at R and at 2R, phases interleaved. Does the latency hold when
//! the load doubles? Latency counts from each call's scheduled start, so a backlog shows.
//!
//! The calls are `get_or_set` on Zipf(0.99) keys through a cache with L1 off (every call reaches
//! Redis: the question is the deployment's headroom, not the in-process tier's), all keys loaded
//! beforehand. Pick R so that 2R leaves headroom on the machine: the default, 20,000/s, does for
//! a release build on 2 cores (a local 3+3 cluster saturates near 89,000 calls/s there, and p99
//! holds at 2R only while 2R stays under about half of that; docs/benchmarks.md, "scale").

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use serde::Serialize;
use strata::{Key, KeySchema, Ttl};

use crate::report::{Report, ms, round4};
use crate::runner::{Clock, Load, Outcome, Zipf, open_loop};
use crate::stats::Summary;
use crate::workload::{Layout, Profile, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The base rate R, calls per second.
    pub rate: f64,
    /// Distinct keys.
    pub keys: u64,
    /// Both rates together, calls bound and workers.
    pub load: Load,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            rate: 20_000.0,
            keys: 10_000,
            load: Load { duration: Duration::from_secs(30), max_ops: 10_000_000, concurrency: 32 },
        }
    }
}

/// What one rate measured.
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Offered calls per second.
    pub offered_rate: f64,
    /// Completed calls per second.
    pub achieved_rate: f64,
    /// Calls completed.
    pub ops: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 95th percentile, ms.
    pub p95_ms: f64,
    /// 99th percentile, ms.
    pub p99_ms: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Where Redis ran.
    pub layout: Layout,
    /// Workers sharing the schedule.
    pub concurrency: usize,
    /// At R.
    pub base: Phase,
    /// At 2R.
    pub doubled: Phase,
    /// p50 at 2R over p50 at R.
    pub p50_ratio: f64,
    /// p99 at 2R over p99 at R.
    pub p99_ratio: f64,
    /// Achieved over offered rate at 2R.
    pub doubled_rate_kept: f64,
}

/// Figures and histograms.
#[derive(Debug, Clone)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    /// Latency at R and at 2R.
    pub latency: [Histogram<u64>; 2],
}

/// Runs the scenario against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    anyhow::ensure!(options.rate > 0.0 && options.rate.is_finite(), "the rate must be a positive number");
    let schema = KeySchema::new("strata-bench", 1)?;
    let keys: Vec<Key> =
        (0..options.keys).map(|i| schema.key("scale", &i.to_string())).collect::<strata::Result<_>>()?;
    let cache = target
        .cache_builder()
        .require_redis(true)
        .l1_capacity_bytes(0)
        .build()
        .await
        .context("connecting the cache")?;
    // A patient cache for the fill: big batches on a busy machine outlast the default timeout.
    let filler = target.cache_builder().require_redis(true).op_timeout(Duration::from_secs(10)).build().await?;
    for (c, chunk) in keys.chunks(1000).enumerate() {
        let items: Vec<(Key, Profile)> =
            chunk.iter().zip((c * 1000) as u64..).map(|(k, id)| (k.clone(), Profile::sample(id))).collect();
        filler.set_many(&items, Ttl::Long).await?;
    }
    let zipf = Zipf::new(options.keys, 0.99)?;
    let rounds: u32 = if options.load.duration >= Duration::from_secs(8) { 2 } else { 1 };
    // A short unrecorded run at R first: connections, allocator and caches warm up, which
    // would otherwise count against whichever rate runs first.
    let warm_up = (options.load.duration / 10).min(Duration::from_secs(1));
    let phase = options.load.duration.saturating_sub(warm_up) / (2 * rounds);
    let clock = Clock::start(options.load.duration);
    let op = {
        let (cache, keys) = (cache.clone(), Arc::new(keys));
        move |worker: usize, seq: u64| {
            let (cache, keys) = (cache.clone(), keys.clone());
            async move {
                let mut rng = rand::rngs::StdRng::seed_from_u64(seq ^ ((worker as u64) << 40));
                let rank = zipf.sample(&mut rng);
                let v: Profile = cache
                    .get_or_set(&keys[rank as usize], Ttl::Long, || async {
                        Ok::<_, std::io::Error>(Profile::sample(rank))
                    })
                    .await?;
                anyhow::ensure!(v.id == rank, "wrong value for key {rank}");
                Ok(true)
            }
        }
    };
    clock.phase("scale warm-up");
    let load = Load { duration: warm_up, ..options.load };
    let _ = open_loop(load, options.rate, warm_up, op.clone()).await;
    let mut outcomes: [Option<Outcome>; 2] = [None, None];
    for round in 0..rounds {
        for step in 0..2 {
            let which = (step + round as usize) % 2;
            let rate = options.rate * (which + 1) as f64;
            clock.phase(format!("scale {rate:.0}/s ({}/{rounds})", round + 1));
            let load = Load { duration: phase, max_ops: options.load.max_ops / u64::from(2 * rounds), ..options.load };
            let out = open_loop(load, rate, phase, op.clone()).await;
            match &mut outcomes[which] {
                Some(total) => total.absorb(&out),
                slot => *slot = Some(out),
            }
        }
    }
    drop(clock);
    let [base, doubled] = outcomes;
    let (base, doubled) = (base.context("R ran")?, doubled.context("2R ran")?);
    let phase_of = |out: &Outcome, rate: f64| {
        let s = Summary::of(&out.latency);
        Phase {
            offered_rate: rate,
            achieved_rate: out.throughput().round(),
            ops: out.ops,
            errors: out.errors,
            p50_ms: ms(s.p50_ns),
            p95_ms: ms(s.p95_ns),
            p99_ms: ms(s.p99_ns),
        }
    };
    let (b, d) = (phase_of(&base, options.rate), phase_of(&doubled, options.rate * 2.0));
    let figures = Figures {
        layout: target.layout,
        concurrency: options.load.concurrency,
        p50_ratio: round4(d.p50_ms / b.p50_ms.max(1e-6)),
        p99_ratio: round4(d.p99_ms / b.p99_ms.max(1e-6)),
        doubled_rate_kept: round4(d.achieved_rate / d.offered_rate),
        base: b,
        doubled: d,
    };
    Ok(Run { figures, latency: [base.latency, doubled.latency] })
}

/// The report: figures and the latency CDFs at R and 2R.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("scale", command);
    report.figures(f)?.text(&format!(
        "Open loop at {:.0}/s and {:.0}/s over {} workers, get_or_set with L1 off on Zipf(0.99) keys; latency from each call's scheduled start.",
        f.base.offered_rate, f.doubled.offered_rate, f.concurrency
    ));
    let rows = [&f.base, &f.doubled]
        .iter()
        .map(|p| {
            vec![
                format!("{:.0}/s", p.offered_rate),
                format!("{:.0}/s", p.achieved_rate),
                format!("{:.3} ms", p.p50_ms),
                format!("{:.3} ms", p.p95_ms),
                format!("{:.3} ms", p.p99_ms),
                p.errors.to_string(),
            ]
        })
        .collect();
    report.table("Figures", &["offered", "achieved", "p50", "p95", "p99", "errors"], rows);
    report.text(&format!("2R over R: p50 ×{}, p99 ×{}.", f.p50_ratio, f.p99_ratio));
    let (r, r2) = (format!("{:.0}/s", f.base.offered_rate), format!("{:.0}/s", f.doubled.offered_rate));
    report.cdf("Latency at R and 2R", &[(&r, &run.latency[0]), (&r2, &run.latency[1])]);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "scale on {:?} Redis, {} workers, open loop\n\n{:>10} {:>10} {:>10} {:>10} {:>10} {:>7}\n",
        f.layout, f.concurrency, "offered/s", "achieved/s", "p50 ms", "p95 ms", "p99 ms", "errors"
    );
    for p in [&f.base, &f.doubled] {
        out += &format!(
            "{:>10.0} {:>10.0} {:>10.3} {:>10.3} {:>10.3} {:>7}\n",
            p.offered_rate, p.achieved_rate, p.p50_ms, p.p95_ms, p.p99_ms, p.errors
        );
    }
    out += &format!("\n2R over R: p50 x{}, p99 x{}\n", f.p50_ratio, f.p99_ratio);
    out
}
