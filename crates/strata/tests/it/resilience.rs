use std::time::{Duration, Instant};

use strata::{BreakerState, Cache, KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// Redis goes away mid-test: `get_or_set` keeps answering from the loader within the configured
/// timeouts and the breaker opens. Redis comes back: the breaker closes and values reach Redis
/// again.
async fn outage_falls_back_to_the_loader_and_recovers(mut redis: Redis) -> TestResult {
    // L1 off: every call must touch L2 (or skip it), so the test sees Redis's state.
    let cache = redis.builder().l1_capacity_bytes(0).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let before = schema.key("item", "before")?;
    cache.set(&before, &"cached".to_string(), Ttl::Medium).await?;
    assert_eq!(cache.get::<String>(&before).await?, Some("cached".into()));

    redis.kill_all();
    // op_timeout and connect_timeout are both 500 ms in the test builder.
    let bound = Duration::from_millis(500 + 500 + 1500);
    for i in 0..10 {
        let key = schema.key("item", &format!("down-{i}"))?;
        let started = Instant::now();
        let value = cache.get_or_set(&key, Ttl::Short, || async move { Ok::<_, std::io::Error>(i) }).await?;
        assert_eq!(value, i);
        assert!(started.elapsed() < bound, "{}: call {i} took {:?}", redis.name(), started.elapsed());
    }
    assert_eq!(cache.get::<String>(&before).await?, None, "a read during the outage is a miss, not an error");
    let snapshot = cache.metrics();
    assert_eq!(snapshot.breaker_state, BreakerState::Open, "{snapshot:?}");
    assert!(snapshot.breaker_opens >= 1 && snapshot.breaker_rejections > 0, "{snapshot:?}");
    assert_eq!(snapshot.namespace("it:v1:item").loader_calls, 10);

    redis.restart_all();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        let key = schema.key("item", &format!("after-{n}"))?;
        cache.get_or_set(&key, Ttl::Medium, || async move { Ok::<_, std::io::Error>(n) }).await?;
        if cache.breaker_state() == BreakerState::Closed && cache.get::<i32>(&key).await? == Some(n) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{}: breaker did not close after restart: {:?}",
            redis.name(),
            cache.metrics()
        );
        n += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // L2 is used again: the value written through the cache is in Redis.
    cache.settled().await;
    let mut raw = redis.raw();
    let key = schema.key("item", &format!("after-{n}"))?;
    let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(raw.as_mut())?;
    assert!(exists, "{}: writes must reach Redis after recovery", redis.name());
    Ok(())
}
on_both!(outage_falls_back_to_the_loader_and_recovers);

/// A value loaded while Redis is unreachable stands in L1 for the next calls (the source is not
/// hammered), for one heartbeat interval at most: when Redis comes back, this instance may not
/// know for a while (its breaker still open, its tracking not reconnected), while others write
/// again, and its copy must not outlive the staleness bound. Found by `strata drill outage`: a
/// read 706 ms stale right after the restart (bound 700 ms).
async fn a_value_loaded_during_an_outage_stays_in_l1_one_heartbeat_at_most(mut redis: Redis) -> TestResult {
    // The test builder's heartbeat is 200 ms.
    let cache = redis.builder().build().await?;
    let key = KeySchema::new("it", 1)?.key("item", "outage-l1")?;
    redis.kill_all();
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    let load = || {
        let loads = loads.clone();
        move || async move { Ok::<_, std::io::Error>(loads.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1) }
    };
    assert_eq!(cache.get_or_set(&key, Ttl::Long, load()).await?, 1);
    assert_eq!(cache.get_or_set(&key, Ttl::Long, load()).await?, 1, "{}: L1 stands in during the outage", redis.name());
    tokio::time::sleep(Duration::from_millis(400)).await;
    assert_eq!(
        cache.get_or_set(&key, Ttl::Long, load()).await?,
        2,
        "{}: a copy loaded during the outage outlived the heartbeat interval",
        redis.name()
    );
    redis.restart_all();
    Ok(())
}
on_both!(a_value_loaded_during_an_outage_stays_in_l1_one_heartbeat_at_most);

/// A paused (hung) Redis: calls time out instead of hanging, and the loader's value is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hung_redis_times_out() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.builder().l1_capacity_bytes(0).op_timeout(Duration::from_millis(200)).build().await?;
    let key = KeySchema::new("it", 1)?.key("item", "hung")?;
    let Redis::Standalone(server) = &redis else { unreachable!() };
    server.node().pause()?;
    let started = Instant::now();
    let value = cache.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(5) }).await;
    let elapsed = started.elapsed();
    server.node().resume()?;
    assert_eq!(value?, 5);
    assert!(elapsed < Duration::from_millis(200 + 500 + 1000), "took {elapsed:?}");
    assert!(cache.metrics().l2_timeouts >= 1);
    Ok(())
}

/// Building a cache while Redis is unreachable succeeds (the service starts), unless
/// `require_redis` asks otherwise.
#[tokio::test]
async fn starts_without_redis_unless_required() -> TestResult {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
    let url = format!("redis://127.0.0.1:{port}");
    let cache = strata::Cache::builder().redis_url(&url).build().await?;
    let key = KeySchema::new("it", 1)?.key("item", "x")?;
    assert_eq!(cache.get_or_set(&key, Ttl::Short, || async { Ok::<_, std::io::Error>(1) }).await?, 1);
    let err =
        strata::Cache::builder().redis_url(&url).require_redis(true).build().await.err().ok_or("expected an error")?;
    assert!(err.is_unavailable(), "{err}");
    let bad = strata::Cache::builder().redis_url("http://nope").build().await.err().ok_or("expected an error")?;
    assert!(bad.is_config(), "{bad}");
    Ok(())
}

/// A master of a cluster dies and no replica takes over (none configured, and the node timeout
/// is long): calls on its slots fall back to the loader and open the breakers of their slot
/// ranges, while keys on the live masters are still read from Redis. One breaker for the whole
/// cluster would have skipped those too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_master_does_not_stop_the_other_slots() -> TestResult {
    let mut cluster = strata_cluster::RedisCluster::builder().masters(3).replicas(0).node_timeout_ms(60_000).start()?;
    let cache = Cache::builder()
        .cluster(cluster.seed_urls())
        .l1_capacity_bytes(0)
        .op_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .breaker(strata::BreakerConfig::new().failure_threshold(3).open_for(Duration::from_secs(60)))
        .build()
        .await?;
    let schema = KeySchema::new("it", 1)?;
    let mut keys = Vec::new();
    for i in 0..60 {
        let key = schema.key("item", &i.to_string())?;
        cache.set(&key, &i, Ttl::Long).await?;
        keys.push((cluster.node_for_key(key.as_str().as_bytes())?, key, i));
    }
    let dead = keys[0].0;
    cluster.node_mut(dead).kill()?;
    let (on_dead, on_live): (Vec<_>, Vec<_>) = keys.iter().partition(|(node, _, _)| *node == dead);
    // A breaker guards 256 slots; a range the dead master shares with a live one may be skipped.
    let mut dead_ranges = std::collections::HashSet::new();
    for (_, key, _) in &on_dead {
        dead_ranges.insert(cluster.key_slot(key.as_str().as_bytes())? / 256);
    }
    let mut clear_live = Vec::new();
    for entry in &on_live {
        if !dead_ranges.contains(&(cluster.key_slot(entry.1.as_str().as_bytes())? / 256)) {
            clear_live.push(*entry);
        }
    }
    assert!(!on_dead.is_empty() && clear_live.len() >= 10, "keys spread over the masters");

    // A load as callers make it: calls on both sides interleaved. Every call is answered: the
    // dead master's keys by the loader, the live masters' keys from Redis (their loader is never
    // called). Several rounds: a range breaker opens after 3 consecutive failures on it.
    let loads = std::sync::Arc::new(std::sync::atomic::AtomicU32::new(0));
    for round in 0..4 {
        for (n, (_, key, i)) in on_dead.iter().enumerate() {
            let counter = loads.clone();
            let loader = || async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                Ok::<_, std::io::Error>(*i)
            };
            assert_eq!(cache.get_or_set(key, Ttl::Long, loader).await?, *i);
            let (_, live, j) = clear_live[(round * on_dead.len() + n) % clear_live.len()];
            let got = cache.get_or_set(live, Ttl::Long, || async { Err::<i32, _>(std::io::Error::other("no")) }).await;
            assert_eq!(got?, *j, "{live} lives on a live master: served from Redis");
        }
    }
    assert_eq!(loads.load(std::sync::atomic::Ordering::Relaxed) as usize, 4 * on_dead.len());
    let snapshot = cache.metrics();
    assert_eq!(snapshot.breaker_state, BreakerState::Open, "{snapshot:?}");
    assert!(snapshot.breakers_open >= 1 && snapshot.breaker_rejections > 0, "{snapshot:?}");
    for (_, key, i) in &clear_live {
        assert_eq!(cache.get::<i32>(key).await?, Some(*i), "{key} lives on a live master");
    }
    Ok(())
}
