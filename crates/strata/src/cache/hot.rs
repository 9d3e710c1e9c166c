//! Hot keys' copies ([`HotKeys`]): a read of a hot key picks one of its copies;
//! a write updates them; a delete or invalidating write removes them.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures_util::future::join_all;
use rand::Rng;

use super::{CacheValue, Inner, Verdict};
use crate::codec::Meta;
use crate::error::{Error, Result};
use crate::hot::{HotKeys, MAX_HOT_COPIES, hot_copy_keys, valid_copies};
use crate::key::Key;
use crate::l1::{Checks, Fill, Slot};
use crate::metrics::NsCounters;
use crate::ttl::{expiry_ms, l1_ttl, ttl_millis};

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

    /// Marks `key` hot at run time ([`Cache::mark_hot`](crate::Cache::mark_hot)).
    pub(crate) fn mark(&self, key: &Key, copies: usize) -> Result<()> {
        if !valid_copies(copies) {
            return Err(Error::config(format!("hot key copies must be 1 to {MAX_HOT_COPIES}, got {copies}")));
        }
        self.marked.write().unwrap_or_else(|p| p.into_inner()).insert(key.shared().clone(), copies);
        Ok(())
    }

    /// Removes a run-time mark.
    pub(crate) fn unmark(&self, key: &Key) {
        self.marked.write().unwrap_or_else(|p| p.into_inner()).remove(key.as_str());
    }

    /// How long a copy lives.
    pub(crate) fn copy_ttl(&self) -> Duration {
        self.config.copy_ttl_of()
    }

    /// How many copies `key` has (0: not hot). A run-time mark wins over the configuration.
    pub(crate) fn copies(&self, key: &Key) -> usize {
        if self.config.is_empty() && self.marked_is_empty() {
            return 0;
        }
        let marked = self.marked.read().unwrap_or_else(|p| p.into_inner()).get(key.as_str()).copied();
        marked.or_else(|| self.config.configured(key)).unwrap_or(0)
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

impl Inner {
    /// After an L1 miss of a hot key with `copies` copies (at least 1): reads one at random.
    /// Fills L1 on a hit, for no longer than the copy has left.
    pub(crate) async fn hot_read<T: CacheValue>(
        &self,
        key: &Key,
        copies: usize,
        ns: &NsCounters,
        accept_negative: bool,
    ) -> HotRead<T> {
        if copies == 0 {
            return HotRead::NotHot;
        }
        // The ticket first, as in `read_l2`: a key whose removal is queued is not read from its
        // copies either.
        let mut ticket = self.l1.ticket(key.as_str());
        if self.held_back(key.as_str()) {
            return HotRead::NotHot;
        }
        let pick = rand::rng().random_range(0..copies);
        let Some(copy) = hot_copy_keys(key.as_str(), pick + 1).pop() else { return HotRead::NotHot };
        let c = copy.as_str();
        // Tracked: a change of the copy reaches this instance as a change of the key.
        let got = self
            .call_filling(c, "GET", &mut ticket, |mut conn| async move {
                let mut pipe = redis::pipe();
                conn.track_next(&mut pipe);
                pipe.cmd("GET").arg(c).cmd("PTTL").arg(c).query_async::<(Option<Vec<u8>>, i64)>(&mut conn).await
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
        let Ok(decoded) = self.codec.decode::<T>(key, &bytes) else { return HotRead::Missed(copy) };
        // A copy made before a namespace or tag invalidation is a miss like the key itself.
        if self.verdict(key, &decoded.marks).await != Verdict::Current {
            return HotRead::Missed(copy);
        }
        let ttl = l1_ttl(decoded.meta, Some(pttl));
        let checks = Checks::new(decoded.meta, decoded.marks);
        let found = match decoded.value {
            Some(v) => {
                let fill = Fill { slot: Slot::Present(Arc::new(v.clone())), checks, value_len: decoded.raw_len, ttl };
                self.l1.fill(key.shared(), fill, &ticket);
                Some(v)
            }
            None if accept_negative => {
                NsCounters::inc(&ns.negative_hits);
                self.l1.fill(key.shared(), Fill { slot: Slot::Absent, checks, value_len: 0, ttl }, &ticket);
                None
            }
            None => return HotRead::Missed(copy),
        };
        NsCounters::inc(&ns.l2_hits);
        NsCounters::inc(&ns.hot_copy_hits);
        crate::telemetry::served(crate::telemetry::Tier::Hot, bytes.len());
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
        let ttl = self.hot.copy_ttl();
        let Ok(marks) = self.capture_marks(key, &[]).await else { return };
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let Ok(encoded) = self.codec.encode_marked(key, value, meta, &marks) else {
            return;
        };
        let bytes = encoded.bytes.as_slice();
        let refilled = self
            .call_for(copy, "SET", |mut c| async move {
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
                self.call_for(copy, "DEL", |mut c| async move {
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
        let read =
            self.call_for(k, "GET", |mut c| async move {
                redis::cmd("GET").arg(k).query_async::<Option<Vec<u8>>>(&mut c).await
            })
            .await;
        let Ok(Some(bytes)) = read else { return false };
        let Ok(held) = self.codec.decode::<T>(key, &bytes) else { return false };
        let content = |v: Option<&T>| v.map(rmp_serde::to_vec).transpose().ok();
        held.marks.ns_gen == ns_gen && content(held.value.as_ref()).is_some_and(|c| Some(c) == content(value))
    }

    /// After `set` of a hot key: the new value goes to every copy, for the copy TTL.
    ///
    /// A copy that could not be written still holds the previous value, which readers would
    /// be served until the copy expires: the write fails, so the caller knows it is not
    /// complete (the consistency drill's cluster `hang` caught a `set` and a `delete` that
    /// returned `Ok` while a copy on the hung master kept the old value).
    pub(crate) async fn hot_write<T: CacheValue>(&self, key: &Key, value: &T) -> Result<()> {
        let n = self.hot.copies(key);
        if n == 0 {
            return Ok(());
        }
        let copies = hot_copy_keys(key.as_str(), n);
        let ttl = self.hot.copy_ttl();
        let meta = Meta { expires_at_ms: expiry_ms(ttl), load_us: 0 };
        let encoded = match self.capture_marks(key, &[]).await {
            Ok(marks) => self.codec.encode_marked(key, Some(value), meta, &marks),
            Err((_, err)) => Err(err),
        };
        // The key holds the new value; copies of the old one must not outlive it.
        let Ok(encoded) = encoded else { return self.hot_invalidate(key).await };
        let bytes = encoded.bytes.as_slice();
        let writes = copies.iter().map(|copy| {
            self.call_for(copy.as_str(), "SET", move |mut c| async move {
                redis::cmd("SET")
                    .arg(copy.as_str())
                    .arg(bytes)
                    .arg("PX")
                    .arg(ttl_millis(ttl))
                    .query_async::<()>(&mut c)
                    .await
            })
        });
        first_error(key, join_all(writes).await, "could not update every hot key copy")
    }

    /// After a delete or an invalidating write of a hot key: every copy goes. Fails when one
    /// could not be removed (see [`hot_write`](Self::hot_write)).
    pub(crate) async fn hot_invalidate(&self, key: &Key) -> Result<()> {
        let n = self.hot.copies(key);
        if n == 0 {
            return Ok(());
        }
        let copies = hot_copy_keys(key.as_str(), n);
        let deletes = copies.iter().map(|copy| {
            self.call_for(copy.as_str(), "DEL", move |mut c| async move {
                redis::cmd("DEL").arg(copy.as_str()).query_async::<()>(&mut c).await
            })
        });
        first_error(key, join_all(deletes).await, "could not delete every hot key copy")
    }
}

/// The first failure of the calls on a key's copies, if any, logged with `what`.
fn first_error(key: &Key, results: Vec<Result<()>>, what: &str) -> Result<()> {
    match results.into_iter().find_map(Result::err) {
        Some(err) => {
            tracing::warn!(key = %key, error = %err, "{what}; a copy may serve the previous value until the copy ttl");
            Err(err)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use crate::{Error, HotKeys, Result, hot_copy_keys};

    /// A reader that read the key before a write (or a namespace invalidation) refills the copy
    /// after the writer removed the copies: the refill must not stand.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refill_overtaken_by_a_write_or_an_invalidation_is_removed() -> Result<()> {
        let redis = strata_cluster::RedisServer::start().map_err(|e| Error::config(e.to_string()))?;
        let key = crate::KeySchema::new("hot", 1)?.key("user", "1")?;
        let cache =
            crate::Cache::builder().redis_url(redis.url()).hot_keys(HotKeys::new().key(&key, 1)).build().await?;
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
        cache.inner().hot_refill(&key, &copy, Some(&"old".to_owned())).await;
        assert!(!copy_exists(), "a copy of a value the key no longer holds was kept");

        // The same content refilled after the write stays.
        cache.inner().hot_refill(&key, &copy, Some(&"new".to_owned())).await;
        assert!(copy_exists(), "a copy of what the key holds must stay");

        // A namespace invalidation overtook the refill: the key's content is unchanged, but it
        // was produced under the old generation, and the copy would carry the new one.
        drop_copy();
        cache.invalidate_namespace(key.namespace()).await?;
        cache.inner().hot_refill(&key, &copy, Some(&"new".to_owned())).await;
        assert!(!copy_exists(), "a copy made valid again by a refill after the invalidation was kept");

        // The key was deleted.
        cache.set(&key, &"newer".to_owned(), Duration::from_secs(60)).await?;
        drop_copy();
        cache.delete(&key).await?;
        cache.inner().hot_refill(&key, &copy, Some(&"newer".to_owned())).await;
        assert!(!copy_exists(), "a copy of a deleted key was kept");
        Ok(())
    }

    /// A key marked hot while a versioned write of it runs (the write looked for copies before
    /// its source write) loses the copies refilled from the previous value meanwhile.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_key_marked_hot_during_a_versioned_write_loses_its_copies() -> Result<()> {
        let redis = strata_cluster::RedisServer::start().map_err(|e| Error::config(e.to_string()))?;
        let key = crate::KeySchema::new("hot", 1)?.key("user", "2")?;
        let cache = crate::Cache::builder().redis_url(redis.url()).build().await?;
        let copy = hot_copy_keys(key.as_str(), 1).remove(0);
        let copy_exists = || {
            let mut con = redis.connection().expect("connection");
            redis::cmd("EXISTS").arg(&copy).query::<bool>(&mut con).expect("EXISTS")
        };
        let ttl = Duration::from_secs(60);
        let row = |name: &str, version: u64| {
            let name = name.to_owned();
            move || async move { Ok::<_, std::io::Error>(Some((name, version))) }
        };
        // A version on record: the first write empties the key and quarantines it; after the
        // quarantine the second stores.
        cache.update_through_versioned(&key, ttl, row("v1", 1)).await?;
        tokio::time::sleep(2 * crate::VERSIONED_WINDOW + Duration::from_millis(100)).await;
        cache.update_through_versioned(&key, ttl, row("v2", 2)).await?;

        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
        let writing = {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                cache
                    .update_through_versioned(&key, ttl, move || async move {
                        let _ = started_tx.send(());
                        let _ = release_rx.await;
                        Ok::<_, std::io::Error>(Some(("v3".to_owned(), 3)))
                    })
                    .await
            })
        };
        started_rx.await.map_err(|e| Error::config(e.to_string()))?;
        cache.mark_hot(&key, 1)?;
        cache.inner().hot_refill(&key, &copy, Some(&"v2".to_owned())).await;
        assert!(copy_exists(), "a refill of what the key holds stands");
        release_tx.send(()).map_err(|()| Error::config("writer gone"))?;
        writing.await.map_err(|e| Error::config(e.to_string()))??;
        assert!(!copy_exists(), "a copy of the previous value outlived the write");
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v3"));
        Ok(())
    }
}
