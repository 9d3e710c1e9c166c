//! The service over a 3-master, 3-replica Redis Cluster: cached and raw keys in every slot.

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use strata_example::service::ServiceConfig;

use crate::common::{Env, Redis, TestResult, call, call_with, get};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_works_on_a_cluster() -> TestResult {
    let config = ServiceConfig { rate_limit: 2, rate_window: Duration::from_secs(60), ..ServiceConfig::default() };
    let env = Env::start(Redis::cluster(), &config).await;
    let app = &env.app;

    // Users: cache-aside, negative caching, invalidation.
    let before = env.queries();
    for id in 1..=20 {
        assert_eq!(get(app, &format!("/users/{id}")).await.status, StatusCode::OK);
        assert_eq!(get(app, &format!("/users/{id}")).await.status, StatusCode::OK);
    }
    assert_eq!(get(app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(get(app, "/users/999999").await.status, StatusCode::NOT_FOUND);
    assert_eq!(env.queries(), before + 21, "one query per distinct id");
    call(app, Method::PUT, "/users/4", Some(json!({ "name": "Linus" }))).await;
    assert_eq!(get(app, "/users/4").await.body["name"], "Linus");

    // Products: a bulk update invalidates the listing.
    let old = get(app, "/products?category=cat-2").await.body;
    let r =
        call(app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-2", "percent": -50 }))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_ne!(get(app, "/products?category=cat-2").await.body, old);

    // Sessions.
    let token = call(app, Method::POST, "/sessions", Some(json!({ "user_id": 1 }))).await.body["token"]
        .as_str()
        .expect("token")
        .to_owned();
    assert_eq!(get(app, &format!("/sessions/{token}")).await.status, StatusCode::OK);
    assert_eq!(call(app, Method::DELETE, &format!("/sessions/{token}"), None).await.status, StatusCode::NO_CONTENT);

    // Rate limiting (a 60 s window: three requests share it unless they straddle its edge).
    let mut limited = false;
    for attempt in 0..3 {
        let client = format!("c{attempt}");
        let replies = [limit(&env, &client).await, limit(&env, &client).await, limit(&env, &client).await];
        if replies.iter().any(|(_, w)| *w != replies[0].1) {
            continue;
        }
        assert_eq!(replies.map(|(s, _)| s), [200, 200, 429]);
        limited = true;
        break;
    }
    assert!(limited);

    // Leaderboard and visitors: raw keys spread over the masters.
    call(app, Method::POST, "/scores", Some(json!({ "player": "p1", "score": 5 }))).await;
    call(app, Method::POST, "/scores", Some(json!({ "player": "p2", "score": 7 }))).await;
    let top = get(app, "/leaderboard?top=1").await;
    assert_eq!(top.body, json!([{ "player": "p2", "score": 7.0 }]));
    for page in ["a", "b", "c", "d"] {
        for v in 0..10 {
            call(app, Method::POST, "/visits", Some(json!({ "page": page, "visitor": format!("v{v}") }))).await;
        }
        assert_eq!(get(app, &format!("/visits/{page}")).await.body["unique_visitors"], 10);
    }
    Ok(())
}

/// Status and window number of one request to the rate-limited endpoint.
async fn limit(env: &Env, client: &str) -> (u16, String) {
    let reply = call_with(&env.app, Method::GET, "/limited", None, &[("x-client-id", client)]).await;
    (reply.status.as_u16(), reply.header("x-ratelimit-window").unwrap_or_default().to_owned())
}
