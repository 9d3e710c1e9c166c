//! User profiles: cache-aside, negative caching, invalidation on write (also across instances).

use axum::http::{Method, StatusCode};
use serde_json::json;
use std::time::Duration;

use strata_example::service::ServiceConfig;

use crate::common::{Env, TestResult, call, eventually, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_profile_is_read_from_the_database_once_then_from_the_cache() -> TestResult {
    let env = Env::standalone().await;
    let before = env.queries();
    let first = get(&env.app, "/users/7").await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["name"], "user-7");
    assert_eq!(first.body["email"], "user7@example.com");
    assert_eq!(env.queries(), before + 1, "a miss runs one query");
    for _ in 0..5 {
        let again = get(&env.app, "/users/7").await;
        assert_eq!(again.body, first.body);
    }
    assert_eq!(env.queries(), before + 1, "hits run no query");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_user_is_a_cached_404() -> TestResult {
    let env = Env::standalone().await;
    let before = env.queries();
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.queries(), before + 1);
    // Also from Redis alone: a fresh L1 still finds the cached "not found".
    env.services.cache().clear_l1();
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&env.app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.queries(), before + 1, "the second 404 came from the negative cache");
    // The negative entry lives in Redis under the user key.
    let mut raw = env.redis.raw();
    let exists: bool = redis::cmd("EXISTS").arg("example:v1:user:999999").query(&mut *raw)?;
    assert!(exists);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_invalidates_the_profile_on_every_instance() -> TestResult {
    let env = Env::standalone().await;
    let (_b_services, b) = env.second_instance(&ServiceConfig::default()).await;
    // Both instances have the old profile cached (B in its L1).
    assert_eq!(get(&env.app, "/users/3").await.body["name"], "user-3");
    assert_eq!(get(&b, "/users/3").await.body["name"], "user-3");
    assert_eq!(get(&b, "/users/3").await.body["name"], "user-3");

    let put = call(&env.app, Method::PUT, "/users/3", Some(json!({ "name": "Ada", "bio": "new bio" }))).await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(put.body["name"], "Ada");
    assert_eq!(put.body["email"], "user3@example.com", "fields not given are kept");

    // The writing instance reads its own write at once.
    let a_read = get(&env.app, "/users/3").await;
    assert_eq!(a_read.body["name"], "Ada");
    assert_eq!(a_read.body["bio"], "new bio");
    // The other instance's L1 copy is evicted by client tracking, asynchronously.
    let b_updated = eventually(250, || async { get(&b, "/users/3").await.body["name"] == "Ada" }).await;
    assert!(b_updated, "instance B still serves the old profile");
    Ok(())
}

/// An update caches the row it wrote (ordered by the row's version): once the profile's
/// version is on record, reading it again costs no query. The first update has no version to
/// compare with, so it empties the key (and keeps the key's versioned writes from storing for
/// the versioned window), and the next read loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_caches_the_row_it_wrote() -> TestResult {
    let env = Env::standalone().await;
    for (name, reads_query) in [("first", 1), ("second", 0), ("third", 0)] {
        let put = call(&env.app, Method::PUT, "/users/5", Some(json!({ "name": name }))).await;
        assert_eq!(put.status, StatusCode::OK);
        let before = env.queries();
        assert_eq!(get(&env.app, "/users/5").await.body["name"], name);
        assert_eq!(get(&env.app, "/users/5").await.body["name"], name);
        assert_eq!(env.queries(), before + reads_query, "reads after the {name} update");
        if name == "first" {
            tokio::time::sleep(2 * strata::VERSIONED_WINDOW + Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn updating_a_missing_user_or_with_a_bad_body_fails_cleanly() -> TestResult {
    let env = Env::standalone().await;
    let put = call(&env.app, Method::PUT, "/users/424242", Some(json!({ "name": "Nobody" }))).await;
    assert_eq!(put.status, StatusCode::NOT_FOUND);
    let bad = call(&env.app, Method::PUT, "/users/1", Some(json!({ "name": 5 }))).await;
    assert!(bad.status.is_client_error(), "{}", bad.status);
    assert_eq!(get(&env.app, "/users/not-a-number").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&env.app, "/users/1").await.body["name"], "user-1", "nothing changed");
    Ok(())
}
