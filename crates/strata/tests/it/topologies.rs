use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, Ttl};
use strata_cluster::RedisServer;
#[cfg(feature = "sentinel")]
use strata_cluster::SentinelSetup;

use crate::common::TestResult;

/// Sentinel: the cache finds the master through the sentinels, and after the master is killed
/// and a replica promoted, it follows the new master; callers of `get_or_set` see no error at
/// any point.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_follows_a_failover() -> TestResult {
    let mut setup = SentinelSetup::builder()
        .replicas(1)
        .sentinels(3)
        .quorum(2)
        .master_name("cache")
        .down_after_ms(1000)
        .failover_timeout_ms(3000)
        .start()?;
    let cache = Cache::builder()
        .sentinel(setup.sentinel_urls(), "cache")
        .l1_capacity_bytes(0)
        .op_timeout(Duration::from_millis(300))
        .connect_timeout(Duration::from_millis(300))
        .breaker(strata::BreakerConfig::new().failure_threshold(3).open_for(Duration::from_millis(300)))
        .build()
        .await?;
    let schema = KeySchema::new("it", 1)?;
    let key = schema.key("user", "1")?;
    cache.set(&key, &"one".to_string(), Ttl::Medium).await?;
    assert_eq!(cache.get::<String>(&key).await?, Some("one".into()));

    let old = setup.current_master()?;
    setup.data_node_mut(old).kill()?;
    let waiter =
        std::thread::spawn(move || setup.wait_for_master(Some(old), Duration::from_secs(30)).map(|i| (setup, i)));
    let deadline = Instant::now() + Duration::from_secs(40);
    let mut n = 0u32;
    while !waiter.is_finished() {
        let k = schema.key("user", &format!("during-{n}"))?;
        assert_eq!(cache.get_or_set(&k, Ttl::Short, || async move { Ok::<_, std::io::Error>(n) }).await?, n);
        assert!(Instant::now() < deadline, "failover did not finish");
        n += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (setup, new_master) = waiter.join().map_err(|_| "waiter panicked")??;
    assert_ne!(new_master, old);

    // Writes now land on the promoted master.
    let deadline = Instant::now() + Duration::from_secs(20);
    let after = schema.key("user", "after")?;
    loop {
        if cache.set(&after, &"two".to_string(), Ttl::Medium).await.is_ok() {
            break;
        }
        assert!(Instant::now() < deadline, "the cache never reached the new master: {:?}", cache.metrics());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = setup.data_nodes()[new_master].connection()?;
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg(after.as_str()).query(&mut conn)?;
    assert!(stored.is_some(), "the value is on the new master");
    Ok(())
}

/// Sentinel: the topology check (every `topology_interval`) asks the sentinels over a kept
/// connection, not a new one each time: 20 checks cost the sentinel no new connections; and a
/// kept connection the sentinel closed is replaced within the check, without flushing L1.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_topology_checks_reuse_one_connection() -> TestResult {
    let setup = SentinelSetup::builder().replicas(0).sentinels(1).quorum(1).master_name("cache").start()?;
    let mut invalidation = strata::Invalidation::default();
    invalidation.topology_interval = Duration::from_millis(100);
    let cache = Cache::builder().sentinel(setup.sentinel_urls(), "cache").invalidation(invalidation).build().await?;
    let key = KeySchema::new("it", 1)?.key("user", "1")?;
    cache.set(&key, &"one".to_string(), Ttl::Medium).await?;
    let mut sentinel = setup.sentinels()[0].connection()?;
    // A counter of the sentinel's INFO stats.
    let stat =
        |sentinel: &mut redis::Connection, name: &str| -> Result<u64, Box<dyn std::error::Error + Send + Sync>> {
            let info: String = redis::cmd("INFO").arg("stats").query(sentinel)?;
            let value = info.lines().find_map(|l| l.strip_prefix(name)?.strip_prefix(':')).ok_or("no counter")?;
            Ok(value.trim().parse()?)
        };
    // Let the first checks connect, then count over 2 s (about 20 checks).
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (connections, commands) = ("total_connections_received", "total_commands_processed");
    let (before, asked) = (stat(&mut sentinel, connections)?, stat(&mut sentinel, commands)?);
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = stat(&mut sentinel, connections)?;
    assert!(after - before <= 1, "{} new connections to the sentinel in 2 s", after - before);
    // The checks did run (each one command), besides this test's own INFO.
    assert!(stat(&mut sentinel, commands)? - asked >= 6, "the topology was not checked");

    // The sentinel closes the kept connection (a restart, an idle timeout): the next check
    // connects again instead of failing, so L1 is not flushed.
    let flushes = cache.metrics().l1_flushes;
    let killed: u64 =
        redis::cmd("CLIENT").arg("KILL").arg("TYPE").arg("normal").arg("SKIPME").arg("yes").query(&mut sentinel)?;
    assert!(killed >= 1, "the supervisor's connection was open");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(cache.metrics().l1_flushes, flushes, "a closed sentinel connection flushed L1");
    assert_eq!(cache.get::<String>(&key).await?, Some("one".into()), "the cache still works");
    Ok(())
}

/// Authentication: the right password works; a wrong one is a clear error from `require_redis`
/// and, for a running service, a silent fallback to the loader.
#[tokio::test]
async fn wrong_password_falls_back_to_the_loader() -> TestResult {
    let server = RedisServer::builder().password("s3cret-pw").start()?;
    let plain = format!("redis://127.0.0.1:{}", server.port());
    let key = KeySchema::new("it", 1)?.key("user", "1")?;

    let good = Cache::builder().redis_url(&plain).password("s3cret-pw").require_redis(true).build().await?;
    good.set(&key, &1u32, Ttl::Short).await?;
    assert_eq!(good.get::<u32>(&key).await?, Some(1));

    let err = Cache::builder()
        .redis_url(&plain)
        .password("wrong")
        .require_redis(true)
        .build()
        .await
        .err()
        .ok_or("expected an error")?;
    assert!(err.is_unavailable(), "{err}");
    assert!(!err.to_string().contains("wrong"), "the password must not leak into messages: {err}");
    let shown = err.to_string().to_uppercase();
    assert!(shown.contains("WRONGPASS") || shown.contains("AUTH"), "{err}");

    let bad = Cache::builder().redis_url(&plain).password("wrong").build().await?;
    let v = bad.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(2u32) }).await?;
    assert_eq!(v, 2, "the loader's value, not an error");
    let nopass = Cache::builder().redis_url(&plain).build().await?;
    assert_eq!(nopass.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(3u32) }).await?, 3);
    Ok(())
}

/// Cluster: a call on a key goes to the key's master over a connection of the cache's own
/// (`CLIENT LIST` names it `strata-l2`), not through redis-rs's cluster connection, and keeps
/// doing so across a failover (the promoted replica gets one) and a slot move; every key reads
/// back throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_calls_go_to_each_master_over_a_connection_of_the_cache() -> TestResult {
    let redis = std::sync::Arc::new(crate::common::Redis::cluster());
    let cache = redis.builder().l1_capacity_bytes(0).build().await?;
    let schema = KeySchema::new("it", 1)?;
    // Keys spread over every master, a third of them in the lowest 64 slots of a master's range
    // in a new 3-master cluster: those move in the "reshard" step.
    let moving = |key: &strata::Key| {
        let slot = redis::cluster_routing::Slot::for_key(key.as_str());
        [0u16, 5461, 10923]
            .iter()
            .any(|&first| (first..first + 64).any(|s| redis::cluster_routing::Slot::new(s) == Some(slot)))
    };
    let mut keys = Vec::new();
    let (mut plain, mut low) = (0, 0);
    for i in 0.. {
        let key = schema.key("direct", &i.to_string())?;
        if moving(&key) && low < 20 {
            low += 1;
        } else if !moving(&key) && plain < 40 {
            plain += 1;
        } else if low == 20 && plain == 40 {
            break;
        } else {
            continue;
        }
        keys.push(key);
    }
    for (i, key) in keys.iter().enumerate() {
        cache.set(key, &i, Ttl::Long).await?;
    }
    let owners = |cluster: std::sync::Arc<crate::common::Redis>, keys: Vec<strata::Key>| {
        tokio::task::spawn_blocking(move || -> Result<Vec<usize>, String> {
            let crate::common::Redis::Cluster(c) = cluster.as_ref() else { return Err("not a cluster".into()) };
            keys.iter().map(|k| c.node_for_key(k.as_str().as_bytes()).map_err(|e| e.to_string())).collect()
        })
    };
    for change in ["none", "failover", "reshard"] {
        let before = owners(redis.clone(), keys.clone()).await??;
        let cluster = redis.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let crate::common::Redis::Cluster(c) = cluster.as_ref() else { return Err("not a cluster".into()) };
            let masters = c.master_indices().map_err(|e| e.to_string())?;
            match change {
                "failover" => {
                    let replica = c.replica_indices().map_err(|e| e.to_string())?[0];
                    c.manual_failover(replica, Duration::from_secs(60)).map_err(|e| e.to_string())
                }
                "reshard" => c.reshard(masters[0], masters[1], 64).map_err(|e| e.to_string()),
                _ => Ok(()),
            }
        })
        .await??;
        let after = owners(redis.clone(), keys.clone()).await??;
        if change != "none" {
            assert!(before != after, "{change}: some keys change master");
        }
        // Every master (the promoted replica included) has a connection of the cache whose last
        // command was one of the reads below.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            for (i, key) in keys.iter().enumerate() {
                assert_eq!(cache.get::<usize>(key).await?, Some(i), "{change}: {key} reads back");
            }
            let cluster = redis.clone();
            let missing = tokio::task::spawn_blocking(move || -> Result<Vec<String>, String> {
                let crate::common::Redis::Cluster(c) = cluster.as_ref() else { return Err("not a cluster".into()) };
                let mut missing = Vec::new();
                for m in c.master_indices().map_err(|e| e.to_string())? {
                    let url = c.nodes()[m].url();
                    let mut conn = redis::Client::open(url.as_str())
                        .and_then(|client| client.get_connection())
                        .map_err(|e| e.to_string())?;
                    let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut conn).map_err(|e| e.to_string())?;
                    if !list.lines().any(|l| l.contains(" name=strata-l2 ") && l.contains(" cmd=get ")) {
                        missing.push(url);
                    }
                }
                Ok(missing)
            })
            .await??;
            if missing.is_empty() {
                break;
            }
            assert!(Instant::now() < deadline, "{change}: no read of the cache's own reached {missing:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
    Ok(())
}
