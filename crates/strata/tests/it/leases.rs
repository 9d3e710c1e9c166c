//! Leases: the stale-set race, and distributed single-flight across real processes.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use strata::{Cache, KeySchema, LeaseConfig, Ttl};
use tokio::sync::oneshot;

use crate::common::{Redis, TestResult};
use crate::on_both;

/// The stale-set race, driven step by step: a reader misses and loads v1 (holding the lease);
/// a writer updates the source to v2 and invalidates; the reader's value must not be stored.
async fn a_load_that_overlaps_an_invalidation_is_not_stored(redis: Redis) -> TestResult {
    let reader = redis.cache().await;
    let writer = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    for (i, invalidate_with_set) in [false, true].into_iter().enumerate() {
        let key = schema.key("race", &i.to_string())?;
        let (load, release) = held_load(&reader, &key).await?;
        // The writer changes the source to v2, then invalidates through Strata.
        if invalidate_with_set {
            writer.set(&key, &"v2".to_owned(), Ttl::Medium).await?;
        } else {
            writer.delete(&key).await?;
        }
        release.send(()).map_err(|_| "reader gone")?;
        assert_eq!(load.await??, "v1", "the caller still gets what it read");
        reader.settled().await; // its store has been tried

        let mut raw = redis.raw();
        let stored: Option<Vec<u8>> = redis::cmd("GET").arg(key.as_str()).query(raw.as_mut())?;
        let fresh = read_from_redis(&writer, &key).await?;
        if invalidate_with_set {
            assert_eq!(fresh.as_deref(), Some("v2"), "{}: the newer value survives", redis.name());
        } else {
            assert!(stored.is_none(), "{}: the stale v1 must not be stored after the delete", redis.name());
        }
        // The reader did not keep the stale value in its own L1 either.
        let again = reader.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>("v2".to_owned()) }).await?;
        assert_eq!(again, "v2");
    }
    assert_eq!(reader.metrics().namespace("it:v1:race").stale_writes_refused, 2);
    Ok(())
}
on_both!(a_load_that_overlaps_an_invalidation_is_not_stored);

/// The same race when the key holds a value its namespace invalidated (or one kept past its
/// expiry): the lease cannot be taken while that value is present, yet the load must not run
/// without it. Found by `strata drill consistency`: a load after `invalidate_namespace` stored
/// its version over a `set` made during the load, and every instance read it for ~100 ms.
async fn a_load_over_an_invalidated_value_is_leased_too(redis: Redis) -> TestResult {
    let reader = redis.cache().await;
    let writer = redis.cache().await;
    let key = KeySchema::new("it", 1)?.key("race-ns", "1")?;
    writer.set(&key, &"v0".to_owned(), Ttl::Medium).await?;
    writer.invalidate_namespace(key.namespace()).await?;
    let (load, release) = held_load(&reader, &key).await?;
    writer.set(&key, &"v2".to_owned(), Ttl::Medium).await?;
    release.send(()).map_err(|_| "reader gone")?;
    assert_eq!(load.await??, "v1", "the caller still gets what it read");
    reader.settled().await; // its store has been tried
    let fresh = read_from_redis(&writer, &key).await?;
    assert_eq!(fresh.as_deref(), Some("v2"), "{}: the load stored over the newer set", redis.name());
    Ok(())
}
on_both!(a_load_over_an_invalidated_value_is_leased_too);

/// A `get_or_set` of `key` whose loader has read "v1" from the source and waits, holding the
/// load, until the returned sender fires: the window in which a writer races it.
async fn held_load(
    reader: &Cache,
    key: &strata::Key,
) -> Result<(tokio::task::JoinHandle<strata::Result<String>>, oneshot::Sender<()>), oneshot::error::RecvError> {
    let (loaded_tx, loaded_rx) = oneshot::channel::<()>();
    let (release_tx, release_rx) = oneshot::channel::<()>();
    let (reader, key) = (reader.clone(), key.clone());
    let load = tokio::spawn(async move {
        reader
            .get_or_set(&key, Ttl::Medium, || async move {
                let v1 = "v1".to_owned(); // read from the source before the write
                let _ = loaded_tx.send(());
                let _ = release_rx.await;
                Ok::<_, std::io::Error>(v1)
            })
            .await
    });
    loaded_rx.await?;
    Ok((load, release_tx))
}

/// Reads `key` from Redis (the cache's L1 is cleared first).
async fn read_from_redis(cache: &Cache, key: &strata::Key) -> strata::Result<Option<String>> {
    cache.clear_l1();
    cache.get(key).await
}

/// 1,000 concurrent callers in 4 processes on one cold key: the source is asked once.
async fn one_load_across_four_processes(redis: Redis) -> TestResult {
    let dir = tempfile::tempdir()?;
    let workers: Vec<Child> =
        (0..4).map(|i| spawn_worker(&redis, dir.path(), i, 250, 400, 10_000)).collect::<std::io::Result<_>>()?;
    wait_for_files(dir.path(), "ready-", 4, Duration::from_secs(60))?;
    std::fs::write(dir.path().join("go"), b"")?;
    let results = workers.into_iter().map(finish).collect::<Result<Vec<_>, _>>()?;
    let loads = source_calls(dir.path());
    assert_eq!(loads, 1, "{}: 1,000 callers in 4 processes must load once, got {loads}", redis.name());
    for r in &results {
        assert_eq!((r.served, r.errors), (250, 0), "{r:?}");
    }
    assert!(results.iter().map(|r| r.lease_waits).sum::<u64>() >= 3, "the other processes waited: {results:?}");
    Ok(())
}
on_both!(one_load_across_four_processes);

/// The lease holder dies mid-load (SIGKILL): after the lease expires, a waiting process takes
/// over, loads, and serves its callers.
async fn a_dead_holder_is_replaced(redis: Redis) -> TestResult {
    let dir = tempfile::tempdir()?;
    // Worker 0 takes the lease and its load never ends.
    let mut holder = spawn_worker(&redis, dir.path(), 0, 10, 600_000, 1_500)?;
    wait_for_files(dir.path(), "ready-", 1, Duration::from_secs(60))?;
    std::fs::write(dir.path().join("go"), b"")?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while source_calls(dir.path()) < 1 {
        assert!(Instant::now() < deadline, "the first load never started");
        std::thread::sleep(Duration::from_millis(20));
    }
    let waiter = spawn_worker(&redis, dir.path(), 1, 50, 100, 1_500)?;
    std::thread::sleep(Duration::from_millis(300));
    holder.kill()?;
    holder.wait()?;
    let result = finish(waiter)?;
    assert_eq!((result.served, result.errors), (50, 0), "{result:?}");
    assert_eq!(source_calls(dir.path()), 2, "the dead holder's load, then the takeover");
    assert!(result.lease_waits >= 1, "{result:?}");
    Ok(())
}
on_both!(a_dead_holder_is_replaced);

#[derive(Debug, serde::Deserialize)]
struct WorkerResult {
    served: usize,
    errors: usize,
    lease_waits: u64,
}

/// Starts this test binary as a worker process (see [`stampede_worker`]).
fn spawn_worker(
    redis: &Redis,
    dir: &Path,
    id: usize,
    callers: usize,
    load_ms: u64,
    lease_ms: u64,
) -> std::io::Result<Child> {
    let (urls, cluster) = redis.urls();
    Command::new(std::env::current_exe()?)
        .args(["--ignored", "--exact", "leases::stampede_worker", "--nocapture", "--test-threads=1", "--quiet"])
        .env("STRATA_IT_WORKER_URLS", urls.join(","))
        .env("STRATA_IT_WORKER_CLUSTER", if cluster { "1" } else { "0" })
        .env("STRATA_IT_WORKER_DIR", dir)
        .env("STRATA_IT_WORKER_ID", id.to_string())
        .env("STRATA_IT_WORKER_CALLERS", callers.to_string())
        .env("STRATA_IT_WORKER_LOAD_MS", load_ms.to_string())
        .env("STRATA_IT_WORKER_LEASE_MS", lease_ms.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
}

fn finish(child: Child) -> Result<WorkerResult, Box<dyn std::error::Error + Send + Sync>> {
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    let line =
        text.lines().find_map(|l| l.strip_prefix("WORKER_RESULT ")).ok_or_else(|| format!("no result: {text}"))?;
    Ok(serde_json::from_str(line)?)
}

fn source_calls(dir: &Path) -> usize {
    std::fs::read_to_string(dir.join("source")).map(|s| s.lines().count()).unwrap_or(0)
}

fn wait_for_files(dir: &Path, prefix: &str, n: usize, timeout: Duration) -> std::io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let count =
            std::fs::read_dir(dir)?.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)).count();
        if count >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(std::io::Error::other(format!("only {count} of {n} workers became ready")));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A worker process of the tests above (not a test on its own): `callers` concurrent
/// `get_or_set` calls on one key, whose loader appends a line to `source` (the call count the
/// parent checks) and takes `load_ms`. Prints `WORKER_RESULT {json}`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "worker process started by the lease tests"]
async fn stampede_worker() -> TestResult {
    let env = |name: &str| std::env::var(name).map_err(|_| format!("{name} not set"));
    let urls: Vec<String> = env("STRATA_IT_WORKER_URLS")?.split(',').map(str::to_owned).collect();
    let dir = PathBuf::from(env("STRATA_IT_WORKER_DIR")?);
    let id = env("STRATA_IT_WORKER_ID")?;
    let callers: usize = env("STRATA_IT_WORKER_CALLERS")?.parse()?;
    let load_ms: u64 = env("STRATA_IT_WORKER_LOAD_MS")?.parse()?;
    let lease = Duration::from_millis(env("STRATA_IT_WORKER_LEASE_MS")?.parse()?);
    let builder = if env("STRATA_IT_WORKER_CLUSTER")? == "1" {
        Cache::builder().cluster(urls)
    } else {
        Cache::builder().redis_url(urls[0].clone())
    };
    let cache = builder
        .leases(LeaseConfig::default().ttl(lease).max_wait(Duration::from_secs(30)))
        .require_redis(true)
        .build()
        .await?;
    let key = KeySchema::new("it", 1)?.key("stampede", "hot")?;
    std::fs::write(dir.join(format!("ready-{id}")), b"")?;
    while !dir.join("go").exists() {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let tasks: Vec<_> = (0..callers)
        .map(|_| {
            let (cache, key, dir) = (cache.clone(), key.clone(), dir.clone());
            tokio::spawn(async move {
                cache
                    .get_or_set(&key, Ttl::Medium, || async move {
                        let mut f = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("source"))?;
                        f.write_all(b"load\n")?;
                        tokio::time::sleep(Duration::from_millis(load_ms)).await;
                        Ok::<_, std::io::Error>("the value".to_owned())
                    })
                    .await
            })
        })
        .collect();
    let (mut served, mut errors) = (0, 0);
    for t in tasks {
        match t.await? {
            Ok(v) if v == "the value" => served += 1,
            _ => errors += 1,
        }
    }
    // The leader's store runs after its callers have the value: let it land before exiting.
    cache.settled().await;
    let lease_waits = cache.metrics().namespace("it:v1:stampede").lease_waits;
    println!("WORKER_RESULT {}", serde_json::json!({ "served": served, "errors": errors, "lease_waits": lease_waits }));
    Ok(())
}

/// What the first read of a load costs (issue 16, target 4): an L1 miss that Redis serves runs
/// no script — GET + PTTL, one call — and once a namespace's L1 misses are mostly L2 misses, a
/// miss's caller waits for one round trip before its loader runs (GET, PTTL and the lease
/// attempt together), not two. The store follows after the caller has its value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_miss_costs_its_caller_only_the_round_trips_it_needs() -> TestResult {
    let redis = Redis::standalone();
    let writer = redis.cache().await;
    // Stamps read once and trusted for the whole test: only the reads under test call Redis.
    let reader = redis.builder().stamp_refresh(Duration::from_secs(600)).build().await?;
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<_> = (0..40).map(|i| schema.key("trips", &i.to_string())).collect::<strata::Result<_>>()?;
    for key in &keys[..10] {
        writer.set(key, &1u32, Ttl::Medium).await?;
    }
    // The namespace's stamp, read once (by an L2 hit: the outlook starts from hits).
    let warm = schema.key("trips", "warm")?;
    writer.set(&warm, &0u32, Ttl::Medium).await?;
    reader.get_or_set(&warm, Ttl::Medium, || async { Ok::<u32, std::io::Error>(0) }).await?;
    reader.settled().await;
    let calls = || reader.metrics().l2_duration.count();
    let mut raw = redis.raw();
    redis::cmd("CONFIG").arg("RESETSTAT").query::<()>(raw.as_mut())?;
    for key in &keys[..10] {
        let before = calls();
        let got = reader.get_or_set(key, Ttl::Medium, || async { Ok::<u32, std::io::Error>(2) }).await?;
        assert_eq!((got, calls() - before), (1, 1), "served by Redis in one call");
    }
    let info: String = redis::cmd("INFO").arg("commandstats").query(raw.as_mut())?;
    assert!(!info.contains("cmdstat_eval"), "an L2 hit runs no script:\n{info}");

    // Misses: the first ones read, then take the lease; from the point where misses dominate,
    // the lease attempt rides with the read.
    let mut before_loader = Vec::new();
    for key in &keys[10..] {
        reader.settled().await;
        let before = calls();
        let seen = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (seen_in, reader_in) = (seen.clone(), reader.clone());
        reader
            .get_or_set(key, Ttl::Medium, || async move {
                seen_in.store(reader_in.metrics().l2_duration.count(), std::sync::atomic::Ordering::SeqCst);
                Ok::<u32, std::io::Error>(3)
            })
            .await?;
        before_loader.push(seen.load(std::sync::atomic::Ordering::SeqCst) - before);
    }
    assert_eq!(before_loader[0], 2, "expecting hits: GET + PTTL, then the lease: {before_loader:?}");
    assert!(before_loader[20..].iter().all(|&n| n == 1), "misses dominate: one round trip: {before_loader:?}");
    reader.settled().await;
    for key in &keys[10..] {
        assert_eq!(writer.get::<u32>(key).await?, Some(3), "every loaded value was stored");
    }
    Ok(())
}

/// One process never waits on a lease it holds itself: its readers of a key wait for its own
/// load, or for that load's store, in memory, never by polling Redis. Found by the user-profiles
/// benchmark (issue 16): readers that would not join a load begun before an invalidation they
/// had seen started their own, found the first load's lease still held by its store on its way,
/// and slept 5 ms or more; about one miss in 200 under that workload.
async fn a_process_never_waits_on_its_own_lease(redis: Redis) -> TestResult {
    let cache = redis.cache().await;
    let schema = KeySchema::new("it", 1)?;
    let keys: Vec<_> = (0..4).map(|i| schema.key("own-lease", &i.to_string())).collect::<strata::Result<_>>()?;
    let source: std::sync::Arc<Vec<std::sync::atomic::AtomicU64>> =
        std::sync::Arc::new((0..keys.len()).map(|_| std::sync::atomic::AtomicU64::new(0)).collect());
    let tasks: Vec<_> = (0..8u64)
        .map(|t| {
            let (cache, keys, source) = (cache.clone(), keys.clone(), source.clone());
            tokio::spawn(async move {
                for n in 0..1_500u64 {
                    let i = usize::try_from((n * 7 + t * 13) % 4).unwrap_or(0);
                    let (key, source) = (&keys[i], &source[i]);
                    if (n + t) % 4 == 0 {
                        // A write: the source, then the delete (cache-aside).
                        source.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        cache.delete(key).await?;
                    } else {
                        let at = source.load(std::sync::atomic::Ordering::SeqCst);
                        cache
                            .get_or_set(key, Ttl::Medium, || async move {
                                tokio::task::yield_now().await;
                                Ok::<u64, std::io::Error>(at)
                            })
                            .await?;
                    }
                }
                Ok::<(), strata::Error>(())
            })
        })
        .collect();
    for task in tasks {
        task.await??;
    }
    let m = cache.metrics().namespace("it:v1:own-lease");
    assert!(m.loader_calls > 100, "{}: the keys were loaded again and again: {}", redis.name(), m.loader_calls);
    assert_eq!(m.lease_waits, 0, "{}: waited on its own lease ({} loads)", redis.name(), m.loader_calls);
    Ok(())
}
on_both!(a_process_never_waits_on_its_own_lease);

/// A key of another type (a list another client put there): the first read's round trip fails
/// after its lease attempt ran. The lease it may hold must not be left behind for the load that
/// follows (it would wait for it, then load without it) or for other processes. Found by review
/// (issue 16): the attempt's token was dropped with the failed read.
async fn a_failed_first_read_leaves_no_lease_behind(redis: Redis) -> TestResult {
    let cache = redis.builder().leases(LeaseConfig::default().max_wait(Duration::from_secs(1))).build().await?;
    let schema = KeySchema::new("it", 1)?;
    // L2 misses first, so that the lease attempt rides with the first read.
    for i in 0..20 {
        let key = schema.key("wrongtype", &format!("warm{i}"))?;
        cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>(0u32) }).await?;
    }
    let key = schema.key("wrongtype", "list")?;
    let mut raw = redis.raw();
    redis::cmd("RPUSH").arg(key.as_str()).arg("not a strata value").query::<()>(raw.as_mut())?;
    let got = cache.get_or_set(&key, Ttl::Medium, || async { Ok::<_, std::io::Error>(7u32) }).await?;
    assert_eq!(got, 7);
    cache.settled().await;
    let m = cache.metrics().namespace("it:v1:wrongtype");
    assert_eq!(m.lease_waits, 0, "{}: the load waited on the lease its own first read took", redis.name());
    let lease: bool = redis::cmd("EXISTS").arg(strata::lease_key(key.as_str())).query(raw.as_mut())?;
    assert!(!lease, "{}: the lease was left behind", redis.name());
    Ok(())
}
on_both!(a_failed_first_read_leaves_no_lease_behind);
