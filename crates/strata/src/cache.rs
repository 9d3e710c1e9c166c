//! [`Cache`]: reads, writes and cache-aside loads through L1 and L2.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::breaker::{BreakerState, Breakers};
use crate::codec::{Codec, Meta};
use crate::coherence::Coherence;
use crate::error::{Error, Result};
use crate::flight::{Flights, Shared};
use crate::fresh::{Bounded, Freshness, Refreshes};
use crate::hot::{HotRead, HotRegistry};
use crate::key::Key;
use crate::l1::{Checks, L1, Slot, Stamp};
use crate::l2::L2;
use crate::lease::{Holder, LeaseConfig};
use crate::metrics::{Metrics, MetricsSnapshot, NsCounters};
use crate::tags::Tag;
use crate::tiers::expiry_ms;
use crate::ttl::{Ttl, TtlPolicy};

/// Bounds on what a cached value type must provide: serde both ways, and `Clone` because an L1
/// hit hands out a copy of the decoded value.
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

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
    pub(crate) breakers: Breakers,
    pub(crate) flights: Flights,
    pub(crate) metrics: Metrics,
    pub(crate) codec: Codec,
    pub(crate) ttl: TtlPolicy,
    pub(crate) leases: LeaseConfig,
    /// Whether L1 may serve and admit entries (see [`crate::coherence`]).
    pub(crate) coherence: Coherence,
    pub(crate) hot: HotRegistry,
    pub(crate) freshness: Freshness,
    pub(crate) refreshes: Arc<Refreshes>,
    pub(crate) stamps: crate::stamps::Stamps,
    pub(crate) audit: Option<crate::audit::Audit>,
}

impl Inner {
    /// What [`L2::run`](crate::l2::L2::run) calls when Redis redirects a call: the L1
    /// invalidation supervisor must know ([`crate::invalidation::redirected`]).
    pub(crate) fn on_redirect(&self) -> impl Fn(&str) + Sync + '_ {
        move |node| crate::invalidation::redirected(self, node)
    }
}

/// How a miss was coordinated with other processes.
pub(crate) enum Coordinated {
    /// Another process loaded it meanwhile.
    Found(Shared),
    /// This caller holds the lease (token) and must load.
    Holder(String),
    /// Load without a lease (waited too long, or Redis failed: then skip the write-back).
    LoadAlone { redis_failed: bool },
}

/// What the L2 read of one key found, after decoding (and filling L1 on a hit).
pub(crate) enum L2Read<T> {
    Value(T),
    /// A cached "not found" (only reported when the caller accepts it).
    Negative,
    /// Something is stored that this caller cannot use: a "not found" it does not accept, or a
    /// value of another type. Loading will replace it.
    Unusable,
    Miss,
    /// A value past its logical expiry, kept by a freshness grace period: not a hit, but it may
    /// be served stale (see [`Freshness`]).
    Stale(T, Stamp),
}

impl Cache {
    /// Starts configuring a cache.
    pub fn builder() -> crate::CacheBuilder {
        crate::CacheBuilder::default()
    }

    /// Reads a value: L1, then Redis. A cached "not found" reads as `None`.
    ///
    /// A cache read must not fail a request: when Redis is unreachable, slow or the breaker is
    /// open, this returns `Ok(None)` (counted in [`metrics`](Self::metrics)). A value stored
    /// with another type reads as `None` too (and is counted as a type mismatch).
    pub async fn get<T: CacheValue>(&self, key: &Key) -> Result<Option<T>> {
        let ns = self.inner.metrics.ns(key.namespace());
        if let Some(found) = self.l1_lookup::<T>(key, &ns, true).await {
            return Ok(found);
        }
        let copy = match self.hot_read::<T>(key, &ns, true).await {
            HotRead::Hit(found) => return Ok(found),
            HotRead::Missed(copy) => Some(copy),
            HotRead::NotHot => None,
        };
        match self.read_l2::<T>(key, &ns, true).await {
            Ok(L2Read::Value(v)) => {
                if let Some(copy) = copy {
                    self.hot_refill(key, &copy, Some(&v)).await;
                }
                Ok(Some(v))
            }
            Ok(_) | Err(_) => Ok(None),
        }
    }

    /// Writes a value to Redis (with a jittered TTL) and to L1.
    ///
    /// Errors: [`is_value_too_large`](Error::is_value_too_large) and
    /// [`is_serialization`](Error::is_serialization) before anything is written — the key's
    /// previous value is then removed from both tiers (best effort for Redis), so the cache does
    /// not keep serving what the caller meant to replace; an
    /// [`is_unavailable`](Error::is_unavailable) error when Redis could not be written, in which
    /// case this instance's L1 copy is dropped too. The same when the key's namespace stamp
    /// could not be read first (see [`invalidate_namespace`](Self::invalidate_namespace)): a
    /// value whose generation is unknown would be discarded by every reader.
    pub async fn set<T: CacheValue>(&self, key: &Key, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        self.set_with_tags(key, value, ttl.into(), &[]).await
    }

    /// `set` with validated tags.
    pub(crate) async fn set_with_tags<T: CacheValue>(
        &self,
        key: &Key,
        value: &T,
        ttl: Ttl,
        tags: &[Tag],
    ) -> Result<()> {
        let outcome = self.set_unaudited(key, value, ttl, tags).await;
        self.audit("set", key.as_str(), &outcome);
        outcome
    }

    /// Records an action in the audit log, when one is configured.
    pub(crate) fn audit<T>(&self, action: &str, target: &str, outcome: &Result<T>) {
        if let Some(audit) = &self.inner.audit {
            audit.record(action, target, outcome);
        }
    }

    async fn set_unaudited<T: CacheValue>(&self, key: &Key, value: &T, ttl: Ttl, tags: &[Tag]) -> Result<()> {
        let ttl = self.inner.ttl.jittered(ttl);
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let marks = self.write_marks(key, tags).await?;
        let encoded = match self.inner.codec.encode_marked(key, Some(value), meta, &marks) {
            Ok(encoded) => encoded,
            Err(err) => {
                if let Err(del) = self.delete(key).await {
                    tracing::warn!(key = %key, error = %del, "could not remove the value a rejected write meant to replace");
                }
                return Err(err);
            }
        };
        self.write_l2(key, encoded, ttl, Slot::Present(Arc::new(value.clone())), meta.into()).await?;
        self.hot_write(key, value).await;
        Ok(())
    }

    /// Caches "not found" for `key` with the negative TTL of the [`TtlPolicy`].
    pub async fn set_not_found(&self, key: &Key) -> Result<()> {
        let outcome = self.set_not_found_unaudited(key).await;
        self.audit("set_not_found", key.as_str(), &outcome);
        outcome
    }

    async fn set_not_found_unaudited(&self, key: &Key) -> Result<()> {
        let ttl = self.inner.ttl.jittered_negative();
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let marks = self.write_marks(key, &[]).await?;
        let encoded = self.inner.codec.encode_marked::<()>(key, None, meta, &marks)?;
        self.write_l2(key, encoded, ttl, Slot::Absent, meta.into()).await?;
        self.hot_invalidate(key).await;
        Ok(())
    }

    /// Removes a key from L1 and Redis. Returns whether Redis held it.
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        let outcome = self.delete_unaudited(key).await;
        self.audit("delete", key.as_str(), &outcome);
        outcome
    }

    async fn delete_unaudited(&self, key: &Key) -> Result<bool> {
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        // The lease goes too (same slot): a load in flight must not store its value after this.
        let (k, lease) = (key.as_str(), crate::lease::lease_key(key.as_str()));
        let lease = &lease;
        let (removed, _): (i64, i64) = self
            .l2_call_for(k, "DEL", |mut c| async move {
                redis::pipe().cmd("EXISTS").arg(k).cmd("DEL").arg(k).arg(lease).query_async(&mut c).await
            })
            .await?;
        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).deletes);
        self.hot_invalidate(key).await;
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
    /// - With [`Freshness`](crate::Freshness) set: fail-safe (a failed load, or one past the
    ///   soft timeout, returns the last good value within the fail-safe window; the load is then
    ///   abandoned) and the hard timeout on the loader. Early refresh and stale-while-revalidate
    ///   need a loader that can outlive the call: [`get_or_refresh`](Self::get_or_refresh).
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
        match self.get_or_load::<T, _, _, _>(key, ttl.into(), &[], load, false).await? {
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
        self.get_or_load::<T, _, _, _>(key, ttl.into(), &[], loader, true).await
    }

    /// A copy of every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        let l1 = self.inner.l1.as_ref().map(L1::usage).unwrap_or_default();
        let coherence = crate::invalidation::counters(&self.inner);
        self.inner.metrics.snapshot(&self.inner.breakers, l1, coherence)
    }

    /// The circuit breakers' worst state now (see [`MetricsSnapshot::breaker_state`]).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.breakers.state()
    }

    /// Sum of the weights of the entries present in L1 now (a weight estimates an entry's
    /// memory: key, twice the uncompressed serialized value, fixed overhead). Walks L1: for
    /// tests and inspection.
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

    pub(crate) async fn get_or_load<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        tags: &[Tag],
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
        if let Some(found) = self.l1_lookup::<T>(key, &ns, negative_is_hit).await {
            return Ok(found);
        }
        let copy = match self.hot_read::<T>(key, &ns, negative_is_hit).await {
            HotRead::Hit(found) => return Ok(found),
            HotRead::Missed(copy) => Some(copy),
            HotRead::NotHot => None,
        };
        // Plain and optional loads of one type are separate flights: one may not satisfy the other.
        let kind = (TypeId::of::<T>(), u8::from(negative_is_hit));
        let shared = self
            .inner
            .flights
            .run(key.shared(), kind, || {
                self.load_through::<T, F, Fut, E>(key, ttl, tags, loader, negative_is_hit, true, &ns)
            })
            .await?;
        match shared.downcast_ref::<Option<T>>() {
            Some(v) => {
                if let Some(copy) = copy {
                    self.hot_refill(key, &copy, v.as_ref()).await;
                }
                Ok(v.clone())
            }
            None => Err(Error::config("internal error: single-flight result of an unexpected type")),
        }
    }

    /// The single-flight leader's work: check Redis (another instance may have loaded the key),
    /// else run the loader and write both tiers. `caller_waits`: the caller awaits this load
    /// directly, so a soft timeout (with a stale value to serve instead) abandons it;
    /// `get_or_refresh` runs it in a task and lets it finish.
    #[allow(clippy::too_many_arguments)]
    pub(crate) async fn load_through<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        tags: &[Tag],
        loader: F,
        negative_is_hit: bool,
        caller_waits: bool,
        ns: &NsCounters,
    ) -> Result<Shared>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Coordinate with other processes only on a true miss: a stored value this caller cannot
        // use (see `L2Read::Unusable`) is simply replaced by its load.
        // For the L1 fill when Redis cannot take the value: nothing may have changed since now.
        let ticket = self.inner.coherence.ticket(key.as_str());
        // With leases, the read carries the lease attempt (one round trip for both on a miss).
        let (read, first) = if self.inner.leases.enabled {
            self.read_l2_leasing::<T>(key, ns, negative_is_hit).await
        } else {
            (self.read_l2::<T>(key, ns, negative_is_hit).await, None)
        };
        // A lease taken by that attempt while the read found something to serve, or something
        // that is not coordinated, goes back at once: others would wait for it in vain.
        let coordinated = matches!(read, Ok(L2Read::Miss | L2Read::Stale(..)));
        if let Some(taken) = first.as_ref().filter(|f| f.took_lease() && !coordinated) {
            self.release_lease(key, &taken.token).await;
        }
        // An expired value kept by a grace period is coordinated like a miss.
        let (mut redis_failed, coordinate, stale) = match read {
            Ok(L2Read::Value(v)) => return Ok(Arc::new(Some(v))),
            Ok(L2Read::Negative) => return Ok(Arc::new(None::<T>)),
            Ok(L2Read::Miss) => (false, true, None),
            Ok(L2Read::Stale(v, stamp)) => (false, true, Some((v, stamp))),
            Ok(L2Read::Unusable) => (false, false, None),
            Err(err) => {
                tracing::debug!(key = %key, error = %err, "redis read failed: loading from the source");
                (err.is_unhealthy() || err.is_circuit_open(), false, self.l1_entry::<T>(key, ns).await)
            }
        };
        let stale_present = stale.is_some();
        // Fail-safe: what may stand in for a failed or too slow load (stamps checked above,
        // by the L2 read or by `l1_entry`).
        let fallback = stale.filter(|(_, stamp)| self.inner.freshness.fail_safe_allows(*stamp)).map(|(v, _)| v);
        let mut lease = None;
        if coordinate && !redis_failed && self.inner.leases.enabled {
            match self.coordinate::<T>(key, ns, negative_is_hit, stale_present, first).await {
                Coordinated::Found(shared) => return Ok(shared),
                Coordinated::Holder(token) => lease = Some(token),
                Coordinated::LoadAlone { redis_failed: failed } => redis_failed = failed,
            }
        }
        // Before the load: an invalidation during it must make its value old.
        let marks = self.capture_marks(key, tags).await.unwrap_or_else(|(marks, _)| marks);
        NsCounters::inc(&ns.loader_calls);
        let started = tokio::time::Instant::now();
        let soft = if caller_waits && fallback.is_some() { self.inner.freshness.soft_timeout } else { None };
        let loaded = match crate::fresh::bounded(loader(), soft, self.inner.freshness.hard_timeout).await {
            Bounded::Done(Ok(v)) => Ok(v),
            Bounded::Done(Err(e)) => {
                NsCounters::inc(&ns.loader_errors);
                Err(Error::loader(e))
            }
            Bounded::Soft(after) | Bounded::Hard(after) => {
                NsCounters::inc(&ns.loader_timeouts);
                Err(Error::loader_timeout(after))
            }
        };
        let load_us = ns.record_load(started.elapsed());
        let value = match loaded {
            Ok(v) => v,
            Err(err) => {
                if let Some(token) = &lease {
                    self.release_lease(key, token).await;
                }
                if let Some(v) = fallback {
                    NsCounters::inc(&ns.stale_served);
                    tracing::warn!(key = %key, error = %err, "load failed; serving the last good value (fail-safe)");
                    return Ok(Arc::new(Some(v)));
                }
                return Err(err);
            }
        };
        let ttl = match &value {
            Some(_) => self.inner.ttl.jittered(ttl),
            None => self.inner.ttl.jittered_negative(),
        };
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us };
        match self.inner.codec.encode_marked(key, value.as_ref(), meta, &marks) {
            Ok(encoded) => {
                let slot = match &value {
                    Some(v) => Slot::Present(Arc::new(v.clone())),
                    None => Slot::Absent,
                };
                let raw_len = encoded.raw_len;
                // Redis just failed this flight: do not make the caller wait on it again.
                let written = match (&lease, redis_failed) {
                    (_, true) => Err(Error::circuit_open()),
                    (Some(token), false) => {
                        let holder = Holder::Load(token);
                        self.fill_leased(key, encoded, ttl, slot.clone(), holder, meta.into()).await.map(drop)
                    }
                    (None, false) => self.write_l2(key, encoded, ttl, slot.clone(), meta.into()).await,
                };
                if let Err(err) = written {
                    tracing::debug!(key = %key, error = %err, "loaded value not written to redis");
                    if err.is_unavailable() {
                        // Keep serving from L1 while Redis is away, so the source is not hammered.
                        let (checks, ttl) = (Checks::new(meta, marks), self.physical_ttl(ttl));
                        self.fill_l1_from_source(key, slot, checks, raw_len, ttl, ticket);
                    }
                }
            }
            Err(err) => {
                NsCounters::inc(&ns.uncacheable);
                if let Some(token) = &lease {
                    self.release_lease(key, token).await;
                }
                tracing::warn!(key = %key, error = %err, "loaded value not cached");
            }
        }
        Ok(Arc::new(value))
    }
}
