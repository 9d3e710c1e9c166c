//! [`Cache::get_or_refresh`]: cache-aside with a loader that may run in the background, so that
//! early refresh and stale-while-revalidate keep callers off the loader (see [`Freshness`]).
//!
//! Background refreshes are single-flight per key and value type in a process (a claim in
//! [`Refreshes`](crate::fresh::Refreshes)) and across processes through the key's lease: a
//! refresh takes the lease with `SET NX` and stores with the lease's compare-and-set, so an
//! invalidation during the load still wins; when another process holds the lease, this one skips
//! its refresh and keeps serving what it has until that process's value lands. The lease is
//! taken only while the key still holds the value that called for the refresh (compared by its
//! envelope's expiry and load time, in the same script): a refresh that reaches Redis after
//! another process's refresh has landed and released the lease does not load again.

use std::any::TypeId;
use std::future::Future;
use std::sync::Arc;

use crate::cache::{Cache, CacheValue, L2Read};
use crate::codec::{META_RANGE, Meta};
use crate::error::{Error, Result};
use crate::fresh::{Age, Bounded, bounded};
use crate::key::Key;
use crate::l1::{Checks, Slot, Stamp, typed};
use crate::lease::{ACQUIRE_FOR_REFRESH, Holder, lease_key, token};
use crate::metrics::NsCounters;
use crate::tiers::{expiry_ms, now_ms, ttl_millis};
use crate::ttl::Ttl;

/// What a refresh's lease attempt found.
enum RefreshLease {
    Taken(String),
    Held,
    /// The key no longer holds the value that called for the refresh.
    Replaced,
}

/// Why a background refresh starts.
#[derive(Clone, Copy)]
enum Trigger {
    Early,
    Stale,
}

impl Cache {
    /// Cache-aside read whose loader may also run in the background: like
    /// [`get_or_set`](Self::get_or_set), plus the cache's [`Freshness`](crate::Freshness):
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
        let ttl = ttl.into();
        let ns = self.inner.metrics.ns(key.namespace());
        let loader = Arc::new(loader);
        let freshness = &self.inner.freshness;
        let mut fallback = None;
        if let Some((v, stamp)) = self.l1_entry::<T>(key, &ns).await {
            match freshness.age(stamp, now_ms()) {
                Age::Fresh => {
                    NsCounters::inc(&ns.l1_hits);
                    return Ok(v);
                }
                Age::RefreshEarly => {
                    NsCounters::inc(&ns.l1_hits);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Early, stamp);
                    return Ok(v);
                }
                Age::Revalidate => {
                    NsCounters::inc(&ns.l1_hits);
                    NsCounters::inc(&ns.stale_served);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Stale, stamp);
                    return Ok(v);
                }
                Age::FailSafe => fallback = Some(v),
                Age::Expired => {}
            }
        }
        NsCounters::inc(&ns.l1_misses);
        match self.read_l2::<T>(key, &ns, false).await {
            Ok(L2Read::Value(v)) => return Ok(v),
            Ok(L2Read::Stale(v, stamp)) => match freshness.age(stamp, now_ms()) {
                Age::Revalidate => {
                    NsCounters::inc(&ns.stale_served);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Stale, stamp);
                    return Ok(v);
                }
                Age::FailSafe => fallback = Some(v),
                _ => {}
            },
            // Redis unreachable: the L1 copy (if any) is the fail-safe.
            _ => {}
        }
        self.load_in_task::<T, F, Fut, E>(key, ttl, loader, fallback, &ns).await
    }

    /// Any current L1 copy of `key` (stamps checked) as a `T`, fresh or stale, with its stamp
    /// (uncounted).
    pub(crate) async fn l1_entry<T: CacheValue>(&self, key: &Key, ns: &NsCounters) -> Option<(T, Stamp)> {
        match self.l1_get(key, ns).await? {
            (Slot::Present(shared), checks) => typed::<T>(&shared).map(|v| (v, checks.stamp)),
            (Slot::Absent, _) => None,
        }
    }

    /// A foreground load run in a task, so that the caller can stop waiting (soft or hard
    /// timeout) while the load completes and is stored. It joins `get_or_set`'s single-flight.
    async fn load_in_task<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        loader: Arc<F>,
        fallback: Option<T>,
        ns: &NsCounters,
    ) -> Result<T>
    where
        T: CacheValue,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let task = {
            let (cache, key) = (self.clone(), key.clone());
            tokio::spawn(async move {
                let ns = cache.inner.metrics.ns(key.namespace());
                let load = move || async move { (*loader)().await.map(Some) };
                let flight = cache.inner.flights.run(key.shared(), (TypeId::of::<T>(), 0), || {
                    cache.load_through::<T, _, _, E>(&key, ttl, &[], load, false, false, &ns)
                });
                match flight.await?.downcast_ref::<Option<T>>() {
                    Some(Some(v)) => Ok(v.clone()),
                    Some(None) => Err(Error::loader("loader produced no value")),
                    None => Err(Error::config("internal error: single-flight result of an unexpected type")),
                }
            })
        };
        let freshness = &self.inner.freshness;
        let soft = fallback.as_ref().and(freshness.soft_timeout);
        let failure = match bounded(task, soft, freshness.hard_timeout).await {
            Bounded::Done(Ok(Ok(v))) => return Ok(v),
            Bounded::Done(Ok(Err(err))) => err,
            Bounded::Done(Err(join)) => Error::loader(join),
            Bounded::Soft(after) => {
                // The load goes on in its task; only this wait is counted here.
                NsCounters::inc(&ns.loader_timeouts);
                Error::loader_timeout(after)
            }
            Bounded::Hard(after) => Error::loader_timeout(after),
        };
        match fallback {
            Some(v) => {
                NsCounters::inc(&ns.stale_served);
                tracing::warn!(key = %key, error = %failure, "serving the last good value (fail-safe)");
                Ok(v)
            }
            None => Err(failure),
        }
    }

    /// Starts a background refresh of `key` unless one is running in this process. `seen`: the
    /// stamp of the value that calls for it.
    fn refresh_in_background<T, F, Fut, E>(&self, key: &Key, ttl: Ttl, loader: &Arc<F>, trigger: Trigger, seen: Stamp)
    where
        T: CacheValue,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let Some(claim) = self.inner.refreshes.claim(key.shared(), TypeId::of::<T>()) else { return };
        let ns = self.inner.metrics.ns(key.namespace());
        NsCounters::inc(match trigger {
            Trigger::Early => &ns.early_refreshes,
            Trigger::Stale => &ns.stale_refreshes,
        });
        let (cache, key, loader) = (self.clone(), key.clone(), loader.clone());
        tokio::spawn(async move {
            let _claim = claim;
            cache.refresh::<T, F, Fut, E>(&key, ttl, &*loader, &ns, seen).await;
        });
    }

    /// One background refresh: take the lease (skip if another process holds it, or if the
    /// value `seen` was replaced meanwhile), load, store.
    async fn refresh<T, F, Fut, E>(&self, key: &Key, ttl: Ttl, loader: &F, ns: &NsCounters, seen: Stamp)
    where
        T: CacheValue,
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let lease = if self.inner.leases.enabled {
            match self.take_refresh_lease(key, seen).await {
                Ok(RefreshLease::Taken(token)) => Some(token),
                // Another process is loading this key: its value will reach Redis.
                Ok(RefreshLease::Held) => return,
                // Another process's refresh (or a write) has landed: nothing to do but drop the
                // old copy, if this instance still holds one.
                Ok(RefreshLease::Replaced) => {
                    if let Some(l1) = &self.inner.l1 {
                        l1.remove(key.as_str());
                    }
                    return;
                }
                Err(err) => {
                    tracing::debug!(key = %key, error = %err, "refresh skipped: redis unavailable");
                    return;
                }
            }
        } else {
            None
        };
        NsCounters::inc(&ns.loader_calls);
        // For the L1 fill when Redis cannot take the value: nothing may have changed since now.
        let ticket = self.inner.coherence.ticket(key.as_str());
        // Before the load: a namespace invalidation during it must make its value old.
        let marks = self.capture_marks(key, &[]).await.unwrap_or_else(|(marks, _)| marks);
        let started = tokio::time::Instant::now();
        // Nobody waits on this load, but a hung loader must not block later refreshes forever.
        let limit = self.inner.freshness.hard_timeout.unwrap_or(self.inner.leases.ttl);
        let loaded = bounded(loader(), None, Some(limit)).await;
        let load_us = ns.record_load(started.elapsed());
        let value = match loaded {
            Bounded::Done(Ok(v)) => v,
            failed => {
                match failed {
                    Bounded::Done(Err(e)) => {
                        NsCounters::inc(&ns.loader_errors);
                        tracing::warn!(key = %key, error = %e.into(), "background refresh failed; the old value stays");
                    }
                    _ => NsCounters::inc(&ns.loader_timeouts),
                }
                NsCounters::inc(&ns.refresh_errors);
                if let Some(token) = &lease {
                    self.release_lease(key, token).await;
                }
                return;
            }
        };
        let ttl = self.inner.ttl.jittered(ttl);
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us };
        let encoded = match self.inner.codec.encode_marked(key, Some(&value), meta, &marks) {
            Ok(encoded) => encoded,
            Err(err) => {
                NsCounters::inc(&ns.uncacheable);
                tracing::warn!(key = %key, error = %err, "refreshed value not cached");
                if let Some(token) = &lease {
                    self.release_lease(key, token).await;
                }
                return;
            }
        };
        let (slot, raw_len) = (Slot::Present(Arc::new(value)), encoded.raw_len);
        let written = match &lease {
            Some(token) => {
                self.fill_leased(key, encoded, ttl, slot.clone(), Holder::Load(token), meta.into()).await.map(drop)
            }
            None => self.write_l2(key, encoded, ttl, slot.clone(), meta.into()).await,
        };
        if let Err(err) = written {
            tracing::debug!(key = %key, error = %err, "refreshed value not written to redis");
            if err.is_unavailable() {
                let checks = Checks::new(meta, marks);
                self.fill_l1_from_source(key, slot, checks, raw_len, self.physical_ttl(ttl), ticket);
            }
        }
    }

    /// Takes the key's lease for a refresh of the value `seen` ([`ACQUIRE_FOR_REFRESH`]).
    async fn take_refresh_lease(&self, key: &Key, seen: Stamp) -> Result<RefreshLease> {
        let (k, lease, token, px) = (key.as_str(), lease_key(key.as_str()), token(), ttl_millis(self.inner.leases.ttl));
        let seen = Meta { expires_at_ms: seen.expires_at_ms, load_us: seen.load_us }.to_bytes();
        let (lease, t, seen) = (lease.as_slice(), token.as_str(), seen.as_slice());
        let (first, last) = (META_RANGE.start, META_RANGE.end - 1);
        let script = &redis::Script::new(ACQUIRE_FOR_REFRESH);
        let outcome: i64 = self
            .l2_call_for(k, "lease acquire", |mut c| async move {
                script.key(k).key(lease).arg(t).arg(px).arg(seen).arg(first).arg(last).invoke_async(&mut c).await
            })
            .await?;
        Ok(match outcome {
            1 => RefreshLease::Taken(token),
            0 => RefreshLease::Replaced,
            _ => RefreshLease::Held,
        })
    }
}
