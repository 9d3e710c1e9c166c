//! Write-through: [`Cache::set_through`] writes the source of truth, then the cache, in an order
//! that a crash at any point cannot turn into a cache newer — or older — than the source.
//!
//! ```text
//! 1. take the key's lease (overwriting any reader's: SET ... GET) and DEL the cached value,
//!    one round trip
//! 2. store_fn(value): the source write                      ── fails: lease released, cache empty
//! 3. store the value only if the lease is still ours and step 1 overwrote no other
//!    write-through's lease (CAS), releasing it; otherwise DEL the key and its lease
//! ```
//!
//! - A crash (or a dropped future) after 1 leaves the cache empty: the next read loads from the
//!   source, whichever of its versions it holds. Nothing is ever written to the cache before the
//!   source has it, so the cache cannot be newer.
//! - Readers that miss between 1 and 3 find the lease and wait for its value (distributed
//!   single-flight) instead of loading a version the write is about to replace; one that had
//!   already loaded the old value holds a token that 1 revoked, so its store is refused.
//! - Concurrent write-throughs of one key may reach the source in any order, so none of them
//!   may store its value unless it ran alone: write-through tokens are recognisable, and one
//!   that took the lease over from another (step 1 returns the previous token), or whose lease
//!   was taken over, ends with `DEL key lease` after its source write instead of storing —
//!   whoever holds the lease then, as `delete` does. Every write-through therefore ends, after
//!   its source write, either with a store that no overlapping write-through could follow, or
//!   with the key emptied; readers then load the source's final version.
//! - If the source write outlasts the lease TTL, another caller may take the lease and load
//!   (possibly the version being replaced); the write's final DEL removes what it stored.
//!   Keep the lease TTL above the slowest source write all the same: readers wait for it.

use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, CacheValue};
use crate::codec::Meta;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::Slot;
use crate::lease::{Holder, THROUGH_TOKEN_PREFIX, lease_key, through_token};
use crate::metrics::NsCounters;
use crate::tiers::{expiry_ms, ttl_millis};
use crate::ttl::Ttl;

impl Cache {
    /// Writes `value` to the source with `store_fn`, then to the cache, so that a crash at any
    /// point cannot leave the cache newer than the source. The order: take the key's lease and
    /// delete the cached value (one round trip); run `store_fn`; store the value only if the
    /// lease is still this call's and no other write-through of the key overlapped it (else the
    /// key is left uncached, for readers to load from the source, since concurrent source
    /// writes may land in any order). A crash after the first step leaves the key uncached; readers
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
        let (k, lease, token) = (key.as_str(), lease_key(key.as_str()), through_token());
        let px = ttl_millis(self.inner.leases.ttl);
        let (t, lease) = (token.as_str(), &lease);
        let held: Result<(Option<String>,)> = self
            .l2_call_for(k, "write-through lease", |mut c| async move {
                redis::pipe()
                    .cmd("SET")
                    .arg(lease)
                    .arg(t)
                    .arg("PX")
                    .arg(px)
                    .arg("GET")
                    .cmd("DEL")
                    .arg(k)
                    .ignore()
                    .query_async(&mut c)
                    .await
            })
            .await;
        // Another write-through's lease was live: its source write and ours may land in either
        // order, so neither may store.
        let held = held.map(|(previous,)| previous.is_some_and(|p| p.starts_with(THROUGH_TOKEN_PREFIX)));
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
        let contended = held?;

        // 3. The cache, only if this write ran alone; else the key is emptied.
        let slot = Slot::Present(Arc::new(value.clone()));
        let holder = Holder::Through { token: &token, contended };
        let stored = self.fill_leased(key, encoded, ttl, slot, holder, meta.into()).await?;
        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).writes_through);
        if stored {
            self.hot_write(key, value).await;
        } else {
            self.hot_invalidate(key).await;
        }
        Ok(())
    }
}
