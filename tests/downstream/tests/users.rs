//! The service against a real Redis, over real HTTP.

use std::sync::Arc;

use strata::Cache;
use strata_cluster::RedisServer;
use strata_downstream::{Database, User, app};

type TestResult = Result<(), Box<dyn std::error::Error + Send + Sync>>;

#[tokio::test]
async fn the_second_request_is_served_from_the_cache() -> TestResult {
    // A redis-server of the test's own, on a free port; stopped when `redis` is dropped.
    let redis = RedisServer::start()?;
    let cache = Cache::builder().redis_url(redis.url()).build().await?;
    let db = Arc::new(Database::default());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let url = format!("http://{}/users/42", listener.local_addr()?);
    tokio::spawn(axum::serve(listener, app(cache, db.clone())).into_future());

    let first: User = reqwest::get(&url).await?.error_for_status()?.json().await?;
    let second: User = reqwest::get(&url).await?.error_for_status()?.json().await?;

    assert_eq!(first, User { id: 42, name: "user 42".to_owned() });
    assert_eq!(second, first);
    assert_eq!(db.queries(), 1, "the second request should have been served from the cache");
    Ok(())
}
