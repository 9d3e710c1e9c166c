//! Stamps: the generations of namespaces and tags (see [`crate::namespace`] for the scheme).
//!
//! - The **marks** a value carries are the generations of its namespace and tags when it was
//!   produced: captured before a load ([`Inner::capture_marks`]), judged at every read from
//!   either tier ([`Inner::verdict`]). A value produced before an invalidation is a miss,
//!   removed lazily.
//! - [`Stamps`] is this instance's knowledge of the current generations: what was read, when,
//!   and a version that lets L1 hits skip the check while nothing changed.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::future::{BoxFuture, join_all};

use super::Inner;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l2::{Conn, query_scripted};
use crate::metrics::NsCounters;
use crate::namespace::{BUMP, READ_SCRIPT, STAMP_TTL_MS};
use crate::tags::{Marks, Tag, stamp_id, stamp_key};
use crate::ttl::now_ms;

/// Most stamps one instance remembers; past it, stale ones are dropped (then all): forgetting
/// only costs a read.
const MAX_KNOWN: usize = 4096;

/// This instance's knowledge of stamps, keyed by stamp id (a namespace, or `APP:tag:NAME`).
///
/// An L1 hit must not pay a lookup here each time: an entry remembers the `version` under which
/// it was last found current, and is served without a check while `version` has not moved.
/// `version` moves whenever what is known changes, and every `refresh / 2` (a ticker); known
/// stamps are trusted for `refresh / 2`. A hit therefore relies on stamps read at most
/// `refresh` ago, as documented.
pub(crate) struct Stamps {
    /// Half of `stamp_refresh`: how long a read stamp is trusted, and the ticker's period.
    window: Duration,
    known: RwLock<HashMap<Arc<str>, Known>>,
    /// Raised by every forget: a read that started before one must not re-install what it read.
    epoch: AtomicU64,
    /// See above. Starts at 1 (0 means "never verified" in [`Marks::verified`](crate::tags::Marks)).
    version: Arc<AtomicU64>,
    /// Whether the ticker runs; without it, every hit is checked.
    ticking: AtomicBool,
}

#[derive(Debug, Clone, Copy)]
struct Known {
    generation: u64,
    /// When the read that learnt it was sent: the stamp was at least `generation` from then on.
    asked_at: Instant,
}

impl Stamps {
    pub(crate) fn new(refresh: Duration) -> Self {
        Self {
            window: refresh / 2,
            known: RwLock::default(),
            epoch: AtomicU64::new(0),
            version: Arc::new(AtomicU64::new(1)),
            ticking: AtomicBool::new(false),
        }
    }

    /// Starts the ticker on the current tokio runtime (none with a zero refresh, or outside a
    /// runtime: hits are then always checked). It stops when the cache is dropped.
    pub(crate) fn start_ticker(&self) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else { return };
        if self.window.is_zero() {
            return;
        }
        let (version, period) = (Arc::clone(&self.version), self.window);
        runtime.spawn(async move {
            let mut ticks = tokio::time::interval(period);
            ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            ticks.tick().await;
            loop {
                ticks.tick().await;
                if Arc::strong_count(&version) == 1 {
                    break;
                }
                version.fetch_add(1, Ordering::AcqRel);
            }
        });
        self.ticking.store(true, Ordering::Release);
    }

    /// The current version, when hits may rely on it.
    pub(crate) fn version(&self) -> Option<u64> {
        self.ticking.load(Ordering::Acquire).then(|| self.version.load(Ordering::Acquire))
    }

    /// The generation of `id` if it was learnt less than `refresh / 2` before `now`.
    pub(crate) fn fresh(&self, id: &str, now: Instant) -> Option<u64> {
        let known = *self.read().get(id)?;
        (now.saturating_duration_since(known.asked_at) < self.window).then_some(known.generation)
    }

    pub(crate) fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Records what a read (or a bump) sent at `asked_at` found. Generations never go down here:
    /// a stamp that went back in Redis (a failover lost a write) cannot resurrect what this
    /// instance already knows to be old.
    pub(crate) fn learn(&self, id: &str, generation: u64, asked_at: Instant, epoch: u64) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if known.len() >= MAX_KNOWN && !known.contains_key(id) {
            let window = self.window;
            known.retain(|_, k| asked_at.saturating_duration_since(k.asked_at) < window);
            if known.len() >= MAX_KNOWN {
                known.clear();
            }
        }
        let before = known.get(id).map(|k| k.generation);
        let entry = known.entry(id.into()).or_insert(Known { generation, asked_at });
        entry.generation = entry.generation.max(generation);
        entry.asked_at = entry.asked_at.max(asked_at);
        if before != Some(entry.generation) {
            // After the change: a check that sees the new version also sees the new generation.
            self.version.fetch_add(1, Ordering::AcqRel);
        }
    }

    pub(crate) fn forget(&self, id: Option<&str>) {
        let mut known = self.known.write().unwrap_or_else(|p| p.into_inner());
        match id {
            Some(id) => {
                known.remove(id);
            }
            None => known.clear(),
        }
        self.epoch.fetch_add(1, Ordering::AcqRel);
        self.version.fetch_add(1, Ordering::AcqRel);
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, HashMap<Arc<str>, Known>> {
        self.known.read().unwrap_or_else(|p| p.into_inner())
    }
}

/// Whether a stored value may be served, given its marks and the stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Current,
    /// Produced before an invalidation of its namespace or of one of its tags.
    Invalidated,
    /// A stamp could not be read: do not serve, do not remove.
    Unknown,
}

impl Inner {
    /// The marks for a value about to be produced for `key`: generations as known now (read
    /// from Redis when not fresh). When one cannot be read, the error comes with marks that
    /// record it as 0, which makes the value invalid wherever it is read: it cannot be checked.
    pub(crate) async fn capture_marks(
        &self,
        key: &Key,
        tags: &[Tag],
    ) -> std::result::Result<Arc<Marks>, (Arc<Marks>, Error)> {
        let ids = std::iter::once(key.namespace()).chain(tags.iter().map(Tag::id));
        let mut first_error = None;
        let mut gens = self.generations(ids).await.into_iter().map(|g| {
            g.unwrap_or_else(|err| {
                first_error.get_or_insert(err);
                0
            })
        });
        let ns_gen = gens.next().unwrap_or(0);
        let tags = tags.iter().cloned().zip(gens).collect();
        let mut marks = Marks::new(now_ms(), ns_gen, tags);
        match first_error {
            None => Ok(Arc::new(marks)),
            Some(err) => {
                marks.provisional = err.is_unavailable();
                Err((Arc::new(marks), err))
            }
        }
    }

    /// Marks for a caller's write (`set`, `set_many`, `set_not_found`). A stamp that cannot be
    /// read fails the write rather than storing a value every reader would discard; this
    /// instance's L1 copy goes too, as when the write itself fails.
    pub(crate) async fn write_marks(&self, key: &Key, tags: &[Tag]) -> Result<Arc<Marks>> {
        self.capture_marks(key, tags).await.map_err(|(_, err)| {
            self.l1.remove(key.as_str());
            err
        })
    }

    /// Compares a value's marks with the current stamps.
    pub(crate) async fn verdict(&self, key: &Key, marks: &Marks) -> Verdict {
        if marks.provisional {
            // Loaded from the source during an outage: good while the stamps stay unreadable
            // (nobody can invalidate through Redis either), dropped once they can be read.
            let ids = std::iter::once(key.namespace()).chain(marks.tags.iter().map(|(t, _)| t.id()));
            let readable = self.generations(ids).await.iter().all(Result::is_ok);
            return if readable { Verdict::Invalidated } else { Verdict::Current };
        }
        if marks.ns_gen == 0 {
            // Unknown when written (a version-1 envelope, or Redis was away): cannot be trusted.
            return Verdict::Invalidated;
        }
        // Read before the checks: a change during them (a stamp queued for replay forgets it,
        // which moves the version) leaves the entry to be checked again.
        let version = self.stamps.version();
        if self.recovery.any_stamp()
            && (self.recovery.holds_stamp(key.namespace())
                || marks.tags.iter().any(|(t, _)| self.recovery.holds_stamp(t.id())))
        {
            // An invalidation of it is queued for replay (see `cache/recovery.rs`).
            return Verdict::Unknown;
        }
        if self.settled_current(marks) {
            return Verdict::Current;
        }
        let recorded =
            std::iter::once((key.namespace(), marks.ns_gen)).chain(marks.tags.iter().map(|(t, g)| (t.id(), *g)));
        let now = Instant::now();
        let mut unsure = Vec::new();
        for (id, generation) in recorded {
            match self.stamps.fresh(id, now) {
                Some(current) if current > generation => return Verdict::Invalidated,
                Some(_) => {}
                None => unsure.push((id, generation)),
            }
        }
        if unsure.is_empty() {
            marks.verified.store(version.unwrap_or(0), Ordering::Release);
            return Verdict::Current;
        }
        let current = self.generations(unsure.iter().map(|(id, _)| *id)).await;
        let mut verdict = Verdict::Current;
        for ((_, generation), current) in unsure.into_iter().zip(current) {
            match current {
                Ok(current) if current > generation => return Verdict::Invalidated,
                Ok(_) => {}
                Err(_) => verdict = Verdict::Unknown,
            }
        }
        if verdict == Verdict::Current {
            marks.verified.store(version.unwrap_or(0), Ordering::Release);
        }
        verdict
    }

    /// Whether `marks` were found current since the stamps last changed: the verdict of most
    /// reads, reached without building the full check ([`verdict`](Self::verdict) starts
    /// with it). `false` means "check", not "invalidated".
    pub(crate) fn settled_current(&self, marks: &Marks) -> bool {
        !marks.provisional
            && marks.ns_gen != 0
            && self.stamps.version().is_some_and(|v| marks.verified.load(Ordering::Acquire) == v)
    }

    /// L1 hook: whether an entry may be served. An invalidated one is removed and counted.
    pub(crate) async fn l1_current(&self, key: &Key, marks: &Marks, ns: &NsCounters) -> bool {
        match self.verdict(key, marks).await {
            Verdict::Current => true,
            Verdict::Invalidated => {
                NsCounters::inc(&ns.invalidated);
                self.l1.remove(key.as_str());
                false
            }
            Verdict::Unknown => false,
        }
    }

    /// L2 hook: whether a decoded value may be served. An invalidated one is counted as a miss
    /// and removed from Redis if it still holds these bytes (a newer value written meanwhile
    /// stays): an absent key lets the next load take the lease, so other processes wait for it
    /// instead of all loading.
    pub(crate) async fn l2_current(&self, key: &Key, marks: &Marks, ns: &NsCounters, bytes: &[u8]) -> bool {
        match self.verdict(key, marks).await {
            Verdict::Current => return true,
            Verdict::Invalidated => NsCounters::inc(&ns.invalidated),
            Verdict::Unknown => {
                NsCounters::inc(&ns.l2_misses);
                return false;
            }
        }
        NsCounters::inc(&ns.l2_misses);
        self.l1.remove(key.as_str());
        let removed = self.delete_if_equal(key, bytes).await;
        if let Err(err) = removed {
            tracing::debug!(key = %key, error = %err, "could not remove an invalidated value; it expires by its TTL");
        }
        false
    }

    /// The current generation of each stamp id: known fresh, or read (concurrently) from Redis.
    /// Boxed: it sits under every read, and an unboxed future this deep overflows the compiler's
    /// `Send` check in callers that spawn a read.
    fn generations<'a>(&'a self, ids: impl Iterator<Item = &'a str>) -> BoxFuture<'a, Vec<Result<u64>>> {
        let now = Instant::now();
        let reads: Vec<_> = ids
            .map(|id| async move {
                match self.stamps.fresh(id, now) {
                    Some(g) => Ok(g),
                    None => self.read_stamp(id).await,
                }
            })
            .collect();
        Box::pin(join_all(reads))
    }

    async fn read_stamp(&self, id: &str) -> Result<u64> {
        let (epoch, asked_at) = (self.stamps.epoch(), Instant::now());
        let key = stamp_key(id);
        let k = key.as_str();
        // Tracked, so that a change of the stamp anywhere reaches this instance at once; a
        // generation read the usual way (tracking not up for its node) is used, not remembered.
        let (raw, tracked): (String, bool) = self
            .call_tracked(k, "stamp read", |mut c| async move {
                let mut invocation = READ_SCRIPT.key(k);
                invocation.arg(STAMP_TTL_MS);
                let mut pipe = redis::pipe();
                c.track_next(&mut pipe);
                pipe.invoke_script(&invocation);
                query_scripted::<(String,)>(&pipe, &invocation, &mut c).await.map(|(raw,)| raw)
            })
            .await
            .inspect_err(|err| tracing::debug!(stamp = %key, error = %err, "could not read stamp"))?;
        let generation = raw.parse::<u64>().map_err(|_| {
            tracing::warn!(stamp = %key, value = %raw, "stamp is not a generation; invalidate it to repair it");
            Error::corrupt(format!("stamp {key} holds {raw:?}, not a generation"))
        })?;
        if tracked {
            self.stamps.learn(id, generation, asked_at, epoch);
        }
        Ok(generation)
    }

    pub(crate) async fn bump(&self, stamp: &str) -> Result<u64> {
        // Forgotten first: with NOLOOP this instance hears nothing of its own bump, and the new
        // generation may not be learnt below (another stamp forgotten meanwhile, the call
        // failed or abandoned once sent): the next check then reads it from Redis.
        if let Some(id) = stamp_id(stamp) {
            self.stamps.forget(Some(id));
        }
        let (epoch, asked_at) = (self.stamps.epoch(), Instant::now());
        if let Some((replicas, ms)) = self.confirmation() {
            // Confirmed by replicas (see `delete_now`): on the plain connection, so the new
            // generation is not remembered; the next check reads it.
            let confirmed = |mut c: Conn| async move {
                let mut pipe = redis::pipe();
                pipe.cmd("EVAL").arg(BUMP).arg(1).arg(stamp).arg(STAMP_TTL_MS).cmd("WAIT").arg(replicas).arg(ms);
                pipe.query_async::<(u64, i64)>(&mut c).await
            };
            let (generation, reached) = self.call_for(stamp, "stamp bump", confirmed).await?;
            if reached < i64::from(replicas) {
                return Err(Error::unconfirmed("stamp bump", reached, replicas, ms));
            }
            return Ok(generation);
        }
        // Tracked like a read: the new generation is remembered only if Redis will tell this
        // instance of the next bump by anyone.
        let (generation, tracked): (u64, bool) = self
            .call_tracked(stamp, "stamp bump", |mut c| async move {
                let mut pipe = redis::pipe();
                c.track_next(&mut pipe);
                pipe.cmd("EVAL").arg(BUMP).arg(1).arg(stamp).arg(STAMP_TTL_MS);
                pipe.query_async::<(u64,)>(&mut c).await.map(|(generation,)| generation)
            })
            .await?;
        if tracked && let Some(id) = stamp_id(stamp) {
            self.stamps.learn(id, generation, asked_at, epoch);
        }
        Ok(generation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_trusted_for_half_the_refresh_interval() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        assert_eq!(stamps.fresh("a", t0), None);
        stamps.learn("a", 10, t0, stamps.epoch());
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(499)), Some(10));
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(500)), None);
        // A zero interval means: always ask Redis.
        let strict = Stamps::new(Duration::ZERO);
        strict.learn("a", 10, t0, strict.epoch());
        assert_eq!(strict.fresh("a", t0), None);
    }

    #[test]
    fn generations_never_go_down_and_forgets_win_over_reads_in_flight() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        stamps.learn("a", 10, t0, stamps.epoch());
        stamps.learn("a", 7, t0 + Duration::from_millis(300), stamps.epoch());
        assert_eq!(stamps.fresh("a", t0 + Duration::from_millis(700)), Some(10));
        // A read sent before a forget must not re-install its (possibly old) answer.
        let epoch = stamps.epoch();
        stamps.forget(Some("a"));
        stamps.learn("a", 10, t0, epoch);
        assert_eq!(stamps.fresh("a", t0), None);
        stamps.learn("b", 1, t0, stamps.epoch());
        stamps.forget(None);
        assert_eq!(stamps.fresh("b", t0), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_version_moves_on_every_change_and_every_half_interval() {
        let stamps = Stamps::new(Duration::from_secs(1));
        assert_eq!(stamps.version(), None, "no ticker yet: hits are always checked");
        stamps.start_ticker();
        let v0 = stamps.version().expect("ticking");
        let t0 = Instant::now();
        stamps.learn("a", 10, t0, stamps.epoch());
        let v1 = stamps.version().expect("ticking");
        assert!(v1 > v0, "a new stamp");
        stamps.learn("a", 10, t0, stamps.epoch());
        assert_eq!(stamps.version(), Some(v1), "nothing changed");
        stamps.learn("a", 11, t0, stamps.epoch());
        let v2 = stamps.version().expect("ticking");
        assert!(v2 > v1, "a higher generation");
        stamps.forget(Some("a"));
        let v3 = stamps.version().expect("ticking");
        assert!(v3 > v2, "a forget");
        tokio::time::sleep(Duration::from_millis(510)).await;
        assert!(stamps.version().expect("ticking") > v3, "the ticker");
        // A zero interval: no ticker, every hit is checked.
        let strict = Stamps::new(Duration::ZERO);
        strict.start_ticker();
        assert_eq!(strict.version(), None);
    }

    #[test]
    fn the_stamp_cache_is_bounded() {
        let stamps = Stamps::new(Duration::from_secs(1));
        let t0 = Instant::now();
        for i in 0..MAX_KNOWN * 2 {
            stamps.learn(&format!("ns{i}"), 1, t0, stamps.epoch());
        }
        assert!(stamps.read().len() <= MAX_KNOWN);
        assert_eq!(stamps.fresh(&format!("ns{}", MAX_KNOWN * 2 - 1), t0), Some(1));
    }
}
