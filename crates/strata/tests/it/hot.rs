//! Hot keys: copies in other slots (and nodes), reads spread over them, writes and deletes
//! reaching every copy, and the staleness bound for writers that do not know the key is hot.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::{HotKeys, Key, KeySchema, Ttl, hot_copy_keys};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// On a 3-master cluster, 8 copies of a key sit in 8 slots other than the key's, on every
/// master; a `set` writes each one with the short copy TTL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_land_in_other_slots_on_every_master() -> TestResult {
    let redis = Redis::cluster();
    let Redis::Cluster(cluster) = &redis else { return Err("not a cluster".into()) };
    let key = KeySchema::new("it", 1)?.key("hot", "flags")?;
    let cache = redis.builder().hot_keys(HotKeys::new().key(&key, 8)).build().await?;
    cache.set(&key, &"on".to_owned(), Ttl::Long).await?;

    let copies = hot_copy_keys(key.as_str(), 8);
    let mut slots = HashSet::from([cluster.key_slot(key.as_str().as_bytes())?]);
    let mut nodes = HashSet::new();
    for copy in &copies {
        assert!(slots.insert(cluster.key_slot(copy.as_bytes())?), "{copy} shares a slot");
        nodes.insert(cluster.node_for_key(copy.as_bytes())?);
    }
    assert_eq!(nodes.len(), 3, "copies on every master: {nodes:?}");
    let mut raw = redis.raw();
    for copy in &copies {
        let pttl: i64 = redis::cmd("PTTL").arg(copy).query(raw.as_mut())?;
        assert!((1..=5_000).contains(&pttl), "{copy}: the copy ttl bounds it, got {pttl} ms");
    }
    Ok(())
}

/// Reads of a hot key pick a copy at random: with each copy holding a different marker, 400
/// reads see every copy and never the key itself.
async fn reads_spread_over_copies(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("hot", "spread")?;
    let plain = redis.cache().await;
    plain.set(&key, &"the key itself".to_owned(), Ttl::Medium).await?;
    for (i, copy) in hot_copy_keys(key.as_str(), 4).iter().enumerate() {
        plain.set(&Key::parse(copy)?, &format!("copy {i}"), Ttl::Medium).await?;
    }
    // L1 off, so every read goes to Redis.
    let hot = redis.builder().l1_capacity_bytes(0).hot_keys(HotKeys::new().namespace("it:v1:hot", 4)).build().await?;
    let mut seen: HashMap<String, usize> = HashMap::new();
    for _ in 0..400 {
        let v: Option<String> = hot.get(&key).await?;
        *seen.entry(v.ok_or("a copy is always there")?).or_default() += 1;
    }
    let markers: HashSet<String> = (0..4).map(|i| format!("copy {i}")).collect();
    assert_eq!(seen.keys().cloned().collect::<HashSet<_>>(), markers, "{}: {seen:?}", redis.name());
    assert_eq!(hot.metrics().namespace("it:v1:hot").hot_copy_hits, 400);
    Ok(())
}
on_both!(reads_spread_over_copies);

/// `set` writes every copy; `delete`, `set_many` and `set_not_found` remove every copy.
async fn writes_and_deletes_reach_every_copy(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("hot", "w")?;
    let hot = redis.builder().hot_keys(HotKeys::new().key(&key, 4)).build().await?;
    let plain = redis.builder().l1_capacity_bytes(0).build().await?;
    let copies: Vec<Key> =
        hot_copy_keys(key.as_str(), 4).iter().map(|c| Key::parse(c)).collect::<strata::Result<_>>()?;
    let read_copies = || async {
        let got: Vec<Option<String>> = plain.get_many(&copies).await?;
        Ok::<_, strata::Error>(got)
    };
    for v in ["v1", "v2"] {
        hot.set(&key, &v.to_owned(), Ttl::Medium).await?;
        assert_eq!(read_copies().await?, vec![Some(v.to_owned()); 4], "{}", redis.name());
    }
    assert!(hot.delete(&key).await?);
    assert_eq!(read_copies().await?, vec![None; 4], "delete removes every copy");
    assert_eq!(hot.get::<String>(&key).await?, None);

    hot.set(&key, &"v3".to_owned(), Ttl::Medium).await?;
    hot.set_many(&[(key.clone(), "v4".to_owned())], Ttl::Medium).await?;
    assert_eq!(read_copies().await?, vec![None; 4], "set_many removes every copy");
    assert_eq!(plain.get::<String>(&key).await?.as_deref(), Some("v4"));

    hot.set(&key, &"v5".to_owned(), Ttl::Medium).await?;
    hot.set_not_found(&key).await?;
    assert_eq!(read_copies().await?, vec![None; 4], "set_not_found removes every copy");
    Ok(())
}
on_both!(writes_and_deletes_reach_every_copy);

/// A writer that does not know the key is hot leaves the copies alone; readers see its write
/// once the copies expire, within the copy TTL. Copy misses fall back to the key and refill.
async fn unaware_writes_are_seen_within_the_copy_ttl(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("hot", "bound")?;
    let reader = redis
        .builder()
        .l1_capacity_bytes(0)
        .hot_keys(HotKeys::new().copy_ttl(Duration::from_millis(300)))
        .build()
        .await?;
    reader.mark_hot(&key, 2)?;
    assert_eq!(reader.hot_copies(&key), 2);
    assert!(reader.mark_hot(&key, 0).is_err());
    let writer = redis.cache().await;
    writer.set(&key, &"v1".to_owned(), Ttl::Medium).await?;
    for _ in 0..20 {
        assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("v1"));
    }
    let copies: Vec<Key> =
        hot_copy_keys(key.as_str(), 2).iter().map(|c| Key::parse(c)).collect::<strata::Result<_>>()?;
    let refilled: Vec<Option<String>> = writer.get_many(&copies).await?;
    assert!(refilled.contains(&Some("v1".to_owned())), "a copy miss refills the copy: {refilled:?}");

    writer.set(&key, &"v2".to_owned(), Ttl::Medium).await?;
    tokio::time::sleep(Duration::from_millis(400)).await; // past the copy ttl
    for _ in 0..20 {
        assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("v2"), "{}", redis.name());
    }
    reader.unmark_hot(&key);
    assert_eq!(reader.hot_copies(&key), 0);
    Ok(())
}
on_both!(unaware_writes_are_seen_within_the_copy_ttl);

/// `get_or_set` of a hot key: one load, then served from the copies it refilled or the key.
async fn get_or_set_of_a_hot_key_loads_once(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("hot", "load")?;
    let cache = redis.builder().l1_capacity_bytes(0).hot_keys(HotKeys::new().key(&key, 3)).build().await?;
    let loads = Arc::new(AtomicUsize::new(0));
    for _ in 0..30 {
        let loads = loads.clone();
        let v = cache
            .get_or_set(&key, Ttl::Medium, || async move {
                loads.fetch_add(1, Ordering::SeqCst);
                Ok::<_, std::io::Error>("loaded".to_owned())
            })
            .await?;
        assert_eq!(v, "loaded");
    }
    assert_eq!(loads.load(Ordering::SeqCst), 1, "{}", redis.name());
    assert!(cache.metrics().namespace("it:v1:hot").hot_copy_hits > 0);
    Ok(())
}
on_both!(get_or_set_of_a_hot_key_loads_once);

/// An L1 entry filled from a copy goes when the copy changes: a writer updates the copies after
/// the key, so a reader can read a copy (and fill L1) after the key's own invalidation and
/// before the copy gets the new value. Found by `strata drill consistency` (hot keys read
/// versions 150-390 ms old).
async fn a_changed_copy_evicts_the_l1_entry_it_filled(redis: Redis) -> TestResult {
    let key = KeySchema::new("it", 1)?.key("hot", "copy-evicts")?;
    let hot = HotKeys::new().key(&key, 1);
    let reader = redis.builder().hot_keys(hot.clone()).build().await?;
    let writer = redis.builder().hot_keys(hot).build().await?;
    writer.set(&key, &"v1".to_owned(), Ttl::Long).await?;
    // A read whose ticket predates the writer's invalidations (of the key, then of its copy)
    // is not kept in L1, by design: the reader's L1 takes the copy once they have reached it.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("v1"));
        let hits = reader.metrics().total().l1_hits;
        assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("v1"));
        if reader.metrics().total().l1_hits == hits + 1 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "the copy read never filled L1");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }

    // The copy changes (here: is removed) while the key does not.
    let copy = hot_copy_keys(key.as_str(), 1).remove(0);
    let seen = reader.metrics().invalidation_messages;
    redis::cmd("DEL").arg(&copy).query::<()>(redis.raw().as_mut())?;
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while reader.metrics().invalidation_messages == seen {
        assert!(std::time::Instant::now() < deadline, "no invalidation of the copy arrived");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let hits = reader.metrics().total().l1_hits;
    assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("v1"));
    assert_eq!(reader.metrics().total().l1_hits, hits, "the L1 entry the copy filled was kept");
    Ok(())
}
on_both!(a_changed_copy_evicts_the_l1_entry_it_filled);

/// A copy whose master hangs while the key is deleted or written keeps the previous value,
/// which readers would be served once the master is back, until the copy expires: the
/// `delete` and the `set` must fail, never return `Ok` (the consistency drill's cluster `hang`
/// found such a stale read), and the key's removal with its copies is replayed once the master
/// answers (auto-recovery). And when the key's own master hangs, the copies on the others go
/// all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_that_could_not_be_changed_is_removed_when_redis_is_back() -> TestResult {
    let redis = Redis::cluster();
    let Redis::Cluster(cluster) = &redis else { return Err("not a cluster".into()) };
    let key = KeySchema::new("it", 1)?.key("hot", "hung")?;
    let copies = hot_copy_keys(key.as_str(), 3);
    let mut raw = redis.raw();

    for (what, write) in [("delete", true), ("set", false)] {
        // A cache per round: the last round's failures opened a breaker. The nodes again: a
        // pause can end in a failover.
        let hot = redis.builder().hot_keys(HotKeys::new().key(&key, 3)).build().await?;
        hot.set(&key, &"old".to_owned(), Ttl::Medium).await?;
        let home = cluster.node_for_key(key.as_str().as_bytes())?;
        let mut elsewhere = None;
        for copy in &copies {
            let node = cluster.node_for_key(copy.as_bytes())?;
            if node != home {
                elsewhere = Some(node);
            }
        }
        let hung = elsewhere.ok_or("every copy is on the key's master")?;
        cluster.nodes()[hung].pause()?;
        let result = match write {
            true => hot.delete(&key).await.map(|_| ()),
            false => hot.set(&key, &"new".to_owned(), Ttl::Medium).await,
        };
        cluster.nodes()[hung].resume()?;
        // The call fails, and the key's removal (with its copies) is queued for replay.
        let err = result.err().ok_or(format!("{what} returned Ok while a copy kept the old value"))?;
        assert!(err.is_unavailable() && err.is_queued(), "{what}: {err}");
        assert_eq!(hot.metrics().recovery_queued, 1, "{what}: queued for replay");
        cluster.wait_healthy(Duration::from_secs(30))?;
        assert!(
            crate::common::within(Duration::from_secs(20), || async { hot.recovery_queue_len() == 0 }).await,
            "{what}: replayed once the node answers"
        );
        let held: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query(raw.as_mut())?;
        let reader = redis.builder().l1_capacity_bytes(0).build().await?;
        // The replay removed the key and every copy: nothing serves the old value.
        assert_eq!(held, None, "{what}: the key was removed");
        assert_eq!(reader.get::<String>(&key).await?, None, "{what}");
        for copy in &copies {
            let exists: bool = redis::cmd("EXISTS").arg(copy).query(raw.as_mut())?;
            assert!(!exists, "{what}: {copy} kept the old value");
        }
    }

    // The key's own master hangs during a delete: the call fails, and the copies on the other
    // masters are gone all the same.
    let hot = redis.builder().hot_keys(HotKeys::new().key(&key, 3)).build().await?;
    hot.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    let home = cluster.node_for_key(key.as_str().as_bytes())?;
    let away: Vec<&String> =
        copies.iter().filter(|c| cluster.node_for_key(c.as_bytes()).is_ok_and(|n| n != home)).collect();
    assert!(!away.is_empty(), "no copy on another master");
    cluster.nodes()[home].pause()?;
    let result = hot.delete(&key).await;
    cluster.nodes()[home].resume()?;
    assert!(result.is_err(), "the key's DEL could not run: an error");
    cluster.wait_healthy(Duration::from_secs(30))?;
    let mut raw = redis.raw();
    for copy in away {
        let exists: bool = redis::cmd("EXISTS").arg(copy).query(raw.as_mut())?;
        assert!(!exists, "{copy} kept the old value although its master was up");
    }
    Ok(())
}
