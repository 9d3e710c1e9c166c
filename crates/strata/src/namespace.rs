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
//! **before** producing it (before the loader ran), see [`Marks`](crate::tags::Marks). A read, from either tier,
//! compares them with the current stamps: a value produced before an invalidation is a miss
//! (counted as `invalidated`, removed lazily). Generations are compared, never clocks, so
//! clock skew between machines cannot make an old value look new.
//!
//! Stamps are cached per instance for [`CacheBuilder::stamp_refresh`](crate::CacheBuilder::stamp_refresh)
//! (default 1 s). The instance that invalidates knows at once; **another instance stops serving
//! old values at most `stamp_refresh` after the invalidation returned** (plus one round trip).
//! When a stamp cannot be read (Redis unreachable), values that depend on it are not served.

use std::future::Future;
use std::sync::LazyLock;

use crate::cache::{Cache, CacheValue};
use crate::error::{Error, Result};
use crate::key::Key;
use crate::tags::{Tag, dedup_tags, namespace_stamp_key};
use crate::telemetry::traced;
use crate::ttl::{MAX_TTL, Ttl};

/// Raises a stamp: `max(old + 1, now in ms)`, as a decimal string. A non-numeric value (written
/// by someone else) counts as 0, so an invalidation also repairs it. The new value is read back
/// last, as in [`READ_OR_CREATE`]: over a tracking connection, that read is what Redis
/// remembers. KEYS: stamp. ARGV: ttl ms.
pub(crate) const BUMP: &str = r"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local old = tonumber(redis.call('GET', KEYS[1]) or '0') or 0
redis.call('SET', KEYS[1], string.format('%d', math.max(old + 1, now)), 'PX', ARGV[1])
return redis.call('GET', KEYS[1])";

/// Reads a stamp, creating it at Redis's current time when absent. Its TTL is topped up when
/// less than half is left: rarely, since every write is also seen by invalidation listeners.
/// The stamp is read last: run over a tracking connection after `CLIENT CACHING YES`, that read
/// is what Redis remembers (a write of the key by the connection itself, with `NOLOOP`, makes
/// Redis forget an earlier one; see [`crate::invalidation`]). KEYS: stamp. ARGV: ttl ms.
const READ_OR_CREATE: &str = r"
if redis.call('EXISTS', KEYS[1]) == 1 then
  if redis.call('PTTL', KEYS[1]) < tonumber(ARGV[1]) / 2 then redis.call('PEXPIRE', KEYS[1], ARGV[1]) end
else
  local t = redis.call('TIME')
  redis.call('SET', KEYS[1], string.format('%d', tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)), 'PX', ARGV[1])
end
return redis.call('GET', KEYS[1])";

/// A stamp's TTL: no key goes without one, and a stamp still in use always has more than
/// [`MAX_TTL`] left, so it outlives every value produced under it. One that does expire (unused
/// for years) or is evicted is re-created above every older generation.
pub(crate) const STAMP_TTL_MS: u64 = 2 * MAX_TTL.as_millis() as u64;

/// Raises a stamp key the way [`Cache::invalidate_namespace`] does, over any synchronous
/// connection to the node that holds it: for tools (`strata invalidate --stamp`). Returns the new
/// generation. `stamp_key` comes from [`namespace_stamp_key`] or [`Tag::stamp_key`].
pub fn bump_stamp(conn: &mut dyn redis::ConnectionLike, stamp_key: &str) -> redis::RedisResult<u64> {
    redis::cmd("EVAL").arg(BUMP).arg(1).arg(stamp_key).arg(STAMP_TTL_MS).query(conn)
}

pub(crate) static READ_SCRIPT: LazyLock<redis::Script> = LazyLock::new(|| redis::Script::new(READ_OR_CREATE));

impl Cache {
    /// Invalidates every value of a namespace (`app:vN:entity`, as [`Key::namespace`] returns
    /// it, or a single first segment), on every instance, in O(1): one Redis command raises the
    /// namespace's stamp (`{NS}:stamp`); no key is scanned or deleted. Old values are misses from
    /// then on — at once on this instance, within
    /// [`stamp_refresh`](crate::CacheBuilder::stamp_refresh) on the others — and expire by
    /// their TTL. A load that started before this call cannot cache its value over it.
    ///
    /// Errors: [`is_invalid_key`](Error::is_invalid_key) for a malformed namespace; an
    /// unavailability error when Redis could not be written. Then, unless auto-recovery is off
    /// or its queue full, the invalidation is queued in this instance and replayed when Redis
    /// is back ([`Error::is_queued`], [`AutoRecovery`](crate::AutoRecovery)); meanwhile this
    /// instance serves no value of the namespace.
    ///
    /// To retire every namespace of an app at once (a deploy that changes value types), build
    /// keys with the next schema version instead: [`KeySchema::bumped`](crate::KeySchema::bumped).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// # let redis = strata_cluster::RedisServer::start()?;
    /// use strata::{Cache, KeySchema, Ttl};
    ///
    /// let cache = Cache::builder().redis_url(redis.url()).build().await?;
    /// let shop = KeySchema::new("shop", 1)?;
    /// let (ada, bob) = (shop.key("user", "1")?, shop.key("user", "2")?);
    /// cache.set(&ada, &"Ada".to_owned(), Ttl::Medium).await?;
    /// cache.set(&bob, &"Bob".to_owned(), Ttl::Medium).await?;
    ///
    /// // One command, whatever the number of users cached.
    /// cache.invalidate_namespace(ada.namespace()).await?; // "shop:v1:user"
    /// assert_eq!(cache.get::<String>(&ada).await?, None);
    /// assert_eq!(cache.get::<String>(&bob).await?, None);
    /// // Values written afterwards are current.
    /// cache.set(&ada, &"Ada L.".to_owned(), Ttl::Medium).await?;
    /// assert_eq!(cache.get::<String>(&ada).await?.as_deref(), Some("Ada L."));
    /// # Ok(()) }
    /// ```
    pub async fn invalidate_namespace(&self, namespace: &str) -> Result<()> {
        traced!("strata.invalidate_namespace", namespace, Write, {
            let outcome = match namespace_stamp_key(namespace) {
                Ok(stamp) => self.inner().invalidate_stamp(&stamp).await,
                Err(err) => Err(err),
            };
            self.audit("invalidate_namespace", namespace, &outcome);
            outcome?;
            self.inner().count(namespace, |ns| &ns.invalidations);
            Ok(())
        })
    }

    /// Invalidates every value written with `tag` ([`set_tagged`](Self::set_tagged),
    /// [`get_or_set_tagged`](Self::get_or_set_tagged)), in any namespace, like
    /// [`invalidate_namespace`](Self::invalidate_namespace): one command on the tag's stamp key.
    pub async fn invalidate_tag(&self, tag: &Tag) -> Result<()> {
        traced!("strata.invalidate_tag", None::<&str>, Write, {
            let outcome = self.inner().invalidate_stamp(&tag.stamp_key()).await;
            self.audit("invalidate_tag", &format!("{}:{}", tag.app(), tag.name()), &outcome);
            outcome
        })
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
        traced!("strata.set_tagged", key.namespace(), Write, {
            let tags = dedup_tags(tags)?;
            self.set_with_tags(key, value, ttl.into(), &tags).await
        })
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
        let load = || async move { loader().await.map(Some) };
        traced!("strata.get_or_set_tagged", key.namespace(), Load, {
            let tags = dedup_tags(tags)?;
            match self.inner().get_or_load::<T, _, _, _>(key, ttl.into(), &tags, load, false).await? {
                Some(v) => Ok(v),
                None => Err(Error::loader("loader produced no value")),
            }
        })
    }
}
