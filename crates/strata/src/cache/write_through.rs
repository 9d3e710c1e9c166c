//! Write-through: [`Cache::set_through`](crate::Cache::set_through) writes the source of truth, then the cache, in an order
//! that a crash at any point cannot turn into a cache newer — or older — than the source.
//! [`Cache::update_through`](crate::Cache::update_through) is the same with the value the source
//! write returned (`UPDATE ... RETURNING`), encoded after step 2;
//! [`Cache::update_through_versioned`](crate::Cache::update_through_versioned) orders writes by
//! a version the source returns instead of a lease (below, "Versioned").
//!
//! ```text
//! 1. take the key's lease (overwriting any reader's: SET ... GET), DEL its write version
//!    (below) and the cached value (not with `LeaseConfig::keep_serving_during_writes`: it
//!    serves until 3), one round trip
//! 2. store_fn(value): the source write                      ── fails: lease released, cache empty
//! 3. store the value only if the lease is still ours and step 1 overwrote no other
//!    write-through's lease (CAS), releasing it; otherwise DEL the key and its lease
//! ```
//!
//! - A crash (or a dropped future) after 1 leaves the cache empty (unless the value is kept
//!   serving: then the previous value until its TTL): the next read loads from the source,
//!   whichever of its versions it holds. Nothing is ever written to the cache before the
//!   source has it, so the cache cannot be newer.
//! - Readers that miss between 1 and 3 find the lease and wait for its value (distributed
//!   single-flight, at most the lease's `max_wait`) instead of loading a version the write is
//!   about to replace — in this process in memory until step 3 is done (the write registers in
//!   `Flights`, see `load.rs`'s `Writing`), in others by polling; one that had already loaded
//!   the old value holds a token that 1 revoked, so its store is refused.
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
//!
//! # Versioned
//!
//! [`Cache::update_through_versioned`](crate::Cache::update_through_versioned) takes no lease
//! before the source write: the source answers a version with the row (a column the `UPDATE`
//! increments), and that version, not a lease, orders concurrent writes. One round trip, after
//! the source write, as a `DEL` after an update would be:
//!
//! ```text
//! 1. note the start (wall clock); update(): the source write, which answers (value, version)
//! 2. one script (FILL_VERSIONED): DEL the lease; then, by the key's write version
//!    `{KEY}:version` (the newest version a versioned store has seen):
//!      none (never written, or lost)  -> DEL the key, record the version, quarantine the key
//!                                        for two windows (`VERSIONED_WINDOW`, 1 s)
//!      quarantined                    -> DEL the key, raise the version
//!      not older than this one        -> nothing
//!      this write past its window     -> DEL the key, record the version
//!      otherwise                      -> store the value, record the version
//! ```
//!
//! - **Two writes:** whichever store runs last, the newer version is the one left, or the key
//!   is empty: an older version never stores over a newer one's record.
//! - **A load that read the source before this write's commit**, under a lease taken before
//!   it read, finds its lease gone (or another's): its store is refused; one that stored
//!   before is overwritten. (Loads that store without a lease — after `max_wait`, or with
//!   leases off — are not covered here, as they are not by the lease protocol.)
//! - **A lost write version.** `delete`, a plain `set`, a batch load's plain store and the
//!   lease protocol's write-through remove it (each a change whose version the cache does not
//!   know); a flush, an eviction or an expiry lose it. A newer write may then have been stored
//!   and lost, and older writes may still be running: recording the first late version after
//!   the loss would let the second store. So the first store that finds none quarantines the
//!   key: for two windows, versioned stores only empty it and raise the version. A write that
//!   started before the loss and stores after the quarantine took more than two windows: it is
//!   past its own window (it started more than one window before its store, by Redis's clock
//!   against the client's, which may be up to one window ahead) and empties the key instead
//!   of storing. After the quarantine, the recorded version is at least every version stored
//!   since the loss, and every write still to store started after the loss. The window is a
//!   protocol constant, so every instance quarantines and judges alike.
//! - **The first write of a key** finds no version and empties it, so the next read loads
//!   again. With `LeaseConfig::versioned_writes`, a load that stores a key with no version
//!   starts one instead (version 0, quarantined as above: it stands for what the load cannot
//!   know either), so the key's versioned writes after the quarantine store.
//! - **A writer that dies between its source write and its store** leaves what the key held:
//!   the previous value, or, if an older versioned write stored after a load had cached this
//!   write's row, that older row, until its TTL.
//! - Until the store, every instance keeps serving the previous value, as with
//!   `keep_serving_during_writes`: the write has not completed.
//! - Tools that delete keys behind Strata's back delete the version key with the lease
//!   ([`coordination_keys`](crate::coordination_keys)); otherwise a versioned write older than
//!   their change may store once after it.

use std::future::Future;
use std::sync::Arc;

use super::recovery::Settle;
use super::tiers::{Prepared, Via};
use super::{CacheValue, Inner};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::lease::{Holder, THROUGH_TOKEN_PREFIX, lease_key, through_token, version_key};
use crate::metrics::NsCounters;
use crate::tags::Marks;
use crate::ttl::{Ttl, now_ms, ttl_millis};

impl Inner {
    /// [`Cache::set_through`](crate::Cache::set_through), unaudited.
    pub(crate) async fn set_through<T, F, Fut, E>(&self, key: &Key, value: &T, ttl: Ttl, store_fn: F) -> Result<()>
    where
        T: CacheValue,
        F: FnOnce(&T) -> Fut,
        Fut: Future<Output = std::result::Result<(), E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Before the source write: a namespace invalidation during it makes this value old. A
        // value the cache cannot take fails before the source is touched, stamps readable or
        // not (unreadable: checked against provisional marks, and the error comes after the
        // source write).
        let (marks, prepared) = match self.capture_marks(key, &[]).await {
            Ok(marks) => {
                let prepared = self.prepare(key, Some(value.clone()), ttl, &marks, 0)?;
                (Ok(marks), Some(prepared))
            }
            Err((provisional, err)) => {
                self.prepare(key, Some(value.clone()), ttl, &provisional, 0)?;
                (Err(err), None)
            }
        };
        let write = || async move { store_fn(value).await.map(|()| Some(value.clone())) };
        self.through(key, ttl, marks, prepared, write).await.map(|_| ())
    }

    /// [`Cache::update_through`](crate::Cache::update_through), unaudited: as `set_through`,
    /// with the value the source write returned (encoded after it).
    pub(crate) async fn update_through<T, F, Fut, E>(&self, key: &Key, ttl: Ttl, update: F) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let marks = self.capture_marks(key, &[]).await.map_err(|(_, err)| err);
        self.through(key, ttl, marks, None, update).await
    }

    /// The three steps of the module docs around `write`, the source write, which answers the
    /// value to cache (`None`: nothing to cache, the key is emptied). `marks`: captured before
    /// the write (an error: the stamps could not be read, which fails the call after the source
    /// write); `prepared`: the value, already encoded (`set_through` knows it before the write).
    /// Every error this returns but the source's own comes after the source write, and leaves
    /// the key uncached, its hot copies removed as far as Redis allows, and this instance's L1
    /// copy gone.
    async fn through<T, W, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        marks: Result<Arc<Marks>>,
        prepared: Option<Prepared>,
        write: W,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        W: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // Until this write ends, a miss of the key in this process that finds the lease held
        // waits for it in memory rather than polling Redis (5 to 50 ms a turn).
        let _writing = self.flights.begin_write(key.shared());
        let mark = self.recovery.mark();
        // 1. Hold the lease and empty the key, atomically (same slot).
        // Kept: the previous value serves until step 3 (`LeaseConfig::keep_serving_during_writes`).
        let keep = self.leases.keep_serving_during_writes;
        if !keep {
            self.l1.invalidate_local(key.as_str());
        }
        let (k, lease, token) = (key.as_str(), lease_key(key.as_str()), through_token());
        let px = ttl_millis(self.leases.ttl);
        let (t, lease) = (token.as_str(), &lease);
        let held: Result<(Option<String>,)> = self
            .call_for(k, "write-through lease", |mut c| async move {
                let mut p = redis::pipe();
                p.cmd("SET").arg(lease).arg(t).arg("PX").arg(px).arg("GET");
                // The key's write version goes: this write carries none, and a versioned write
                // older than it must not store after it, even if it fails or dies.
                p.cmd("DEL").arg(version_key(k)).ignore();
                if !keep {
                    p.cmd("DEL").arg(k).ignore();
                }
                p.query_async(&mut c).await
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
        let value = match write().await {
            Ok(value) => value,
            Err(e) => {
                if keep {
                    // The source may have taken the write all the same: the kept value goes.
                    let _ = self.remove_kept(key, Ok(())).await;
                } else if held.is_ok() {
                    self.release_lease(key, &token).await;
                }
                return Err(Error::loader(e));
            }
        };

        // 3. The cache.
        let mut cached = self.after_source_write(key, ttl, marks, prepared, held, &token, value).await;
        if cached.is_err() {
            // The previous value (kept, or left because step 1 failed) must not outlive a
            // write that could not replace it.
            cached = self.remove_kept(key, cached).await;
        } else {
            self.recovery.settle(key.as_str(), Settle::Before(mark));
        }
        if self.hot.copies(key) > 0 {
            if cached.is_err() {
                // The copies still hold the previous value: they go too, as in `write`.
                if let Err(err) = self.hot_invalidate(key).await {
                    tracing::debug!(key = %key, error = %err, "write-through: could not remove the hot copies");
                }
            }
            // A read of a copy by this instance made before the copies changed may have filled
            // L1 after the store's own fill: it must not serve once this returns.
            self.l1.invalidate_local(key.as_str());
        }
        cached
    }

    /// [`Cache::update_through_versioned`](crate::Cache::update_through_versioned), unaudited:
    /// no round trip before the source write, one after it (the module docs' "Versioned"). A
    /// key with hot copies takes `update_through`'s lease instead: its copies are written after
    /// the store, so two versioned writes could leave them in the reverse order.
    pub(crate) async fn update_through_versioned<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: Ttl,
        update: F,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<(T, u64)>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        if self.hot.copies(key) > 0 {
            let unversioned = || async move { update().await.map(|row| row.map(|(value, _)| value)) };
            return self.update_through(key, ttl, unversioned).await;
        }
        // Before the source write: a namespace invalidation during it makes this value old.
        let started_ms = now_ms();
        let mark = self.recovery.mark();
        let marks = self.capture_marks(key, &[]).await.map_err(|(_, err)| err);
        let written = match update().await {
            Ok(written) => written,
            Err(e) => {
                // The source may have taken the write all the same: the value it replaced goes.
                let _ = self.remove_kept(key, Ok(())).await;
                return Err(Error::loader(e));
            }
        };
        let mut stored = self.store_versioned(key, ttl, marks, written, started_ms).await;
        if stored.is_err() {
            // The previous value must not outlive a write that could not replace it.
            stored = self.remove_kept(key, stored).await;
        } else {
            self.recovery.settle(key.as_str(), Settle::Before(mark));
        }
        if stored.is_ok() && self.hot.copies(key) > 0 {
            // Marked hot during the write: its copies, refilled from the previous value, go,
            // and so does anything a read of them put in this instance's L1.
            let copies = self.hot_invalidate(key).await;
            self.l1.invalidate_local(key.as_str());
            copies?;
        }
        stored
    }

    /// After a versioned source write: its value goes in over an older version (see
    /// [`FILL_VERSIONED`](crate::lease::FILL_VERSIONED)); nothing to cache empties the key.
    async fn store_versioned<T: CacheValue>(
        &self,
        key: &Key,
        ttl: Ttl,
        marks: Result<Arc<Marks>>,
        written: Option<(T, u64)>,
        started_ms: u64,
    ) -> Result<Option<T>> {
        let marks = marks?;
        let Some((value, version)) = written else {
            self.delete(key).await?;
            return Ok(None);
        };
        let prepared = self.prepare(key, Some(value.clone()), ttl, &marks, 0)?;
        self.store(key, &prepared, Via::Versioned { version, started_ms }).await?;
        NsCounters::inc(&self.metrics.ns(key.namespace()).writes_through);
        Ok(Some(value))
    }

    /// After a source write that may have landed, a value that cannot be replaced goes: now, or
    /// when Redis is back (auto-recovery; the caller's error then says it is queued,
    /// [`Error::is_queued`]).
    async fn remove_kept<T>(&self, key: &Key, failed: Result<T>) -> Result<T> {
        if let Err(err) = self.delete(key).await {
            tracing::debug!(key = %key, error = %err, "write-through: could not remove the previous value");
        }
        match failed {
            Err(err) if self.held_back(key.as_str()) => Err(err.queued()),
            other => other,
        }
    }

    /// Step 3: the value goes in only if this write ran alone; else the key is emptied. Nothing
    /// to cache, or a value the cache cannot take: the key and the lease go, as in `delete`.
    #[allow(clippy::too_many_arguments)]
    async fn after_source_write<T: CacheValue>(
        &self,
        key: &Key,
        ttl: Ttl,
        marks: Result<Arc<Marks>>,
        prepared: Option<Prepared>,
        held: Result<bool>,
        token: &str,
        value: Option<T>,
    ) -> Result<Option<T>> {
        let marks = match marks {
            Ok(marks) => marks,
            Err(err) => {
                if held.is_ok() {
                    self.release_lease(key, token).await;
                }
                return Err(err);
            }
        };
        let contended = held?;
        let Some(value) = value else {
            self.delete(key).await?;
            return Ok(None);
        };
        let prepared = match prepared.map_or_else(|| self.prepare(key, Some(value.clone()), ttl, &marks, 0), Ok) {
            Ok(prepared) => prepared,
            Err(err) => {
                self.remove_replaced(key).await;
                return Err(err);
            }
        };
        let holder = Holder::Through { token, contended };
        let stored = self.store(key, &prepared, Via::Lease(holder)).await?;
        NsCounters::inc(&self.metrics.ns(key.namespace()).writes_through);
        if stored {
            self.hot_write(key, &value).await?;
        } else {
            self.hot_invalidate(key).await?;
        }
        Ok(Some(value))
    }
}
