//! The plumbing under [`Cache`]: L1 lookups, L2 reads and writes through the breaker, decoding,
//! removal of foreign bytes, and the TTL arithmetic that keeps an L1 copy from outliving Redis's.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::cache::{Cache, CacheValue, L2Read};
use crate::codec::{Encoded, Meta};
use crate::coherence::{Echo, Ticket};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::{Checks, Slot, Stamp, typed};
use crate::l2::Conn;
use crate::lease::lease_key;
use crate::metrics::NsCounters;

/// Deletes a key only if it still holds the bytes we found corrupt, so a good value written
/// meanwhile by someone else survives.
pub(crate) const DELETE_IF_EQUAL: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

impl Cache {
    /// L1 lookup: `Some(Some(v))` a value, `Some(None)` a cached "not found" (only when the
    /// caller accepts one), `None` a miss. Counts exactly what it serves.
    pub(crate) async fn l1_lookup<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> Option<Option<T>> {
        if self.inner.l1.is_some() {
            let found = match self.l1_get(key, ns).await {
                // With a grace period, L1 keeps copies past their logical expiry for
                // `get_or_refresh`; a plain read treats them as misses.
                Some((_, checks)) if self.inner.freshness.grace_ms() > 0 && checks.stamp.expires_at_ms <= now_ms() => {
                    None
                }
                Some((slot, _)) => Some(slot),
                None => None,
            };
            match found {
                Some(Slot::Present(shared)) => {
                    if let Some(v) = typed::<T>(&shared) {
                        NsCounters::inc(&ns.l1_hits);
                        tracing::debug!(key = %key, tier = "l1", "cache hit");
                        return Some(Some(v));
                    }
                }
                Some(Slot::Absent) if accept_negative => {
                    NsCounters::inc(&ns.l1_hits);
                    NsCounters::inc(&ns.negative_hits);
                    tracing::debug!(key = %key, tier = "l1", negative = true, "cache hit");
                    return Some(None);
                }
                _ => {}
            }
        }
        NsCounters::inc(&ns.l1_misses);
        tracing::debug!(key = %key, tier = "l1", "cache miss");
        None
    }

    /// The L1 entry of `key`, if its namespace and tag stamps say it is current (an invalidated
    /// one is removed and counted): every L1 read goes through here. Hits are not counted, and
    /// the logical expiry is left to the caller.
    pub(crate) async fn l1_get(&self, key: &Key, ns: &NsCounters) -> Option<(Slot, Checks)> {
        let (slot, checks) = self.inner.l1.as_ref()?.get(key.as_str())?;
        self.l1_current(key, &checks.marks, ns).await.then_some((slot, checks))
    }

    /// GET (with PTTL in the same round trip when L1 is on, to bound the L1 copy's lifetime by
    /// Redis's clock rather than ours), decode, count, fill L1.
    pub(crate) async fn read_l2<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> Result<L2Read<T>> {
        let k = key.as_str();
        let ticket = self.inner.coherence.ticket(k);
        let got = if self.inner.l1.is_some() {
            self.l2_call_for(k, "GET", |mut c| async move {
                redis::pipe().cmd("GET").arg(k).cmd("PTTL").arg(k).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
            })
            .await
            .map(|(bytes, pttl)| (bytes, Some(pttl)))
        } else {
            self.l2_call_for(k, "GET", |mut c| async move {
                redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await
            })
            .await
            .map(|bytes| (bytes, None))
        };
        self.interpret_l2(key, ns, accept_negative, ticket, got).await
    }

    /// What a GET (and PTTL, `None` when not asked) of `key` answered, as an [`L2Read`]:
    /// decoded, counted, L1 filled. `ticket` was taken before the GET was sent.
    pub(crate) async fn interpret_l2<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
        ticket: Ticket,
        got: Result<(Option<Vec<u8>>, Option<i64>)>,
    ) -> Result<L2Read<T>> {
        match got {
            Ok((Some(bytes), pttl)) => Ok(self.accept_bytes(key, ns, bytes, pttl, accept_negative, ticket).await),
            Ok((None, _)) => {
                NsCounters::inc(&ns.l2_misses);
                tracing::debug!(key = %key, tier = "l2", "cache miss");
                Ok(L2Read::Miss)
            }
            Err(err) if err.redis_code() == Some("WRONGTYPE") => {
                // Not a string: not something this cache wrote.
                self.discard_foreign(key, &ns.corrupt, ns, None).await;
                Ok(L2Read::Miss)
            }
            Err(err) => {
                NsCounters::inc(&ns.l2_misses);
                Err(err)
            }
        }
    }

    /// Decodes bytes read from Redis, counts the outcome, fills L1 on a hit, and removes bytes
    /// that are not a Strata envelope. A valid envelope of another type is a miss, left alone:
    /// another version of the application may still be using it.
    pub(crate) async fn accept_bytes<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        bytes: Vec<u8>,
        pttl: Option<i64>,
        accept_negative: bool,
        ticket: Ticket,
    ) -> L2Read<T> {
        match self.inner.codec.decode::<T>(key, &bytes) {
            Ok(decoded) if !self.l2_current(key, &decoded.marks, ns, &bytes).await => L2Read::Miss,
            Ok(decoded) => {
                let checks = Checks::new(decoded.meta, decoded.marks);
                let grace = self.inner.freshness.grace_ms();
                let physical = Meta { expires_at_ms: decoded.meta.expires_at_ms.saturating_add(grace), ..decoded.meta };
                let ttl = l1_ttl(physical, pttl);
                let expired = decoded.meta.expires_at_ms <= now_ms();
                match decoded.value {
                    // Kept in Redis past its logical expiry (a freshness grace period): not a hit,
                    // but `get_or_refresh` and fail-safe may still serve it.
                    Some(v) if expired => {
                        NsCounters::inc(&ns.l2_misses);
                        let stamp = checks.stamp;
                        self.fill_l1(key, Slot::Present(Arc::new(v.clone())), checks, decoded.raw_len, ttl, ticket);
                        L2Read::Stale(v, stamp)
                    }
                    None if expired => {
                        NsCounters::inc(&ns.l2_misses);
                        L2Read::Miss
                    }
                    Some(v) => {
                        NsCounters::inc(&ns.l2_hits);
                        tracing::debug!(key = %key, tier = "l2", "cache hit");
                        self.fill_l1(key, Slot::Present(Arc::new(v.clone())), checks, decoded.raw_len, ttl, ticket);
                        L2Read::Value(v)
                    }
                    None if accept_negative => {
                        NsCounters::inc(&ns.l2_hits);
                        NsCounters::inc(&ns.negative_hits);
                        self.fill_l1(key, Slot::Absent, checks, 0, ttl, ticket);
                        L2Read::Negative
                    }
                    None => {
                        NsCounters::inc(&ns.l2_misses);
                        L2Read::Unusable
                    }
                }
            }
            Err(err) if err.is_type_mismatch() => {
                NsCounters::inc(&ns.l2_misses);
                NsCounters::inc(&ns.type_mismatches);
                tracing::debug!(key = %key, error = %err, "cached value is of another type; treating as a miss");
                L2Read::Unusable
            }
            Err(err) if err.is_decrypt_failure() => {
                // Same policy as corrupt bytes: whatever was put there, it is not ours to serve.
                tracing::warn!(key = %key, error = %err, "encrypted value did not authenticate; treating as a miss and removing it");
                self.discard_foreign(key, &ns.decrypt_failures, ns, Some(bytes)).await;
                L2Read::Miss
            }
            Err(err) => {
                tracing::warn!(key = %key, error = %err, "undecodable value in redis; treating as a miss and removing it");
                self.discard_foreign(key, &ns.corrupt, ns, Some(bytes)).await;
                L2Read::Miss
            }
        }
    }

    /// Counts the bad value in `counter` and a miss, and removes it from both tiers.
    async fn discard_foreign(&self, key: &Key, counter: &AtomicU64, ns: &NsCounters, seen: Option<Vec<u8>>) {
        NsCounters::inc(counter);
        NsCounters::inc(&ns.l2_misses);
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        let k = key.as_str();
        let removed =
            match seen {
                Some(bytes) => {
                    let (script, bytes) = (&redis::Script::new(DELETE_IF_EQUAL), bytes.as_slice());
                    self.l2_call_for(k, "EVALSHA", |mut c| async move {
                        script.key(k).arg(bytes).invoke_async::<i64>(&mut c).await
                    })
                    .await
                }
                None => {
                    self.l2_call_for(k, "DEL", |mut c| async move {
                        redis::cmd("DEL").arg(k).query_async::<i64>(&mut c).await
                    })
                    .await
                }
            };
        if let Err(err) = removed {
            tracing::warn!(key = %key, error = %err, "could not remove undecodable value");
        }
    }

    /// Revoke the key's lease, SET with PX, then L1 for the same TTL. On failure the L1 copy is
    /// dropped too. The DEL comes first in one pipeline: a lease holder's store that lands
    /// after it is refused, one that lands before it is overwritten by this SET. `ttl` is the
    /// logical TTL; Redis and L1 keep the value for the freshness grace period on top of it.
    pub(crate) async fn write_l2(
        &self,
        key: &Key,
        encoded: Encoded,
        ttl: Duration,
        slot: Slot,
        stamp: Stamp,
    ) -> Result<()> {
        let (k, lease) = (key.as_str(), lease_key(key.as_str()));
        let echo = self.inner.coherence.expect_echo(k);
        let ticket = self.inner.coherence.ticket(k);
        let (raw_len, marks) = (encoded.raw_len, encoded.marks);
        let (bytes, lease) = (encoded.bytes.as_slice(), &lease);
        let ttl = self.physical_ttl(ttl);
        let px = ttl_millis(ttl);
        let written: Result<()> = self
            .l2_call_for(k, "SET", |mut c| async move {
                redis::pipe()
                    .cmd("DEL")
                    .arg(lease)
                    .ignore()
                    .cmd("SET")
                    .arg(k)
                    .arg(bytes)
                    .arg("PX")
                    .arg(px)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        match written {
            Ok(()) => {
                NsCounters::inc(&self.inner.metrics.ns(key.namespace()).sets);
                let checks = Checks { stamp, marks };
                self.fill_l1_after_write(key, slot, checks, raw_len, ttl, echo, ticket, bytes).await;
                Ok(())
            }
            Err(err) => {
                if let Some(echo) = echo {
                    self.inner.coherence.forget(echo);
                }
                if let Some(l1) = &self.inner.l1 {
                    l1.remove(key.as_str());
                }
                Err(err)
            }
        }
    }

    /// Puts an entry in L1 for at most `ttl` (what is left of the Redis copy) and `l1_max_ttl`,
    /// unless the key may have changed since `ticket` was taken, before the Redis round trip
    /// that produced `slot` (see [`crate::coherence`]). `value_len` is the uncompressed
    /// serialized size, the basis of the entry's weight.
    pub(crate) fn fill_l1(
        &self,
        key: &Key,
        slot: Slot,
        checks: Checks,
        value_len: usize,
        ttl: Duration,
        ticket: Ticket,
    ) {
        self.fill_l1_if(key, slot, checks, value_len, ttl, || self.inner.coherence.admits(&ticket));
    }

    /// [`fill_l1`](Self::fill_l1) with a value this instance has just written (`written`: the
    /// bytes it stored), once the write's own invalidation has come back (see
    /// [`crate::coherence`]). Redis names a key once per invalidation message, for all the
    /// writes of one event-loop pass: the echo may also stand for a later write of the key (by
    /// this instance or another), so its ticket alone does not prove that Redis holds this
    /// value. A read sent after the echo must find these very bytes: then any later write voids
    /// the ticket, as for any read.
    #[allow(clippy::too_many_arguments)] // the entry's parts plus the write's coherence state
    pub(crate) async fn fill_l1_after_write(
        &self,
        key: &Key,
        slot: Slot,
        checks: Checks,
        value_len: usize,
        ttl: Duration,
        echo: Option<Echo>,
        before: Ticket,
        written: &[u8],
    ) {
        if self.inner.l1.is_none() {
            if let Some(echo) = echo {
                self.inner.coherence.forget(echo);
            }
            return;
        }
        // Without an echo (no tracking, or a key L1 does not hold), `before` decides alone.
        let echoed = echo.is_some();
        let Some(ticket) = self.inner.coherence.after_write(echo, before, self.inner.l2.op_timeout).await else {
            return;
        };
        let ttl = match echoed {
            true => match self.still_holds(key, written).await {
                Some(left) => ttl.min(left),
                None => return,
            },
            false => ttl,
        };
        self.fill_l1(key, slot, checks, value_len, ttl, ticket);
    }

    /// Whether Redis holds exactly `written` under `key` (GET and PTTL, one round trip), and for
    /// how long: `None` if it holds something else, or cannot say.
    async fn still_holds(&self, key: &Key, written: &[u8]) -> Option<Duration> {
        let k = key.as_str();
        let (held, pttl) = self
            .l2_call_for(k, "GET", |mut c| async move {
                redis::pipe().cmd("GET").arg(k).cmd("PTTL").arg(k).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
            })
            .await
            .ok()?;
        if held.as_deref() != Some(written) {
            return None;
        }
        match pttl {
            -1 => Some(Duration::MAX),
            ms => u64::try_from(ms).ok().map(Duration::from_millis),
        }
    }

    /// [`fill_l1`](Self::fill_l1) for a value fresh from the loader that Redis could not take:
    /// kept while Redis is away (so the source is not hammered) unless the key was invalidated.
    pub(crate) fn fill_l1_from_source(
        &self,
        key: &Key,
        slot: Slot,
        checks: Checks,
        value_len: usize,
        ttl: Duration,
        ticket: Ticket,
    ) {
        self.fill_l1_if(key, slot, checks, value_len, ttl, || self.inner.coherence.admits_loaded(&ticket));
    }

    fn fill_l1_if(
        &self,
        key: &Key,
        slot: Slot,
        checks: Checks,
        value_len: usize,
        ttl: Duration,
        admits: impl Fn() -> bool,
    ) {
        let Some(l1) = &self.inner.l1 else { return };
        if !admits() {
            return;
        }
        l1.insert(key.shared(), slot, checks, value_len, ttl.min(self.inner.l1_max_ttl));
        // Insert, then re-check: an invalidation processed in between is caught here.
        if !admits() {
            l1.remove(key.as_str());
        }
    }

    /// How long Redis keeps a value written with logical TTL `ttl`: the freshness grace period
    /// (stale-while-revalidate, fail-safe) on top.
    pub(crate) fn physical_ttl(&self, ttl: Duration) -> Duration {
        ttl.saturating_add(Duration::from_millis(self.inner.freshness.grace_ms()))
    }

    /// One Redis call that names no key, through the whole-Redis breaker only (see
    /// [`Self::l2_call_for`]).
    pub(crate) async fn l2_call<T, F, Fut>(&self, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.l2_call_on(None, context, op).await
    }

    /// One Redis call on `key` (and keys in its hash slot) through the breaker of its slot range,
    /// with timeout and error accounting. Only errors that say Redis is unhealthy count against
    /// the breaker (see [`Error::is_unhealthy`]). `op` may run more than once: see
    /// [`L2::run`](crate::l2::L2::run).
    pub(crate) async fn l2_call_for<T, F, Fut>(&self, key: impl AsRef<[u8]>, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.l2_call_on(Some(key.as_ref()), context, op).await
    }

    async fn l2_call_on<T, F, Fut>(&self, key: Option<&[u8]>, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let globals = &self.inner.metrics.globals;
        let breakers = &self.inner.breakers;
        let Some(permit) = breakers.try_acquire(key) else {
            globals.breaker_rejections.fetch_add(1, Ordering::Relaxed);
            return Err(Error::circuit_open());
        };
        // Boxed: it keeps the layout of callers' futures shallow. Unboxed, the retry loop nested
        // inside every cache operation's state machine made `async fn main` code using the cache
        // overflow the compiler's query depth limit. One allocation next to a network round trip.
        let started = std::time::Instant::now();
        let result = Box::pin(self.inner.l2.run(context, op, &self.inner.on_redirect())).await;
        globals.l2_latency.0.record(started.elapsed());
        match &result {
            Ok(_) => breakers.record(permit, true),
            Err(err) => {
                let counter = if err.is_timeout() { &globals.l2_timeouts } else { &globals.l2_errors };
                counter.fetch_add(1, Ordering::Relaxed);
                // Bounded by the breaker: after a few failures calls are skipped, not logged.
                tracing::warn!(command = context, error = %err, timeout = err.is_timeout(), "redis call failed");
                breakers.record(permit, !err.is_unhealthy());
            }
        }
        result
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.l2.is_cluster()
    }
}

/// How long an L1 copy of a value read from Redis may live: what is left of it by the envelope's
/// logical expiry and, when known, by Redis's own PTTL (immune to clock skew between writer and
/// reader). PTTL -2 means the key vanished meanwhile: do not keep it.
pub(crate) fn l1_ttl(meta: Meta, pttl: Option<i64>) -> Duration {
    let by_envelope = Duration::from_millis(meta.expires_at_ms.saturating_sub(now_ms()));
    match pttl {
        Some(ms) if ms >= 0 => by_envelope.min(Duration::from_millis(ms as u64)),
        Some(-2) => Duration::ZERO,
        _ => by_envelope,
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn expiry_ms(ttl: Duration) -> u64 {
    now_ms().saturating_add(ttl_millis(ttl))
}

pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
