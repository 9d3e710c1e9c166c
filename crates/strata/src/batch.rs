//! Batch reads and writes: `get_many` and `set_many`.
//!
//! On a cluster, keys are grouped by hash slot and each group is one pipeline (an MGET, plus the
//! keys' PTTLs when L1 is on; or the SETs); the groups are sent concurrently over the multiplexed
//! connections, so they travel together, and a batch never meets a CROSSSLOT error. On a single
//! server the keys are simply chunked.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use redis::cluster_routing::Slot as HashSlot;

use crate::cache::{Cache, CacheValue, L2Read};
use crate::codec::Meta;
use crate::error::Result;
use crate::key::Key;
use crate::l1::{Checks, Slot};
use crate::metrics::NsCounters;
use crate::tiers::{expiry_ms, ttl_millis};
use crate::ttl::Ttl;

/// Most keys sent in one MGET or pipeline.
const CHUNK: usize = 256;

impl Cache {
    /// Reads many keys at once: L1 first, then the rest from Redis grouped by slot. The result
    /// lines up with `keys`. Like [`get`](Cache::get), unavailability of Redis reads as misses.
    pub async fn get_many<T: CacheValue>(&self, keys: &[Key]) -> Result<Vec<Option<T>>> {
        let mut out: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let ns = self.inner.metrics.ns(key.namespace());
            match self.l1_lookup::<T>(key, &ns, true).await {
                Some(found) => out[i] = found,
                None => missing.push(i),
            }
        }
        for (i, read) in self.read_l2_many::<T>(keys, missing, true).await {
            if let Ok(L2Read::Value(v)) = read {
                out[i] = Some(v);
            }
        }
        Ok(out)
    }

    /// Writes many values, each with its own jittered TTL. Every value is encoded before anything
    /// is sent, so an oversized or unserializable value fails the whole call with nothing written.
    /// If some slot groups fail to be written, the first error is returned and the L1 copies of
    /// those keys are dropped; the other groups stay written.
    ///
    /// The audit log gets one `set_many` record per key, with the outcome of the whole call.
    pub async fn set_many<T: CacheValue>(&self, items: &[(Key, T)], ttl: impl Into<Ttl>) -> Result<()> {
        let outcome = self.set_many_unaudited(items, ttl.into()).await;
        for (key, _) in items {
            self.audit("set_many", key.as_str(), &outcome);
        }
        outcome
    }

    async fn set_many_unaudited<T: CacheValue>(&self, items: &[(Key, T)], ttl: Ttl) -> Result<()> {
        let mut encoded = Vec::with_capacity(items.len());
        for (key, value) in items {
            let ttl = self.inner.ttl.jittered(ttl);
            let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
            let marks = self.write_marks(key, &[]).await?;
            match self.inner.codec.encode_marked(key, Some(value), meta, &marks) {
                Ok(e) => encoded.push((e, ttl, meta)),
                Err(err) => {
                    // As with `set`: the value the caller meant to replace must not keep serving.
                    if let Err(del) = self.delete(key).await {
                        tracing::warn!(key = %key, error = %del, "could not remove the value a rejected write meant to replace");
                    }
                    return Err(err);
                }
            }
        }
        let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
        let writes = self.groups(&keys, (0..items.len()).collect()).into_iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in &group {
                let (e, ttl, _) = &encoded[i];
                // Lease first, as in `write_l2`: no load in flight may store over this value.
                pipe.cmd("DEL").arg(crate::lease::lease_key(keys[i].as_str())).ignore();
                pipe.cmd("SET")
                    .arg(keys[i].as_str())
                    .arg(e.bytes.as_slice())
                    .arg("PX")
                    .arg(ttl_millis(self.physical_ttl(*ttl)))
                    .ignore();
            }
            let coherence = &self.inner.coherence;
            let tickets: Vec<_> = group
                .iter()
                .map(|&i| (coherence.expect_echo(keys[i].as_str()), coherence.ticket(keys[i].as_str())))
                .collect();
            // Every key of a group has one hash slot: the first names the breaker.
            let slot_key = group.first().map_or("", |&i| keys[i].as_str());
            async move {
                let pipe = &pipe;
                let written = self
                    .l2_call_for(slot_key, "SET pipeline", |mut c| async move { pipe.query_async::<()>(&mut c).await })
                    .await;
                (group, tickets, written)
            }
        });
        let mut first_error = None;
        // The L1 fills, concurrently: each waits for its echo and checks what Redis holds.
        let mut fills = Vec::new();
        for (group, tickets, written) in join_all(writes).await {
            for (i, (echo, ticket)) in group.into_iter().zip(tickets) {
                let (key, value) = &items[i];
                match &written {
                    Ok(()) => {
                        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).sets);
                        let (e, ttl, meta) = &encoded[i];
                        let slot = Slot::Present(Arc::new(value.clone()));
                        let (ttl, checks) = (self.physical_ttl(*ttl), Checks::new(*meta, e.marks.clone()));
                        fills.push(self.fill_l1_after_write(key, slot, checks, e.raw_len, ttl, echo, ticket, &e.bytes));
                    }
                    Err(_) => {
                        if let Some(echo) = echo {
                            self.inner.coherence.forget(echo);
                        }
                        if let Some(l1) = &self.inner.l1 {
                            l1.remove(key.as_str());
                        }
                    }
                }
            }
            if let Err(err) = written {
                first_error.get_or_insert(err);
            }
        }
        join_all(fills).await;
        for (key, _) in items {
            self.hot_invalidate(key).await;
        }
        first_error.map_or(Ok(()), Err)
    }

    /// Reads the keys at `wanted` from Redis: one MGET pipeline per slot group, the groups sent
    /// concurrently. Decodes, counts and fills L1 like a single read. A group that fails reports
    /// its error for each of its keys.
    pub(crate) async fn read_l2_many<T: CacheValue>(
        &self,
        keys: &[Key],
        wanted: Vec<usize>,
        accept_negative: bool,
    ) -> Vec<(usize, Result<L2Read<T>>)> {
        let with_pttl = self.inner.l1.is_some();
        let reads = self.groups(keys, wanted).into_iter().map(|group| async move {
            let tickets: Vec<_> = group.iter().map(|&i| self.inner.coherence.ticket(keys[i].as_str())).collect();
            let mut pipe = redis::pipe();
            pipe.cmd("MGET");
            for &i in &group {
                pipe.arg(keys[i].as_str());
            }
            if with_pttl {
                for &i in &group {
                    pipe.cmd("PTTL").arg(keys[i].as_str());
                }
            }
            let slot_key = group.first().map_or("", |&i| keys[i].as_str());
            let pipe = &pipe;
            let got =
                self.l2_call_for(slot_key, "MGET", |mut c| async move {
                    pipe.query_async::<Vec<redis::Value>>(&mut c).await
                })
                .await
                .and_then(|replies| parse_mget(replies, group.len(), with_pttl));
            (group, tickets, got)
        });
        let mut out = Vec::new();
        for (group, tickets, got) in join_all(reads).await {
            let replies = match got {
                Ok(replies) => replies,
                Err(err) => {
                    for i in group {
                        NsCounters::inc(&self.inner.metrics.ns(keys[i].namespace()).l2_misses);
                        out.push((i, Err(err.clone())));
                    }
                    continue;
                }
            };
            for ((i, ticket), (bytes, pttl)) in group.into_iter().zip(tickets).zip(replies) {
                let key = &keys[i];
                let ns = self.inner.metrics.ns(key.namespace());
                let read = match bytes {
                    Some(bytes) => self.accept_bytes::<T>(key, &ns, bytes, pttl, accept_negative, ticket).await,
                    None => {
                        NsCounters::inc(&ns.l2_misses);
                        L2Read::Miss
                    }
                };
                out.push((i, Ok(read)));
            }
        }
        out
    }

    /// Indices of `keys` (restricted to `wanted`) grouped so that each group can be one command.
    pub(crate) fn groups(&self, keys: &[Key], wanted: Vec<usize>) -> Vec<Vec<usize>> {
        if !self.is_cluster() {
            return wanted.chunks(CHUNK).map(<[usize]>::to_vec).collect();
        }
        let mut by_slot: HashMap<HashSlot, Vec<usize>> = HashMap::new();
        for i in wanted {
            by_slot.entry(HashSlot::for_key(keys[i].as_str())).or_default().push(i);
        }
        by_slot.into_values().flat_map(|g| g.chunks(CHUNK).map(<[usize]>::to_vec).collect::<Vec<_>>()).collect()
    }
}

/// One key's reply: its bytes (if any) and its PTTL (when asked for).
type Fetched = (Option<Vec<u8>>, Option<i64>);

/// Splits one group's pipeline replies into (value bytes, PTTL) per key. A reply of an unexpected
/// shape fails the group (its keys read as misses) rather than the call.
fn parse_mget(mut replies: Vec<redis::Value>, n: usize, with_pttl: bool) -> Result<Vec<Fetched>> {
    let bad = |what: &str| crate::Error::corrupt(format!("unexpected MGET pipeline reply: {what}"));
    if replies.len() != 1 + if with_pttl { n } else { 0 } {
        return Err(bad("wrong number of replies"));
    }
    let pttls: Vec<Option<i64>> = if with_pttl {
        replies.drain(1..).map(|v| redis::from_redis_value::<i64>(v).ok()).collect()
    } else {
        vec![None; n]
    };
    let values: Vec<Option<Vec<u8>>> =
        replies.pop().map(redis::from_redis_value).transpose().map_err(|e| bad(&e.to_string()))?.unwrap_or_default();
    if values.len() != n {
        return Err(bad("wrong number of values"));
    }
    Ok(values.into_iter().zip(pttls).collect())
}
