//! Batch cache-aside: [`Cache::get_or_set_many`](crate::Cache::get_or_set_many) and
//! [`Cache::get_or_set_many_optional`](crate::Cache::get_or_set_many_optional).
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

use redis::Value;

use super::load::Loaded;
use super::tiers::{Held, L2Read, Prepared, Stored};
use super::{CacheValue, Inner};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::Ticket;
use crate::lease::{
    self, FILL_IF_LEASED, NOT_STORED, PRESENT_RETRIES, RELEASE_IF_HELD, VERSIONED_WINDOW, backoff, coordination_keys,
    lease_key, token, version_key,
};
use crate::metrics::NsCounters;
use crate::ttl::{Ttl, ttl_millis};

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

/// One batch load: its keys (each once), its lease token, and what is resolved so far.
struct Batch<'a, T> {
    keys: &'a [Key],
    token: String,
    /// Whether a cached "not found" is served (and a key the loader omits cached as one).
    negative: bool,
    /// Per key, `Some(x)`: resolved to `x` (a value or a "not found").
    found: Vec<Option<Option<T>>>,
    /// Keys to load, and how to store each.
    to_load: Vec<(usize, Store)>,
}

/// A loaded key on its way to Redis.
struct Pending {
    prepared: Prepared,
    /// Taken before the load: an L1 fill from it must not outlive a write made meanwhile.
    before: Ticket,
    store: Store,
}

impl Inner {
    /// `get_or_set_many` / `get_or_set_many_optional` (`negative`).
    pub(crate) async fn load_many<T, F, Fut, E>(
        &self,
        keys: &[Key],
        ttl: Ttl,
        loader: F,
        negative: bool,
    ) -> Result<Vec<Option<T>>>
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
        let found = (0..unique.len()).map(|_| None).collect();
        let mut batch = Batch { keys: &unique, token: token(), negative, found, to_load: Vec::new() };
        let mut missing = Vec::new();
        for (u, key) in unique.iter().enumerate() {
            match self.l1_lookup::<T>(key, self.metrics.ns(key.namespace()), negative).await {
                Some(hit) => batch.found[u] = Some(hit),
                None => missing.push(u),
            }
        }
        let mut absent = Vec::new();
        for (u, read) in self.read_l2_many::<T>(&unique, missing, negative).await {
            match read {
                Ok(L2Read::Value(v)) => batch.found[u] = Some(Some(v)),
                Ok(L2Read::Negative) => batch.found[u] = Some(None),
                Ok(L2Read::Miss) => absent.push(u),
                // Kept past its logical expiry by a freshness grace period: reload it.
                Ok(L2Read::Unusable | L2Read::Stale(..)) => batch.to_load.push((u, Store::Plain)),
                Err(err) => batch.to_load.push((u, store_after(&err))),
            }
        }
        if self.leases.enabled {
            self.coordinate_many(&mut batch, absent).await;
        } else {
            batch.to_load.extend(absent.into_iter().map(|u| (u, Store::Plain)));
        }
        if !batch.to_load.is_empty() {
            self.run_batch_loader(&mut batch, ttl, loader).await?;
        }
        Ok(positions.into_iter().map(|u| batch.found[u].clone().flatten()).collect())
    }

    /// Calls the loader once for every key of `batch.to_load`, records what it returned in
    /// `batch.found`, and writes it back.
    async fn run_batch_loader<T, F, Fut, E>(&self, batch: &mut Batch<'_, T>, ttl: Ttl, loader: F) -> Result<()>
    where
        T: CacheValue,
        F: FnOnce(Vec<Key>) -> Fut,
        Fut: Future<Output = std::result::Result<HashMap<Key, T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let keys = batch.keys;
        // The loader sees the keys in the caller's order, not in slot-group order.
        let mut to_load = std::mem::take(&mut batch.to_load);
        to_load.sort_unstable_by_key(|(u, _)| *u);
        // A batch spanning namespaces counts as one loader call in each of them.
        let namespaces: HashSet<&str> = to_load.iter().map(|(u, _)| keys[*u].namespace()).collect();
        let counters: Vec<&NsCounters> = namespaces.iter().map(|ns| self.metrics.ns(ns)).collect();
        for ns in &counters {
            NsCounters::inc(&ns.loader_calls);
        }
        crate::telemetry::batch_loaded(to_load.len());
        let mut tickets: HashMap<usize, Ticket> =
            to_load.iter().map(|(u, _)| (*u, self.l1.ticket(keys[*u].as_str()))).collect();
        // Before the load: an invalidation of a namespace during it must make its values old.
        let mut marks = HashMap::new();
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
                self.release_many(keys, leased(&to_load), &batch.token).await;
                return Err(Error::loader(err));
            }
        };
        let mut release = Vec::new();
        let mut pending: HashMap<usize, Pending> = HashMap::new();
        for (u, store) in to_load {
            let key = &keys[u];
            let value = values.remove(key);
            batch.found[u] = Some(value.clone());
            let (Some(before), Some(marks)) = (tickets.remove(&u), marks.remove(&u)) else { continue };
            let cacheable = value.is_some() || batch.negative;
            let prepared = cacheable.then(|| self.prepare_loaded(key, Loaded { value, ttl, marks, load_us, before }));
            match prepared.flatten() {
                None if store == Store::Leased => release.push(u),
                None => {}
                // Redis failed on this key's read: L1 only, while Redis is away.
                Some(prepared) if store == Store::L1Only => {
                    self.keep_loaded(key, &prepared, &before, &Error::circuit_open());
                }
                Some(prepared) => {
                    pending.insert(u, Pending { prepared, before, store });
                }
            }
        }
        if !values.is_empty() {
            tracing::debug!(extra = values.len(), "batch loader returned keys it was not asked for; ignored");
        }
        self.release_many(keys, release, &batch.token).await;
        self.write_back(keys, pending, &batch.token).await;
        Ok(())
    }

    /// Takes the leases of the keys Redis does not hold (`pending`), grouped by slot. Keys whose
    /// lease another caller holds are polled until their value appears, the lease frees up (then
    /// taken), or `max_wait` passes (then loaded without a lease).
    async fn coordinate_many<T: CacheValue>(&self, batch: &mut Batch<'_, T>, mut pending: Vec<usize>) {
        let (keys, token) = (batch.keys, batch.token.as_str());
        let px = ttl_millis(self.leases.ttl);
        let started = tokio::time::Instant::now();
        let mut waited: HashSet<usize> = HashSet::new();
        // Per key: how often it was present when its lease was tried, yet read as a miss (a
        // value its namespace invalidated, or a "not found" this batch does not accept).
        let mut present: HashMap<usize, u32> = HashMap::new();
        let mut attempt = 0;
        while !pending.is_empty() {
            let taken = self
                .per_key_pipeline("lease acquire", keys, std::mem::take(&mut pending), 2, |pipe, u| {
                    let k = keys[u].as_str();
                    lease::attempt(pipe, &lease_key(k), token, px);
                    pipe.cmd("EXISTS").arg(k);
                })
                .await;
            let (mut reread, mut held, mut give_back) = (Vec::new(), false, Vec::new());
            for (u, replies) in taken {
                let answer = replies.and_then(|replies| match replies.as_slice() {
                    [previous, exists] => redis::from_redis_value::<Option<String>>(previous.clone())
                        .and_then(|p| Ok((p, redis::from_redis_value::<bool>(exists.clone())?)))
                        .map_err(|e| Error::corrupt(format!("lease acquire: {e}"))),
                    _ => Err(Error::corrupt("lease acquire: wrong number of replies")),
                });
                match answer {
                    // Present: read it; a lease taken meanwhile goes back (others would wait
                    // for it in vain).
                    Ok((previous, true)) => {
                        if lease::is_ours(previous.as_deref(), token) {
                            give_back.push(u);
                        }
                        // As in the single-key path: a few tries, then load without a lease.
                        let tries = present.entry(u).or_default();
                        *tries += 1;
                        if *tries > PRESENT_RETRIES {
                            batch.to_load.push((u, Store::Plain));
                        } else {
                            reread.push(u);
                        }
                    }
                    Ok((previous, false)) if lease::is_ours(previous.as_deref(), token) => {
                        batch.to_load.push((u, Store::Leased));
                    }
                    Ok(_) => {
                        if waited.insert(u) {
                            NsCounters::inc(&self.metrics.ns(keys[u].namespace()).lease_waits);
                        }
                        held = true;
                        reread.push(u);
                    }
                    Err(err) => batch.to_load.push((u, store_after(&err))),
                }
            }
            self.release_many(keys, give_back, token).await;
            if held {
                if started.elapsed() >= self.leases.max_wait {
                    tracing::warn!(keys = reread.len(), "gave up waiting for other loads of batch keys");
                    batch.to_load.extend(reread.into_iter().map(|u| (u, Store::Plain)));
                    return;
                }
                tokio::time::sleep(backoff(attempt)).await;
                attempt += 1;
            }
            for (u, read) in self.read_l2_many::<T>(keys, reread, batch.negative).await {
                match read {
                    Ok(L2Read::Value(v)) => batch.found[u] = Some(Some(v)),
                    Ok(L2Read::Negative) => batch.found[u] = Some(None),
                    // Still loading elsewhere, or deleted since: try the lease again.
                    Ok(L2Read::Miss) => pending.push(u),
                    Ok(L2Read::Unusable | L2Read::Stale(..)) => batch.to_load.push((u, Store::Plain)),
                    Err(err) => batch.to_load.push((u, store_after(&err))),
                }
            }
        }
    }

    /// Writes loaded values back, one pipeline per slot group: compare-and-set under the lease,
    /// or a plain SET (revoking any lease, as `set` does); then settles each key like a single
    /// store. Sent the usual way with no read-back, so L1 takes these values at their next read.
    async fn write_back(&self, keys: &[Key], mut pending: HashMap<usize, Pending>, token: &str) {
        let wanted: Vec<usize> = pending.keys().copied().collect();
        let written = self
            .per_key_pipeline("batch write-back", keys, wanted, 1, |pipe, u| {
                let Some(p) = pending.get(&u) else { return };
                let (k, px, bytes) =
                    (keys[u].as_str(), ttl_millis(p.prepared.ttl), p.prepared.encoded.bytes.as_slice());
                match p.store {
                    Store::Leased => {
                        pipe.cmd("EVAL").arg(FILL_IF_LEASED).arg(1).arg(k).arg(lease_key(k)).arg(token);
                        pipe.arg(bytes).arg(px);
                        if self.leases.versioned_writes {
                            pipe.arg(version_key(k)).arg(ttl_millis(VERSIONED_WINDOW));
                        }
                    }
                    Store::Plain | Store::L1Only => {
                        pipe.cmd("DEL").arg(&coordination_keys(k)[..]).ignore();
                        pipe.cmd("SET").arg(k).arg(bytes).arg("PX").arg(px);
                    }
                }
            })
            .await;
        for (u, reply) in written {
            let Some(p) = pending.remove(&u) else { continue };
            // A leased store answers the PTTL or NOT_STORED, a plain one the SET's OK.
            let outcome = reply.map(|replies| Stored {
                stored: !matches!(replies.first(), Some(Value::Int(NOT_STORED))),
                held: Held::Unknown,
            });
            let key = &keys[u];
            if let Err(err) = self.settle(key, &p.prepared, p.before, outcome) {
                self.keep_loaded(key, &p.prepared, &p.before, &err);
            }
        }
    }

    /// Gives back the leases of `wanted` that `token` still holds. Best effort: they expire anyway.
    async fn release_many(&self, keys: &[Key], wanted: Vec<usize>, token: &str) {
        if wanted.is_empty() {
            return;
        }
        let released = self
            .per_key_pipeline("lease release", keys, wanted, 1, |pipe, u| {
                pipe.cmd("EVAL").arg(RELEASE_IF_HELD).arg(1).arg(lease_key(keys[u].as_str())).arg(token);
            })
            .await;
        if let Some((_, Err(err))) = released.iter().find(|(_, r)| r.is_err()) {
            tracing::debug!(error = %err, "could not release batch leases; they will expire");
        }
    }

    /// One pipeline per slot group, sent concurrently; `add` appends exactly `per_key`
    /// non-ignored commands per key. Returns each key's replies, or its group's error. Scripts
    /// go as EVAL (Redis caches them by digest), so a pipeline never meets a NOSCRIPT reply.
    async fn per_key_pipeline(
        &self,
        context: &str,
        keys: &[Key],
        wanted: Vec<usize>,
        per_key: usize,
        mut add: impl FnMut(&mut redis::Pipeline, usize),
    ) -> Vec<(usize, Result<Vec<Value>>)> {
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
                    let got = self.call_for(slot_key, context, |mut c| async move {
                        pipe.query_async::<Vec<Value>>(&mut c).await
                    });
                    (group, got.await)
                }
            })
            .collect();
        let mut out = Vec::new();
        for (group, got) in futures_util::future::join_all(calls).await {
            let got = got.and_then(|replies| {
                if replies.len() == group.len() * per_key {
                    Ok(replies)
                } else {
                    Err(Error::corrupt(format!("{context}: {} replies for {} keys", replies.len(), group.len())))
                }
            });
            match got {
                Ok(replies) => {
                    let mut replies = replies.into_iter();
                    for u in group {
                        out.push((u, Ok(replies.by_ref().take(per_key).collect())));
                    }
                }
                Err(err) => out.extend(group.into_iter().map(|u| (u, Err(err.clone())))),
            }
        }
        out
    }
}

/// After a Redis failure on a key: skip Redis for it if Redis is unhealthy (the caller must not
/// wait on it twice), else write it plainly.
fn store_after(err: &Error) -> Store {
    if err.is_unhealthy() || err.is_circuit_open() { Store::L1Only } else { Store::Plain }
}
