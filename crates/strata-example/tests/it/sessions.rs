//! Sessions: create, read (sliding idle TTL), delete, idle expiry.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use strata_example::service::ServiceConfig;

use crate::common::{Env, Redis, TestResult, call, get};

fn pttl(env: &Env, token: &str) -> i64 {
    let mut raw = env.redis.raw();
    redis::cmd("PTTL").arg(format!("example:v1:session:{token}")).query(&mut *raw).expect("PTTL")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_read_extends_the_idle_timeout() -> TestResult {
    let config = ServiceConfig { session_idle: Duration::from_secs(20), ..ServiceConfig::default() };
    let env = Env::start(Redis::standalone(), &config).await;
    let created = call(&env.app, Method::POST, "/sessions", Some(json!({ "user_id": 5 }))).await;
    assert_eq!(created.status, StatusCode::CREATED);
    let token = created.body["token"].as_str().expect("token").to_owned();
    // The Redis key carries the idle timeout, not the 24 h lifetime.
    let first = pttl(&env, &token);
    assert!(first > 0 && first <= 20_000, "PTTL {first}");

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let idle = pttl(&env, &token);
    assert!(idle < first, "the TTL runs down while the session is idle ({idle} >= {first})");
    let read = get(&env.app, &format!("/sessions/{token}")).await;
    assert_eq!(read.status, StatusCode::OK);
    assert_eq!(read.body["user_id"], 5);
    let slid = pttl(&env, &token);
    assert!(slid > idle, "a read resets the idle timeout ({slid} <= {idle})");

    let deleted = call(&env.app, Method::DELETE, &format!("/sessions/{token}"), None).await;
    assert_eq!(deleted.status, StatusCode::NO_CONTENT);
    assert_eq!(get(&env.app, &format!("/sessions/{token}")).await.status, StatusCode::NOT_FOUND);
    assert_eq!(call(&env.app, Method::DELETE, &format!("/sessions/{token}"), None).await.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_session_ends_even_with_an_in_process_copy() -> TestResult {
    let config = ServiceConfig { session_idle: Duration::from_millis(300), ..ServiceConfig::default() };
    let env = Env::start(Redis::standalone(), &config).await;
    let token = env.services.sessions.create(9).await?;
    assert!(env.services.sessions.get(&token).await?.is_some());
    // Three idle timeouts without a read: Redis drops the key.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(env.services.sessions.get(&token).await?, None);
    assert_eq!(get(&env.app, &format!("/sessions/{token}")).await.status, StatusCode::NOT_FOUND);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_need_a_known_user_and_a_well_formed_token() -> TestResult {
    let env = Env::standalone().await;
    let created = call(&env.app, Method::POST, "/sessions", Some(json!({ "user_id": 123456 }))).await;
    assert_eq!(created.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&env.app, "/sessions/not-a-token").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(&env.app, &format!("/sessions/{}", "0".repeat(32))).await.status, StatusCode::NOT_FOUND);
    Ok(())
}
