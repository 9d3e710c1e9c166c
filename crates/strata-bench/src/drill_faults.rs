//! `strata drill failover|restart|outage|reshard`: a cache-aside load runs while a fault is injected into
//! a cluster made by `strata up`; the report says what the callers saw.
//!
//! The load: `workers` tasks, each with its own [`Cache`] (L1 on, as in production), call
//! `get_or_set` over a fixed key space whose source is an in-memory table of versions. Every key
//! is loaded once before the clock starts. A writer task with a cache of its own raises one odd
//! key's version every 5 ms and deletes the key through its cache (the even keys are the ones the
//! reshard drill checks for survival), so the source keeps moving; every
//! read and write is judged by the consistency checker ([`crate::consistency::history`]): a read
//! older than a write completed more than `bound` before it started is a **stale read**. Giving
//! each task its own cache makes the cache's counters attributable to one call at a time:
//!
//! * a call **saw L2 fail** when its cache's `l2_errors + l2_timeouts` moved during the call (a
//!   Redis call failed or timed out), and **skipped L2** when `breaker_rejections` moved (the
//!   open breaker did not even try);
//! * a **fallback call** failed or skipped L2 *and* its value came from the loader
//!   (`loader_calls` moved): the source answered because Redis could not;
//! * a **caller error** is a call that returned an error;
//! * **`l2_unavailable_s`** is the window of calls that saw L2 fail: from the start of the first
//!   to the end of the last one that started less than 1 s after the window so far (0 when none
//!   did); a failure after a full second without any (a lone timeout on a loaded machine, long
//!   after the fault) is counted in `stray_l2_failures` instead of stretching the window.
//!   **`l2_degraded_s`** is the same window counting breaker skips too, i.e. how long callers
//!   were served without Redis;
//! * the **phases**: *before* = calls started before the fault; *during* = calls started between
//!   the fault and recovery (the later of "the injector saw the cluster healthy again" and the
//!   end of the last call that failed or skipped L2); *after* = the rest.
//!
//! The load is paced (each task pauses 1 ms between calls) and bounded by `max_calls` and the
//! duration; the drill's keys are deleted at the end.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;
use strata::{Cache, KeySchema, Ttl};

use crate::consistency::history::{self, Entry, Kind};
use crate::consistency::now_ns;
use crate::fault_inject::{self, Fault};
use crate::fault_nodes::Nodes;
use crate::stats;

/// Settings of a fault drill.
#[derive(Debug, Clone)]
pub struct Options {
    /// Which fault.
    pub fault: Fault,
    /// The whole drill: load before, during and after the fault.
    pub duration: Duration,
    /// Concurrent callers (each with its own cache instance).
    pub workers: usize,
    /// Distinct keys.
    pub keys: usize,
    /// Upper bound on calls in total.
    pub max_calls: usize,
    /// How long every node stays down in the outage drill.
    pub outage_for: Duration,
    /// Show a progress spinner on stderr.
    pub progress: bool,
    /// The staleness bound of the stale-read check.
    pub bound: Duration,
}

/// What the drill observed (the first seven fields are a contract).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Calls made.
    pub calls: usize,
    /// Calls that returned an error or a wrong value.
    pub caller_errors: usize,
    /// Calls answered by the loader because L2 failed.
    pub fallback_calls: usize,
    /// Span of calls that saw L2 fail, in seconds.
    pub l2_unavailable_s: f64,
    /// p99 latency before the fault, in milliseconds.
    pub p99_ms_before: f64,
    /// p99 latency during the fault, in milliseconds.
    pub p99_ms_during: f64,
    /// p99 latency after recovery, in milliseconds.
    pub p99_ms_after: f64,
    /// p50 latency before the fault, in milliseconds.
    pub p50_ms_before: f64,
    /// p50 latency during the fault, in milliseconds.
    pub p50_ms_during: f64,
    /// p50 latency after recovery, in milliseconds.
    pub p50_ms_after: f64,
    /// Span of calls that failed or skipped L2 (open breaker), in seconds.
    pub l2_degraded_s: f64,
    /// Calls that saw L2 fail after the unavailability window closed (a second without any).
    pub stray_l2_failures: usize,
    /// Calls that failed or skipped L2 after the degraded window closed.
    pub stray_degraded_calls: usize,
    /// The longest call, in milliseconds (every phase).
    pub slowest_call_ms: f64,
    /// When the longest call started, in seconds from the fault (negative: before it).
    pub slowest_call_start_s: f64,
    /// Whether the longest call ran its loader (it waited, then loaded; or loaded slowly).
    pub slowest_call_loaded: bool,
    /// Calls that took longer than a second.
    pub calls_over_1s: usize,
    /// `cluster-node-timeout` of the nodes, in seconds.
    pub node_timeout_s: f64,
    /// Which fault was injected.
    pub fault: String,
    /// From the fault to the injector's last step (for failover: the old master started again
    /// and the cluster healthy), in seconds.
    pub fault_s: f64,
    /// From the fault to "every slot has a live master and every node says ok" (server side;
    /// for failover: the replica took over), in seconds.
    pub cluster_recovered_s: f64,
    /// Times the callers' breakers opened (summed over the cache instances).
    pub breaker_opens: u64,
    /// Every breaker was closed when the load stopped.
    pub breakers_closed_at_end: bool,
    /// Keys checked for survival (restart drill; 0 otherwise).
    pub keys_checked: usize,
    /// Of those, keys missing after the restart.
    pub keys_lost: usize,
    /// Reads older than a write completed more than `bound_ms` before they started.
    pub stale_reads: usize,
    /// The largest staleness of any read, in ms.
    pub max_staleness_ms: f64,
    /// The staleness bound, in ms.
    pub bound_ms: f64,
    /// Source writes (each followed by a `delete` through the writer's cache).
    pub writes: usize,
    /// The stalest read (within the bound or not), with the write that superseded it; its
    /// times are on the host's monotonic clock, like `fault_window_ns`.
    pub worst_read: Option<crate::consistency::history::StaleRead>,
    /// When the fault was injected and when the injector finished, monotonic clock in ns.
    pub fault_window_ns: (u64, u64),
}

/// One call's outcome, times relative to the start of the load.
#[derive(Debug, Clone, Copy)]
struct Call {
    start: Duration,
    end: Duration,
    ok: bool,
    l2_failed: bool,
    l2_skipped: bool,
    loaded: bool,
}

const NAMESPACE: &str = "faults";

/// Where the drill's cluster is.
#[derive(Debug, Clone)]
pub enum Target {
    /// The directory of `strata up`: nodes can be stopped and started again.
    Dir(std::path::PathBuf),
    /// Any node of a loopback cluster: nodes can only be killed (failover).
    Url(String),
}

/// Runs the drill against `target`.
pub async fn run(target: &Target, options: &Options) -> anyhow::Result<Report> {
    anyhow::ensure!(options.workers >= 1 && options.keys >= 1, "need at least one worker and one key");
    let mut nodes = match target {
        Target::Dir(dir) => Nodes::load(dir)?,
        Target::Url(url) => Nodes::discover(url)?,
    };
    fault_inject::prepare(&nodes, options.fault)?;
    let urls: Vec<String> = nodes.nodes().iter().map(|n| n.url.clone()).collect();
    let schema = KeySchema::new("strata-drill", 1)?;
    let keys: Arc<Vec<strata::Key>> =
        Arc::new((0..options.keys).map(|i| schema.key(NAMESPACE, &i.to_string())).collect::<Result<_, _>>()?);
    let mut caches = Vec::new();
    for _ in 0..options.workers {
        caches.push(Cache::builder().cluster(urls.clone()).build().await?);
    }
    let source: Source = Arc::new((0..options.keys).map(|_| AtomicU64::new(1)).collect());
    for (i, key) in keys.iter().enumerate() {
        caches[0].get_or_set(key, Ttl::Long, load_from(&source, i)).await?;
    }
    let writer = Cache::builder().cluster(urls.clone()).build().await?;

    let t0 = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let budget = Arc::new(AtomicUsize::new(options.max_calls));
    let tasks: Vec<_> = caches
        .iter()
        .enumerate()
        .map(|(w, cache)| {
            tokio::spawn(load(cache.clone(), keys.clone(), source.clone(), w, t0, stop.clone(), budget.clone()))
        })
        .collect();
    let writes = tokio::spawn(write(writer, keys.clone(), source.clone(), stop.clone()));
    let bar = if options.progress { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
    bar.enable_steady_tick(Duration::from_millis(200));
    // Before the fault: a third of the drill. The fault itself blocks (it waits for processes
    // and cluster health), so it runs off the async workers.
    bar.set_message("load before the fault");
    tokio::time::sleep(options.duration / 3).await;
    bar.set_message(format!("injecting {:?}", options.fault));
    let (fault, outage_for) = (options.fault, options.outage_for);
    // The writer deletes only odd keys: the even ones must survive a reshard untouched.
    let written: Vec<String> = keys.iter().step_by(2).map(|k| k.as_str().to_owned()).collect();
    let fault_start = t0.elapsed();
    let fault_start_ns = now_ns();
    let injected = tokio::task::spawn_blocking(move || {
        let result = fault_inject::inject(&mut nodes, fault, outage_for, &written);
        (nodes, result)
    })
    .await?;
    let (nodes, survival) = (injected.0, injected.1);
    let fault_end = t0.elapsed();
    let fault_window_ns = (fault_start_ns, now_ns());
    bar.set_message("load after the fault");
    let rest = options.duration.saturating_sub(fault_end);
    // Enough time after recovery for the breakers (open for 1 s by default) to probe and close.
    tokio::time::sleep(rest.max(Duration::from_secs(4))).await;
    stop.store(true, Ordering::Relaxed);
    let (mut calls, mut history) = (Vec::new(), writes.await?);
    for task in tasks {
        let (c, h) = task.await?;
        calls.extend(c);
        history.extend(h);
    }
    let writes = history.iter().filter(|e| e.kind == Kind::Write).count();
    let verdict = history::check(&history, u64::try_from(options.bound.as_nanos()).unwrap_or(u64::MAX));
    bar.finish_and_clear();
    let survival = survival?;
    let metrics: Vec<_> = caches.iter().map(Cache::metrics).collect();
    let mut report = summarize(&calls, fault_start, fault_end);
    report.fault = options.fault.name().to_owned();
    report.fault_s = (fault_end - fault_start).as_secs_f64();
    report.cluster_recovered_s = survival
        .healthy_at
        .map_or(report.fault_s, |at| at.saturating_duration_since(t0).saturating_sub(fault_start).as_secs_f64());
    report.breaker_opens = metrics.iter().map(|m| m.breaker_opens).sum();
    report.breakers_closed_at_end = metrics.iter().all(|m| m.breaker_state == strata::BreakerState::Closed);
    report.node_timeout_s = fault_inject::node_timeout(&nodes).as_secs_f64();
    report.keys_checked = survival.checked;
    report.keys_lost = survival.lost;
    report.stale_reads = verdict.stale_reads;
    report.max_staleness_ms = verdict.max_staleness_ms;
    report.bound_ms = options.bound.as_secs_f64() * 1e3;
    report.writes = writes;
    report.worst_read = verdict.worst;
    report.fault_window_ns = fault_window_ns;
    let _ = fault_inject::remove_keys(&nodes, keys.iter().map(|k| k.as_str().to_owned()).collect());
    Ok(report)
}

/// The in-memory source: the current version of every key.
type Source = Arc<Vec<AtomicU64>>;

/// A loader of key `i` from the source.
fn load_from(source: &Source, i: usize) -> impl FnOnce() -> std::future::Ready<Result<u64, std::io::Error>> + use<> {
    let source = source.clone();
    move || std::future::ready(Ok(source[i].load(Ordering::SeqCst)))
}

/// The writer: every 5 ms an odd key's version goes up in the source, then the key is deleted
/// through the writer's cache (an invalidating write). Each is a history entry.
async fn write(cache: Cache, keys: Arc<Vec<strata::Key>>, source: Source, stop: Arc<AtomicBool>) -> Vec<Entry> {
    let mut history = Vec::new();
    let mut i = 0usize;
    let odd: Vec<usize> = (1..keys.len()).step_by(2).collect();
    while !stop.load(Ordering::Relaxed) && !odd.is_empty() {
        let k = odd[i % odd.len()];
        i = i.wrapping_add(104_729);
        let start = now_ns();
        let version = source[k].fetch_add(1, Ordering::SeqCst) + 1;
        let ok = cache.delete(&keys[k]).await.is_ok();
        history.push(entry(Kind::Write, "delete", &keys[k], start, Some(version), ok));
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    history
}

fn entry(kind: Kind, op: &str, key: &strata::Key, start: u64, version: Option<u64>, ok: bool) -> Entry {
    Entry { kind, op: op.to_owned(), process: 0, key: key.as_str().to_owned(), start, end: now_ns(), version, ok }
}

/// (failed L2 calls, breaker rejections, loader calls) so far.
fn counters(cache: &Cache) -> (u64, u64, u64) {
    let m = cache.metrics();
    (m.l2_errors + m.l2_timeouts, m.breaker_rejections, m.total().loader_calls)
}

async fn load(
    cache: Cache,
    keys: Arc<Vec<strata::Key>>,
    source: Source,
    worker: usize,
    t0: Instant,
    stop: Arc<AtomicBool>,
    budget: Arc<AtomicUsize>,
) -> (Vec<Call>, Vec<Entry>) {
    let (mut calls, mut history) = (Vec::new(), Vec::new());
    let mut i = worker;
    while !stop.load(Ordering::Relaxed) && budget.fetch_sub(1, Ordering::Relaxed).checked_sub(1).is_some() {
        let k = i % keys.len();
        i = i.wrapping_add(7919);
        let before = counters(&cache);
        let start = t0.elapsed();
        let start_ns = now_ns();
        let got = cache.get_or_set(&keys[k], Ttl::Long, load_from(&source, k)).await;
        history.push(entry(Kind::Read, "get_or_set", &keys[k], start_ns, got.as_ref().ok().copied(), got.is_ok()));
        let end = t0.elapsed();
        let after = counters(&cache);
        calls.push(Call {
            start,
            end,
            ok: got.is_ok(),
            l2_failed: after.0 > before.0,
            l2_skipped: after.1 > before.1,
            loaded: after.2 > before.2,
        });
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    (calls, history)
}

fn summarize(calls: &[Call], fault_start: Duration, fault_end: Duration) -> Report {
    let (l2_unavailable_s, _, stray_failed) = window(calls.iter().filter(|c| c.l2_failed));
    let (l2_degraded_s, last, stray_degraded) = window(calls.iter().filter(|c| c.l2_failed || c.l2_skipped));
    let recovered = fault_end.max(last);
    let mut phases = [stats::histogram(), stats::histogram(), stats::histogram()];
    for c in calls {
        let phase = if c.start < fault_start {
            0
        } else if c.start <= recovered {
            1
        } else {
            2
        };
        let ns = u64::try_from((c.end - c.start).as_nanos()).unwrap_or(u64::MAX).max(1);
        let _ = phases[phase].record(ns.min(60_000_000_000));
    }
    let slowest = calls.iter().max_by_key(|c| c.end - c.start);
    let ms = |h: &hdrhistogram::Histogram<u64>, q: f64| {
        if h.is_empty() { 0.0 } else { h.value_at_quantile(q) as f64 / 1e6 }
    };
    Report {
        calls: calls.len(),
        caller_errors: calls.iter().filter(|c| !c.ok).count(),
        fallback_calls: calls.iter().filter(|c| (c.l2_failed || c.l2_skipped) && c.loaded && c.ok).count(),
        l2_unavailable_s,
        l2_degraded_s,
        node_timeout_s: 0.0,
        p99_ms_before: ms(&phases[0], 0.99),
        p99_ms_during: ms(&phases[1], 0.99),
        p99_ms_after: ms(&phases[2], 0.99),
        p50_ms_before: ms(&phases[0], 0.5),
        p50_ms_during: ms(&phases[1], 0.5),
        p50_ms_after: ms(&phases[2], 0.5),
        stray_l2_failures: stray_failed,
        stray_degraded_calls: stray_degraded,
        slowest_call_ms: slowest.map_or(0.0, |c| (c.end - c.start).as_secs_f64() * 1e3),
        slowest_call_start_s: slowest.map_or(0.0, |c| c.start.as_secs_f64() - fault_start.as_secs_f64()),
        slowest_call_loaded: slowest.is_some_and(|c| c.loaded),
        calls_over_1s: calls.iter().filter(|c| c.end - c.start > Duration::from_secs(1)).count(),
        fault: String::new(),
        fault_s: 0.0,
        cluster_recovered_s: 0.0,
        breaker_opens: 0,
        breakers_closed_at_end: true,
        keys_checked: 0,
        keys_lost: 0,
        stale_reads: 0,
        max_staleness_ms: 0.0,
        bound_ms: 0.0,
        worst_read: None,
        fault_window_ns: (0, 0),
        writes: 0,
    }
}

/// A gap of this long without a failed call ends the unavailability window.
const WINDOW_GAP: Duration = Duration::from_secs(1);

/// The window of `calls` (in start order): from the first call's start to the end of the last
/// call that started within [`WINDOW_GAP`] of the window so far, in seconds; the window's end;
/// and how many calls came after it (stray failures, e.g. a timeout on a loaded machine long
/// after the fault, reported apart rather than stretching the window).
fn window<'a>(calls: impl Iterator<Item = &'a Call>) -> (f64, Duration, usize) {
    let mut calls: Vec<&Call> = calls.collect();
    calls.sort_by_key(|c| c.start);
    let Some(first) = calls.first() else { return (0.0, Duration::ZERO, 0) };
    let (start, mut end, mut stray) = (first.start, first.end, 0);
    for c in &calls[1..] {
        if stray == 0 && c.start <= end + WINDOW_GAP {
            end = end.max(c.end);
        } else {
            stray += 1;
        }
    }
    (end.saturating_sub(start).as_secs_f64(), end, stray)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(start_ms: u64, end_ms: u64, l2_failed: bool, l2_skipped: bool, loaded: bool) -> Call {
        let ms = Duration::from_millis;
        Call { start: ms(start_ms), end: ms(end_ms), ok: true, l2_failed, l2_skipped, loaded }
    }

    #[test]
    fn spans_phases_and_fallbacks_follow_the_per_call_outcomes() {
        let calls = [
            call(0, 1, false, false, false),
            call(1000, 1100, true, false, true),
            call(2000, 2500, true, false, true),
            call(2600, 2601, false, true, true),
            call(2700, 2701, false, false, true),
            Call { ok: false, ..call(5000, 5002, false, false, false) },
        ];
        let r = summarize(&calls, Duration::from_millis(900), Duration::from_millis(2000));
        assert_eq!(r.calls, 6);
        assert_eq!(r.caller_errors, 1);
        // The last load after L2 came back is a plain miss, not a fallback.
        assert_eq!(r.fallback_calls, 3);
        assert!((r.l2_unavailable_s - 1.5).abs() < 1e-9, "{}", r.l2_unavailable_s);
        assert!((r.l2_degraded_s - 1.601).abs() < 1e-9, "{}", r.l2_degraded_s);
        // Recovery is the end of the breaker-skipped call (2601 ms), after the injector's 2000 ms.
        assert!((r.p99_ms_before - 1.0).abs() < 0.01, "{}", r.p99_ms_before);
        assert!((r.p99_ms_during - 500.0).abs() < 1.0, "{}", r.p99_ms_during);
        assert!((r.p99_ms_after - 2.0).abs() < 0.01, "{}", r.p99_ms_after);
        // The slowest call (500 ms, started 1.1 s after the fault at 900 ms) and the calls over 1 s.
        assert!((r.slowest_call_ms - 500.0).abs() < 1e-9, "{}", r.slowest_call_ms);
        assert!((r.slowest_call_start_s - 1.1).abs() < 1e-9, "{}", r.slowest_call_start_s);
        assert!(r.slowest_call_loaded);
        assert_eq!(r.calls_over_1s, 0);
        let waited = [call(0, 1, false, false, false), call(500, 8900, false, false, false)];
        let r = summarize(&waited, Duration::from_millis(900), Duration::from_millis(2000));
        assert_eq!(r.calls_over_1s, 1);
        assert!((r.slowest_call_start_s + 0.4).abs() < 1e-9, "{}", r.slowest_call_start_s);
        assert!(!r.slowest_call_loaded);
    }

    #[test]
    fn a_failure_long_after_the_window_is_counted_apart() {
        let calls = [
            call(1000, 1100, true, false, true),
            call(1900, 2000, true, false, true),
            call(9000, 9300, true, false, true),
        ];
        let r = summarize(&calls, Duration::from_millis(900), Duration::from_millis(2000));
        assert!((r.l2_unavailable_s - 1.0).abs() < 1e-9, "{}", r.l2_unavailable_s);
        assert_eq!((r.stray_l2_failures, r.stray_degraded_calls), (1, 1));
    }

    #[test]
    fn no_failures_means_no_unavailability() {
        let calls = [call(0, 1, false, false, false), call(10, 12, false, false, true)];
        let r = summarize(&calls, Duration::from_millis(5), Duration::from_millis(6));
        assert_eq!((r.fallback_calls, r.l2_unavailable_s, r.l2_degraded_s), (0, 0.0, 0.0));
    }
}
