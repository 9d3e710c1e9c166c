//! Namespace and tag invalidation: one command, O(1), and no old value served afterwards by
//! any instance (the others within their `stamp_refresh`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use strata::{Cache, Key, KeySchema, Ttl};
use tokio::sync::oneshot;

use crate::common::{Redis, TestResult};
use crate::on_both;

/// A plain connection to every master.
fn masters(redis: &Redis) -> Vec<redis::Connection> {
    match redis {
        Redis::Standalone(s) => vec![s.node().connection().expect("connect")],
        Redis::Cluster(c) => c
            .master_indices()
            .expect("masters")
            .into_iter()
            .map(|i| c.nodes()[i].connection().expect("connect"))
            .collect(),
    }
}

/// Calls per command over every master (`INFO commandstats`), leaving out the commands that
/// tests, replication and cluster clients send on their own.
fn command_calls(conns: &mut [redis::Connection]) -> redis::RedisResult<HashMap<String, u64>> {
    const BACKGROUND: [&str; 7] = ["info", "dbsize", "replconf", "ping", "cluster", "command", "client"];
    let mut calls = HashMap::new();
    for conn in conns {
        let info: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
        for line in info.lines() {
            let Some((name, stats)) = line.strip_prefix("cmdstat_").and_then(|l| l.split_once(':')) else { continue };
            let n = stats.split(',').find_map(|kv| kv.strip_prefix("calls=")).and_then(|n| n.parse::<u64>().ok());
            if !BACKGROUND.iter().any(|b| name == *b || name.starts_with(&format!("{b}|"))) {
                *calls.entry(name.to_owned()).or_default() += n.unwrap_or(0);
            }
        }
    }
    Ok(calls)
}

/// Microseconds the servers spent in one command so far (`usec` of `INFO commandstats`).
fn server_usec(conns: &mut [redis::Connection], command: &str) -> redis::RedisResult<u64> {
    let mut usec = 0;
    for conn in conns {
        let info: String = redis::cmd("INFO").arg("commandstats").query(conn)?;
        let prefix = format!("cmdstat_{command}:");
        let line = info.lines().find_map(|l| l.strip_prefix(prefix.as_str())).unwrap_or_default();
        usec +=
            line.split(',').find_map(|kv| kv.strip_prefix("usec=")).and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
    }
    Ok(usec)
}

fn dbsize(conns: &mut [redis::Connection]) -> redis::RedisResult<u64> {
    conns.iter_mut().map(|c| redis::cmd("DBSIZE").query::<u64>(c)).sum()
}

async fn served(cache: &Cache, keys: &[Key]) -> strata::Result<usize> {
    let mut n = 0;
    for chunk in keys.chunks(1000) {
        n += cache.get_many::<u64>(chunk).await?.iter().flatten().count();
    }
    Ok(n)
}

/// The acceptance test: 100,000 keys on a real cluster, two instances. After
/// `invalidate_namespace` returns on A, A serves none of the old values, B none after its
/// `stamp_refresh`; the invalidation was one Redis command and removed nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidating_100k_keys_is_one_command_and_no_instance_serves_them() -> TestResult {
    const KEYS: usize = 100_000;
    let refresh = Duration::from_millis(300);
    let redis = Redis::cluster();
    // Generous timeouts: filling 100,000 keys on two shared cores is slow in a debug build.
    let builder = redis.builder().stamp_refresh(refresh).op_timeout(Duration::from_secs(10));
    let (a, b) = (builder.clone().build().await?, builder.build().await?);
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<Key> = (0..KEYS).map(|i| schema.key("bulk", &i.to_string())).collect::<strata::Result<_>>()?;
    for (n, chunk) in keys.chunks(2000).enumerate() {
        let items: Vec<(Key, u64)> =
            chunk.iter().enumerate().map(|(i, k)| (k.clone(), (n * 2000 + i) as u64)).collect();
        a.set_many(&items, Ttl::Long).await?;
    }
    let bystander = schema.key("other", "1")?;
    a.set(&bystander, &7u64, Ttl::Long).await?;
    // Both instances hold part of the namespace in L1 (from their own reads); the rest is in Redis only.
    let (warm, cold) = (&keys[..2000], &keys[50_000..52_000]);
    assert_eq!(served(&a, warm).await?, warm.len());
    assert_eq!(served(&b, warm).await?, warm.len());
    assert_eq!(b.get::<u64>(&bystander).await?, Some(7));
    a.invalidate_namespace("it:v1:other").await?; // loads the script path once; not measured
    a.set(&bystander, &7u64, Ttl::Long).await?;

    let mut conns = masters(&redis);
    let (before, size_before, usec_before) =
        (command_calls(&mut conns)?, dbsize(&mut conns)?, server_usec(&mut conns, "eval")?);
    let started = Instant::now();
    a.invalidate_namespace(schema.namespace("bulk")?.as_str()).await?;
    let took = started.elapsed();
    let (after, size_after) = (command_calls(&mut conns)?, dbsize(&mut conns)?);
    let server = server_usec(&mut conns, "eval")? - usec_before;
    // A figure for docs/benchmarks.md, not an assertion: timings do not belong in tests.
    eprintln!("invalidate_namespace of {KEYS} keys, 3-master cluster: {took:?} at the caller, {server} µs in Redis");
    let mut sent: Vec<(String, u64)> = after
        .iter()
        .map(|(name, n)| (name.clone(), n - before.get(name).copied().unwrap_or(0)))
        .filter(|(_, n)| *n > 0)
        .collect();
    sent.sort();
    // commandstats also counts the calls a script makes: its TIME, GET and SET of the stamp, and
    // the GET that reads the new generation back (tracked: see `namespace::BUMP`).
    let expected: Vec<(String, u64)> =
        [("eval", 1), ("get", 2), ("set", 1), ("time", 1)].iter().map(|&(c, n)| (c.to_string(), n)).collect();
    assert_eq!(sent, expected, "one command (an EVAL touching one key) on the whole cluster");
    assert_eq!(size_after, size_before, "nothing scanned, nothing deleted");

    // A: at once, from L1 and from Redis.
    assert_eq!(served(&a, warm).await?, 0, "A serves no old value from L1");
    assert_eq!(served(&a, cold).await?, 0, "A serves no old value from Redis");
    assert!(a.metrics().namespace("it:v1:bulk").invalidated >= (warm.len() + cold.len()) as u64);
    // B: within its refresh interval.
    tokio::time::sleep(refresh + Duration::from_millis(50)).await;
    assert_eq!(served(&b, warm).await?, 0, "B serves no old value from L1 after its refresh");
    assert_eq!(served(&b, &keys[90_000..92_000]).await?, 0, "B serves no old value from Redis");
    // Other namespaces are untouched; new values are served everywhere.
    assert_eq!((a.get::<u64>(&bystander).await?, b.get::<u64>(&bystander).await?), (Some(7), Some(7)));
    b.set(&keys[0], &42u64, Ttl::Long).await?;
    assert_eq!((a.get::<u64>(&keys[0]).await?, b.get::<u64>(&keys[0]).await?), (Some(42), Some(42)));
    Ok(())
}

/// A load that started before an invalidation (it read the source before the change) must not
/// be served after it, although its write lands after the invalidation.
async fn a_load_overlapping_an_invalidation_is_not_served(redis: Redis) -> TestResult {
    let refresh = Duration::from_millis(200);
    let reader = redis.builder().stamp_refresh(refresh).build().await?;
    let writer = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("overlap", "1")?;
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let load = {
        let (reader, key) = (reader.clone(), key.clone());
        tokio::spawn(async move {
            reader
                .get_or_set(&key, Ttl::Medium, || async move {
                    let _ = loaded_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::io::Error>("v1".to_owned())
                })
                .await
        })
    };
    loaded_rx.await?;
    writer.invalidate_namespace(key.namespace()).await?;
    release_tx.send(()).map_err(|_| "reader gone")?;
    assert_eq!(load.await??, "v1", "the caller still gets what it loaded");
    reader.settled().await; // its store has been tried
    // The writer knows the new stamp: the value stored by the overlapping load is old.
    assert_eq!(writer.get::<String>(&key).await?, None, "{}", redis.name());
    // The reader may serve it from L1 until its refresh, not after; a new instance never does.
    tokio::time::sleep(refresh + Duration::from_millis(50)).await;
    assert_eq!(reader.get::<String>(&key).await?, None, "{}: reader after its refresh", redis.name());
    let later = redis.cache().await;
    assert_eq!(later.get::<String>(&key).await?, None);
    let v2 = later.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>("v2".to_owned()) }).await?;
    later.settled().await;
    assert_eq!((v2.as_str(), writer.get::<String>(&key).await?), ("v2", Some("v2".to_owned())));
    Ok(())
}
on_both!(a_load_overlapping_an_invalidation_is_not_served);

/// Tags cut across namespaces; a tag invalidation leaves untagged values and other tags alone,
/// on every instance (B checks stamps on every read: `stamp_refresh(0)`).
async fn tags_invalidate_across_namespaces(redis: Redis) -> TestResult {
    let refresh = Duration::from_millis(200);
    let a = redis.builder().stamp_refresh(refresh).build().await?;
    let b = redis.builder().stamp_refresh(Duration::ZERO).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let (tenant, other) = (schema.tag("tenant-7")?, schema.tag("tenant-8")?);
    let user = schema.key("user", "7")?;
    let order = schema.key("order", "70")?;
    let plain = schema.key("user", "8")?;
    let foreign = schema.key("order", "80")?;
    a.set_tagged(&user, &"ada".to_owned(), Ttl::Medium, std::slice::from_ref(&tenant)).await?;
    let loaded = a
        .get_or_set_tagged(&order, Ttl::Medium, &[tenant.clone(), other.clone()], || async {
            Ok::<_, std::io::Error>("order 70".to_owned())
        })
        .await?;
    assert_eq!(loaded, "order 70");
    a.set(&plain, &"bob".to_owned(), Ttl::Medium).await?;
    a.set_tagged(&foreign, &"order 80".to_owned(), Ttl::Medium, std::slice::from_ref(&other)).await?;
    for cache in [&a, &b] {
        assert_eq!(cache.get::<String>(&user).await?.as_deref(), Some("ada"));
        assert_eq!(cache.get::<String>(&order).await?.as_deref(), Some("order 70"));
    }
    b.invalidate_tag(&tenant).await?;
    tokio::time::sleep(refresh + Duration::from_millis(50)).await;
    for cache in [&a, &b] {
        assert_eq!(cache.get::<String>(&user).await?, None, "{}: tagged value, other namespace", redis.name());
        assert_eq!(cache.get::<String>(&order).await?, None, "{}: one of two tags invalidated", redis.name());
        assert_eq!(cache.get::<String>(&plain).await?.as_deref(), Some("bob"));
        assert_eq!(cache.get::<String>(&foreign).await?.as_deref(), Some("order 80"));
    }
    // Whoever reads first finds the old values and counts them (removing them from Redis, which
    // evicts the other instance's L1 copies through invalidation: it then simply misses).
    assert!(a.metrics().total().invalidated + b.metrics().total().invalidated >= 2);
    // The stamp key is where the docs say, and invalidating twice keeps raising it.
    let mut raw = redis.raw();
    let stamp: u64 = redis::cmd("GET").arg(tenant.stamp_key()).query(raw.as_mut())?;
    b.invalidate_tag(&tenant).await?;
    let raised: u64 = redis::cmd("GET").arg("{it:tag:tenant-7}:stamp").query(raw.as_mut())?;
    assert!(raised > stamp, "{raised} > {stamp}");
    let pttl: i64 = redis::cmd("PTTL").arg(tenant.stamp_key()).query(raw.as_mut())?;
    assert!(pttl > 0, "a stamp has a TTL too (PTTL {pttl})");
    Ok(())
}
on_both!(tags_invalidate_across_namespaces);

/// A stamp that disappears (evicted, flushed) or is overwritten with garbage never resurrects
/// old values: it is re-created above every earlier generation, or reads are misses until an
/// invalidation repairs it.
async fn lost_or_broken_stamps_fail_safe(redis: Redis) -> TestResult {
    let writer = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("lost", "1")?;
    writer.set(&key, &"old".to_owned(), Ttl::Medium).await?;
    writer.invalidate_namespace(key.namespace()).await?;
    let stamp = strata::namespace_stamp_key(key.namespace())?;
    let mut raw = redis.raw();
    let _: () = redis::cmd("DEL").arg(&stamp).query(raw.as_mut())?;
    // The old bytes are still in Redis (written before the invalidation, never read since).
    let reader = redis.builder().stamp_refresh(Duration::ZERO).build().await?;
    assert_eq!(reader.get::<String>(&key).await?, None, "{}: a lost stamp must not resurrect", redis.name());
    reader.set(&key, &"new".to_owned(), Ttl::Medium).await?;
    assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("new"));

    let _: () = redis::cmd("SET").arg(&stamp).arg("garbage").query(raw.as_mut())?;
    assert_eq!(reader.get::<String>(&key).await?, None, "an unreadable stamp serves nothing");
    let refused = reader.set(&key, &"unverifiable".to_owned(), Ttl::Medium).await.expect_err("stamp unreadable");
    assert!(refused.is_corrupt(), "{refused}");
    assert_eq!(reader.get::<String>(&key).await?, None);
    reader.invalidate_namespace(key.namespace()).await?;
    reader.set(&key, &"after repair".to_owned(), Ttl::Medium).await?;
    assert_eq!(reader.get::<String>(&key).await?.as_deref(), Some("after repair"));
    assert!(reader.invalidate_namespace("it:v1").await.expect_err("not a namespace").is_invalid_key());
    assert!(reader.invalidate_namespace("it:v1:user:1").await.expect_err("a key").is_invalid_key());
    Ok(())
}
on_both!(lost_or_broken_stamps_fail_safe);
