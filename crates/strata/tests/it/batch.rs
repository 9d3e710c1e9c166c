use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use redis::cluster_routing::Slot;
use strata::{Key, KeySchema, LeaseConfig, Ttl};
use tokio::sync::oneshot;

use crate::common::{Redis, TestResult};
use crate::on_both;

/// 1,000 keys spread over (nearly) every slot group: set_many + get_many round-trip with no
/// CROSSSLOT error, missing keys come back as None, and results line up with the input order.
async fn thousand_keys_across_slots(redis: Redis) -> TestResult {
    let writer = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> =
        (0..1000).map(|i| schema.key("profile", &format!("user-{i}"))).collect::<strata::Result<_>>()?;
    let slots: HashSet<_> = keys.iter().map(|k| Slot::for_key(k.as_str())).collect();
    assert!(slots.len() > 900, "keys should cover many slots, got {}", slots.len());

    let items: Vec<(Key, String)> = keys.iter().map(|k| (k.clone(), format!("value of {k}"))).collect();
    writer.set_many(&items, Ttl::Medium).await?;

    // A second cache with L1 off, so every read below really goes to Redis.
    let reader = redis.builder().l1_capacity_bytes(0).build().await?;
    let mut wanted = keys.clone();
    let absent: Vec<Key> =
        (0..50).map(|i| schema.key("profile", &format!("nobody-{i}"))).collect::<strata::Result<_>>()?;
    for (i, k) in absent.iter().enumerate() {
        wanted.insert(i * 20, k.clone());
    }
    let got: Vec<Option<String>> = reader.get_many(&wanted).await?;
    assert_eq!(got.len(), wanted.len());
    for (key, value) in wanted.iter().zip(&got) {
        if key.as_str().contains("nobody") {
            assert_eq!(value, &None, "{key}");
        } else {
            assert_eq!(value.as_deref(), Some(format!("value of {key}").as_str()), "{}", redis.name());
        }
    }
    let stats = reader.metrics();
    assert_eq!(stats.l2_errors + stats.l2_timeouts, 0, "no MGET may fail: {stats:?}");
    assert_eq!(stats.total().l2_hits, 1000);

    // The writer's L1 answers get_many without Redis.
    let again: Vec<Option<String>> = writer.get_many(&keys).await?;
    assert!(again.iter().all(Option::is_some));
    assert_eq!(writer.metrics().total().l1_hits, 1000, "{:?}", writer.metrics());
    Ok(())
}
on_both!(thousand_keys_across_slots);

/// Calls of `command` (lower case) on every node since the last [`reset_stats`], from
/// `INFO commandstats`: what Redis itself saw, whatever the client did.
fn command_calls(redis: &Redis, command: &str) -> u64 {
    let prefix = format!("cmdstat_{command}:calls=");
    node_connections(redis)
        .into_iter()
        .map(|mut conn| {
            let info: String = redis::cmd("INFO").arg("commandstats").query(&mut conn).expect("INFO");
            info.lines()
                .find_map(|l| l.strip_prefix(&prefix))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse::<u64>().expect("calls"))
        })
        .sum()
}

fn reset_stats(redis: &Redis) {
    for mut conn in node_connections(redis) {
        let () = redis::cmd("CONFIG").arg("RESETSTAT").query(&mut conn).expect("CONFIG RESETSTAT");
    }
}

fn node_connections(redis: &Redis) -> Vec<redis::Connection> {
    match redis {
        Redis::Standalone(s) => vec![s.node().connection().expect("connect")],
        Redis::Cluster(c) => c.nodes().iter().map(|n| n.connection().expect("connect")).collect(),
    }
}

type Calls = Arc<Mutex<Vec<Vec<Key>>>>;

/// A batch loader over a fake source that has every id except those starting with "nobody";
/// it records each call's keys.
fn source(calls: &Calls) -> impl FnOnce(Vec<Key>) -> std::future::Ready<Result<HashMap<Key, String>, std::io::Error>> {
    let calls = calls.clone();
    move |keys: Vec<Key>| {
        calls.lock().expect("lock").push(keys.clone());
        let found = keys.into_iter().filter(|k| !k.as_str().contains(":nobody")).map(|k| {
            let v = format!("loaded {k}");
            (k, v)
        });
        std::future::ready(Ok(found.collect()))
    }
}

/// Keys in L1, keys only in Redis, keys in neither, keys the source lacks, duplicates: the loader
/// runs once with exactly the missing keys (each once), Redis sees one MGET per slot group, and
/// the results line up with the input.
async fn get_or_set_many_loads_exactly_the_missing_keys(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let key = |id: String| schema.key("many", &id);
    let in_l1: Vec<Key> = (0..20).map(|i| key(format!("l1-{i}"))).collect::<strata::Result<_>>()?;
    let in_redis: Vec<Key> = (0..30).map(|i| key(format!("l2-{i}"))).collect::<strata::Result<_>>()?;
    let cold: Vec<Key> = (0..40).map(|i| key(format!("cold-{i}"))).collect::<strata::Result<_>>()?;
    let absent: Vec<Key> = (0..5).map(|i| key(format!("nobody-{i}"))).collect::<strata::Result<_>>()?;
    let cache = redis.cache().await;
    let other = redis.cache().await;
    for k in &in_l1 {
        cache.set(k, &format!("stored {k}"), Ttl::Medium).await?;
    }
    for k in &in_redis {
        other.set(k, &format!("stored {k}"), Ttl::Medium).await?;
    }
    // Every group, then the first key of each group again.
    let groups = [&in_l1, &in_redis, &cold, &absent];
    let mut input: Vec<Key> = groups.iter().flat_map(|g| g.iter().cloned()).collect();
    input.extend(groups.iter().map(|g| g[0].clone()));

    let calls = Calls::default();
    reset_stats(&redis);
    let got: Vec<Option<String>> = cache.get_or_set_many(&input, Ttl::Medium, source(&calls)).await?;

    let after_l1: HashSet<Slot> =
        input.iter().filter(|k| !in_l1.contains(k)).map(|k| Slot::for_key(k.as_str())).collect();
    let mget_rounds = if matches!(redis, Redis::Cluster(_)) { after_l1.len() as u64 } else { 1 };
    assert_eq!(command_calls(&redis, "mget"), mget_rounds, "{}: one MGET per slot group", redis.name());
    let calls = calls.lock().expect("lock").clone();
    assert_eq!(calls.len(), 1, "one loader call");
    let missing: Vec<Key> = cold.iter().chain(&absent).cloned().collect();
    assert_eq!(calls[0], missing, "exactly the missing keys, each once, in input order");
    assert_eq!(got.len(), input.len());
    for (k, v) in input.iter().zip(&got) {
        let want = if in_l1.contains(k) || in_redis.contains(k) {
            Some(format!("stored {k}"))
        } else if absent.contains(k) {
            None
        } else {
            Some(format!("loaded {k}"))
        };
        assert_eq!(v, &want, "{k}");
    }
    // Loaded values are in Redis (another instance reads them); "not found" was not cached, no
    // lease is left behind.
    let from_redis: Vec<Option<String>> = other.get_many(&cold).await?;
    assert!(from_redis.iter().zip(&cold).all(|(v, k)| v.as_deref() == Some(format!("loaded {k}").as_str())));
    let keys = redis.value_keys();
    assert!(!keys.iter().any(|k| k.contains("nobody") || k.ends_with(":lease")), "{keys:?}");
    let stats = cache.metrics().namespace("it:v1:many");
    // 20 sets before the batch, 40 by it.
    assert_eq!((stats.loader_calls, stats.sets, stats.l2_hits), (1, 60, 30), "{stats:?}");

    // Again: everything is cached but the absent keys, so only they are asked for.
    let calls = Calls::default();
    let again: Vec<Option<String>> = cache.get_or_set_many(&input, Ttl::Medium, source(&calls)).await?;
    assert_eq!(again, got);
    assert_eq!(calls.lock().expect("lock").clone(), vec![absent.clone()]);
    Ok(())
}
on_both!(get_or_set_many_loads_exactly_the_missing_keys);

/// The optional variant caches "not found": a second call does not reach the loader at all.
async fn get_or_set_many_optional_caches_not_found(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let keys = vec![schema.key("opt", "a")?, schema.key("opt", "nobody-1")?, schema.key("opt", "b")?];
    let cache = redis.cache().await;
    let calls = Calls::default();
    let got: Vec<Option<String>> = cache.get_or_set_many_optional(&keys, Ttl::Medium, source(&calls)).await?;
    assert_eq!(got, vec![Some("loaded it:v1:opt:a".to_owned()), None, Some("loaded it:v1:opt:b".to_owned())]);
    // Another instance (empty L1) sees the negative entry in Redis too.
    let other = redis.cache().await;
    let later = Calls::default();
    let again: Vec<Option<String>> = other.get_or_set_many_optional(&keys, Ttl::Medium, source(&later)).await?;
    assert_eq!(again, got);
    assert!(later.lock().expect("lock").is_empty(), "nothing is missing any more");
    assert_eq!(other.metrics().namespace("it:v1:opt").negative_hits, 1);
    Ok(())
}
on_both!(get_or_set_many_optional_caches_not_found);

/// A failing loader: a loader error, nothing cached, every lease given back.
async fn get_or_set_many_loader_error(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> = (0..20).map(|i| schema.key("fail", &i.to_string())).collect::<strata::Result<_>>()?;
    let cache = redis.cache().await;
    let err = cache
        .get_or_set_many::<String, _, _, _>(&keys, Ttl::Medium, |_| async {
            Err(std::io::Error::other("database down"))
        })
        .await
        .expect_err("the loader failed");
    assert!(err.is_loader(), "{err:?}");
    assert!(err.to_string().contains("database down"), "{err}");
    assert!(redis.value_keys().is_empty(), "no value and no lease left: {:?}", redis.value_keys());
    assert_eq!(cache.metrics().namespace("it:v1:fail").loader_errors, 1);
    Ok(())
}
on_both!(get_or_set_many_loader_error);

/// Redis down: the loader's values, no error, and L1 keeps serving them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_set_many_with_redis_down() -> TestResult {
    let mut redis = Redis::standalone();
    let cache = redis.cache().await;
    redis.kill_all();
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> = (0..10).map(|i| schema.key("down", &i.to_string())).collect::<strata::Result<_>>()?;
    let calls = Calls::default();
    let got: Vec<Option<String>> = cache.get_or_set_many(&keys, Ttl::Medium, source(&calls)).await?;
    assert!(got.iter().zip(&keys).all(|(v, k)| v.as_deref() == Some(format!("loaded {k}").as_str())));
    let again: Vec<Option<String>> = cache.get_or_set_many(&keys, Ttl::Medium, source(&calls)).await?;
    assert_eq!(again, got);
    assert_eq!(calls.lock().expect("lock").len(), 1, "the second call is served from L1");
    Ok(())
}

/// The stale-set race in a batch: while the batch loads, one of its keys is set to v2 and another
/// deleted. Neither loaded (stale) value is stored; the others are.
async fn get_or_set_many_does_not_store_over_an_invalidation(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> = (0..3).map(|i| schema.key("race", &i.to_string())).collect::<strata::Result<_>>()?;
    let (reader, writer) = (redis.cache().await, redis.cache().await);
    let (loading_tx, loading_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let load = {
        let (reader, keys) = (reader.clone(), keys.clone());
        tokio::spawn(async move {
            reader
                .get_or_set_many(&keys, Ttl::Medium, |missing: Vec<Key>| async move {
                    let v1: HashMap<Key, String> = missing.into_iter().map(|k| (k, "v1".to_owned())).collect();
                    let _ = loading_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::io::Error>(v1)
                })
                .await
        })
    };
    loading_rx.await?;
    writer.set(&keys[0], &"v2".to_owned(), Ttl::Medium).await?;
    writer.delete(&keys[1]).await?;
    release_tx.send(()).map_err(|_| "batch gone")?;
    assert_eq!(load.await??, vec![Some("v1".to_owned()); 3], "the caller still gets what it loaded");

    let fresh = redis.builder().l1_capacity_bytes(0).build().await?;
    let stored: Vec<Option<String>> = fresh.get_many(&keys).await?;
    assert_eq!(stored, vec![Some("v2".to_owned()), None, Some("v1".to_owned())], "{}", redis.name());
    // Nor does the reader's own L1 keep the refused values.
    let seen: Vec<Option<String>> = reader.get_many(&keys).await?;
    assert_eq!(seen, stored);
    assert_eq!(reader.metrics().namespace("it:v1:race").stale_writes_refused, 2);
    Ok(())
}
on_both!(get_or_set_many_does_not_store_over_an_invalidation);

/// A batch meets a `get_or_set` of one of its keys in flight: it waits for that load (through
/// the lease) instead of loading the key a second time.
async fn get_or_set_many_waits_for_a_single_load_in_flight(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let (busy, free) = (schema.key("meet", "busy")?, schema.key("meet", "free")?);
    let cache = redis.cache().await;
    let (loading_tx, loading_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let single = {
        let (cache, busy) = (cache.clone(), busy.clone());
        tokio::spawn(async move {
            cache
                .get_or_set(&busy, Ttl::Medium, || async move {
                    let _ = loading_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::io::Error>("from get_or_set".to_owned())
                })
                .await
        })
    };
    loading_rx.await?;
    let calls = Calls::default();
    let batch = {
        let (cache, keys, calls) = (cache.clone(), vec![busy.clone(), free.clone()], calls.clone());
        tokio::spawn(async move { cache.get_or_set_many::<String, _, _, _>(&keys, Ttl::Medium, source(&calls)).await })
    };
    // Release the single load only once the batch is waiting on its lease.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while cache.metrics().namespace("it:v1:meet").lease_waits == 0 {
        assert!(tokio::time::Instant::now() < deadline, "the batch never waited");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    release_tx.send(()).map_err(|_| "single load gone")?;
    assert_eq!(single.await??, "from get_or_set");
    assert_eq!(batch.await??, vec![Some("from get_or_set".to_owned()), Some("loaded it:v1:meet:free".to_owned())]);
    assert_eq!(calls.lock().expect("lock").clone(), vec![vec![free.clone()]], "the busy key was not loaded again");
    Ok(())
}
on_both!(get_or_set_many_waits_for_a_single_load_in_flight);

/// With leases off the batch stores its values with plain SETs and leaves no lease key behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_set_many_without_leases() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.builder().leases(LeaseConfig::disabled()).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> = (0..10).map(|i| schema.key("nolease", &i.to_string())).collect::<strata::Result<_>>()?;
    let calls = Calls::default();
    let got: Vec<Option<String>> = cache.get_or_set_many(&keys, Ttl::Medium, source(&calls)).await?;
    assert!(got.iter().zip(&keys).all(|(v, k)| v.as_deref() == Some(format!("loaded {k}").as_str())));
    let mut stored = redis.value_keys();
    stored.sort();
    let mut want: Vec<String> = keys.iter().map(|k| k.to_string()).collect();
    want.sort();
    assert_eq!(stored, want);
    assert_eq!(calls.lock().expect("lock").len(), 1);
    Ok(())
}
