use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, Ttl};
use strata_cluster::{RedisServer, SentinelSetup};

use crate::common::TestResult;

/// Sentinel: the cache finds the master through the sentinels, and after the master is killed
/// and a replica promoted, it follows the new master; callers of `get_or_set` see no error at
/// any point.
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
