//! `#[strata::cached]` against a real standalone Redis (started on a free port by
//! `strata-cluster`): one load per key, one key per argument list, errors returned and not
//! cached, and the key layout the macro documents. The compile errors are in `ui/` (`ui` test
//! below).
#![allow(missing_docs, unreachable_pub)]

use std::fmt;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use redis::Commands;
use serde::{Deserialize, Serialize};
use strata::{Cache, KeySchema, cached};
use strata_cluster::RedisServer;

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
}

/// An application's own error: the body's variants come back as they are.
#[derive(Debug)]
enum AppError {
    NotFound(u64),
    Cache(strata::Error),
}

impl fmt::Display for AppError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AppError::NotFound(id) => write!(f, "user {id} not found"),
            AppError::Cache(err) => write!(f, "cache: {err}"),
        }
    }
}

impl std::error::Error for AppError {}

impl From<strata::Error> for AppError {
    fn from(err: strata::Error) -> Self {
        AppError::Cache(err)
    }
}

async fn start() -> Result<(RedisServer, Cache), Box<dyn std::error::Error + Send + Sync>> {
    let server = RedisServer::start()?;
    let cache = Cache::builder().redis_url(server.url()).build().await?;
    Ok((server, cache))
}

fn keys(server: &RedisServer, pattern: &str) -> Result<Vec<String>, Box<dyn std::error::Error + Send + Sync>> {
    let mut conn = server.connection()?;
    let mut keys: Vec<String> = conn.keys(pattern)?;
    keys.sort();
    Ok(keys)
}

static USER_LOADS: AtomicUsize = AtomicUsize::new(0);

/// The example.
#[cached(app = "shop", namespace = "user", ttl = "medium")]
async fn load_user(cache: &Cache, id: u64) -> Result<User, AppError> {
    USER_LOADS.fetch_add(1, Ordering::SeqCst);
    if id == 0 {
        return Err(AppError::NotFound(id));
    }
    Ok(User { id, name: format!("user-{id}") })
}

#[tokio::test]
async fn loads_once_per_key_and_keys_follow_the_schema() -> TestResult {
    let (server, cache) = start().await?;
    let first = load_user(&cache, 42).await?;
    assert_eq!(first, User { id: 42, name: "user-42".into() });
    assert_eq!(load_user(&cache, 42).await?, first);
    assert_eq!(USER_LOADS.load(Ordering::SeqCst), 1, "a repeated call is served by the cache");
    // Another process (no L1) reads it from Redis, not from the body.
    let other = Cache::builder().redis_url(server.url()).build().await?;
    assert_eq!(load_user(&other, 42).await?, first);
    assert_eq!(USER_LOADS.load(Ordering::SeqCst), 1, "another instance is served by Redis");

    assert_eq!(load_user(&cache, 7).await?.id, 7);
    assert_eq!(USER_LOADS.load(Ordering::SeqCst), 2, "different arguments, different key");
    cache.settled().await;
    assert_eq!(keys(&server, "shop:v1:user:*")?, ["shop:v1:user:42", "shop:v1:user:7"]);

    // The documented way to find the key again: same schema, namespace and arguments.
    let schema = KeySchema::new("shop", 1)?;
    let key = schema.key_for_args("user", &[&42])?;
    assert_eq!(key, schema.key("user", "42")?);
    assert_eq!(cache.get::<User>(&key).await?, Some(first.clone()));
    assert!(cache.delete(&key).await?);
    assert_eq!(load_user(&cache, 42).await?, first);
    assert_eq!(USER_LOADS.load(Ordering::SeqCst), 3, "deleted through key_for_args: loaded again");

    // The TTL class: medium is 10 minutes ± 10 %.
    let mut conn = server.connection()?;
    cache.settled().await;
    let pttl: i64 = conn.pttl("shop:v1:user:7")?;
    assert!((540_000..=660_000).contains(&pttl), "medium TTL, got {pttl} ms");

    // Id 0 is "not found": the error each time, the body each time (counted by this test only:
    // `USER_LOADS` is this test's).
    assert!(matches!(load_user(&cache, 0).await, Err(AppError::NotFound(0))));
    assert!(matches!(load_user(&cache, 0).await, Err(AppError::NotFound(0))));
    assert_eq!(USER_LOADS.load(Ordering::SeqCst), 5);
    Ok(())
}

static FLAKY_LOADS: AtomicUsize = AtomicUsize::new(0);

/// `fail` is left out of the key: both calls share one key.
#[cached(app = "shop", namespace = "flaky", args = [id])]
async fn flaky(cache: &Cache, id: u64, fail: bool) -> Result<User, AppError> {
    FLAKY_LOADS.fetch_add(1, Ordering::SeqCst);
    if fail {
        return Err(AppError::NotFound(id));
    }
    Ok(User { id, name: "flaky".into() })
}

#[tokio::test]
async fn errors_are_returned_as_they_are_and_not_cached() -> TestResult {
    let (server, cache) = start().await?;
    match flaky(&cache, 5, true).await {
        Err(AppError::NotFound(5)) => {}
        other => panic!("the body's own error, unchanged: {other:?}"),
    }
    cache.settled().await;
    assert!(keys(&server, "shop:v1:flaky:*")?.is_empty(), "nothing stored for an error");
    assert_eq!(flaky(&cache, 5, false).await?.name, "flaky");
    assert_eq!(FLAKY_LOADS.load(Ordering::SeqCst), 2, "the error was not cached: the body ran again");
    // Now cached: `fail` is not part of the key, so the body does not run.
    assert_eq!(flaky(&cache, 5, true).await?.name, "flaky");
    assert_eq!(FLAKY_LOADS.load(Ordering::SeqCst), 2);
    cache.settled().await;
    assert_eq!(keys(&server, "shop:v1:flaky:*")?, ["shop:v1:flaky:5"]);
    Ok(())
}

static SLOW_LOADS: AtomicUsize = AtomicUsize::new(0);

#[cached(app = "shop", namespace = "slow", ttl = "short")]
async fn slow_failure(cache: &Cache, id: u64) -> Result<User, AppError> {
    SLOW_LOADS.fetch_add(1, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(300)).await;
    Err(AppError::NotFound(id))
}

#[tokio::test]
async fn callers_that_waited_on_a_failed_load_get_the_cache_error() -> TestResult {
    let (_server, cache) = start().await?;
    let leader = slow_failure(&cache, 9);
    let follower = async {
        tokio::time::sleep(Duration::from_millis(100)).await;
        slow_failure(&cache, 9).await
    };
    let (leader, follower) = tokio::join!(leader, follower);
    assert_eq!(SLOW_LOADS.load(Ordering::SeqCst), 1, "one load for both callers");
    assert!(matches!(leader, Err(AppError::NotFound(9))), "{leader:?}");
    match follower {
        Err(AppError::Cache(err)) => {
            assert!(err.is_loader(), "{err:?}");
            assert!(err.to_string().contains("user 9 not found"), "{err}");
        }
        other => panic!("a waiter gets E::from(strata::Error): {other:?}"),
    }
    Ok(())
}

/// Arguments that are not valid key segments as they are.
#[cached(app = "shop", namespace = "search", ttl = "90s")]
async fn search(cache: &Cache, query: &str, page: u32) -> Result<Vec<String>, strata::Error> {
    Ok(vec![format!("{query}#{page}")])
}

#[tokio::test]
async fn any_argument_text_makes_a_valid_distinct_key() -> TestResult {
    let (server, cache) = start().await?;
    assert_eq!(search(&cache, "red shoes", 1).await?, ["red shoes#1"]);
    assert_eq!(search(&cache, "a,b", 2).await?, ["a,b#2"]);
    assert_eq!(search(&cache, "", 3).await?, ["#3"]);
    assert_eq!(search(&cache, "{*}:ü", 4).await?, ["{*}:ü#4"]);
    let long = "q".repeat(300);
    assert_eq!(search(&cache, &long, 5).await?, [format!("{long}#5")]);
    // Distinct arguments that a naive join would confuse.
    assert_eq!(search(&cache, "a", 2).await?, ["a#2"]);
    cache.settled().await;
    let schema = KeySchema::new("shop", 1)?;
    let hashed = schema.key_for_args("search", &[&long, &5])?;
    let mut expected = vec![
        "shop:v1:search:red%20shoes,1".to_owned(),
        "shop:v1:search:a%2Cb,2".to_owned(),
        "shop:v1:search:~,3".to_owned(),
        "shop:v1:search:%7B%2A%7D%3A%C3%BC,4".to_owned(),
        "shop:v1:search:a,2".to_owned(),
        hashed.as_str().to_owned(),
    ];
    expected.sort();
    assert!(hashed.as_str().starts_with("shop:v1:search:#:h"), "{hashed}");
    assert_eq!(keys(&server, "shop:v1:search:*")?, expected);
    // "90s": 90 s ± 10 %.
    let pttl: i64 = server.connection()?.pttl("shop:v1:search:a,2")?;
    assert!((81_000..=99_000).contains(&pttl), "got {pttl} ms");
    Ok(())
}

static SCHEMA: LazyLock<KeySchema> = LazyLock::new(|| KeySchema::new("billing", 4).expect("a valid schema"));

/// A service holding its cache: a method, the cache and part of the key from `self`.
#[derive(Debug)]
struct Accounts {
    cache: Cache,
    tenant: String,
    loads: AtomicUsize,
}

impl Accounts {
    #[cached(schema = SCHEMA, namespace = "account", cache = self.cache, args = [self.tenant, id], ttl = Duration::from_secs(30))]
    async fn balance(&self, id: u64) -> Result<i64, Box<dyn std::error::Error + Send + Sync>> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(i64::try_from(id)? * 100)
    }

    /// One formatted key part; the default namespace is the function name.
    #[cached(schema = &*SCHEMA, cache = self.cache, key = "{year}-{month:02}")]
    async fn statement(&self, year: u16, month: u8) -> Result<String, strata::Error> {
        self.loads.fetch_add(1, Ordering::SeqCst);
        Ok(format!("{}: {year}/{month}", self.tenant))
    }
}

#[tokio::test]
async fn methods_schemas_and_key_settings() -> TestResult {
    let (server, cache) = start().await?;
    let acme = Accounts { cache: cache.clone(), tenant: "acme".into(), loads: AtomicUsize::new(0) };
    let initech = Accounts { cache: cache.clone(), tenant: "initech".into(), loads: AtomicUsize::new(0) };
    assert_eq!(acme.balance(3).await?, 300);
    assert_eq!(acme.balance(3).await?, 300);
    assert_eq!(initech.balance(3).await?, 300);
    assert_eq!(acme.loads.load(Ordering::SeqCst), 1);
    assert_eq!(initech.loads.load(Ordering::SeqCst), 1, "the tenant is part of the key");
    assert_eq!(acme.statement(2024, 3).await?, "acme: 2024/3");
    assert_eq!(acme.statement(2024, 3).await?, "acme: 2024/3");
    assert_eq!(acme.loads.load(Ordering::SeqCst), 2);
    cache.settled().await;
    assert_eq!(
        keys(&server, "billing:*")?,
        ["billing:v4:account:acme,3", "billing:v4:account:initech,3", "billing:v4:statement:2024-03"]
    );
    let pttl: i64 = server.connection()?.pttl("billing:v4:account:acme,3")?;
    assert!((27_000..=33_000).contains(&pttl), "got {pttl} ms");
    Ok(())
}

static PLAIN_LOADS: AtomicUsize = AtomicUsize::new(0);

/// No settings: the crate's package name (`strata-cache` here), version 1, the function's name.
#[cached]
async fn plain(cache: &strata::Cache) -> strata::Result<u32> {
    PLAIN_LOADS.fetch_add(1, Ordering::SeqCst);
    Ok(1)
}

#[tokio::test]
async fn defaults() -> TestResult {
    let (server, cache) = start().await?;
    assert_eq!(plain(&cache).await?, 1);
    assert_eq!(plain(&cache).await?, 1);
    assert_eq!(PLAIN_LOADS.load(Ordering::SeqCst), 1);
    cache.settled().await;
    assert_eq!(keys(&server, "strata-cache:*")?, ["strata-cache:v1:plain:~"]);
    Ok(())
}

/// Compile errors of misused attributes, and the cases that must compile (`tests/ui`).
#[test]
fn ui() {
    let t = trybuild::TestCases::new();
    t.pass("tests/ui/pass/*.rs");
    t.compile_fail("tests/ui/fail/*.rs");
}
