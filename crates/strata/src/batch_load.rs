//! Batch cache-aside: [`Cache::get_or_set_many`] and [`Cache::get_or_set_many_optional`].
//!
//! One call costs, whatever the number of keys: an L1 pass, one MGET round (a pipeline per slot
//! group, the groups sent concurrently), one lease round for the keys still missing, **one**
//! loader call with every key still missing, and one write-back round grouped by slot.
//!
//! Guarantees, with leases on (the default):
//! - **No stale sets.** Each missing key is taken with the same lease as a single
//!   `get_or_set` (`{key}:lease`, compare-and-set fill). A value loaded before a concurrent
//!   `set`/`delete`/`set_many` of that key is returned to the caller but not stored.
//! - **Single flight with other callers.** A batch does not join the in-process single-flight
//!   of `get_or_set`; it meets it, and other processes and batches, through the leases: a key
//!   whose lease another caller holds is waited for (capped, jittered polling, at most
//!   `LeaseConfig::max_wait`, then loaded without storing over a newer write) instead of being
//!   loaded twice. Concurrent `get_or_set` calls on a key a batch holds wait for its value.
//!
//! With leases off, a batch and a concurrent load of the same key may both run the loader, and
//! the later write wins (as with `get_or_set` without leases).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;

use redis::Value;

use crate::cache::{Cache, CacheValue, L2Read};
use crate::codec::{Encoded, Meta};
use crate::coherence::{Echo, Ticket};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::{Checks, Slot};
use crate::lease::{ACQUIRE_UNLESS_PRESENT, FILL_IF_LEASED, RELEASE_IF_HELD, backoff, lease_key, token};
use crate::metrics::NsCounters;
use crate::tags::Marks;
use crate::tiers::{expiry_ms, ttl_millis};
use crate::ttl::Ttl;

/// How a key loaded by a batch is stored.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Store {
    /// The batch holds the key's lease: compare-and-set.
    Leased,
    /// No lease (leases off, waited too long, or an unusable value to replace): plain SET that
    /// also revokes any lease, like `set`.
    Plain,
    /// Redis failed on this key's read: skip it, keep the value in L1 only.
    L1Only,
}

/// A loaded key on its way to Redis.
struct Pending {
    /// Taken before the load: an L1 fill from it must not outlive a write made meanwhile.
    ticket: Ticket,
    checks: Checks,
    encoded: Encoded,
    ttl: std::time::Duration,
    slot: Slot,
    store: Store,
}

impl Cache {
    /// Batch cache-aside read. Keys found in L1 or Redis are served from there; `loader` is called
    /// **once** with every key still missing (each once, in the order of its first appearance in
    /// `keys`) and returns the values it found; those are cached (for `ttl`, jittered, one slot group per
    /// write round) and returned. The result lines up with `keys`; a key the loader did not
    /// return is `None` and is not cached (see
    /// [`get_or_set_many_optional`](Self::get_or_set_many_optional) to cache it as "not found").
    /// The loader is not called when nothing is missing.
    ///
    /// Same contract as [`get_or_set`](Self::get_or_set): a loader error is returned as an
    /// [`is_loader`](Error::is_loader) error (nothing is cached); Redis down, slow or behind an
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
        self.load_many(keys, ttl.into(), loader, false).await
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
        self.load_many(keys, ttl.into(), loader, true).await
    }

    async fn load_many<T, F, Fut, E>(&self, keys: &[Key], ttl: Ttl, loader: F, negative: bool) -> Result<Vec<Option<T>>>
    where
        T: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<Key, T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let mut unique: Vec<Key> = Vec::new();
        let mut index: HashMap<&Key, usize> = HashMap::new();
        let positions: Vec<usize> = keys
            .iter()
            .map(|k| {
                *index.entry(k).or_insert_with(|| {
                    unique.push(k.clone());
                    unique.len() - 1
                })
            })
            .collect();
        // `Some(x)`: resolved to `x` (a value or a "not found").
        let mut found: Vec<Option<Option<T>>> = (0..unique.len()).map(|_| None).collect();
        let mut missing = Vec::new();
        for (u, key) in unique.iter().enumerate() {
            match self.l1_lookup::<T>(key, &self.inner.metrics.ns(key.namespace()), negative).await {
                Some(hit) => found[u] = Some(hit),
                None => missing.push(u),
            }
        }
        let mut to_load: Vec<(usize, Store)> = Vec::new();
        let mut absent = Vec::new();
        for (u, read) in self.read_l2_many::<T>(&unique, missing, negative).await {
            match read {
                Ok(L2Read::Value(v)) => found[u] = Some(Some(v)),
                Ok(L2Read::Negative) => found[u] = Some(None),
                Ok(L2Read::Miss) => absent.push(u),
                // Kept past its logical expiry by a freshness grace period: reload it.
                Ok(L2Read::Unusable | L2Read::Stale(..)) => to_load.push((u, Store::Plain)),
                Err(err) => to_load.push((u, store_after(&err))),
            }
        }
        let token = token();
        if self.inner.leases.enabled {
            self.coordinate_many(&unique, absent, &token, &mut found, &mut to_load, negative).await;
        } else {
            to_load.extend(absent.into_iter().map(|u| (u, Store::Plain)));
        }
        if !to_load.is_empty() {
            self.run_batch_loader(&unique, to_load, ttl, loader, negative, &token, &mut found).await?;
        }
        Ok(positions.into_iter().map(|u| found[u].clone().flatten()).collect())
    }

    /// Calls the loader once for every key of `to_load`, records what it returned in `found`,
    /// and writes it back.
    #[allow(clippy::too_many_arguments)]
    async fn run_batch_loader<T, F, Fut, E>(
        &self,
        keys: &[Key],
        to_load: Vec<(usize, Store)>,
        ttl: Ttl,
        loader: F,
        negative: bool,
        token: &str,
        found: &mut [Option<Option<T>>],
    ) -> Result<()>
    where
        T: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<Key, T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        // The loader sees the keys in the caller's order, not in slot-group order.
        let mut to_load = to_load;
        to_load.sort_unstable_by_key(|(u, _)| *u);
        // A batch spanning namespaces counts as one loader call in each of them.
        let namespaces: HashSet<&str> = to_load.iter().map(|(u, _)| keys[*u].namespace()).collect();
        let counters: Vec<Arc<NsCounters>> = namespaces.iter().map(|ns| self.inner.metrics.ns(ns)).collect();
        for ns in &counters {
            NsCounters::inc(&ns.loader_calls);
        }
        let tickets: HashMap<usize, Ticket> =
            to_load.iter().map(|(u, _)| (*u, self.inner.coherence.ticket(keys[*u].as_str()))).collect();
        // Before the load: an invalidation of a namespace during it must make its values old.
        let mut marks: HashMap<usize, Arc<Marks>> = HashMap::new();
        for (u, _) in &to_load {
            let captured = self.capture_marks(&keys[*u], &[]).await.unwrap_or_else(|(marks, _)| marks);
            marks.insert(*u, captured);
        }
        let started = tokio::time::Instant::now();
        let loaded = loader(to_load.iter().map(|(u, _)| keys[*u].clone()).collect()).await;
        let elapsed = started.elapsed();
        let load_us = u32::try_from(elapsed.as_micros()).unwrap_or(u32::MAX);
        for ns in &counters {
            ns.record_load(elapsed);
        }
        let leased = |items: &[(usize, Store)]| -> Vec<usize> {
            items.iter().filter(|(_, s)| *s == Store::Leased).map(|(u, _)| *u).collect()
        };
        let mut values = match loaded {
            Ok(values) => values,
            Err(err) => {
                for ns in &counters {
                    NsCounters::inc(&ns.loader_errors);
                }
                self.release_many(keys, leased(&to_load), token).await;
                return Err(Error::loader(err));
            }
        };
        let mut release = Vec::new();
        let mut pending: HashMap<usize, Pending> = HashMap::new();
        for (u, store) in to_load {
            let key = &keys[u];
            let value = values.remove(key);
            found[u] = Some(value.clone());
            if value.is_none() && !negative {
                if store == Store::Leased {
                    release.push(u);
                }
                continue;
            }
            let ttl = match &value {
                Some(_) => self.inner.ttl.jittered(ttl),
                None => self.inner.ttl.jittered_negative(),
            };
            let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us };
            let Some(key_marks) = marks.get(&u) else { continue };
            let encoded = match self.inner.codec.encode_marked(key, value.as_ref(), meta, key_marks) {
                Ok(encoded) => encoded,
                Err(err) => {
                    NsCounters::inc(&self.inner.metrics.ns(key.namespace()).uncacheable);
                    tracing::warn!(key = %key, error = %err, "loaded value not cached");
                    if store == Store::Leased {
                        release.push(u);
                    }
                    continue;
                }
            };
            let slot = value.map_or(Slot::Absent, |v| Slot::Present(Arc::new(v)));
            let Some(&ticket) = tickets.get(&u) else { continue };
            // Redis and L1 keep the value for the freshness grace period on top of its TTL.
            let (ttl, checks) = (self.physical_ttl(ttl), Checks::new(meta, key_marks.clone()));
            if store == Store::L1Only {
                self.fill_l1_from_source(key, slot, checks, encoded.raw_len, ttl, ticket);
            } else {
                pending.insert(u, Pending { ticket, checks, encoded, ttl, slot, store });
            }
        }
        if !values.is_empty() {
            tracing::debug!(extra = values.len(), "batch loader returned keys it was not asked for; ignored");
        }
        self.release_many(keys, release, token).await;
        self.write_back(keys, pending, token).await;
        Ok(())
    }

    /// Takes the leases of the keys Redis does not hold, grouped by slot. Keys whose lease another
    /// caller holds are polled until their value appears, the lease frees up (then taken), or
    /// `max_wait` passes (then loaded without a lease).
    async fn coordinate_many<T: CacheValue>(
        &self,
        keys: &[Key],
        mut pending: Vec<usize>,
        token: &str,
        found: &mut [Option<Option<T>>],
        to_load: &mut Vec<(usize, Store)>,
        negative: bool,
    ) {
        let px = ttl_millis(self.inner.leases.ttl);
        let started = tokio::time::Instant::now();
        let mut waited: HashSet<usize> = HashSet::new();
        let mut attempt = 0;
        while !pending.is_empty() {
            let taken = self
                .per_key_pipeline("lease acquire", keys, std::mem::take(&mut pending), |pipe, u| {
                    let k = keys[u].as_str();
                    pipe.cmd("EVAL").arg(ACQUIRE_UNLESS_PRESENT).arg(2).arg(k).arg(lease_key(k)).arg(token).arg(px);
                })
                .await;
            let (mut reread, mut held) = (Vec::new(), false);
            for (u, reply) in taken {
                match reply.map(|v| redis::from_redis_value::<i64>(v).ok()) {
                    Ok(Some(1)) => to_load.push((u, Store::Leased)),
                    Ok(Some(0)) => reread.push(u),
                    Ok(_) => {
                        if waited.insert(u) {
                            NsCounters::inc(&self.inner.metrics.ns(keys[u].namespace()).lease_waits);
                        }
                        held = true;
                        reread.push(u);
                    }
                    Err(err) => to_load.push((u, store_after(&err))),
                }
            }
            if held {
                if started.elapsed() >= self.inner.leases.max_wait {
                    tracing::warn!(keys = reread.len(), "gave up waiting for other loads of batch keys");
                    to_load.extend(reread.into_iter().map(|u| (u, Store::Plain)));
                    return;
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            for (u, read) in self.read_l2_many::<T>(keys, reread, negative).await {
                match read {
                    Ok(L2Read::Value(v)) => found[u] = Some(Some(v)),
                    Ok(L2Read::Negative) => found[u] = Some(None),
                    // Still loading elsewhere, or deleted since: try the lease again.
                    Ok(L2Read::Miss) => pending.push(u),
                    Ok(L2Read::Unusable | L2Read::Stale(..)) => to_load.push((u, Store::Plain)),
                    Err(err) => to_load.push((u, store_after(&err))),
                }
            }
        }
    }

    /// Writes loaded values back, one pipeline per slot group: compare-and-set under the lease,
    /// or a plain SET (revoking any lease, as `set` does).
    async fn write_back(&self, keys: &[Key], mut pending: HashMap<usize, Pending>, token: &str) {
        let wanted: Vec<usize> = pending.keys().copied().collect();
        let mut echoes: HashMap<usize, Echo> =
            wanted.iter().filter_map(|&u| Some((u, self.inner.coherence.expect_echo(keys[u].as_str())?))).collect();
        let written = self
            .per_key_pipeline("batch write-back", keys, wanted, |pipe, u| {
                let Some(p) = pending.get(&u) else { return };
                let (k, px) = (keys[u].as_str(), ttl_millis(p.ttl));
                match p.store {
                    Store::Leased => {
                        pipe.cmd("EVAL").arg(FILL_IF_LEASED).arg(2).arg(k).arg(lease_key(k)).arg(token);
                        pipe.arg(p.encoded.bytes.as_slice()).arg(px);
                    }
                    Store::Plain | Store::L1Only => {
                        pipe.cmd("DEL").arg(lease_key(k)).ignore();
                        pipe.cmd("SET").arg(k).arg(p.encoded.bytes.as_slice()).arg("PX").arg(px);
                    }
                }
            })
            .await;
        // The L1 fills, concurrently: each waits for its echo and checks what Redis holds.
        let mut fills = Vec::new();
        for (u, reply) in written {
            let Some(p) = pending.remove(&u) else { continue };
            let key = &keys[u];
            let ns = self.inner.metrics.ns(key.namespace());
            let echo = echoes.remove(&u);
            match reply {
                Ok(Value::Int(0)) => {
                    if let Some(echo) = echo {
                        self.inner.coherence.forget(echo);
                    }
                    NsCounters::inc(&ns.stale_writes_refused);
                    tracing::debug!(key = %key, "lease lost during the batch load: value not cached");
                    self.drop_l1(key);
                }
                Ok(_) => {
                    NsCounters::inc(&ns.sets);
                    fills.push(async move {
                        let Pending { slot, checks, encoded, ttl, ticket, .. } = p;
                        self.fill_l1_after_write(key, slot, checks, encoded.raw_len, ttl, echo, ticket, &encoded.bytes)
                            .await;
                    });
                }
                // Keep serving from L1 while Redis is away, so the source is not hammered.
                Err(err) if err.is_unavailable() => {
                    if let Some(echo) = echo {
                        self.inner.coherence.forget(echo);
                    }
                    self.fill_l1_from_source(key, p.slot, p.checks, p.encoded.raw_len, p.ttl, p.ticket);
                }
                Err(err) => {
                    if let Some(echo) = echo {
                        self.inner.coherence.forget(echo);
                    }
                    tracing::debug!(key = %key, error = %err, "loaded value not written to redis");
                    self.drop_l1(key);
                }
            }
        }
        futures::future::join_all(fills).await;
        for (_, echo) in echoes {
            self.inner.coherence.forget(echo);
        }
    }

    /// Gives back the leases of `wanted` that `token` still holds. Best effort: they expire anyway.
    async fn release_many(&self, keys: &[Key], wanted: Vec<usize>, token: &str) {
        if wanted.is_empty() {
            return;
        }
        let released = self
            .per_key_pipeline("lease release", keys, wanted, |pipe, u| {
                pipe.cmd("EVAL").arg(RELEASE_IF_HELD).arg(1).arg(lease_key(keys[u].as_str())).arg(token);
            })
            .await;
        if let Some((_, Err(err))) = released.iter().find(|(_, r)| r.is_err()) {
            tracing::debug!(error = %err, "could not release batch leases; they will expire");
        }
    }

    /// One pipeline per slot group, sent concurrently; `add` appends exactly one non-ignored
    /// command per key. Returns each key's reply, or its group's error. Scripts go as EVAL
    /// (Redis caches them by digest), so a pipeline never meets a NOSCRIPT reply.
    async fn per_key_pipeline(
        &self,
        context: &str,
        keys: &[Key],
        wanted: Vec<usize>,
        mut add: impl FnMut(&mut redis::Pipeline, usize),
    ) -> Vec<(usize, Result<Value>)> {
        let calls: Vec<_> = self
            .groups(keys, wanted)
            .into_iter()
            .map(|group| {
                let mut pipe = redis::pipe();
                for &u in &group {
                    add(&mut pipe, u);
                }
                // One hash slot per group: its first key names the breaker.
                let slot_key = group.first().map_or("", |&u| keys[u].as_str());
                async move {
                    let pipe = &pipe;
                    let got = self.l2_call_for(slot_key, context, |mut c| async move {
                        pipe.query_async::<Vec<Value>>(&mut c).await
                    });
                    (group, got.await)
                }
            })
            .collect();
        let mut out = Vec::new();
        for (group, got) in futures::future::join_all(calls).await {
            let got = got.and_then(|replies| {
                if replies.len() == group.len() {
                    Ok(replies)
                } else {
                    Err(Error::corrupt(format!("{context}: {} replies for {} keys", replies.len(), group.len())))
                }
            });
            match got {
                Ok(replies) => out.extend(group.into_iter().zip(replies.into_iter().map(Ok))),
                Err(err) => out.extend(group.into_iter().map(|u| (u, Err(err.clone())))),
            }
        }
        out
    }

    fn drop_l1(&self, key: &Key) {
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
    }
}

/// After a Redis failure on a key: skip Redis for it if Redis is unhealthy (the caller must not
/// wait on it twice), else write it plainly.
fn store_after(err: &Error) -> Store {
    if err.is_unhealthy() || err.is_circuit_open() { Store::L1Only } else { Store::Plain }
}
