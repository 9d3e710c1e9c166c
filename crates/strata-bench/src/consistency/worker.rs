//! One worker process of `strata drill consistency`: its own [`Cache`] (L1, leases, tracking,
//! freshness and hot keys on), reader and writer tasks over the drill's key space, and the
//! history of everything it did, written to `history-N.jsonl` when it stops.
//!
//! The source of truth is a SQLite file (WAL mode) that every process shares: one row per key
//! with a version that only grows, taken from one counter, so every write's version is unique
//! and newer than everything committed before it. Writes follow what an application does:
//!
//! - **invalidating writes** (`delete`, `plain_del`, `invalidate_namespace`, `invalidate_tag`):
//!   commit the new version, then invalidate; concurrent writers of one key need no
//!   coordination;
//! - **value writes** (`set`, `set_many`, `set_tagged`): commit the new version, then write the
//!   cache, both under the application's writer lock (held by every writer while it commits), so
//!   that the cache sees value writes in the order of the source (a cache `set` is
//!   last-writer-wins; an application serializes its writers of one row the same way). The
//!   source is committed before the cache is written, as it should be: a cache write lost
//!   before the commit (a FLUSHALL, a failover) would otherwise let readers cache the older
//!   committed version;
//! - **`set_through`**: the cache's own ordering is under test, so writers of one key run
//!   concurrently. The source write is optimistic, as with a version column: it refuses a
//!   version older than the one it holds (the call then fails and the cache is emptied of the
//!   key), so the source's versions keep growing; a refused write is not judged. Odd-numbered
//!   processes keep the previous value serving during their write-throughs
//!   (`LeaseConfig::keep_serving_during_writes`), even-numbered ones delete it first (the
//!   default), so every run checks both and their mix;
//! - **`update_through_versioned`** (as the example service updates a profile, with
//!   `LeaseConfig::versioned_writes` on, so loads start write versions): the source write
//!   commits a new version and answers it; writers of one key run concurrently, ordered by that
//!   version alone.

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use rand::Rng;
use rusqlite::{Connection, params};
use strata::{Cache, Freshness, HotKeys, Invalidation, Key, LeaseConfig, Tag, Ttl, TtlPolicy};

use super::history::{Entry, Kind};
use super::{Keyspace, now_ns};
use crate::drill_coherence::PlainClient;

/// The source's file in the drill's directory.
pub(crate) const SOURCE_DB: &str = "source.sqlite3";

/// Settings of one worker.
#[derive(Debug, Clone)]
pub struct WorkerOptions {
    /// Redis: one URL (standalone) or cluster seeds.
    pub urls: Vec<String>,
    /// The drill's directory (source, start and stop signals, histories).
    pub dir: PathBuf,
    /// This worker's number.
    pub process: u16,
    /// Reader tasks.
    pub readers: usize,
    /// Writer tasks.
    pub writers: usize,
    /// Stop at the latest after this long, even without the stop signal.
    pub max_duration: Duration,
    /// Turn cross-instance invalidation off (shows the stale reads it prevents).
    pub without_invalidation: bool,
    /// The plain client deletes the key alone, not its lease key too (shows the stale sets the
    /// lease contract prevents).
    pub plain_key_only: bool,
    /// `drill soak`: a fixed rate per task, and every other feature on too (encryption of the
    /// `tagged` namespace, an audit log, a write-behind queue drained by this process), with
    /// this process's figures written to `metrics-N.json` every second.
    pub soak: bool,
}

/// The period of one reader task (and 4 times it of a writer) under `soak`: about 450
/// operations a second per process with 4 readers and 2 writers.
const SOAK_READ_PERIOD: Duration = Duration::from_millis(10);

/// The write-behind queue of `drill soak` (each process enqueues 20 writes a second to it).
pub const SOAK_STREAM: &str = "strata-soak";

/// What a soak worker reports every second (`metrics-N.json`).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct SoakMetrics {
    /// Weighted bytes in L1.
    pub l1_bytes: u64,
    /// Entries in L1.
    pub l1_entries: u64,
    /// Invalidations queued for replay (auto-recovery).
    pub recovery_queue: u64,
    /// Write-behind entries enqueued by this process.
    pub wb_enqueued: u64,
    /// Write-behind entries this process delivered.
    pub wb_delivered: u64,
    /// Write-behind entries this process dead-lettered.
    pub wb_dead_lettered: u64,
    /// `enqueue` calls that failed.
    pub wb_enqueue_errors: u64,
    /// Audit records dropped (the log could not keep up).
    pub audit_dropped: u64,
}

/// The TTL of every value the drill caches: short, so that values expire, refresh early and
/// are served stale-while-revalidate within one run.
const VALUE_TTL: Duration = Duration::from_secs(3);

/// The ACL user a worker logs in as, set by the coordinator when its URLs carry one.
pub(crate) const WORKER_USER: &str = "STRATA_DRILL_REDIS_USER";
/// Its password.
pub(crate) const WORKER_PASSWORD: &str = "STRATA_DRILL_REDIS_PASSWORD";

/// Runs one worker until the coordinator's stop signal (or `max_duration`).
pub async fn worker(options: WorkerOptions) -> anyhow::Result<()> {
    let space = Arc::new(Keyspace::new()?);
    // Credentials come through the environment, not the command line (`ps` shows that); the
    // cache and the plain client both use them.
    let urls: Vec<String> = match std::env::var(WORKER_PASSWORD) {
        Ok(password) => {
            let user = std::env::var(WORKER_USER).unwrap_or_default();
            options
                .urls
                .iter()
                .map(|u| match u.split_once("://") {
                    Some((scheme, host)) => format!("{scheme}://{user}:{password}@{host}"),
                    None => u.clone(),
                })
                .collect()
        }
        Err(_) => options.urls.clone(),
    };
    let builder = if urls.len() > 1 {
        Cache::builder().cluster(urls.clone())
    } else {
        Cache::builder().redis_url(urls[0].clone())
    };
    let builder = if options.without_invalidation { builder.invalidation(Invalidation::disabled()) } else { builder };
    let audit = if options.soak {
        Some(strata::AuditSink::file(options.dir.join(format!("audit-{}.log", options.process)))?)
    } else {
        None
    };
    let builder = match &audit {
        Some(sink) => {
            // A fixed key: the drill checks memory and coherence, not secrecy.
            let ring = strata::Keyring::parse(&format!("soak:{}", "5a".repeat(32)))?;
            builder
                .encryption(strata::Encryption::new(ring).namespace(space.tagged_namespace.clone()))
                .audit(sink.clone())
        }
        None => builder,
    };
    let cache = builder
        .ttl_policy(TtlPolicy::new().short(VALUE_TTL))
        .freshness(
            Freshness::new()
                .early_refresh(1.0)
                .stale_while_revalidate(Duration::from_secs(1))
                .fail_safe(Duration::from_secs(10)),
        )
        .hot_keys(HotKeys::new().namespace(space.hot_namespace.clone(), 3))
        .leases(LeaseConfig::default().keep_serving_during_writes(options.process % 2 == 1).versioned_writes(true))
        .build()
        .await?;
    let source = Arc::new(Source::open(&options.dir.join(SOURCE_DB))?);
    let dir = options.dir.clone();
    std::fs::write(dir.join(format!("ready-{}", options.process)), b"")?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.join("go").exists() {
        anyhow::ensure!(Instant::now() < deadline, "no start signal");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let watcher = tokio::spawn(watch_stop(dir.join("stop"), options.max_duration, stop.clone()));
    // The history goes to its file as it is made: a long run must not grow this process.
    let (history, entries) = tokio::sync::mpsc::unbounded_channel::<Entry>();
    let writing = tokio::task::spawn_blocking({
        let path = dir.join(format!("history-{}.jsonl", options.process));
        move || write_history(&path, entries)
    });
    let soak = match options.soak {
        true => Some(Soak::start(&cache, &dir, options.process, audit, stop.clone())?),
        false => None,
    };
    let mut tasks = Vec::new();
    for i in 0..options.readers + options.writers {
        let actor = Actor {
            cache: cache.clone(),
            source: source.clone(),
            space: space.clone(),
            process: options.process,
            plain: if i >= options.readers { Some(PlainClient::connect(&urls).await?) } else { None },
            plain_key_only: options.plain_key_only,
            history: history.clone(),
            period: options.soak.then_some(if i >= options.readers { SOAK_READ_PERIOD * 4 } else { SOAK_READ_PERIOD }),
        };
        tasks.push(tokio::spawn(actor.run(stop.clone())));
    }
    drop(history);
    for task in tasks {
        task.await?;
    }
    watcher.abort();
    if let Some(soak) = soak {
        soak.finish().await?;
    }
    cache.settled().await;
    let written = writing.await??;
    let m = cache.metrics();
    println!("{}", serde_json::json!({ "entries": written, "l1_hits": m.total().l1_hits }));
    Ok(())
}

/// Writes every entry received to `path`, one JSON line each, until the senders are gone.
fn write_history(path: &Path, mut entries: tokio::sync::mpsc::UnboundedReceiver<Entry>) -> anyhow::Result<usize> {
    let mut out = std::io::BufWriter::new(std::fs::File::create(path)?);
    let mut written = 0;
    while let Some(entry) = entries.blocking_recv() {
        serde_json::to_writer(&mut out, &entry)?;
        out.write_all(b"\n")?;
        written += 1;
    }
    out.flush()?;
    Ok(written)
}

/// The parts of `drill soak` beyond the consistency workload: a write-behind queue (enqueued
/// to at 20 writes a second, drained by this process) and the metrics file.
struct Soak {
    tasks: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
}

impl Soak {
    fn start(
        cache: &Cache,
        dir: &Path,
        process: u16,
        audit: Option<strata::AuditSink>,
        stop: Arc<AtomicBool>,
    ) -> anyhow::Result<Soak> {
        // Few dedup records per partition: they reach their bound within the warm-up, and the
        // soak checks that it holds (with the default 10,000 they would grow for minutes).
        let config = strata::WriteBehindConfig::new(SOAK_STREAM)
            .partitions(4)
            .claim_idle(Duration::from_secs(2))
            .dedup_capacity(100);
        let wb = strata::WriteBehind::new(cache, config)?;
        let enqueue_errors = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let mut tasks = Vec::new();
        let (queue, errors, stopping) = (wb.clone(), enqueue_errors.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut ticks = tokio::time::interval(Duration::from_millis(50));
            let mut n = 0_u64;
            while !stopping.load(Ordering::Relaxed) {
                ticks.tick().await;
                n += 1;
                let key = format!("soak:{process}:{}", n % 100);
                if queue.enqueue(&key, &n.to_le_bytes(), &format!("{process}-{n}")).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
            }
            Ok(())
        }));
        let (drain, stopping) = (wb.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let shutdown = async move {
                while !stopping.load(Ordering::Relaxed) {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            };
            drain.worker().run(|_record| async { Ok::<(), String>(()) }, shutdown).await?;
            Ok(())
        }));
        let (cache, path) = (cache.clone(), dir.join(format!("metrics-{process}.json")));
        tasks.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let (m, s) = (cache.metrics(), wb.stats());
                let figures = SoakMetrics {
                    l1_bytes: m.l1_bytes,
                    l1_entries: m.l1_entries,
                    recovery_queue: m.recovery_queue,
                    wb_enqueued: s.enqueued,
                    wb_delivered: s.delivered,
                    wb_dead_lettered: s.dead_lettered,
                    wb_enqueue_errors: enqueue_errors.load(Ordering::Relaxed),
                    audit_dropped: audit.as_ref().map_or(0, strata::AuditSink::dropped),
                };
                // Written aside, then renamed: the coordinator never reads half a file.
                let partial = path.with_extension("tmp");
                std::fs::write(&partial, serde_json::to_vec(&figures)?)?;
                std::fs::rename(&partial, &path)?;
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Ok(())
        }));
        Ok(Soak { tasks })
    }

    async fn finish(self) -> anyhow::Result<()> {
        for task in self.tasks {
            task.await??;
        }
        Ok(())
    }
}

async fn watch_stop(signal: PathBuf, max: Duration, stop: Arc<AtomicBool>) {
    let until = Instant::now() + max;
    while !signal.exists() && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
}

/// One reader or writer task.
struct Actor {
    cache: Cache,
    source: Arc<Source>,
    space: Arc<Keyspace>,
    process: u16,
    /// A plain Redis client (writers only): another team's service deleting keys.
    plain: Option<PlainClient>,
    /// The plain client leaves the lease key alone.
    plain_key_only: bool,
    /// Where the history goes.
    history: tokio::sync::mpsc::UnboundedSender<Entry>,
    /// A fixed period per operation (`drill soak`); without it, a short pause after each.
    period: Option<Duration>,
}

/// What one operation did, before it becomes history entries.
struct Outcome {
    kind: Kind,
    op: &'static str,
    keys: Vec<String>,
    start: u64,
    versions: Vec<Option<u64>>,
    ok: bool,
}

impl Actor {
    async fn run(mut self, stop: Arc<AtomicBool>) {
        let writer = self.plain.is_some();
        let mut ticks = self.period.map(|period| {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks
        });
        // Bounded: the stop signal, or the worker's own deadline in `watch_stop`.
        while !stop.load(Ordering::Relaxed) {
            if let Some(ticks) = &mut ticks {
                ticks.tick().await;
            }
            let roll = rand::rng().random_range(0..100);
            let outcome = if writer { self.write(roll).await } else { self.read(roll).await };
            let end = now_ns();
            for (i, key) in outcome.keys.iter().enumerate() {
                let _ = self.history.send(Entry {
                    kind: outcome.kind,
                    op: outcome.op.to_owned(),
                    process: self.process,
                    key: key.clone(),
                    start: outcome.start,
                    end,
                    version: outcome.versions.get(i).copied().flatten(),
                    ok: outcome.ok,
                });
            }
            if ticks.is_none() {
                let pause = if writer { 4 } else { 1 };
                tokio::time::sleep(Duration::from_millis(pause)).await;
            }
        }
    }

    async fn read(&self, roll: u32) -> Outcome {
        let space = &self.space;
        let (cache, start) = (&self.cache, now_ns());
        match roll {
            0..30 => {
                let key = space.item_key();
                let got = cache.get_or_set(&key, Ttl::Short, self.loader(&key)).await;
                read_one("get_or_set", &key, start, got.map(Some))
            }
            30..45 => {
                let key = space.refresh_key();
                let (source, k) = (self.source.clone(), key.as_str().to_owned());
                let got = cache
                    .get_or_refresh(&key, Ttl::Short, move || {
                        let (source, k) = (source.clone(), k.clone());
                        async move { source.version(&k) }
                    })
                    .await;
                read_one("get_or_refresh", &key, start, got.map(Some))
            }
            45..55 => {
                let key = space.item_key();
                read_one("get", &key, start, cache.get::<u64>(&key).await)
            }
            55..63 => {
                let keys = space.item_keys(4);
                read_many("get_many", &keys, start, cache.get_many::<u64>(&keys).await)
            }
            63..73 => {
                let keys = space.item_keys(4);
                let source = self.source.clone();
                let got = cache
                    .get_or_set_many(&keys, Ttl::Short, |missing: Vec<Key>| async move { source.versions(&missing) })
                    .await;
                read_many("get_or_set_many", &keys, start, got)
            }
            73..88 => {
                let (key, tag) = space.tagged_key();
                let got = cache.get_or_set_tagged(&key, Ttl::Short, &[tag], self.loader(&key)).await;
                read_one("get_or_set_tagged", &key, start, got.map(Some))
            }
            _ => {
                let key = space.hot_key();
                let got = cache.get_or_set(&key, Ttl::Short, self.loader(&key)).await;
                read_one("get_or_set_hot", &key, start, got.map(Some))
            }
        }
    }

    fn loader(&self, key: &Key) -> impl FnOnce() -> std::future::Ready<rusqlite::Result<u64>> + use<> {
        let (source, k) = (self.source.clone(), key.as_str().to_owned());
        move || std::future::ready(source.version(&k))
    }

    async fn write(&mut self, roll: u32) -> Outcome {
        let start = now_ns();
        match self.write_op(roll).await {
            Ok((op, keys, version, ok)) => {
                Outcome { kind: Kind::Write, op, versions: vec![version; keys.len()], keys, start, ok }
            }
            // The source itself failed (SQLite busy past its timeout): nothing was written.
            Err(err) => {
                eprintln!("consistency worker {}: source write failed: {err:#}", self.process);
                Outcome {
                    kind: Kind::Write,
                    op: "source",
                    keys: vec!["<source>".into()],
                    versions: vec![],
                    start,
                    ok: false,
                }
            }
        }
    }

    /// One write: (API call, keys whose version it raised, the version (`None`: the source
    /// refused it), the call succeeded).
    async fn write_op(&mut self, roll: u32) -> anyhow::Result<(&'static str, Vec<String>, Option<u64>, bool)> {
        let (cache, source, space) = (self.cache.clone(), self.source.clone(), self.space.clone());
        if (45..51).contains(&roll) {
            let key = space.plain_key();
            let k = key.as_str().to_owned();
            let committed = Arc::new(std::sync::Mutex::new(None));
            let seen = committed.clone();
            let ok = cache
                .update_through_versioned(&key, Ttl::Short, || async move {
                    let v = source.bump(&[k.as_str()]).await?;
                    *seen.lock().unwrap_or_else(|p| p.into_inner()) = Some(v);
                    Ok::<_, anyhow::Error>(Some((v, v)))
                })
                .await
                .is_ok();
            let committed = *committed.lock().unwrap_or_else(|p| p.into_inner());
            let v = committed.context("update_through_versioned: the source write failed")?;
            return Ok(("update_through_versioned", names(&[&key]), Some(v), ok));
        }
        if (40..45).contains(&roll) {
            let key = space.plain_key();
            let v = source.reserve().await?;
            let k = key.as_str().to_owned();
            let refused = Arc::new(AtomicBool::new(false));
            let flag = refused.clone();
            let ok = cache
                .set_through(&key, &v, Ttl::Short, |value: &u64| {
                    let value = *value;
                    async move {
                        let taken = source.store_if_newer(&k, value).await?;
                        flag.store(!taken, Ordering::Relaxed);
                        if taken { Ok(()) } else { Err(anyhow::anyhow!("the source holds a newer version")) }
                    }
                })
                .await
                .is_ok();
            return Ok(match refused.load(Ordering::Relaxed) {
                true => ("set_through_refused", names(&[&key]), None, true),
                false => ("set_through", names(&[&key]), Some(v), ok),
            });
        }
        let (op, keys, v, ok) = match roll {
            0..16 => {
                let key = space.plain_key();
                let v = source.bump(&[key.as_str()]).await?;
                ("delete", names(&[&key]), v, cache.delete(&key).await.is_ok())
            }
            16..30 => {
                let key = space.plain_key();
                let v = source.bump(&[key.as_str()]).await?;
                ("plain_del", names(&[&key]), v, self.plain_delete(&key).await?)
            }
            30..40 => {
                let key = space.plain_key();
                let (v, ok) = source.bump_holding(&[key.as_str()], |v| set(cache, key.clone(), v, None)).await?;
                ("set", names(&[&key]), v, ok)
            }
            51..58 => {
                let keys = space.distinct_plain_keys(2);
                let names = names(&keys.iter().collect::<Vec<_>>());
                let refs: Vec<&str> = names.iter().map(String::as_str).collect();
                let (v, ok) = source
                    .bump_holding(&refs, |v| async move {
                        let items: Vec<(Key, u64)> = keys.iter().map(|k| (k.clone(), v)).collect();
                        cache.set_many(&items, Ttl::Short).await.is_ok()
                    })
                    .await?;
                ("set_many", names, v, ok)
            }
            58..66 => {
                let namespace = space.plain_namespace();
                let (v, keys) = source.bump_where("ns", namespace).await?;
                ("invalidate_namespace", keys, v, cache.invalidate_namespace(namespace).await.is_ok())
            }
            66..73 => {
                let (key, tag) = space.tagged_key();
                let (v, ok) = source.bump_holding(&[key.as_str()], |v| set(cache, key.clone(), v, Some(tag))).await?;
                ("set_tagged", names(&[&key]), v, ok)
            }
            73..79 => {
                let tag = space.tag();
                let (v, keys) = source.bump_where("tag", tag.name()).await?;
                ("invalidate_tag", keys, v, cache.invalidate_tag(&tag).await.is_ok())
            }
            79..85 => {
                let (key, _) = space.tagged_key();
                let v = source.bump(&[key.as_str()]).await?;
                ("delete_tagged", names(&[&key]), v, cache.delete(&key).await.is_ok())
            }
            85..90 => {
                let (key, _) = space.tagged_key();
                let v = source.bump(&[key.as_str()]).await?;
                ("plain_del_tagged", names(&[&key]), v, self.plain_delete(&key).await?)
            }
            90..95 => {
                let key = space.hot_key();
                let v = source.bump(&[key.as_str()]).await?;
                ("delete_hot", names(&[&key]), v, cache.delete(&key).await.is_ok())
            }
            _ => {
                let key = space.hot_key();
                let (v, ok) = source.bump_holding(&[key.as_str()], |v| set(cache, key.clone(), v, None)).await?;
                ("set_hot", names(&[&key]), v, ok)
            }
        };
        Ok((op, keys, Some(v), ok))
    }
}

impl Actor {
    /// Another team's service deleting `key` (and its coordination keys, unless told not to): whether
    /// the DEL succeeded.
    async fn plain_delete(&mut self, key: &Key) -> anyhow::Result<bool> {
        let key_only = self.plain_key_only;
        let plain = self.plain.as_mut().context("a writer has a plain client")?;
        let deleted = if key_only {
            plain.delete(key.as_str()).await
        } else {
            plain.delete_with_coordination(key.as_str()).await
        };
        Ok(deleted.is_ok())
    }
}

/// `set` (or `set_tagged`) of version `v`: whether it succeeded.
async fn set(cache: Cache, key: Key, v: u64, tag: Option<Tag>) -> bool {
    match tag {
        Some(tag) => cache.set_tagged(&key, &v, Ttl::Short, &[tag]).await.is_ok(),
        None => cache.set(&key, &v, Ttl::Short).await.is_ok(),
    }
}

fn names(keys: &[&Key]) -> Vec<String> {
    keys.iter().map(|k| k.as_str().to_owned()).collect()
}

fn read_one(op: &'static str, key: &Key, start: u64, got: strata::Result<Option<u64>>) -> Outcome {
    let ok = got.is_ok();
    Outcome { kind: Kind::Read, op, keys: vec![key.as_str().to_owned()], start, versions: vec![got.ok().flatten()], ok }
}

fn read_many(op: &'static str, keys: &[Key], start: u64, got: strata::Result<Vec<Option<u64>>>) -> Outcome {
    let ok = got.is_ok();
    Outcome {
        kind: Kind::Read,
        op,
        keys: keys.iter().map(|k| k.as_str().to_owned()).collect(),
        start,
        versions: got.unwrap_or_default(),
        ok,
    }
}

/// The shared source of truth (see the module docs).
pub(crate) struct Source {
    /// Loaders' reads.
    reader: std::sync::Mutex<Connection>,
    /// Writes.
    writer: tokio::sync::Mutex<Connection>,
    /// The application's writer lock: `BEGIN IMMEDIATE` on a file of its own is a mutex across
    /// processes. A write holds it from before its version is committed until its cache write
    /// returns (a value write) or until the commit (an invalidating write, which may reach the
    /// cache in any order), so that the cache sees value writes in the order of the source.
    order: tokio::sync::Mutex<Connection>,
}

/// The writer lock's file, beside the source.
const ORDER_DB: &str = "writers.lock.sqlite3";

impl Source {
    /// Creates the source with version 1 for every key of `space`.
    pub(crate) fn create(path: &Path, space: &Keyspace) -> anyhow::Result<()> {
        let mut conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "wal")?;
        conn.execute_batch(
            "CREATE TABLE src (k TEXT PRIMARY KEY, ns TEXT NOT NULL, tag TEXT, version INTEGER NOT NULL);
             CREATE TABLE seq (n INTEGER NOT NULL);
             INSERT INTO seq VALUES (1);",
        )?;
        let tx = conn.transaction()?;
        for (key, tag) in space.all_keys() {
            tx.execute(
                "INSERT INTO src (k, ns, tag, version) VALUES (?1, ?2, ?3, 1)",
                params![key.as_str(), key.namespace(), tag.map(|t| t.name().to_owned())],
            )?;
        }
        tx.commit()?;
        Connection::open(path.with_file_name(ORDER_DB))?.execute_batch("CREATE TABLE held (by INTEGER)")?;
        Ok(())
    }

    fn open(path: &Path) -> anyhow::Result<Source> {
        let open = |path: &Path| -> anyhow::Result<Connection> {
            let conn = Connection::open(path).with_context(|| format!("opening {}", path.display()))?;
            conn.busy_timeout(Duration::from_secs(30))?;
            Ok(conn)
        };
        Ok(Source {
            reader: std::sync::Mutex::new(open(path)?),
            writer: tokio::sync::Mutex::new(open(path)?),
            order: tokio::sync::Mutex::new(open(&path.with_file_name(ORDER_DB))?),
        })
    }

    /// The version of `key` now (a loader).
    fn version(&self, key: &str) -> rusqlite::Result<u64> {
        blocking(|| {
            let conn = self.reader.lock().unwrap_or_else(|p| p.into_inner());
            conn.query_row("SELECT version FROM src WHERE k = ?1", [key], |r| r.get::<_, i64>(0)).map(|v| v as u64)
        })
    }

    /// The versions of `keys` now (a batch loader).
    fn versions(&self, keys: &[Key]) -> rusqlite::Result<HashMap<Key, u64>> {
        keys.iter().map(|k| Ok((k.clone(), self.version(k.as_str())?))).collect()
    }

    /// Runs `f` holding the writer lock.
    async fn ordered<T, Fut>(&self, f: impl FnOnce() -> Fut) -> anyhow::Result<T>
    where
        Fut: std::future::Future<Output = anyhow::Result<T>>,
    {
        let lock = self.order.lock().await;
        blocking(|| lock.execute_batch("BEGIN IMMEDIATE"))?;
        let out = f().await;
        blocking(|| lock.execute_batch("ROLLBACK"))?;
        out
    }

    /// Commits a new version for `keys`, or (`column`, `value`) for every key whose `ns` or
    /// `tag` is `value`; returns it and the keys.
    async fn commit_version(&self, keys: &[&str], column: Option<(&str, &str)>) -> anyhow::Result<(u64, Vec<String>)> {
        let conn = self.writer.lock().await;
        blocking(|| {
            conn.execute_batch("BEGIN IMMEDIATE")?;
            let bumped = next(&conn).and_then(|v| {
                let mut bumped: Vec<String> = Vec::new();
                for key in keys {
                    conn.execute("UPDATE src SET version = ?1 WHERE k = ?2", params![v as i64, key])?;
                    bumped.push((*key).to_owned());
                }
                if let Some((column, value)) = column {
                    let sql = format!("UPDATE src SET version = ?1 WHERE {column} = ?2 RETURNING k");
                    let mut stmt = conn.prepare(&sql)?;
                    let rows = stmt.query_map(params![v as i64, value], |r| r.get::<_, String>(0))?;
                    bumped.extend(rows.collect::<Result<Vec<_>, _>>()?);
                }
                Ok((v, bumped))
            });
            finish(&conn, bumped)
        })
    }

    /// A new version, given to `keys` and committed (an invalidating write follows).
    async fn bump(&self, keys: &[&str]) -> anyhow::Result<u64> {
        Ok(self.ordered(|| self.commit_version(keys, None)).await?.0)
    }

    /// A new version for every key whose `column` (`ns` or `tag`) is `value`, committed; the keys.
    async fn bump_where(&self, column: &str, value: &str) -> anyhow::Result<(u64, Vec<String>)> {
        self.ordered(|| self.commit_version(&[], Some((column, value)))).await
    }

    /// A new version for `keys`, committed; then `then(version)` (the cache write), still under
    /// the writer lock. Returns the version and what `then` returned.
    async fn bump_holding<F, Fut>(&self, keys: &[&str], then: F) -> anyhow::Result<(u64, bool)>
    where
        F: FnOnce(u64) -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        self.ordered(|| async {
            let (v, _) = self.commit_version(keys, None).await?;
            Ok((v, then(v).await))
        })
        .await
    }

    /// A new version, not yet given to any key (`set_through` gives it in its store step).
    async fn reserve(&self) -> anyhow::Result<u64> {
        Ok(self.commit_version(&[], None).await?.0)
    }

    /// `set_through`'s source write: the key takes `v` unless it holds a newer version
    /// (optimistic concurrency). Whether it took it.
    async fn store_if_newer(&self, key: &str, v: u64) -> rusqlite::Result<bool> {
        let conn = self.writer.lock().await;
        let changed = blocking(|| {
            conn.execute("UPDATE src SET version = ?1 WHERE k = ?2 AND version < ?1", params![v as i64, key])
        })?;
        Ok(changed == 1)
    }
}

/// Runs a SQLite call, which may wait for another process's write lock, without stalling the
/// tasks queued on this runtime thread (the cache's invalidation handling among them).
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    tokio::task::block_in_place(f)
}

/// The next version (inside a write transaction).
fn next(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row("UPDATE seq SET n = n + 1 RETURNING n", [], |r| r.get::<_, i64>(0)).map(|v| v as u64)
}

/// Commits after `result` succeeded, rolls back otherwise.
fn finish<T>(conn: &Connection, result: rusqlite::Result<T>) -> anyhow::Result<T> {
    match result {
        Ok(value) => {
            conn.execute_batch("COMMIT")?;
            Ok(value)
        }
        Err(err) => {
            let _ = conn.execute_batch("ROLLBACK");
            Err(err.into())
        }
    }
}
