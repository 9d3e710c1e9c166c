//! `strata drill consistency`: a history checker (in the manner of Jepsen) for the cache.
//!
//! Several worker processes (`strata drill consistency-worker`), each with its own [`Cache`]
//! (L1, leases, cross-instance invalidation, freshness and hot keys on), read and write one key
//! space whose source of truth is a SQLite file they share ([`mod@worker`]). Every operation is
//! logged with its start and end on the host's monotonic clock, the key and the version read or
//! written. Meanwhile the coordinator injects one fault ([`faults`]). When the workers stop, the
//! histories are judged ([`history`]): a read older than a write that completed more than the
//! bound before the read started is a stale read.
//!
//! The key space (app `strata-cons`, version 1):
//!
//! | namespace | keys | read with | written with |
//! | --- | --- | --- | --- |
//! | `item` | 16 | `get_or_set`, `get`, `get_many`, `get_or_set_many` | `delete`, `set`, `set_through`, `update_through_versioned`, `set_many`, `invalidate_namespace`, a plain client's `DEL` |
//! | `refresh` | 16 | `get_or_refresh` (its own keys: no other read path evicts what it keeps) | the same as `item` |
//! | `tagged` | 16, tags `t0`..`t3` | `get_or_set_tagged` | `set_tagged`, `invalidate_tag`, `delete`, a plain `DEL` |
//! | `hot` | 4, 3 hot copies each | `get_or_set` | `delete`, `set` |
//!
//! The plain client deletes the key and its coordination keys (`DEL key {key}:lease
//! {key}:version`), as the contract asks of writers outside Strata: with the key alone, a load
//! or a versioned write running meanwhile can store what it read before the write
//! (docs/reliability.md, "Coherence").
//!
//! A plain `DEL` of a hot key is not in the mix: it cannot reach the copies, which live up to
//! their copy TTL by design (see `HotKeys`).
//!
//! [`Cache`]: strata::Cache

pub mod faults;
pub mod history;
pub mod worker;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use serde::Serialize;
use strata::{Key, KeySchema, Tag};

pub use faults::{Fault, Setup};

use crate::worker_process::{WorkerProcess, count_files};
pub use history::{Entry, Quantiles, StaleRead, Verdict};
pub use worker::{WorkerOptions, worker};

/// The host's monotonic clock in nanoseconds: one clock for every process on the machine.
pub(crate) fn now_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .map(|t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
        .unwrap_or(0)
}

/// The drill's keys (see the module docs).
pub(crate) struct Keyspace {
    /// The namespaces of `item` and `refresh`.
    plain_namespaces: [String; 2],
    /// Read with every cache-aside call but `get_or_refresh`.
    item: Vec<Key>,
    /// Read with `get_or_refresh` only, so that its own L1 path is what serves them.
    refresh: Vec<Key>,
    tags: Vec<Tag>,
    tagged: Vec<(Key, Tag)>,
    hot: Vec<Key>,
    hot_namespace: String,
    /// The namespace of `tagged` (encrypted under `drill soak`).
    tagged_namespace: String,
}

const PLAIN_KEYS: usize = 16;
const TAGGED_KEYS: usize = 16;
const TAGS: usize = 4;
const HOT_KEYS: usize = 4;

impl Keyspace {
    pub(crate) fn new() -> anyhow::Result<Keyspace> {
        let schema = KeySchema::new("strata-cons", 1)?;
        let keys =
            |entity: &str, n: usize| (0..n).map(|i| schema.key(entity, &i.to_string())).collect::<Result<Vec<_>, _>>();
        let tags: Vec<Tag> = (0..TAGS).map(|t| schema.tag(&format!("t{t}"))).collect::<Result<_, _>>()?;
        let tagged =
            keys("tagged", TAGGED_KEYS)?.into_iter().enumerate().map(|(i, k)| (k, tags[i % TAGS].clone())).collect();
        Ok(Keyspace {
            plain_namespaces: [schema.namespace("item")?, schema.namespace("refresh")?],
            item: keys("item", PLAIN_KEYS)?,
            refresh: keys("refresh", PLAIN_KEYS)?,
            tags,
            tagged,
            hot: keys("hot", HOT_KEYS)?,
            hot_namespace: schema.namespace("hot")?,
            tagged_namespace: schema.namespace("tagged")?,
        })
    }

    fn pick(keys: &[Key]) -> Key {
        keys[rand::rng().random_range(0..keys.len())].clone()
    }

    /// A key of `item` or `refresh` (writes).
    fn plain_key(&self) -> Key {
        if rand::rng().random_bool(0.5) { Self::pick(&self.item) } else { Self::pick(&self.refresh) }
    }

    /// `n` different keys of `item` or `refresh`.
    fn distinct_plain_keys(&self, n: usize) -> Vec<Key> {
        let all = self.item.len() + self.refresh.len();
        let at = |i: usize| if i < self.item.len() { &self.item[i] } else { &self.refresh[i - self.item.len()] };
        rand::seq::index::sample(&mut rand::rng(), all, n).into_iter().map(|i| at(i).clone()).collect()
    }

    fn item_key(&self) -> Key {
        Self::pick(&self.item)
    }

    fn item_keys(&self, n: usize) -> Vec<Key> {
        (0..n).map(|_| self.item_key()).collect()
    }

    fn refresh_key(&self) -> Key {
        Self::pick(&self.refresh)
    }

    fn plain_namespace(&self) -> &str {
        &self.plain_namespaces[rand::rng().random_range(0..2)]
    }

    fn tagged_key(&self) -> (Key, Tag) {
        self.tagged[rand::rng().random_range(0..self.tagged.len())].clone()
    }

    fn tag(&self) -> Tag {
        self.tags[rand::rng().random_range(0..self.tags.len())].clone()
    }

    fn hot_key(&self) -> Key {
        Self::pick(&self.hot)
    }

    /// Every key with its tag.
    fn all_keys(&self) -> impl Iterator<Item = (&Key, Option<&Tag>)> {
        let plain = self.item.iter().chain(&self.refresh).chain(&self.hot).map(|k| (k, None));
        plain.chain(self.tagged.iter().map(|(k, t)| (k, Some(t))))
    }

    /// Every Redis key the drill may have written (values, leases, stamps, hot copies, and the
    /// soak's write-behind queue).
    fn redis_patterns() -> [&'static str; 3] {
        ["strata-cons:*", "{strata-cons:*", "{wb:strata-soak:*"]
    }
}

/// Settings of one run.
#[derive(Debug, Clone)]
pub struct Options {
    /// The fault.
    pub fault: Fault,
    /// Worker processes.
    pub processes: usize,
    /// Reader tasks per process.
    pub readers: usize,
    /// Writer tasks per process.
    pub writers: usize,
    /// The load before, during and after the fault (at least 4 s after recovery).
    pub duration: Duration,
    /// The staleness bound: a read may return a version superseded less than this long ago.
    pub bound: Duration,
    /// Show progress on stderr.
    pub progress: bool,
    /// Turn cross-instance invalidation off in the workers (the drill must then fail).
    pub without_invalidation: bool,
    /// The plain client deletes the key alone, not its lease key (a writer outside Strata that
    /// ignores the lease contract).
    pub plain_key_only: bool,
    /// Keep the histories (`history-N.jsonl`) and the source in this directory.
    pub keep: Option<PathBuf>,
    /// `drill soak`: no fault; the workers run at a fixed rate with every feature on, and the
    /// resources are sampled at this interval ([`crate::soak`]).
    pub soak: Option<Duration>,
}

/// What the drill found (the fields up to `caller_errors` are the contract of `--json`).
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The fault injected.
    pub fault: String,
    /// `standalone` or `cluster`.
    pub topology: String,
    /// Worker processes.
    pub processes: usize,
    /// Operations (each read or write, however many keys it touched).
    pub ops: usize,
    /// Reads judged (one per key read).
    pub reads: usize,
    /// Completed writes (one per key written).
    pub writes: usize,
    /// Reads older than a write completed more than `bound_ms` before they started.
    pub stale_reads: usize,
    /// The largest staleness of any read, in ms.
    pub max_staleness_ms: f64,
    /// The bound, in ms.
    pub bound_ms: f64,
    /// How long after a write an older version was still read, in ms.
    pub visible_after_write_ms: Quantiles,
    /// Reads that returned an error.
    pub caller_errors: usize,
    /// Writes that returned an error (the caller was told; not counted as completed).
    pub write_errors: usize,
    /// Stale reads if every failed write counted as completed when it returned: how long the
    /// cache kept serving what the source had moved past after an invalidation Redis could not
    /// take (informational: those callers got an error).
    pub stale_reads_after_failed_writes: usize,
    /// Stale reads per API call.
    pub stale_by_op: std::collections::BTreeMap<String, usize>,
    /// The largest staleness per API call (within the bound or not), in ms.
    pub max_staleness_ms_by_op: std::collections::BTreeMap<String, f64>,
    /// The first stale reads, for diagnosis.
    pub stale_examples: Vec<StaleRead>,
    /// The read with the largest staleness (within the bound or not).
    pub worst_read: Option<StaleRead>,
    /// When the fault started, seconds after the load did.
    pub fault_at_s: f64,
    /// How long the fault took until the setup was healthy again, in seconds.
    pub fault_s: f64,
    /// How long the load ran, in seconds.
    pub load_s: f64,
    /// L1 hits summed over the processes (proves the L1 was exercised).
    pub l1_hits: u64,
    /// `drill soak`'s samples of the resources (empty otherwise).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<crate::soak::Sample>,
}

/// Runs the drill on `setup`, starting workers with `worker_command` (the `strata` binary and
/// the arguments before the worker's own).
pub fn run(setup: &mut Setup, options: &Options, worker_command: &[String]) -> anyhow::Result<Report> {
    anyhow::ensure!(
        !options.fault.needs_processes() || !matches!(setup, Setup::External(_)),
        "fault {} stops or starts nodes: let the drill start its own setup (--topology)",
        options.fault.name()
    );
    let fault = options.fault;
    let mut inject = |setup: &mut Setup| setup.inject(fault).with_context(|| format!("injecting {}", fault.name()));
    let injected = Injected { name: fault.name(), inject: &mut inject };
    run_with(setup, options, &[worker_command.to_vec()], injected)
}

/// A fault [`run_with`] injects a third of the way in: its name for the report, and what
/// injects it and waits until the setup is healthy again.
pub struct Injected<'a> {
    /// The fault's name in the report.
    pub name: &'a str,
    /// Injects it; returns once the setup is healthy again.
    pub inject: &'a mut dyn FnMut(&mut Setup) -> anyhow::Result<()>,
}

impl std::fmt::Debug for Injected<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Injected").field("name", &self.name).finish_non_exhaustive()
    }
}

/// [`run`] with a fault of the caller's (`strata drill partition`'s, on the lab) and a command
/// per worker: worker `p` runs `worker_commands[p % len]` (e.g. inside different lab hosts).
pub fn run_with(
    setup: &mut Setup,
    options: &Options,
    worker_commands: &[Vec<String>],
    fault: Injected<'_>,
) -> anyhow::Result<Report> {
    anyhow::ensure!(options.processes >= 1 && options.readers + options.writers >= 1, "nothing to run");
    anyhow::ensure!(!worker_commands.is_empty(), "no worker command");
    let dir = tempfile::Builder::new().prefix("strata-consistency-").tempdir()?;
    let space = Keyspace::new()?;
    let urls = setup.urls();
    clear_keys(setup)?;
    worker::Source::create(&dir.path().join(worker::SOURCE_DB), &space)?;

    let bar = progress(options.progress);
    bar.set_message("starting the workers");
    let mut workers = spawn_workers(dir.path(), &urls, options, worker_commands)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while count_files(dir.path(), "ready-") < options.processes {
        anyhow::ensure!(Instant::now() < deadline, "the workers did not start in 60 s");
        anyhow::ensure!(!workers.iter_mut().any(WorkerProcess::exited), "a worker exited before the start");
        std::thread::sleep(Duration::from_millis(10));
    }
    std::fs::write(dir.path().join("go"), b"")?;
    let t0 = Instant::now();
    let (mut fault_at, mut fault_s, mut samples) = (Duration::ZERO, 0.0, Vec::new());
    match options.soak {
        Some(every) => {
            let mut sampler = crate::soak::Sampler::new(setup, &workers, dir.path())?;
            samples = sampler.run(t0, options.duration, every, &bar)?;
        }
        None => {
            bar.set_message("load before the fault");
            std::thread::sleep(options.duration / 3);
            bar.set_message(format!("injecting {}", fault.name));
            fault_at = t0.elapsed();
            (fault.inject)(setup)?;
            fault_s = (t0.elapsed() - fault_at).as_secs_f64();
            bar.set_message("load after the fault");
            let end = options.duration.max(t0.elapsed() + Duration::from_secs(4));
            std::thread::sleep(end.saturating_sub(t0.elapsed()));
        }
    }
    std::fs::write(dir.path().join("stop"), b"")?;
    let load_s = t0.elapsed().as_secs_f64();
    bar.set_message("collecting the histories");
    let mut l1_hits = 0;
    let collect_by = Instant::now() + Duration::from_secs(60);
    for worker in &mut workers {
        let out = worker.wait(collect_by)?;
        let line = out.lines().rev().find(|l| l.starts_with('{')).context("a worker printed no summary")?;
        let summary: serde_json::Value = serde_json::from_str(line)?;
        l1_hits += summary["l1_hits"].as_u64().unwrap_or(0);
    }
    let mut entries = Vec::new();
    for p in 0..options.processes {
        entries.extend(read_history(&dir.path().join(format!("history-{p}.jsonl")))?);
    }
    if let Some(keep) = &options.keep {
        std::fs::create_dir_all(keep)?;
        for entry in std::fs::read_dir(dir.path())?.flatten() {
            let name = entry.file_name();
            if name.to_string_lossy().starts_with("history-") || name == worker::SOURCE_DB {
                std::fs::copy(entry.path(), keep.join(&name))?;
            }
        }
    }
    bar.set_message("checking");
    let bound = u64::try_from(options.bound.as_nanos()).unwrap_or(u64::MAX);
    let verdict = history::check(&entries, bound);
    let with_failed_writes: Vec<Entry> = entries
        .iter()
        .map(|e| Entry { ok: e.ok || (e.kind == history::Kind::Write && e.version.is_some()), ..e.clone() })
        .collect();
    let stale_reads_after_failed_writes =
        history::check(&with_failed_writes, bound).stale_reads.saturating_sub(verdict.stale_reads);
    bar.finish_and_clear();
    let _ = clear_keys(setup);
    Ok(Report {
        fault: fault.name.to_owned(),
        topology: setup.topology().to_owned(),
        processes: options.processes,
        ops: count_ops(&entries),
        reads: verdict.reads,
        writes: verdict.writes,
        stale_reads: verdict.stale_reads,
        max_staleness_ms: verdict.max_staleness_ms,
        bound_ms: options.bound.as_secs_f64() * 1e3,
        visible_after_write_ms: verdict.visible_after_write_ms,
        caller_errors: verdict.caller_errors,
        write_errors: verdict.write_errors,
        stale_reads_after_failed_writes,
        stale_by_op: verdict.stale_by_op.into_iter().collect(),
        max_staleness_ms_by_op: verdict.max_staleness_by_op.into_iter().collect(),
        stale_examples: verdict.examples,
        worst_read: verdict.worst,
        fault_at_s: fault_at.as_secs_f64(),
        fault_s,
        load_s,
        l1_hits,
        samples,
    })
}

fn spawn_workers(
    dir: &Path,
    urls: &[String],
    options: &Options,
    worker_commands: &[Vec<String>],
) -> anyhow::Result<Vec<WorkerProcess>> {
    // A worker stops by itself at the latest this long after its start (a lost coordinator).
    let max = options.duration * 3 + Duration::from_secs(180);
    // Credentials in the URLs go to the workers through their environment: a command line is
    // readable by every user of the machine.
    let (urls, credentials) = without_credentials(urls);
    let mut workers = Vec::new();
    for p in 0..options.processes {
        let command = &worker_commands[p % worker_commands.len()];
        let (program, base_args) = command.split_first().context("no worker command")?;
        let mut child = Command::new(program);
        for (name, value) in credentials.iter() {
            child.env(name, value);
        }
        let child = child
            .args(base_args)
            .args(["--dir", &dir.to_string_lossy(), "--process", &p.to_string()])
            .args(["--readers", &options.readers.to_string(), "--writers", &options.writers.to_string()])
            .args(["--max-secs", &max.as_secs().to_string()])
            .args(options.without_invalidation.then_some("--without-invalidation"))
            .args(options.plain_key_only.then_some("--plain-key-only"))
            .args(options.soak.is_some().then_some("--soak"))
            .args(urls.iter().flat_map(|u| ["--url".to_owned(), u.clone()]))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("starting worker {p}"))?;
        workers.push(WorkerProcess::new(child));
    }
    Ok(workers)
}

/// `urls` without their `user:password@`, and that user and password as the workers'
/// environment (from the first URL that has them).
fn without_credentials(urls: &[String]) -> (Vec<String>, Vec<(&'static str, String)>) {
    let mut credentials = Vec::new();
    let stripped = urls
        .iter()
        .map(|url| {
            let (bare, info) = faults::split_userinfo(url);
            if let (Some(info), true) = (info, credentials.is_empty()) {
                let (user, password) = info.split_once(':').unwrap_or(("", info));
                if !user.is_empty() {
                    credentials.push((worker::WORKER_USER, user.to_owned()));
                }
                credentials.push((worker::WORKER_PASSWORD, password.to_owned()));
            }
            bare
        })
        .collect();
    (stripped, credentials)
}

fn read_history(path: &PathBuf) -> anyhow::Result<Vec<Entry>> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    text.lines().map(|l| serde_json::from_str(l).context("a malformed history line")).collect()
}

/// Operations: entries of one call share process, start and op.
fn count_ops(entries: &[Entry]) -> usize {
    let mut calls: Vec<(u16, u64, &str)> = entries.iter().map(|e| (e.process, e.start, e.op.as_str())).collect();
    calls.sort_unstable();
    calls.dedup();
    calls.len()
}

/// Deletes every key of the drill (before: leftovers of an interrupted run; after: tidiness).
fn clear_keys(setup: &Setup) -> anyhow::Result<()> {
    for url in setup.master_urls()? {
        let mut con = redis::Client::open(url.as_str())?.get_connection_with_timeout(Duration::from_secs(2))?;
        for pattern in Keyspace::redis_patterns() {
            let keys: Vec<String> = redis::cmd("KEYS").arg(pattern).query(&mut con)?;
            for key in keys {
                redis::cmd("DEL").arg(&key).query::<()>(&mut con)?;
            }
        }
    }
    Ok(())
}

fn progress(on: bool) -> indicatif::ProgressBar {
    let bar = if on { indicatif::ProgressBar::new_spinner() } else { indicatif::ProgressBar::hidden() };
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credentials_leave_the_worker_urls_for_their_environment() {
        let urls = ["redis://admin:s3cret@10.77.0.11:6379".to_owned(), "redis://10.77.0.12:6379".to_owned()];
        let (bare, env) = without_credentials(&urls);
        assert_eq!(bare, ["redis://10.77.0.11:6379", "redis://10.77.0.12:6379"]);
        assert_eq!(env, [(worker::WORKER_USER, "admin".to_owned()), (worker::WORKER_PASSWORD, "s3cret".to_owned())]);
        // A password alone (the default user), and no credentials at all.
        let (_, env) = without_credentials(&["redis://:pw@h:1".to_owned()]);
        assert_eq!(env, [(worker::WORKER_PASSWORD, "pw".to_owned())]);
        let (bare, env) = without_credentials(&["redis://h:1".to_owned()]);
        assert_eq!((bare, env.len()), (vec!["redis://h:1".to_owned()], 0));
    }
}
