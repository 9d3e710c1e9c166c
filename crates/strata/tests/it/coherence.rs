//! Cross-instance L1 coherence: writes anywhere evict every instance's L1 copy, a lost
//! invalidation connection flushes L1, and no stale copy survives a burst of concurrent writes.
//! Every cache keeps L1 copies for up to a minute, so only invalidation can explain a fresh read.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata::{Cache, Invalidation, Key, KeySchema, Ttl};

use crate::common::{Redis, TestResult};
use crate::on_both;

/// Longer than any test: an L1 copy can only go away by invalidation.
const L1_LIFETIME: Duration = Duration::from_secs(60);
/// How long an instance may take to see a change (generous: a loaded 2-core machine).
const PATIENCE: Duration = Duration::from_secs(3);

async fn instance(redis: &Redis) -> Result<Cache, strata::Error> {
    redis.builder().l1_max_ttl(L1_LIFETIME).build().await
}

/// Reads through `cache` until it returns `want`, or fails after [`PATIENCE`].
async fn until_reads(cache: &Cache, key: &Key, want: Option<&str>, what: &str) -> TestResult {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let got: Option<String> = cache.get(key).await?;
        if got.as_deref() == want {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{what}: still reads {got:?}, want {want:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Reads `key` through each cache until a read is an L1 hit (tracking up, the value in L1), or
/// fails after [`PATIENCE`]. On a loaded machine a missed heartbeat can flush L1 in between.
async fn prime(caches: &[&Cache], key: &Key, want: &str) -> TestResult {
    for cache in caches {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let before = cache.metrics().total().l1_hits;
            for _ in 0..2 {
                assert_eq!(cache.get::<String>(key).await?.as_deref(), Some(want));
            }
            let metrics = cache.metrics();
            if metrics.total().l1_hits > before && metrics.l1_coherent {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the value is never served from L1: {metrics:?}").into());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    Ok(())
}

async fn writes_through_one_instance_reach_the_others(redis: Redis) -> TestResult {
    let (a, b, c) = (instance(&redis).await?, instance(&redis).await?, instance(&redis).await?);
    let key = KeySchema::new("it", 1)?.key("coherence", "abc")?;
    a.set(&key, &"v0".to_owned(), Ttl::Long).await?;
    prime(&[&b, &c], &key, "v0").await?;
    for round in 1..=20 {
        let value = format!("v{round}");
        a.set(&key, &value, Ttl::Long).await?;
        until_reads(&b, &key, Some(&value), "B after A's set").await?;
        until_reads(&c, &key, Some(&value), "C after A's set").await?;
    }
    a.delete(&key).await?;
    until_reads(&b, &key, None, "B after A's delete").await?;
    until_reads(&c, &key, None, "C after A's delete").await?;
    assert!(b.metrics().invalidation_messages >= 21, "{}: {:?}", redis.name(), b.metrics());
    Ok(())
}
on_both!(writes_through_one_instance_reach_the_others);

async fn a_plain_client_write_evicts_every_l1(redis: Redis) -> TestResult {
    let caches = [instance(&redis).await?, instance(&redis).await?, instance(&redis).await?];
    let refs: Vec<&Cache> = caches.iter().collect();
    let schema = KeySchema::new("it", 1)?;
    let (key, donor) = (schema.key("coherence", "plain")?, schema.key("coherence", "donor")?);
    caches[0].set(&key, &"old".to_owned(), Ttl::Long).await?;
    caches[0].set(&donor, &"new".to_owned(), Ttl::Long).await?;
    prime(&refs, &key, "old").await?;

    // Another application copies a valid value over the key, as `redis-cli` could.
    let mut raw = redis.raw();
    let bytes: Vec<u8> = redis::cmd("GET").arg(donor.as_str()).query(raw.as_mut())?;
    redis::cmd("SET").arg(key.as_str()).arg(bytes).query::<()>(raw.as_mut())?;
    for (i, cache) in caches.iter().enumerate() {
        until_reads(cache, &key, Some("new"), &format!("instance {i} after a plain SET")).await?;
    }
    prime(&refs, &key, "new").await?;
    redis::cmd("DEL").arg(key.as_str()).query::<()>(raw.as_mut())?;
    for (i, cache) in caches.iter().enumerate() {
        until_reads(cache, &key, None, &format!("instance {i} after a plain DEL")).await?;
    }
    Ok(())
}
on_both!(a_plain_client_write_evicts_every_l1);

async fn killing_the_tracking_connection_flushes_l1(redis: Redis) -> TestResult {
    let cache = instance(&redis).await?;
    // Without tracking of its own, so that the only tracking connections are the victim's.
    let writer = redis.builder().invalidation(Invalidation::disabled()).build().await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "killed")?;
    writer.set(&key, &"v1".to_owned(), Ttl::Long).await?;
    prime(&[&cache], &key, "v1").await?;
    let flushes = cache.metrics().l1_flushes;

    // Kill the instance's tracking connections, then write at once: that write's invalidation
    // may be lost, so the instance must not trust its L1 copy any more.
    let mut killed = 0;
    for mut node in redis.node_connections() {
        let list: String = redis::cmd("CLIENT").arg("LIST").query(&mut node)?;
        for id in list.lines().filter(|l| l.contains("name=strata-invalidation")).filter_map(client_id) {
            killed += redis::cmd("CLIENT").arg("KILL").arg("ID").arg(id).query::<i64>(&mut node)?;
        }
    }
    let expected = if matches!(redis, Redis::Cluster(_)) { 3 } else { 1 };
    assert_eq!(killed, expected, "{}: one tracking connection per master", redis.name());
    writer.set(&key, &"v2".to_owned(), Ttl::Long).await?;
    until_reads(&cache, &key, Some("v2"), "after its tracking connection was killed").await?;
    assert!(cache.metrics().l1_flushes > flushes, "{:?}", cache.metrics());

    // Tracking comes back by itself, and invalidations flow again.
    let deadline = Instant::now() + PATIENCE;
    while !cache.metrics().l1_coherent {
        assert!(Instant::now() < deadline, "tracking did not come back");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    prime(&[&cache], &key, "v2").await?;
    writer.set(&key, &"v3".to_owned(), Ttl::Long).await?;
    until_reads(&cache, &key, Some("v3"), "after tracking came back").await?;
    Ok(())
}
on_both!(killing_the_tracking_connection_flushes_l1);

fn client_id(line: &str) -> Option<u64> {
    line.split_whitespace().find_map(|f| f.strip_prefix("id="))?.parse().ok()
}

/// Readers hammer a key while writers change it: once the writes stop and the invalidation
/// delay has passed, no reader may still hold an older value (the fill/invalidation race).
async fn no_stale_copy_survives_a_burst_of_writes(redis: Redis) -> TestResult {
    let schema = KeySchema::new("it", 1)?;
    let writers = [instance(&redis).await?, instance(&redis).await?];
    let readers = [instance(&redis).await?, instance(&redis).await?, instance(&redis).await?];
    for k in 0..4 {
        let key = schema.key("coherence", &format!("burst{k}"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let reading: Vec<_> = readers
            .iter()
            .map(|r| {
                let (r, key, stop) = (r.clone(), key.clone(), stop.clone());
                tokio::spawn(async move {
                    while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                        let _ = r.get::<String>(&key).await;
                        tokio::task::yield_now().await;
                    }
                })
            })
            .collect();
        for i in 0..200 {
            writers[i % 2].set(&key, &format!("w{i}"), Ttl::Long).await?;
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        for r in reading {
            r.await?;
        }
        for (i, reader) in readers.iter().enumerate() {
            until_reads(reader, &key, Some("w199"), &format!("reader {i}, key {k}")).await?;
        }
    }
    Ok(())
}
on_both!(no_stale_copy_survives_a_burst_of_writes);

/// A namespace invalidation reaches other instances through tracking (the stamp key changed),
/// long before their stamp cache would expire (a minute here).
async fn a_namespace_invalidation_reaches_other_instances_at_once(redis: Redis) -> TestResult {
    let build = || redis.builder().l1_max_ttl(L1_LIFETIME).stamp_refresh(Duration::from_secs(60)).build();
    let (a, b) = (build().await?, build().await?);
    let key = KeySchema::new("it", 1)?.key("nsinv", "1")?;
    a.set(&key, &"old".to_owned(), Ttl::Long).await?;
    prime(&[&b], &key, "old").await?;
    a.invalidate_namespace(key.namespace()).await?;
    until_reads(&b, &key, None, "B after A's namespace invalidation").await?;
    Ok(())
}
on_both!(a_namespace_invalidation_reaches_other_instances_at_once);

/// An instance in another process sees a write made here.
async fn another_process_sees_the_write(redis: Redis) -> TestResult {
    let dir = tempfile::tempdir()?;
    let cache = instance(&redis).await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "process")?;
    cache.set(&key, &"before".to_owned(), Ttl::Long).await?;
    let worker = spawn_reader(&redis, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("primed").exists() {
        assert!(Instant::now() < deadline, "the reader process never primed its L1");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cache.set(&key, &"after".to_owned(), Ttl::Long).await?;
    let out = worker.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("READER saw after"), "{}: reader output: {text}", redis.name());
    Ok(())
}
on_both!(another_process_sees_the_write);

fn spawn_reader(redis: &Redis, dir: &Path) -> std::io::Result<Child> {
    let (urls, cluster) = redis.urls();
    Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "coherence::reader_process", "--nocapture", "--test-threads=1", "--quiet"])
        .env("STRATA_IT_READER_URLS", urls.join(","))
        .env("STRATA_IT_READER_CLUSTER", if cluster { "1" } else { "0" })
        .env("STRATA_IT_READER_DIR", dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "reader process started by another_process_sees_the_write"]
async fn reader_process() -> TestResult {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} not set"));
    let urls: Vec<String> = env("STRATA_IT_READER_URLS")?.split(',').map(str::to_owned).collect();
    let dir = PathBuf::from(env("STRATA_IT_READER_DIR")?);
    let builder = if env("STRATA_IT_READER_CLUSTER")? == "1" {
        Cache::builder().cluster(urls)
    } else {
        Cache::builder().redis_url(&urls[0])
    };
    let invalidation = Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2));
    let cache = builder.l1_max_ttl(L1_LIFETIME).invalidation(invalidation).require_redis(true).build().await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "process")?;
    for _ in 0..2 {
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("before"));
    }
    assert!(cache.metrics().total().l1_hits >= 1, "primed from L1");
    std::fs::write(dir.join("primed"), b"")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Some(v) = cache.get::<String>(&key).await?.filter(|v| v != "before") {
            println!("READER saw {v}");
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    println!("READER timed out");
    Ok(())
}

/// A slot move and a failover change who serves keys: L1 is dropped each time, then serves
/// again (the blocking cluster calls run off the async workers).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_move_or_a_failover_drops_l1() -> TestResult {
    let redis = std::sync::Arc::new(Redis::cluster());
    let cache = instance(&redis).await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "topology")?;
    cache.set(&key, &"v".to_owned(), Ttl::Long).await?;
    for change in ["reshard", "failover"] {
        prime(&[&cache], &key, "v").await?;
        assert!(cache.metrics().l1_entries > 0);
        let flushes = cache.metrics().l1_flushes;
        let cluster = redis.clone();
        tokio::task::spawn_blocking(move || -> Result<(), String> {
            let Redis::Cluster(c) = cluster.as_ref() else { return Err("not a cluster".into()) };
            let masters = c.master_indices().map_err(|e| e.to_string())?;
            match change {
                "reshard" => c.reshard(masters[0], masters[1], 16).map_err(|e| e.to_string()),
                _ => {
                    let replica = c.replica_indices().map_err(|e| e.to_string())?[0];
                    c.manual_failover(replica, Duration::from_secs(60)).map_err(|e| e.to_string())
                }
            }
        })
        .await??;
        let deadline = Instant::now() + PATIENCE;
        while cache.metrics().l1_flushes == flushes {
            assert!(Instant::now() < deadline, "{change}: L1 was not dropped");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(cache.metrics().l1_entries, 0, "{change}: {:?}", cache.metrics());
        let deadline = Instant::now() + PATIENCE;
        while !cache.metrics().l1_coherent {
            assert!(Instant::now() < deadline, "{change}: tracking did not resume");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    Ok(())
}

/// Sentinel: the tracked node is the master the sentinels name; after a failover, L1 is dropped
/// and instances stay coherent through the new master.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_instances_stay_coherent_through_a_failover() -> TestResult {
    let mut setup = strata_cluster::SentinelSetup::builder()
        .replicas(1)
        .sentinels(3)
        .quorum(2)
        .master_name("cache")
        .down_after_ms(1000)
        .failover_timeout_ms(3000)
        .start()?;
    let invalidation = Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2));
    let mut caches = Vec::new();
    for _ in 0..2 {
        let cache = Cache::builder()
            .sentinel(setup.sentinel_urls(), "cache")
            .l1_max_ttl(L1_LIFETIME)
            .op_timeout(Duration::from_millis(500))
            .connect_timeout(Duration::from_millis(500))
            .invalidation(invalidation.clone())
            .build()
            .await?;
        caches.push(cache);
    }
    let (a, b) = (&caches[0], &caches[1]);
    let key = KeySchema::new("it", 1)?.key("coherence", "sentinel")?;
    a.set(&key, &"v1".to_owned(), Ttl::Long).await?;
    prime(&[b], &key, "v1").await?;
    a.set(&key, &"v2".to_owned(), Ttl::Long).await?;
    until_reads(b, &key, Some("v2"), "B before the failover").await?;

    let flushes = b.metrics().l1_flushes;
    let old = setup.current_master()?;
    setup.data_node_mut(old).kill()?;
    let _setup = tokio::task::spawn_blocking(move || {
        setup.wait_for_master(Some(old), Duration::from_secs(30)).map(|_| setup).map_err(|e| e.to_string())
    })
    .await??;
    assert!(b.metrics().l1_flushes > flushes, "losing the master dropped L1: {:?}", b.metrics());
    let deadline = Instant::now() + Duration::from_secs(30);
    while a.set(&key, &"v3".to_owned(), Ttl::Long).await.is_err() || !b.metrics().l1_coherent {
        assert!(Instant::now() < deadline, "no coherence after the failover: {:?}", b.metrics());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    until_reads(b, &key, Some("v3"), "B after the failover").await?;
    prime(&[b], &key, "v3").await?;
    a.set(&key, &"v4".to_owned(), Ttl::Long).await?;
    until_reads(b, &key, Some("v4"), "B through the new master").await?;
    Ok(())
}

/// Tracking limited to some prefixes: a key outside them is never served from L1 (no
/// invalidation would reach it), and namespace stamps are still tracked, so another instance's
/// `invalidate_namespace` is seen at once, not after the stamp cache's minute.
async fn prefixes_leave_no_stale_l1_copy(redis: Redis) -> TestResult {
    let build = |prefixes: Vec<&str>| {
        let invalidation =
            Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2)).prefixes(prefixes);
        redis
            .builder()
            .l1_max_ttl(L1_LIFETIME)
            .stamp_refresh(Duration::from_secs(60))
            .invalidation(invalidation)
            .build()
    };
    let (a, b) = (build(vec!["it:"]).await?, build(vec!["it:", "other:"]).await?);

    // Inside the prefixes: L1 serves, and a namespace invalidation elsewhere reaches it.
    let inside = KeySchema::new("it", 1)?.key("prefixed", "1")?;
    a.set(&inside, &"old".to_owned(), Ttl::Long).await?;
    prime(&[&a], &inside, "old").await?;
    b.invalidate_namespace(inside.namespace()).await?;
    until_reads(&a, &inside, None, "A after B's namespace invalidation").await?;

    // Outside them: another instance's write is seen at once.
    let outside = KeySchema::new("other", 1)?.key("prefixed", "1")?;
    a.set(&outside, &"v1".to_owned(), Ttl::Long).await?;
    for _ in 0..3 {
        assert_eq!(a.get::<String>(&outside).await?.as_deref(), Some("v1"));
    }
    b.set(&outside, &"v2".to_owned(), Ttl::Long).await?;
    until_reads(&a, &outside, Some("v2"), "A after B's write of a key outside A's prefixes").await?;
    Ok(())
}
on_both!(prefixes_leave_no_stale_l1_copy);

/// Redis names a key once per event-loop pass in an invalidation message: writes of one key
/// made in one pass (pipelined on one connection, or from two instances) share one message,
/// which wakes every writer's echo with the same ticket. No cache may keep, in L1, a value
/// Redis no longer holds.
async fn racing_sets_leave_no_l1_copy_redis_does_not_hold(redis: Redis) -> TestResult {
    let (a, b) = (instance(&redis).await?, instance(&redis).await?);
    let plain = redis.builder().l1_capacity_bytes(0).build().await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "racing")?;
    for round in 0..20 {
        let sets = (0..16).map(|i| {
            let (cache, key) = (if i % 2 == 0 { a.clone() } else { b.clone() }, key.clone());
            tokio::spawn(async move { cache.set(&key, &format!("r{round}w{i}"), Ttl::Long).await })
        });
        for set in futures_util::future::join_all(sets).await {
            set??;
        }
        let held: Option<String> = plain.get(&key).await?;
        assert!(held.is_some(), "Redis holds one of the values");
        for (name, cache) in [("A", &a), ("B", &b)] {
            until_reads(cache, &key, held.as_deref(), &format!("{}: {name}, round {round}", redis.name())).await?;
        }
    }
    Ok(())
}
on_both!(racing_sets_leave_no_l1_copy_redis_does_not_hold);

/// A redis-server in cluster mode, outside `strata-cluster`'s set: joined with `CLUSTER MEET`
/// it is a master without slots, which nobody tracks yet. Killed on drop.
struct ExtraMaster {
    process: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl ExtraMaster {
    fn join(cluster: &strata_cluster::RedisCluster) -> Result<ExtraMaster, Box<dyn std::error::Error + Send + Sync>> {
        let dir = tempfile::tempdir()?;
        let (port, bus) = (strata_cluster::free_port()?, strata_cluster::free_port()?);
        let process = Command::new(strata_cluster::redis_server()?)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--cluster-enabled", "yes"])
            .args(["--cluster-port", &bus.to_string()])
            .args(["--cluster-config-file", "nodes.conf", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let extra = ExtraMaster { process, port, _dir: dir };
        let url = format!("redis://127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut conn = loop {
            match redis::Client::open(url.as_str())?.get_connection() {
                Ok(conn) => break conn,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
                Err(err) => return Err(err.into()),
            }
        };
        let seed = &cluster.nodes()[0];
        let seed_bus = seed.bus_port().ok_or("a cluster node without a bus port")?;
        redis::cmd("CLUSTER").arg("MEET").arg("127.0.0.1").arg(seed.port()).arg(seed_bus).query::<()>(&mut conn)?;
        // Every node must know it before slots move to it.
        let id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut conn)?;
        for node in cluster.nodes() {
            let mut c = node.connection()?;
            loop {
                let nodes: String = redis::cmd("CLUSTER").arg("NODES").query(&mut c)?;
                if nodes.lines().any(|l| l.starts_with(&id) && l.contains(" connected")) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!("{} never met the extra master {id}: {nodes}", node.addr()).into());
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // And it must see the cluster whole, or it refuses the keys that move to it.
        loop {
            let info: String = redis::cmd("CLUSTER").arg("INFO").query(&mut conn)?;
            if info.contains("cluster_state:ok") {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("the extra master never saw the cluster ok: {info}").into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(extra)
    }

    fn connection(&self) -> redis::RedisResult<redis::Connection> {
        redis::Client::open(format!("redis://127.0.0.1:{}", self.port))?.get_connection()
    }
}

impl Drop for ExtraMaster {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
    }
}

/// Moves `slot` from master `from` to the extra master, keys included, as `redis-cli --cluster
/// reshard` does: IMPORTING / MIGRATING, MIGRATE, then SETSLOT NODE everywhere.
fn move_slot(
    cluster: &strata_cluster::RedisCluster,
    slot: u16,
    from: usize,
    to: &ExtraMaster,
) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    let (mut src, mut dst) = (cluster.nodes()[from].connection()?, to.connection()?);
    let src_id = cluster.node_id(from)?;
    let dst_id: String = redis::cmd("CLUSTER").arg("MYID").query(&mut dst)?;
    redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("IMPORTING").arg(&src_id).query::<()>(&mut dst)?;
    redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("MIGRATING").arg(&dst_id).query::<()>(&mut src)?;
    let keys: Vec<String> = redis::cmd("CLUSTER").arg("GETKEYSINSLOT").arg(slot).arg(1000).query(&mut src)?;
    if !keys.is_empty() {
        redis::cmd("MIGRATE")
            .arg("127.0.0.1")
            .arg(to.port)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(&keys)
            .query::<()>(&mut src)?;
    }
    redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst_id).query::<()>(&mut dst)?;
    redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst_id).query::<()>(&mut src)?;
    for i in cluster.master_indices()? {
        let mut c = cluster.nodes()[i].connection()?;
        redis::cmd("CLUSTER").arg("SETSLOT").arg(slot).arg("NODE").arg(&dst_id).query::<()>(&mut c)?;
    }
    Ok(())
}

/// A key's slot moves to a master that no instance tracks yet (a new master, joined without
/// slots). The read that meets the MOVED reply must not fill L1 from an untracked node, and
/// tracking must cover the new owner at once, not at the next topology poll (a minute here):
/// a write on the new owner then reaches the reader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirect_to_an_untracked_master_keeps_l1_coherent() -> TestResult {
    let redis = std::sync::Arc::new(Redis::cluster());
    let Redis::Cluster(cluster) = redis.as_ref() else { return Err("not a cluster".into()) };
    let extra = tokio::task::block_in_place(|| ExtraMaster::join(cluster))?;
    let mut invalidation = Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2));
    invalidation.topology_interval = Duration::from_secs(60);
    let cache = redis.builder().l1_max_ttl(L1_LIFETIME).invalidation(invalidation).build().await?;
    let writer = redis.builder().invalidation(Invalidation::disabled()).build().await?;
    let key = KeySchema::new("it", 1)?.key("coherence", "moved")?;
    writer.set(&key, &"v1".to_owned(), Ttl::Long).await?;
    prime(&[&cache], &key, "v1").await?;
    let flushes = cache.metrics().l1_flushes;

    tokio::task::block_in_place(|| {
        let slot = cluster.key_slot(key.as_str().as_bytes())?;
        let from = cluster.node_for_slot(slot)?;
        move_slot(cluster, slot, from, &extra)
    })?;
    // The move deleted the key on its old master (an invalidation): the next read goes to Redis,
    // meets MOVED, and reads v1 on the new owner.
    until_reads(&cache, &key, Some("v1"), "after the slot moved").await?;
    assert!(cache.metrics().l1_flushes > flushes, "the redirect to an untracked node closed L1");
    assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v1"));
    writer.set(&key, &"v2".to_owned(), Ttl::Long).await?;
    until_reads(&cache, &key, Some("v2"), "after a write on the new owner").await?;
    Ok(())
}

/// In one process: a read that begins after a delete (the cache-aside write: the source was
/// updated, then the key deleted) must not take the value of a load that began before the
/// delete — the single-flight load it would join read the source before the update. Found by
/// the user-profiles benchmark's stale-read check (40 stale reads in one process).
async fn a_read_after_a_delete_does_not_join_an_older_load(redis: Redis) -> TestResult {
    let cache = instance(&redis).await?;
    let key = KeySchema::new("it", 1)?.key("joined", "1")?;
    let ns = key.namespace().to_owned();
    let (loading_tx, loading_rx) = tokio::sync::oneshot::channel::<()>();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel::<()>();
    let older = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move {
            cache
                .get_or_set(&key, Ttl::Medium, || async move {
                    let v1 = "v1".to_owned(); // read from the source before the update
                    let _ = loading_tx.send(());
                    let _ = release_rx.await;
                    Ok::<_, std::io::Error>(v1)
                })
                .await
        })
    };
    loading_rx.await?;
    // The source now holds v2; the writer deletes the key, and only then does the reader come.
    cache.delete(&key).await?;
    let newer = {
        let (cache, key) = (cache.clone(), key.clone());
        tokio::spawn(async move {
            cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>("v2".to_owned()) }).await
        })
    };
    // Let the reader reach the load in flight (its L1 miss is counted just before it joins).
    let deadline = Instant::now() + PATIENCE;
    while cache.metrics().namespace(&ns).l1_misses < 2 {
        assert!(Instant::now() < deadline, "the second reader never missed L1");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    release_tx.send(()).map_err(|_| "the first reader is gone")?;
    assert_eq!(older.await??, "v1", "the first caller began before the delete: v1 is its answer");
    assert_eq!(newer.await??, "v2", "{}: the second began after the delete", redis.name());
    cache.settled().await;
    cache.clear_l1();
    assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v2"), "v1's store was refused");
    Ok(())
}
on_both!(a_read_after_a_delete_does_not_join_an_older_load);

/// A cache on a standalone `redis` through a proxy that delays its tracking connections' bytes
/// by 30 ms ([`LateInvalidations`](crate::common::LateInvalidations), returned to keep it up),
/// once tracking is up through it. `configure` adjusts the builder.
async fn behind_late_invalidations(
    redis: &Redis,
    configure: impl FnOnce(strata::CacheBuilder) -> strata::CacheBuilder,
) -> Result<(crate::common::LateInvalidations, Cache), Box<dyn std::error::Error + Send + Sync>> {
    let Redis::Standalone(server) = redis else { return Err("a standalone server is needed".into()) };
    let proxy = crate::common::LateInvalidations::start(server, Duration::from_millis(30)).await?;
    let cache = configure(redis.builder().redis_url(proxy.url()).l1_max_ttl(L1_LIFETIME)).build().await?;
    let deadline = Instant::now() + PATIENCE;
    while !cache.metrics().l1_coherent {
        if Instant::now() > deadline {
            return Err("tracking never came up through the proxy".into());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok((proxy, cache))
}

/// Within one instance, a read that starts after `delete` returned never gets the value the
/// delete removed, however late the delete's invalidation message comes back. A reader that
/// looked at L1 after the delete had begun, and read Redis before the `DEL` reached it, may
/// fill L1 with the old value; only that message would remove it, and until it arrives every
/// reader of this instance would be served the old value. Found by the user-profiles
/// benchmark's stale-read check (1 stale read in 155,000), with broadcast tracking on a
/// connection of its own; the proxy widened the window from microseconds to 30 ms (54,689
/// stale reads of 387,262 before the fix). Since tracked reads share the tracking connections
/// (docs/decisions/0013), the proxy delays them with the messages, and the delete's reply,
/// which comes over the data connection, is what runs ahead.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_after_a_delete_returned_never_sees_the_deleted_value() -> TestResult {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

    let redis = Redis::standalone();
    let (_proxy, cache) = behind_late_invalidations(&redis, |b| b).await?;
    let key = KeySchema::new("it", 1)?.key("deleted", "1")?;
    // The source's version, and the newest one whose delete has returned.
    let (source, completed, stop) =
        (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)), Arc::new(AtomicBool::new(false)));
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let (cache, key, source, completed, stop) =
                (cache.clone(), key.clone(), source.clone(), completed.clone(), stop.clone());
            tokio::spawn(async move {
                let (mut reads, mut stale) = (0u64, Vec::new());
                while !stop.load(Ordering::SeqCst) {
                    let seen = completed.load(Ordering::SeqCst);
                    let source = source.clone();
                    let got: u64 = cache
                        .get_or_set(&key, Ttl::Medium, || async move {
                            Ok::<_, std::io::Error>(source.load(Ordering::SeqCst))
                        })
                        .await?;
                    reads += 1;
                    if got < seen {
                        stale.push((got, seen));
                    }
                    tokio::task::yield_now().await;
                }
                Ok::<_, strata::Error>((reads, stale))
            })
        })
        .collect();
    for version in 1..=150 {
        source.store(version, Ordering::SeqCst);
        cache.delete(&key).await?;
        completed.store(version, Ordering::SeqCst);
        // Time for a reader to load the new version and for L1 to take it.
        tokio::time::sleep(Duration::from_millis(40)).await;
    }
    stop.store(true, Ordering::SeqCst);
    let (mut reads, mut stale) = (0, Vec::new());
    for reader in readers {
        let (r, s) = reader.await??;
        reads += r;
        stale.extend(s);
    }
    assert!(reads > 100, "the readers barely ran ({reads} reads)");
    assert!(
        stale.is_empty(),
        "{} of {reads} reads returned a version older than a delete that had returned: {:?}",
        stale.len(),
        &stale[..stale.len().min(5)]
    );
    Ok(())
}

/// Redis tells an instance only of changes to keys it read for its L1: with two instances each
/// reading its own keys, a writer's deletes reach each instance for its own keys alone, and the
/// leases their loads took and the writer removed name no key in any message. (With broadcast
/// tracking, every instance heard of every changed key, lease keys included.)
async fn an_instance_hears_only_of_the_keys_it_read(redis: Redis) -> TestResult {
    let (a, b, writer) = (instance(&redis).await?, instance(&redis).await?, instance(&redis).await?);
    let schema = KeySchema::new("it", 1)?;
    let keys =
        |who: &str| (0..10).map(|i| schema.key("heard", &format!("{who}-{i}"))).collect::<strata::Result<Vec<_>>>();
    let (mine, theirs) = (keys("a")?, keys("b")?);
    for (cache, keys) in [(&a, &mine), (&b, &theirs)] {
        for key in keys {
            // A miss: a lease, a load, a store; then an L1 hit.
            let loaded: String =
                cache.get_or_set(key, Ttl::Long, || async { Ok::<_, std::io::Error>("v".to_owned()) }).await?;
            assert_eq!(loaded, "v");
        }
        cache.settled().await;
        prime(&[cache], &keys[0], "v").await?;
    }
    let before = |c: &Cache| (c.metrics().invalidation_messages, c.metrics().l1_flushes);
    let (a0, b0, w0) = (before(&a), before(&b), before(&writer));
    for key in mine.iter().chain(&theirs) {
        writer.delete(key).await?;
    }
    // Each instance hears of its own ten keys...
    let deadline = Instant::now() + PATIENCE;
    while a.metrics().invalidation_messages < a0.0 + 10 || b.metrics().invalidation_messages < b0.0 + 10 {
        assert!(
            Instant::now() < deadline,
            "{}: not every delete was heard: {:?} {:?}",
            redis.name(),
            a.metrics(),
            b.metrics()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // ...and of nothing else, once the stragglers would have come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    for (name, cache, (messages, flushes)) in [("A", &a, a0), ("B", &b, b0), ("the writer", &writer, w0)] {
        let m = cache.metrics();
        assert_eq!(m.l1_flushes, flushes, "{}: {name} flushed its L1, the count is void", redis.name());
        let heard = m.invalidation_messages - messages;
        let want = if name == "the writer" { 0 } else { 10 };
        assert_eq!(heard, want, "{}: {name} heard of {heard} keys, it read {want} of those deleted", redis.name());
        assert_eq!(m.invalidation_messages_internal, 0, "{}: {name} heard of internal keys", redis.name());
    }
    until_reads(&a, &mine[0], None, "A after the delete").await?;
    Ok(())
}
on_both!(an_instance_hears_only_of_the_keys_it_read);

/// A `set` whose caller gives up once the write is on its way (a request timeout) must not
/// leave this instance serving the value it replaced. Its own write sends it no invalidation
/// (the tracking connections use NOLOOP), so a reader that read the old value while the write
/// was in flight would keep it in L1 until its TTL. The proxy delays the tracking connection's
/// replies by 30 ms, so the caller gives up (after 10 ms) before either reply comes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_set_leaves_no_older_copy_in_l1() -> TestResult {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let redis = Redis::standalone();
    let (_proxy, cache) = behind_late_invalidations(&redis, |b| b).await?;
    // Reads Redis itself (no L1).
    let plain = redis.builder().l1_capacity_bytes(0).build().await?;
    let (mut abandoned, mut taken) = (0, 0);
    for round in 0..20 {
        let key = KeySchema::new("it", 1)?.key("abandoned", &round.to_string())?;
        cache.set(&key, &"old".to_owned(), Ttl::Long).await?;
        prime(&[&cache], &key, "old").await?;
        let stop = Arc::new(AtomicBool::new(false));
        let reader = {
            let (cache, key, stop) = (cache.clone(), key.clone(), stop.clone());
            tokio::spawn(async move {
                while !stop.load(Ordering::SeqCst) {
                    let _ = cache.get::<String>(&key).await;
                    tokio::task::yield_now().await;
                }
            })
        };
        tokio::time::sleep(Duration::from_millis(5)).await;
        if tokio::time::timeout(Duration::from_millis(10), cache.set(&key, &"new".to_owned(), Ttl::Long)).await.is_err()
        {
            abandoned += 1;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        stop.store(true, Ordering::SeqCst);
        reader.await?;
        // If Redis took the write, this instance must not serve what it replaced.
        if plain.get::<String>(&key).await?.as_deref() == Some("new") {
            taken += 1;
            for _ in 0..3 {
                let got: Option<String> = cache.get(&key).await?;
                assert_ne!(got.as_deref(), Some("old"), "round {round}: an abandoned set left the old value in L1");
            }
        }
    }
    assert!(
        abandoned >= 10 && taken >= 10,
        "abandoned {abandoned}, taken by Redis {taken} of 20: the test proves little"
    );
    Ok(())
}

/// After `invalidate_namespace` returns, this instance serves none of the namespace's old
/// values, even when a message about another stamp arrives during the call. Its own bump sends
/// it no message (NOLOOP); the new generation it read back may not be remembered (a stamp
/// forgotten meanwhile voids what reads in flight learn), and the old one must not stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_own_namespace_invalidation_holds_when_another_stamp_moves_meanwhile() -> TestResult {
    let redis = Redis::standalone();
    let (_proxy, a) = behind_late_invalidations(&redis, |b| b.stamp_refresh(Duration::from_secs(120))).await?;
    let b = instance(&redis).await?;
    let schema = KeySchema::new("it", 1)?;
    for round in 0..5 {
        let (own, other) = (schema.key(&format!("own{round}"), "1")?, schema.key(&format!("other{round}"), "1")?);
        a.set(&own, &"v".to_owned(), Ttl::Long).await?;
        b.set(&other, &"w".to_owned(), Ttl::Long).await?;
        prime(&[&a], &own, "v").await?;
        prime(&[&a], &other, "w").await?;
        // B's bump runs first; its message to A comes on A's tracking connection just before
        // the reply to A's own bump.
        b.invalidate_namespace(other.namespace()).await?;
        a.invalidate_namespace(own.namespace()).await?;
        assert_eq!(a.get::<String>(&own).await?, None, "round {round}: A serves a value its own invalidation retired");
    }
    Ok(())
}
