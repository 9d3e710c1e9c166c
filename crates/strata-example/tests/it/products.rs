//! Product listings: cached per category, invalidated by one namespace bump on bulk update.

use axum::http::{Method, StatusCode};
use serde_json::{Value, json};
use strata_example::service::ServiceConfig;

use crate::common::{CATEGORIES, Env, PRODUCTS, TestResult, call, call_with, eventually, get};

fn prices(listing: &Value) -> Vec<i64> {
    listing.as_array().expect("array").iter().map(|p| p["price_cents"].as_i64().expect("price")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bulk_update_invalidates_listings_and_items() -> TestResult {
    let env = Env::standalone().await;
    let (_b_services, b) = env.second_instance(&ServiceConfig::default()).await;
    let before = env.queries();
    let listing = get(&env.app, "/products?category=cat-1").await;
    assert_eq!(listing.status, StatusCode::OK);
    let old = prices(&listing.body);
    assert_eq!(old.len() as u64, PRODUCTS / CATEGORIES);
    assert!(listing.body.as_array().expect("array").iter().all(|p| p["category"] == "cat-1"));
    let item = get(&env.app, "/products/1").await; // product 1 is in cat-1
    assert_eq!(item.body["category"], "cat-1");
    assert_eq!(get(&env.app, "/products?category=cat-1").await.body, listing.body);
    assert_eq!(env.queries(), before + 2, "listing and item loaded once each");
    // Instance B caches the old listing too.
    assert_eq!(get(&b, "/products?category=cat-1").await.body, listing.body);

    let update =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-1", "percent": 10 })))
            .await;
    assert_eq!(update.status, StatusCode::OK);
    assert_eq!(update.body["updated"], PRODUCTS / CATEGORIES);

    let expected: Vec<i64> = old.iter().map(|p| (p * 110 + 50) / 100).collect();
    let after = get(&env.app, "/products?category=cat-1").await;
    assert_eq!(prices(&after.body), expected);
    assert_eq!(get(&env.app, "/products/1").await.body["price_cents"], expected[0]);
    assert_eq!(env.queries(), before + 5, "one update, then one reload each of listing and item");
    // Instance B sees the namespace bump within its stamp refresh (1 s by default).
    let b_fresh =
        eventually(250, || async { prices(&get(&b, "/products?category=cat-1").await.body) == expected }).await;
    assert!(b_fresh, "instance B still serves the old listing");
    Ok(())
}

/// The product pages as HTTP responses (strata-http's layer): stored once, shared by both
/// instances, purged on every instance by a reprice of their category.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn product_pages_are_cached_as_http_responses_and_purged_by_a_reprice() -> TestResult {
    let env = Env::standalone().await;
    let (_b_services, b) = env.second_instance(&ServiceConfig::default()).await;
    let host = [("host", "shop.example")];
    let page = |app| async move { call_with(app, Method::GET, "/products/1", None, &host).await };
    let before = env.queries();
    let first = page(&env.app).await;
    assert_eq!((first.status, first.header("x-cache")), (StatusCode::OK, Some("MISS")));
    assert_eq!(first.header("cache-control"), Some("public, max-age=30"));
    let again = page(&env.app).await;
    assert_eq!((again.header("x-cache"), &again.body), (Some("HIT"), &first.body));
    assert_eq!(page(&b).await.header("x-cache"), Some("HIT"), "the other instance shares it");
    assert_eq!(env.queries(), before + 1);

    let update =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-1", "percent": 10 })))
            .await;
    assert_eq!(update.status, StatusCode::OK);
    let expected = (first.body["price_cents"].as_i64().expect("price") * 110 + 50) / 100;
    let after = page(&env.app).await;
    assert_eq!((after.header("x-cache"), after.body["price_cents"].as_i64()), (Some("MISS"), Some(expected)));
    let b_fresh = eventually(250, || async { page(&b).await.body["price_cents"].as_i64() == Some(expected) }).await;
    assert!(b_fresh, "instance B still serves the old page");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_and_invalid_products() -> TestResult {
    let env = Env::standalone().await;
    assert_eq!(get(&env.app, "/products/999999").await.status, StatusCode::NOT_FOUND);
    let empty = get(&env.app, "/products?category=no-such-category").await;
    assert_eq!(empty.status, StatusCode::OK);
    assert_eq!(empty.body, json!([]));
    // Glob characters and spaces cannot become part of a key.
    assert_eq!(get(&env.app, "/products?category=cat%2A").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&env.app, "/products?category=a%20b").await.status, StatusCode::BAD_REQUEST);
    assert_eq!(get(&env.app, "/products").await.status, StatusCode::BAD_REQUEST, "category is required");
    let before = env.queries();
    let bad =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "a b", "percent": 10 }))).await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let bad =
        call(&env.app, Method::POST, "/products/bulk-update", Some(json!({ "category": "cat-1", "percent": -500 })))
            .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    assert_eq!(env.queries(), before, "rejected before reaching the database");
    Ok(())
}
