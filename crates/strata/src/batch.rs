//! Batch reads and writes: `get_many` and `set_many`.
//!
//! On a cluster, keys are grouped by hash slot and each group is one MGET (reads) or one
//! pipeline (writes); the groups are sent concurrently over the multiplexed connections, so a
//! batch costs about one round trip per node and never meets a CROSSSLOT error. On a single
//! server the keys are simply chunked.

use std::collections::HashMap;
use std::sync::Arc;

use futures::future::join_all;
use redis::cluster_routing::Slot as HashSlot;

use crate::cache::{Cache, CacheValue, L2Read, expiry_ms, ttl_millis};
use crate::codec::{Decoded, Meta};
use crate::error::Result;
use crate::key::Key;
use crate::l1::Slot;
use crate::metrics::NsCounters;
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
            match self.l1_lookup::<T>(key, &ns) {
                Some(found) => out[i] = found,
                None => missing.push(i),
            }
        }
        let reads = self.groups(keys, missing).into_iter().map(|group| async move {
            let names: Vec<&str> = group.iter().map(|&i| keys[i].as_str()).collect();
            let got = self
                .l2_call("MGET", |mut c| async move {
                    redis::cmd("MGET").arg(&names).query_async::<Vec<Option<Vec<u8>>>>(&mut c).await
                })
                .await;
            (group, got)
        });
        for (group, got) in join_all(reads).await {
            let values = match got {
                Ok(values) if values.len() == group.len() => values,
                _ => {
                    for &i in &group {
                        NsCounters::inc(&self.inner.metrics.ns(keys[i].namespace()).l2_misses);
                    }
                    continue;
                }
            };
            for (i, bytes) in group.into_iter().zip(values) {
                let key = &keys[i];
                let ns = self.inner.metrics.ns(key.namespace());
                let Some(bytes) = bytes else {
                    NsCounters::inc(&ns.l2_misses);
                    continue;
                };
                match self.decode_or_discard::<T>(key, &ns, bytes).await? {
                    L2Read::Hit(Decoded::Value(v, meta), len) => {
                        self.fill_l1(key, Slot::Present(Arc::new(v.clone())), len, meta);
                        out[i] = Some(v);
                    }
                    L2Read::Hit(Decoded::Negative(meta), len) => {
                        NsCounters::inc(&ns.negative_hits);
                        self.fill_l1(key, Slot::Absent, len, meta);
                    }
                    L2Read::Miss => {}
                }
            }
        }
        Ok(out)
    }

    /// Writes many values, each with its own jittered TTL. Every value is encoded before anything
    /// is sent, so an oversized or unserializable value fails the whole call with nothing written.
    /// If some slot groups fail to be written, the first error is returned and the L1 copies of
    /// those keys are dropped; the other groups stay written.
    pub async fn set_many<T: CacheValue>(&self, items: &[(Key, T)], ttl: impl Into<Ttl>) -> Result<()> {
        let ttl = ttl.into();
        let mut encoded = Vec::with_capacity(items.len());
        for (_, value) in items {
            let ttl = self.inner.ttl.jittered(ttl);
            let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
            encoded.push((self.inner.codec.encode(Some(value), meta)?, ttl_millis(ttl), meta));
        }
        let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
        let writes = self.groups(&keys, (0..items.len()).collect()).into_iter().map(|group| {
            let mut pipe = redis::pipe();
            for &i in &group {
                let (bytes, px, _) = &encoded[i];
                pipe.cmd("SET").arg(keys[i].as_str()).arg(bytes.as_slice()).arg("PX").arg(*px).ignore();
            }
            async move {
                let written =
                    self.l2_call("SET pipeline", |mut c| async move { pipe.query_async::<()>(&mut c).await }).await;
                (group, written)
            }
        });
        let mut first_error = None;
        for (group, written) in join_all(writes).await {
            for i in group {
                let (key, value) = &items[i];
                match &written {
                    Ok(()) => {
                        NsCounters::inc(&self.inner.metrics.ns(key.namespace()).sets);
                        let (bytes, _, meta) = &encoded[i];
                        self.fill_l1(key, Slot::Present(Arc::new(value.clone())), bytes.len(), *meta);
                    }
                    Err(_) => {
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
        first_error.map_or(Ok(()), Err)
    }

    /// Indices of `keys` (restricted to `wanted`) grouped so that each group can be one command.
    fn groups(&self, keys: &[Key], wanted: Vec<usize>) -> Vec<Vec<usize>> {
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
