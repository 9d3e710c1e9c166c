//! `strata drill soak`: does anything grow without bound, or go wrong, over a long run?
//!
//! The consistency drill's workers (4 processes, each its own cache: L1, leases, freshness,
//! tags, hot keys) run at a fixed rate with the rest on too: the `tagged` namespace encrypted,
//! an audit log, and a write-behind queue each process enqueues to and drains (see
//! [`crate::consistency::worker`](mod@crate::consistency::worker)). Every `--sample-every` the coordinator records each worker's
//! RSS, what the workers report (L1 bytes, auto-recovery queue, write-behind counters), each
//! master's `used_memory` and connected clients, and the write-behind streams' length. At the
//! end the histories go through the consistency checker.
//!
//! Verdict: RSS (summed over the workers) and Redis memory (summed over the masters) are flat
//! after warm-up (`--warm-up`, 30 s, run before the measured `--duration`) — the slope of a
//! least-squares line over the samples of the last 80 % of the measured run is below 1 % of
//! the value at its start per minute — and there are 0 caller errors and 0 stale reads.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::consistency::worker::{SOAK_STREAM, SoakMetrics};
use crate::consistency::{Report as ConsistencyReport, Setup};
use crate::report::Report;
use crate::svg::{Chart, Series};
use crate::worker_process::WorkerProcess;

/// The part of the measured run the verdict ignores, besides the warm-up: its first 20 %.
const SETTLE: f64 = 0.2;
/// The largest growth the verdict accepts by default, in % of the start per minute.
pub const MAX_SLOPE_PCT_PER_MIN: f64 = 1.0;

/// One look at the resources.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Sample {
    /// Seconds since the load started.
    pub t_s: f64,
    /// Resident memory of each worker process, in MB.
    pub rss_mb: Vec<f64>,
    /// Their sum.
    pub rss_mb_total: f64,
    /// L1 bytes summed over the workers.
    pub l1_bytes: u64,
    /// `used_memory` of each master, in MB.
    pub redis_used_memory_mb: BTreeMap<String, f64>,
    /// Their sum.
    pub redis_used_memory_mb_total: f64,
    /// Connected clients summed over the masters.
    pub connections: u64,
    /// Entries in the write-behind streams (enqueued, not yet delivered).
    pub write_behind_backlog: u64,
    /// Invalidations queued for replay, summed over the workers.
    pub recovery_queue: u64,
    /// Write-behind entries delivered, summed over the workers (grows: proves the queue drains).
    pub write_behind_delivered: u64,
    /// Failed `enqueue` calls and dead letters, summed over the workers.
    pub write_behind_errors: u64,
    /// Audit records dropped, summed over the workers.
    pub audit_dropped: u64,
}

/// Samples the resources of a running soak.
#[derive(Debug)]
pub struct Sampler {
    pids: Vec<u32>,
    dir: PathBuf,
    masters: Vec<String>,
    streams: redis::Client,
    cluster: Option<redis::cluster::ClusterClient>,
}

impl Sampler {
    pub(crate) fn new(setup: &Setup, workers: &[WorkerProcess], dir: &Path) -> anyhow::Result<Sampler> {
        let masters = setup.master_urls()?;
        let urls = setup.urls();
        let cluster = match setup.topology() {
            "cluster" => Some(redis::cluster::ClusterClient::new(urls.clone())?),
            _ => None,
        };
        Ok(Sampler {
            pids: workers.iter().filter_map(WorkerProcess::pid).collect(),
            dir: dir.to_owned(),
            streams: redis::Client::open(urls[0].as_str())?,
            masters,
            cluster,
        })
    }

    /// Samples every `every` until `duration` after `t0`; the samples.
    pub(crate) fn run(
        &mut self,
        t0: Instant,
        duration: Duration,
        every: Duration,
        bar: &indicatif::ProgressBar,
    ) -> anyhow::Result<Vec<Sample>> {
        let mut samples = Vec::new();
        let mut next = t0 + every;
        loop {
            let now = Instant::now();
            if next > now {
                std::thread::sleep(next - now);
            }
            samples.push(self.sample(t0.elapsed().as_secs_f64())?);
            if let Some(s) = samples.last() {
                bar.set_message(format!(
                    "soak {:.0}/{:.0} s: RSS {:.1} MB, Redis {:.1} MB",
                    s.t_s,
                    duration.as_secs_f64(),
                    s.rss_mb_total,
                    s.redis_used_memory_mb_total
                ));
            }
            next += every;
            if next > t0 + duration {
                break;
            }
        }
        let left = (t0 + duration).saturating_duration_since(Instant::now());
        std::thread::sleep(left);
        Ok(samples)
    }

    fn sample(&mut self, t_s: f64) -> anyhow::Result<Sample> {
        let rss_mb: Vec<f64> = self.pids.iter().map(|&pid| rss_mb(pid).unwrap_or(0.0)).collect();
        let mut workers = SoakMetrics::default();
        for p in 0..self.pids.len() {
            let path = self.dir.join(format!("metrics-{p}.json"));
            if let Some(m) =
                std::fs::read(&path).ok().and_then(|bytes| serde_json::from_slice::<SoakMetrics>(&bytes).ok())
            {
                workers.l1_bytes += m.l1_bytes;
                workers.recovery_queue += m.recovery_queue;
                workers.wb_delivered += m.wb_delivered;
                workers.wb_enqueue_errors += m.wb_enqueue_errors + m.wb_dead_lettered;
                workers.audit_dropped += m.audit_dropped;
            }
        }
        let mut redis_used_memory_mb = BTreeMap::new();
        let mut connections = 0;
        for url in &self.masters {
            let mut con = redis::Client::open(url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))?;
            let info: String = redis::cmd("INFO").arg("memory").arg("clients").query(&mut con)?;
            let field = |name: &str| {
                info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse::<u64>().ok())
            };
            redis_used_memory_mb.insert(url.clone(), field("used_memory").unwrap_or(0) as f64 / 1e6);
            connections += field("connected_clients").unwrap_or(0);
        }
        Ok(Sample {
            t_s,
            rss_mb_total: rss_mb.iter().sum(),
            rss_mb,
            l1_bytes: workers.l1_bytes,
            redis_used_memory_mb_total: redis_used_memory_mb.values().sum(),
            redis_used_memory_mb,
            connections,
            write_behind_backlog: self.backlog().unwrap_or(0),
            recovery_queue: workers.recovery_queue,
            write_behind_delivered: workers.wb_delivered,
            write_behind_errors: workers.wb_enqueue_errors,
            audit_dropped: workers.audit_dropped,
        })
    }

    /// Entries in the soak's write-behind streams (4 partitions).
    fn backlog(&self) -> anyhow::Result<u64> {
        let streams = (0..4).map(|p| format!("{{wb:{SOAK_STREAM}:{p}}}:s"));
        let mut total = 0;
        match &self.cluster {
            Some(cluster) => {
                let mut con = cluster.get_connection()?;
                for stream in streams {
                    total += redis::cmd("XLEN").arg(stream).query::<u64>(&mut con)?;
                }
            }
            None => {
                let mut con = self.streams.get_connection_with_timeout(Duration::from_secs(2))?;
                for stream in streams {
                    total += redis::cmd("XLEN").arg(stream).query::<u64>(&mut con)?;
                }
            }
        }
        Ok(total)
    }
}

/// `VmRSS` of a process, in MB.
fn rss_mb(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: f64 =
        status.lines().find_map(|l| l.strip_prefix("VmRSS:"))?.trim().trim_end_matches("kB").trim().parse().ok()?;
    Some(kb / 1000.0)
}

/// Start and end of a quantity.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct StartEnd {
    /// At the first sample after warm-up.
    pub start: f64,
    /// At the last sample.
    pub end: f64,
}

/// What `strata drill soak --json` prints.
#[derive(Debug, Clone, Serialize)]
pub struct SoakReport {
    /// Whether every criterion held.
    pub pass: bool,
    /// How long the load ran after the warm-up (the measured part).
    pub duration_s: f64,
    /// How long it ran before, not judged.
    pub warm_up_s: f64,
    /// Operations of the consistency workload (each read or write, however many keys).
    pub ops: usize,
    /// Reads that returned an error.
    pub caller_errors: usize,
    /// Reads older than a write completed more than the bound before they started.
    pub stale_reads: usize,
    /// Summed RSS of the workers after warm-up, in MB.
    pub rss_mb_start: f64,
    /// Summed RSS of the workers at the end, in MB.
    pub rss_mb_end: f64,
    /// Slope of the summed RSS over the last 80 %, in % of `rss_mb_start` per minute.
    pub rss_slope_pct_per_min: f64,
    /// Summed `used_memory` of the masters after warm-up and at the end, in MB.
    pub redis_used_memory_mb: StartEnd,
    /// Its slope over the last 80 %, in % of the start per minute.
    pub redis_slope_pct_per_min: f64,
    /// The largest write-behind backlog seen after warm-up.
    pub max_write_behind_backlog: u64,
    /// The largest auto-recovery queue seen after warm-up (summed over the workers).
    pub max_recovery_queue: u64,
    /// Write-behind entries delivered by the end (summed over the workers).
    pub write_behind_delivered: u64,
    /// Failed `enqueue` calls and dead letters (summed).
    pub write_behind_errors: u64,
    /// Writes that returned an error (the caller was told).
    pub write_errors: usize,
    /// The consistency checker's bound, in ms.
    pub bound_ms: f64,
    /// The largest slope accepted, in % of the start per minute.
    pub max_slope_pct_per_min: f64,
    /// Every sample.
    pub samples: Vec<Sample>,
}

/// The verdict on a soak's consistency report and samples; the first `warm_up` of the run is
/// not judged (nor the first 20 % of the rest).
pub fn verdict(report: &ConsistencyReport, warm_up: Duration, max_slope: f64) -> anyhow::Result<SoakReport> {
    let samples = &report.samples;
    anyhow::ensure!(samples.len() >= 3, "too few samples ({}): run longer or sample more often", samples.len());
    let end_t = samples.last().map_or(0.0, |s| s.t_s);
    let from = warm_up.as_secs_f64() + SETTLE * (end_t - warm_up.as_secs_f64()).max(0.0);
    let kept: Vec<&Sample> = samples.iter().filter(|s| s.t_s >= from).collect();
    anyhow::ensure!(kept.len() >= 2, "too few samples after warm-up");
    let (first, last) = (kept[0], kept[kept.len() - 1]);
    let pct_per_min = |value: fn(&Sample) -> f64| {
        let slope_per_s = slope(&kept.iter().map(|s| (s.t_s, value(s))).collect::<Vec<_>>());
        let start = value(first);
        if start > 0.0 { slope_per_s * 60.0 / start * 100.0 } else { 0.0 }
    };
    let rss_slope = pct_per_min(|s| s.rss_mb_total);
    let redis_slope = pct_per_min(|s| s.redis_used_memory_mb_total);
    let pass = rss_slope < max_slope && redis_slope < max_slope && report.caller_errors == 0 && report.stale_reads == 0;
    Ok(SoakReport {
        pass,
        duration_s: report.load_s - warm_up.as_secs_f64(),
        warm_up_s: warm_up.as_secs_f64(),
        ops: report.ops,
        caller_errors: report.caller_errors,
        stale_reads: report.stale_reads,
        rss_mb_start: first.rss_mb_total,
        rss_mb_end: last.rss_mb_total,
        rss_slope_pct_per_min: rss_slope,
        redis_used_memory_mb: StartEnd {
            start: first.redis_used_memory_mb_total,
            end: last.redis_used_memory_mb_total,
        },
        redis_slope_pct_per_min: redis_slope,
        max_write_behind_backlog: kept.iter().map(|s| s.write_behind_backlog).max().unwrap_or(0),
        max_recovery_queue: kept.iter().map(|s| s.recovery_queue).max().unwrap_or(0),
        write_behind_delivered: last.write_behind_delivered,
        write_behind_errors: last.write_behind_errors,
        write_errors: report.write_errors,
        bound_ms: report.bound_ms,
        max_slope_pct_per_min: max_slope,
        samples: samples.clone(),
    })
}

/// Least-squares slope of `points` (y per unit of x); 0 for fewer than two distinct x.
pub fn slope(points: &[(f64, f64)]) -> f64 {
    let n = points.len() as f64;
    if points.len() < 2 {
        return 0.0;
    }
    let (mx, my) = (points.iter().map(|p| p.0).sum::<f64>() / n, points.iter().map(|p| p.1).sum::<f64>() / n);
    let (mut sxy, mut sxx) = (0.0, 0.0);
    for (x, y) in points {
        sxy += (x - mx) * (y - my);
        sxx += (x - mx) * (x - mx);
    }
    if sxx == 0.0 { 0.0 } else { sxy / sxx }
}

/// The report files: JSON and an HTML page with the resources over time.
pub fn report(soak: &SoakReport, command: &[String]) -> anyhow::Result<Report> {
    let mut report = Report::new("soak", command);
    report.figures(soak)?;
    report.preformatted(&render(soak));
    let series = |name: &str, value: fn(&Sample) -> f64, colour: usize| {
        Series::new(name, soak.samples.iter().map(|s| (s.t_s, value(s))).collect()).with_colour(colour)
    };
    report.line_chart(
        Chart::new("Memory over the run", "seconds", "MB"),
        vec![
            series("workers' RSS (sum)", |s| s.rss_mb_total, 0),
            series("Redis used_memory (masters, sum)", |s| s.redis_used_memory_mb_total, 1),
            series("L1 bytes (sum)", |s| s.l1_bytes as f64 / 1e6, 2),
        ],
    );
    report.line_chart(
        Chart::new("Queues and connections", "seconds", "count"),
        vec![
            series("write-behind backlog", |s| s.write_behind_backlog as f64, 0),
            series("auto-recovery queue", |s| s.recovery_queue as f64, 1),
            series("connections (masters)", |s| s.connections as f64, 2),
        ],
    );
    Ok(report)
}

/// The verdict as text.
pub fn render(s: &SoakReport) -> String {
    format!(
        "{}: soak of {:.0} s after {:.0} s of warm-up, {} ops; caller errors {}, stale reads {} (bound {:.0} ms), write errors {}\n  \
         workers' RSS {:.1} -> {:.1} MB, slope {:+.3} %/min; Redis used_memory {:.2} -> {:.2} MB, slope {:+.3} %/min \
         (limit {} %/min, fitted after the first {:.0} % of the measured run)\n  write-behind: {} delivered, backlog at most {}, \
         {} errors; auto-recovery queue at most {}\n",
        if s.pass { "PASS" } else { "FAIL" },
        s.duration_s,
        s.warm_up_s,
        s.ops,
        s.caller_errors,
        s.stale_reads,
        s.bound_ms,
        s.write_errors,
        s.rss_mb_start,
        s.rss_mb_end,
        s.rss_slope_pct_per_min,
        s.redis_used_memory_mb.start,
        s.redis_used_memory_mb.end,
        s.redis_slope_pct_per_min,
        s.max_slope_pct_per_min,
        SETTLE * 100.0,
        s.write_behind_delivered,
        s.max_write_behind_backlog,
        s.write_behind_errors,
        s.max_recovery_queue,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_slope_of_a_line_is_its_gradient() {
        let line: Vec<(f64, f64)> = (0..10).map(|x| (f64::from(x), 3.0 + 0.5 * f64::from(x))).collect();
        assert!((slope(&line) - 0.5).abs() < 1e-12);
        assert_eq!(slope(&[(1.0, 2.0)]), 0.0);
        assert_eq!(slope(&[(1.0, 2.0), (1.0, 5.0)]), 0.0);
    }
}
