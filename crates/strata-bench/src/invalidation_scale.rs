//! `strata bench --scenario invalidation-scale`: does an instance's invalidation work grow with
//! the keys it holds, or with the whole deployment's write rate?
//!
//! `processes` cache processes (copies of the `strata` binary, `strata bench-worker`) each read
//! their own share of `keys` (key `n` belongs to process `n % processes`) through `get_or_set`,
//! so their L1 holds their keys, and re-read them at a fixed rate. A writer in this process
//! deletes keys spread over all of them at a fixed rate `W` (Strata's `delete`, as a
//! cache-aside writer does after updating its database); every delete makes the owner's next
//! read a miss (a lease, a load, a store). Each worker counts the keys named by the
//! invalidation messages it received (`invalidation_messages`), and of those the internal keys
//! (leases, write-behind entries): its share of the writes is `W / processes`.
//!
//! Two phases run back to back on the same deployment: invalidation on, then off (the workers
//! started again without tracking), and for each the Redis CPU per write (`used_cpu_sys +
//! used_cpu_user` of every master, over the measured seconds, divided by the writes) and the
//! commands Redis ran per write, so that what tracking costs Redis is a ratio in one run.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::{Deserialize, Serialize};
use strata::{Cache, Invalidation, KeySchema, Ttl};

use crate::cpu::redis_work;
use crate::report::Report;
use crate::runner::{connect, masters};
use crate::worker_process::{RemoveDir, WorkerProcess, count_files, unique};
use crate::workload::{Target, spinner};

/// Settings of the scenario.
#[derive(Debug, Clone)]
pub struct Options {
    /// Cache processes, each reading its own share of the keys.
    pub processes: usize,
    /// Keys in all.
    pub keys: usize,
    /// Deletes per second, over all keys (W).
    pub write_rate: f64,
    /// Reads per second of each process (its keys in turn).
    pub read_rate: f64,
    /// Unmeasured time for the workers to read every key of theirs once.
    pub warmup: Duration,
    /// Measured time of each phase.
    pub measured: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            processes: 8,
            keys: 8_000,
            write_rate: 2_000.0,
            read_rate: 2_000.0,
            warmup: Duration::from_secs(3),
            measured: Duration::from_secs(15),
        }
    }
}

/// What one phase measured (the field names are a contract).
#[derive(Debug, Clone, Serialize)]
pub struct Phase {
    /// Whether the workers tracked invalidations.
    pub invalidation: bool,
    /// Deletes made per second (the target is `write_rate`).
    pub writes_per_s: f64,
    /// Keys named by invalidation messages per second, for each process.
    pub messages_per_s: Vec<f64>,
    /// The most any process received, over its share of the writes (`W / processes`).
    pub max_over_share: f64,
    /// Keys named by messages that were internal keys, all processes together.
    pub internal_messages: u64,
    /// Whole-L1 flushes in the measured seconds, all processes together (0 expected).
    pub l1_flushes: u64,
    /// Reads per second of all processes.
    pub reads_per_s: f64,
    /// The share of those reads served from L1.
    pub l1_hit_ratio: f64,
    /// Errors the workers' callers saw.
    pub caller_errors: u64,
    /// Redis CPU (user + system, all masters) per delete, microseconds.
    pub redis_cpu_us_per_write: f64,
    /// Commands Redis ran (all masters) per delete.
    pub redis_commands_per_write: f64,
    /// Redis's own time per `DEL` (INFO commandstats, all masters), microseconds: with
    /// tracking, a `DEL` also looks the key up in the tracking table and queues its message.
    pub del_us_per_call: f64,
    /// The same per `GET`: with tracking, a tracked `GET` also records its reader.
    pub get_us_per_call: f64,
}

/// The scenario's figures.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// Cache processes.
    pub processes: usize,
    /// Keys in all.
    pub keys: usize,
    /// Deletes per second asked for (W).
    pub write_rate: f64,
    /// Reads per second of each process.
    pub read_rate: f64,
    /// Measured seconds of each phase.
    pub measured_s: f64,
    /// `W / processes`: what one process should receive at most (times 1.2: the target).
    pub share_per_s: f64,
    /// Invalidation on in every process.
    pub tracking: Phase,
    /// Invalidation off: what Redis does for the same load without tracking.
    pub without_tracking: Phase,
    /// Redis CPU per write with tracking over without.
    pub redis_cpu_ratio: f64,
}

/// What a worker prints on its last stdout line: counters over the measured seconds.
#[derive(Debug, Serialize, Deserialize)]
struct WorkerResult {
    messages: u64,
    internal: u64,
    flushes: u64,
    reads: u64,
    l1_hits: u64,
    errors: u64,
}

/// Runs both phases against `target`, starting workers with `worker_command` (the `strata`
/// binary and the arguments before the worker's own).
pub async fn run(target: &Target, options: &Options, worker_command: &[String]) -> anyhow::Result<Figures> {
    anyhow::ensure!(options.processes >= 1 && options.keys >= options.processes, "need a key per process");
    anyhow::ensure!(options.write_rate > 0.0 && options.read_rate > 0.0, "rates must be positive");
    let tracking = phase(target, options, worker_command, true).await?;
    let without_tracking = phase(target, options, worker_command, false).await?;
    let share_per_s = options.write_rate / options.processes as f64;
    let redis_cpu_ratio = tracking.redis_cpu_us_per_write / without_tracking.redis_cpu_us_per_write.max(f64::EPSILON);
    Ok(Figures {
        processes: options.processes,
        keys: options.keys,
        write_rate: options.write_rate,
        read_rate: options.read_rate,
        measured_s: options.measured.as_secs_f64(),
        share_per_s,
        tracking,
        without_tracking,
        redis_cpu_ratio,
    })
}

async fn phase(
    target: &Target,
    options: &Options,
    worker_command: &[String],
    invalidation: bool,
) -> anyhow::Result<Phase> {
    let (program, base_args) = worker_command.split_first().context("no worker command")?;
    let dir = std::env::temp_dir().join(format!("strata-invalidation-scale-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&dir)?;
    let _cleanup = RemoveDir(dir.clone());
    let app = format!("invscale{}", unique());
    let urls = target.urls();
    let spinner = spinner(if invalidation {
        "invalidation-scale: tracking on (warm-up, then measured)"
    } else {
        "invalidation-scale: tracking off (warm-up, then measured)"
    });
    let mut workers = Vec::new();
    for id in 0..options.processes {
        let child = Command::new(program)
            .args(base_args)
            .args(["--dir", &dir.to_string_lossy(), "--app", &app, "--id", &id.to_string()])
            .args(["--processes", &options.processes.to_string(), "--keys", &options.keys.to_string()])
            .args(["--read-rate", &options.read_rate.to_string()])
            .args(if invalidation { vec![] } else { vec!["--without-invalidation".to_owned()] })
            .args(urls.iter().flat_map(|u| ["--url".to_owned(), u.clone()]))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {id}"))?;
        workers.push(WorkerProcess::new(child));
    }
    let deadline = Instant::now() + Duration::from_secs(60) + options.warmup + options.measured * 2;
    while count_files(&dir, "ready-") < options.processes {
        anyhow::ensure!(Instant::now() < deadline, "workers did not start in time");
        anyhow::ensure!(!workers.iter_mut().any(WorkerProcess::exited_badly), "a worker failed to start");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // The writer: one more cache instance, with no L1 (it reads nothing).
    let writer = target.cache_builder().l1_capacity_bytes(0).require_redis(true).build().await?;
    let schema = KeySchema::new(&app, 1)?;
    std::fs::write(dir.join("go"), b"")?;
    tokio::time::sleep(options.warmup).await;

    let mut nodes = Vec::new();
    for url in masters(target).await? {
        nodes.push(connect(&url).await?);
    }
    let (cpu_before, stats_before) = redis_work(&mut nodes).await?;
    std::fs::write(dir.join("measure"), b"")?;
    let started = Instant::now();
    let writes = write_at_rate(&writer, &schema, options).await?;
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::write(dir.join("stop"), b"")?;
    let (cpu_after, stats_after) = redis_work(&mut nodes).await?;
    let per_call = |command: &str| {
        let (calls, usec) = (
            stats_after.of(command).0 - stats_before.of(command).0,
            stats_after.of(command).1 - stats_before.of(command).1,
        );
        if calls > 0.0 { usec / calls } else { 0.0 }
    };

    let mut results = Vec::new();
    for mut worker in workers {
        let text = worker.wait(deadline)?;
        let line = text.lines().rev().find(|l| l.starts_with('{')).context("a worker printed no result")?;
        results.push(serde_json::from_str::<WorkerResult>(line)?);
    }
    spinner.finish_and_clear();
    let share = options.write_rate / options.processes as f64;
    let messages_per_s: Vec<f64> = results.iter().map(|r| r.messages as f64 / elapsed).collect();
    let reads: u64 = results.iter().map(|r| r.reads).sum();
    let l1_hits: u64 = results.iter().map(|r| r.l1_hits).sum();
    let writes = writes.max(1) as f64;
    Ok(Phase {
        invalidation,
        writes_per_s: writes / elapsed,
        max_over_share: messages_per_s.iter().copied().fold(0.0, f64::max) / share,
        messages_per_s,
        internal_messages: results.iter().map(|r| r.internal).sum(),
        l1_flushes: results.iter().map(|r| r.flushes).sum(),
        reads_per_s: reads as f64 / elapsed,
        l1_hit_ratio: if reads == 0 { 0.0 } else { l1_hits as f64 / reads as f64 },
        caller_errors: results.iter().map(|r| r.errors).sum(),
        redis_cpu_us_per_write: (cpu_after - cpu_before) * 1e6 / writes,
        redis_commands_per_write: (stats_after.calls() - stats_before.calls()) / writes,
        del_us_per_call: per_call("del"),
        get_us_per_call: per_call("get"),
    })
}

/// Deletes keys spread over every process's share at `write_rate` for the measured time;
/// returns how many were made.
async fn write_at_rate(writer: &Cache, schema: &KeySchema, options: &Options) -> anyhow::Result<u64> {
    let period = Duration::from_millis(10);
    let per_tick = options.write_rate * period.as_secs_f64();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let deadline = tokio::time::Instant::now() + options.measured;
    let (mut owed, mut made, mut next) = (0.0, 0u64, 0usize);
    let per_process = options.keys / options.processes;
    while tokio::time::Instant::now() < deadline {
        ticks.tick().await;
        owed += per_tick;
        let mut batch = Vec::new();
        while owed >= 1.0 {
            owed -= 1.0;
            // Every process in turn, and within its keys a stride that visits them all.
            let (process, round) = (next % options.processes, next / options.processes);
            next += 1;
            let n = process + options.processes * ((round * 7919) % per_process);
            batch.push(schema.key("item", &n.to_string())?);
        }
        let deletes = batch.iter().map(|key| writer.delete(key));
        for done in futures_util::future::join_all(deletes).await {
            done.context("a delete failed")?;
            made += 1;
        }
    }
    Ok(made)
}

/// Settings of one worker (`strata bench-worker`), from the coordinator.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// The deployment.
    pub urls: Vec<String>,
    /// Where the coordinator's signals (`go`, `measure`, `stop`) appear.
    pub dir: PathBuf,
    /// The key schema's app segment of this run.
    pub app: String,
    /// This worker's number: it reads keys `n` with `n % processes == id`.
    pub id: usize,
    /// Workers in all.
    pub processes: usize,
    /// Keys in all.
    pub keys: usize,
    /// Reads per second.
    pub read_rate: f64,
    /// Whether to track invalidations.
    pub invalidation: bool,
}

/// The worker side: reads its keys (`n % processes == id`) in turn at `read_rate` until the
/// stop file appears, and prints the counters of the measured seconds as one JSON line.
pub async fn worker(options: WorkerOptions) -> anyhow::Result<()> {
    let target = Target::external(options.urls.clone())?;
    let invalidation = if options.invalidation { Invalidation::default() } else { Invalidation::disabled() };
    let cache = target.cache_builder().invalidation(invalidation).require_redis(true).build().await?;
    let schema = KeySchema::new(&options.app, 1)?;
    let mine: Vec<_> = (options.id..options.keys)
        .step_by(options.processes)
        .map(|n| schema.key("item", &n.to_string()))
        .collect::<strata::Result<_>>()?;
    let dir = &options.dir;
    std::fs::write(dir.join(format!("ready-{}", options.id)), b"")?;
    wait_for(dir, "go", Duration::from_secs(60)).await?;
    let period = Duration::from_millis(10);
    let per_tick = options.read_rate * period.as_secs_f64();
    let mut ticks = tokio::time::interval(period);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let (mut owed, mut next, mut errors) = (0.0, 0usize, 0u64);
    let mut at_start: Option<(strata::MetricsSnapshot, u64)> = None;
    let hard_stop = Instant::now() + Duration::from_secs(600);
    while !dir.join("stop").exists() && Instant::now() < hard_stop {
        ticks.tick().await;
        if at_start.is_none() && dir.join("measure").exists() {
            at_start = Some((cache.metrics(), errors));
        }
        owed += per_tick;
        while owed >= 1.0 {
            owed -= 1.0;
            let key = &mine[next % mine.len()];
            next += 1;
            let id = key.as_str().to_owned();
            let got = cache.get_or_set(key, Ttl::Long, || async move { Ok::<_, std::io::Error>(id) }).await;
            if got.is_err() {
                errors += 1;
            }
        }
    }
    cache.settled().await;
    let (start, errors_before) = at_start.context("the measured phase never began")?;
    let end = cache.metrics();
    let (s, e) = (start.total(), end.total());
    let result = WorkerResult {
        messages: end.invalidation_messages - start.invalidation_messages,
        internal: end.invalidation_messages_internal - start.invalidation_messages_internal,
        flushes: end.l1_flushes - start.l1_flushes,
        reads: (e.l1_hits + e.l1_misses) - (s.l1_hits + s.l1_misses),
        l1_hits: e.l1_hits - s.l1_hits,
        errors: errors - errors_before,
    };
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}

async fn wait_for(dir: &Path, name: &str, limit: Duration) -> anyhow::Result<()> {
    let deadline = Instant::now() + limit;
    while !dir.join(name).exists() {
        anyhow::ensure!(Instant::now() < deadline, "no {name} signal");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    Ok(())
}

/// The figures as a table, with the verdict on the target (at most 1.2 x W / processes per
/// process, no internal key).
pub fn render(f: &Figures) -> String {
    let mut out = format!(
        "invalidation-scale: {} processes, {} keys (each reads its {}), deletes at {:.0}/s over all keys, {:.0} s measured per phase\n\
         a process's share of the writes: {:.0}/s\n\n",
        f.processes,
        f.keys,
        f.keys / f.processes,
        f.write_rate,
        f.measured_s,
        f.share_per_s
    );
    out.push_str(&format!(
        "{:<13}{:>9}{:>20}{:>13}{:>10}{:>9}{:>9}{:>16}{:>12}{:>10}{:>10}\n",
        "phase",
        "writes/s",
        "messages/s/process",
        "max / share",
        "internal",
        "flushes",
        "L1 hits",
        "Redis µs/write",
        "cmds/write",
        "µs/DEL",
        "µs/GET"
    ));
    for p in [&f.tracking, &f.without_tracking] {
        let (lo, hi) = p.messages_per_s.iter().fold((f64::MAX, 0.0f64), |(lo, hi), &m| (lo.min(m), hi.max(m)));
        out.push_str(&format!(
            "{:<13}{:>9.0}{:>20}{:>13}{:>10}{:>9}{:>8.1}%{:>16.1}{:>12.2}{:>10.2}{:>10.2}\n",
            if p.invalidation { "tracking" } else { "no tracking" },
            p.writes_per_s,
            format!("{lo:.0}-{hi:.0}"),
            format!("x{:.2}", p.max_over_share),
            p.internal_messages,
            p.l1_flushes,
            p.l1_hit_ratio * 100.0,
            p.redis_cpu_us_per_write,
            p.redis_commands_per_write,
            p.del_us_per_call,
            p.get_us_per_call
        ));
    }
    let t = &f.tracking;
    let met = t.max_over_share <= 1.2 && t.internal_messages == 0;
    out.push_str(&format!(
        "\nper process at most x{:.2} its share (target <= x1.2), {} messages naming internal keys (target 0): {}\n\
         Redis CPU per write with tracking / without: x{:.2} (without tracking no reader learns of a delete:\n\
         no re-read, no load, and stale L1 copies; the commands per write say how much of it is that traffic)\n\
         Redis's time per DEL with tracking / without: {}\n",
        t.max_over_share,
        t.internal_messages,
        if met { "met" } else { "NOT met" },
        f.redis_cpu_ratio,
        ratio(t.del_us_per_call, f.without_tracking.del_us_per_call),
    ));
    out
}

/// `a / b` as `x1.23`, or `n/a` when either was not measured (no calls).
fn ratio(a: f64, b: f64) -> String {
    if a > 0.0 && b > 0.0 { format!("x{:.2}", a / b) } else { "n/a".to_owned() }
}

/// The report: figures, the table, and messages per process against the share.
pub fn report(f: &Figures, command: &[String]) -> anyhow::Result<Report> {
    let mut report = Report::new("invalidation-scale", command);
    report.figures(f)?.preformatted(&render(f));
    let categories: Vec<String> = (0..f.processes).map(|i| format!("process {i}")).collect();
    report.bar_chart(
        crate::svg::Chart {
            title: "Keys named by invalidation messages per second, per process".into(),
            x_label: "process".into(),
            y_label: "keys/s".into(),
            x_scale: crate::svg::Scale::Linear,
            y_range: None,
        },
        &categories,
        vec![
            ("tracking on".to_owned(), f.tracking.messages_per_s.clone()),
            ("its share of the writes (W / processes)".to_owned(), vec![f.share_per_s; f.processes]),
        ],
    );
    Ok(report)
}
