//! Write-through: the source first, then the cache, with no window in which the cache can end
//! up holding a version the source no longer has.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata::{Cache, Key, KeySchema, LeaseConfig, Ttl};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use crate::common::{Redis, TestResult};
use crate::on_both;

type Source = Arc<Mutex<String>>;

fn store(source: &Source) -> impl FnOnce(&String) -> std::future::Ready<Result<(), std::io::Error>> + '_ {
    move |v: &String| {
        *source.lock().expect("source") = v.clone();
        std::future::ready(Ok(()))
    }
}

async fn cache_with_short_leases(redis: &Redis) -> Result<Cache, strata::Error> {
    let leases = LeaseConfig::default().ttl(Duration::from_millis(400)).max_wait(Duration::from_secs(5));
    redis.builder().leases(leases).build().await
}

/// What a reader with a loader on the source gets.
async fn read_through(cache: &Cache, key: &Key, source: &Source, loads: &AtomicUsize) -> Result<String, strata::Error> {
    cache
        .get_or_set(key, Ttl::Medium, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Ok::<_, std::io::Error>(source.lock().expect("source").clone())
        })
        .await
}

/// Starts an `update_through` of `key` on `cache` whose source write waits for the returned
/// sender (a slow `UPDATE`), then puts "new" in `source` and returns it. Returns once the write
/// holds the key's lease.
async fn slow_update(
    cache: &Cache,
    key: &Key,
    source: &Source,
) -> Result<(JoinHandle<strata::Result<Option<String>>>, oneshot::Sender<()>), oneshot::error::RecvError> {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (cache, key, source) = (cache.clone(), key.clone(), source.clone());
    let writing = tokio::spawn(async move {
        cache
            .update_through(&key, Ttl::Medium, move || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                *source.lock().expect("source") = "new".to_owned();
                Ok::<_, std::io::Error>(Some("new".to_owned()))
            })
            .await
    });
    started_rx.await?;
    Ok((writing, release_tx))
}

async fn writes_the_source_then_the_cache(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("through", "1")?;
    let source: Source = Arc::default();
    cache.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    cache.set_through(&key, &"new".to_owned(), Ttl::Medium, store(&source)).await?;
    assert_eq!(*source.lock().expect("source"), "new");
    assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("new"));
    assert_eq!(other.get::<String>(&key).await?.as_deref(), Some("new"), "{}: in Redis too", redis.name());
    assert_eq!(cache.metrics().namespace("it:v1:through").writes_through, 1);
    Ok(())
}
on_both!(writes_the_source_then_the_cache);

async fn a_failing_source_write_leaves_no_cached_value(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("through", "2")?;
    cache.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    let err = cache
        .set_through(&key, &"new".to_owned(), Ttl::Medium, |_: &String| async {
            Err::<(), _>(std::io::Error::other("database is read-only"))
        })
        .await
        .err()
        .ok_or("the source error must surface")?;
    assert!(err.is_loader(), "{err}");
    // The source may or may not have taken it; the cache must not claim either version.
    assert_eq!(cache.get::<String>(&key).await?, None, "{}", redis.name());
    let mut raw = redis.raw();
    let lease: Option<String> = redis::cmd("GET").arg(strata::lease_key(key.as_str())).query(raw.as_mut())?;
    assert_eq!(lease, None, "the lease is released");
    Ok(())
}
on_both!(a_failing_source_write_leaves_no_cached_value);

/// The writer dies right after the source write: the cache holds no old value, and once the
/// lease expires a reader loads the new one.
async fn a_crash_between_the_writes_leaves_no_old_value(redis: Redis) -> TestResult {
    let (writer, reader) = (cache_with_short_leases(&redis).await?, cache_with_short_leases(&redis).await?);
    let key = KeySchema::new("it", 1)?.key("through", "3")?;
    let source: Source = Arc::new(Mutex::new("old".to_owned()));
    writer.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("old"));

    let (written_tx, written_rx) = oneshot::channel::<()>();
    let crashing = {
        let (writer, key, source) = (writer.clone(), key.clone(), source.clone());
        tokio::spawn(async move {
            writer
                .set_through(&key, &"new".to_owned(), Ttl::Medium, move |v: &String| {
                    *source.lock().expect("source") = v.clone();
                    let _ = written_tx.send(());
                    std::future::pending::<Result<(), std::io::Error>>() // dies before returning
                })
                .await
        })
    };
    written_rx.await?;
    crashing.abort();
    // Redis holds no old value; the reader's L1 copy goes with the invalidation that DEL caused
    // (asynchronous: a few milliseconds, more on a loaded machine).
    let mut raw = redis.raw();
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query(raw.as_mut())?;
    assert!(stored.is_none(), "{}: the old value is gone from Redis", redis.name());
    let deadline = std::time::Instant::now() + Duration::from_secs(3);
    while reader.get::<String>(&key).await?.is_some() {
        assert!(std::time::Instant::now() < deadline, "{}: the reader still serves the old value", redis.name());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let loads = AtomicUsize::new(0);
    assert_eq!(read_through(&reader, &key, &source, &loads).await?, "new");
    Ok(())
}
on_both!(a_crash_between_the_writes_leaves_no_old_value);

/// A reader that misses while the write is in progress waits for it rather than loading the
/// version being replaced.
async fn a_reader_during_the_write_gets_the_new_value(redis: Redis) -> TestResult {
    let (writer, reader) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("through", "4")?;
    let source: Source = Arc::new(Mutex::new("old".to_owned()));
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let writing = {
        let (writer, key, source) = (writer.clone(), key.clone(), source.clone());
        tokio::spawn(async move {
            writer
                .set_through(&key, &"new".to_owned(), Ttl::Medium, move |v: &String| {
                    let v = v.clone();
                    async move {
                        let _ = started_tx.send(());
                        let _ = release_rx.await; // a slow UPDATE
                        *source.lock().expect("source") = v;
                        Ok::<_, std::io::Error>(())
                    }
                })
                .await
        })
    };
    started_rx.await?;
    let loads = Arc::new(AtomicUsize::new(0));
    let reading = {
        let (reader, key, source, loads) = (reader.clone(), key.clone(), source.clone(), loads.clone());
        tokio::spawn(async move { read_through(&reader, &key, &source, &loads).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    release_tx.send(()).map_err(|_| "writer gone")?;
    writing.await??;
    assert_eq!(reading.await??, "new", "{}", redis.name());
    assert_eq!(loads.load(Ordering::SeqCst), 0, "the reader waited for the write instead of loading");
    Ok(())
}
on_both!(a_reader_during_the_write_gets_the_new_value);

/// Two write-throughs of one key whose source writes land in the opposite order of their
/// leases: A takes the lease, B takes it over, B writes v2 to the source, then A writes v1, then
/// both try to store. The cache must end up agreeing with the source (v1), not holding v2.
async fn concurrent_writes_through_agree_with_the_source(redis: Redis) -> TestResult {
    concurrent_writes_through(redis, false).await
}
on_both!(concurrent_writes_through_agree_with_the_source);

/// The same with the previous value kept serving during the writes.
async fn concurrent_kept_writes_through_agree_with_the_source(redis: Redis) -> TestResult {
    concurrent_writes_through(redis, true).await
}
on_both!(concurrent_kept_writes_through_agree_with_the_source);

async fn concurrent_writes_through(redis: Redis, keep: bool) -> TestResult {
    let leases = LeaseConfig::default().keep_serving_during_writes(keep);
    let (a, b) = (redis.builder().leases(leases.clone()).build().await?, redis.builder().leases(leases).build().await?);
    let key = KeySchema::new("it", 1)?.key("through", if keep { "5k" } else { "5" })?;
    let source: Source = Arc::new(Mutex::new("v0".to_owned()));
    a.set(&key, &"v0".to_owned(), Ttl::Medium).await?;
    let (a_holds_tx, a_holds_rx) = oneshot::channel::<()>();
    let (b_wrote_tx, b_wrote_rx) = oneshot::channel::<()>();
    let (a_wrote_tx, a_wrote_rx) = oneshot::channel::<()>();
    let writing_a = {
        let (a, key, source) = (a.clone(), key.clone(), source.clone());
        tokio::spawn(async move {
            a.set_through(&key, &"v1".to_owned(), Ttl::Medium, move |v: &String| {
                let v = v.clone();
                async move {
                    let _ = a_holds_tx.send(()); // A's lease is taken
                    let _ = b_wrote_rx.await;
                    *source.lock().expect("source") = v;
                    let _ = a_wrote_tx.send(());
                    Ok::<_, std::io::Error>(())
                }
            })
            .await
        })
    };
    a_holds_rx.await?;
    let writing_b = {
        let (b, key, source) = (b.clone(), key.clone(), source.clone());
        tokio::spawn(async move {
            b.set_through(&key, &"v2".to_owned(), Ttl::Medium, move |v: &String| {
                let v = v.clone();
                async move {
                    *source.lock().expect("source") = v;
                    let _ = b_wrote_tx.send(());
                    let _ = a_wrote_rx.await;
                    Ok::<_, std::io::Error>(())
                }
            })
            .await
        })
    };
    writing_a.await??;
    writing_b.await??;
    assert_eq!(*source.lock().expect("source"), "v1");
    let loads = AtomicUsize::new(0);
    for (name, cache) in [("A", &a), ("B", &b)] {
        let got = read_through(cache, &key, &source, &loads).await?;
        assert_eq!(got, "v1", "{}: {name} reads what the source no longer holds", redis.name());
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v1"), "{}: {name}", redis.name());
    }
    Ok(())
}

/// `update_through` caches what the source write returned; `None` (nothing updated) and a
/// failing write leave the key uncached and the lease free.
async fn update_through_caches_what_the_source_returned(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("through", "u1")?;
    let source: Source = Arc::new(Mutex::new("v0".to_owned()));
    cache.set(&key, &"v0".to_owned(), Ttl::Medium).await?;
    let lease_of = |redis: &Redis| -> Result<Option<String>, redis::RedisError> {
        redis::cmd("GET").arg(strata::lease_key(key.as_str())).query(redis.raw().as_mut())
    };

    // The source appends to what it holds, as `UPDATE ... SET n = n || '+' RETURNING n` would:
    // the cache must get the row the source returned, which the caller did not know.
    let returned = cache
        .update_through(&key, Ttl::Medium, || async {
            let mut row = source.lock().expect("source");
            row.push_str("+1");
            Ok::<_, std::io::Error>(Some(row.clone()))
        })
        .await?;
    assert_eq!(returned.as_deref(), Some("v0+1"));
    assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v0+1"), "{}", redis.name());
    assert_eq!(other.get::<String>(&key).await?.as_deref(), Some("v0+1"), "{}: in Redis too", redis.name());
    assert_eq!(cache.metrics().namespace("it:v1:through").writes_through, 1);

    // Nothing updated: the key goes (and nothing counts as written through).
    let none = cache.update_through(&key, Ttl::Medium, || async { Ok::<Option<String>, std::io::Error>(None) }).await?;
    assert_eq!(none, None);
    assert_eq!(cache.get::<String>(&key).await?, None, "{}: nothing updated, nothing cached", redis.name());
    // `other` holds "v0+1" in L1: its invalidation message comes after the removal's reply.
    reads_eventually(&other, &key, None).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    assert_eq!(lease_of(&redis)?, None, "the lease is released");

    // A failing update: the source's error, nothing cached.
    cache.set(&key, &"v0+1".to_owned(), Ttl::Medium).await?;
    let err = cache
        .update_through(&key, Ttl::Medium, || async {
            Err::<Option<String>, _>(std::io::Error::other("deadlock detected"))
        })
        .await
        .err()
        .ok_or("the source error must surface")?;
    assert!(err.is_loader(), "{err}");
    assert_eq!(other.get::<String>(&key).await?, None, "{}", redis.name());
    assert_eq!(lease_of(&redis)?, None, "the lease is released");
    assert_eq!(cache.metrics().namespace("it:v1:through").writes_through, 1, "only the first reached the cache");
    Ok(())
}
on_both!(update_through_caches_what_the_source_returned);

/// A source write that does not end holds its readers for the lease's `max_wait`, no longer:
/// then they load on their own, in the writer's process as in others. (Their loader fails
/// here, so that neither stores a value the other would then find.)
async fn a_stuck_write_holds_readers_for_max_wait_only(redis: Redis) -> TestResult {
    let leases = LeaseConfig::default().ttl(Duration::from_secs(30)).max_wait(Duration::from_millis(300));
    let cache = redis.builder().leases(leases.clone()).build().await?;
    let other = redis.builder().leases(leases).build().await?;
    let key = KeySchema::new("it", 1)?.key("through", "u4")?;
    let (writing, release_tx) = slow_update(&cache, &key, &Source::default()).await?;
    let loads = AtomicUsize::new(0);
    for (name, reader) in [("the writer's process", &cache), ("another process", &other)] {
        let read = reader.get_or_set(&key, Ttl::Medium, || async {
            loads.fetch_add(1, Ordering::SeqCst);
            Err::<String, _>(std::io::Error::other("the source is busy"))
        });
        let got = tokio::time::timeout(Duration::from_secs(20), read)
            .await
            .map_err(|_| format!("{}: {name}: the reader waited past max_wait", redis.name()))?;
        let err = got.err().ok_or(format!("{name}: the loader's error"))?;
        assert!(err.is_loader(), "{name}: {err}");
    }
    assert!(!writing.is_finished(), "the write is still stuck");
    assert_eq!(loads.load(Ordering::SeqCst), 2, "each reader loaded on its own after max_wait");
    release_tx.send(()).map_err(|_| "writer gone")?;
    assert_eq!(writing.await??.as_deref(), Some("new"));
    Ok(())
}
on_both!(a_stuck_write_holds_readers_for_max_wait_only);

/// A reader in the writer's own process that misses while the write is in progress waits for
/// it in memory and reads what it stored: no load, and no poll of the lease (which costs 5 to
/// 50 ms a turn, and counts in `lease_waits`).
async fn a_reader_in_the_writers_process_waits_in_memory(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("through", "u2")?;
    let source: Source = Arc::new(Mutex::new("old".to_owned()));
    let (writing, release_tx) = slow_update(&cache, &key, &source).await?;
    let loads = Arc::new(AtomicUsize::new(0));
    let reading = {
        let (cache, key, source, loads) = (cache.clone(), key.clone(), source.clone(), loads.clone());
        tokio::spawn(async move { read_through(&cache, &key, &source, &loads).await })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(!reading.is_finished(), "the reader must wait for the write");
    release_tx.send(()).map_err(|_| "writer gone")?;
    assert_eq!(writing.await??.as_deref(), Some("new"));
    assert_eq!(reading.await??, "new", "{}", redis.name());
    assert_eq!(loads.load(Ordering::SeqCst), 0, "the reader waited for the write instead of loading");
    let ns = cache.metrics().namespace("it:v1:through");
    assert_eq!(ns.lease_waits, 0, "{}: the reader polled the lease", redis.name());
    Ok(())
}
on_both!(a_reader_in_the_writers_process_waits_in_memory);

/// With Redis gone, the source is still written (the caller's write is the point) and the
/// error says the cache could not be touched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_redis_down_the_source_is_still_written() -> TestResult {
    let mut redis = Redis::standalone();
    let cache = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("through", "u3")?;
    redis.kill_all();
    let source: Source = Arc::new(Mutex::new("old".to_owned()));
    let err = cache
        .update_through(&key, Ttl::Medium, || async {
            *source.lock().expect("source") = "new".to_owned();
            Ok::<_, std::io::Error>(Some("new".to_owned()))
        })
        .await
        .err()
        .ok_or("the cache could not be written: an error")?;
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(*source.lock().expect("source"), "new", "the source write ran");
    let err = cache
        .set_through(&key, &"newer".to_owned(), Ttl::Medium, store(&source))
        .await
        .err()
        .ok_or("the cache could not be written: an error")?;
    assert!(err.is_unavailable(), "{err}");
    assert_eq!(*source.lock().expect("source"), "newer", "the source write ran");
    Ok(())
}

/// With `keep_serving_during_writes`, readers are served the previous value while the source
/// write runs (a hit does not wait, in the writer's process or another), then the new one; a
/// failing source write removes the key.
async fn a_kept_value_serves_during_the_write(redis: Redis) -> TestResult {
    let leases = LeaseConfig::default().keep_serving_during_writes(true);
    let cache = redis.builder().leases(leases.clone()).build().await?;
    let other = redis.builder().leases(leases).build().await?;
    let key = KeySchema::new("it", 1)?.key("through", "k1")?;
    let source: Source = Arc::new(Mutex::new("old".to_owned()));
    cache.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    let (writing, release_tx) = slow_update(&cache, &key, &source).await?;
    let loads = AtomicUsize::new(0);
    for (name, reader) in [("the writer's process", &cache), ("another process", &other)] {
        assert_eq!(read_through(reader, &key, &source, &loads).await?, "old", "{}: {name}", redis.name());
    }
    assert!(!writing.is_finished(), "the reads did not wait for the write");
    release_tx.send(()).map_err(|_| "writer gone")?;
    assert_eq!(writing.await??.as_deref(), Some("new"));
    for (name, reader) in [("the writer's process", &cache), ("another process", &other)] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        // The other process hears of the change through its invalidation message.
        while read_through(reader, &key, &source, &loads).await? != "new" {
            assert!(tokio::time::Instant::now() < deadline, "{}: {name} kept the old value", redis.name());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    assert_eq!(loads.load(Ordering::SeqCst), 0, "every read was a hit");

    // A failing source write: the kept value goes (the source may have taken the write).
    let err = cache
        .update_through(&key, Ttl::Medium, || async {
            Err::<Option<String>, _>(std::io::Error::other("connection reset after COMMIT"))
        })
        .await
        .err()
        .ok_or("the source error must surface")?;
    assert!(err.is_loader(), "{err}");
    // At once in the writer's process; in another, once its invalidation message has come (the
    // removal's reply and that message leave Redis together, and nothing orders their arrival).
    assert_eq!(cache.get::<String>(&key).await?, None, "{}: the kept value was removed", redis.name());
    reads_eventually(&other, &key, None)
        .await
        .map_err(|e| format!("{}: another process kept the removed value: {e}", redis.name()))?;
    let lease: Option<String> = redis::cmd("GET").arg(strata::lease_key(key.as_str())).query(redis.raw().as_mut())?;
    assert_eq!(lease, None, "the lease is released");
    Ok(())
}
on_both!(a_kept_value_serves_during_the_write);

/// The key's write version, as Redis holds it.
fn version_of(redis: &Redis, key: &Key) -> Result<Option<String>, redis::RedisError> {
    redis::cmd("GET").arg(strata::version_key(key.as_str())).query(redis.raw().as_mut())
}

/// A write version as Redis holds it outside a quarantine.
fn recorded(version: u64) -> Option<String> {
    Some(format!("{version:020}"))
}

/// How long a quarantine lasts (two versioned windows), and a margin.
const QUARANTINE: Duration = Duration::from_millis(2 * strata::VERSIONED_WINDOW.as_millis() as u64 + 100);

/// `update_through_versioned` of `key` whose source write answers `row` at `version`.
async fn versioned(cache: &Cache, key: &Key, row: &str, version: u64) -> strata::Result<Option<String>> {
    let row = row.to_owned();
    cache
        .update_through_versioned(key, Ttl::Medium, || async move { Ok::<_, std::io::Error>(Some((row, version))) })
        .await
}

/// A versioned write in flight ([`late_versioned`]).
type Late = (JoinHandle<strata::Result<Option<String>>>, oneshot::Sender<()>);

/// Starts a versioned write of `row` at `version` whose store waits for the returned sender
/// (its source write done, the store delayed). Returns once its source write has begun.
async fn late_versioned(cache: &Cache, key: &Key, row: &str, version: u64) -> Result<Late, oneshot::error::RecvError> {
    let (started_tx, started_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (cache, key, row) = (cache.clone(), key.clone(), row.to_owned());
    let writing = tokio::spawn(async move {
        cache
            .update_through_versioned(&key, Ttl::Medium, move || async move {
                let _ = started_tx.send(());
                let _ = release_rx.await;
                Ok::<_, std::io::Error>(Some((row, version)))
            })
            .await
    });
    started_rx.await?;
    Ok((writing, release_tx))
}

/// What `cache` reads of `key` once its L1 has heard of the latest change (an invalidation
/// message from another instance arrives asynchronously): polls until `want` or 5 s.
async fn reads_eventually(cache: &Cache, key: &Key, want: Option<&str>) -> Result<(), String> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let got = cache.get::<String>(key).await.map_err(|e| e.to_string())?;
        if got.as_deref() == want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(format!("read {got:?}, want {want:?}"));
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// A key with a write version on record and no quarantine: a first write, then the window.
async fn with_a_version_on_record(cache: &Cache, key: &Key, version: u64) -> TestResult {
    versioned(cache, key, "first", version).await?;
    tokio::time::sleep(QUARANTINE).await;
    Ok(())
}

/// Two versioned writes whose stores run in the reverse order of their source writes: the
/// newer version is what every instance reads, and versions compare as numbers.
async fn versioned_writes_keep_the_newest_whatever_order_they_store_in(redis: Redis) -> TestResult {
    let (a, b) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("versioned", "order")?;
    a.set(&key, &"v0".to_owned(), Ttl::Medium).await?;
    // No version on record: the first write empties the key and records its version.
    assert_eq!(versioned(&a, &key, "v1", 1).await?.as_deref(), Some("v1"), "the caller gets its row");
    assert_eq!(b.get::<String>(&key).await?, None, "{}: the first versioned write empties the key", redis.name());
    tokio::time::sleep(QUARANTINE).await;

    // A's source write (version 2) comes first, B's (version 3) after it, but B stores first.
    let (writing_a, release_a) = late_versioned(&a, &key, "v2", 2).await?;
    assert_eq!(versioned(&b, &key, "v3", 3).await?.as_deref(), Some("v3"));
    assert_eq!(version_of(&redis, &key)?, recorded(3));
    release_a.send(()).map_err(|_| "writer A gone")?;
    assert_eq!(writing_a.await??.as_deref(), Some("v2"), "the caller still gets its row");
    for (name, cache) in [("A", &a), ("B", &b)] {
        reads_eventually(cache, &key, Some("v3")).await.map_err(|e| format!("{}: {name}: {e}", redis.name()))?;
    }
    assert_eq!(version_of(&redis, &key)?, recorded(3));

    // 10 is newer than 3, though "10" < "3" as text.
    versioned(&b, &key, "v10", 10).await?;
    reads_eventually(&a, &key, Some("v10")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    for (name, cache) in [("A", &a), ("B", &b)] {
        assert_eq!(cache.metrics().namespace("it:v1:versioned").writes_through, 2, "{name}'s writes reached the cache");
    }
    Ok(())
}
on_both!(versioned_writes_keep_the_newest_whatever_order_they_store_in);

/// A load that read the source before a versioned write's commit, and tries to store after the
/// write's store, is refused: the write took no lease, but its store revoked the load's.
async fn a_load_that_read_before_a_versioned_write_does_not_store_after_it(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("versioned", "load")?;
    with_a_version_on_record(&cache, &key, 1).await?;
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (go_tx, go_rx) = oneshot::channel::<()>();
    let reading = {
        let (other, key) = (other.clone(), key.clone());
        tokio::spawn(async move {
            other
                .get_or_set(&key, Ttl::Medium, move || async move {
                    let _ = loaded_tx.send(()); // read "first" from the source
                    let _ = go_rx.await;
                    Ok::<_, std::io::Error>("first".to_owned())
                })
                .await
        })
    };
    loaded_rx.await?;
    versioned(&cache, &key, "v2", 2).await?;
    go_tx.send(()).map_err(|_| "reader gone")?;
    assert_eq!(reading.await??, "first", "the read began before the write completed");
    // The load's store runs in the background: wait for it to be refused (or to land).
    other.settled().await;
    assert_eq!(other.metrics().namespace("it:v1:versioned").stale_writes_refused, 1, "{}", redis.name());
    for (name, cache) in [("the writer", &cache), ("the reader's process", &other)] {
        let got = cache.get::<String>(&key).await?;
        assert_eq!(got.as_deref(), Some("v2"), "{}: {name} reads the load's old value", redis.name());
    }
    Ok(())
}
on_both!(a_load_that_read_before_a_versioned_write_does_not_store_after_it);

/// A `delete` stands for a change whose version the cache does not know: after it, versioned
/// writes that were running store nothing (the first late one must not record its version for
/// the second to beat), the key stays empty for the window, then writes store again.
async fn after_a_delete_late_versioned_writes_store_nothing(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("versioned", "delete")?;
    with_a_version_on_record(&cache, &key, 1).await?;
    // Versions 5 and 6 reach the source; their stores are late.
    let (writing_5, release_5) = late_versioned(&cache, &key, "v5", 5).await?;
    let (writing_6, release_6) = late_versioned(&other, &key, "v6", 6).await?;
    versioned(&cache, &key, "v7", 7).await?;
    reads_eventually(&other, &key, Some("v7")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    cache.delete(&key).await?; // the source moved on again
    assert_eq!(version_of(&redis, &key)?, None, "delete removes the write version");
    for (release, writing) in [(release_5, writing_5), (release_6, writing_6)] {
        release.send(()).map_err(|_| "writer gone")?;
        writing.await??;
    }
    reads_eventually(&other, &key, None).await.map_err(|e| format!("{}: a late write stored: {e}", redis.name()))?;
    assert_eq!(cache.get::<String>(&key).await?, None, "{}", redis.name());
    // Quarantined: even a newer write only empties the key for the window.
    versioned(&cache, &key, "v8", 8).await?;
    assert_eq!(other.get::<String>(&key).await?, None, "{}: stored during the quarantine", redis.name());
    tokio::time::sleep(QUARANTINE).await;
    versioned(&cache, &key, "v9", 9).await?;
    reads_eventually(&other, &key, Some("v9")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    assert_eq!(version_of(&redis, &key)?, recorded(9));
    Ok(())
}
on_both!(after_a_delete_late_versioned_writes_store_nothing);

/// A write whose store comes later than the window after its start empties the key (a loss
/// it cannot see may have happened meanwhile) and still raises the version, so that an older
/// write does not store after it. A failing source write, or no such row, empties the key.
async fn a_versioned_write_past_its_window_empties_the_key(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("versioned", "slow")?;
    with_a_version_on_record(&cache, &key, 1).await?;
    versioned(&cache, &key, "v2", 2).await?;
    reads_eventually(&other, &key, Some("v2")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    let slow = cache
        .update_through_versioned(&key, Ttl::Medium, || async {
            tokio::time::sleep(strata::VERSIONED_WINDOW + Duration::from_millis(100)).await;
            Ok::<_, std::io::Error>(Some(("v4".to_owned(), 4)))
        })
        .await?;
    assert_eq!(slow.as_deref(), Some("v4"), "the caller gets its row");
    reads_eventually(&other, &key, None).await.map_err(|e| format!("{}: a slow write stored: {e}", redis.name()))?;
    assert_eq!(version_of(&redis, &key)?, recorded(4));
    versioned(&cache, &key, "v3", 3).await?;
    assert_eq!(other.get::<String>(&key).await?, None, "{}: an older write stored", redis.name());

    // A failing source write: the source may have taken it, so the value it replaced goes.
    versioned(&cache, &key, "v5", 5).await?;
    reads_eventually(&other, &key, Some("v5")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    let err = cache
        .update_through_versioned(&key, Ttl::Medium, || async {
            Err::<Option<(String, u64)>, _>(std::io::Error::other("connection reset after COMMIT"))
        })
        .await
        .err()
        .ok_or("the source error must surface")?;
    assert!(err.is_loader(), "{err}");
    reads_eventually(&other, &key, None)
        .await
        .map_err(|e| format!("{}: the previous value stayed: {e}", redis.name()))?;
    // No such row: the key goes too.
    with_a_version_on_record(&cache, &key, 6).await?;
    versioned(&cache, &key, "v7", 7).await?;
    reads_eventually(&other, &key, Some("v7")).await.map_err(|e| format!("{}: {e}", redis.name()))?;
    let none = cache
        .update_through_versioned(&key, Ttl::Medium, || async { Ok::<Option<(String, u64)>, std::io::Error>(None) })
        .await?;
    assert_eq!(none, None);
    reads_eventually(&other, &key, None).await.map_err(|e| format!("{}: nothing updated: {e}", redis.name()))?;
    Ok(())
}
on_both!(a_versioned_write_past_its_window_empties_the_key);

/// A lease-protocol write-through that fails after emptying the key (its source may hold the
/// newer row) removes the write version too: a versioned write older than it stores nothing.
async fn a_failed_lease_write_through_stops_older_versioned_writes(redis: Redis) -> TestResult {
    let (cache, other) = (redis.cache().await, redis.cache().await);
    let key = KeySchema::new("it", 1)?.key("versioned", "mixed")?;
    with_a_version_on_record(&cache, &key, 1).await?;
    let (writing_6, release_6) = late_versioned(&cache, &key, "v6", 6).await?;
    // The lease protocol's write (version 7 in the source) times out after its commit.
    let failed = other
        .update_through(&key, Ttl::Medium, || async {
            Err::<Option<String>, _>(std::io::Error::other("timed out after COMMIT"))
        })
        .await;
    assert!(failed.is_err());
    release_6.send(()).map_err(|_| "writer gone")?;
    writing_6.await??;
    reads_eventually(&other, &key, None).await.map_err(|e| format!("{}: an older write stored: {e}", redis.name()))?;
    Ok(())
}
on_both!(a_failed_lease_write_through_stops_older_versioned_writes);

/// A key with hot copies takes the lease protocol (its copies are written after the store):
/// its first write stores at once, and no write version is kept.
async fn a_hot_key_is_written_through_under_its_lease(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("versioned", "hot")?;
    let cache = redis.builder().hot_keys(strata::HotKeys::new().key(&key, 3)).build().await?;
    let other = redis.builder().hot_keys(strata::HotKeys::new().key(&key, 3)).build().await?;
    cache.set(&key, &"v0".to_owned(), Ttl::Medium).await?;
    assert_eq!(other.get::<String>(&key).await?.as_deref(), Some("v0"));
    versioned(&cache, &key, "v1", 1).await?;
    // Another process may read a copy, whose change reaches its L1 through an invalidation.
    reads_eventually(&other, &key, Some("v1"))
        .await
        .map_err(|e| format!("{}: a copy kept the old value: {e}", redis.name()))?;
    assert_eq!(version_of(&redis, &key)?, None, "the lease protocol keeps no version");
    Ok(())
}
on_both!(a_hot_key_is_written_through_under_its_lease);

/// With `LeaseConfig::versioned_writes`, a load that stores a key with no write version starts
/// one (quarantined for two windows), so the key's first versioned write after that stores its
/// row; without it, a load leaves no version key behind and that write empties the key.
async fn with_versioned_writes_a_load_starts_the_write_version(redis: Redis) -> TestResult {
    let with = redis.builder().leases(LeaseConfig::default().versioned_writes(true)).build().await?;
    let plain = redis.cache().await;
    for (name, cache) in [("versioned_writes", &with), ("default", &plain)] {
        let key = KeySchema::new("it", 1)?.key("versioned", &format!("load-{name}"))?;
        let loaded = cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>("v0".to_owned()) }).await?;
        assert_eq!(loaded, "v0");
        cache.settled().await;
        let started = version_of(&redis, &key)?;
        if name == "default" {
            assert_eq!(started, None, "{}: a load left a version key", redis.name());
        } else {
            let started = started.ok_or_else(|| format!("{}: the load started no write version", redis.name()))?;
            assert!(started.starts_with(&format!("{:020}q", 0)), "{started}");
        }
        tokio::time::sleep(QUARANTINE).await;
        versioned(cache, &key, "v1", 1).await?;
        let want = if name == "default" { None } else { Some("v1") };
        assert_eq!(plain.get::<String>(&key).await?.as_deref(), want, "{}: {name}", redis.name());
    }
    Ok(())
}
on_both!(with_versioned_writes_a_load_starts_the_write_version);
