//! Write-through: [`Cache::set_through`] writes the source of truth, then the cache, in an order
//! that a crash at any point cannot turn into a cache newer — or older — than the source.
//!
//! ```text
//! 1. take the key's lease (overwriting any reader's) and DEL the cached value, one round trip
//! 2. store_fn(value): the source write                      ── fails: lease released, cache empty
//! 3. store the value only if the lease is still ours (CAS), releasing it
//! ```
//!
//! - A crash (or a dropped future) after 1 leaves the cache empty: the next read loads from the
//!   source, whichever of its versions it holds. Nothing is ever written to the cache before the
//!   source has it, so the cache cannot be newer.
//! - Readers that miss between 1 and 3 find the lease and wait for its value (distributed
//!   single-flight) instead of loading a version the write is about to replace; one that had
//!   already loaded the old value holds a token that 1 revoked, so its store is refused.
//! - If the source write outlasts the lease TTL, another caller may take the lease and load:
//!   keep the lease TTL above the slowest source write.

use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, CacheValue};
use crate::codec::Meta;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::Slot;
use crate::lease::{lease_key, token};
use crate::metrics::NsCounters;
use crate::tiers::{expiry_ms, ttl_millis};
use crate::ttl::Ttl;

impl Cache {
    /// Writes `value` to the source with `store_fn`, then to the cache, so that a crash at any
    /// point cannot leave the cache newer than the source. The order: take the key's lease and
    /// delete the cached value (one round trip); run `store_fn`; store the value only if the
    /// lease is still this call's. A crash after the first step leaves the key uncached; readers
    /// that miss meanwhile wait for the lease instead of loading the version being replaced.
    /// Keep the lease TTL ([`LeaseConfig`](crate::LeaseConfig)) above the slowest source write.
    ///
    /// Errors: the value is validated (size, serialization) before anything happens; a failing
    /// `store_fn` returns its error as [`is_loader`](Error::is_loader) with the cache emptied of
    /// the key; when Redis is unavailable the source is still written and the error is
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
        let outcome = self.set_through_unaudited(key, value, ttl.into(), store_fn).await;
        self.audit("set_through", key.as_str(), &outcome);
        outcome
    }

    async fn set_through_unaudited<T, F, Fut, E>(&self, key: &Key, value: &T, ttl: Ttl, store_fn: F) -> Result<()>
    where
        T: CacheValue,
        F: FnOnce(&T) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ttl = self.inner.ttl.jittered(ttl);
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        // Before the source write: a namespace invalidation during it makes this value old.
        let marks = self.write_marks(key, &[]).await?;
        let encoded = self.inner.codec.encode_marked(key, Some(value), meta, &marks)?;

        // 1. Hold the lease and empty the key, atomically (same slot).
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        let (k, lease, token) = (key.as_str(), lease_key(key.as_str()), token());
        let px = ttl_millis(self.inner.leases.ttl);
        let (t, lease) = (token.as_str(), &lease);
        let held: Result<()> = self
            .l2_call_for(k, "write-through lease", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(lease)
                    .arg(t)
                    .arg("PX")
                    .arg(px)
                    .ignore()
                    .cmd("DEL")
                    .arg(k)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        if let Err(err) = &held {
            // The source must still be written: the caller's write is the point. Without the
            // lease the cache may keep an old copy, so report Redis's error after the write.
            tracing::warn!(key = %key, error = %err, "write-through: could not clear the cached value first");
        }

        // 2. The source.
        if let Err(e) = store_fn(value).await {
            if held.is_ok() {
                self.release_lease(key, &token).await;
            }
            return Err(Error::loader(e));
        }
        held?;

        // 3. The cache, only if no one took the lease over meanwhile.
        let slot = Slot::Present(Arc::new(value.clone()));
        self.fill_leased(key, encoded, ttl, slot, &token, meta.into()).await?;
        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).writes_through);
        self.hot_write(key, value).await;
        Ok(())
    }
}
