//! Batches: `get_many`, `set_many`, `get_or_set_many` (the batch load path is in
//! `cache/load_many.rs`).
//!
//! On a cluster, keys are grouped by hash slot and each group is one pipeline (an MGET, plus the
//! keys' PTTLs when L1 is on; or the SETs); the groups are sent concurrently over the multiplexed
//! connections, so they travel together, and a batch never meets a CROSSSLOT error. On a single
//! server the keys are simply chunked.

use std::collections::HashMap;
use std::future::Future;

use crate::cache::{Cache, CacheValue};
use crate::error::Result;
use crate::key::Key;
use crate::telemetry::{traced, traced_batch};
use crate::ttl::Ttl;

impl Cache {
    /// Reads many keys at once: L1 first, then the rest from Redis grouped by slot. The result
    /// lines up with `keys`. Like [`get`](Cache::get), unavailability of Redis reads as misses.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let shop = KeySchema::new("shop", 1)?;
    /// let keys = [shop.key("user", "1")?, shop.key("user", "2")?, shop.key("user", "3")?];
    /// cache.set_many(&[(keys[0].clone(), "Ada".to_owned()), (keys[2].clone(), "Cy".to_owned())], Ttl::Medium).await?;
    /// let found: Vec<Option<String>> = cache.get_many(&keys).await?;
    /// assert_eq!(found, [Some("Ada".to_owned()), None, Some("Cy".to_owned())]);
    /// # Ok(()) }
    /// ```
    pub async fn get_many<T: CacheValue>(&self, keys: &[Key]) -> Result<Vec<Option<T>>> {
        traced_batch!("strata.get_many", keys, Read, Ok(self.inner().read_many(keys).await))
    }

    /// Writes many values, each with its own jittered TTL. Every value is encoded before anything
    /// is sent, so an oversized or unserializable value fails the whole call with nothing written.
    /// If some slot groups fail to be written, the first error is returned and the L1 copies of
    /// those keys are dropped; the other groups stay written. A hot key's copies are removed
    /// (the values are not copied); one that could not be removed fails the call the same way.
    ///
    /// The audit log gets one `set_many` record per key, with the outcome of the whole call.
    pub async fn set_many<T: CacheValue>(&self, items: &[(Key, T)], ttl: impl Into<Ttl>) -> Result<()> {
        traced!("strata.set_many", items.first().map(|(key, _)| key.namespace()), batch = items.len(), Write, {
            let outcome = self.inner().write_many(items, ttl.into()).await;
            for (key, _) in items {
                self.audit("set_many", key.as_str(), &outcome);
            }
            outcome
        })
    }

    /// Batch cache-aside read. Keys found in L1 or Redis are served from there; `loader` is called
    /// **once** with every key still missing (each once, in the order of its first appearance in
    /// `keys`) and returns the values it found; those are cached (for `ttl`, jittered, one slot group per
    /// write round) and returned. The result lines up with `keys`; a key the loader did not
    /// return is `None` and is not cached (see
    /// [`get_or_set_many_optional`](Self::get_or_set_many_optional) to cache it as "not found").
    /// The loader is not called when nothing is missing.
    ///
    /// Same contract as [`get_or_set`](Self::get_or_set): a loader error is returned as an
    /// [`is_loader`](crate::Error::is_loader) error (nothing is cached); Redis down, slow or behind an
    /// open breaker is not an error: the loader's values are returned (and kept in L1).
    ///
    /// Concurrency, with leases on (the default): each missing key is taken with the same lease
    /// as `get_or_set`, so a value loaded before a concurrent `set`/`delete`/`set_many` of its
    /// key is returned but not stored. A key whose lease another caller holds (a `get_or_set`
    /// in this or another process, another batch) is waited for, up to
    /// [`LeaseConfig::max_wait`](crate::LeaseConfig::max_wait), rather than loaded twice. With
    /// leases off, concurrent loads of one key may both run, and the later write wins.
    pub async fn get_or_set_many<T, F, Fut, E>(
        &self,
        keys: &[Key],
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<Key, T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        traced_batch!(
            "strata.get_or_set_many",
            keys,
            Load,
            self.inner().load_many(keys, ttl.into(), loader, false).await
        )
    }

    /// Like [`get_or_set_many`](Self::get_or_set_many), with negative caching: a key the loader
    /// does not return is cached as "not found" (negative TTL of the [`TtlPolicy`](crate::TtlPolicy)),
    /// and a cached "not found" is served as `None` without calling the loader.
    pub async fn get_or_set_many_optional<T, F, Fut, E>(
        &self,
        keys: &[Key],
        ttl: impl Into<Ttl>,
        loader: F,
    ) -> Result<Vec<Option<T>>>
    where
        T: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<Key, T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        traced_batch!(
            "strata.get_or_set_many_optional",
            keys,
            Load,
            self.inner().load_many(keys, ttl.into(), loader, true).await
        )
    }
}
