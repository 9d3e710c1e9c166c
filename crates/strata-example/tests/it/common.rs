//! Test support: a service over real Redis and a SQLite file, called in-process.
#![allow(dead_code, unreachable_pub, missing_docs)]

use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use serde_json::Value;
use strata::{BreakerConfig, Cache, Invalidation};
use strata_cluster::{RedisCluster, RedisServer};
use strata_example::db::Db;
use strata_example::raw::RawRedis;
use strata_example::service::{ServiceConfig, Services};
use tower::ServiceExt;

pub type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

pub const USERS: u64 = 100;
pub const PRODUCTS: u64 = 50;
pub const CATEGORIES: u64 = 5;

/// Redis owned by one test; killed on drop.
pub enum Redis {
    Standalone(RedisServer),
    Cluster(RedisCluster),
}

impl Redis {
    pub fn standalone() -> Self {
        Redis::Standalone(RedisServer::start().expect("start redis-server"))
    }

    pub fn cluster() -> Self {
        Redis::Cluster(RedisCluster::start(3, 1).expect("start a 3-master, 3-replica cluster"))
    }

    pub fn urls(&self) -> Vec<String> {
        match self {
            Redis::Standalone(s) => vec![s.url()],
            Redis::Cluster(c) => c.seed_urls(),
        }
    }

    /// A plain client, as `redis-cli` would use.
    pub fn raw(&self) -> Box<dyn redis::ConnectionLike> {
        match self {
            Redis::Standalone(s) => Box::new(s.node().connection().expect("connect")),
            Redis::Cluster(c) => {
                let client = redis::cluster::ClusterClient::new(c.seed_urls()).expect("cluster client");
                Box::new(client.get_connection().expect("cluster connection"))
            }
        }
    }
}

/// A Strata cache with test-friendly timeouts (a loaded test machine is slow).
pub async fn cache(urls: &[String]) -> Cache {
    let builder = match urls {
        [url] => Cache::builder().redis_url(url.clone()),
        seeds => Cache::builder().cluster(seeds.to_vec()),
    };
    let invalidation = Invalidation::default().heartbeat(Duration::from_millis(200), Duration::from_secs(2));
    // The service's own settings, with test-friendly timeouts on top.
    strata_example::service::configure(builder)
        .op_timeout(Duration::from_millis(500))
        .connect_timeout(Duration::from_millis(500))
        .invalidation(invalidation)
        .breaker(BreakerConfig::new().failure_threshold(3).open_for(Duration::from_millis(300)))
        .build()
        .await
        .expect("build cache")
}

/// One instance of the service: its own cache and database handle.
pub async fn instance(urls: &[String], db_url: &str, config: &ServiceConfig) -> Services {
    let db = Db::open(db_url).await.expect("open database");
    let redis = RawRedis::connect(urls, Duration::from_secs(2)).await.expect("raw redis");
    Services::new(db, cache(urls).await, redis, config).expect("services")
}

/// A service over `redis` and a fresh seeded SQLite file.
pub struct Env {
    pub redis: Redis,
    pub dir: tempfile::TempDir,
    pub db_url: String,
    pub services: Services,
    pub app: Router,
}

impl Env {
    pub async fn standalone() -> Env {
        Env::start(Redis::standalone(), &ServiceConfig::default()).await
    }

    pub async fn start(redis: Redis, config: &ServiceConfig) -> Env {
        let dir = tempfile::tempdir().expect("tempdir");
        let db_url = format!("sqlite:{}", dir.path().join("example.sqlite3").display());
        Env::with_db(redis, dir, db_url, config).await
    }

    pub async fn with_db(redis: Redis, dir: tempfile::TempDir, db_url: String, config: &ServiceConfig) -> Env {
        let services = instance(&redis.urls(), &db_url, config).await;
        services.db().seed_users(USERS).await.expect("seed users");
        services.db().seed_products(PRODUCTS, CATEGORIES).await.expect("seed products");
        let app = strata_example::app(services.clone());
        Env { redis, dir, db_url, services, app }
    }

    /// Another instance sharing this one's Redis and database.
    pub async fn second_instance(&self, config: &ServiceConfig) -> (Services, Router) {
        let services = instance(&self.redis.urls(), &self.db_url, config).await;
        let app = strata_example::app(services.clone());
        (services, app)
    }

    pub fn queries(&self) -> u64 {
        self.services.db().queries()
    }
}

/// A response: status, JSON body (`Null` when empty) and headers.
pub struct Reply {
    pub status: StatusCode,
    pub body: Value,
    pub headers: HeaderMap,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Calls the router in-process.
pub async fn call(app: &Router, method: Method, uri: &str, body: Option<Value>) -> Reply {
    call_with(app, method, uri, body, &[]).await
}

pub async fn call_with(
    app: &Router,
    method: Method,
    uri: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> Reply {
    let mut request = Request::builder().method(method).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request = match body {
        Some(json) => request.header("content-type", "application/json").body(Body::from(json.to_string())),
        None => request.body(Body::empty()),
    }
    .expect("request");
    let response = app.clone().oneshot(request).await.expect("infallible");
    let (parts, body) = response.into_parts();
    let bytes = axum::body::to_bytes(body, 1 << 20).await.expect("body");
    let body = if bytes.is_empty() { Value::Null } else { serde_json::from_slice(&bytes).unwrap_or(Value::Null) };
    Reply { status: parts.status, body, headers: parts.headers }
}

pub async fn get(app: &Router, uri: &str) -> Reply {
    call(app, Method::GET, uri, None).await
}

/// Polls `check` every 20 ms until it returns true, at most `tries` times.
pub async fn eventually<F, Fut>(tries: u32, mut check: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    for _ in 0..tries {
        if check().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}
