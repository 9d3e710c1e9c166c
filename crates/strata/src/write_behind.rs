//! Write-behind: writes are acknowledged once they are in a Redis Stream, and a group of
//! workers drains them to a user-supplied sink (see docs/decisions/0004-write-behind.md).
//!
//! Layout, for a stream named `orders` and partition `p` (one hash tag per partition, so each
//! partition's keys share a cluster slot and the partitions spread over the masters):
//!
//! - `{wb:orders:p}:s` — the stream; entries carry `key`, `value`, `idem`.
//! - `{wb:orders:p}:dead` — the dead-letter stream (entries that failed `max_attempts` times),
//!   trimmed to `dead_letter_cap` entries (the oldest go first, counted).
//! - `{wb:orders:p}:done` — the dedup records: a sorted set of the partition's delivered
//!   idempotency keys scored by delivery time, at most `dedup_capacity` of them and none older
//!   than `dedup_ttl`. One key per partition, whatever the write rate (a key per write, kept
//!   24 h, was 86 M keys at 1,000 writes/s).
//! - `{wb:orders:p}:owner` — which worker owns the partition (a lease, `claim_idle` long).
//!
//! A key always maps to the same partition and a partition has one owner at a time, which
//! drains it in stream order: that is what keeps writes to one key in order.

mod worker;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::cache::Cache;
use crate::error::{Error, ErrorKind, Result};

pub use worker::Worker;

/// How a [`WriteBehind`] queue is laid out in Redis and how its workers deliver.
///
/// ```
/// use std::time::Duration;
///
/// let config = strata::WriteBehindConfig::new("orders")
///     .partitions(16)
///     .replicas_to_wait(1)                         // WAIT for one replica before `enqueue` returns
///     .wait_timeout(Duration::from_millis(50))
///     .max_attempts(10);
/// assert_eq!(config.group, "strata");              // the default
/// ```
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct WriteBehindConfig {
    /// The queue's name; every Redis key of the queue starts with `{wb:<stream>:`.
    pub stream: String,
    /// The consumer group the workers read with.
    pub group: String,
    /// How many partition streams keys are sharded over (by a hash of the key). Each is
    /// drained by one worker at a time, so this bounds the delivery parallelism.
    pub partitions: u16,
    /// Replicas that must confirm an enqueued entry (`WAIT`) before `enqueue` returns; 0 = no WAIT.
    pub replicas_to_wait: u32,
    /// How long `WAIT` may block. It blocks the cache's shared connection meanwhile, and must
    /// be shorter than the cache's operation timeout.
    pub wait_timeout: Duration,
    /// Sink calls per entry before it goes to the dead-letter stream.
    pub max_attempts: u32,
    /// Delay after the first failed attempt; doubled after each further failure (with jitter).
    pub backoff: Duration,
    /// Upper bound of the retry delay.
    pub max_backoff: Duration,
    /// How long a worker that stopped renewing keeps its partitions; after that another worker
    /// takes them over and reclaims their pending entries (XAUTOCLAIM).
    pub claim_idle: Duration,
    /// Entries read per XREADGROUP / XAUTOCLAIM.
    pub batch: usize,
    /// How long an idle worker waits before reading an empty partition again.
    pub poll: Duration,
    /// How long a dedup record lives: redeliveries of an idempotency key within this window
    /// are not passed to the sink again.
    pub dedup_ttl: Duration,
    /// Most dedup records a partition keeps (its newest deliveries): a re-enqueued idempotency
    /// key is skipped if it was among them and within `dedup_ttl`. Bounds Redis memory at about
    /// `partitions × dedup_capacity × (idempotency key + 40 bytes)`.
    pub dedup_capacity: usize,
    /// Most entries a partition's dead-letter stream keeps; past it the oldest are trimmed,
    /// counted in [`WriteBehindStats::dead_letters_dropped`] (alert `StrataWriteBehindDeadLettersDropped`).
    pub dead_letter_cap: usize,
}

impl Default for WriteBehindConfig {
    fn default() -> Self {
        Self {
            stream: "default".into(),
            group: "strata".into(),
            partitions: 8,
            replicas_to_wait: 0,
            wait_timeout: Duration::from_millis(100),
            max_attempts: 5,
            backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(5),
            claim_idle: Duration::from_secs(10),
            batch: 64,
            poll: Duration::from_millis(50),
            dedup_ttl: Duration::from_secs(24 * 3600),
            dedup_capacity: 10_000,
            dead_letter_cap: 10_000,
        }
    }
}

impl WriteBehindConfig {
    /// The defaults for the queue named `stream`: group `strata`, 8 partitions, no `WAIT`,
    /// 5 attempts with backoff from 50 ms to 5 s, `claim_idle` 10 s, batches of 64, `poll`
    /// 50 ms, dedup records kept 24 h (at most 10,000 per partition), dead-letter streams
    /// capped at 10,000 entries per partition.
    pub fn new(stream: impl Into<String>) -> Self {
        Self { stream: stream.into(), ..Self::default() }
    }

    /// Sets the queue's name (its Redis keys start with `{wb:<stream>:`).
    #[must_use]
    pub fn stream(mut self, stream: impl Into<String>) -> Self {
        self.stream = stream.into();
        self
    }

    /// Sets the consumer group the workers read with.
    #[must_use]
    pub fn group(mut self, group: impl Into<String>) -> Self {
        self.group = group.into();
        self
    }

    /// Sets how many partition streams keys are sharded over (the delivery parallelism).
    #[must_use]
    pub fn partitions(mut self, partitions: u16) -> Self {
        self.partitions = partitions;
        self
    }

    /// Sets how many replicas must confirm an entry (`WAIT`) before `enqueue` returns (0: no `WAIT`).
    #[must_use]
    pub fn replicas_to_wait(mut self, replicas: u32) -> Self {
        self.replicas_to_wait = replicas;
        self
    }

    /// Sets how long `WAIT` may block (shorter than the cache's operation timeout).
    #[must_use]
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.wait_timeout = timeout;
        self
    }

    /// Sets the sink calls per entry before it goes to the dead-letter stream.
    #[must_use]
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.max_attempts = attempts;
        self
    }

    /// Sets the delay after the first failed attempt (doubled after each further failure).
    #[must_use]
    pub fn backoff(mut self, delay: Duration) -> Self {
        self.backoff = delay;
        self
    }

    /// Sets the upper bound of the retry delay.
    #[must_use]
    pub fn max_backoff(mut self, delay: Duration) -> Self {
        self.max_backoff = delay;
        self
    }

    /// Sets how long a worker that stopped renewing keeps its partitions (at least 30 ms).
    #[must_use]
    pub fn claim_idle(mut self, idle: Duration) -> Self {
        self.claim_idle = idle;
        self
    }

    /// Sets the entries read per XREADGROUP / XAUTOCLAIM.
    #[must_use]
    pub fn batch(mut self, entries: usize) -> Self {
        self.batch = entries;
        self
    }

    /// Sets how long an idle worker waits before reading an empty partition again.
    #[must_use]
    pub fn poll(mut self, interval: Duration) -> Self {
        self.poll = interval;
        self
    }

    /// Sets how long a dedup record lives (redeliveries of an idempotency key within it skip the sink).
    #[must_use]
    pub fn dedup_ttl(mut self, ttl: Duration) -> Self {
        self.dedup_ttl = ttl;
        self
    }

    /// Sets how many dedup records a partition keeps (its newest deliveries).
    #[must_use]
    pub fn dedup_capacity(mut self, records: usize) -> Self {
        self.dedup_capacity = records;
        self
    }

    /// Sets how many entries a partition's dead-letter stream keeps (the oldest are trimmed).
    #[must_use]
    pub fn dead_letter_cap(mut self, entries: usize) -> Self {
        self.dead_letter_cap = entries;
        self
    }
}

/// One write as the sink sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteRecord {
    /// The stream entry ID (unique per partition; increasing within it).
    pub id: String,
    /// The partition the key maps to.
    pub partition: u16,
    /// The key given to [`WriteBehind::enqueue`].
    pub key: String,
    /// The value bytes given to [`WriteBehind::enqueue`].
    pub value: Vec<u8>,
    /// The idempotency key given to [`WriteBehind::enqueue`]; the sink should make its effect
    /// conditional on it (see [`Worker::run`]).
    pub idempotency_key: String,
    /// 1 for the first sink call of this entry by this worker, 2 for the first retry, ...
    pub attempt: u32,
}

/// Counters of one [`WriteBehind`] (shared by its workers in this process), from
/// [`WriteBehind::stats`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WriteBehindStats {
    /// Entries acknowledged by `enqueue`.
    pub enqueued: u64,
    /// Entries the sink accepted.
    pub delivered: u64,
    /// Failed sink calls that were retried.
    pub retried: u64,
    /// Entries moved to the dead-letter stream.
    pub dead_lettered: u64,
    /// Entries reclaimed from another (dead) worker with XAUTOCLAIM.
    pub claimed: u64,
    /// Redelivered entries skipped because their idempotency key was already delivered.
    pub deduplicated: u64,
    /// Dead letters trimmed from a dead-letter stream at its cap (`dead_letter_cap`): lost
    /// for inspection and replay.
    pub dead_letters_dropped: u64,
    /// The longest dead-letter stream of the queue this process saw after a dead letter (0
    /// before any): compare with `dead_letter_cap`.
    pub dead_letter_len: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) enqueued: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) retried: AtomicU64,
    pub(crate) dead_lettered: AtomicU64,
    pub(crate) claimed: AtomicU64,
    pub(crate) deduplicated: AtomicU64,
    pub(crate) dead_letters_dropped: AtomicU64,
    pub(crate) dead_letter_len: AtomicU64,
}

/// A copy of `c` (for [`WriteBehind::stats`] and the metrics collector).
pub(crate) fn stats_of(c: &Counters) -> WriteBehindStats {
    let load = |a: &AtomicU64| a.load(Ordering::Relaxed);
    WriteBehindStats {
        enqueued: load(&c.enqueued),
        delivered: load(&c.delivered),
        retried: load(&c.retried),
        dead_lettered: load(&c.dead_lettered),
        claimed: load(&c.claimed),
        deduplicated: load(&c.deduplicated),
        dead_letters_dropped: load(&c.dead_letters_dropped),
        dead_letter_len: load(&c.dead_letter_len),
    }
}

/// A write-behind queue on the Redis behind a [`Cache`]. Cheap to clone.
#[derive(Clone)]
pub struct WriteBehind {
    pub(crate) cache: Cache,
    pub(crate) config: Arc<WriteBehindConfig>,
    pub(crate) counters: Arc<Counters>,
}

/// The configuration and this process's counters (the cache is left out).
impl std::fmt::Debug for WriteBehind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteBehind")
            .field("config", &*self.config)
            .field("stats", &self.stats())
            .finish_non_exhaustive()
    }
}

impl WriteBehind {
    /// A queue using `cache`'s Redis connection. Fails on an impossible configuration.
    pub fn new(cache: &Cache, config: WriteBehindConfig) -> Result<Self> {
        if config.stream.is_empty() || config.stream.contains(['{', '}']) {
            return Err(Error::config("write-behind stream name must be non-empty and without braces"));
        }
        if config.group.is_empty() {
            return Err(Error::config("write-behind group name must be non-empty"));
        }
        if config.partitions == 0 || config.max_attempts == 0 || config.batch == 0 {
            return Err(Error::config("write-behind partitions, max_attempts and batch must be at least 1"));
        }
        if config.claim_idle < Duration::from_millis(30) || config.dedup_ttl.is_zero() {
            return Err(Error::config("write-behind claim_idle must be at least 30 ms and dedup_ttl positive"));
        }
        if config.dedup_capacity == 0
            || config.dead_letter_cap == 0
            || i64::try_from(config.dedup_capacity).is_err()
            || i64::try_from(config.dead_letter_cap).is_err()
        {
            return Err(Error::config("write-behind dedup_capacity and dead_letter_cap must be at least 1"));
        }
        if config.replicas_to_wait > 0 && config.wait_timeout >= cache.inner().op_timeout() {
            return Err(Error::config("write-behind wait_timeout must be shorter than the cache's op_timeout"));
        }
        Ok(Self { cache: cache.clone(), config: Arc::new(config), counters: Arc::default() })
    }

    /// Appends a write to the stream of `key`'s partition. Returns once Redis has the entry
    /// (and, with `replicas_to_wait`, once that many replicas confirmed it): from then on it
    /// reaches the sink unless it fails `max_attempts` times.
    ///
    /// The cache itself is not touched: to serve the new value before the sink has it, call
    /// [`Cache::set`] after `enqueue` succeeded (in that order, so the cache never shows a
    /// write that was not accepted).
    ///
    /// The XADD goes through the cache's circuit breaker: while it is open, `enqueue` fails at
    /// once and nothing is queued.
    ///
    /// A `Timeout` error after too few replicas confirmed means the entry is in the primary but
    /// may be lost in a failover; retrying with the same `idempotency_key` is safe.
    ///
    /// Recorded in the audit log as `write_behind_enqueue` on `key`.
    pub async fn enqueue(&self, key: &str, value: &[u8], idempotency_key: &str) -> Result<String> {
        let outcome = self.enqueue_unaudited(key, value, idempotency_key).await;
        self.cache.audit("write_behind_enqueue", key, &outcome);
        outcome
    }

    async fn enqueue_unaudited(&self, key: &str, value: &[u8], idempotency_key: &str) -> Result<String> {
        if idempotency_key.is_empty() {
            return Err(Error::config("an idempotency key must be non-empty"));
        }
        let partition = self.partition_of(key);
        let stream = self.stream_key(partition);
        let mut pipe = redis::pipe();
        pipe.cmd("XADD")
            .arg(&stream)
            .arg("*")
            .arg("key")
            .arg(key)
            .arg("value")
            .arg(value)
            .arg("idem")
            .arg(idempotency_key);
        let wait = self.config.replicas_to_wait;
        // WAIT shares the pipeline so that it runs on the connection (and, in a cluster, the
        // node) that took the XADD: it waits for that client's writes.
        if wait > 0 {
            pipe.cmd("WAIT").arg(wait).arg(self.config.wait_timeout.as_millis().max(1) as u64);
        }
        let pipe = &pipe;
        let (id, reached): (String, Option<u32>) = self
            .cache
            .inner()
            .call_for(&stream, "XADD", |mut c| async move {
                if wait > 0 {
                    pipe.query_async(&mut c).await.map(|(id, n): (String, u32)| (id, Some(n)))
                } else {
                    pipe.query_async(&mut c).await.map(|(id,): (String,)| (id, None))
                }
            })
            .await?;
        if let Some(n) = reached
            && n < wait
        {
            return Err(Error::new(
                ErrorKind::Timeout,
                format!("write-behind entry {id} reached {n} of {wait} replicas within {:?}", self.config.wait_timeout),
            ));
        }
        self.counters.enqueued.fetch_add(1, Ordering::Relaxed);
        Ok(id)
    }

    /// A worker with a fresh consumer name; see [`Worker::run`].
    pub fn worker(&self) -> Worker {
        Worker::new(self.clone())
    }

    /// This process's counters.
    pub fn stats(&self) -> WriteBehindStats {
        stats_of(&self.counters)
    }

    /// The partition `key` maps to (stable across processes and versions).
    pub fn partition_of(&self, key: &str) -> u16 {
        (crc32fast::hash(key.as_bytes()) % u32::from(self.config.partitions)) as u16
    }

    /// The stream of `partition`.
    pub fn stream_key(&self, partition: u16) -> String {
        format!("{}:s", self.prefix(partition))
    }

    /// The dead-letter stream of `partition`; its entries carry the original fields plus
    /// `error`, `attempts` and `source_id`.
    pub fn dead_letter_key(&self, partition: u16) -> String {
        format!("{}:dead", self.prefix(partition))
    }

    /// The dedup records of `partition`: a sorted set of delivered idempotency keys, scored
    /// by delivery time (ms since the epoch).
    pub fn done_key(&self, partition: u16) -> String {
        format!("{}:done", self.prefix(partition))
    }

    pub(crate) fn owner_key(&self, partition: u16) -> String {
        format!("{}:owner", self.prefix(partition))
    }

    fn prefix(&self, partition: u16) -> String {
        format!("{{wb:{}:{partition}}}", self.config.stream)
    }
}
