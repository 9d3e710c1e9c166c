//! [`Cache`]: reads, writes and cache-aside loads through L1 and L2.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::{Breaker, BreakerState};
use crate::codec::{Codec, Decoded, Meta};
use crate::error::{Error, Result};
use crate::flight::{Flights, Shared};
use crate::key::Key;
use crate::l1::{L1, Slot, typed};
use crate::l2::{Conn, L2};
use crate::metrics::{Metrics, MetricsSnapshot, NsCounters};
use crate::ttl::{Ttl, TtlPolicy};

/// Bounds on what a cached value type must provide: serde both ways, and `Clone` because an L1
/// hit hands out a copy of the decoded value.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// Deletes a key only if it still holds the bytes we found corrupt, so a good value written
/// meanwhile by someone else survives.
const DELETE_IF_EQUAL: &str =
    r"if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end return 0";

/// A two-tier cache: in-process L1 in front of Redis L2. Cheap to clone; clones share
/// everything. See the [crate docs](crate) for the data flow.
#[derive(Clone)]
pub struct Cache {
    pub(crate) inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) l1: Option<L1>,
    pub(crate) l1_max_ttl: Duration,
    pub(crate) l2: L2,
    pub(crate) breaker: Breaker,
    pub(crate) flights: Flights,
    pub(crate) metrics: Metrics,
    pub(crate) codec: Codec,
    pub(crate) ttl: TtlPolicy,
}

/// What the L2 read of one key found.
pub(crate) enum L2Read<T> {
    Hit(Decoded<T>, usize),
    Miss,
}

impl Cache {
    /// Starts configuring a cache.
    pub fn builder() -> crate::CacheBuilder {
        crate::CacheBuilder::default()
    }

    /// Reads a value: L1, then Redis. A cached "not found" reads as `None`.
    ///
    /// A cache read must not fail a request: when Redis is unreachable, slow or the breaker is
    /// open, this returns `Ok(None)` (counted in [`metrics`](Self::metrics)).
    pub async fn get<T: CacheValue>(&self, key: &Key) -> Result<Option<T>> {
        let ns = self.inner.metrics.ns(key.namespace());
        if let Some(found) = self.l1_lookup::<T>(key, &ns) {
            return Ok(found);
        }
        match self.read_l2::<T>(key, &ns).await {
            Ok(L2Read::Hit(Decoded::Value(v, meta), len)) => {
                self.fill_l1(key, Slot::Present(Arc::new(v.clone())), len, meta);
                Ok(Some(v))
            }
            Ok(L2Read::Hit(Decoded::Negative(meta), len)) => {
                NsCounters::inc(&ns.negative_hits);
                self.fill_l1(key, Slot::Absent, len, meta);
                Ok(None)
            }
            Ok(L2Read::Miss) | Err(_) => Ok(None),
        }
    }

    /// Writes a value to Redis (with a jittered TTL) and to L1.
    ///
    /// Errors: [`is_value_too_large`](Error::is_value_too_large) and
    /// [`is_serialization`](Error::is_serialization) before anything is written; an
    /// [`is_unavailable`](Error::is_unavailable) error when Redis could not be written, in which
    /// case this instance's L1 copy is dropped too.
    pub async fn set<T: CacheValue>(&self, key: &Key, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        let ttl = self.inner.ttl.jittered(ttl.into());
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let bytes = self.inner.codec.encode(Some(value), meta)?;
        self.write_l2(key, bytes, ttl, Slot::Present(Arc::new(value.clone())), meta).await
    }

    /// Caches "not found" for `key` with the negative TTL of the [`TtlPolicy`].
    pub async fn set_not_found(&self, key: &Key) -> Result<()> {
        let ttl = self.inner.ttl.jittered_negative();
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let bytes = self.inner.codec.encode::<()>(None, meta)?;
        self.write_l2(key, bytes, ttl, Slot::Absent, meta).await
    }

    /// Removes a key from L1 and Redis. Returns whether Redis held it.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        let k = key.as_str();
        let removed: i64 =
            self.l2_call("DEL", |mut c| async move { redis::cmd("DEL").arg(k).query_async(&mut c).await }).await?;
        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).deletes);
        Ok(removed > 0)
    }

    /// Cache-aside read: returns the cached value, or runs `loader`, caches what it returns
    /// (for `ttl`, jittered) and returns it.
    ///
    /// - Concurrent calls for one key in this process run `loader` once; every caller gets its
    ///   result, value or error.
    /// - When Redis is down, slow, or the breaker is open, the loader's value is returned with no
    ///   error; the cache is simply bypassed.
    /// - A value too large to cache is returned but not stored.
    ///
    /// ```
    /// # use std::sync::{Arc, atomic::{AtomicUsize, Ordering}};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use std::time::Duration;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// let loads = Arc::new(AtomicUsize::new(0));
    ///
    /// // 50 concurrent requests for one cold key: the database is asked once.
    /// let calls = (0..50).map(|_| {
    ///     let (cache, key, loads) = (cache.clone(), key.clone(), loads.clone());
    ///     tokio::spawn(async move {
    ///         cache.get_or_set(&key, Ttl::Medium, || async move {
    ///             loads.fetch_add(1, Ordering::SeqCst);
    ///             tokio::time::sleep(Duration::from_millis(50)).await; // a slow query
    ///             Ok::<_, std::io::Error>(format!("profile of user 42"))
    ///         }).await
    ///     })
    /// });
    /// for call in futures::future::join_all(calls).await {
    ///     assert_eq!(call??, "profile of user 42");
    /// }
    /// assert_eq!(loads.load(Ordering::SeqCst), 1);
    /// # Ok(()) }
    /// ```
    pub async fn get_or_set<T, F, Fut, E>(&self, key: &Key, ttl: impl Into<Ttl>, loader: F) -> Result<T>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let load = || async move { loader().await.map(Some) };
        match self.get_or_load::<T, _, _, _>(key, ttl.into(), load, false).await? {
            Some(v) => Ok(v),
            None => Err(Error::loader("loader produced no value")),
        }
    }

    /// Cache-aside with negative caching: the loader returns `Ok(None)` for "not found", which
    /// is cached too (with the shorter negative TTL), so repeated lookups of a missing id do not
    /// reach the source.
    pub async fn get_or_set_optional<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        self.get_or_load::<T, _, _, _>(key, ttl.into(), loader, true).await
    }

    /// A copy of every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        let l1 = self.inner.l1.as_ref().map(L1::usage).unwrap_or_default();
        self.inner.metrics.snapshot(self.inner.breaker.state(), self.inner.breaker.opens(), l1)
    }

    /// The circuit breaker's state now.
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breaker.state()
    }

    /// Sum of the weights of the entries present in L1 now. Walks L1: for tests and inspection.
    pub fn l1_resident_bytes(&self) -> u64 {
        // No maintenance first: this measures what is held, including writes moka has not settled.
        self.inner.l1.as_ref().map(L1::resident_bytes).unwrap_or(0)
    }

    /// The byte budget of L1 (0 when disabled).
    pub fn l1_capacity_bytes(&self) -> u64 {
        self.inner.l1.as_ref().map(|l1| l1.budget).unwrap_or(0)
    }

    /// Drops every L1 entry of this instance (Redis is untouched).
    pub fn clear_l1(&self) {
        if let Some(l1) = &self.inner.l1 {
            l1.clear();
        }
    }

    /// Sends a PING through the breaker.
    pub async fn ping(&self) -> Result<()> {
        let _: String =
            self.l2_call("PING", |mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await?;
        Ok(())
    }

    async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        loader: F,
        negative_is_hit: bool,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ns = self.inner.metrics.ns(key.namespace());
        match self.l1_lookup::<T>(key, &ns) {
            Some(Some(v)) => return Ok(Some(v)),
            Some(None) if negative_is_hit => return Ok(None),
            _ => {}
        }
        // Loads of `T` and of `Option<T>` are separate flights: one may not satisfy the other.
        let flight = if negative_is_hit { TypeId::of::<Option<T>>() } else { TypeId::of::<T>() };
        let shared = self
            .inner
            .flights
            .run(key.shared(), flight, || self.load_through::<T, F, Fut, E>(key, ttl, loader, negative_is_hit, &ns))
            .await?;
        Ok(shared.downcast_ref::<Option<T>>().cloned().flatten())
    }

    /// The single-flight leader's work: check Redis (another instance may have loaded the key),
    /// else run the loader and write both tiers.
    async fn load_through<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        loader: F,
        negative_is_hit: bool,
        ns: &NsCounters,
    ) -> Result<Shared>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        match self.read_l2::<T>(key, ns).await {
            Ok(L2Read::Hit(Decoded::Value(v, meta), len)) => {
                self.fill_l1(key, Slot::Present(Arc::new(v.clone())), len, meta);
                return Ok(Arc::new(Some(v)));
            }
            Ok(L2Read::Hit(Decoded::Negative(meta), len)) if negative_is_hit => {
                NsCounters::inc(&ns.negative_hits);
                self.fill_l1(key, Slot::Absent, len, meta);
                return Ok(Arc::new(None::<T>));
            }
            _ => {}
        }
        NsCounters::inc(&ns.loader_calls);
        let started = tokio::time::Instant::now();
        let loaded = loader().await;
        let load_us = u32::try_from(started.elapsed().as_micros()).unwrap_or(u32::MAX);
        ns.loader_micros.fetch_add(u64::from(load_us), std::sync::atomic::Ordering::Relaxed);
        let value = match loaded {
            Ok(v) => v,
            Err(e) => {
                NsCounters::inc(&ns.loader_errors);
                return Err(Error::loader(e));
            }
        };
        let ttl = match &value {
            Some(_) => self.inner.ttl.jittered(ttl),
            None => self.inner.ttl.jittered_negative(),
        };
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us };
        match self.inner.codec.encode(value.as_ref(), meta) {
            Ok(bytes) => {
                let slot = match &value {
                    Some(v) => Slot::Present(Arc::new(v.clone())),
                    None => Slot::Absent,
                };
                // The caller gets the value whatever happens to the write; failures are counted.
                if let Err(err) = self.write_l2(key, bytes, ttl, slot.clone(), meta).await {
                    tracing::debug!(key = %key, error = %err, "could not cache loaded value");
                    if err.is_unavailable() {
                        // Keep serving from L1 while Redis is away, so the source is not hammered.
                        self.fill_l1(key, slot, 0, meta);
                    }
                }
            }
            Err(err) => {
                NsCounters::inc(&ns.oversized);
                tracing::warn!(key = %key, error = %err, "loaded value not cached");
            }
        }
        Ok(Arc::new(value))
    }

    /// L1 lookup: `Some(Some(v))` value, `Some(None)` cached "not found", `None` miss.
    pub(crate) fn l1_lookup<T: CacheValue>(&self, key: &Key, ns: &NsCounters) -> Option<Option<T>> {
        if let Some(l1) = &self.inner.l1 {
            match l1.get(key.as_str()) {
                Some(Slot::Present(shared)) => {
                    if let Some(v) = typed::<T>(&shared) {
                        NsCounters::inc(&ns.l1_hits);
                        return Some(Some(v));
                    }
                }
                Some(Slot::Absent) => {
                    NsCounters::inc(&ns.l1_hits);
                    NsCounters::inc(&ns.negative_hits);
                    return Some(None);
                }
                None => {}
            }
        }
        NsCounters::inc(&ns.l1_misses);
        None
    }

    /// GET and decode. Undecodable bytes (or a non-string value) under the key are removed and
    /// reported as a miss.
    pub(crate) async fn read_l2<T: CacheValue>(&self, key: &Key, ns: &NsCounters) -> Result<L2Read<T>> {
        let k = key.as_str();
        let got =
            self.l2_call("GET", |mut c| async move {
                redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await
            })
            .await;
        let bytes = match got {
            Ok(Some(bytes)) => bytes,
            Ok(None) => {
                NsCounters::inc(&ns.l2_misses);
                return Ok(L2Read::Miss);
            }
            Err(err) if err.redis_code() == Some("WRONGTYPE") => {
                self.discard_foreign(key, ns, None).await;
                return Ok(L2Read::Miss);
            }
            Err(err) => {
                NsCounters::inc(&ns.l2_misses);
                return Err(err);
            }
        };
        self.decode_or_discard(key, ns, bytes).await
    }

    pub(crate) async fn decode_or_discard<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        bytes: Vec<u8>,
    ) -> Result<L2Read<T>> {
        match self.inner.codec.decode::<T>(&bytes) {
            Ok(decoded) => {
                NsCounters::inc(&ns.l2_hits);
                Ok(L2Read::Hit(decoded, bytes.len()))
            }
            Err(err) => {
                tracing::warn!(key = %key, error = %err, "undecodable value in redis; treating as a miss and removing it");
                self.discard_foreign(key, ns, Some(bytes)).await;
                Ok(L2Read::Miss)
            }
        }
    }

    async fn discard_foreign(&self, key: &Key, ns: &NsCounters, seen: Option<Vec<u8>>) {
        NsCounters::inc(&ns.corrupt);
        NsCounters::inc(&ns.l2_misses);
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        let k = key.as_str();
        let removed = match seen {
            Some(bytes) => {
                let script = redis::Script::new(DELETE_IF_EQUAL);
                self.l2_call(
                    "EVALSHA",
                    |mut c| async move { script.key(k).arg(bytes).invoke_async::<i64>(&mut c).await },
                )
                .await
            }
            None => {
                self.l2_call("DEL", |mut c| async move { redis::cmd("DEL").arg(k).query_async::<i64>(&mut c).await })
                    .await
            }
        };
        if let Err(err) = removed {
            tracing::warn!(key = %key, error = %err, "could not remove undecodable value");
        }
    }

    async fn write_l2(&self, key: &Key, bytes: Vec<u8>, ttl: Duration, slot: Slot, meta: Meta) -> Result<()> {
        let k = key.as_str();
        let len = bytes.len();
        let px = ttl_millis(ttl);
        let written: Result<()> = self
            .l2_call("SET", |mut c| async move {
                redis::cmd("SET").arg(k).arg(bytes).arg("PX").arg(px).query_async(&mut c).await
            })
            .await;
        match written {
            Ok(()) => {
                NsCounters::inc(&self.inner.metrics.ns(key.namespace()).sets);
                self.fill_l1(key, slot, len, meta);
                Ok(())
            }
            Err(err) => {
                if let Some(l1) = &self.inner.l1 {
                    l1.remove(key.as_str());
                }
                Err(err)
            }
        }
    }

    /// Puts an entry in L1 for no longer than its remaining Redis lifetime and `l1_max_ttl`.
    pub(crate) fn fill_l1(&self, key: &Key, slot: Slot, encoded_len: usize, meta: Meta) {
        if let Some(l1) = &self.inner.l1 {
            let left = Duration::from_millis(meta.expires_at_ms.saturating_sub(now_ms()));
            l1.insert(key.shared(), slot, encoded_len, left.min(self.inner.l1_max_ttl));
        }
    }

    /// One Redis call through the breaker, with timeout and error accounting.
    pub(crate) async fn l2_call<T, F, Fut>(&self, context: &str, op: F) -> Result<T>
    where
        F: FnOnce(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let globals = &self.inner.metrics.globals;
        let Some(permit) = self.inner.breaker.try_acquire() else {
            globals.breaker_rejections.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            return Err(Error::circuit_open());
        };
        let result = self.inner.l2.run(context, op).await;
        match &result {
            Ok(_) => self.inner.breaker.record(permit, true),
            Err(err) => {
                let counter = if err.is_timeout() { &globals.l2_timeouts } else { &globals.l2_errors };
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // A WRONGTYPE reply is a data problem, not a sign that Redis is unhealthy.
                let healthy = err.redis_code() == Some("WRONGTYPE");
                self.inner.breaker.record(permit, healthy);
            }
        }
        result
    }

    pub(crate) fn is_cluster(&self) -> bool {
        self.inner.l2.is_cluster()
    }
}

pub(crate) fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

pub(crate) fn expiry_ms(ttl: Duration) -> u64 {
    now_ms() + ttl_millis(ttl)
}

pub(crate) fn ttl_millis(ttl: Duration) -> u64 {
    u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1)
}
