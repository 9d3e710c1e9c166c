//! The read path and the load path: one cache miss, top-down.
//!
//! ```text
//! get_or_load                                  (get_or_set, get_or_set_optional, get_or_set_tagged)
//!  ├─ L1 lookup (stamps checked)               hit → return          cache/tiers.rs · l1.rs
//!  ├─ a load of this key still storing? wait for it                  Flights::stored, below
//!  ├─ hot key? read one copy                   hit → return          cache/hot.rs
//!  └─ single-flight: one load per key here     others wait           Flights, below
//!      └─ load_through (the leader)
//!          ├─ an earlier load's store still on its way? wait for it (it holds the lease)
//!          ├─ L2 read: GET + PTTL, one round trip over the key's tracking   read_l2 · read_leasing
//!          │    connection; with the lease attempt (SET NX GET) too when misses dominate
//!          │    value → return (L1 filled with the ticket of the read)
//!          ├─ miss: coordinate with other processes                  coordinate
//!          │    lease taken → load │ another's value appears → return │ waited too long → load
//!          ├─ capture the marks (namespace/tag generations) BEFORE the load   cache/stamps.rs
//!          ├─ loader, under the soft / hard timeouts; failed → fail-safe value or error
//!          └─ return the value; in a task, store_loaded: encode, store under the lease
//!             (refused if an invalidation revoked it; the script answers the key's PTTL),
//!             one round trip, one script; L1 if stored; Redis away → L1 only   cache/tiers.rs
//! ```
//!
//! An L1 miss that Redis serves costs one GET + PTTL, no script. A miss costs its caller at most
//! two round trips before its loader runs (the read, then the lease), and one when the
//! namespace's recent L1 misses were mostly L2 misses: the lease attempt then rides in the
//! read's pipeline ([`MissOutlook`](crate::metrics::MissOutlook) decides; a hit then takes a
//! lease for nothing and gives it back in a task). A miss runs one script in all: the store's
//! compare-and-set. The store and the L1 fill (same round trip, see [`crate::l1`]) run after
//! the callers have their value; until they end, a later caller of the key in this process
//! waits for them ([`Flights::stored`]) and then reads what they stored, so nothing in this process loads the
//! key twice, and a load waits for an earlier store of its key before it tries the lease
//! (loads of two kinds of one key, `get_or_set` and `get_or_set_optional`, can still find each
//! other's lease held). [`Cache::settled`](crate::Cache::settled) waits for all.
//!
//! [`Inner::get_or_refresh`] runs the same load in a task, and adds early refresh and
//! stale-while-revalidate: background refreshes are single-flight per key and value type in a
//! process (a claim in [`Refreshes`](crate::fresh::Refreshes)) and across processes through
//! the key's lease: a refresh takes the lease with `SET NX` and stores with the lease's
//! compare-and-set, so an invalidation during the load still wins; when another process holds
//! the lease, this one skips its refresh and keeps serving what it has until that process's
//! value lands. The lease is taken only while the key still holds the value that called for the
//! refresh (compared by its envelope's expiry and load time, in the same script): a refresh that
//! reaches Redis after another process's refresh has landed and released the lease does not
//! load again.
//!
//! ## Single-flight
//!
//! In-process: concurrent misses on one key run the load once ([`Flights`]).
//! Each in-flight load is a `tokio::sync::OnceCell` shared by every caller for that key (and
//! value type). `OnceCell::get_or_init` runs exactly one initializer at a time; the others wait
//! and then read the same result — value or error. If the caller running the load is cancelled,
//! the next waiter runs its own initializer, so a dropped request never strands the others.

use std::any::TypeId;
use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{Notify, OnceCell};

use super::hot::HotRead;
use super::tiers::{L2Read, Prepared, Via};
use super::{CacheValue, Inner};
use crate::codec::{META_RANGE, Meta};
use crate::error::{Error, Result};
use crate::fresh::{Age, Bounded, bounded};
use crate::key::Key;
use crate::l1::Shared;
use crate::l1::Ticket;
use crate::l2::Conn;
use crate::lease::{self, Holder, PRESENT_RETRIES, SCRIPTS, backoff, lease_key, token};
use crate::metrics::NsCounters;
use crate::tags::{Marks, Tag};
use crate::telemetry::{self, Lease, Tier};
use crate::ttl::{Ttl, now_ms, ttl_millis};

/// What a loader returned for one key, with what its store needs.
pub(crate) struct Loaded<T> {
    pub(crate) value: Option<T>,
    pub(crate) ttl: Ttl,
    /// The generations captured before the load: an invalidation during it makes the value old.
    pub(crate) marks: Arc<Marks>,
    pub(crate) load_us: u32,
    /// Taken before the load: L1 keeps the value alone (Redis away) only if the key was not
    /// invalidated since.
    pub(crate) before: Ticket,
}

/// What a caller asks of a load, besides its key and loader.
#[derive(Clone, Copy)]
struct Ask<'a> {
    ttl: Ttl,
    tags: &'a [Tag],
    /// A cached "not found" answers the caller (`get_or_set_optional`).
    negative_is_hit: bool,
    /// The caller awaits this load directly, so a soft timeout (with a stale value to serve
    /// instead) abandons it; `get_or_refresh` runs it in a task and lets it finish.
    caller_waits: bool,
}

/// How a miss was coordinated with other processes.
enum Coordinated {
    /// Another process loaded it meanwhile.
    Found(Shared),
    /// This caller holds the lease (token) and must load.
    Holder(String),
    /// Load without a lease (waited too long, or Redis failed: then skip the write-back).
    LoadAlone { redis_failed: bool },
}

/// A lease attempt ([`lease::attempt`]): the token it used and whether it holds the lease.
#[derive(Debug)]
struct FirstTry {
    token: String,
    /// `Some(true)`: the lease was free and is now this token's, or was this token's already;
    /// `None`: unknown (the round trip failed after the attempt may have run).
    ours: Option<bool>,
}

impl FirstTry {
    /// Whether this attempt holds the lease.
    fn took_lease(&self) -> bool {
        self.ours == Some(true)
    }

    /// Whether this attempt may hold the lease.
    fn may_hold(&self) -> bool {
        self.ours != Some(false)
    }
}

/// What one lease attempt of [`Inner::coordinate`] found.
enum Attempt {
    /// The lease is this caller's.
    Ours,
    /// Another caller holds it.
    Held,
    /// The key holds a value (not known to be stale): read it.
    Present,
}

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

impl Inner {
    /// `get`: L1, then a hot key's copy, then Redis; no loader. Unavailability reads as a miss.
    pub(crate) async fn read<T: CacheValue>(&self, key: &Key) -> Option<T> {
        let ns = self.metrics.ns(key.namespace());
        if let Some(found) = self.l1_lookup::<T>(key, ns, true).await {
            return found;
        }
        // A hot key (rare) is read from one of its copies first.
        let copy = match self.hot.copies(key) {
            0 => None,
            copies => match self.hot_read::<T>(key, copies, ns, true).await {
                HotRead::Hit(found) => return found,
                HotRead::Missed(copy) => Some(copy),
                HotRead::NotHot => None,
            },
        };
        match self.read_l2::<T>(key, ns, true).await {
            Ok(L2Read::Value(v)) => {
                if let Some(copy) = copy {
                    self.hot_refill(key, &copy, Some(&v)).await;
                }
                Some(v)
            }
            Ok(_) | Err(_) => None,
        }
    }

    /// `get_many`: L1 first, then the rest from Redis grouped by slot; lines up with `keys`.
    pub(crate) async fn read_many<T: CacheValue>(&self, keys: &[Key]) -> Vec<Option<T>> {
        let mut out: Vec<Option<T>> = (0..keys.len()).map(|_| None).collect();
        let mut missing = Vec::new();
        for (i, key) in keys.iter().enumerate() {
            let ns = self.metrics.ns(key.namespace());
            match self.l1_lookup::<T>(key, ns, true).await {
                Some(found) => out[i] = found,
                None => missing.push(i),
            }
        }
        for (i, read) in self.read_l2_many::<T>(keys, missing, true).await {
            if let Ok(L2Read::Value(v)) = read {
                out[i] = Some(v);
            }
        }
        out
    }

    /// Cache-aside for one key: L1, a hot copy, then one load per key in this process
    /// ([`load_through`](Self::load_through)) whose result every concurrent caller shares.
    pub(crate) async fn get_or_load<T, F, Fut, E>(
        self: &Arc<Self>,
        key: &Key,
        ttl: Ttl,
        tags: &[Tag],
        loader: F,
        negative_is_hit: bool,
    ) -> Result<Option<T>>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let ns = self.metrics.ns(key.namespace());
        if let Some(found) = self.l1_lookup::<T>(key, ns, negative_is_hit).await {
            return Ok(found);
        }
        // A hot key (rare) is read from one of its copies first.
        let copy = match self.hot.copies(key) {
            0 => None,
            copies => match self.hot_read::<T>(key, copies, ns, negative_is_hit).await {
                HotRead::Hit(found) => return Ok(found),
                HotRead::Missed(copy) => Some(copy),
                HotRead::NotHot => None,
            },
        };
        // Plain and optional loads of one type are separate flights: one may not satisfy the other.
        let kind = (TypeId::of::<T>(), u8::from(negative_is_hit));
        let mut loader = Some(loader);
        let shared = self
            .join_or_load(key, kind, |before| {
                let loader = loader.take();
                async move {
                    let loader = loader.ok_or_else(|| Error::config("internal error: a load ran twice"))?;
                    let ask = Ask { ttl, tags, negative_is_hit, caller_waits: true };
                    self.load_through::<T, F, Fut, E>(key, ask, loader, before).await
                }
            })
            .await?;
        match shared.downcast_ref::<Option<T>>() {
            Some(v) => {
                if let Some(copy) = copy {
                    self.hot_refill(key, &copy, v.as_ref()).await;
                }
                Ok(v.clone())
            }
            None => Err(Error::config("internal error: single-flight result of an unexpected type")),
        }
    }

    /// Runs `load` as the key's single flight in this process, or joins the one running: a
    /// joined load is taken unless it began before a change of the key that this instance had
    /// seen when the caller came here (a write or delete through this instance, or an
    /// invalidation message) — its value may be older than that write. The caller then runs or
    /// joins a later load, which cannot be older than its own arrival. `load` gets the ticket of
    /// its beginning.
    async fn join_or_load<L, Fut>(&self, key: &Key, kind: (TypeId, u8), mut load: L) -> Result<Shared>
    where
        L: FnMut(Ticket) -> Fut,
        Fut: Future<Output = Result<Shared>>,
    {
        let arrived = self.l1.ticket(key.as_str());
        // Each turn joins a load that began earlier than the last: a few at most.
        for _ in 0..4 {
            let mut ran = false;
            let landed = self
                .flights
                .run(key.shared(), kind, || {
                    ran = true;
                    let before = self.l1.ticket(key.as_str());
                    let loading = load(before);
                    async move { loading.await.map(|value| Landed { value, before }) }
                })
                .await?;
            if ran || !self.l1.coherence().changed_between(&landed.before, &arrived) {
                return Ok(landed.value);
            }
            tracing::debug!(key = %key, "a load that began before a write of the key is not joined");
        }
        let before = self.l1.ticket(key.as_str());
        load(before).await
    }

    /// The single-flight leader's work: check Redis (another instance may have loaded the key),
    /// else run the loader and store its value in both tiers. `before`: the ticket taken as the
    /// load began (for the L1 fill when Redis cannot take the value: nothing may have changed
    /// since).
    async fn load_through<T, F, Fut, E>(
        self: &Arc<Self>,
        key: &Key,
        ask: Ask<'_>,
        loader: F,
        before: Ticket,
    ) -> Result<Shared>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<Option<T>, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let Ask { ttl, tags, negative_is_hit, caller_waits } = ask;
        let ns = self.metrics.ns(key.namespace());
        // An earlier load of the key may still be storing its value (a load the caller would not
        // join, see `join_or_load`), or giving back a lease: until it is done, its lease is held.
        // Wait for it here, in memory, rather than find the lease held and poll Redis for it.
        self.flights.stored(key.as_str()).await;
        // GET and PTTL: an L2 hit costs Redis nothing more. When the namespace's recent L1
        // misses were mostly L2 misses too, the lease attempt rides along (one round trip for
        // both on a miss; on a hit, a lease taken for nothing and given back).
        let (read, mut first) = if self.leases.enabled && ns.outlook.misses_likely() {
            self.read_leasing::<T>(key, ns, negative_is_hit).await
        } else {
            (self.read_l2::<T>(key, ns, negative_is_hit).await, None)
        };
        match &read {
            Ok(L2Read::Value(_) | L2Read::Negative) => ns.outlook.record(true),
            Ok(L2Read::Miss | L2Read::Stale(..)) => ns.outlook.record(false),
            Ok(L2Read::Unusable) | Err(_) => {}
        }
        // A lease that attempt may have taken while the read found something to serve, or
        // something that is not coordinated, or failed, goes back: others would wait for it in
        // vain (on a miss, `coordinate` tries again with the same token). In a task, like a
        // store (see `store_in_background`): the caller has its value; a later load of the key
        // waits for it.
        let coordinated = matches!(read, Ok(L2Read::Miss | L2Read::Stale(..)));
        if let Some(taken) = first.take_if(|f| f.may_hold() && !coordinated) {
            let pending = Pending::begin(self, key.shared());
            let key = key.clone();
            tokio::spawn(telemetry::background(async move {
                pending.inner.release_lease(&key, &taken.token).await;
                drop(pending);
            }));
        }
        // Coordinate with other processes only on a true miss (an expired value kept by a grace
        // period counts as one): a stored value this caller cannot use is simply replaced.
        let (mut redis_failed, coordinate, stale) = match read {
            Ok(L2Read::Value(v)) => return Ok(Arc::new(Some(v))),
            Ok(L2Read::Negative) => return Ok(Arc::new(None::<T>)),
            Ok(L2Read::Miss) => (false, true, None),
            Ok(L2Read::Stale(v, meta)) => (false, true, Some((v, meta))),
            Ok(L2Read::Unusable) => (false, false, None),
            Err(err) => {
                tracing::debug!(key = %key, error = %err, "redis read failed: loading from the source");
                (err.is_unhealthy() || err.is_circuit_open(), false, self.l1_entry::<T>(key, ns).await)
            }
        };
        let stale_present = stale.is_some();
        // Fail-safe: what may stand in for a failed or too slow load (stamps checked above,
        // by the L2 read or by `l1_entry`).
        let fallback = stale.filter(|(_, meta)| self.freshness.fail_safe_allows(*meta)).map(|(v, _)| v);
        let mut lease = None;
        if coordinate && !redis_failed && self.leases.enabled {
            match self.coordinate::<T>(key, ns, negative_is_hit, stale_present, first).await {
                Coordinated::Found(shared) => {
                    telemetry::lease(Lease::Waited);
                    return Ok(shared);
                }
                Coordinated::Holder(token) => {
                    telemetry::lease(Lease::Acquired);
                    lease = Some(token);
                }
                Coordinated::LoadAlone { redis_failed: failed } => {
                    telemetry::lease(if failed { Lease::Unavailable } else { Lease::LoadedAlone });
                    redis_failed = failed;
                }
            }
        }
        // Before the load: an invalidation during it must make its value old.
        let marks = self.capture_marks(key, tags).await.unwrap_or_else(|(marks, _)| marks);
        NsCounters::inc(&ns.loader_calls);
        telemetry::loader_called();
        let started = tokio::time::Instant::now();
        let soft = if caller_waits && fallback.is_some() { self.freshness.soft_timeout } else { None };
        let loaded = match bounded(loader(), soft, self.freshness.hard_timeout).await {
            Bounded::Done(Ok(v)) => Ok(v),
            Bounded::Done(Err(e)) => {
                NsCounters::inc(&ns.loader_errors);
                Err(Error::loader(e))
            }
            Bounded::Soft(after) | Bounded::Hard(after) => {
                NsCounters::inc(&ns.loader_timeouts);
                Err(Error::loader_timeout(after))
            }
        };
        let load_us = ns.record_load(started.elapsed());
        let value = match loaded {
            Ok(v) => v,
            Err(err) => {
                if let Some(token) = &lease {
                    self.release_lease(key, token).await;
                }
                if let Some(v) = fallback {
                    NsCounters::inc(&ns.stale_served);
                    telemetry::tier(Tier::Stale);
                    tracing::warn!(key = %key, error = %err, "load failed; serving the last good value (fail-safe)");
                    return Ok(Arc::new(Some(v)));
                }
                return Err(err);
            }
        };
        let loaded = Loaded { value: value.clone(), ttl, marks, load_us, before };
        if redis_failed {
            // Redis just failed this flight: do not try it again.
            self.store_loaded(key, loaded, None).await;
        } else {
            self.store_in_background(key, loaded, lease);
        }
        Ok(Arc::new(value))
    }

    /// The store of a load, in a task: the callers have their value once it is loaded; Redis
    /// and L1 get it a round trip later. Until the task ends, a later caller of
    /// the key in this process waits for it ([`Flights::stored`]), then reads what it stored,
    /// as it would have if this store had been awaited: nobody here loads the key again, or
    /// waits on this process's own lease.
    fn store_in_background<T: CacheValue>(self: &Arc<Self>, key: &Key, loaded: Loaded<T>, lease: Option<String>) {
        let before = loaded.before;
        // Encoded now: a value that cannot be cached is counted before the caller returns.
        let prepared = self.prepare_loaded(key, loaded);
        let pending = Pending::begin(self, key.shared());
        let key = key.clone();
        tokio::spawn(telemetry::background(async move {
            let via = lease.as_deref().map_or(Via::Plain, |token| Via::Lease(Holder::Load(token)));
            pending.inner.store_prepared(&key, prepared, &before, Some(via)).await;
            drop(pending);
        }));
    }

    /// The store step of every load (`get_or_set`, `get_or_refresh`; `get_or_set_many` shares
    /// [`prepare_loaded`](Self::prepare_loaded) and [`keep_loaded`](Inner::keep_loaded)): the
    /// value goes to Redis `via` the caller's lease (refused if an invalidation revoked it) or a
    /// plain SET, then to L1 if Redis held it right after the write (see
    /// [`settle`](Inner::settle)); `None`: Redis failed this flight, L1 only.
    async fn store_loaded<T: CacheValue>(&self, key: &Key, loaded: Loaded<T>, via: Option<Via<'_>>) {
        let before = loaded.before;
        let prepared = self.prepare_loaded(key, loaded);
        self.store_prepared(key, prepared, &before, via).await;
    }

    /// [`store_loaded`](Self::store_loaded) once encoded; `None`: the value cannot be cached,
    /// and gives its lease back. `before`: the ticket taken before the load.
    async fn store_prepared(&self, key: &Key, prepared: Option<Prepared>, before: &Ticket, via: Option<Via<'_>>) {
        let Some(prepared) = prepared else {
            if let Some(Via::Lease(Holder::Load(token))) = via {
                self.release_lease(key, token).await;
            }
            return;
        };
        let written = match via {
            Some(via) => self.store(key, &prepared, via).await.map(drop),
            None => Err(Error::circuit_open()),
        };
        if let Err(err) = written {
            // The store may not have run (a slot moving between nodes, a lost connection): the
            // lease goes back if this token still holds it, or others wait for it in vain.
            if let Some(Via::Lease(Holder::Load(token))) = via {
                self.release_lease(key, token).await;
            }
            self.keep_loaded(key, &prepared, before, &err);
        }
    }

    /// Encodes a loaded value for both tiers; `None` (counted as uncacheable) when it cannot be
    /// cached — its callers still get it.
    pub(crate) fn prepare_loaded<T: CacheValue>(&self, key: &Key, loaded: Loaded<T>) -> Option<Prepared> {
        match self.prepare(key, loaded.value, loaded.ttl, &loaded.marks, loaded.load_us) {
            Ok(prepared) => Some(prepared),
            Err(err) => {
                NsCounters::inc(&self.metrics.ns(key.namespace()).uncacheable);
                tracing::warn!(key = %key, error = %err, "loaded value not cached");
                None
            }
        }
    }

    /// The first read of a load (an L1 miss, leases on): the lease attempt, GET and PTTL in ONE
    /// round trip, instead of a GET then, on a miss, the lease. No script: the attempt takes a
    /// free lease whatever the read finds, so a lease taken although the read found something
    /// usable must be handed back by the caller (see [`FirstTry::may_hold`]); so must one the
    /// attempt may have taken when the round trip failed (its outcome is then unknown).
    async fn read_leasing<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> (Result<L2Read<T>>, Option<FirstTry>) {
        let k = key.as_str();
        // The ticket first, as in `read_l2`.
        let mut ticket = self.l1.ticket(k);
        if self.held_back(k) {
            NsCounters::inc(&ns.l2_misses);
            return (Err(Error::held_back()), None);
        }
        let lease = lease_key(k);
        let token = token();
        let px = ttl_millis(self.leases.ttl);
        let (l, t) = (lease.as_slice(), token.as_str());
        let read = |mut c: Conn| async move {
            let mut pipe = redis::pipe();
            lease::attempt(&mut pipe, l, t, px);
            // Only the GET is tracked: the lease must not be.
            c.track_next(&mut pipe);
            pipe.cmd("GET").arg(k).cmd("PTTL").arg(k);
            pipe.query_async::<(Option<String>, Option<Vec<u8>>, i64)>(&mut c).await
        };
        let got = self.call_filling(k, "lease acquire + GET", &mut ticket, read).await;
        let (got, first) = match got {
            Ok((previous, bytes, pttl)) => {
                let pttl = self.l1.is_on().then_some(pttl);
                let ours = lease::is_ours(previous.as_deref(), &token);
                (Ok((bytes, pttl)), Some(FirstTry { token, ours: Some(ours) }))
            }
            Err(err) => (Err(err), Some(FirstTry { token, ours: None })),
        };
        (self.interpret_l2(key, ns, accept_negative, ticket, got).await, first)
    }

    /// The single-flight leader's coordination with other processes after an L2 miss: take the
    /// lease, or wait for its holder's value (taking the lease over if the holder goes away).
    /// `stale`: the key holds an expired value, which does not count as present. `first`: the
    /// attempt already sent with the read ([`Inner::read_leasing`]), used as the first one (it
    /// took a free lease whatever the key held).
    async fn coordinate<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
        stale: bool,
        first: Option<FirstTry>,
    ) -> Coordinated {
        let mut stale_present = stale;
        let lease = lease_key(key.as_str());
        // The first attempt's token, if any: a lease it took (or may have taken, when its round
        // trip failed) is this caller's, and an attempt with the same token says so.
        let token = first.as_ref().map_or_else(token, |f| f.token.clone());
        // A lease the first attempt took is ours whatever the read found: load under it.
        let mut first = first.filter(|f| f.ours.is_some() && (!stale || f.took_lease()));
        let px = ttl_millis(self.leases.ttl);
        let started = tokio::time::Instant::now();
        let mut attempt = 0;
        let mut polled = false;
        loop {
            let (k, l, t) = (key.as_str(), lease.as_slice(), token.as_str());
            let taken = match first.take() {
                Some(done) => Ok(if done.took_lease() { Attempt::Ours } else { Attempt::Held }),
                None => {
                    let attempt = self
                        .call_for(k, "lease acquire", |mut c| async move {
                            let mut pipe = redis::pipe();
                            lease::attempt(&mut pipe, l, t, px);
                            pipe.cmd("EXISTS").arg(k);
                            pipe.query_async::<(Option<String>, bool)>(&mut c).await
                        })
                        .await;
                    match attempt {
                        // Present (and not known stale): use it, and give back a lease taken
                        // meanwhile, or others would wait for it in vain.
                        Ok((previous, true)) if !stale_present => {
                            if lease::is_ours(previous.as_deref(), t) {
                                self.release_lease(key, t).await;
                            }
                            Ok(Attempt::Present)
                        }
                        Ok((previous, _)) if lease::is_ours(previous.as_deref(), t) => Ok(Attempt::Ours),
                        Ok(_) => Ok(Attempt::Held),
                        Err(err) => Err(err),
                    }
                }
            };
            match taken {
                Ok(Attempt::Ours) => return Coordinated::Holder(token),
                Ok(Attempt::Present) => {
                    // Present: use it; a value we cannot use (another type, or a cached "not
                    // found" this caller does not accept) is replaced by loading without a lease.
                    // Gone again (a value invalidated by its namespace or tags is removed when
                    // read), or kept past its expiry: take the lease after all. Loading without
                    // one could store a value older than a write made during the load.
                    match self.read_l2::<T>(key, ns, accept_negative).await {
                        Ok(L2Read::Value(v)) => return Coordinated::Found(Arc::new(Some(v))),
                        Ok(L2Read::Negative) => return Coordinated::Found(Arc::new(None::<T>)),
                        Ok(found @ (L2Read::Miss | L2Read::Stale(..))) if attempt < PRESENT_RETRIES => {
                            if matches!(found, L2Read::Stale(..)) {
                                stale_present = true;
                            }
                            attempt += 1;
                            continue;
                        }
                        Ok(_) => return Coordinated::LoadAlone { redis_failed: false },
                        Err(err) => return Coordinated::LoadAlone { redis_failed: unhealthy(&err) },
                    }
                }
                Ok(Attempt::Held) => {}
                Err(err) => return Coordinated::LoadAlone { redis_failed: unhealthy(&err) },
            }
            // Held: wait for its value (or for the lease to go).
            if started.elapsed() >= self.leases.max_wait {
                tracing::warn!(key = %key, waited = ?started.elapsed(), "gave up waiting for another process's load");
                return Coordinated::LoadAlone { redis_failed: false };
            }
            // By a write-through in this process: in memory, until it has stored. Otherwise by
            // another process: poll.
            let left = self.leases.max_wait.saturating_sub(started.elapsed());
            if !self.flights.written(key.as_str(), left).await {
                if !polled {
                    NsCounters::inc(&ns.lease_waits);
                    polled = true;
                }
                tokio::time::sleep(backoff(attempt)).await;
            }
            attempt += 1;
            match self.read_l2::<T>(key, ns, accept_negative).await {
                Ok(L2Read::Value(v)) => return Coordinated::Found(Arc::new(Some(v))),
                Ok(L2Read::Negative) => return Coordinated::Found(Arc::new(None::<T>)),
                // Still the old value: the holder has not stored yet.
                Ok(L2Read::Miss | L2Read::Stale(..)) => {}
                Ok(L2Read::Unusable) => return Coordinated::LoadAlone { redis_failed: false },
                Err(err) => return Coordinated::LoadAlone { redis_failed: unhealthy(&err) },
            }
        }
    }

    /// [`Cache::get_or_refresh`](crate::Cache::get_or_refresh): the L1 copy's age decides
    /// between serving it, serving it and refreshing in the background, or loading (in a task,
    /// so that the caller can stop waiting while the load completes and is stored).
    pub(crate) async fn get_or_refresh<T, F, Fut, E>(self: &Arc<Self>, key: &Key, ttl: Ttl, loader: Arc<F>) -> Result<T>
    where
        T: CacheValue,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let ns = self.metrics.ns(key.namespace());
        let freshness = &self.freshness;
        let mut fallback = None;
        // A load of this key that returned moments ago may still be storing its value.
        self.flights.stored(key.as_str()).await;
        if let Some((v, meta)) = self.l1_entry::<T>(key, ns).await {
            match freshness.age(meta, now_ms()) {
                Age::Fresh => {
                    NsCounters::inc(&ns.l1_hits);
                    telemetry::tier(Tier::L1);
                    return Ok(v);
                }
                Age::RefreshEarly => {
                    NsCounters::inc(&ns.l1_hits);
                    telemetry::tier(Tier::L1);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Early, meta);
                    return Ok(v);
                }
                Age::Revalidate => {
                    NsCounters::inc(&ns.l1_hits);
                    NsCounters::inc(&ns.stale_served);
                    telemetry::tier(Tier::Stale);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Stale, meta);
                    return Ok(v);
                }
                Age::FailSafe => fallback = Some(v),
                Age::Expired => {}
            }
        }
        NsCounters::inc(&ns.l1_misses);
        match self.read_l2::<T>(key, ns, false).await {
            Ok(L2Read::Value(v)) => return Ok(v),
            Ok(L2Read::Stale(v, meta)) => match freshness.age(meta, now_ms()) {
                Age::Revalidate => {
                    NsCounters::inc(&ns.stale_served);
                    telemetry::tier(Tier::Stale);
                    self.refresh_in_background::<T, F, Fut, E>(key, ttl, &loader, Trigger::Stale, meta);
                    return Ok(v);
                }
                Age::FailSafe => fallback = Some(v),
                _ => {}
            },
            // Redis unreachable: the L1 copy (if any) is the fail-safe.
            _ => {}
        }
        self.load_in_task::<T, F, Fut, E>(key, ttl, loader, fallback, ns).await
    }

    /// A foreground load run in a task, so that the caller can stop waiting (soft or hard
    /// timeout) while the load completes and is stored. It joins `get_or_set`'s single-flight.
    async fn load_in_task<T, F, Fut, E>(
        self: &Arc<Self>,
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
            let (inner, key) = (Arc::clone(self), key.clone());
            tokio::spawn(telemetry::carry(async move {
                let flight = inner.join_or_load(&key, (TypeId::of::<T>(), 0), |before| {
                    let (loader, inner, key) = (loader.clone(), &inner, &key);
                    async move {
                        let load = move || async move { (*loader)().await.map(Some) };
                        let ask = Ask { ttl, tags: &[], negative_is_hit: false, caller_waits: false };
                        inner.load_through::<T, _, _, E>(key, ask, load, before).await
                    }
                });
                match flight.await?.downcast_ref::<Option<T>>() {
                    Some(Some(v)) => Ok(v.clone()),
                    Some(None) => Err(Error::loader("loader produced no value")),
                    None => Err(Error::config("internal error: single-flight result of an unexpected type")),
                }
            }))
        };
        let freshness = &self.freshness;
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
                telemetry::tier(Tier::Stale);
                tracing::warn!(key = %key, error = %failure, "serving the last good value (fail-safe)");
                Ok(v)
            }
            None => Err(failure),
        }
    }

    /// Starts a background refresh of `key` unless one is running in this process. `seen`: the
    /// meta of the value that calls for it.
    fn refresh_in_background<T, F, Fut, E>(
        self: &Arc<Self>,
        key: &Key,
        ttl: Ttl,
        loader: &Arc<F>,
        trigger: Trigger,
        seen: Meta,
    ) where
        T: CacheValue,
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = std::result::Result<T, E>> + Send + 'static,
        E: Into<Box<dyn std::error::Error + Send + Sync>> + Send + 'static,
    {
        let Some(claim) = self.refreshes.claim(key.shared(), TypeId::of::<T>()) else { return };
        let ns = self.metrics.ns(key.namespace());
        NsCounters::inc(match trigger {
            Trigger::Early => &ns.early_refreshes,
            Trigger::Stale => &ns.stale_refreshes,
        });
        let (inner, key, loader) = (Arc::clone(self), key.clone(), loader.clone());
        tokio::spawn(telemetry::refresh(async move {
            let _claim = claim;
            let ns = inner.metrics.ns(key.namespace());
            inner.refresh::<T, F, Fut, E>(&key, ttl, &*loader, ns, seen).await;
        }));
    }

    /// One background refresh: take the lease (skip if another process holds it, or if the
    /// value `seen` was replaced meanwhile), load, store.
    async fn refresh<T, F, Fut, E>(&self, key: &Key, ttl: Ttl, loader: &F, ns: &NsCounters, seen: Meta)
    where
        T: CacheValue,
        F: Fn() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let lease = if self.leases.enabled {
            match self.take_refresh_lease(key, seen).await {
                Ok(RefreshLease::Taken(token)) => Some(token),
                // Another process is loading this key: its value will reach Redis.
                Ok(RefreshLease::Held) => return,
                // Another process's refresh (or a write) has landed: nothing to do but drop the
                // old copy, if this instance still holds one.
                Ok(RefreshLease::Replaced) => {
                    self.l1.remove(key.as_str());
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
        let before = self.l1.ticket(key.as_str());
        // Before the load: a namespace invalidation during it must make its value old.
        let marks = self.capture_marks(key, &[]).await.unwrap_or_else(|(marks, _)| marks);
        let started = tokio::time::Instant::now();
        // Nobody waits on this load, but a hung loader must not block later refreshes forever.
        let limit = self.freshness.hard_timeout.unwrap_or(self.leases.ttl);
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
        let via = match &lease {
            Some(token) => Via::Lease(Holder::Load(token)),
            None => Via::Plain,
        };
        self.store_loaded(key, Loaded { value: Some(value), ttl, marks, load_us, before }, Some(via)).await;
    }

    /// Takes the key's lease for a refresh of the value `seen` ([`ACQUIRE_FOR_REFRESH`]).
    async fn take_refresh_lease(&self, key: &Key, seen: Meta) -> Result<RefreshLease> {
        let (k, lease, token, px) = (key.as_str(), lease_key(key.as_str()), token(), ttl_millis(self.leases.ttl));
        let seen = seen.to_bytes();
        let (lease, t, seen) = (lease.as_slice(), token.as_str(), seen.as_slice());
        let (first, last) = (META_RANGE.start, META_RANGE.end - 1);
        let script = &SCRIPTS.acquire_for_refresh;
        let outcome: i64 = self
            .call_for(k, "lease acquire", |mut c| async move {
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

/// Whether an error says Redis cannot be used for this flight (its write-back is skipped).
fn unhealthy(err: &Error) -> bool {
    err.is_unhealthy() || err.is_circuit_open()
}

/// What a flight's callers share: its value, and the ticket taken as its load began.
#[derive(Debug, Clone)]
pub(crate) struct Landed {
    value: Shared,
    before: Ticket,
}

type Cell = Arc<OnceCell<Result<Landed>>>;
/// Key, value type, and a discriminator for flights of one type that produce different results.
type FlightKey = (Arc<str>, TypeId, u8);

#[derive(Default)]
pub(crate) struct Flights {
    in_flight: Mutex<HashMap<FlightKey, Cell>>,
    /// Loads that returned and are storing their value in the background ([`Pending`]).
    storing: InProgress,
    /// How many there are in all: a caller looks further only when some are.
    pending: AtomicUsize,
    /// Write-throughs in progress in this process ([`Writing`]).
    writing: InProgress,
}

/// Work in progress, counted per key, and woken whenever one ends.
#[derive(Default)]
struct InProgress {
    keys: Mutex<HashMap<Arc<str>, usize>>,
    ended: Notify,
}

impl InProgress {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Arc<str>, usize>> {
        self.keys.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn enter(&self, key: &Arc<str>) {
        *self.lock().entry(key.clone()).or_default() += 1;
    }

    fn leave(&self, key: &Arc<str>) {
        {
            let mut keys = self.lock();
            if let Some(n) = keys.get_mut(key) {
                *n -= 1;
                if *n == 0 {
                    keys.remove(key);
                }
            }
        }
        self.ended.notify_waiters();
    }
}

impl Flights {
    /// Runs `load` unless a load for the same key and kind is already running, in which case the
    /// caller waits for that one. Returns the shared result.
    pub(crate) async fn run<F, Fut>(&self, key: &Arc<str>, kind: (TypeId, u8), load: F) -> Result<Landed>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Landed>>,
    {
        let map_key = (key.clone(), kind.0, kind.1);
        let cell = self.lock().entry(map_key.clone()).or_default().clone();
        let guard = Retire { flights: self, key: map_key, cell };
        guard.cell.get_or_init(load).await.clone()
    }

    /// Waits until no load of `key` is storing its value in the background (see
    /// [`Pending`]); at once when none is. Whether it waited.
    pub(crate) async fn stored(&self, key: &str) -> bool {
        self.wait_until(|storing| !storing.contains_key(key)).await
    }

    /// Waits until no load of any key is storing its value in the background.
    pub(crate) async fn all_stored(&self) {
        self.wait_until(HashMap::is_empty).await;
    }

    async fn wait_until(&self, done: impl Fn(&HashMap<Arc<str>, usize>) -> bool) -> bool {
        let mut waited = false;
        loop {
            if self.pending.load(Ordering::SeqCst) == 0 {
                return waited;
            }
            // Registered before looking, so that an end between the two still wakes us.
            let ended = self.storing.ended.notified();
            tokio::pin!(ended);
            ended.as_mut().enable();
            if done(&self.storing.lock()) {
                return waited;
            }
            ended.await;
            waited = true;
        }
    }

    /// Registers a write-through of `key` in this process until the guard drops.
    pub(crate) fn begin_write(&self, key: &Arc<str>) -> Writing<'_> {
        self.writing.enter(key);
        Writing { flights: self, key: key.clone() }
    }

    /// If a write-through of `key` runs in this process, waits for it to end, for at most
    /// `limit`, and says true; false at once when none runs.
    async fn written(&self, key: &str, limit: Duration) -> bool {
        let writing = &self.writing;
        let ended = writing.ended.notified();
        tokio::pin!(ended);
        // Registered before looking, so that an end between the two still wakes us.
        ended.as_mut().enable();
        if !writing.lock().contains_key(key) {
            return false;
        }
        let _ = tokio::time::timeout(limit, async {
            loop {
                ended.as_mut().await;
                ended.set(writing.ended.notified());
                ended.as_mut().enable();
                if !writing.lock().contains_key(key) {
                    return;
                }
            }
        })
        .await;
        true
    }

    /// Keys with a load in progress.
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<FlightKey, Cell>> {
        self.in_flight.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A write-through in progress ([`Flights::begin_write`]), from before its lease until its
/// store: a miss of the key in this process that finds the lease held waits for it in memory
/// instead of polling Redis (see `coordinate`). Ends whether the write ends, fails or is dropped.
pub(crate) struct Writing<'a> {
    flights: &'a Flights,
    key: Arc<str>,
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        self.flights.writing.leave(&self.key);
    }
}

/// A load's value on its way to Redis in the background: registered in [`Flights`] from before
/// its load returns until the store (and the L1 fill after it) is done, whether it ends,
/// fails or panics.
struct Pending {
    inner: Arc<Inner>,
    key: Arc<str>,
}

impl Pending {
    fn begin(inner: &Arc<Inner>, key: &Arc<str>) -> Self {
        let flights = &inner.flights;
        flights.storing.enter(key);
        flights.pending.fetch_add(1, Ordering::SeqCst);
        Self { inner: Arc::clone(inner), key: key.clone() }
    }
}

impl Drop for Pending {
    fn drop(&mut self) {
        let flights = &self.inner.flights;
        // The store is done: a caller that sees no store pending from here on is right.
        flights.pending.fetch_sub(1, Ordering::SeqCst);
        flights.storing.leave(&self.key);
    }
}

/// Retires a flight's cell when a caller leaves, finished or cancelled: once the result is in
/// (later misses start a fresh load, which normally hits the tiers this one filled), or when the
/// leaving caller was the last one waiting (nobody else can complete it; without this a cancelled
/// sole caller would leak its entry).
struct Retire<'a> {
    flights: &'a Flights,
    key: FlightKey,
    cell: Cell,
}

impl Drop for Retire<'_> {
    fn drop(&mut self) {
        let mut map = self.flights.lock();
        let Some(current) = map.get(&self.key) else { return };
        // Clones are only taken under this lock, so the count cannot grow while we look:
        // two references are the map's and ours.
        if Arc::ptr_eq(current, &self.cell) && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2) {
            map.remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::time::Duration;

    use crate::Error;
    use crate::l1::Coherence;

    fn landed(v: u8) -> Landed {
        Landed { value: Arc::new(v), before: Coherence::new(false, Vec::new()).ticket("k") }
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_load_and_its_error() {
        let flights = Arc::new(Flights::default());
        let calls = Arc::new(AtomicUsize::new(0));
        let key: Arc<str> = "k".into();
        let tasks: Vec<_> = (0..50)
            .map(|_| {
                let (flights, calls, key) = (flights.clone(), calls.clone(), key.clone());
                tokio::spawn(async move {
                    flights
                        .run(&key, (TypeId::of::<u8>(), 0), || async {
                            calls.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                            Err::<Landed, _>(Error::config("boom"))
                        })
                        .await
                })
            })
            .collect();
        for task in tasks {
            let result = task.await.expect("task");
            assert!(result.expect_err("shared error").is_config());
        }
        assert_eq!(calls.load(Ordering::SeqCst), 1);
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_leader_hands_over_to_a_waiter() {
        let flights = Arc::new(Flights::default());
        let key: Arc<str> = "k".into();
        let leader = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move {
                flights
                    .run(&key, (TypeId::of::<u8>(), 0), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(landed(1))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        let waiter = {
            let (flights, key) = (flights.clone(), key.clone());
            tokio::spawn(async move { flights.run(&key, (TypeId::of::<u8>(), 0), || async { Ok(landed(2)) }).await })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        leader.abort();
        let value = waiter.await.expect("task").expect("value");
        assert_eq!(value.value.downcast_ref::<u8>(), Some(&2));
        assert_eq!(flights.len(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_sole_caller_leaves_nothing_behind() {
        let flights = Arc::new(Flights::default());
        let caller = {
            let flights = flights.clone();
            tokio::spawn(async move {
                let key: Arc<str> = "k".into();
                flights
                    .run(&key, (TypeId::of::<u8>(), 0), || async {
                        tokio::time::sleep(Duration::from_secs(3600)).await;
                        Ok(landed(1))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(1)).await;
        assert_eq!(flights.len(), 1);
        caller.abort();
        let _ = caller.await;
        assert_eq!(flights.len(), 0, "the entry of an abandoned load must be removed");
    }
}
