//! Rate limiting, the leaderboard and unique visitors (raw Redis structures).

use std::time::Duration;

use axum::http::{Method, StatusCode};
use serde_json::json;
use strata_example::service::ServiceConfig;

use crate::common::{Env, Redis, Reply, TestResult, call, call_with, get};

const LIMIT: u64 = 3;

async fn limited(env: &Env, client: &str) -> Reply {
    call_with(&env.app, Method::GET, "/limited", None, &[("x-client-id", client)]).await
}

fn window(reply: &Reply) -> u64 {
    reply.header("x-ratelimit-window").expect("window header").parse().expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rate_limiter_answers_429_past_the_limit_and_recovers_next_window() -> TestResult {
    let config =
        ServiceConfig { rate_limit: LIMIT, rate_window: Duration::from_millis(500), ..ServiceConfig::default() };
    let env = Env::start(Redis::standalone(), &config).await;
    // A batch that straddles two windows proves nothing: try again with a fresh client.
    let mut blocked = None;
    for attempt in 0..20 {
        let client = format!("client-{attempt}");
        let mut replies = Vec::new();
        for _ in 0..=LIMIT + 1 {
            replies.push(limited(&env, &client).await);
        }
        let w = window(&replies[0]);
        if replies.iter().any(|r| window(r) != w) {
            continue;
        }
        let statuses: Vec<u16> = replies.iter().map(|r| r.status.as_u16()).collect();
        assert_eq!(statuses, [200, 200, 200, 429, 429]);
        let remaining: Vec<&str> =
            replies.iter().map(|r| r.header("x-ratelimit-remaining").expect("remaining")).collect();
        assert_eq!(remaining, ["2", "1", "0", "0", "0"]);
        // Another client has its own counter.
        let other = limited(&env, &format!("other-{attempt}")).await;
        if window(&other) == w {
            assert_eq!(other.status, StatusCode::OK);
        }
        blocked = Some((client, w));
        break;
    }
    let (client, w) = blocked.expect("five requests within one 500 ms window");
    // The next window starts a new count.
    let mut recovered = None;
    for _ in 0..100 {
        let reply = limited(&env, &client).await;
        if window(&reply) != w {
            recovered = Some(reply.status);
            break;
        }
        assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(recovered, Some(StatusCode::OK), "the first request of the next window passes");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaderboard_orders_players_by_total_score() -> TestResult {
    let env = Env::standalone().await;
    for (player, score) in [("alice", 10.0), ("bob", 30.0), ("carol", 20.0), ("alice", 25.0)] {
        let r = call(&env.app, Method::POST, "/scores", Some(json!({ "player": player, "score": score }))).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let top2 = get(&env.app, "/leaderboard?top=2").await;
    assert_eq!(top2.body, json!([{ "player": "alice", "score": 35.0 }, { "player": "bob", "score": 30.0 }]));
    let all = get(&env.app, "/leaderboard").await;
    let names: Vec<&str> =
        all.body.as_array().expect("array").iter().map(|e| e["player"].as_str().expect("name")).collect();
    assert_eq!(names, ["alice", "bob", "carol"]);
    assert_eq!(get(&env.app, "/leaderboard?top=0").await.body, json!([]));
    let bad = call(&env.app, Method::POST, "/scores", Some(json!({ "player": "", "score": 1 }))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unique_visitors_are_counted_approximately() -> TestResult {
    let env = Env::standalone().await;
    let first = call(&env.app, Method::POST, "/visits", Some(json!({ "page": "home", "visitor": "v-0" }))).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["new"], true);
    let again = call(&env.app, Method::POST, "/visits", Some(json!({ "page": "home", "visitor": "v-0" }))).await;
    assert_eq!(again.body["new"], false, "a repeat visitor does not change the estimate");
    // 5,000 distinct visitors, each seen twice.
    for _ in 0..2 {
        for i in 0..5_000 {
            env.services.visitors.record("home", &format!("v-{i}")).await?;
        }
    }
    let count = get(&env.app, "/visits/home").await;
    let n = count.body["unique_visitors"].as_u64().expect("count");
    // HyperLogLog's standard error is 0.81 %; 3 % is more than three of them.
    assert!((4_850..=5_150).contains(&n), "estimate {n} for 5000 visitors");
    assert_eq!(get(&env.app, "/visits/elsewhere").await.body["unique_visitors"], 0);
    assert_eq!(get(&env.app, "/visits/bad%20page").await.status, StatusCode::BAD_REQUEST);
    Ok(())
}
