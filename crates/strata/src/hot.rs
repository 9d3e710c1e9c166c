//! Hot keys: a key read so often that its Redis node becomes the bottleneck is replicated over
//! K copies in other cluster slots. The contract (naming, reads, writes, coherence bound) is
//! documented on [`HotKeys`], the public face of this module.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::join_all;
use rand::Rng;
use redis::cluster_routing::Slot as HashSlot;

use crate::cache::{Cache, CacheValue};
use crate::codec::Meta;
use crate::error::{Error, Result};
use crate::key::Key;
use crate::l1::{Checks, Slot};
use crate::metrics::NsCounters;
use crate::namespace::Verdict;
use crate::tiers::{expiry_ms, l1_ttl, ttl_millis};

/// Most copies of one hot key.
pub const MAX_HOT_COPIES: usize = 64;

/// Longest allowed [`HotKeys::copy_ttl`]: copies exist to spread load, not to cache longer.
pub const MAX_HOT_COPY_TTL: Duration = Duration::from_secs(300);

/// Which keys are hot, and for how long their copies live. Give it to
/// [`CacheBuilder::hot_keys`](crate::CacheBuilder::hot_keys); keys can also be marked at run time
/// with [`Cache::mark_hot`].
///
/// A hot key is replicated over K copies in other cluster slots (so, on a cluster, mostly on
/// other nodes), and each L2 read picks one copy at random:
///
/// - A copy of `KEY` is named `KEY:~hot:N`; the numbers N are the first K, counting from 0,
///   whose slots differ from the key's and from each other's. Every instance computes the same
///   names ([`hot_copy_keys`]), and a pattern invalidation of the namespace
///   (`app:v1:entity:*`) matches them too.
/// - **Reads** (`get`, `get_or_set`, `get_or_set_optional`) of a hot key, after an L1 miss,
///   read one random copy. On a copy miss they fall back to the key itself (and the loader),
///   then refill that copy with `SET NX` (never over a copy written meanwhile); when the copy
///   read fails, nothing is refilled. `get_many` and
///   `get_or_set_many` read the key itself.
/// - **Writes**: `set` writes the new value to every copy; `set_not_found`, `delete` and
///   `set_many` delete every copy.
/// - **Coherence bound**: a copy lives at most [`copy_ttl`](Self::copy_ttl) (default 5 s), and
///   an L1 entry filled from a copy never outlives the copy. So a write that does not update
///   the copies (made by an instance that does not know the key is hot, directly in Redis, by
///   `get_or_set_many`, or racing with a refill) is seen by every reader at most `copy_ttl`
///   after it completes. Keep `copy_ttl` to the staleness you can accept.
///
/// ```
/// # fn demo() -> strata::Result<()> {
/// use std::time::Duration;
/// let schema = strata::KeySchema::new("shop", 1)?;
/// let hot = strata::HotKeys::new()
///     .key(&schema.key("config", "flags")?, 8)   // one key, 8 copies
///     .namespace(schema.namespace("banner")?, 4) // every key of a namespace, 4 copies
///     .copy_ttl(Duration::from_secs(2));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HotKeys {
    keys: HashMap<String, usize>,
    namespaces: HashMap<String, usize>,
    copy_ttl: Duration,
}

impl Default for HotKeys {
    fn default() -> Self {
        Self { keys: HashMap::new(), namespaces: HashMap::new(), copy_ttl: Duration::from_secs(5) }
    }
}

impl HotKeys {
    /// No hot keys; copies live 5 s.
    pub fn new() -> Self {
        Self::default()
    }

    /// Replicates `key` over `copies` copies (1 to [`MAX_HOT_COPIES`]).
    pub fn key(mut self, key: &Key, copies: usize) -> Self {
        self.keys.insert(key.as_str().to_owned(), copies);
        self
    }

    /// Replicates every key of `namespace` (`app:vN:entity`) over `copies` copies.
    pub fn namespace(mut self, namespace: impl Into<String>, copies: usize) -> Self {
        self.namespaces.insert(namespace.into(), copies);
        self
    }

    /// The longest a copy lives, hence the longest a write that skipped the copies can go
    /// unseen (default 5 s, at most [`MAX_HOT_COPY_TTL`]).
    pub fn copy_ttl(mut self, ttl: Duration) -> Self {
        self.copy_ttl = ttl;
        self
    }

    pub(crate) fn validate(&self) -> Result<()> {
        if let Some(n) = self.keys.values().chain(self.namespaces.values()).find(|n| !valid_copies(**n)) {
            return Err(Error::config(format!("hot key copies must be 1 to {MAX_HOT_COPIES}, got {n}")));
        }
        if self.copy_ttl < Duration::from_millis(1) || self.copy_ttl > MAX_HOT_COPY_TTL {
            return Err(Error::config(format!("hot copy ttl must be 1 ms to {MAX_HOT_COPY_TTL:?}")));
        }
        Ok(())
    }
}

fn valid_copies(n: usize) -> bool {
    (1..=MAX_HOT_COPIES).contains(&n)
}

/// What separates a hot key from its copy number in a copy's name.
const COPY_INFIX: &str = ":~hot:";

/// The key a hot copy's name belongs to (`None`: not a copy's name).
pub(crate) fn hot_copy_of(name: &str) -> Option<&str> {
    let (key, n) = name.rsplit_once(COPY_INFIX)?;
    (!n.is_empty() && n.bytes().all(|b| b.is_ascii_digit())).then_some(key)
}

/// The names of the first `copies` copies of `key` (see [`HotKeys`]): each in a cluster slot of
/// its own, none in the key's slot. Tools that delete keys behind Strata's back
/// should delete these too (a pattern on the key's namespace matches them).
pub fn hot_copy_keys(key: &str, copies: usize) -> Vec<String> {
    let mut slots = vec![HashSlot::for_key(key)];
    let mut out = Vec::with_capacity(copies);
    // 16,384 slots: the search ends after about `copies` tries; the bound only guards the loop.
    for n in 0..copies.saturating_mul(64).max(64) {
        if out.len() == copies {
            break;
        }
        let name = format!("{key}{COPY_INFIX}{n}");
        let slot = HashSlot::for_key(&name);
        if !slots.contains(&slot) {
            slots.push(slot);
            out.push(name);
        }
    }
    out
}

/// The hot keys of one cache: configured ones and those marked at run time.
#[derive(Debug)]
pub(crate) struct HotRegistry {
    config: HotKeys,
    marked: RwLock<HashMap<Arc<str>, usize>>,
}

impl HotRegistry {
    pub(crate) fn new(config: HotKeys) -> Self {
        Self { config, marked: RwLock::new(HashMap::new()) }
    }

    /// How many copies `key` has (0: not hot). A run-time mark wins over the configuration.
    fn copies(&self, key: &Key) -> usize {
        if self.config.keys.is_empty() && self.config.namespaces.is_empty() && self.marked_is_empty() {
            return 0;
        }
        let marked = self.marked.read().unwrap_or_else(|p| p.into_inner()).get(key.as_str()).copied();
        marked
            .or_else(|| self.config.keys.get(key.as_str()).copied())
            .or_else(|| self.config.namespaces.get(key.namespace()).copied())
            .unwrap_or(0)
    }

    fn marked_is_empty(&self) -> bool {
        self.marked.read().unwrap_or_else(|p| p.into_inner()).is_empty()
    }
}

/// What the read of a hot key's copy gave.
pub(crate) enum HotRead<T> {
    /// The key is not hot: read it as usual.
    NotHot,
    /// Served from a copy (a value, or a "not found" the caller accepts).
    Hit(Option<T>),
    /// The copy had nothing usable: read the key as usual, then refill this copy.
    Missed(String),
}

impl Cache {
    /// Marks `key` hot at run time: this instance's reads spread over `copies` copies
    /// (1 to [`MAX_HOT_COPIES`]) and its writes update them. Other instances are unaffected
    /// until they mark it too; [`HotKeys`] bounds what their writes may leave stale.
    pub fn mark_hot(&self, key: &Key, copies: usize) -> Result<()> {
        if !valid_copies(copies) {
            return Err(Error::config(format!("hot key copies must be 1 to {MAX_HOT_COPIES}, got {copies}")));
        }
        self.inner.hot.marked.write().unwrap_or_else(|p| p.into_inner()).insert(key.shared().clone(), copies);
        Ok(())
    }

    /// Removes a [`mark_hot`](Self::mark_hot) mark (configured hot keys stay hot). Copies left
    /// in Redis expire within the copy TTL.
    pub fn unmark_hot(&self, key: &Key) {
        self.inner.hot.marked.write().unwrap_or_else(|p| p.into_inner()).remove(key.as_str());
    }

    /// How many copies this instance keeps of `key` (0 when it is not hot).
    pub fn hot_copies(&self, key: &Key) -> usize {
        self.inner.hot.copies(key)
    }

    /// After an L1 miss: reads one random copy of a hot key. Fills L1 on a hit, for no longer
    /// than the copy has left.
    pub(crate) async fn hot_read<T: CacheValue>(
        &self,
        key: &Key,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> HotRead<T> {
        let copies = self.inner.hot.copies(key);
        if copies == 0 {
            return HotRead::NotHot;
        }
        let pick = rand::rng().random_range(0..copies);
        let Some(copy) = hot_copy_keys(key.as_str(), pick + 1).pop() else { return HotRead::NotHot };
        let c = copy.as_str();
        let ticket = self.inner.coherence.ticket(key.as_str());
        let got = self
            .l2_call_for(c, "GET", |mut conn| async move {
                redis::pipe()
                    .cmd("GET")
                    .arg(c)
                    .cmd("PTTL")
                    .arg(c)
                    .query_async::<(Option<Vec<u8>>, i64)>(&mut conn)
                    .await
            })
            .await;
        let (bytes, pttl) = match got {
            Ok((Some(bytes), pttl)) => (bytes, pttl),
            Ok((None, _)) => return HotRead::Missed(copy),
            // Redis is failing: read the key as usual, and spare the caller a refill attempt.
            Err(_) => return HotRead::NotHot,
        };
        // A copy that does not decode is only a miss: it expires within the copy TTL, and the
        // key itself is what holds the truth.
        let Ok(decoded) = self.inner.codec.decode::<T>(key, &bytes) else { return HotRead::Missed(copy) };
        // A copy made before a namespace or tag invalidation is a miss like the key itself.
        if self.verdict(key, &decoded.marks).await != Verdict::Current {
            return HotRead::Missed(copy);
        }
        let ttl = l1_ttl(decoded.meta, Some(pttl));
        let checks = Checks::new(decoded.meta, decoded.marks);
        let found = match decoded.value {
            Some(v) => {
                self.fill_l1(key, Slot::Present(Arc::new(v.clone())), checks, decoded.raw_len, ttl, ticket);
                Some(v)
            }
            None if accept_negative => {
                NsCounters::inc(&ns.negative_hits);
                self.fill_l1(key, Slot::Absent, checks, 0, ttl, ticket);
                None
            }
            None => return HotRead::Missed(copy),
        };
        NsCounters::inc(&ns.l2_hits);
        NsCounters::inc(&ns.hot_copy_hits);
        HotRead::Hit(found)
    }

    /// Puts a value read or loaded through the key itself into the copy that missed, unless the
    /// copy was written meanwhile (`SET NX`): a concurrent `set` wrote a newer value there.
    ///
    /// A write or an invalidation of the key may have overtaken this refill: the value was read
    /// before it, and the copy is written after the writer removed the copies. So once the copy
    /// is written, the key is read again: unless it still holds the same content under the same
    /// namespace generation, the copy goes. A writer changes the key before its copies, so either
    /// this check sees the change, or the writer's own copy update comes after the refill.
    pub(crate) async fn hot_refill<T: CacheValue>(&self, key: &Key, copy: &str, value: Option<&T>) {
        let ttl = self.inner.hot.config.copy_ttl;
        let Ok(marks) = self.capture_marks(key, &[]).await else { return };
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let Ok(encoded) = self.inner.codec.encode_marked(key, value, meta, &marks) else {
            return;
        };
        let bytes = encoded.bytes.as_slice();
        let refilled = self
            .l2_call_for(copy, "SET", |mut c| async move {
                redis::cmd("SET")
                    .arg(copy)
                    .arg(bytes)
                    .arg("NX")
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async::<Option<String>>(&mut c)
                    .await
            })
            .await;
        match refilled {
            Ok(Some(_)) => {}
            // Written meanwhile by someone else: theirs stands.
            Ok(None) => return,
            Err(err) => {
                tracing::debug!(copy, error = %err, "could not refill a hot key copy");
                return;
            }
        }
        if !self.key_holds::<T>(key, value, marks.ns_gen).await {
            let removed =
                self.l2_call_for(copy, "DEL", |mut c| async move {
                    redis::cmd("DEL").arg(copy).query_async::<()>(&mut c).await
                })
                .await;
            if let Err(err) = removed {
                tracing::debug!(copy, error = %err, "could not remove an overtaken hot key copy; it expires within the copy ttl");
            }
        }
    }

    /// Whether `key` holds `value` (same serialized content; `None`: a cached "not found")
    /// produced under namespace generation `ns_gen`. Anything unreadable counts as no.
    async fn key_holds<T: CacheValue>(&self, key: &Key, value: Option<&T>, ns_gen: u64) -> bool {
        let k = key.as_str();
        let read = self
            .l2_call_for(k, "GET", |mut c| async move {
                redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await
            })
            .await;
        let Ok(Some(bytes)) = read else { return false };
        let Ok(held) = self.inner.codec.decode::<T>(key, &bytes) else { return false };
        let content = |v: Option<&T>| v.map(rmp_serde::to_vec).transpose().ok();
        held.marks.ns_gen == ns_gen && content(held.value.as_ref()).is_some_and(|c| Some(c) == content(value))
    }

    /// After `set` of a hot key: the new value goes to every copy, for the copy TTL.
    pub(crate) async fn hot_write<T: CacheValue>(&self, key: &Key, value: &T) {
        let n = self.inner.hot.copies(key);
        if n == 0 {
            return;
        }
        let copies = hot_copy_keys(key.as_str(), n);
        let ttl = self.inner.hot.config.copy_ttl;
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let encoded = match self.capture_marks(key, &[]).await {
            Ok(marks) => self.inner.codec.encode_marked(key, Some(value), meta, &marks),
            Err((_, err)) => Err(err),
        };
        let Ok(encoded) = encoded else {
            self.hot_invalidate(key).await;
            return;
        };
        let bytes = encoded.bytes.as_slice();
        let writes = copies.iter().map(|copy| {
            self.l2_call_for(copy.as_str(), "SET", move |mut c| async move {
                redis::cmd("SET")
                    .arg(copy.as_str())
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async::<()>(&mut c)
                    .await
            })
        });
        if let Some(Err(err)) = join_all(writes).await.into_iter().find(Result::is_err) {
            tracing::debug!(key = %key, error = %err, "could not update every hot key copy; they expire within the copy ttl");
        }
    }

    /// After a delete or an invalidating write of a hot key: every copy goes.
    pub(crate) async fn hot_invalidate(&self, key: &Key) {
        let n = self.inner.hot.copies(key);
        if n == 0 {
            return;
        }
        let copies = hot_copy_keys(key.as_str(), n);
        let deletes = copies.iter().map(|copy| {
            self.l2_call_for(copy.as_str(), "DEL", move |mut c| async move {
                redis::cmd("DEL").arg(copy.as_str()).query_async::<()>(&mut c).await
            })
        });
        if let Some(Err(err)) = join_all(deletes).await.into_iter().find(Result::is_err) {
            tracing::debug!(key = %key, error = %err, "could not delete every hot key copy; they expire within the copy ttl");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copies_have_distinct_slots_and_stable_names() {
        for key in ["app:v1:config:flags", "x", "shop:v2:banner:home:mobile"] {
            let copies = hot_copy_keys(key, MAX_HOT_COPIES);
            assert_eq!(copies.len(), MAX_HOT_COPIES);
            let mut slots: std::collections::HashSet<HashSlot> = copies.iter().map(HashSlot::for_key).collect();
            slots.insert(HashSlot::for_key(key));
            assert_eq!(slots.len(), MAX_HOT_COPIES + 1, "{key}");
            assert_eq!(hot_copy_keys(key, 3), copies[..3], "a prefix of the same names");
            assert!(copies.iter().all(|c| c.starts_with(&format!("{key}:~hot:"))));
            assert!(copies.iter().all(|c| hot_copy_of(c) == Some(key)), "{key}");
        }
    }

    /// A reader that read the key before a write (or a namespace invalidation) refills the copy
    /// after the writer removed the copies: the refill must not stand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refill_overtaken_by_a_write_or_an_invalidation_is_removed() -> Result<()> {
        let redis = strata_cluster::RedisServer::start().map_err(|e| Error::config(e.to_string()))?;
        let key = crate::KeySchema::new("hot", 1)?.key("user", "1")?;
        let cache = Cache::builder().redis_url(redis.url()).hot_keys(HotKeys::new().key(&key, 1)).build().await?;
        let copy = hot_copy_keys(key.as_str(), 1).remove(0);
        let copy_exists = || {
            let mut con = redis.connection().expect("connection");
            redis::cmd("EXISTS").arg(&copy).query::<bool>(&mut con).expect("EXISTS")
        };
        let drop_copy = || {
            let mut con = redis.connection().expect("connection");
            redis::cmd("DEL").arg(&copy).query::<()>(&mut con).expect("DEL");
        };

        // The key holds "new"; a reader that read "old" before that write refills.
        cache.set(&key, &"new".to_owned(), Duration::from_secs(60)).await?;
        drop_copy();
        cache.hot_refill(&key, &copy, Some(&"old".to_owned())).await;
        assert!(!copy_exists(), "a copy of a value the key no longer holds was kept");

        // The same content refilled after the write stays.
        cache.hot_refill(&key, &copy, Some(&"new".to_owned())).await;
        assert!(copy_exists(), "a copy of what the key holds must stay");

        // A namespace invalidation overtook the refill: the key's content is unchanged, but it
        // was produced under the old generation, and the copy would carry the new one.
        drop_copy();
        cache.invalidate_namespace(key.namespace()).await?;
        cache.hot_refill(&key, &copy, Some(&"new".to_owned())).await;
        assert!(!copy_exists(), "a copy made valid again by a refill after the invalidation was kept");

        // The key was deleted.
        cache.set(&key, &"newer".to_owned(), Duration::from_secs(60)).await?;
        drop_copy();
        cache.delete(&key).await?;
        cache.hot_refill(&key, &copy, Some(&"newer".to_owned())).await;
        assert!(!copy_exists(), "a copy of a deleted key was kept");
        Ok(())
    }

    #[test]
    fn only_copy_names_have_a_key() {
        assert_eq!(hot_copy_of("app:v1:user:1:~hot:12"), Some("app:v1:user:1"));
        for name in ["app:v1:user:1", "app:v1:user:1:~hot:", "app:v1:user:1:~hot:x", "{app:v1:user:1}:lease"] {
            assert_eq!(hot_copy_of(name), None, "{name}");
        }
    }

    #[test]
    fn validates_config() {
        assert!(HotKeys::new().validate().is_ok());
        assert!(HotKeys::new().namespace("a:v1:b", 0).validate().is_err());
        assert!(HotKeys::new().namespace("a:v1:b", MAX_HOT_COPIES + 1).validate().is_err());
        assert!(HotKeys::new().copy_ttl(Duration::ZERO).validate().is_err());
        assert!(HotKeys::new().copy_ttl(MAX_HOT_COPY_TTL * 2).validate().is_err());
    }
}
