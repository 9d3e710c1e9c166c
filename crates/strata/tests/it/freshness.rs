use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use strata::{Cache, ErrorKind, Freshness, Key, KeySchema, Ttl};
use tokio::sync::Semaphore;
use tokio::time::{sleep, timeout};

use crate::common::{Redis, TestResult};
use crate::on_both;

type Loaded = Result<String, std::io::Error>;

/// A loader that answers `v1`, `v2`, ... with `delay`; from call number `gated_from` on, each
/// call first waits for a permit of the returned semaphore, and from `failing_from` on it fails.
#[derive(Clone)]
struct Source {
    calls: Arc<AtomicUsize>,
    gate: Arc<Semaphore>,
    delay: Duration,
    gated_from: usize,
    failing_from: usize,
}

impl Source {
    fn new(delay: Duration) -> Self {
        let gate = Arc::new(Semaphore::new(0));
        Self { calls: Arc::default(), gate, delay, gated_from: usize::MAX, failing_from: usize::MAX }
    }

    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    fn loader(&self) -> impl Fn() -> std::pin::Pin<Box<dyn Future<Output = Loaded> + Send>> + Send + Sync + 'static {
        let source = self.clone();
        move || {
            let source = source.clone();
            Box::pin(async move {
                let n = source.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if n >= source.gated_from {
                    source.gate.acquire().await.map_err(std::io::Error::other)?.forget();
                }
                sleep(source.delay).await;
                if n >= source.failing_from {
                    return Err(std::io::Error::other("database down"));
                }
                Ok(format!("v{n}"))
            })
        }
    }
}

fn key(id: &str) -> strata::Result<Key> {
    KeySchema::new("it", 1)?.key("fresh", id)
}

/// Polls plain reads until `key` holds `want` (a background refresh has landed), for at most 10 s.
async fn eventually(cache: &Cache, key: &Key, want: &str) -> TestResult {
    for _ in 0..1000 {
        if cache.get::<String>(key).await?.as_deref() == Some(want) {
            return Ok(());
        }
        sleep(Duration::from_millis(10)).await;
    }
    Err(format!("{key} never became {want}").into())
}

fn pttl(redis: &Redis, key: &Key) -> redis::RedisResult<i64> {
    redis::cmd("PTTL").arg(key.as_str()).query(redis.raw().as_mut())
}

/// With a beta this large, any read of a value whose load took 20 ms draws a refresh gap far
/// beyond the 60 s TTL (the odds of the contrary are about 3 in a million per read): the second
/// read must start a background refresh, long before expiry, and still get the cached value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn early_refresh_happens_before_expiry_with_beta() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.builder().freshness(Freshness::new().early_refresh(1e9)).build().await?;
    let source = Source::new(Duration::from_millis(20));
    let key = key("early")?;
    assert_eq!(cache.get_or_refresh(&key, Ttl::Exact(Duration::from_secs(60)), source.loader()).await?, "v1");
    assert_eq!(cache.get_or_refresh(&key, Ttl::Exact(Duration::from_secs(60)), source.loader()).await?, "v1");
    eventually(&cache, &key, "v2").await?;
    cache.settled().await;
    let stats = cache.metrics().namespace("it:v1:fresh");
    assert!(stats.early_refreshes >= 1, "{stats:?}");
    assert_eq!((stats.stale_served, stats.refresh_errors), (0, 0), "{stats:?}");
    assert!(pttl(&redis, &key)? > 55_000, "the refreshed value got a new TTL");
    Ok(())
}

/// Without a beta, reads of a fresh value never call the loader.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_early_refresh_without_beta() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.cache().await;
    let source = Source::new(Duration::from_millis(20));
    let key = key("plain")?;
    for _ in 0..500 {
        assert_eq!(cache.get_or_refresh(&key, Ttl::Exact(Duration::from_secs(60)), source.loader()).await?, "v1");
    }
    sleep(Duration::from_millis(100)).await;
    assert_eq!(source.calls(), 1);
    let stats = cache.metrics().namespace("it:v1:fresh");
    assert_eq!((stats.early_refreshes, stats.loader_calls, stats.l1_hits), (0, 1, 499), "{stats:?}");
    Ok(())
}

/// Past expiry, within stale-while-revalidate: the old value comes back while the refresh is
/// held at a gate (a caller waiting on the loader would hang), from L1 and, in a second instance
/// without L1, from Redis; that instance's refresh defers to the first one's lease. Then the new
/// value lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_while_revalidate_serves_old_then_new() -> TestResult {
    let redis = Redis::standalone();
    let freshness = Freshness::new().stale_while_revalidate(Duration::from_secs(30));
    let cache = redis.builder().freshness(freshness.clone()).build().await?;
    let other = redis.builder().freshness(freshness).l1_capacity_bytes(0).build().await?;
    let source = Source { gated_from: 2, ..Source::new(Duration::ZERO) };
    let key = key("swr")?;
    let ttl = Ttl::Exact(Duration::from_millis(300));
    assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1");
    cache.settled().await;
    assert!(pttl(&redis, &key)? > 29_000, "Redis keeps the value for the grace period");
    sleep(Duration::from_millis(400)).await;

    // The refresh stores v2 for a minute: it stays fresh however slowly the checks below run.
    let long = Ttl::Exact(Duration::from_secs(60));
    let served = timeout(Duration::from_secs(5), cache.get_or_refresh(&key, long, source.loader())).await??;
    assert_eq!(served, "v1");
    assert_eq!(cache.get::<String>(&key).await?, None, "plain reads never return stale values");
    let served = timeout(Duration::from_secs(5), other.get_or_refresh(&key, long, source.loader())).await??;
    assert_eq!(served, "v1");
    let stats = cache.metrics().namespace("it:v1:fresh");
    assert_eq!((stats.stale_served, stats.stale_refreshes), (1, 1), "{stats:?}");

    source.gate.add_permits(1);
    eventually(&cache, &key, "v2").await?;
    eventually(&other, &key, "v2").await?;
    assert_eq!(source.calls(), 2, "one refresh across both instances");
    assert_eq!(other.metrics().namespace("it:v1:fresh").stale_served, 1);
    Ok(())
}

/// The loader fails after the value expires: `get_or_refresh` and `get_or_set` both return the
/// last good value, counted as stale.
async fn fail_safe_serves_last_good_value(redis: Redis) -> TestResult {
    let cache = redis.builder().freshness(Freshness::new().fail_safe(Duration::from_secs(30))).build().await?;
    let source = Source { failing_from: 2, ..Source::new(Duration::ZERO) };
    let key = key("failsafe")?;
    let ttl = Ttl::Exact(Duration::from_millis(300));
    assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1");
    sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1", "{}", redis.name());
    assert_eq!(cache.get_or_set(&key, ttl, source.loader()).await?, "v1");
    cache.clear_l1();
    assert_eq!(cache.get_or_set(&key, ttl, source.loader()).await?, "v1", "from Redis too");
    assert_eq!(source.calls(), 4);
    let stats = cache.metrics().namespace("it:v1:fresh");
    assert_eq!((stats.stale_served, stats.loader_errors), (3, 3), "{stats:?}");
    assert_eq!(cache.get::<String>(&key).await?, None);
    Ok(())
}
on_both!(fail_safe_serves_last_good_value);

/// Past the fail-safe window the value is gone from both tiers and the loader's error surfaces.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_max_staleness_the_error_surfaces() -> TestResult {
    let redis = Redis::standalone();
    let cache = redis.builder().freshness(Freshness::new().fail_safe(Duration::from_millis(300))).build().await?;
    let source = Source { failing_from: 2, ..Source::new(Duration::ZERO) };
    let key = key("toolate")?;
    let ttl = Ttl::Exact(Duration::from_millis(200));
    assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1");
    cache.settled().await;
    let pttl = pttl(&redis, &key)?;
    assert!((201..=500).contains(&pttl), "logical 200 ms + 300 ms fail-safe, got {pttl} ms");
    sleep(Duration::from_millis(700)).await;
    let err = cache.get_or_refresh(&key, ttl, source.loader()).await.expect_err("too stale to serve");
    assert!(err.is_loader() && err.to_string().contains("database down"), "{err}");
    let err = cache.get_or_set(&key, ttl, source.loader()).await.expect_err("too stale to serve");
    assert!(err.is_loader(), "{err}");
    assert_eq!(cache.metrics().namespace("it:v1:fresh").stale_served, 0);
    Ok(())
}

/// A hung loader: with nothing to serve, the hard timeout ends the wait with a timeout error
/// (not a Redis one); with a stale value, the soft timeout serves it while the load goes on in
/// the background and lands later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timeouts_bound_the_wait() -> TestResult {
    let redis = Redis::standalone();
    let freshness = Freshness::new()
        .fail_safe(Duration::from_secs(30))
        .soft_timeout(Duration::from_millis(100))
        .hard_timeout(Duration::from_secs(1));
    let cache = redis.builder().freshness(freshness).build().await?;
    let hung = Source::new(Duration::from_secs(3600));
    let cold = key("hung")?;
    let err = timeout(Duration::from_secs(10), cache.get_or_refresh(&cold, Ttl::Short, hung.loader()))
        .await?
        .expect_err("no value within the hard timeout");
    assert!(err.is_timeout() && err.kind() == ErrorKind::LoaderTimeout && !err.is_unavailable(), "{err:?}");
    let err = timeout(Duration::from_secs(10), cache.get_or_set(&cold, Ttl::Short, hung.loader()))
        .await?
        .expect_err("no value within the hard timeout");
    assert_eq!(err.kind(), ErrorKind::LoaderTimeout, "{err:?}");

    // The second load takes 300 ms: past the soft timeout, within the hard one.
    let source = Source::new(Duration::ZERO);
    let slow = Source { delay: Duration::from_millis(300), ..source.clone() };
    let key = key("slow")?;
    let ttl = Ttl::Exact(Duration::from_millis(300));
    assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1");
    sleep(Duration::from_millis(400)).await;
    assert_eq!(cache.get_or_refresh(&key, ttl, slow.loader()).await?, "v1", "soft timeout: the stale value");
    eventually(&cache, &key, "v2").await?;
    let stats = cache.metrics().namespace("it:v1:fresh");
    assert!(stats.loader_timeouts >= 2 && stats.stale_served == 1, "{stats:?}");
    Ok(())
}

/// `get_or_refresh` checks namespace stamps on its L1 path like every read: after
/// `invalidate_namespace` (on this very instance), the old L1 copy is not served, even fresh.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_or_refresh_does_not_serve_an_invalidated_l1_copy() -> TestResult {
    let redis = Redis::standalone();
    let freshness = Freshness::new().stale_while_revalidate(Duration::from_secs(30)).fail_safe(Duration::from_secs(60));
    let cache = redis.builder().freshness(freshness).l1_max_ttl(Duration::from_secs(60)).build().await?;
    let db = Arc::new(std::sync::Mutex::new("v1".to_owned()));
    let loader = {
        let db = db.clone();
        move || {
            let value = db.lock().map(|v| v.clone()).map_err(|_| std::io::Error::other("poisoned"));
            async move { value }
        }
    };
    let key = key("nsinv")?;
    let ttl = Ttl::Exact(Duration::from_secs(60));
    assert_eq!(cache.get_or_refresh(&key, ttl, loader.clone()).await?, "v1");
    assert_eq!(cache.get_or_refresh(&key, ttl, loader.clone()).await?, "v1");
    assert_eq!(cache.metrics().namespace("it:v1:fresh").l1_hits, 1, "the second read is an L1 hit");

    cache.invalidate_namespace(key.namespace()).await?;
    *db.lock().map_err(|_| "poisoned")? = "v2".to_owned();
    assert_eq!(
        cache.get_or_refresh(&key, ttl, loader.clone()).await?,
        "v2",
        "an L1 copy from before invalidate_namespace was served"
    );
    assert_eq!(cache.get_or_set(&key, ttl, loader).await?, "v2");
    Ok(())
}

/// Redis refuses every call on the key (`NOPERM`: not an outage, L1 stays open) and the loader
/// fails. Fail-safe off (the default, a zero window) must surface the loader's error; on, it
/// must not serve an L1 copy whose stamps cannot be checked (here: its namespace was
/// invalidated meanwhile) either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_load_never_serves_an_unchecked_l1_copy() -> TestResult {
    let redis = Redis::standalone();
    let mut admin = redis.raw();
    let acl = |rules: &[&str]| redis::cmd("ACL").arg("SETUSER").arg("app").arg(rules).clone();
    acl(&["on", ">secret", "~*", "&*", "+@all"]).query::<()>(admin.as_mut())?;
    let build = |freshness: Freshness| {
        redis.builder().username("app").password("secret").freshness(freshness).stamp_refresh(Duration::ZERO).build()
    };
    let (off, on) = (build(Freshness::new()).await?, build(Freshness::new().fail_safe(Duration::from_secs(60))).await?);
    let key = key("unchecked")?;
    let ttl = Ttl::Exact(Duration::from_secs(60));
    for cache in [&off, &on] {
        assert_eq!(cache.get_or_set(&key, ttl, || async { Ok::<_, std::io::Error>("v1".to_owned()) }).await?, "v1");
        assert_eq!(cache.get::<String>(&key).await?.as_deref(), Some("v1"));
        assert!(cache.metrics().total().l1_hits >= 1, "the value is in L1");
    }
    strata::bump_stamp(admin.as_mut(), &strata::namespace_stamp_key(key.namespace())?)?;
    acl(&["resetkeys", "~elsewhere:*"]).query::<()>(admin.as_mut())?;
    for (name, cache) in [("fail-safe off", &off), ("fail-safe on", &on)] {
        let got =
            cache.get_or_set(&key, ttl, || async { Err::<String, _>(std::io::Error::other("database down")) }).await;
        assert!(got.as_ref().is_err_and(strata::Error::is_loader), "{name}: {got:?}");
        assert_eq!(cache.metrics().total().stale_served, 0, "{name}");
    }
    Ok(())
}

/// The hand-over behind a rare failure of `stale_while_revalidate_serves_old_then_new`: an
/// instance sees the stale value and starts its background refresh, but that refresh asks for
/// the lease only after another instance's refresh has stored the new value and released it. It
/// must not load again. `other` lives on a runtime that runs only inside `block_on`, so its
/// refresh waits, deterministically, until the first one has landed.
#[test]
fn a_refresh_that_starts_after_another_landed_does_not_load_again() -> TestResult {
    let redis = Redis::standalone();
    let freshness = Freshness::new().stale_while_revalidate(Duration::from_secs(30));
    let main = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let side = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let cache = main.block_on(redis.builder().freshness(freshness.clone()).build())?;
    let other = side.block_on(redis.builder().freshness(freshness).l1_capacity_bytes(0).build())?;
    // Two permits: the first instance's refresh takes one; a second refresh would load too.
    let source = Source { gated_from: 2, ..Source::new(Duration::ZERO) };
    let key = key("handover")?;
    let ttl = Ttl::Exact(Duration::from_millis(300));
    main.block_on(async {
        assert_eq!(cache.get_or_refresh(&key, ttl, source.loader()).await?, "v1");
        sleep(Duration::from_millis(400)).await; // past the logical expiry, within the window
        TestResult::Ok(())
    })?;
    let idle = side.metrics().num_alive_tasks();
    // `other` serves the stale value from Redis; its refresh is spawned but does not run yet.
    assert_eq!(side.block_on(other.get_or_refresh(&key, ttl, source.loader()))?, "v1");
    main.block_on(async {
        // This refresh stores v2 for a minute.
        let long = Ttl::Exact(Duration::from_secs(60));
        assert_eq!(cache.get_or_refresh(&key, long, source.loader()).await?, "v1");
        source.gate.add_permits(2);
        eventually(&cache, &key, "v2").await
    })?;
    // Now `other`'s refresh runs, to its end.
    side.block_on(async {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while side.metrics().num_alive_tasks() > idle {
            assert!(tokio::time::Instant::now() < deadline, "the refresh never ended");
            sleep(Duration::from_millis(5)).await;
        }
        assert_eq!(source.calls(), 2, "one refresh across both instances");
        eventually(&other, &key, "v2").await
    })?;
    Ok(())
}
