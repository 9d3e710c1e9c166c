//! [`Cache`]: the public face of the two tiers. Every method here is a thin entry point; the work
//! is done by [`Inner`], whose fields are private to this module and its children under
//! `cache/`:
//!
//! - [`load`]: the read path and the load path, one miss top-down
//!   (L1 → hot copy → single-flight → L2 read + lease → loader → store → L1 admission), the
//!   single-flight itself, and `get_or_refresh`'s background refreshes;
//! - [`load_many`]: the same for a batch (`get_or_set_many`);
//! - [`tiers`]: one read or write of each tier: L1 lookup, Redis GET / SET under the
//!   breaker, envelope checks, the store step shared by every write, L1 fills after writes;
//! - [`stamps`]: namespace and tag generations: the marks a value carries, the verdict on
//!   them at every read, and what this instance knows of the current ones;
//! - [`recovery`]: auto-recovery, the queue of invalidations Redis could not take and their
//!   replay;
//! - [`hot`]: hot keys' registry and copies; [`write_through`]: `set_through`, `update_through`, `update_through_versioned`; [`builder`]:
//!   assembling it all.

mod builder;
mod hot;
mod load;
mod load_many;
mod recovery;
mod stamps;
mod tiers;
mod write_through;

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::Serialize;
use serde::de::DeserializeOwned;

pub use self::builder::CacheBuilder;
use self::hot::HotRegistry;
use self::load::Flights;
pub use self::recovery::AutoRecovery;
use self::recovery::Recovery;
pub(crate) use self::recovery::RecoveryCounts;
pub(crate) use self::stamps::{Stamps, Verdict};
use crate::audit::Audit;
use crate::breaker::BreakerState;
use crate::codec::Codec;
use crate::error::{Error, Result};
use crate::fresh::{Freshness, Refreshes};
use crate::key::Key;
use crate::l1::L1;
#[cfg(feature = "write-behind")]
use crate::l2::Conn;
use crate::l2::L2;
use crate::lease::LeaseConfig;
use crate::metrics::{Metrics, MetricsSnapshot, NsCounters};
use crate::tags::Tag;
use crate::telemetry::traced;
use crate::ttl::{Ttl, TtlPolicy};

/// Bounds on what a cached value type must provide: serde both ways, and `Clone` because an L1
/// hit hands out a copy of the decoded value.
#[diagnostic::on_unimplemented(
    message = "`{Self}` cannot be a cached value: it must be `Serialize + DeserializeOwned + Clone + Send + Sync + 'static`",
    note = "derive `Clone`, `serde::Serialize` and `serde::Deserialize` for it"
)]
pub trait CacheValue: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}
impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> CacheValue for T {}

/// A two-tier cache: in-process L1 in front of Redis L2. Cheap to clone; clones share
/// everything. See the [crate docs](crate) for the data flow.
#[derive(Clone)]
pub struct Cache {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

/// Everything a cache is made of. The fields are private to the `cache` module and its
/// children; the rest of the crate asks through methods.
pub(crate) struct Inner {
    /// The in-process tier and its admission rules (tickets, tracking health).
    l1: L1,
    /// Redis, behind its circuit breakers (timeouts and retries inside each call).
    l2: L2,
    /// In-process single-flight of loads.
    flights: Flights,
    /// Background refreshes running in this process (`get_or_refresh`).
    refreshes: Arc<Refreshes>,
    /// This instance's knowledge of namespace and tag stamps.
    stamps: Stamps,
    metrics: Metrics,
    codec: Codec,
    ttl: TtlPolicy,
    leases: LeaseConfig,
    freshness: Freshness,
    hot: HotRegistry,
    audit: Option<Audit>,
    /// Invalidations Redis could not take, queued for replay (auto-recovery).
    recovery: Arc<Recovery>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("l1_on", &self.l1.is_on())
            .field("l1_capacity_bytes", &self.l1.budget())
            .field("cluster", &self.l2.is_cluster())
            .field("ttl", &self.ttl)
            .field("leases", &self.leases)
            .field("freshness", &self.freshness)
            .field("breaker", &self.l2.breakers().state())
            .finish_non_exhaustive()
    }
}

impl Inner {
    /// The L1 tier (for the invalidation supervisor).
    pub(crate) fn l1(&self) -> &L1 {
        &self.l1
    }

    /// This instance's stamp knowledge (for the invalidation supervisor).
    pub(crate) fn stamps(&self) -> &Stamps {
        &self.stamps
    }

    /// What [`L2::run`] calls when Redis redirects a call: the L1 invalidation supervisor must
    /// know ([`crate::invalidation::redirected`]).
    pub(crate) fn on_redirect(&self) -> impl Fn(&str) + Sync + '_ {
        move |node| crate::invalidation::redirected(self, node)
    }

    /// One Redis call outside the cache's key space (write-behind streams), with the retries
    /// and redirect handling of every call but no breaker.
    #[cfg(feature = "write-behind")]
    pub(crate) async fn run_l2<T, F, Fut>(&self, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.l2.run(None, context, op, &self.on_redirect()).await
    }

    /// The per-call Redis timeout.
    #[cfg(feature = "write-behind")]
    pub(crate) fn op_timeout(&self) -> std::time::Duration {
        self.l2.op_timeout
    }

    /// Counts one event of `namespace`.
    pub(crate) fn count(&self, namespace: &str, counter: impl Fn(&NsCounters) -> &AtomicU64) {
        NsCounters::inc(counter(self.metrics.ns(namespace)));
    }

    /// Records an action in the audit log, when one is configured.
    fn audit<T>(&self, action: &str, target: &str, outcome: &Result<T>) {
        if let Some(audit) = &self.audit {
            audit.record(action, target, outcome);
        }
    }
}

impl Cache {
    /// Starts configuring a cache.
    pub fn builder() -> CacheBuilder {
        CacheBuilder::default()
    }

    /// The shared parts, for the crate's other modules (write-behind, metrics exposition).
    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }

    #[cfg(any(feature = "prometheus", feature = "otel"))]
    pub(crate) fn from_inner(inner: Arc<Inner>) -> Self {
        Self { inner }
    }

    /// Records an action in the audit log, when one is configured.
    pub(crate) fn audit<T>(&self, action: &str, target: &str, outcome: &Result<T>) {
        self.inner.audit(action, target, outcome);
    }

    /// Reads a value: L1, then Redis. A cached "not found" reads as `None`.
    ///
    /// A cache read must not fail a request: when Redis is unreachable, slow or the breaker is
    /// open, this returns `Ok(None)` (counted in [`metrics`](Self::metrics)). A value stored
    /// with another type reads as `None` too (and is counted as a type mismatch).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// assert_eq!(cache.get::<String>(&key).await?, None); // nothing cached yet
    /// cache.set(&key, &"Ada".to_owned(), Ttl::Medium).await?;
    /// assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("Ada"));
    /// // Another type under the same key is a miss, not an error.
    /// assert_eq!(cache.get::<u64>(&key).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn get<T: CacheValue>(&self, key: &Key) -> Result<Option<T>> {
        traced!("strata.get", key.namespace(), Read, Ok(self.inner.read::<T>(key).await))
    }

    /// Writes a value to Redis (with a jittered TTL) and to L1.
    ///
    /// Errors: [`is_value_too_large`](Error::is_value_too_large) and
    /// [`is_serialization`](Error::is_serialization) before anything is written — the key's
    /// previous value is then removed from both tiers (best effort for Redis), so the cache does
    /// not keep serving what the caller meant to replace; an
    /// [`is_unavailable`](Error::is_unavailable) error when Redis could not be written, in which
    /// case this instance's L1 copy is dropped too, and the key's removal is queued for when
    /// Redis is back ([`is_queued`](Error::is_queued), [`AutoRecovery`]). The same when the key's namespace stamp
    /// could not be read first (see [`invalidate_namespace`](Self::invalidate_namespace)): a
    /// value whose generation is unknown would be discarded by every reader. For a hot key
    /// ([`HotKeys`](crate::HotKeys)), also an `is_unavailable` error when one of its copies
    /// could not be written: it may serve the previous value until the copy TTL.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use std::time::Duration;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// cache.set(&key, &vec![1u32, 2, 3], Ttl::Short).await?;
    /// cache.set(&key, &vec![4u32], Duration::from_secs(30)).await?; // an exact duration, jittered
    /// assert_eq!(cache.get::<Vec<u32>>(&key).await?, Some(vec![4]));
    /// # Ok(()) }
    /// ```
    pub async fn set<T: CacheValue>(&self, key: &Key, value: &T, ttl: impl Into<Ttl>) -> Result<()> {
        traced!("strata.set", key.namespace(), Write, self.set_with_tags(key, value, ttl.into(), &[]).await)
    }

    /// `set` with validated tags.
    pub(crate) async fn set_with_tags<T: CacheValue>(
        &self,
        key: &Key,
        value: &T,
        ttl: Ttl,
        tags: &[Tag],
    ) -> Result<()> {
        let outcome = self.inner.write(key, Some(value), ttl, tags).await;
        self.audit("set", key.as_str(), &outcome);
        outcome
    }

    /// Caches "not found" for `key` with the negative TTL of the [`TtlPolicy`].
    pub async fn set_not_found(&self, key: &Key) -> Result<()> {
        traced!("strata.set_not_found", key.namespace(), Write, {
            // A "not found" takes the policy's negative TTL, whatever the class given.
            let outcome = self.inner.write::<()>(key, None, Ttl::Short, &[]).await;
            self.audit("set_not_found", key.as_str(), &outcome);
            outcome
        })
    }

    /// Removes a key from L1 and Redis, on every instance (their L1 copies go with the
    /// invalidation Redis sends them). Returns whether Redis held it. A load of the key in
    /// flight anywhere cannot store its value after this (its lease goes too). Fails when the
    /// key or, for a hot key, one of its copies could not be removed; when Redis was unhealthy,
    /// the removal is then queued in this instance and replayed when Redis is back
    /// ([`Error::is_queued`], [`AutoRecovery`]), and until then this instance reads the key
    /// from neither tier.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// cache.set(&key, &"Ada".to_owned(), Ttl::Medium).await?;
    /// assert!(cache.delete(&key).await?);
    /// assert!(!cache.delete(&key).await?, "already gone");
    /// assert_eq!(cache.get::<String>(&key).await?, None);
    /// # Ok(()) }
    /// ```
    pub async fn delete(&self, key: &Key) -> Result<bool> {
        traced!("strata.delete", key.namespace(), Write, {
            let outcome = self.inner.delete(key).await;
            self.audit("delete", key.as_str(), &outcome);
            outcome
        })
    }

    /// Cache-aside read: returns the cached value, or runs `loader`, caches what it returns
    /// (for `ttl`, jittered) and returns it.
    ///
    /// - Concurrent calls for one key in this process run `loader` once; every caller gets its
    ///   result, value or error.
    /// - When Redis is down, slow, or the breaker is open, the loader's value is returned with no
    ///   error; the cache is simply bypassed.
    /// - A value too large to cache is returned but not stored.
    /// - With [`Freshness`] set: fail-safe (a failed load, or one past the
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
    /// for call in futures_util::future::join_all(calls).await {
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
        traced!("strata.get_or_set", key.namespace(), Load, {
            match self.inner.get_or_load::<T, _, _, _>(key, ttl.into(), &[], load, false).await? {
                Some(v) => Ok(v),
                None => Err(Error::loader("loader produced no value")),
            }
        })
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
        traced!(
            "strata.get_or_set_optional",
            key.namespace(),
            Load,
            self.inner.get_or_load::<T, _, _, _>(key, ttl.into(), &[], loader, true).await
        )
    }

    /// Waits until every value this instance has loaded is in Redis (or its store gave up).
    ///
    /// A load's caller gets its value as soon as the loader returns; the value reaches Redis,
    /// and this instance's L1, a round trip later, in the background. A later read of that key
    /// in this process waits for that store by itself, so this is needed only to see the value
    /// from outside the process at once (a test, a script) or before shutting the runtime
    /// down: a store cut off by shutdown leaves the key's lease to expire, and other processes
    /// wait for it until then (at most the lease TTL).
    pub async fn settled(&self) {
        self.inner.flights.all_stored().await;
    }

    /// Cache-aside read whose loader may also run in the background: like
    /// [`get_or_set`](Self::get_or_set), plus the cache's [`Freshness`]:
    ///
    /// - **Early refresh** (XFetch): a fresh L1 hit may start one background refresh shortly
    ///   before expiry; the caller gets the cached value at once.
    /// - **Stale-while-revalidate**: within that window past expiry, the caller gets the stale
    ///   value at once and one background refresh replaces it.
    /// - **Fail-safe**: otherwise the caller waits for a load (single-flight, in this process and
    ///   across processes); if it fails, or passes the soft timeout, a value within the fail-safe
    ///   window is returned instead (counted in `stale_served`). A load that passed the soft
    ///   timeout keeps running and stores its value when it finishes.
    /// - The **hard timeout** bounds the caller's wait: past it, the stale value if any, else an
    ///   error with [`is_timeout`](Error::is_timeout).
    ///
    /// The loader is called again for every refresh, hence `Fn` and `'static`: capture clones
    /// (an `Arc` of the database pool, the id), not borrows.
    pub async fn get_or_refresh<T, F, Fut, E>(&self, key: &Key, ttl: impl Into<Ttl>, loader: F) -> Result<T>
    where
        T: CacheValue,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        traced!(
            "strata.get_or_refresh",
            key.namespace(),
            Load,
            self.inner.get_or_refresh(key, ttl.into(), Arc::new(loader)).await
        )
    }

    /// Writes `value` to the source with `store_fn`, then to the cache, so that a crash at any
    /// point cannot leave the cache newer than the source. The order: take the key's lease and
    /// delete the cached value (one round trip); run `store_fn`; store the value only if the
    /// lease is still this call's and no other write-through of the key overlapped it (else the
    /// key is left uncached, for readers to load from the source, since concurrent source
    /// writes may land in any order). A crash after the first step leaves the key uncached; readers
    /// that miss meanwhile wait for the lease instead of loading the version being replaced
    /// (in this process in memory, in others by polling; at most the lease's `max_wait`, so do
    /// not read the key through the cache from inside `store_fn`). Keep the lease TTL
    /// ([`LeaseConfig`]) above the slowest source write.
    ///
    /// Errors: the value is validated (size, serialization) before anything happens; a failing
    /// `store_fn` returns its error as [`is_loader`](Error::is_loader) with the cache emptied of
    /// the key; any other error comes after the source write: when Redis is unavailable (or the
    /// key's namespace stamp cannot be read) the error is
    /// [`is_unavailable`](Error::is_unavailable): the source holds the new value, and the cache
    /// could not be touched, so it may keep the previous value until its TTL, as after any write
    /// Redis could not take.
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// let db = Arc::new(Mutex::new(String::new())); // the source of truth
    ///
    /// let source = db.clone();
    /// cache
    ///     .set_through(&key, &"Ada".to_owned(), Ttl::Medium, |name: &String| {
    ///         let (source, name) = (source.clone(), name.clone());
    ///         async move {
    ///             *source.lock().unwrap() = name; // UPDATE users SET name = ... WHERE id = 42
    ///             Ok::<_, std::io::Error>(())
    ///         }
    ///     })
    ///     .await?;
    /// assert_eq!(*db.lock().unwrap(), "Ada");
    /// assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("Ada"));
    /// # Ok(()) }
    /// ```
    pub async fn set_through<T, F, Fut, E>(&self, key: &Key, value: &T, ttl: impl Into<Ttl>, store_fn: F) -> Result<()>
    where
        T: CacheValue,
        F: FnOnce(&T) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        traced!("strata.set_through", key.namespace(), Write, {
            let outcome = self.inner.set_through(key, value, ttl.into(), store_fn).await;
            self.audit("set_through", key.as_str(), &outcome);
            outcome
        })
    }

    /// [`set_through`](Self::set_through) for a source write that answers the value to cache:
    /// an `UPDATE ... RETURNING` that changes some fields of a row and returns the whole row, so
    /// the caller need not know the row beforehand (reading it from the cache first and writing
    /// it back would lose a concurrent update of another field). The same order and guarantees:
    /// the key's lease is taken and the cached value deleted; `update` runs; what it returned
    /// is stored only if no other write-through of the key overlapped it, else the key is left
    /// uncached. `Ok(None)` from `update` (nothing was updated) leaves the key uncached too.
    /// This instance's L1 keeps the stored value; other instances drop theirs. Until the call
    /// ends, a read of the key that misses waits for it (at most the lease's `max_wait`), so do
    /// not read the key through the cache from inside `update`.
    ///
    /// Returns what `update` returned. Errors: a failing `update` is
    /// [`is_loader`](Error::is_loader); any other error comes after `update` ran, so the source
    /// holds its write: a value the cache cannot take (too large) leaves the key uncached; when
    /// Redis is unavailable the error is [`is_unavailable`](Error::is_unavailable), and the
    /// cache may keep the previous value until its TTL, as after any write Redis could not take.
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// let db = Arc::new(Mutex::new(("Ada".to_owned(), 36))); // the source of truth
    ///
    /// let source = db.clone();
    /// let row = cache
    ///     .update_through(&key, Ttl::Medium, || async move {
    ///         // UPDATE users SET age = age + 1 WHERE id = 42 RETURNING name, age
    ///         let mut row = source.lock().unwrap();
    ///         row.1 += 1;
    ///         Ok::<_, std::io::Error>(Some(row.clone()))
    ///     })
    ///     .await?;
    /// assert_eq!(row, Some(("Ada".to_owned(), 37)));
    /// assert_eq!(cache.get::<(String, u32)>(&key).await?, Some(("Ada".to_owned(), 37)));
    /// # Ok(()) }
    /// ```
    pub async fn update_through<T, F, Fut, E>(&self, key: &Key, ttl: impl Into<Ttl>, update: F) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        traced!("strata.update_through", key.namespace(), Write, {
            let outcome = self.inner.update_through(key, ttl.into(), update).await;
            self.audit("update_through", key.as_str(), &outcome);
            outcome
        })
    }

    /// [`update_through`](Self::update_through) for a source that versions its rows: `update`
    /// answers the row and its version, a number that grows with every write of the row (a
    /// column the `UPDATE` increments: `SET ..., version = version + 1 ... RETURNING ...,
    /// version`). The version, not a lease, orders concurrent writes, so nothing is sent to
    /// Redis before `update` and one script after it: the cost of a `DEL` after the update,
    /// with the row cached instead of deleted.
    ///
    /// The row is stored only over an older version; until then every instance keeps serving
    /// the previous value (the write has not completed). With no version on record (the key's
    /// first versioned write, or after a `delete`, a plain `set`, a flush or an eviction: any
    /// change whose version the cache does not know) the key is emptied instead, and for two
    /// [`VERSIONED_WINDOW`](crate::VERSIONED_WINDOW)s (2 s) its versioned writes keep emptying
    /// it: a write older than the lost version may still be running. A write whose store comes
    /// more than a window after its start (the client's clock against Redis's) empties the key
    /// too. Then reads load the row and writes store it. With
    /// [`LeaseConfig::versioned_writes`](crate::LeaseConfig::versioned_writes), a load that
    /// stores a key with no version on record starts one, so the first write need not empty it. `Ok(None)` from `update` (no such
    /// row) empties the key. A key with hot copies takes
    /// [`update_through`](Self::update_through)'s lease protocol. Design and argument:
    /// `cache/write_through.rs`, "Versioned".
    ///
    /// Errors as [`update_through`](Self::update_through)'s; after one that is not `update`'s
    /// own, the previous value is removed as far as Redis allows.
    ///
    /// ```
    /// # use std::sync::{Arc, Mutex};
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl, VERSIONED_WINDOW};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let key = KeySchema::new("shop", 1)?.key("user", "42")?;
    /// let db = Arc::new(Mutex::new((("Ada".to_owned(), 36_u32), 1_u64))); // (row, version)
    /// // UPDATE users SET age = age + 1, version = version + 1 WHERE id = 42
    /// //     RETURNING name, age, version
    /// let birthday = || async {
    ///     let mut stored = db.lock().unwrap();
    ///     stored.0.1 += 1;
    ///     stored.1 += 1;
    ///     Ok::<_, std::io::Error>(Some(stored.clone()))
    /// };
    ///
    /// // No version on record yet: the write empties the key (and quarantines it a moment).
    /// assert_eq!(cache.update_through_versioned(&key, Ttl::Medium, birthday).await?, Some(("Ada".to_owned(), 37)));
    /// assert_eq!(cache.get::<(String, u32)>(&key).await?, None);
    /// tokio::time::sleep(2 * VERSIONED_WINDOW).await;
    /// // From now on a write stores the row it wrote.
    /// cache.update_through_versioned(&key, Ttl::Medium, birthday).await?;
    /// assert_eq!(cache.get::<(String, u32)>(&key).await?, Some(("Ada".to_owned(), 38)));
    /// # Ok(()) }
    /// ```
    pub async fn update_through_versioned<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: impl Into<Ttl>,
        update: F,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<(T, u64)>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        traced!("strata.update_through_versioned", key.namespace(), Write, {
            let outcome = self.inner.update_through_versioned(key, ttl.into(), update).await;
            self.audit("update_through_versioned", key.as_str(), &outcome);
            outcome
        })
    }

    /// Marks `key` hot at run time: this instance's reads spread over `copies` copies
    /// (1 to [`MAX_HOT_COPIES`](crate::MAX_HOT_COPIES)) and its writes update them. Other
    /// instances are unaffected until they mark it too; [`HotKeys`](crate::HotKeys) bounds what
    /// their writes may leave stale.
    pub fn mark_hot(&self, key: &Key, copies: usize) -> Result<()> {
        self.inner.hot.mark(key, copies)
    }

    /// Removes a [`mark_hot`](Self::mark_hot) mark (configured hot keys stay hot). Copies left
    /// in Redis expire within the copy TTL.
    pub fn unmark_hot(&self, key: &Key) {
        self.inner.hot.unmark(key);
    }

    /// How many copies this instance keeps of `key` (0 when it is not hot).
    pub fn hot_copies(&self, key: &Key) -> usize {
        self.inner.hot.copies(key)
    }

    /// A copy of every counter.
    pub fn metrics(&self) -> MetricsSnapshot {
        let inner = &self.inner;
        let coherence = crate::invalidation::counters(inner);
        inner.metrics.snapshot(inner.l2.breakers(), inner.l1.usage(), coherence, inner.recovery.counts())
    }

    /// Invalidations queued now for replay because Redis could not take them
    /// ([`AutoRecovery`]): 0 once Redis is back and every replay went through.
    pub fn recovery_queue_len(&self) -> usize {
        self.inner.recovery.len()
    }

    /// The circuit breakers' worst state now (see [`MetricsSnapshot::breaker_state`]).
    pub fn breaker_state(&self) -> BreakerState {
        self.inner.l2.breakers().state()
    }

    /// Sum of the weights of the entries present in L1 now (a weight estimates an entry's
    /// memory: key, twice the uncompressed serialized value, fixed overhead). Walks L1: for
    /// tests and inspection.
    pub fn l1_resident_bytes(&self) -> u64 {
        // No maintenance first: this measures what is held, including writes the store has not settled.
        self.inner.l1.resident_bytes()
    }

    /// The byte budget of L1 (0 when disabled).
    pub fn l1_capacity_bytes(&self) -> u64 {
        self.inner.l1.budget()
    }

    /// Drops every L1 entry of this instance (Redis is untouched).
    pub fn clear_l1(&self) {
        self.inner.l1.clear();
    }

    /// Sends a PING through the breaker.
    pub async fn ping(&self) -> Result<()> {
        let _: String =
            self.inner.call("PING", |mut c| async move { redis::cmd("PING").query_async(&mut c).await }).await?;
        Ok(())
    }
}
