//! Auto-recovery: invalidations Redis could not take are queued in the instance, held back from
//! its reads, and replayed when Redis is back (`cache/recovery.rs`).

use std::time::Duration;

use strata::{AutoRecovery, KeySchema, Ttl};
use strata_cluster::RedisServer;

use crate::common::{Redis, TestResult, within};

/// Redis dies with three values in it (persisted: they come back with it). Through instance A,
/// during the outage: one key deleted, one overwritten, one namespace invalidated. Without
/// auto-recovery each of them would serve its old value again once Redis is back, on every
/// instance, until its TTL; with it, A replays the three when Redis returns, and neither A nor
/// B (which held all three in L1) serves an old value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_redis_could_not_take_are_replayed_when_it_is_back() -> TestResult {
    let server = RedisServer::builder().appendonly(true).config_line("appendfsync always").start()?;
    let mut redis = Redis::Standalone(server);
    let (a, b) = (redis.cache().await, redis.cache().await);
    let tiny = redis.builder().auto_recovery(AutoRecovery::with_capacity(1)).build().await?;
    let schema = KeySchema::new("rec", 1)?;
    let (deleted, replaced, page) = (schema.key("user", "1")?, schema.key("user", "2")?, schema.key("page", "1")?);
    let old = "old".to_owned();
    for key in [&deleted, &replaced, &page] {
        a.set(key, &old, Ttl::Long).await?;
        assert_eq!(b.get::<String>(key).await?.as_deref(), Some("old"));
    }

    redis.kill_all();
    // Each call fails (it has not completed), and says its removal is queued.
    let errors = [
        a.delete(&deleted).await.map(drop).expect_err("redis is down"),
        a.set(&replaced, &"new".to_owned(), Ttl::Long).await.expect_err("redis is down"),
        a.invalidate_namespace(page.namespace()).await.expect_err("redis is down"),
    ];
    for err in errors {
        assert!(err.is_unavailable() && err.is_queued(), "{err}");
    }
    assert_eq!(a.recovery_queue_len(), 3);

    // Held back on A: a load answers the caller, and nothing of the key is kept meanwhile (a
    // value loaded while Redis is away otherwise stands in, in L1).
    let mut loads = 0;
    let fresh = a
        .get_or_set(&deleted, Ttl::Long, || {
            loads += 1;
            async { Ok::<_, std::io::Error>("fresh".to_owned()) }
        })
        .await?;
    assert_eq!((fresh.as_str(), loads), ("fresh", 1));
    assert_eq!(a.get::<String>(&deleted).await?, None, "not cached while its removal is queued");

    // Bounded: past its capacity, an invalidation is not queued and fails as before.
    assert!(tiny.delete(&deleted).await.expect_err("redis is down").is_queued());
    let dropped = tiny.delete(&replaced).await.expect_err("the queue is full");
    assert!(dropped.is_unavailable() && !dropped.is_queued(), "{dropped}");
    assert_eq!((tiny.recovery_queue_len(), tiny.metrics().recovery_dropped), (1, 1));

    redis.restart_all();
    assert!(within(Duration::from_secs(20), || async { a.recovery_queue_len() == 0 }).await, "A's queue drains");
    let m = a.metrics();
    assert_eq!((m.recovery_queue, m.recovery_queued, m.recovery_replayed, m.recovery_dropped), (0, 3, 3, 0));
    assert!(a.prometheus_text().contains("strata_recovery_replayed_total 3"));

    // Every instance: no old value, from either tier (B's L1 was flushed when its tracking
    // connection went; it now reads what Redis holds).
    for cache in [&a, &b] {
        for key in [&deleted, &replaced, &page] {
            let current = within(Duration::from_secs(5), || async {
                cache.get::<String>(key).await.expect("a read").as_deref() != Some("old")
            })
            .await;
            assert!(current, "{key} serves its old value");
        }
    }
    let mut raw = redis.raw();
    for key in [&deleted, &replaced] {
        let held: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query(&mut *raw)?;
        assert_eq!(held, None, "{key} removed from Redis by the replay");
    }
    // A serves the key again once its removal is replayed.
    a.set(&deleted, &"again".to_owned(), Ttl::Long).await?;
    assert_eq!(a.get::<String>(&deleted).await?.as_deref(), Some("again"));
    Ok(())
}

/// Off: an error, and nothing queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_auto_recovery_an_invalidation_redis_cannot_take_fails() -> TestResult {
    let mut redis = Redis::standalone();
    let cache = redis.builder().auto_recovery(AutoRecovery::disabled()).build().await?;
    let key = KeySchema::new("rec", 1)?.key("user", "1")?;
    redis.kill_all();
    let err = cache.delete(&key).await.expect_err("redis is down");
    assert!(err.is_unavailable() && !err.is_queued(), "{err}");
    assert!(cache.invalidate_namespace(key.namespace()).await.is_err());
    assert_eq!((cache.recovery_queue_len(), cache.metrics().recovery_dropped), (0, 0));
    Ok(())
}

/// A load whose store and lease release Redis could not take (it died while the loader ran)
/// leaves its lease behind; without auto-recovery every caller of the key in every process
/// would wait for it until its TTL once Redis is back (the 2-8 s calls `strata drill failover`
/// found). The release is queued and replayed: the lease goes long before its TTL (60 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_left_by_an_outage_is_released_when_redis_is_back() -> TestResult {
    let server = RedisServer::builder().appendonly(true).config_line("appendfsync always").start()?;
    let mut redis = Redis::Standalone(server);
    let leases = strata::LeaseConfig::default().ttl(Duration::from_secs(60)).max_wait(Duration::from_secs(60));
    let cache = redis.builder().leases(leases).build().await?;
    let key = KeySchema::new("rec", 1)?.key("user", "leased")?;
    let lease = strata::lease_key(key.as_str());
    let loaded = cache
        .get_or_set(&key, Ttl::Long, || async {
            redis.kill_all();
            Ok::<_, std::io::Error>("loaded".to_owned())
        })
        .await?;
    assert_eq!(loaded, "loaded");
    cache.settled().await;
    assert_eq!(cache.recovery_queue_len(), 1, "the lease release is queued");

    // Redis comes back with the lease (AOF); without the replay it would stay for 60 s.
    redis.restart_all();
    let mut raw = redis.raw();
    assert!(within(Duration::from_secs(20), || async { cache.recovery_queue_len() == 0 }).await, "replayed");
    let held: Option<String> = redis::cmd("GET").arg(&lease).query(&mut *raw)?;
    assert_eq!(held, None, "released");
    assert_eq!(cache.metrics().recovery_replayed, 1);
    // The key is not held back: the next read loads and caches it at once.
    let again = cache.get_or_set(&key, Ttl::Long, || async { Ok::<_, std::io::Error>("again".to_owned()) }).await?;
    assert_eq!(again, "again");
    Ok(())
}

/// `WAIT`-confirmed invalidations: with one replica per master, a `delete` and a namespace
/// invalidation confirmed by 1 replica complete (at once, or through the replay when the
/// replica is slow); asking for 2 (more than exist) they fail as unconfirmed (a failover could
/// still lose them) and are queued, although the master took them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalidations_can_wait_for_replicas() -> TestResult {
    let redis = Redis::cluster();
    // A just-formed cluster's replicas may still be syncing: WAIT counts online ones only.
    let Redis::Cluster(cluster) = &redis else { unreachable!("cluster") };
    for i in cluster.master_indices()? {
        let mut con = cluster.nodes()[i].connection()?;
        let online = within(Duration::from_secs(20), || {
            let info: String = redis::cmd("INFO").arg("replication").query(&mut con).unwrap_or_default();
            std::future::ready(info.lines().any(|l| l.starts_with("slave0:") && l.contains("state=online")))
        })
        .await;
        assert!(online, "master {i}'s replica is online");
    }
    let schema = KeySchema::new("rec", 1)?;
    let key = schema.key("user", "1")?;
    let wait = |n| AutoRecovery::default().wait_for_replicas(n, Duration::from_millis(100));
    let one = redis.builder().auto_recovery(wait(1)).build().await?;
    one.set(&key, &"v".to_owned(), Ttl::Long).await?;
    // Confirmed by the replica, at once or, when it is slow to acknowledge on a loaded machine
    // (100 ms here), by the replay, which waits for it again: the queue drains either way.
    let outcomes = [one.delete(&key).await.map(drop), one.invalidate_namespace(key.namespace()).await];
    for outcome in outcomes {
        if let Err(err) = outcome {
            assert!(err.is_timeout() && err.is_queued(), "only an unconfirmed one may fail: {err}");
        }
    }
    assert!(within(Duration::from_secs(20), || async { one.recovery_queue_len() == 0 }).await, "confirmed");
    assert_eq!(one.metrics().recovery_dropped, 0);

    let two = redis.builder().auto_recovery(wait(2)).build().await?;
    two.set(&key, &"v".to_owned(), Ttl::Long).await?;
    let err = two.delete(&key).await.expect_err("only one replica");
    assert!(err.is_timeout() && err.is_queued(), "{err}");
    assert!(err.to_string().contains("of 2 replicas confirmed"), "{err}");
    let err = two.invalidate_namespace(key.namespace()).await.expect_err("only one replica");
    assert!(err.is_queued(), "{err}");
    assert_eq!(two.recovery_queue_len(), 2);
    // The master took the DEL all the same.
    let held: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query(&mut *redis.raw())?;
    assert_eq!(held, None);
    assert!(
        redis
            .builder()
            .auto_recovery(AutoRecovery::default().wait_for_replicas(1, Duration::from_secs(1)))
            .build()
            .await
            .is_err(),
        "a confirmation as long as op_timeout is refused"
    );
    Ok(())
}
