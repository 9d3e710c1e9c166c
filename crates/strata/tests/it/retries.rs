//! Replies that mean "not executed, try again shortly" are retried within the op timeout;
//! other error replies are not.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, Ttl};
use strata_cluster::RedisServer;
#[cfg(feature = "sentinel")]
use strata_cluster::SentinelSetup;

use crate::common::TestResult;

/// Filler keys that make a reload last: with `key-load-delay` (microseconds slept per key) the
/// server spends at least 10 000 * 50 us = 0.5 s loading them, answering `-LOADING` meanwhile.
const FILLER_KEYS: u32 = 10_000;

/// A standalone server that loads slowly and serves other clients while it does (every 1 KiB of
/// the dump read, the minimum); `DEBUG RELOAD` is allowed from loopback by default.
fn slow_loading_server() -> RedisServer {
    RedisServer::builder()
        .config_line("key-load-delay 50")
        .config_line("loading-process-events-interval-bytes 1024")
        .start()
        .expect("start redis-server")
}

/// Waits (bounded) until the server answers `-LOADING`; false if the reload ended first.
fn wait_for_loading(probe: &mut redis::Connection, reload: &std::thread::JoinHandle<()>) -> bool {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline && !reload.is_finished() {
        match redis::cmd("PING").query::<String>(probe) {
            Err(e) if e.code() == Some("LOADING") => return true,
            _ => std::thread::sleep(Duration::from_millis(1)),
        }
    }
    false
}

/// A server restarting from its dump answers `LOADING` to everyone: a read and a write made
/// through the cache meanwhile wait for the load to end (within the op timeout) instead of
/// failing, the read is answered by Redis, not by the loader, and the retries are counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loading_replies_are_retried_until_the_server_serves() -> TestResult {
    let server = slow_loading_server();
    // L1 off, so that the read has to reach Redis. An op timeout far above the reload's length,
    // even on a loaded machine: the test is about the outcome, not about the time it takes.
    let cache = Cache::builder()
        .redis_url(server.url())
        .l1_capacity_bytes(0)
        .op_timeout(Duration::from_secs(10))
        .build()
        .await?;
    let schema = KeySchema::new("it", 1)?;
    let (read_key, write_key) = (schema.key("item", "loading-read")?, schema.key("item", "loading-write")?);
    cache.set(&read_key, &"from redis".to_string(), Ttl::Long).await?;
    let mut raw = server.connection()?;
    redis::cmd("DEBUG").arg("POPULATE").arg(FILLER_KEYS).arg("filler").arg(16).query::<()>(&mut raw)?;
    assert_eq!(cache.metrics().l2_retries, 0);

    // Connected before the load: a new connection's handshake could meet LOADING itself.
    let mut probe = server.connection()?;
    // DEBUG RELOAD saves the dataset, empties it and loads it again; it answers once loaded.
    let mut reloader = server.node().connection_with_timeout(Duration::from_secs(2), Some(Duration::from_secs(120)))?;
    let reload = std::thread::spawn(move || {
        redis::cmd("DEBUG").arg("RELOAD").query::<()>(&mut reloader).expect("DEBUG RELOAD");
    });
    assert!(wait_for_loading(&mut probe, &reload), "the server never answered LOADING during DEBUG RELOAD");

    let loads = Arc::new(AtomicU32::new(0));
    let counted = loads.clone();
    let read = cache.get_or_set(&read_key, Ttl::Short, || async move {
        counted.fetch_add(1, Ordering::Relaxed);
        Ok::<_, std::io::Error>("from the loader".to_string())
    });
    let write = cache.set(&write_key, &7u32, Ttl::Long);
    let (read, write) = tokio::join!(read, write);
    reload.join().map_err(|_| "DEBUG RELOAD failed")?;

    assert_eq!(read?, "from redis");
    write?;
    assert_eq!(loads.load(Ordering::Relaxed), 0, "the loader ran: the read did not wait for the load");
    let stats = cache.metrics();
    assert!(stats.l2_retries > 0, "{stats:?}");
    assert_eq!(stats.l2_errors + stats.l2_timeouts, 0, "{stats:?}");
    assert_eq!(stats.namespace("it:v1:item").l2_hits, 1, "{stats:?}");
    // The write reached Redis once the server was serving again.
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg(write_key.as_str()).query(&mut raw)?;
    assert!(stored.is_some(), "the write made during the load is not in Redis");
    assert_eq!(cache.get::<u32>(&write_key).await?, Some(7));
    Ok(())
}

/// An error reply that no wait would change is not retried: `WRONGTYPE` (the key holds a list)
/// fails the read once, which treats the key as foreign and removes it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_reply_is_not_retried() -> TestResult {
    let server = RedisServer::start()?;
    let cache = Cache::builder()
        .redis_url(server.url())
        .l1_capacity_bytes(0)
        .op_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let key = KeySchema::new("it", 1)?.key("item", "a-list")?;
    let mut raw = server.connection()?;
    redis::cmd("RPUSH").arg(key.as_str()).arg("not a cache value").query::<()>(&mut raw)?;

    assert_eq!(cache.get::<String>(&key).await?, None);
    let stats = cache.metrics();
    assert_eq!(stats.l2_errors, 1, "the GET must have met WRONGTYPE once: {stats:?}");
    assert_eq!(stats.l2_retries, 0, "{stats:?}");
    assert_eq!(stats.namespace("it:v1:item").corrupt, 1, "{stats:?}");
    let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(&mut raw)?;
    assert!(!exists, "the foreign key should have been removed");
    Ok(())
}

/// The same with L1 on, where the read is a pipeline (GET + PTTL, and the lease script on a
/// `get_or_set`): a WRONGTYPE reply inside it is still a foreign key, removed, and the load's
/// value replaces it; it does not count against the breaker.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrongtype_reply_in_a_pipelined_read_is_a_foreign_key() -> TestResult {
    let server = RedisServer::start()?;
    let cache = Cache::builder().redis_url(server.url()).op_timeout(Duration::from_secs(5)).build().await?;
    let mut raw = server.connection()?;
    let schema = KeySchema::new("it", 1)?;
    for (i, id) in ["get", "get-or-set"].into_iter().enumerate() {
        let key = schema.key("item", id)?;
        redis::cmd("RPUSH").arg(key.as_str()).arg("not a cache value").query::<()>(&mut raw)?;
        if i == 0 {
            assert_eq!(cache.get::<String>(&key).await?, None);
            let exists: bool = redis::cmd("EXISTS").arg(key.as_str()).query(&mut raw)?;
            assert!(!exists, "the foreign key should have been removed");
        } else {
            let v =
                cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>("loaded".to_owned()) }).await?;
            assert_eq!(v, "loaded");
            assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("loaded"));
        }
    }
    let stats = cache.metrics();
    assert_eq!(stats.namespace("it:v1:item").corrupt, 2, "{stats:?}");
    assert_eq!(stats.l2_retries, 0, "{stats:?}");
    assert_eq!(stats.breaker_state, strata::BreakerState::Closed, "{stats:?}");
    Ok(())
}

/// Sentinel: a write that reaches a master demoted since the last call (`READONLY`) is retried
/// on the master the sentinels name now, within the same call.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_to_a_demoted_sentinel_master_moves_to_the_new_one() -> TestResult {
    let setup = SentinelSetup::builder()
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
        .op_timeout(Duration::from_secs(5))
        .build()
        .await?;
    let schema = KeySchema::new("it", 1)?;
    cache.set(&schema.key("user", "before")?, &1u32, Ttl::Medium).await?;
    let old = setup.current_master()?;

    // A switchover: the replica is promoted while the old master keeps running, and the
    // cache's connection to the old master stays open.
    let mut sentinel = setup.sentinels()[0].connection()?;
    redis::cmd("SENTINEL").arg("FAILOVER").arg("cache").query::<()>(&mut sentinel)?;
    let new = setup.wait_for_master(Some(old), Duration::from_secs(30))?;
    // Demote the old master now, as the sentinels will a few seconds later (they would also
    // close its client connections, which is not the case under test).
    let mut demoted = setup.data_nodes()[old].connection()?;
    redis::cmd("REPLICAOF").arg("127.0.0.1").arg(setup.data_nodes()[new].port()).query::<()>(&mut demoted)?;
    assert_eq!(cache.metrics().l2_retries, 0);

    let after = schema.key("user", "after")?;
    cache.set(&after, &2u32, Ttl::Medium).await?;
    let stats = cache.metrics();
    assert!(stats.l2_retries >= 1, "the write should have met READONLY first: {stats:?}");
    assert_eq!(stats.l2_errors + stats.l2_timeouts, 0, "{stats:?}");
    let mut conn = setup.data_nodes()[new].connection()?;
    let stored: Option<Vec<u8>> = redis::cmd("GET").arg(after.as_str()).query(&mut conn)?;
    assert!(stored.is_some(), "the value is on the new master");
    Ok(())
}
