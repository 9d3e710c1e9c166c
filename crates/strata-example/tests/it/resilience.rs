//! Redis down: reads go to the database, the rate limiter lets requests through, and the
//! Redis-only features report 503 until Redis is back.

use axum::http::{Method, StatusCode};
use serde_json::json;

use crate::common::{Env, Redis, TestResult, call, call_with, eventually, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_outlives_a_redis_outage() -> TestResult {
    let mut env = Env::standalone().await;
    assert_eq!(get(&env.app, "/users/5").await.status, StatusCode::OK);
    let Redis::Standalone(server) = &mut env.redis else { unreachable!("standalone") };
    server.node_mut().kill()?;

    // Profiles come from the database (Strata bypasses Redis; callers see no error).
    let before = env.queries();
    for id in [5, 6, 7] {
        let user = get(&env.app, &format!("/users/{id}")).await;
        assert_eq!(user.status, StatusCode::OK);
        assert_eq!(user.body["name"], format!("user-{id}"));
    }
    assert!(env.queries() > before, "served by the database");
    let health = get(&env.app, "/healthz").await;
    assert_eq!((health.status, health.body["redis"].clone()), (StatusCode::OK, json!(false)));
    let limited = call_with(&env.app, Method::GET, "/limited", None, &[("x-client-id", "c")]).await;
    assert_eq!(limited.status, StatusCode::OK, "the limiter fails open");
    let score = call(&env.app, Method::POST, "/scores", Some(json!({ "player": "p", "score": 1 }))).await;
    assert_eq!(score.status, StatusCode::SERVICE_UNAVAILABLE);

    let Redis::Standalone(server) = &mut env.redis else { unreachable!("standalone") };
    server.node_mut().restart()?;
    let back = eventually(250, || async {
        call(&env.app, Method::POST, "/scores", Some(json!({ "player": "p", "score": 1 }))).await.status
            == StatusCode::OK
    })
    .await;
    assert!(back, "the raw client reconnects");
    Ok(())
}
