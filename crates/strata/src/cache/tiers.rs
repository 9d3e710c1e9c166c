//! One read or one write of each tier, and the store step every write shares.
//!
//! - **Calls**: every Redis call goes through [`Inner::call_for`] (the breaker of the key's slot
//!   range, the timeout and retries of [`L2::run`](crate::l2::L2::run), error accounting), or,
//!   when its answer may enter L1, [`Inner::call_tracked`]: over the tracking connection of the
//!   key's master, so that Redis tells this instance of the key's next change (see
//!   [`crate::invalidation`]).
//! - **Reads**: [`Inner::l1_lookup`] (stamps checked, hits counted), [`Inner::read_l2`] /
//!   [`Inner::read_l2_many`] (GET or MGET with PTTL, decode, stamp verdict, L1 fill with the
//!   ticket taken before the round trip). Bytes that are not a Strata envelope are removed.
//! - **Writes**: a value is [`Prepared`] once (TTL jittered, envelope encoded, the L1 entry
//!   built), sent [`Via`] a plain `SET` (a tracked GET + PTTL read-back in the same pipeline)
//!   or a lease holder's compare-and-set (its script reads the key's PTTL, tracked, after its
//!   write), and [`settled`](Inner::settle): counted, every ticket of the key voided, and put in
//!   L1 if Redis held these bytes right after the write — or dropped from L1 when Redis refused
//!   or failed it. `set`, `set_many`, `set_through`, every load and every batch
//!   write-back end in `settle`.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use futures_util::future::join_all;

use super::recovery::{Settle, Target};
use super::{CacheValue, Inner};
use crate::codec::{Encoded, Meta};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::Ticket;
use crate::l1::{Checks, Entry, Fill, Slot, typed};
use crate::l2::{Conn, query_scripted};
use crate::lease::{
    Holder, NOT_STORED, SCRIPTS, VERSIONED_WINDOW, coordination_keys, lease_key, version_arg, version_key,
};
use crate::metrics::NsCounters;
use crate::tags::{Marks, Tag};
use crate::telemetry::{self, Tier};
use crate::ttl::{Ttl, expiry_ms, l1_ttl, now_ms, ttl_millis};

/// Most keys sent in one MGET or pipeline.
const CHUNK: usize = 256;

/// What the L2 read of one key found, after decoding (and filling L1 on a hit).
pub(crate) enum L2Read<T> {
    Value(T),
    /// A cached "not found" (only reported when the caller accepts it).
    Negative,
    /// Something is stored that this caller cannot use: a "not found" it does not accept, or a
    /// value of another type. Loading will replace it.
    Unusable,
    Miss,
    /// A value past its logical expiry, kept by a freshness grace period: not a hit, but it may
    /// be served stale (see [`Freshness`](crate::Freshness)).
    Stale(T, Meta),
}

/// A value on its way to both tiers: encoded for Redis, decoded for L1.
pub(crate) struct Prepared {
    pub(crate) encoded: Encoded,
    pub(crate) slot: Slot,
    pub(crate) meta: Meta,
    /// How long both tiers keep it: the logical TTL plus the freshness grace period.
    pub(crate) ttl: Duration,
}

impl Prepared {
    /// Its L1 entry, for at most `ttl`.
    fn fill(&self, ttl: Duration) -> Fill {
        let checks = Checks::new(self.meta, self.encoded.marks.clone());
        Fill { slot: self.slot.clone(), checks, value_len: self.encoded.raw_len, ttl }
    }
}

/// How a value reaches Redis.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via<'a> {
    /// `DEL` of the key's lease, then `SET ... PX`, in one pipeline: a lease holder's store that
    /// lands after it is refused, one that lands before it is overwritten. A caller's write.
    Plain,
    /// A lease holder's compare-and-set (see [`Holder`]).
    Lease(Holder<'a>),
    /// A versioned write-through's store, which holds no lease: only over an older source
    /// version, within the write's window from `started_ms` (wall clock, ms since the epoch)
    /// (see [`FILL_VERSIONED`](crate::lease::FILL_VERSIONED)).
    Versioned { version: u64, started_ms: u64 },
}

impl Inner {
    /// L1 lookup: `Some(Some(v))` a value, `Some(None)` a cached "not found" (only when the
    /// caller accepts one), `None` a miss. Counts exactly what it serves. On a miss, a load of
    /// the key that returned moments ago may still be storing its value (and then filling L1):
    /// that is waited for and L1 looked at again, so the caller reads what it stored.
    pub(crate) async fn l1_lookup<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> Option<Option<T>> {
        if let Some(found) = self.l1_find::<T>(key, ns, accept_negative).await {
            return Some(found);
        }
        if self.flights.stored(key.as_str()).await
            && let Some(found) = self.l1_find::<T>(key, ns, accept_negative).await
        {
            return Some(found);
        }
        NsCounters::inc(&ns.l1_misses);
        tracing::debug!(key = %key, tier = "l1", "cache miss");
        None
    }

    /// One look at L1 for [`l1_lookup`](Self::l1_lookup): counts a hit, not a miss. The
    /// common hit (an entry checked since the stamps last changed) is served without building
    /// the full check; only an entry whose stamps must be checked again awaits it.
    async fn l1_find<T: CacheValue>(&self, key: &Key, ns: &NsCounters, accept_negative: bool) -> Option<Option<T>> {
        // The common hit is served under the store's read lock, without a reference to the entry.
        let entry = match self.l1.read(key.as_str(), |entry| {
            if self.settled_current(&entry.checks.marks) {
                Ok(self.l1_serve(key, entry, ns, accept_negative))
            } else {
                Err(entry.clone())
            }
        })? {
            Ok(served) => return served,
            Err(entry) => entry,
        };
        if !self.l1_current(key, &entry.checks.marks, ns).await {
            return None;
        }
        self.l1_serve(key, &entry, ns, accept_negative)
    }

    /// What a current L1 entry serves as a `T`, counted; `None` when it does not serve (past
    /// its logical expiry within a grace period, another type, a "not found" the caller does
    /// not accept).
    fn l1_serve<T: CacheValue>(
        &self,
        key: &Key,
        entry: &Entry,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> Option<Option<T>> {
        // With a grace period, L1 keeps copies past their logical expiry for
        // `get_or_refresh`; a plain read treats them as misses.
        if self.freshness.grace_ms() > 0 && entry.checks.meta.expires_at_ms <= now_ms() {
            return None;
        }
        match &entry.slot {
            Slot::Present(shared) => {
                let v = typed::<T>(shared)?;
                NsCounters::inc(&ns.l1_hits);
                telemetry::tier(Tier::L1);
                tracing::debug!(key = %key, tier = "l1", "cache hit");
                Some(Some(v))
            }
            Slot::Absent if accept_negative => {
                NsCounters::inc(&ns.l1_hits);
                telemetry::tier(Tier::L1);
                NsCounters::inc(&ns.negative_hits);
                tracing::debug!(key = %key, tier = "l1", negative = true, "cache hit");
                Some(None)
            }
            Slot::Absent => None,
        }
    }

    /// The L1 entry of `key`, if its namespace and tag stamps say it is current (an invalidated
    /// one is removed and counted): every L1 read goes through here. Hits are not counted, and
    /// the logical expiry is left to the caller. An entry checked since the stamps last
    /// changed is served without building the full check (the common hit).
    pub(crate) async fn l1_get(&self, key: &Key, ns: &NsCounters) -> Option<Arc<Entry>> {
        let entry = self.l1.get(key.as_str())?;
        let marks = &entry.checks.marks;
        (self.settled_current(marks) || self.l1_current(key, marks, ns).await).then_some(entry)
    }

    /// Any current L1 copy of `key` (stamps checked) as a `T`, fresh or stale, with its meta
    /// (uncounted).
    pub(crate) async fn l1_entry<T: CacheValue>(&self, key: &Key, ns: &NsCounters) -> Option<(T, Meta)> {
        let entry = self.l1_get(key, ns).await?;
        match &entry.slot {
            Slot::Present(shared) => typed::<T>(shared).map(|v| (v, entry.checks.meta)),
            Slot::Absent => None,
        }
    }

    /// GET (with PTTL in the same round trip when L1 is on, to bound the L1 copy's lifetime by
    /// Redis's clock rather than ours; then over the key's tracking connection, see
    /// [`call_tracked`](Self::call_tracked)), decode, count, fill L1.
    pub(crate) async fn read_l2<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> Result<L2Read<T>> {
        let k = key.as_str();
        // The ticket first: a removal queued after this check voids it (`recover_write`
        // queues, then invalidates), so nothing read here can fill L1 after that.
        let mut ticket = self.l1.ticket(k);
        if self.held_back(k) {
            NsCounters::inc(&ns.l2_misses);
            return Err(Error::held_back());
        }
        let got = if self.l1.is_on() {
            self.call_filling(k, "GET", &mut ticket, |mut c| async move {
                let mut pipe = redis::pipe();
                c.track_next(&mut pipe);
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k).query_async::<(Option<Vec<u8>>, i64)>(&mut c).await
            })
            .await
            .map(|(bytes, pttl)| (bytes, Some(pttl)))
        } else {
            self.call_for(k, "GET", |mut c| async move {
                redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await
            })
            .await
            .map(|bytes| (bytes, None))
        };
        self.interpret_l2(key, ns, accept_negative, ticket, got).await
    }

    /// What a GET (and PTTL, `None` when not asked) of `key` answered, as an [`L2Read`]:
    /// decoded, counted, L1 filled. `ticket` was taken before the GET was sent.
    pub(crate) async fn interpret_l2<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
        ticket: Ticket,
        got: Result<(Option<Vec<u8>>, Option<i64>)>,
    ) -> Result<L2Read<T>> {
        match got {
            Ok((Some(bytes), pttl)) => Ok(self.accept_bytes(key, ns, (bytes, pttl), accept_negative, ticket).await),
            Ok((None, _)) => {
                NsCounters::inc(&ns.l2_misses);
                tracing::debug!(key = %key, tier = "l2", "cache miss");
                Ok(L2Read::Miss)
            }
            Err(err) if err.is_wrong_type() => {
                // Not a string: not something this cache wrote.
                self.discard_foreign(key, &ns.corrupt, ns, None).await;
                Ok(L2Read::Miss)
            }
            Err(err) => {
                NsCounters::inc(&ns.l2_misses);
                Err(err)
            }
        }
    }

    /// Decodes bytes read from Redis (with the key's PTTL when asked), counts the outcome,
    /// fills L1 on a hit, and removes bytes that are not a Strata envelope. A valid envelope of
    /// another type is a miss, left alone: another version of the application may still be
    /// using it.
    async fn accept_bytes<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        (bytes, pttl): (Vec<u8>, Option<i64>),
        accept_negative: bool,
        ticket: Ticket,
    ) -> L2Read<T> {
        match self.codec.decode::<T>(key, &bytes) {
            Ok(decoded) if !self.l2_current(key, &decoded.marks, ns, &bytes).await => L2Read::Miss,
            Ok(decoded) => {
                let meta = decoded.meta;
                let checks = Checks::new(meta, decoded.marks);
                let grace = self.freshness.grace_ms();
                let physical = Meta { expires_at_ms: meta.expires_at_ms.saturating_add(grace), ..meta };
                let ttl = l1_ttl(physical, pttl);
                let expired = meta.expires_at_ms <= now_ms();
                // Nothing to build when L1 is off (no copy of the value, no `Arc`).
                let fill = |slot: &dyn Fn() -> Slot, value_len: usize| {
                    if self.l1.is_on() {
                        self.l1.fill(
                            key.shared(),
                            Fill { slot: slot(), checks: checks.clone(), value_len, ttl },
                            &ticket,
                        );
                    }
                };
                match decoded.value {
                    // Kept in Redis past its logical expiry (a freshness grace period): not a hit,
                    // but `get_or_refresh` and fail-safe may still serve it.
                    Some(v) if expired => {
                        NsCounters::inc(&ns.l2_misses);
                        fill(&|| Slot::Present(Arc::new(v.clone())), decoded.raw_len);
                        L2Read::Stale(v, meta)
                    }
                    None if expired => {
                        NsCounters::inc(&ns.l2_misses);
                        L2Read::Miss
                    }
                    Some(v) => {
                        NsCounters::inc(&ns.l2_hits);
                        telemetry::served(Tier::L2, bytes.len());
                        tracing::debug!(key = %key, tier = "l2", "cache hit");
                        fill(&|| Slot::Present(Arc::new(v.clone())), decoded.raw_len);
                        L2Read::Value(v)
                    }
                    None if accept_negative => {
                        NsCounters::inc(&ns.l2_hits);
                        NsCounters::inc(&ns.negative_hits);
                        telemetry::served(Tier::L2, bytes.len());
                        fill(&|| Slot::Absent, 0);
                        L2Read::Negative
                    }
                    None => {
                        NsCounters::inc(&ns.l2_misses);
                        L2Read::Unusable
                    }
                }
            }
            Err(err) if err.is_type_mismatch() => {
                NsCounters::inc(&ns.l2_misses);
                NsCounters::inc(&ns.type_mismatches);
                tracing::debug!(key = %key, error = %err, "cached value is of another type; treating as a miss");
                L2Read::Unusable
            }
            Err(err) if err.is_decrypt_failure() => {
                // Same policy as corrupt bytes: whatever was put there, it is not ours to serve.
                tracing::warn!(key = %key, error = %err, "encrypted value did not authenticate; treating as a miss and removing it");
                self.discard_foreign(key, &ns.decrypt_failures, ns, Some(bytes)).await;
                L2Read::Miss
            }
            Err(err) => {
                tracing::warn!(key = %key, error = %err, "undecodable value in redis; treating as a miss and removing it");
                self.discard_foreign(key, &ns.corrupt, ns, Some(bytes)).await;
                L2Read::Miss
            }
        }
    }

    /// Counts the bad value in `counter` and a miss, and removes it from both tiers.
    async fn discard_foreign(&self, key: &Key, counter: &AtomicU64, ns: &NsCounters, seen: Option<Vec<u8>>) {
        NsCounters::inc(counter);
        NsCounters::inc(&ns.l2_misses);
        self.l1.remove(key.as_str());
        let removed = match seen {
            Some(bytes) => self.delete_if_equal(key, &bytes).await.map(drop),
            None => {
                let k = key.as_str();
                self.call_for(
                    k,
                    "DEL",
                    |mut c| async move { redis::cmd("DEL").arg(k).query_async::<i64>(&mut c).await },
                )
                .await
                .map(drop)
            }
        };
        if let Err(err) = removed {
            tracing::warn!(key = %key, error = %err, "could not remove undecodable value");
        }
    }

    /// Deletes `key` if it still holds `bytes` (a newer value written meanwhile stays).
    pub(crate) async fn delete_if_equal(&self, key: &Key, bytes: &[u8]) -> Result<i64> {
        let (script, k) = (&SCRIPTS.delete_if_equal, key.as_str());
        self.call_for(k, "EVALSHA", |mut c| async move { script.key(k).arg(bytes).invoke_async::<i64>(&mut c).await })
            .await
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
        let with_pttl = self.l1.is_on();
        let mut out = Vec::new();
        // Keys whose removal is queued are not read (see `cache/recovery.rs`).
        let wanted = wanted
            .into_iter()
            .filter(|&i| {
                let held = self.held_back(keys[i].as_str());
                if held {
                    NsCounters::inc(&self.metrics.ns(keys[i].namespace()).l2_misses);
                    out.push((i, Err(Error::held_back())));
                }
                !held
            })
            .collect();
        let reads = self.groups(keys, wanted).into_iter().map(|group| async move {
            let mut tickets: Vec<_> = group.iter().map(|&i| self.l1.ticket(keys[i].as_str())).collect();
            // Queued since the filter above: no fill (see `read_l2`).
            for (ticket, &i) in tickets.iter_mut().zip(&group) {
                if self.held_back(keys[i].as_str()) {
                    ticket.void();
                }
            }
            let slot_key = group.first().map_or("", |&i| keys[i].as_str());
            let group = &group;
            let read = |mut c: Conn| async move {
                let mut pipe = redis::pipe();
                c.track_next(&mut pipe);
                pipe.cmd("MGET");
                for &i in group {
                    pipe.arg(keys[i].as_str());
                }
                if with_pttl {
                    for &i in group {
                        pipe.cmd("PTTL").arg(keys[i].as_str());
                    }
                }
                pipe.query_async::<Vec<redis::Value>>(&mut c).await
            };
            // Every key of a group has one hash slot, so one tracking connection answers for all.
            let got = match with_pttl && tickets.iter().any(Ticket::is_covered) {
                true => self.call_tracked(slot_key, "MGET", read).await,
                false => self.call_for(slot_key, "MGET", read).await.map(|replies| (replies, true)),
            };
            let got = got.and_then(|(replies, fillable)| {
                if !fillable {
                    tickets.iter_mut().for_each(Ticket::void);
                }
                parse_mget(replies, group.len(), with_pttl)
            });
            (group.clone(), tickets, got)
        });
        for (group, tickets, got) in join_all(reads).await {
            let replies = match got {
                Ok(replies) => replies,
                Err(err) => {
                    for i in group {
                        NsCounters::inc(&self.metrics.ns(keys[i].namespace()).l2_misses);
                        out.push((i, Err(err.clone())));
                    }
                    continue;
                }
            };
            for ((i, ticket), (bytes, pttl)) in group.into_iter().zip(tickets).zip(replies) {
                let key = &keys[i];
                let ns = self.metrics.ns(key.namespace());
                let read = match bytes {
                    Some(bytes) => self.accept_bytes::<T>(key, ns, (bytes, pttl), accept_negative, ticket).await,
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
        if !self.l2.is_cluster() {
            return wanted.chunks(CHUNK).map(<[usize]>::to_vec).collect();
        }
        let mut by_slot: std::collections::HashMap<u16, Vec<usize>> = std::collections::HashMap::new();
        for i in wanted {
            by_slot.entry(crate::breaker::redis_slot(keys[i].as_str().as_bytes())).or_default().push(i);
        }
        by_slot.into_values().flat_map(|g| g.chunks(CHUNK).map(<[usize]>::to_vec).collect::<Vec<_>>()).collect()
    }

    /// Encodes a value for both tiers: its TTL class jittered (a "not found" takes the
    /// policy's negative TTL), its meta, the marks it was produced under.
    pub(crate) fn prepare<T: CacheValue>(
        &self,
        key: &Key,
        value: Option<T>,
        ttl: Ttl,
        marks: &Arc<Marks>,
        load_us: u32,
    ) -> Result<Prepared> {
        let logical = match &value {
            Some(_) => self.ttl.jittered(ttl),
            None => self.ttl.jittered_negative(),
        };
        let meta = Meta { expires_at_ms: expiry_ms(logical), load_us };
        let encoded = self.codec.encode_marked(key, value.as_ref(), meta, marks)?;
        telemetry::value_size(encoded.bytes.len());
        let slot = match value {
            Some(v) => Slot::Present(Arc::new(v)),
            None => Slot::Absent,
        };
        Ok(Prepared { encoded, slot, meta, ttl: self.physical_ttl(logical) })
    }

    /// How long Redis keeps a value written with logical TTL `ttl`: the freshness grace period
    /// (stale-while-revalidate, fail-safe) on top.
    pub(crate) fn physical_ttl(&self, ttl: Duration) -> Duration {
        ttl.saturating_add(Duration::from_millis(self.freshness.grace_ms()))
    }

    /// Writes a prepared value to Redis [`Via`] a plain SET or a lease, then settles it
    /// ([`settle`](Self::settle)): whether Redis stored it, or its error. With L1 on, the write
    /// goes over the key's tracking connection with a tracked read of the key right after it:
    /// the lease's fill script reads the key's PTTL itself (one command), a plain SET is
    /// followed by GET + PTTL in the same pipeline. What Redis holds then, L1 may keep.
    pub(crate) async fn store(&self, key: &Key, prepared: &Prepared, via: Via<'_>) -> Result<bool> {
        let k = key.as_str();
        let mut ticket = self.l1.ticket(k);
        let (lease, bytes, px) = (&lease_key(k), prepared.encoded.bytes.as_slice(), ttl_millis(prepared.ttl));
        let read_back = self.l1.is_on();
        let (window, versioned_writes) = (ttl_millis(VERSIONED_WINDOW), self.leases.versioned_writes);
        let write = |mut c: Conn| async move {
            let mut pipe = redis::pipe();
            let script = match via {
                Via::Plain => {
                    pipe.cmd("DEL").arg(&coordination_keys(k)[..]).ignore();
                    pipe.cmd("SET").arg(k).arg(bytes).arg("PX").arg(px).ignore();
                    None
                }
                Via::Lease(Holder::Load(token)) => {
                    let mut invocation = SCRIPTS.fill_if_leased.key(k);
                    invocation.arg(lease).arg(token).arg(bytes).arg(px);
                    if versioned_writes {
                        invocation.arg(version_key(k)).arg(window);
                    }
                    Some(invocation)
                }
                Via::Lease(Holder::Through { token, contended }) => {
                    let mut invocation = SCRIPTS.fill_through.key(k);
                    let contended = if contended { "1" } else { "0" };
                    invocation.arg(lease).arg(token).arg(bytes).arg(px).arg(contended).arg(version_key(k));
                    Some(invocation)
                }
                Via::Versioned { version, started_ms } => {
                    let mut invocation = SCRIPTS.fill_versioned.key(k);
                    invocation.arg(version_key(k)).arg(bytes).arg(px).arg(version_arg(version)).arg(lease);
                    invocation.arg(started_ms).arg(window);
                    Some(invocation)
                }
            };
            if let Some(invocation) = &script {
                // The script's own PTTL, after its write, is the tracked read.
                if read_back {
                    c.track_next(&mut pipe);
                }
                pipe.invoke_script(invocation);
            } else if read_back {
                c.track_next(&mut pipe);
                pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            }
            let replies: Vec<redis::Value> = match &script {
                Some(invocation) => query_scripted(&pipe, invocation, &mut c).await?,
                None => pipe.query_async(&mut c).await?,
            };
            Ok(parse_store(replies, script.is_some(), read_back))
        };
        let context = match via {
            Via::Plain => "SET",
            Via::Lease(_) => "lease fill",
            Via::Versioned { .. } => "versioned store",
        };
        // A caller that gives up once the write is sent must not leave the value it replaces in
        // L1: with NOLOOP, nothing else would tell this instance of its own write.
        let unsettled = self.l1.unsettled(vec![k]);
        let outcome = self.call_filling(k, context, &mut ticket, write).await;
        unsettled.settled();
        let outcome = outcome
            .and_then(|parsed| parsed.map_err(|what| Error::corrupt(format!("unexpected reply to a store: {what}"))));
        self.settle(key, prepared, ticket, outcome)
    }

    /// What follows the round trip that stored `prepared`: count it, and fill L1 with what was
    /// written if Redis took it and `held` says Redis held these very bytes right after the
    /// write (a tracked read sent after it found them, or the fill script read the key in the
    /// same atomic step); otherwise drop this instance's L1 copy. Either way every ticket of the key
    /// taken before is void from now on (see [`L1::after_own_write`](crate::l1::L1::after_own_write)):
    /// `before`, taken before the write was sent, decides whether the written value may stay.
    pub(crate) fn settle(
        &self,
        key: &Key,
        prepared: &Prepared,
        before: Ticket,
        outcome: Result<Stored>,
    ) -> Result<bool> {
        let ns = self.metrics.ns(key.namespace());
        let k = key.as_str();
        match outcome {
            Ok(Stored { stored: true, held }) => {
                NsCounters::inc(&ns.sets);
                let ticket = self.l1.after_own_write(k, &before);
                let pttl = match held {
                    Held::Found(Some(bytes), pttl) if bytes == prepared.encoded.bytes => Some(pttl),
                    Held::Written(pttl) => Some(pttl),
                    Held::Found(..) | Held::Unknown => None,
                };
                // Not while a removal of the key is queued: it may be an older load's value.
                if let (Some(ticket), Some(pttl), false) = (ticket, pttl, self.held_back(k)) {
                    let left = match pttl {
                        -1 => Some(Duration::MAX),
                        ms => u64::try_from(ms).ok().map(Duration::from_millis),
                    };
                    if let Some(left) = left {
                        self.l1.fill(key.shared(), prepared.fill(prepared.ttl.min(left)), &ticket);
                    }
                }
                Ok(true)
            }
            // Redis refused the write (it deleted the key instead, or left it to a newer
            // writer), or it failed after Redis may have run it: as after a delete, no copy a
            // reader put in L1 meanwhile may stay (see `delete`).
            Ok(Stored { stored: false, .. }) => {
                NsCounters::inc(&ns.stale_writes_refused);
                tracing::debug!(key = %key, "lease lost during the load, or writes overlapped: value not cached");
                self.l1.invalidate_local(k);
                Ok(false)
            }
            Err(err) => {
                self.l1.invalidate_local(k);
                Err(err)
            }
        }
    }

    /// A loaded value Redis could not take: while Redis is away (`err` says it is unavailable),
    /// L1 keeps it, so the source is not hammered — unless the key was invalidated since the
    /// load began (`before`, taken then).
    pub(crate) fn keep_loaded(&self, key: &Key, prepared: &Prepared, before: &Ticket, err: &Error) {
        tracing::debug!(key = %key, error = %err, "loaded value not written to redis");
        if err.is_unavailable() && !self.held_back(key.as_str()) {
            self.l1.fill_loaded(key.shared(), prepared.fill(prepared.ttl), before);
        }
    }

    /// Gives the lease back without storing anything (the load failed, its value cannot be
    /// cached, or its store failed), so other processes need not wait for it to expire. When
    /// Redis is unhealthy the release is queued for replay with the invalidations
    /// (`cache/recovery.rs`): a lease taken an instant before the cluster went down would
    /// otherwise keep every other caller of the key waiting until its TTL once it is back.
    pub(crate) async fn release_lease(&self, key: &Key, token: &str) {
        if let Err(err) = self.release_now(key, token).await {
            let target = Target::Lease { key: key.clone(), token: token.into() };
            if !self.queue_removal(target, &err) {
                tracing::debug!(key = %key, error = %err, "could not release lease; it will expire");
            }
        }
    }

    /// One attempt at [`release_lease`](Self::release_lease) (a no-op once another token holds
    /// the lease, or it expired).
    pub(crate) async fn release_now(&self, key: &Key, token: &str) -> Result<()> {
        let lease = &lease_key(key.as_str());
        let script = &SCRIPTS.release_if_held;
        self.call_for(key.as_str(), "lease release", |mut c| async move {
            script.key(lease).arg(token).invoke_async::<i64>(&mut c).await
        })
        .await
        .map(drop)
    }

    /// A caller's write (`set`, `set_tagged`, `set_not_found` with `None`): marks, encode, store,
    /// then the hot copies. A value that cannot be encoded removes the key's previous value
    /// (the caller meant to replace it) and fails.
    pub(crate) async fn write<T: CacheValue>(
        &self,
        key: &Key,
        value: Option<&T>,
        ttl: Ttl,
        tags: &[Tag],
    ) -> Result<()> {
        self.l1.invalidate_local(key.as_str());
        let mark = self.recovery.mark();
        let marks = match self.write_marks(key, tags).await {
            Ok(marks) => marks,
            // The value this write meant to replace must not stay: its removal is queued.
            Err(err) => return self.recover_write(key, mark, Err(err)),
        };
        let prepared = match self.prepare(key, value.cloned(), ttl, &marks, 0) {
            Ok(prepared) => prepared,
            Err(err) => {
                self.remove_replaced(key).await;
                return Err(err);
            }
        };
        let stored = self.store(key, &prepared, Via::Plain).await;
        let stored = self.recover_write(key, mark, stored);
        if self.hot.copies(key) == 0 {
            return stored.map(|_| ());
        }
        // Copies of the previous value go even when the key could not be written.
        let copies = match (&stored, value) {
            (Ok(_), Some(value)) => self.hot_write(key, value).await,
            _ => self.hot_invalidate(key).await,
        };
        // A copy left with the previous value: the key and its copies go when Redis is back.
        let copies = match copies {
            Err(err) if stored.is_ok() => self.recover_write(key, mark, Err(err)),
            other => other,
        };
        // A read of a copy made before the copies changed may have filled L1 after the
        // store's own fill: it must not serve once this returns.
        self.l1.invalidate_local(key.as_str());
        stored?;
        copies
    }

    /// After a caller's write of `key` (not a load's store), sent after `mark` was taken
    /// ([`Recovery::mark`](super::recovery::Recovery::mark)): on success a removal queued
    /// before it is moot (Redis holds a newer value; one queued since stays); when Redis was
    /// unhealthy, the key's removal is queued and the error says so ([`Error::is_queued`]).
    pub(crate) fn recover_write<T>(&self, key: &Key, mark: u64, written: Result<T>) -> Result<T> {
        match written {
            Ok(v) => {
                self.recovery.settle(key.as_str(), Settle::Before(mark));
                Ok(v)
            }
            Err(err) => {
                if !self.queue_removal(Target::Key(key.clone()), &err) {
                    return Err(err);
                }
                self.l1.invalidate_local(key.as_str());
                Err(err.queued())
            }
        }
    }

    /// `set_many`: every value encoded before anything is sent; one pipeline per slot group,
    /// the groups sent concurrently; each key settled like a single write.
    pub(crate) async fn write_many<T: CacheValue>(&self, items: &[(Key, T)], ttl: Ttl) -> Result<()> {
        let mut prepared = Vec::with_capacity(items.len());
        for (key, _) in items {
            self.l1.invalidate_local(key.as_str());
        }
        let mark = self.recovery.mark();
        // The error to report: one whose key's removal was not queued if there is one, so
        // that `is_queued` means every key's was.
        let mut errors = FirstErrors::default();
        for (key, value) in items {
            let marks = match self.write_marks(key, &[]).await {
                Ok(marks) => marks,
                Err(err) => {
                    // Nothing was sent: every value the batch meant to replace stays, so each
                    // key's removal is queued.
                    for (key, _) in items {
                        if let Err(err) = self.recover_write(key, mark, Err::<(), _>(err.clone())) {
                            errors.add(err);
                        }
                    }
                    return errors.result();
                }
            };
            match self.prepare(key, Some(value.clone()), ttl, &marks, 0) {
                Ok(p) => prepared.push(p),
                Err(err) => {
                    // As with `set`: the value the caller meant to replace must not keep serving.
                    self.remove_replaced(key).await;
                    return Err(err);
                }
            }
        }
        let keys: Vec<Key> = items.iter().map(|(k, _)| k.clone()).collect();
        // With L1 on, each group goes over its tracking connection with a tracked read-back, as
        // a single `store` does.
        let unsettled = self.l1.unsettled(keys.iter().map(Key::as_str).collect());
        let read_back = self.l1.is_on();
        let writes = self.groups(&keys, (0..items.len()).collect()).into_iter().map(|group| {
            let mut tickets: Vec<_> = group.iter().map(|&i| self.l1.ticket(keys[i].as_str())).collect();
            // Every key of a group has one hash slot: the first names the breaker.
            let slot_key = group.first().map_or("", |&i| keys[i].as_str());
            let (keys, prepared) = (&keys, &prepared);
            async move {
                let group = &group;
                let write = |mut c: Conn| async move {
                    let mut pipe = redis::pipe();
                    for &i in group {
                        let (k, p) = (keys[i].as_str(), &prepared[i]);
                        // Lease first, as in `store`: no load in flight may store over this value.
                        pipe.cmd("DEL").arg(&coordination_keys(k)[..]).ignore();
                        pipe.cmd("SET")
                            .arg(k)
                            .arg(p.encoded.bytes.as_slice())
                            .arg("PX")
                            .arg(ttl_millis(p.ttl))
                            .ignore();
                    }
                    if read_back {
                        c.track_next(&mut pipe);
                        pipe.cmd("MGET");
                        for &i in group {
                            pipe.arg(keys[i].as_str());
                        }
                        for &i in group {
                            pipe.cmd("PTTL").arg(keys[i].as_str());
                        }
                    }
                    pipe.query_async::<Vec<redis::Value>>(&mut c).await
                };
                let written = match read_back && tickets.iter().any(Ticket::is_covered) {
                    true => self.call_tracked(slot_key, "SET pipeline", write).await,
                    false => self.call_for(slot_key, "SET pipeline", write).await.map(|replies| (replies, true)),
                };
                let held = written.map(|(replies, fillable)| {
                    if !fillable {
                        tickets.iter_mut().for_each(Ticket::void);
                    }
                    // The values are written either way; a read-back that cannot be parsed only
                    // means no L1 fill.
                    match read_back.then(|| parse_mget(replies, group.len(), true).ok()).flatten() {
                        Some(held) => held.into_iter().map(|(b, pttl)| Held::Found(b, pttl.unwrap_or(-2))).collect(),
                        None => vec![Held::Unknown; group.len()],
                    }
                });
                (group.clone(), tickets, held)
            }
        });
        let written = join_all(writes).await;
        unsettled.settled();
        for (group, tickets, held) in written {
            let held: Result<Vec<_>> = held;
            for (n, (i, ticket)) in group.into_iter().zip(tickets).enumerate() {
                let outcome = held.clone().map(|held| Stored { stored: true, held: held[n].clone() });
                // Its error is the group's, reported once below.
                let settled = self.settle(&keys[i], &prepared[i], ticket, outcome);
                if let Err(err) = self.recover_write(&keys[i], mark, settled) {
                    errors.add(err);
                }
            }
        }
        for (key, _) in items.iter().filter(|(key, _)| self.hot.copies(key) > 0) {
            // A copy left with the previous value: the key and its copies go when Redis is back.
            if let Err(err) = self.hot_invalidate(key).await
                && let Err(err) = self.recover_write(key, mark, Err::<(), _>(err))
            {
                errors.add(err);
            }
            // As in `write`: no copy read from before the copies went stays in L1.
            self.l1.invalidate_local(key.as_str());
        }
        errors.result()
    }

    /// A write the cache refused (too large, not serializable): the value the caller meant to
    /// replace must not keep serving, so the key goes, as an audited `delete`.
    pub(crate) async fn remove_replaced(&self, key: &Key) {
        let removed = self.delete(key).await;
        self.audit("delete", key.as_str(), &removed);
        if let Err(err) = removed {
            tracing::warn!(key = %key, error = %err, "could not remove the value a rejected write meant to replace");
        }
    }

    /// `delete`, with auto-recovery: [`delete_now`](Self::delete_now), and when Redis is
    /// unhealthy, the removal queued for replay (the error says so, [`Error::is_queued`]: the
    /// call did not complete, other instances may serve the old value until the replay).
    pub(crate) async fn delete(&self, key: &Key) -> Result<bool> {
        let mark = self.recovery.mark();
        let deleted = self.delete_now(key).await;
        // A removal queued earlier is done by this one; a failed one is queued.
        self.recover_write(key, mark, deleted)
    }

    /// One attempt at a removal: L1 (and every ticket of the key, see [`L1::invalidate_local`](crate::l1::L1::invalidate_local)), then the key and its coordination keys in Redis (same slot: a load or a
    /// versioned write in flight must not store its value after this), then the hot copies. Whether Redis held the key.
    pub(crate) async fn delete_now(&self, key: &Key) -> Result<bool> {
        self.l1.invalidate_local(key.as_str());
        let (k, coordination) = (key.as_str(), &coordination_keys(key.as_str()));
        // Over the key's tracking connection when there is one (a plain connection to its
        // master; NOLOOP: Redis sends this instance no message about its own delete, the
        // removals around the call do that job), else the usual way. A DEL may run twice, so
        // one that failed there is sent the usual way too (which retries as every call does).
        let del = |mut c: Conn| async move {
            redis::pipe().cmd("EXISTS").arg(k).cmd("DEL").arg(k).arg(&coordination[..]).query_async(&mut c).await
        };
        let deleted = match self.confirmation() {
            // Confirmed by replicas: `WAIT` waits for the writes of the connection it runs on,
            // so it shares the DEL's pipeline, on the plain connection (on the tracking one it
            // would hold up every L1 read meanwhile).
            Some((replicas, ms)) => {
                let confirmed = |mut c: Conn| async move {
                    let mut pipe = redis::pipe();
                    pipe.cmd("EXISTS")
                        .arg(k)
                        .cmd("DEL")
                        .arg(k)
                        .arg(&coordination[..])
                        .cmd("WAIT")
                        .arg(replicas)
                        .arg(ms);
                    pipe.query_async::<(i64, i64, i64)>(&mut c).await
                };
                self.call_for(k, "DEL", confirmed).await.and_then(|(existed, removed, reached)| {
                    if reached < i64::from(replicas) {
                        return Err(Error::unconfirmed("DEL", reached, replicas, ms));
                    }
                    Ok((existed, removed))
                })
            }
            None => match self.call_tracked(k, "DEL", del).await {
                Ok((replies, _)) => Ok(replies),
                Err(_) => self.call_for(k, "DEL", del).await,
            },
        };
        // The copies go even when the key's DEL failed: they would serve the old value too.
        let copies = self.hot_invalidate(key).await;
        // Once more now that Redis has run (or may have run) the DELs: a reader of this instance
        // that read the old value (of the key or of a copy) after the first removal but before
        // the DEL may have put it in L1, and the DEL's invalidation message, which would remove
        // it, can come later than this call returns.
        self.l1.invalidate_local(key.as_str());
        let (removed, _): (i64, i64) = deleted?;
        NsCounters::inc(&self.metrics.ns(key.namespace()).deletes);
        copies?;
        Ok(removed > 0)
    }

    /// [`call_for`](Self::call_for) for a call whose answer may enter L1 (or a stamp read): sent
    /// over the tracking connection of `key`'s master (see [`crate::invalidation`]), where
    /// `op` puts `CLIENT CACHING YES` before the read whose keys Redis must remember
    /// ([`Conn::track_next`]). Without such a connection (tracking off, the node not connected
    /// yet, its connection known lost) or when the node did not run the call (a redirect, a
    /// "try again"), the call goes the usual way. The flag says whether the answer may enter L1: with tracking on, only if
    /// it came over a tracking connection still up when it came (otherwise nothing would tell
    /// this instance of the key's next change); with tracking off, always (TTLs bound L1).
    pub(crate) async fn call_tracked<T, F, Fut>(&self, key: &str, context: &str, op: F) -> Result<(T, bool)>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let tracking = self.l1.coherence().is_tracking();
        // A connection known lost is skipped: the call goes the usual way at once instead of
        // failing until the supervisor has connected again.
        if tracking
            && let Some(route) = self.l1.coherence().tracking.route(key.as_bytes())
            && route.alive.load(std::sync::atomic::Ordering::SeqCst)
        {
            let call = self.l2.call_tracked(key.as_bytes(), route.conn, context, &op, self.on_redirect());
            let answered = telemetry::redis(context, call).await?;
            if let Some(value) = answered {
                return Ok((value, route.alive.load(std::sync::atomic::Ordering::SeqCst)));
            }
        }
        Ok((self.call_for(key, context, op).await?, !tracking))
    }

    /// [`call_tracked`](Self::call_tracked) for a read that fills L1 with `ticket`: voided when
    /// the answer may not enter L1. A key L1 does not keep (outside the configured prefixes)
    /// goes the usual way: Redis need not tell this instance of its changes.
    pub(crate) async fn call_filling<T, F, Fut>(
        &self,
        key: &str,
        context: &str,
        ticket: &mut Ticket,
        op: F,
    ) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        if !ticket.is_covered() {
            return self.call_for(key, context, op).await;
        }
        let (value, fillable) = self.call_tracked(key, context, op).await?;
        if !fillable {
            ticket.void();
        }
        Ok(value)
    }

    /// One Redis call that names no key, through the whole-Redis breaker only (see
    /// [`Self::call_for`]).
    pub(crate) async fn call<T, F, Fut>(&self, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_on(None, context, op).await
    }

    /// One Redis call on `key` (and keys in its hash slot) through the breaker of its slot range
    /// ([`L2::call`](crate::l2::L2::call)); a redirect it meets is reported to the invalidation
    /// supervisor. `op` may run more than once: see [`L2::run`](crate::l2::L2::run).
    pub(crate) async fn call_for<T, F, Fut>(&self, key: impl AsRef<[u8]>, context: &str, op: F) -> Result<T>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        self.call_on(Some(key.as_ref()), context, op).await
    }

    fn call_on<'a, T, F, Fut>(
        &'a self,
        key: Option<&'a [u8]>,
        context: &'a str,
        op: F,
    ) -> impl Future<Output = Result<T>> + 'a
    where
        F: Fn(Conn) -> Fut + 'a,
        Fut: Future<Output = redis::RedisResult<T>> + 'a,
        T: 'a,
    {
        telemetry::redis(context, self.l2.call(key, context, op, self.on_redirect()))
    }
}

/// What a store's round trip answered: whether Redis took the value, and what Redis held
/// right after the write.
pub(crate) struct Stored {
    pub(crate) stored: bool,
    pub(crate) held: Held,
}

/// What Redis held right after a write, as far as its round trip tells.
#[derive(Debug, Clone)]
pub(crate) enum Held {
    /// Nothing was read.
    Unknown,
    /// What a tracked read sent right after the write found: bytes (`None`: absent) and PTTL.
    Found(Option<Vec<u8>>, i64),
    /// The written bytes themselves: the fill script read the key's PTTL (tracked) in the same
    /// atomic step as its write (see [`FILL_IF_LEASED`](crate::lease::FILL_IF_LEASED)).
    Written(i64),
}

/// A store pipeline's replies: the fill script's (the key's PTTL, or [`NOT_STORED`]) when there
/// is one, else the GET and PTTL read back when asked for. `Err` names what was unexpected.
/// The error a batch write reports: the first one whose key's removal was not queued if any,
/// else the first one (queued), so that [`Error::is_queued`] means every key's was.
#[derive(Default)]
struct FirstErrors {
    queued: Option<Error>,
    not_queued: Option<Error>,
}

impl FirstErrors {
    fn add(&mut self, err: Error) {
        match err.is_queued() {
            true => self.queued.get_or_insert(err),
            false => self.not_queued.get_or_insert(err),
        };
    }

    fn result(self) -> Result<()> {
        self.not_queued.or(self.queued).map_or(Ok(()), Err)
    }
}

fn parse_store(mut replies: Vec<redis::Value>, script: bool, read_back: bool) -> std::result::Result<Stored, String> {
    let int = |v: redis::Value| redis::from_redis_value::<i64>(v).map_err(|e| e.to_string());
    if script {
        let [reply] = <[redis::Value; 1]>::try_from(replies).map_err(|r| format!("{} replies", r.len()))?;
        let pttl = int(reply)?;
        let held = if read_back { Held::Written(pttl) } else { Held::Unknown };
        return Ok(Stored { stored: pttl != NOT_STORED, held });
    }
    if replies.len() != if read_back { 2 } else { 0 } {
        return Err(format!("{} replies", replies.len()));
    }
    let held = match (replies.pop(), replies.pop()) {
        (Some(pttl), Some(bytes)) => {
            Held::Found(redis::from_redis_value::<Option<Vec<u8>>>(bytes).map_err(|e| e.to_string())?, int(pttl)?)
        }
        _ => Held::Unknown,
    };
    Ok(Stored { stored: true, held })
}

/// One key's reply: its bytes (if any) and its PTTL (when asked for).
type Fetched = (Option<Vec<u8>>, Option<i64>);

/// Splits one group's pipeline replies into (value bytes, PTTL) per key. A reply of an unexpected
/// shape fails the group (its keys read as misses) rather than the call.
fn parse_mget(mut replies: Vec<redis::Value>, n: usize, with_pttl: bool) -> Result<Vec<Fetched>> {
    let bad = |what: &str| Error::corrupt(format!("unexpected MGET pipeline reply: {what}"));
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
