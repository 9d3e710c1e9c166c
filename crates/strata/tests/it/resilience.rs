use std::time::{Duration, Instant};

use strata::{BreakerState, KeySchema, Ttl};

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
    let mut raw = redis.raw();
    let key = schema.key("item", &format!("after-{n}"))?;
    let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(raw.as_mut())?;
    assert!(exists, "{}: writes must reach Redis after recovery", redis.name());
    Ok(())
}
on_both!(outage_falls_back_to_the_loader_and_recovers);

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
