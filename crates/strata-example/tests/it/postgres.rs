//! The PostgreSQL path: against `STRATA_TEST_POSTGRES_URL` when set, else a throwaway server
//! started from `/usr/lib/postgresql/15/bin` (Debian's `postgresql-15`), else skipped with the
//! reason printed (under CI, a failure: `strata_cluster::skip_test`).

use axum::http::{Method, StatusCode};
use serde_json::json;
use strata_example::db::{Backend, Db, LocalPostgres, UserUpdate};
use strata_example::service::ServiceConfig;

use crate::common::{Env, Redis, TestResult, call, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_runs_on_postgres() -> TestResult {
    let (url, _server) = match std::env::var("STRATA_TEST_POSTGRES_URL") {
        Ok(url) => (url, None),
        Err(_) if !LocalPostgres::available() => {
            strata_cluster::skip_test(
                "the example's PostgreSQL tests: no STRATA_TEST_POSTGRES_URL and no postgresql-15 (apt-get install -y postgresql-15)",
            );
            return Ok(());
        }
        Err(_) => {
            let server = LocalPostgres::start().unwrap_or_else(|e| panic!("could not start PostgreSQL: {e}"));
            (server.url().to_owned(), Some(server))
        }
    };
    let db = Db::open(&url).await?;
    assert_eq!(db.backend(), Backend::Postgres);
    // A database given by URL may hold rows of earlier runs: write values unique to this run.
    let marker = format!("pg-{:x}", rand::random::<u32>());

    let dir = tempfile::tempdir()?;
    let env = Env::with_db(Redis::standalone(), dir, url.clone(), &ServiceConfig::default()).await;
    assert_eq!(env.services.db().backend(), Backend::Postgres);

    // Cache-aside and negative caching.
    let before = env.queries();
    assert_eq!(get(&env.app, "/users/8").await.body["email"], "user8@example.com");
    assert_eq!(get(&env.app, "/users/8").await.status, StatusCode::OK);
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.queries(), before + 2);

    // Invalidation on write, seen through the database directly too.
    let put = call(&env.app, Method::PUT, "/users/8", Some(json!({ "name": marker }))).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(get(&env.app, "/users/8").await.body["name"], marker.as_str());
    assert_eq!(db.get_user(8).await?.map(|u| u.name), Some(marker.clone()));
    assert_eq!(db.update_user(999_999, &UserUpdate::default()).await?, None);

    // Bulk update and listing.
    let old = get(&env.app, "/products?category=cat-3").await.body;
    assert!(!old.as_array().expect("array").is_empty());
    let r =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-3", "percent": 5 }))).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body["updated"].as_u64().expect("count") >= 10);
    let new = get(&env.app, "/products?category=cat-3").await.body;
    assert_eq!(new, json!(db.list_products("cat-3").await?));
    assert_ne!(new, old);
    Ok(())
}
