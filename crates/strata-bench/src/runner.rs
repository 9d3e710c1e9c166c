//! The load machinery the scenarios share: closed-loop and open-loop drivers bounded in time and
//! in calls, a hit-ratio timeline, a progress bar driven by the clock, and the per-node Redis
//! probes (masters, INFO fields, CONFIG).

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use indicatif::{ProgressBar, ProgressStyle};

use crate::stats::histogram;
use crate::workload::Target;

/// How much load one phase offers, and for how long at most.
#[derive(Debug, Clone, Copy)]
pub struct Load {
    /// The phase stops issuing calls after this long.
    pub duration: Duration,
    /// ... or after this many calls, whichever comes first.
    pub max_ops: u64,
    /// Concurrent workers (tasks).
    pub concurrency: usize,
}

/// What one phase measured.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Latency of each successful call, in nanoseconds (open loop: from its scheduled start).
    pub latency: Histogram<u64>,
    /// Calls completed (successful or not).
    pub ops: u64,
    /// Calls that reported a hit.
    pub hits: u64,
    /// Calls that failed.
    pub errors: u64,
    /// The first error, for the report.
    pub first_error: Option<String>,
    /// Wall time of the phase.
    pub elapsed: Duration,
    /// Hits and calls per time bucket.
    pub timeline: Timeline,
}

impl Outcome {
    /// Calls per second.
    pub fn throughput(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Fraction of calls that were hits.
    pub fn hit_ratio(&self) -> f64 {
        self.hits as f64 / self.ops.max(1) as f64
    }

    fn empty(bucket: Duration) -> Self {
        Self {
            latency: histogram(),
            ops: 0,
            hits: 0,
            errors: 0,
            first_error: None,
            elapsed: Duration::ZERO,
            timeline: Timeline::new(bucket),
        }
    }

    /// Adds `other` (same bucket width) to this outcome: its timeline continues after this one's.
    pub fn absorb(&mut self, other: &Outcome) {
        let _ = self.latency.add(&other.latency);
        self.ops += other.ops;
        self.hits += other.hits;
        self.errors += other.errors;
        if self.first_error.is_none() {
            self.first_error.clone_from(&other.first_error);
        }
        self.elapsed += other.elapsed;
        self.timeline.buckets.extend_from_slice(&other.timeline.buckets);
    }
}

/// Hits and calls counted per fixed-width time bucket since the start of a phase.
#[derive(Debug, Clone, PartialEq)]
pub struct Timeline {
    /// Width of a bucket.
    pub bucket: Duration,
    /// (hits, calls) per bucket.
    pub buckets: Vec<(u64, u64)>,
}

impl Timeline {
    /// An empty timeline.
    pub fn new(bucket: Duration) -> Self {
        Self { bucket: bucket.max(Duration::from_millis(1)), buckets: Vec::new() }
    }

    /// Counts a call that started `at` after the phase began.
    pub fn record(&mut self, at: Duration, hit: bool) {
        let i = (at.as_nanos() / self.bucket.as_nanos()) as usize;
        if self.buckets.len() <= i {
            self.buckets.resize(i + 1, (0, 0));
        }
        self.buckets[i].0 += u64::from(hit);
        self.buckets[i].1 += 1;
    }

    /// Adds another timeline of the same phase (another worker's).
    pub fn merge(&mut self, other: &Timeline) {
        if self.buckets.len() < other.buckets.len() {
            self.buckets.resize(other.buckets.len(), (0, 0));
        }
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            mine.0 += theirs.0;
            mine.1 += theirs.1;
        }
    }

    /// (seconds at the bucket's end, hit ratio) for every bucket with calls.
    pub fn hit_ratio_points(&self) -> Vec<(f64, f64)> {
        let width = self.bucket.as_secs_f64();
        self.buckets
            .iter()
            .enumerate()
            .filter(|(_, (_, n))| *n > 0)
            .map(|(i, (h, n))| ((i + 1) as f64 * width, *h as f64 / *n as f64))
            .collect()
    }

    /// Seconds from the start until the end of the first bucket whose hit ratio is at least
    /// `ratio` and stays there for the rest of the phase (ignoring the last, partial bucket);
    /// `None` if it never does.
    pub fn time_to_reach(&self, ratio: f64) -> Option<f64> {
        let full = &self.buckets[..self.buckets.len().saturating_sub(1).max(self.buckets.len().min(1))];
        let ok = |&(h, n): &(u64, u64)| n > 0 && h as f64 / n as f64 >= ratio;
        let first_bad_from_end = full.iter().rposition(|b| !ok(b));
        let start = first_bad_from_end.map_or(0, |i| i + 1);
        (start < full.len()).then(|| (start + 1) as f64 * self.bucket.as_secs_f64())
    }

    /// Calls in the buckets that end within `window` of the start.
    pub fn calls_within(&self, window: Duration) -> u64 {
        let n = (window.as_nanos() / self.bucket.as_nanos()) as usize;
        self.buckets.iter().take(n).map(|b| b.1).sum()
    }

    /// Misses in the buckets that end within `window` of the start.
    pub fn misses_within(&self, window: Duration) -> u64 {
        let n = (window.as_nanos() / self.bucket.as_nanos()) as usize;
        self.buckets.iter().take(n).map(|b| b.1 - b.0).sum()
    }
}

/// Runs `op(worker, seq)` in `load.concurrency` workers, each calling again as soon as its last
/// call returns, until `load.duration` has passed or `load.max_ops` calls were issued (`seq`
/// numbers the calls 0, 1, 2... across workers). `op` returns whether the call was a hit.
pub async fn closed_loop<F, Fut>(load: Load, bucket: Duration, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    drive(load, bucket, None, op).await
}

/// Like [`closed_loop`], open loop: calls are scheduled at `rate` per second in total, evenly
/// spread over the workers, whatever the latency; a call's latency counts from its scheduled
/// start, so a backlog shows as latency (no coordinated omission). Calls still due when the
/// duration has passed are not issued (the achieved rate shows the shortfall).
pub async fn open_loop<F, Fut>(load: Load, rate: f64, bucket: Duration, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    drive(load, bucket, Some(rate.max(0.001)), op).await
}

async fn drive<F, Fut>(load: Load, bucket: Duration, rate: Option<f64>, op: F) -> Outcome
where
    F: Fn(usize, u64) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = anyhow::Result<bool>> + Send + 'static,
{
    let workers = load.concurrency.max(1);
    let op = Arc::new(op);
    let seq = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..workers)
        .map(|w| {
            let (op, seq) = (op.clone(), seq.clone());
            tokio::spawn(async move {
                let mut out = Outcome::empty(bucket);
                // Each worker's k-th call is due at (k + w / workers) * interval.
                let interval = rate.map(|r| Duration::from_secs_f64(workers as f64 / r));
                let mut k = 0u32;
                loop {
                    let due = interval.map(|i| start + i.mul_f64(f64::from(k) + w as f64 / workers as f64));
                    if let Some(due) = due {
                        // A backlog is cut off at the end: the phase stays bounded in time.
                        if due.duration_since(start) >= load.duration || start.elapsed() >= load.duration {
                            break;
                        }
                        tokio::time::sleep_until(due.into()).await;
                    } else if start.elapsed() >= load.duration {
                        break;
                    }
                    let n = seq.fetch_add(1, Ordering::Relaxed);
                    if n >= load.max_ops {
                        break;
                    }
                    let began = due.unwrap_or_else(Instant::now);
                    let result = op(w, n).await;
                    let took = began.elapsed();
                    out.ops += 1;
                    match result {
                        Ok(hit) => {
                            out.hits += u64::from(hit);
                            let _ = out.latency.record((took.as_nanos() as u64).max(1));
                            out.timeline.record(began.duration_since(start), hit);
                        }
                        Err(e) => {
                            out.errors += 1;
                            out.first_error.get_or_insert_with(|| format!("{e:#}"));
                        }
                    }
                    k += 1;
                }
                out
            })
        })
        .collect();
    let mut total = Outcome::empty(bucket);
    for task in tasks {
        match task.await {
            Ok(out) => {
                let _ = total.latency.add(&out.latency);
                total.ops += out.ops;
                total.hits += out.hits;
                total.errors += out.errors;
                if total.first_error.is_none() {
                    total.first_error = out.first_error;
                }
                total.timeline.merge(&out.timeline);
            }
            Err(e) => {
                total.errors += 1;
                total.first_error.get_or_insert_with(|| format!("a worker panicked: {e}"));
            }
        }
    }
    total.elapsed = start.elapsed();
    total
}

/// A progress bar on stderr that follows the clock over the planned length of a scenario
/// (phases are bounded by time, so elapsed time is the honest measure of progress).
#[derive(Debug)]
pub struct Clock {
    bar: ProgressBar,
    ticker: tokio::task::JoinHandle<()>,
}

impl Clock {
    /// Starts the bar for a scenario planned to take `planned`.
    pub fn start(planned: Duration) -> Self {
        let len = planned.as_millis().max(1) as u64;
        let bar = ProgressBar::new(len);
        if let Ok(style) = ProgressStyle::with_template("{msg:>28} [{bar:40}] {elapsed}/~{duration}") {
            bar.set_style(style.progress_chars("=> "));
        }
        let (b, started) = (bar.clone(), Instant::now());
        let ticker = tokio::spawn(async move {
            loop {
                b.set_position((started.elapsed().as_millis() as u64).min(len.saturating_sub(1)));
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        });
        Self { bar, ticker }
    }

    /// Names the phase running now.
    pub fn phase(&self, message: impl Into<String>) {
        self.bar.set_message(message.into());
    }
}

impl Drop for Clock {
    fn drop(&mut self) {
        self.ticker.abort();
        self.bar.finish_and_clear();
    }
}

/// URLs of the masters of `target`: the URL itself for a standalone server, the masters that
/// CLUSTER NODES lists as healthy for a cluster (with the seed's credentials).
pub async fn masters(target: &Target) -> anyhow::Result<Vec<String>> {
    let urls = target.urls();
    let seed = urls.first().context("no Redis URL")?;
    if !matches!(target.topology, strata::Topology::Cluster(_)) {
        return Ok(vec![seed.clone()]);
    }
    let mut con = connect(seed).await?;
    let text: String = redis::cmd("CLUSTER").arg("NODES").query_async(&mut con).await?;
    let (scheme, rest) = seed.split_once("://").context("a Redis URL has a scheme")?;
    let auth = rest.rsplit_once('@').map(|(auth, _)| format!("{auth}@")).unwrap_or_default();
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else { continue };
        if flags.split(',').any(|f| f == "master") && !flags.contains("fail") {
            let host_port = addr.split('@').next().unwrap_or(addr);
            out.push(format!("{scheme}://{auth}{host_port}"));
        }
    }
    anyhow::ensure!(!out.is_empty(), "CLUSTER NODES lists no healthy master");
    out.sort();
    Ok(out)
}

/// A connection to one node.
pub async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    let client = redis::Client::open(url).with_context(|| format!("bad Redis URL {url}"))?;
    client.get_multiplexed_async_connection().await.with_context(|| format!("connecting to {url}"))
}

/// The value of `field` in `INFO section` of one node.
pub async fn info_field(
    con: &mut redis::aio::MultiplexedConnection,
    section: &str,
    field: &str,
) -> anyhow::Result<u64> {
    let text: String = redis::cmd("INFO").arg(section).query_async(con).await?;
    parse_info_field(&text, field).with_context(|| format!("INFO {section} has no numeric {field}"))
}

/// Calls of every command since the last stats reset (INFO commandstats), except INFO itself.
pub async fn command_calls(con: &mut redis::aio::MultiplexedConnection) -> anyhow::Result<u64> {
    let text: String = redis::cmd("INFO").arg("commandstats").query_async(con).await?;
    Ok(text
        .lines()
        .filter(|l| l.starts_with("cmdstat_") && !l.starts_with("cmdstat_info:"))
        .filter_map(|l| l.split("calls=").nth(1)?.split(',').next()?.parse::<u64>().ok())
        .sum())
}

fn parse_info_field(text: &str, field: &str) -> Option<u64> {
    text.lines().find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().parse().ok())
}

/// `CONFIG GET name` on one node.
pub async fn config_get(con: &mut redis::aio::MultiplexedConnection, name: &str) -> anyhow::Result<String> {
    let pair: Vec<String> = redis::cmd("CONFIG").arg("GET").arg(name).query_async(con).await?;
    pair.get(1).cloned().with_context(|| format!("CONFIG GET {name} returned nothing"))
}

/// `CONFIG SET name value` on one node.
pub async fn config_set(con: &mut redis::aio::MultiplexedConnection, name: &str, value: &str) -> anyhow::Result<()> {
    let () = redis::cmd("CONFIG").arg("SET").arg(name).arg(value).query_async(con).await?;
    Ok(())
}

/// A Zipf-distributed choice of key ranks 0..n (rank 0 the most frequent).
#[derive(Debug, Clone, Copy)]
pub struct Zipf(rand_distr::Zipf<f64>);

impl Zipf {
    /// Over `n` ranks with exponent `s`.
    pub fn new(n: u64, s: f64) -> anyhow::Result<Self> {
        Ok(Self(rand_distr::Zipf::new(n.max(1) as f64, s)?))
    }

    /// One rank.
    pub fn sample(&self, rng: &mut impl rand::Rng) -> u64 {
        rand_distr::Distribution::sample(&self.0, rng) as u64 - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timeline_buckets_and_time_to_reach() {
        let mut t = Timeline::new(Duration::from_millis(100));
        // Bucket 0: 1/4 hits; bucket 1: 4/4; bucket 2: 3/4; bucket 3: 4/4; bucket 4 (partial): 0/1.
        for (b, hits, calls) in [(0, 1, 4), (1, 4, 4), (2, 3, 4), (3, 4, 4), (4, 0, 1)] {
            for i in 0..calls {
                t.record(Duration::from_millis(b * 100 + 10), i < hits);
            }
        }
        assert_eq!(t.buckets.len(), 5);
        assert_eq!(t.hit_ratio_points()[0], (0.1, 0.25));
        assert_eq!(t.time_to_reach(0.9), Some(0.4), "from the last dip on, the partial bucket ignored");
        assert_eq!(t.time_to_reach(0.7), Some(0.2));
        assert_eq!(t.time_to_reach(1.01), None);
        assert_eq!(t.calls_within(Duration::from_millis(200)), 8);
        assert_eq!(t.misses_within(Duration::from_millis(200)), 3);
        let mut other = Timeline::new(Duration::from_millis(100));
        other.record(Duration::from_millis(650), true);
        t.merge(&other);
        assert_eq!(t.buckets.len(), 7);
        assert_eq!(Timeline::new(Duration::from_millis(100)).time_to_reach(0.5), None);
    }

    #[test]
    fn info_fields_parse() {
        let text = "# Stats\r\nevicted_keys:42\r\nevicted_clients:0\r\n";
        assert_eq!(parse_info_field(text, "evicted_keys"), Some(42));
        assert_eq!(parse_info_field(text, "evicted"), None);
    }

    #[tokio::test]
    async fn loops_stop_at_their_bounds() {
        let load = Load { duration: Duration::from_secs(30), max_ops: 100, concurrency: 4 };
        let out = closed_loop(load, Duration::from_millis(100), |_, n| async move {
            anyhow::ensure!(n % 10 != 0, "every tenth call fails");
            Ok(n % 2 == 0)
        })
        .await;
        assert_eq!(out.ops, 100);
        assert_eq!(out.errors, 10);
        assert_eq!(out.hits, 40);
        assert_eq!(out.latency.len(), 90);
        assert!(out.first_error.is_some_and(|e| e.contains("tenth")));

        let load = Load { duration: Duration::from_millis(300), max_ops: u64::MAX, concurrency: 2 };
        let out = open_loop(load, 100.0, Duration::from_millis(100), |_, _| async { Ok(true) }).await;
        // 100 calls/s for 0.3 s are 30 scheduled calls: the schedule, not the speed of the calls, decides.
        assert_eq!(out.ops, 30);
    }
}
