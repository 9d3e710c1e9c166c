//! The draining side of write-behind: one loop per partition, active while this worker owns
//! the partition's lease.

use std::collections::HashMap;
use std::fmt::Display;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use redis::Value;
use redis::streams::{StreamAutoClaimReply, StreamId, StreamReadReply};
use tokio::sync::watch;

use super::{WriteBehind, WriteRecord};
use crate::error::Result;
use crate::l2::Conn;

/// Takes the partition when it is free or already ours.
const ACQUIRE: &str = r"
local v = redis.call('GET', KEYS[1])
if v == false or v == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0";

/// Extends the lease only while it is still ours: a lost lease ends the session, and the next
/// one starts with a reclaim.
const RENEW: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return 0";

const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0";

/// A consumer of a [`WriteBehind`] queue. Any number of workers, in any processes, may run
/// at once; each partition is drained by one of them at a time.
pub struct Worker {
    wb: WriteBehind,
    consumer: String,
}

/// The consumer name and the queue it drains.
impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let config = &self.wb.config;
        f.debug_struct("Worker")
            .field("consumer", &self.consumer)
            .field("stream", &config.stream)
            .field("group", &config.group)
            .field("partitions", &config.partitions)
            .finish_non_exhaustive()
    }
}

/// Why a session ended without an error.
enum Outcome {
    Continue,
    Stop,
}

impl Worker {
    pub(crate) fn new(wb: WriteBehind) -> Self {
        Self { wb, consumer: format!("w-{:016x}", rand::random::<u64>()) }
    }

    /// This worker's consumer name in the group (and the value of the partition leases it holds).
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// Drains the queue into `sink` until `shutdown` completes, then finishes the entry in
    /// hand and releases its partitions.
    ///
    /// Per partition: take the lease, reclaim every pending entry of the group (XAUTOCLAIM:
    /// they were read by a previous owner that died or gave up), then read new ones
    /// (XREADGROUP). Entries are passed to the sink one at a time in stream order; a failure
    /// is retried with exponential backoff and jitter (the partition waits, which keeps
    /// per-key order), and after `max_attempts` the entry moves to the dead-letter stream.
    /// Success writes the dedup record, XACKs and XDELs the entry in one transaction.
    ///
    /// Delivery is at least once: a worker that dies between the sink's success and that
    /// transaction leaves the entry pending, and the next owner calls the sink again. For an
    /// exactly-once effect the sink must apply a record only if its `idempotency_key` was not
    /// applied before (a unique constraint, a conditional write). The dedup record makes a
    /// re-enqueued idempotency key (a client retry) skip the sink within `dedup_ttl`.
    ///
    /// Redis errors are logged and the partition is retried after `poll`; this only returns
    /// once `shutdown` completed.
    pub async fn run<F, Fut, E>(&self, sink: F, shutdown: impl Future<Output = ()>) -> Result<()>
    where
        F: Fn(WriteRecord) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let (tx, rx) = watch::channel(false);
        let loops = (0..self.wb.config.partitions).map(|p| self.partition_loop(p, &sink, rx.clone()));
        let stop = async {
            shutdown.await;
            let _ = tx.send(true);
        };
        tokio::join!(stop, futures_util::future::join_all(loops));
        Ok(())
    }

    async fn partition_loop<F, Fut, E>(&self, p: u16, sink: &F, mut stop: watch::Receiver<bool>)
    where
        F: Fn(WriteRecord) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let config = &self.wb.config;
        loop {
            let pause = match self.session(p, sink, &mut stop).await {
                Ok(Outcome::Stop) => break,
                Ok(Outcome::Continue) => config.claim_idle / 3,
                Err(e) => {
                    tracing::warn!(partition = p, error = %e, "write-behind session failed");
                    config.poll
                }
            };
            if sleep_or_stop(&mut stop, pause).await {
                break;
            }
        }
        if let Err(e) = self.lease(RELEASE, p, 0).await {
            tracing::debug!(partition = p, error = %e, "write-behind lease not released");
        }
    }

    /// One ownership of partition `p`: reclaim, then drain until the lease is lost or stop.
    async fn session<F, Fut, E>(&self, p: u16, sink: &F, stop: &mut watch::Receiver<bool>) -> Result<Outcome>
    where
        F: Fn(WriteRecord) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let wb = &self.wb;
        let config = &wb.config;
        if !self.lease(ACQUIRE, p, config.claim_idle.as_millis() as u64).await? {
            return Ok(Outcome::Continue);
        }
        let mut renewed = Instant::now();
        self.ensure_group(p).await?;
        let stream = wb.stream_key(p);
        // Every pending entry was read by an earlier owner (or by us before an error): with the
        // lease ours nobody else is working on them, so they are claimed whatever their idle time.
        let mut cursor = "0-0".to_owned();
        loop {
            let cmd = redis::cmd("XAUTOCLAIM")
                .arg(&stream)
                .arg(&config.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(&cursor)
                .arg("COUNT")
                .arg(config.batch)
                .clone();
            let reply: StreamAutoClaimReply = self.call("XAUTOCLAIM", cmd).await?;
            wb.counters.claimed.fetch_add(reply.claimed.len() as u64, Ordering::Relaxed);
            for entry in reply.claimed {
                if let Some(outcome) = self.process(p, entry, sink, stop, &mut renewed).await? {
                    return Ok(outcome);
                }
            }
            if reply.next_stream_id == "0-0" {
                break;
            }
            cursor = reply.next_stream_id;
        }
        loop {
            if *stop.borrow() {
                return Ok(Outcome::Stop);
            }
            if !self.keep(p, &mut renewed).await? {
                return Ok(Outcome::Continue);
            }
            let cmd = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&config.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(config.batch)
                .arg("STREAMS")
                .arg(&stream)
                .arg(">")
                .clone();
            let reply: Option<StreamReadReply> = self.call("XREADGROUP", cmd).await?;
            let entries: Vec<StreamId> = reply.into_iter().flat_map(|r| r.keys).flat_map(|k| k.ids).collect();
            if entries.is_empty() {
                // No BLOCK: it would hold the cache's shared connection.
                if sleep_or_stop(stop, config.poll).await {
                    return Ok(Outcome::Stop);
                }
                continue;
            }
            for entry in entries {
                if let Some(outcome) = self.process(p, entry, sink, stop, &mut renewed).await? {
                    return Ok(outcome);
                }
            }
        }
    }

    /// Delivers one entry (with retries) or dead-letters it. `Some` ends the session with the
    /// entry left pending (stop requested or lease lost during the retries).
    async fn process<F, Fut, E>(
        &self,
        p: u16,
        entry: StreamId,
        sink: &F,
        stop: &mut watch::Receiver<bool>,
        renewed: &mut Instant,
    ) -> Result<Option<Outcome>>
    where
        F: Fn(WriteRecord) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Display,
    {
        let wb = &self.wb;
        let config = &wb.config;
        let Some(mut record) = parse(p, &entry) else {
            // Not written by `enqueue`: keep it for inspection rather than fail on it forever.
            self.finish(p, &entry, None, Some(("malformed entry".to_owned(), 0))).await?;
            wb.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        };
        let done = wb.done_key(p);
        let delivered: Option<u64> =
            self.call("ZSCORE", redis::cmd("ZSCORE").arg(&done).arg(&record.idempotency_key).clone()).await?;
        let window = config.dedup_ttl.as_millis() as u64;
        if delivered.is_some_and(|at| at.saturating_add(window) >= crate::ttl::now_ms()) {
            self.finish(p, &entry, None, None).await?;
            wb.counters.deduplicated.fetch_add(1, Ordering::Relaxed);
            return Ok(None);
        }
        for attempt in 1..=config.max_attempts {
            if !self.keep(p, renewed).await? {
                return Ok(Some(Outcome::Continue));
            }
            record.attempt = attempt;
            match self.call_sink(p, sink(record.clone()), renewed).await {
                Ok(()) => {
                    self.finish(p, &entry, Some(&record.idempotency_key), None).await?;
                    wb.counters.delivered.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) if attempt == config.max_attempts => {
                    self.finish(p, &entry, None, Some((e.to_string(), attempt))).await?;
                    wb.counters.dead_lettered.fetch_add(1, Ordering::Relaxed);
                    return Ok(None);
                }
                Err(e) => {
                    tracing::debug!(partition = p, id = %record.id, attempt, error = %e, "write-behind sink failed");
                    wb.counters.retried.fetch_add(1, Ordering::Relaxed);
                    if sleep_or_stop(stop, backoff(config.backoff, config.max_backoff, attempt)).await {
                        return Ok(Some(Outcome::Stop));
                    }
                }
            }
        }
        Ok(None)
    }

    /// Awaits a sink call while renewing the lease, so that a call slower than `claim_idle`
    /// does not hand the partition (and this entry) to another worker meanwhile.
    async fn call_sink<Fut, E>(&self, p: u16, call: Fut, renewed: &mut Instant) -> std::result::Result<(), E>
    where
        Fut: Future<Output = std::result::Result<(), E>>,
    {
        let period = self.wb.config.claim_idle / 3;
        tokio::pin!(call);
        loop {
            tokio::select! {
                result = &mut call => return result,
                () = tokio::time::sleep(period) => {
                    // A lost lease is noticed by the `keep` before the next entry; the call in
                    // flight cannot be taken back either way.
                    if let Err(e) = self.keep(p, renewed).await {
                        tracing::debug!(partition = p, error = %e, "write-behind lease renewal failed");
                    }
                }
            }
        }
    }

    /// Settles an entry in one transaction: optionally records its idempotency key as
    /// delivered (trimming the partition's records to `dedup_ttl` and `dedup_capacity`) or
    /// copies it to the dead-letter stream (trimmed to `dead_letter_cap`), then XACK and XDEL
    /// (the stream stays bounded).
    async fn finish(&self, p: u16, entry: &StreamId, idem: Option<&str>, dead: Option<(String, u32)>) -> Result<()> {
        let wb = &self.wb;
        let config = &wb.config;
        let stream = wb.stream_key(p);
        let mut pipe = redis::pipe();
        pipe.atomic();
        if let Some(idem) = idem {
            let (done, now) = (wb.done_key(p), crate::ttl::now_ms());
            let oldest = now.saturating_sub(config.dedup_ttl.as_millis() as u64);
            pipe.cmd("ZADD").arg(&done).arg(now).arg(idem).ignore();
            pipe.cmd("ZREMRANGEBYSCORE").arg(&done).arg("-inf").arg(format!("({oldest}")).ignore();
            // Keeps the newest `dedup_capacity` (ranks 0.. are the oldest).
            pipe.cmd("ZREMRANGEBYRANK").arg(&done).arg(0).arg(-(config.dedup_capacity as i64) - 1).ignore();
            // A partition idle for longer than the window leaves nothing behind.
            pipe.cmd("PEXPIRE").arg(&done).arg(config.dedup_ttl.as_millis() as u64).ignore();
        }
        let dead_letter = dead.is_some();
        if let Some((error, attempts)) = dead {
            // Exact trimming: XADD answers nothing about what it trimmed, so the length is read
            // before and after (rare: only failed entries get here).
            let dead_key = wb.dead_letter_key(p);
            pipe.cmd("XLEN").arg(&dead_key);
            let xadd = pipe.cmd("XADD").arg(&dead_key).arg("MAXLEN").arg("=").arg(config.dead_letter_cap).arg("*");
            for (field, value) in &entry.map {
                if let Value::BulkString(bytes) = value {
                    xadd.arg(field).arg(bytes);
                }
            }
            xadd.arg("error").arg(error).arg("attempts").arg(attempts).arg("source_id").arg(&entry.id).ignore();
            pipe.cmd("XLEN").arg(&dead_key);
        }
        pipe.cmd("XACK").arg(&stream).arg(&config.group).arg(&entry.id).ignore();
        pipe.cmd("XDEL").arg(&stream).arg(&entry.id).ignore();
        let pipe = &pipe;
        let settle = |mut c: Conn| async move { pipe.query_async::<Vec<u64>>(&mut c).await };
        let lengths = wb.cache.inner().run_l2("write-behind settle", settle).await?;
        if let (true, [before, after]) = (dead_letter, lengths.as_slice()) {
            let dropped = (before + 1).saturating_sub(*after);
            if dropped > 0 {
                wb.counters.dead_letters_dropped.fetch_add(dropped, Ordering::Relaxed);
                tracing::warn!(
                    partition = p,
                    dropped,
                    cap = config.dead_letter_cap,
                    "dead-letter stream full: oldest entries trimmed"
                );
            }
            wb.counters.dead_letter_len.fetch_max(*after, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Renews the lease when a third of it has passed; false once it is no longer ours.
    async fn keep(&self, p: u16, renewed: &mut Instant) -> Result<bool> {
        let idle = self.wb.config.claim_idle;
        if renewed.elapsed() < idle / 3 {
            return Ok(true);
        }
        let ok = self.lease(RENEW, p, idle.as_millis() as u64).await?;
        // Only a successful renewal postpones the next check: once lost, every check fails.
        if ok {
            *renewed = Instant::now();
        }
        Ok(ok)
    }

    async fn lease(&self, script: &'static str, p: u16, ttl_ms: u64) -> Result<bool> {
        let key = &self.wb.owner_key(p);
        let consumer = self.consumer.as_str();
        let inner = self.wb.cache.inner();
        let lease = |mut c: Conn| async move {
            redis::Script::new(script).key(key).arg(consumer).arg(ttl_ms).invoke_async(&mut c).await
        };
        let n: i64 = inner.run_l2("write-behind lease", lease).await?;
        Ok(n == 1)
    }

    async fn ensure_group(&self, p: u16) -> Result<()> {
        let cmd = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.wb.stream_key(p))
            .arg(&self.wb.config.group)
            .arg("0")
            .arg("MKSTREAM")
            .clone();
        match self.call::<()>("XGROUP CREATE", cmd).await {
            // The group exists already. redis-rs has no `ServerErrorKind` for `BUSYGROUP`: the
            // reply's code is compared, exactly.
            Err(e) if e.redis_code() != Some("BUSYGROUP") => Err(e),
            _ => Ok(()),
        }
    }

    async fn call<T: redis::FromRedisValue>(&self, context: &str, cmd: redis::Cmd) -> Result<T> {
        let cmd = &cmd;
        let inner = self.wb.cache.inner();
        inner.run_l2(context, |mut c| async move { cmd.query_async(&mut c).await }).await
    }
}

fn parse(partition: u16, entry: &StreamId) -> Option<WriteRecord> {
    let bytes = |map: &HashMap<String, Value>, name: &str| match map.get(name) {
        Some(Value::BulkString(b)) => Some(b.clone()),
        _ => None,
    };
    Some(WriteRecord {
        id: entry.id.clone(),
        partition,
        key: String::from_utf8(bytes(&entry.map, "key")?).ok()?,
        value: bytes(&entry.map, "value")?,
        idempotency_key: String::from_utf8(bytes(&entry.map, "idem")?).ok()?,
        attempt: 0,
    })
}

/// `base · 2^(attempt-1)`, capped, times a random factor in [0.5, 1] so that workers retrying
/// against one failing sink do not do so in lockstep.
fn backoff(base: Duration, max: Duration, attempt: u32) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.saturating_sub(1).min(20)).min(max);
    exp.mul_f64(rand::random_range(0.5..=1.0))
}

/// Sleeps `d`; true if stop was requested (before or during the sleep).
async fn sleep_or_stop(stop: &mut watch::Receiver<bool>, d: Duration) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        r = stop.changed() => r.is_err() || *stop.borrow(),
    }
}
