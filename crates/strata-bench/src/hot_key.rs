//! `strata bench --scenario hot-key`: reads drawn from a steep Zipf distribution (exponent 2:
//! the top key takes about 61 % of them), in three variants, phases interleaved:
//!
//! - **l1**: Strata with its in-process tier: the hot key is served from memory.
//! - **no-l1**: Strata with L1 off: every read is a Redis GET, and the hot key's node takes the
//!   lion's share.
//! - **no-l1-copies**: L1 off, the hot key replicated over hot-key copies in other slots
//!   ([`strata::HotKeys`]), spreading its reads over the nodes.
//!
//! The source is in memory and instant (every key is loaded before the phases start), so the
//! figures are Redis and client costs. The per-node share of commands comes from INFO
//! commandstats on each master before and after each phase.

use std::time::Duration;

use anyhow::Context;
use hdrhistogram::Histogram;
use rand::SeedableRng;
use serde::Serialize;
use strata::{HotKeys, Key, KeySchema, Ttl};

use crate::report::{Report, ms, round4};
use crate::runner::{Clock, Load, Outcome, Zipf, closed_loop, command_calls, connect, masters};
use crate::stats::Summary;
use crate::svg::Chart;
use crate::workload::{Layout, Profile, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct keys.
    pub keys: u64,
    /// Zipf exponent of the key choice.
    pub exponent: f64,
    /// Copies of the hot key in the `no-l1-copies` variant.
    pub copies: usize,
    /// Whole run (split over the variants and rounds), calls bound and workers.
    pub load: Load,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keys: 10_000,
            exponent: 2.0,
            copies: 4,
            load: Load { duration: Duration::from_secs(30), max_ops: 10_000_000, concurrency: 32 },
        }
    }
}

/// What one variant measured.
#[derive(Debug, Clone, Serialize)]
pub struct Variant {
    /// `l1`, `no-l1` or `no-l1-copies`.
    pub name: &'static str,
    /// Calls completed.
    pub ops: u64,
    /// Calls that failed.
    pub errors: u64,
    /// Calls per second.
    pub throughput: f64,
    /// Median latency, ms.
    pub p50_ms: f64,
    /// 99th percentile latency, ms.
    pub p99_ms: f64,
    /// Share of Redis commands each master served during this variant's phases (sorted by
    /// master address).
    pub node_share: Vec<f64>,
    /// The largest of `node_share`.
    pub max_node_share: f64,
    /// Redis commands per read.
    pub redis_commands_per_call: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Where Redis ran.
    pub layout: Layout,
    /// Distinct keys.
    pub keys: u64,
    /// Zipf exponent.
    pub exponent: f64,
    /// Fraction of reads that went to the hottest key.
    pub hot_key_share: f64,
    /// Concurrent workers.
    pub concurrency: usize,
    /// The masters (`host:port`), in the order of every `node_share`.
    pub masters: Vec<String>,
    /// One entry per variant.
    pub variants: Vec<Variant>,
    /// Throughput with L1 over throughput without.
    pub l1_speedup: f64,
}

/// Figures and histograms.
#[derive(Debug, Clone)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    /// Latency per variant.
    pub latency: Vec<(&'static str, Histogram<u64>)>,
}

const NAMES: [&str; 3] = ["l1", "no-l1", "no-l1-copies"];

/// Runs the scenario against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let schema = KeySchema::new("strata-bench", 1)?;
    let keys: Vec<Key> = (0..options.keys).map(|i| schema.key("hot", &i.to_string())).collect::<strata::Result<_>>()?;
    let hot = HotKeys::new().key(&keys[0], options.copies.clamp(1, strata::MAX_HOT_COPIES));
    let caches = [
        target.cache_builder().require_redis(true).build().await.context("connecting the cache")?,
        target.cache_builder().require_redis(true).l1_capacity_bytes(0).build().await?,
        target.cache_builder().require_redis(true).l1_capacity_bytes(0).hot_keys(hot).build().await?,
    ];
    // Every key in Redis first: the phases measure reads, not the source.
    // A patient cache for the fill: big batches on a busy machine outlast the default timeout.
    let filler = target.cache_builder().require_redis(true).op_timeout(Duration::from_secs(10)).build().await?;
    for (c, chunk) in keys.chunks(1000).enumerate() {
        let items: Vec<(Key, Profile)> =
            chunk.iter().zip((c * 1000) as u64..).map(|(k, id)| (k.clone(), Profile::sample(id))).collect();
        filler.set_many(&items, Ttl::Long).await?;
    }
    // Shared, not cloned per call: a call must cost a key lookup, not a copy of 10k keys.
    let keys = std::sync::Arc::new(keys);
    let nodes = masters(target).await?;
    let mut cons = Vec::new();
    for url in &nodes {
        cons.push(connect(url).await?);
    }
    let zipf = Zipf::new(options.keys, options.exponent)?;
    let rounds: u32 = if options.load.duration >= Duration::from_secs(9) { 3 } else { 1 };
    let phase = options.load.duration / (rounds * NAMES.len() as u32);
    let clock = Clock::start(options.load.duration);
    let mut outcomes: Vec<Option<Outcome>> = vec![None, None, None];
    let mut node_calls = vec![vec![0u64; nodes.len()]; NAMES.len()];
    let mut hot_reads = (0u64, 0u64);
    for round in 0..rounds {
        for step in 0..NAMES.len() {
            let v = (step + round as usize) % NAMES.len();
            clock.phase(format!("hot-key {} ({}/{rounds})", NAMES[v], round + 1));
            let before = calls_per_node(&mut cons).await?;
            let (cache, keys) = (caches[v].clone(), keys.clone());
            let load = Load {
                duration: phase,
                max_ops: options.load.max_ops / u64::from(rounds * NAMES.len() as u32),
                ..options.load
            };
            let out = closed_loop(load, phase, move |worker, seq| {
                let (cache, keys) = (cache.clone(), keys.clone());
                async move {
                    let mut rng = rand::rngs::StdRng::seed_from_u64(seq ^ ((worker as u64) << 40));
                    let rank = zipf.sample(&mut rng);
                    let key = &keys[rank as usize];
                    let v: Profile = cache
                        .get_or_set(key, Ttl::Long, || async { Ok::<_, std::io::Error>(Profile::sample(rank)) })
                        .await?;
                    anyhow::ensure!(v.id == rank, "wrong value for key {rank}");
                    // A "hit" here marks a read of the hottest key, to report its share.
                    Ok(rank == 0)
                }
            })
            .await;
            let after = calls_per_node(&mut cons).await?;
            for (i, (a, b)) in after.iter().zip(&before).enumerate() {
                node_calls[v][i] += a.saturating_sub(*b);
            }
            hot_reads.0 += out.hits;
            hot_reads.1 += out.ops;
            match &mut outcomes[v] {
                Some(total) => total.absorb(&out),
                slot => *slot = Some(out),
            }
        }
    }
    drop(clock);
    let mut variants = Vec::new();
    let mut latency = Vec::new();
    for (v, out) in outcomes.into_iter().enumerate() {
        let out = out.context("every variant ran")?;
        let total: u64 = node_calls[v].iter().sum();
        let share: Vec<f64> = node_calls[v].iter().map(|c| round4(*c as f64 / total.max(1) as f64)).collect();
        let s = Summary::of(&out.latency);
        variants.push(Variant {
            name: NAMES[v],
            ops: out.ops,
            errors: out.errors,
            throughput: out.throughput().round(),
            p50_ms: ms(s.p50_ns),
            p99_ms: ms(s.p99_ns),
            max_node_share: share.iter().copied().fold(0.0, f64::max),
            node_share: share,
            redis_commands_per_call: round4(total as f64 / out.ops.max(1) as f64),
        });
        latency.push((NAMES[v], out.latency));
    }
    let l1_speedup = round4(variants[0].throughput / variants[1].throughput.max(1e-9));
    Ok(Run {
        figures: Figures {
            layout: target.layout,
            keys: options.keys,
            exponent: options.exponent,
            hot_key_share: round4(hot_reads.0 as f64 / hot_reads.1.max(1) as f64),
            concurrency: options.load.concurrency,
            masters: nodes.iter().map(|u| address(u)).collect(),
            variants,
            l1_speedup,
        },
        latency,
    })
}

/// `host:port` of a node URL (no scheme, no credentials).
fn address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit('@').next().unwrap_or(rest).to_owned()
}

async fn calls_per_node(cons: &mut [redis::aio::MultiplexedConnection]) -> anyhow::Result<Vec<u64>> {
    let mut out = Vec::with_capacity(cons.len());
    for con in cons {
        out.push(command_calls(con).await?);
    }
    Ok(out)
}

/// The report: figures, per-node shares and the latency CDFs.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("hot-key", command);
    report.figures(f)?.text(&format!(
        "{} keys, Zipf exponent {}: the hottest key took {:.0} % of the reads. {} workers, closed loop.",
        f.keys,
        f.exponent,
        f.hot_key_share * 100.0,
        f.concurrency
    ));
    let rows = f
        .variants
        .iter()
        .map(|v| {
            vec![
                v.name.to_owned(),
                format!("{:.0}/s", v.throughput),
                format!("{:.3} ms", v.p50_ms),
                format!("{:.3} ms", v.p99_ms),
                format!("{:.2}", v.redis_commands_per_call),
                v.node_share.iter().map(|s| format!("{:.0} %", s * 100.0)).collect::<Vec<_>>().join(" / "),
            ]
        })
        .collect();
    report.table("Figures", &["variant", "throughput", "p50", "p99", "Redis cmds / read", "share per master"], rows);
    let series = f.variants.iter().map(|v| (v.name.to_owned(), v.node_share.clone())).collect();
    let mut chart = Chart::new("Share of Redis commands per master", "master", "share of commands");
    chart.y_range = Some((0.0, 1.0));
    report.bar_chart(chart, &f.masters, series);
    let hists: Vec<(&str, &Histogram<u64>)> = run.latency.iter().map(|(n, h)| (*n, h)).collect();
    report.cdf("Read latency", &hists);
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "hot-key on {:?} Redis: {} keys, Zipf {}, hottest key {:.0} % of reads, {} workers\n\n{:<14} {:>12} {:>10} {:>10} {:>10} {:>12}\n",
        f.layout,
        f.keys,
        f.exponent,
        f.hot_key_share * 100.0,
        f.concurrency,
        "variant",
        "calls/s",
        "p50 ms",
        "p99 ms",
        "cmds/read",
        "max node"
    );
    for v in &f.variants {
        out += &format!(
            "{:<14} {:>12.0} {:>10.3} {:>10.3} {:>10.2} {:>11.0}%\n",
            v.name,
            v.throughput,
            v.p50_ms,
            v.p99_ms,
            v.redis_commands_per_call,
            v.max_node_share * 100.0
        );
    }
    out
}
