//! `strata bench --scenario eviction`: one key trace (Zipf, a working set several times larger
//! than memory) replayed against `allkeys-lru` and then `allkeys-lfu`, on every master of a
//! deployment whose `maxmemory` is set a few MB above what it uses empty.
//!
//! Each replay is cache-aside with raw redis-rs (GET; on a miss, SET of a fixed-size value): the
//! comparison is of Redis's eviction policies, so no client tier sits in between. Between the
//! policies every master is emptied (FLUSHALL) and reconfigured. The first replay runs for half
//! the duration; the second replays exactly as many requests of the same trace. Evictions come
//! from INFO stats `evicted_keys` on each master. The original `maxmemory` and
//! `maxmemory-policy` are restored at the end, whatever happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use rand::SeedableRng;
use serde::Serialize;

use crate::hit_latency::raw_connection;
use crate::report::{Report, ms, round4};
use crate::runner::{Clock, Load, Outcome, Zipf, closed_loop, config_get, config_set, connect, info_field, masters};
use crate::stats::Summary;
use crate::svg::{Chart, Series};
use crate::workload::{Layout, Target};

/// Settings of the run.
#[derive(Debug, Clone)]
pub struct Options {
    /// Distinct keys in the trace.
    pub keys: u64,
    /// Zipf exponent of the trace.
    pub exponent: f64,
    /// Size of each value.
    pub value_bytes: usize,
    /// Memory each master may use for data, above what it uses empty.
    pub budget_bytes: u64,
    /// Length of the generated trace (an upper bound on each replay).
    pub trace_len: usize,
    /// Both replays together, and workers.
    pub load: Load,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            keys: 10_000,
            exponent: 0.9,
            value_bytes: 4096,
            budget_bytes: 2 << 20,
            trace_len: 2_000_000,
            load: Load { duration: Duration::from_secs(30), max_ops: 2_000_000, concurrency: 16 },
        }
    }
}

/// What one policy did with the trace.
#[derive(Debug, Clone, Serialize)]
pub struct Policy {
    /// `allkeys-lru` or `allkeys-lfu`.
    pub policy: &'static str,
    /// Requests of the trace replayed.
    pub requests: u64,
    /// Fraction of GETs that found the key.
    pub hit_ratio: f64,
    /// Keys evicted (sum over masters).
    pub evicted_keys: u64,
    /// Failed requests.
    pub errors: u64,
    /// Requests per second.
    pub throughput: f64,
    /// 99th percentile request latency (GET, plus SET on a miss), ms.
    pub p99_ms: f64,
}

/// The figures (the JSON document's fields).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Where Redis ran.
    pub layout: Layout,
    /// Masters reconfigured.
    pub masters: usize,
    /// Distinct keys in the trace.
    pub keys: u64,
    /// Value size.
    pub value_bytes: usize,
    /// Working set (keys × value size), bytes.
    pub working_set_bytes: u64,
    /// Data budget per master, bytes.
    pub budget_bytes_per_master: u64,
    /// LRU, then LFU.
    pub policies: Vec<Policy>,
    /// LFU hit ratio minus LRU hit ratio.
    pub lfu_minus_lru: f64,
}

/// Figures and the curves behind them.
#[derive(Debug, Clone)]
pub struct Run {
    /// The figures.
    pub figures: Figures,
    /// Hit ratio over time per policy.
    pub curves: Vec<(&'static str, Vec<(f64, f64)>)>,
}

const POLICIES: [&str; 2] = ["allkeys-lru", "allkeys-lfu"];

/// Runs the scenario against `target`. It empties every master (FLUSHALL).
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Run> {
    let mut saved = BTreeMap::new();
    let result = replay_both(target, options, &mut saved).await;
    // Every node that was a master at some point gets its settings back (a failover during the
    // run may have moved the role).
    let mut restore = Ok(());
    for (url, (maxmemory, policy)) in &saved {
        let attempt = async {
            let mut con = connect(url).await?;
            let _: redis::RedisResult<()> = redis::cmd("FLUSHALL").query_async(&mut con).await;
            config_set(&mut con, "maxmemory", maxmemory).await?;
            config_set(&mut con, "maxmemory-policy", policy).await
        }
        .await;
        if let Err(e) = attempt {
            restore = Err(e.context(format!("restoring the memory settings of {url}")));
        }
    }
    let run = result?;
    restore?;
    Ok(run)
}

async fn replay_both(
    target: &Target,
    options: &Options,
    saved: &mut BTreeMap<String, (String, String)>,
) -> anyhow::Result<Run> {
    let zipf = Zipf::new(options.keys, options.exponent)?;
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let trace: Arc<Vec<u32>> = Arc::new((0..options.trace_len).map(|_| zipf.sample(&mut rng) as u32).collect());
    let value = Arc::new(vec![b'v'; options.value_bytes]);
    let raw = raw_connection(target).await?;
    let half = options.load.duration / 2;
    let bucket = (half / 40).clamp(Duration::from_millis(100), Duration::from_secs(1));
    let clock = Clock::start(options.load.duration);
    let mut policies = Vec::new();
    let mut curves = Vec::new();
    let mut first_requests = None;
    let mut masters_used = 0;
    for policy in POLICIES {
        clock.phase(format!("eviction {policy}"));
        // Masters are found again for each policy: a failover on a busy machine moves them.
        let nodes = masters(target).await?;
        let mut cons = Vec::new();
        for url in &nodes {
            let mut con = connect(url).await?;
            if !saved.contains_key(url) {
                let settings =
                    (config_get(&mut con, "maxmemory").await?, config_get(&mut con, "maxmemory-policy").await?);
                saved.insert(url.clone(), settings);
            }
            cons.push(con);
        }
        masters_used = masters_used.max(nodes.len());
        let mut evicted_before = 0;
        for con in cons.iter_mut() {
            let () = redis::cmd("FLUSHALL").query_async(con).await.context("FLUSHALL")?;
            let used = info_field(con, "memory", "used_memory").await?;
            config_set(con, "maxmemory-policy", policy).await?;
            config_set(con, "maxmemory", &(used + options.budget_bytes).to_string()).await?;
            evicted_before += info_field(con, "stats", "evicted_keys").await?;
        }
        // The second policy replays exactly what the first did (a time cap only as a backstop).
        let load = match first_requests {
            None => Load { duration: half, max_ops: options.load.max_ops.min(trace.len() as u64), ..options.load },
            Some(n) => Load { duration: half * 4, max_ops: n, ..options.load },
        };
        let (raw, trace, value) = (raw.clone(), trace.clone(), value.clone());
        let out: Outcome = closed_loop(load, bucket, move |_, seq| {
            let (mut con, value) = (raw.clone(), value.clone());
            let key = format!("strata-bench:evict:{}", trace.get(seq as usize).copied().unwrap_or(0));
            async move {
                let found: Option<Vec<u8>> = redis::cmd("GET").arg(&key).query_async(&mut con).await?;
                if found.is_some() {
                    return Ok(true);
                }
                let () = redis::cmd("SET").arg(&key).arg(value.as_slice()).query_async(&mut con).await?;
                Ok(false)
            }
        })
        .await;
        let mut evicted_after = 0;
        for con in cons.iter_mut() {
            evicted_after += info_field(con, "stats", "evicted_keys").await?;
        }
        first_requests.get_or_insert(out.ops);
        let s = Summary::of(&out.latency);
        policies.push(Policy {
            policy,
            requests: out.ops,
            hit_ratio: round4(out.hit_ratio()),
            evicted_keys: evicted_after.saturating_sub(evicted_before),
            errors: out.errors,
            throughput: out.throughput().round(),
            p99_ms: ms(s.p99_ns),
        });
        curves.push((policy, out.timeline.hit_ratio_points()));
    }
    drop(clock);
    let lfu_minus_lru = round4(policies[1].hit_ratio - policies[0].hit_ratio);
    Ok(Run {
        figures: Figures {
            layout: target.layout,
            masters: masters_used,
            keys: options.keys,
            value_bytes: options.value_bytes,
            working_set_bytes: options.keys * options.value_bytes as u64,
            budget_bytes_per_master: options.budget_bytes,
            policies,
            lfu_minus_lru,
        },
        curves,
    })
}

/// The report: figures and the hit ratio of each policy over time.
pub fn report(run: &Run, command: &[String]) -> anyhow::Result<Report> {
    let f = &run.figures;
    let mut report = Report::new("eviction", command);
    report.figures(f)?.text(&format!(
        "One Zipf trace over {} keys of {} bytes ({:.1} MB working set), {} master(s) with {:.1} MB of data each: allkeys-lru, then allkeys-lfu on the same requests.",
        f.keys,
        f.value_bytes,
        f.working_set_bytes as f64 / 1e6,
        f.masters,
        f.budget_bytes_per_master as f64 / 1e6
    ));
    let rows = f
        .policies
        .iter()
        .map(|p| {
            vec![
                p.policy.to_owned(),
                p.requests.to_string(),
                format!("{:.1} %", p.hit_ratio * 100.0),
                p.evicted_keys.to_string(),
                format!("{:.0}/s", p.throughput),
                format!("{:.3} ms", p.p99_ms),
            ]
        })
        .collect();
    report.table("Figures", &["policy", "requests", "hit ratio", "evicted keys", "throughput", "p99"], rows);
    let mut chart = Chart::new("Hit ratio over time, same trace", "seconds since the replay started", "hit ratio");
    chart.y_range = Some((0.0, 1.0));
    report.line_chart(chart, run.curves.iter().map(|(n, p)| Series::new(*n, p.clone())).collect());
    Ok(report)
}

/// The figures as text.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "eviction on {:?} Redis: {} keys × {} B ({:.1} MB), {:.1} MB data per master × {}\n\n{:<12} {:>10} {:>10} {:>10} {:>10}\n",
        f.layout,
        f.keys,
        f.value_bytes,
        f.working_set_bytes as f64 / 1e6,
        f.budget_bytes_per_master as f64 / 1e6,
        f.masters,
        "policy",
        "requests",
        "hit ratio",
        "evicted",
        "p99 ms"
    );
    for p in &f.policies {
        out += &format!(
            "{:<12} {:>10} {:>9.1}% {:>10} {:>10.3}\n",
            p.policy,
            p.requests,
            p.hit_ratio * 100.0,
            p.evicted_keys,
            p.p99_ms
        );
    }
    out += &format!("\nLFU - LRU hit ratio: {:+.1} points\n", f.lfu_minus_lru * 100.0);
    out
}
