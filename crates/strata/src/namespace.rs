//! Namespace and tag invalidation in O(1), checked lazily.
//!
//! [`Cache::invalidate_namespace`] and [`Cache::invalidate_tag`] raise one stamp key in Redis
//! with one command (an `EVAL` of a short script), whatever the number of keys: nothing is
//! scanned or deleted. The stamp holds a generation, `max(previous + 1, Redis TIME in ms)`: it
//! only grows, and a stamp that is lost (evicted, flushed) is re-created by the next read at
//! Redis's current time, above every generation handed out before — so losing it invalidates
//! (safe) instead of resurrecting old values.
//!
//! Every value records the generations of its namespace and tags as its writer knew them
//! **before** producing it (before the loader ran), see [`Marks`]. A read, from either tier,
//! compares them with the current stamps: a value produced before an invalidation is a miss
//! (counted as `invalidated`, removed lazily). Generations are compared, never clocks, so
//! clock skew between machines cannot make an old value look new.
//!
//! Stamps are cached per instance for [`CacheBuilder::stamp_refresh`](crate::CacheBuilder::stamp_refresh)
//! (default 1 s). The instance that invalidates knows at once; **another instance stops serving
//! old values at most `stamp_refresh` after the invalidation returned** (plus one round trip).
//! When a stamp cannot be read (Redis unreachable), values that depend on it are not served.

use std::future::Future;
use std::sync::atomic::Ordering;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use futures::future::{BoxFuture, join_all};

use crate::cache::{Cache, CacheValue};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::metrics::NsCounters;
use crate::tags::{Marks, Tag, dedup_tags, namespace_stamp_key, stamp_id, stamp_key};
use crate::tiers::{DELETE_IF_EQUAL, now_ms};
use crate::ttl::{MAX_TTL, Ttl};

/// Raises a stamp: `max(old + 1, now in ms)`, as a decimal string. A non-numeric value (written
/// by someone else) counts as 0, so an invalidation also repairs it. KEYS: stamp. ARGV: ttl ms.
const BUMP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
local new = string.format('%d', math.max(old + 1, now))
redis.call('SET', KEYS[1], new, 'PX', ARGV[1])
return new";

/// Reads a stamp, creating it at Redis's current time when absent. Its TTL is topped up when
/// less than half is left: rarely, since every write is also seen by invalidation listeners.
/// KEYS: stamp. ARGV: ttl ms.
const READ_OR_CREATE: &str = r"
local v = redis.call('GET', KEYS[1])
if v then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) / 2 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
  return v
end
local t = redis.call('TIME')
local now = string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000))
redis.call('SET', KEYS[1], now, 'PX', ARGV[1])
return now";

/// A stamp's TTL: no key goes without one, and a stamp still in use always has more than
/// [`MAX_TTL`] left, so it outlives every value produced under it. One that does expire (unused
/// for years) or is evicted is re-created above every older generation.
const STAMP_TTL_MS: u64 = 2 * MAX_TTL.as_millis() as u64;

/// Raises a stamp key the way [`Cache::invalidate_namespace`] does, over any synchronous
/// connection to the node that holds it: for tools (`strata invalidate --stamp`). Returns the new
/// generation. `stamp_key` comes from [`namespace_stamp_key`] or [`Tag::stamp_key`].
pub fn bump_stamp(conn: &mut dyn redis::ConnectionLike, stamp_key: &str) -> redis::RedisResult<u64> {
    redis::cmd("EVAL").arg(BUMP).arg(1).arg(stamp_key).arg(STAMP_TTL_MS).query(conn)
}

static READ_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(READ_OR_CREATE));

/// Whether a stored value may be served, given its marks and the stamps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Current,
    /// Produced before an invalidation of its namespace or of one of its tags.
    Invalidated,
    /// A stamp could not be read: do not serve, do not remove.
    Unknown,
}

impl Cache {
    /// Invalidates every value of a namespace (`app:vN:entity`, as [`Key::namespace`] returns
    /// it, or a single first segment), on every instance, in O(1): one Redis command raises the
    /// namespace's stamp (`{NS}:stamp`); no key is scanned or deleted. Old values are misses from
    /// then on — at once on this instance, within
    /// [`stamp_refresh`](crate::CacheBuilder::stamp_refresh) on the others — and expire by
    /// their TTL. A load that started before this call cannot cache its value over it.
    ///
    /// Errors: [`is_invalid_key`](Error::is_invalid_key) for a malformed namespace, or an
    /// unavailability error when Redis could not be written (nothing was invalidated).
    ///
    /// To retire every namespace of an app at once (a deploy that changes value types), build
    /// keys with the next schema version instead: [`KeySchema::bumped`](crate::KeySchema::bumped).
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<()> {
        let outcome = match namespace_stamp_key(namespace) {
            Ok(stamp) => self.bump(&stamp).await.map(drop),
            Err(err) => Err(err),
        };
        self.audit("invalidate_namespace", namespace, &outcome);
        outcome?;
        NsCounters::inc(&self.inner.metrics.ns(namespace).invalidations);
        Ok(())
    }

    /// Invalidates every value written with `tag` ([`set_tagged`](Self::set_tagged),
    /// [`get_or_set_tagged`](Self::get_or_set_tagged)), in any namespace, like
    /// [`invalidate_namespace`](Self::invalidate_namespace): one command on the tag's stamp key.
    pub async fn invalidate_tag(&self, tag: &Tag) -> Result<()> {
        let outcome = self.bump(&tag.stamp_key()).await.map(drop);
        self.audit("invalidate_tag", &format!("{}:{}", tag.app(), tag.name()), &outcome);
        outcome
    }

    /// [`set`](Self::set) for a value that carries tags (at most [`MAX_TAGS`](crate::MAX_TAGS)),
    /// so that [`invalidate_tag`](Self::invalidate_tag) of any of them invalidates it.
    pub async fn set_tagged<T: CacheValue>(
        &self,
        key: &Key,
        value: &T,
        ttl: impl Into<Ttl>,
        tags: &[Tag],
    ) -> Result<()> {
        let tags = dedup_tags(tags)?;
        self.set_with_tags(key, value, ttl.into(), &tags).await
    }

    /// [`get_or_set`](Self::get_or_set) whose loaded value carries `tags`. Concurrent calls for
    /// one key share one load; the value is cached with the tags of the call that ran it.
    pub async fn get_or_set_tagged<T, F, Fut, E>(
        &self,
        key: &Key,
        ttl: impl Into<Ttl>,
        tags: &[Tag],
        loader: F,
    ) -> Result<T>
    where
        T: CacheValue,
        F: FnOnce() -> Fut,
        Fut: Future<Output = std::result::Result<T, E>>,
        E: Into<Box<dyn std::error::Error + Send + Sync>>,
    {
        let tags = dedup_tags(tags)?;
        let load = || async move { loader().await.map(Some) };
        match self.get_or_load::<T, _, _, _>(key, ttl.into(), &tags, load, false).await? {
            Some(v) => Ok(v),
            None => Err(Error::loader("loader produced no value")),
        }
    }

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
            if let Some(l1) = &self.inner.l1 {
                l1.remove(key.as_str());
            }
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
        // Read before the check: a change during it leaves the entry to be checked again.
        let version = self.inner.stamps.version();
        if version.is_some_and(|v| marks.verified.load(Ordering::Acquire) == v) {
            return Verdict::Current;
        }
        let recorded =
            std::iter::once((key.namespace(), marks.ns_gen)).chain(marks.tags.iter().map(|(t, g)| (t.id(), *g)));
        let now = Instant::now();
        let mut unsure = Vec::new();
        for (id, generation) in recorded {
            match self.inner.stamps.fresh(id, now) {
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

    /// L1 hook: whether an entry may be served. An invalidated one is removed and counted.
    pub(crate) async fn l1_current(&self, key: &Key, marks: &Marks, ns: &NsCounters) -> bool {
        match self.verdict(key, marks).await {
            Verdict::Current => true,
            Verdict::Invalidated => {
                NsCounters::inc(&ns.invalidated);
                if let Some(l1) = &self.inner.l1 {
                    l1.remove(key.as_str());
                }
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
        if let Some(l1) = &self.inner.l1 {
            l1.remove(key.as_str());
        }
        let script = &redis::Script::new(DELETE_IF_EQUAL);
        let k = key.as_str();
        let removed =
            self.l2_call_for(k, "EVALSHA", |mut c| async move {
                script.key(k).arg(bytes).invoke_async::<i64>(&mut c).await
            })
            .await;
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
                match self.inner.stamps.fresh(id, now) {
                    Some(g) => Ok(g),
                    None => self.read_stamp(id).await,
                }
            })
            .collect();
        Box::pin(join_all(reads))
    }

    async fn read_stamp(&self, id: &str) -> Result<u64> {
        let (epoch, asked_at) = (self.inner.stamps.epoch(), Instant::now());
        let key = stamp_key(id);
        let k = key.as_str();
        let raw: String = self
            .l2_call_for(k, "stamp read", |mut c| async move {
                READ_SCRIPT.key(k).arg(STAMP_TTL_MS).invoke_async(&mut c).await
            })
            .await
            .inspect_err(|err| tracing::debug!(stamp = %key, error = %err, "could not read stamp"))?;
        let generation = raw.parse::<u64>().map_err(|_| {
            tracing::warn!(stamp = %key, value = %raw, "stamp is not a generation; invalidate it to repair it");
            Error::corrupt(format!("stamp {key} holds {raw:?}, not a generation"))
        })?;
        self.inner.stamps.learn(id, generation, asked_at, epoch);
        Ok(generation)
    }

    async fn bump(&self, stamp: &str) -> Result<u64> {
        let (epoch, asked_at) = (self.inner.stamps.epoch(), Instant::now());
        let generation: u64 = self
            .l2_call_for(stamp, "stamp bump", |mut c| async move {
                redis::cmd("EVAL").arg(BUMP).arg(1).arg(stamp).arg(STAMP_TTL_MS).query_async(&mut c).await
            })
            .await?;
        if let Some(id) = stamp_id(stamp) {
            self.inner.stamps.learn(id, generation, asked_at, epoch);
        }
        Ok(generation)
    }
}
