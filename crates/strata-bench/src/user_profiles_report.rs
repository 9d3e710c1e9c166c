//! The figures, table and HTML report of `user-profiles`.

use std::collections::BTreeMap;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::cpu::PerOp;
use crate::report::{Report, ms, round4};
use crate::stats::human_ns;
use crate::svg::{Chart, Series};
use crate::user_profiles::{Measured, Run, Variant};

/// The JSON document of a run (the first eight fields are the ones issue 6 names).
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Read p50 through Strata, ms.
    pub p50_ms_cached: f64,
    /// Read p99 through Strata, ms.
    pub p99_ms_cached: f64,
    /// Read p50 of the database alone, ms.
    pub p50_ms_direct: f64,
    /// Read p99 of the database alone, ms.
    pub p99_ms_direct: f64,
    /// Strata's read hit ratio.
    pub hit_ratio: f64,
    /// 1 - p50_cached / p50_direct.
    pub latency_reduction: f64,
    /// Strata's operations per second (reads and writes).
    pub throughput_cached: f64,
    /// The database alone's operations per second.
    pub throughput_direct: f64,
    /// 1 - p99_cached / p99_direct.
    pub latency_reduction_p99: f64,
    /// What the database was.
    pub database: String,
    /// Artificial latency added before every statement, ms (0: none).
    pub db_latency_ms: f64,
    /// Users seeded.
    pub users: u64,
    /// Fraction of reads.
    pub read_ratio: f64,
    /// Zipf exponent of the ids.
    pub zipf_exponent: f64,
    /// Workers per variant.
    pub concurrency: usize,
    /// Measured duration share of each variant, seconds.
    pub seconds_per_variant: f64,
    /// Unmeasured warm-up of each variant before its share, seconds.
    pub warmup_seconds_per_variant: f64,
    /// Operation cap of each variant.
    pub max_ops_per_variant: u64,
    /// Every variant by name: direct, strata, naive_redis_rs, cached_crate, redis_rs_cache_aio,
    /// two_tier_moka.
    pub variants: BTreeMap<String, VariantFigures>,
    /// Strata against each peer cache.
    pub peers: BTreeMap<String, PeerRatios>,
    /// Strata against the peer with the highest throughput among those with no stale read
    /// (`None`: every peer had stale reads).
    pub best_coherent_peer: Option<BestPeer>,
}

/// The peer the targets of issue 16 are measured against.
#[derive(Debug, Clone, Serialize)]
pub struct BestPeer {
    /// Its name among the variants.
    pub name: String,
    /// Its operations per second.
    pub throughput: f64,
    /// Its read p99, ms.
    pub p99_ms: f64,
    /// Strata throughput / its throughput.
    pub strata_throughput_ratio: f64,
    /// Strata p99 / its p99.
    pub strata_p99_ratio: f64,
}

/// One variant's figures.
#[derive(Debug, Clone, Serialize)]
pub struct VariantFigures {
    /// What it is.
    pub label: String,
    /// Successful reads.
    pub reads: u64,
    /// Successful writes.
    pub writes: u64,
    /// Failed operations.
    pub errors: u64,
    /// The first failure.
    pub first_error: Option<String>,
    /// Read latency, ms.
    pub p50_ms: f64,
    /// Read latency, ms.
    pub p95_ms: f64,
    /// Read latency, ms.
    pub p99_ms: f64,
    /// Mean read latency, ms.
    pub mean_ms: f64,
    /// Latency of the reads that queried the database (the miss path), ms.
    pub miss_p50_ms: f64,
    /// Mean latency of those reads, ms.
    pub miss_mean_ms: f64,
    /// Write latency (update + invalidation), ms.
    pub write_p50_ms: f64,
    /// Write latency, ms.
    pub write_p99_ms: f64,
    /// Mean write latency, ms.
    pub write_mean_ms: f64,
    /// Of it, the database's update (mean per write, ms): the rest is the variant's cache work
    /// around it (its invalidation or store).
    pub write_source_mean_ms: f64,
    /// Operations per second.
    pub throughput: f64,
    /// Reads that did not query the database.
    pub hit_ratio: f64,
    /// Reads that returned a profile older than a write completed before they started.
    pub stale_reads: u64,
    /// Statements the database received.
    pub source_queries: u64,
    /// ... per second.
    pub source_queries_per_s: f64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Operations the unmeasured warm-up ran before these figures.
    pub warmup_ops: u64,
    /// CPU per operation: this process, the Redis masters, the rest of the machine; what
    /// the masters ran per operation.
    pub cpu: Option<PerOp>,
}

/// Strata's figures over a peer's (below 1: Strata is faster or queries less).
#[derive(Debug, Clone, Serialize)]
pub struct PeerRatios {
    /// The peer's read p50, ms.
    pub p50_ms: f64,
    /// The peer's read p99, ms.
    pub p99_ms: f64,
    /// The peer's operations per second.
    pub throughput: f64,
    /// The peer's hit ratio.
    pub hit_ratio: f64,
    /// The peer's stale reads.
    pub stale_reads: u64,
    /// Strata p50 / peer p50.
    pub strata_p50_ratio: f64,
    /// Strata p99 / peer p99.
    pub strata_p99_ratio: f64,
    /// Strata throughput / peer throughput.
    pub strata_throughput_ratio: f64,
}

fn variant_figures(m: &Measured) -> VariantFigures {
    let secs = m.elapsed.as_secs_f64().max(1e-9);
    VariantFigures {
        label: m.variant.label().to_owned(),
        reads: m.reads.len(),
        writes: m.writes.len(),
        errors: m.errors,
        first_error: m.first_error.clone(),
        p50_ms: ms(m.reads.value_at_quantile(0.50)),
        p95_ms: ms(m.reads.value_at_quantile(0.95)),
        p99_ms: ms(m.reads.value_at_quantile(0.99)),
        mean_ms: (m.reads.mean() / 1_000.0).round() / 1_000.0,
        miss_p50_ms: ms(m.miss_reads.value_at_quantile(0.50)),
        miss_mean_ms: (m.miss_reads.mean() / 1_000.0).round() / 1_000.0,
        write_p50_ms: ms(m.writes.value_at_quantile(0.50)),
        write_p99_ms: ms(m.writes.value_at_quantile(0.99)),
        write_mean_ms: (m.writes.mean() / 1_000.0).round() / 1_000.0,
        write_source_mean_ms: if m.writes.is_empty() {
            0.0
        } else {
            (m.source_write_time.as_secs_f64() * 1e6 / m.writes.len() as f64).round() / 1_000.0
        },
        throughput: m.throughput().round(),
        hit_ratio: round4(m.hit_ratio()),
        stale_reads: m.stale_reads,
        source_queries: m.source_queries,
        source_queries_per_s: (m.source_queries as f64 / secs).round(),
        seconds: (secs * 1000.0).round() / 1000.0,
        warmup_ops: m.warmup_ops,
        cpu: m.cpu.as_ref().map(|c| c.per_op(m.reads.len() + m.writes.len())),
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { round4(a / b) } else { f64::NAN }
}

/// The figures of a run.
pub fn figures(run: &Run) -> anyhow::Result<Figures> {
    let find = |v: Variant| {
        run.measured.iter().find(|m| m.variant == v).ok_or_else(|| anyhow::anyhow!("{} did not run", v.name()))
    };
    let (direct, strata) = (find(Variant::Direct)?, find(Variant::Strata)?);
    let (d, s) = (variant_figures(direct), variant_figures(strata));
    let mut peers = BTreeMap::new();
    for peer in Variant::ALL.into_iter().filter(|v| !matches!(v, Variant::Direct | Variant::Strata)) {
        let Ok(m) = find(peer) else { continue };
        let p = variant_figures(m);
        peers.insert(
            peer.name().to_owned(),
            PeerRatios {
                p50_ms: p.p50_ms,
                p99_ms: p.p99_ms,
                throughput: p.throughput,
                hit_ratio: p.hit_ratio,
                stale_reads: p.stale_reads,
                strata_p50_ratio: ratio(s.p50_ms, p.p50_ms),
                strata_p99_ratio: ratio(s.p99_ms, p.p99_ms),
                strata_throughput_ratio: ratio(s.throughput, p.throughput),
            },
        );
    }
    let best_coherent_peer = best_coherent_peer(&peers).map(|(name, p)| BestPeer {
        name: name.to_owned(),
        throughput: p.throughput,
        p99_ms: p.p99_ms,
        strata_throughput_ratio: p.strata_throughput_ratio,
        strata_p99_ratio: p.strata_p99_ratio,
    });
    let o = &run.options;
    Ok(Figures {
        p50_ms_cached: s.p50_ms,
        p99_ms_cached: s.p99_ms,
        p50_ms_direct: d.p50_ms,
        p99_ms_direct: d.p99_ms,
        hit_ratio: s.hit_ratio,
        latency_reduction: round4(1.0 - strata.reads.value_at_quantile(0.5) as f64 / direct_p(direct, 0.5)),
        throughput_cached: s.throughput,
        throughput_direct: d.throughput,
        latency_reduction_p99: round4(1.0 - strata.reads.value_at_quantile(0.99) as f64 / direct_p(direct, 0.99)),
        database: run.database.clone(),
        db_latency_ms: o.db_latency.as_secs_f64() * 1000.0,
        users: o.users,
        read_ratio: o.read_ratio,
        zipf_exponent: o.zipf_exponent,
        concurrency: o.concurrency,
        seconds_per_variant: (o.duration / Variant::ALL.len() as u32).as_secs_f64(),
        warmup_seconds_per_variant: o.warmup.as_secs_f64(),
        max_ops_per_variant: o.max_ops,
        variants: run.measured.iter().map(|m| (m.variant.name().to_owned(), variant_figures(m))).collect(),
        peers,
        best_coherent_peer,
    })
}

/// The peer with the highest throughput among those with no stale read.
fn best_coherent_peer(peers: &BTreeMap<String, PeerRatios>) -> Option<(&str, &PeerRatios)> {
    peers
        .iter()
        .filter(|(_, p)| p.stale_reads == 0)
        .max_by(|a, b| a.1.throughput.total_cmp(&b.1.throughput))
        .map(|(name, p)| (name.as_str(), p))
}

/// A percentile of the direct reads, never zero (an empty histogram gives 1 ns).
fn direct_p(direct: &Measured, q: f64) -> f64 {
    direct.reads.value_at_quantile(q).max(1) as f64
}

/// The HTML report: figures, the table, read latency CDF, hit ratio over time.
pub fn report(run: &Run, figures: &Figures, command: &[String]) -> anyhow::Result<Report> {
    let mut report = Report::new("user-profiles", command);
    report.figures(figures)?.text(&format!(
        "{} users, {:.0} % reads, Zipf({}) ids, {} workers per variant, {:.1} s unmeasured warm-up then {:.1} s measured per variant, run back to back on the same operation sequence. Database: {}.",
        figures.users,
        figures.read_ratio * 100.0,
        figures.zipf_exponent,
        figures.concurrency,
        figures.warmup_seconds_per_variant,
        figures.seconds_per_variant,
        figures.database
    ));
    let rows = run
        .measured
        .iter()
        .map(|m| {
            let v = variant_figures(m);
            vec![
                v.label,
                format!("{:.3} ms", v.p50_ms),
                format!("{:.3} ms", v.p95_ms),
                format!("{:.3} ms", v.p99_ms),
                format!("{:.0}", v.throughput),
                format!("{:.1} %", v.hit_ratio * 100.0),
                v.stale_reads.to_string(),
                format!("{:.0}", v.source_queries_per_s),
                v.errors.to_string(),
            ]
        })
        .collect();
    report.table(
        "Reads and throughput",
        &["variant", "p50", "p95", "p99", "ops/s", "hit ratio", "stale reads", "db queries/s", "errors"],
        rows,
    );
    report.preformatted(&render(figures));
    // Colours by variant, not by position: the hit-ratio chart leaves the database out.
    let hists: Vec<(&str, &Histogram<u64>, usize)> =
        run.measured.iter().map(|m| (m.variant.label(), &m.reads, m.variant.index())).collect();
    report.cdf_coloured("Read latency", &hists);
    let mut chart = Chart::new(
        "Read hit ratio over time (per second)",
        "seconds since measuring started (after the warm-up)",
        "hit ratio",
    );
    chart.y_range = Some((0.0, 1.0));
    let series = run
        .measured
        .iter()
        .filter(|m| m.variant != Variant::Direct)
        .map(|m| Series::new(m.variant.label(), m.timeline.hit_ratio_points()).with_colour(m.variant.index()))
        .collect();
    report.line_chart(chart, series);
    Ok(report)
}

/// The figures as a terminal table.
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "user-profiles: {} users, {:.0} % reads, Zipf({}), {} workers, {:.1} s warm-up + {:.1} s measured per variant\ndatabase: {}\n\n{:<36} {:>10} {:>10} {:>10} {:>9} {:>9} {:>11} {:>13}\n",
        f.users,
        f.read_ratio * 100.0,
        f.zipf_exponent,
        f.concurrency,
        f.warmup_seconds_per_variant,
        f.seconds_per_variant,
        f.database,
        "read latency",
        "p50",
        "p95",
        "p99",
        "ops/s",
        "hit ratio",
        "stale reads",
        "db queries/s"
    );
    for variant in Variant::ALL {
        let Some(v) = f.variants.get(variant.name()) else { continue };
        out += &format!(
            "{:<36} {:>10} {:>10} {:>10} {:>9.0} {:>8.1}% {:>11} {:>13.0}\n",
            v.label,
            human_ns(v.p50_ms * 1e6),
            human_ns(v.p95_ms * 1e6),
            human_ns(v.p99_ms * 1e6),
            v.throughput,
            v.hit_ratio * 100.0,
            v.stale_reads,
            v.source_queries_per_s
        );
        if v.errors > 0 {
            out += &format!("  {} errors, first: {}\n", v.errors, v.first_error.as_deref().unwrap_or("?"));
        }
    }
    out += &format!(
        "\nread latency reduction through Strata: p50 {:.1} %, p99 {:.1} % (target: at least 50 % at p50)\n",
        f.latency_reduction * 100.0,
        f.latency_reduction_p99 * 100.0
    );
    for variant in Variant::ALL {
        let Some(p) = f.peers.get(variant.name()) else { continue };
        let name = variant.name();
        out += &format!(
            "strata / {name}: p50 x{:.2}, p99 x{:.2}, throughput x{:.2}",
            p.strata_p50_ratio, p.strata_p99_ratio, p.strata_throughput_ratio
        );
        if p.stale_reads > 0 {
            out += &format!(" ({name}: {} stale reads)", p.stale_reads);
        }
        out += "\n";
    }
    out += &render_cpu(f);
    out += &match &f.best_coherent_peer {
        Some(b) => format!(
            "strata / best coherent peer ({}): throughput x{:.2}, p99 x{:.2} (targets: throughput x1.20 or more, p99 x1.00 or less)\n",
            b.name, b.strata_throughput_ratio, b.strata_p99_ratio
        ),
        None => "strata / best coherent peer: none, every peer had stale reads\n".to_owned(),
    };
    out
}

/// Per variant: what its miss path and its writes take, its CPU per operation (2 cores
/// shared: what one variant spends more of, it runs fewer operations with), and the three
/// commands that cost the Redis masters most.
fn render_cpu(f: &Figures) -> String {
    let mut out = format!(
        "\nmiss path, writes and CPU per operation\n{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10} {:>8} {:>9} {:>9} {:>8}  masters' top commands (calls/op, µs/op)\n",
        "variant",
        "miss p50",
        "miss mean",
        "write p50",
        "write mean",
        "of it db",
        "client µs",
        "redis µs",
        "other µs",
        "machine",
        "ctx sw",
        "calls"
    );
    for variant in Variant::ALL {
        let Some(v) = f.variants.get(variant.name()) else { continue };
        let Some(c) = &v.cpu else { continue };
        let top: Vec<String> =
            c.redis_commands.iter().take(3).map(|(name, calls, us)| format!("{name} {calls:.2}/{us:.1}")).collect();
        out += &format!(
            "{:<36} {:>10} {:>10} {:>10} {:>10} {:>10} {:>10.1} {:>10.1} {:>8.1} {:>8.0}% {:>9.2} {:>8.2}  {}\n",
            v.label,
            human_ns(v.miss_p50_ms * 1e6),
            human_ns(v.miss_mean_ms * 1e6),
            human_ns(v.write_p50_ms * 1e6),
            human_ns(v.write_mean_ms * 1e6),
            human_ns(v.write_source_mean_ms * 1e6),
            c.process_us,
            c.redis_masters_us,
            c.other_us,
            c.machine_busy * 100.0,
            c.context_switches,
            c.redis_calls,
            top.join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peer(throughput: f64, stale_reads: u64) -> PeerRatios {
        PeerRatios {
            p50_ms: 0.1,
            p99_ms: 1.0,
            throughput,
            hit_ratio: 0.9,
            stale_reads,
            strata_p50_ratio: 1.0,
            strata_p99_ratio: 1.0,
            strata_throughput_ratio: 1.0,
        }
    }

    #[test]
    fn the_best_coherent_peer_is_the_fastest_without_stale_reads() {
        let mut peers = BTreeMap::new();
        peers.insert("naive_redis_rs".to_owned(), peer(900.0, 0));
        peers.insert("cached_crate".to_owned(), peer(1000.0, 0));
        peers.insert("two_tier_moka".to_owned(), peer(5000.0, 12));
        assert_eq!(best_coherent_peer(&peers).map(|b| b.0), Some("cached_crate"), "the fastest is stale");
        peers.insert("redis_rs_cache_aio".to_owned(), peer(1100.0, 1));
        assert_eq!(best_coherent_peer(&peers).map(|b| b.0), Some("cached_crate"), "one stale read disqualifies");
        peers.retain(|_, p| p.stale_reads > 0);
        assert!(best_coherent_peer(&peers).is_none(), "none without stale reads");
    }
}
